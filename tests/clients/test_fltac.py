from collections import defaultdict

from flwr.app import ConfigRecord, RecordDict

from clients.fltac import FLTACClient
from fedrouter_app.client_env import RoundInfo
from fedrouter_app.evaluation import text_loss
from fedrouter_app.records import adapter_record
from strategies.fltac import INITIAL, cluster_name

FLTAC = ("method=fltac", "scenario=dual", "data.tasks=[copy,reverse,capital,sentiment]", "eval.scope=global")


def instruction(env, clusters, rule="perplexity"):
    content = RecordDict({cluster_name(k): adapter_record(state) for k, state in enumerate(clusters)})
    content[INITIAL] = adapter_record(env.initial_adapter())
    content["config"] = ConfigRecord(
        {
            "server-round": 2,
            "num-rounds": 2,
            "lr": 3e-3,
            "fltac.slots": [0, 1],
            "fltac.unseen-rule": rule,
            "fltac.oracle-tasks": ["copy"],
            "fltac.oracle-clusters": [2],
        }
    )
    return content


def trained_clusters(env):
    initial = env.initial_adapter()
    by_task = defaultdict(list)
    for ex in env.data.train:
        by_task[ex.task].append(ex)
    trained = [env.train(initial, RoundInfo(0, 2, 3e-3), examples=exs, steps=6)[0] for exs in by_task.values()]
    return [initial, *trained]


def test_perplexity_rule_picks_the_cluster_with_the_lowest_prompt_loss(make_env):
    env = make_env(*FLTAC)
    clusters = trained_clusters(env)
    content = instruction(env, clusters)
    unseen = defaultdict(list)
    for ex in env.data.test:
        unseen[ex.task].append(ex)
    chosen = FLTACClient(env)._unseen_clusters(dict(unseen), content)
    assert chosen.keys() == unseen.keys()
    for task, examples in unseen.items():
        prompts = [env.fmt.prompt(ex) for ex in examples]
        losses = [text_loss(env.load({"default": c}), prompts, batch_size=4) for c in clusters]
        assert losses[chosen[task]] == min(losses)
    # The reference path (one pass per cluster adapter) chooses the same clusters.
    reference = make_env(*FLTAC, "speed.eval_batching=false")
    assert FLTACClient(reference)._unseen_clusters(dict(unseen), content) == chosen


def test_oracle_rule_uses_the_holder_and_falls_back_to_perplexity(make_env):
    env = make_env(*FLTAC)
    clusters = trained_clusters(env)
    unseen = defaultdict(list)
    for ex in env.data.test:
        unseen[ex.task].append(ex)
    client = FLTACClient(env)
    chosen = client._unseen_clusters(dict(unseen), instruction(env, clusters, rule="oracle"))
    perplexity = client._unseen_clusters(dict(unseen), instruction(env, clusters))
    assert chosen["copy"] == 2
    assert {t: k for t, k in chosen.items() if t != "copy"} == {t: k for t, k in perplexity.items() if t != "copy"}
    assert set(client._unseen_clusters(dict(unseen), instruction(env, clusters, rule="average")).values()) == {-1}
