"""FL-TAC's server rules on hand-made adapters."""

import numpy as np
from flwr.app import RecordDict

from fedrouter_app.records import CONFIG, read_adapter
from fedrouter_app.rounds import Reply
from strategies.fltac import FLTAC, cluster_adapters, cluster_name, flatten, slot_name

TEMPLATE = {"m.q.lora_A.weight": (2, 3), "m.q.lora_B.weight": (3, 2)}


def adapter(center: float, noise: float = 0.0, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (center + noise * rng.standard_normal(s)).astype(np.float32) for k, s in TEMPLATE.items()}


def test_flatten_is_sorted_by_name():
    state = {"b": np.array([[3.0]], np.float32), "a": np.array([1.0, 2.0], np.float32)}
    np.testing.assert_array_equal(flatten(state), [1.0, 2.0, 3.0])


def test_kmeans_recovers_planted_adapter_clusters():
    centers = [-5.0, 0.0, 5.0]
    planted = [c for c in centers for _ in range(4)]
    adapters = [adapter(c, noise=0.1, seed=i) for i, c in enumerate(planted)]
    means, labels = cluster_adapters(adapters, [1.0] * len(adapters), k=3, seed=0)
    groups = {}
    for center, label in zip(planted, labels, strict=True):
        groups.setdefault(center, set()).add(int(label))
    assert all(len(g) == 1 for g in groups.values()) and len({next(iter(g)) for g in groups.values()}) == 3
    for center, (label,) in groups.items():
        members = [a for a, lab in zip(adapters, labels, strict=True) if lab == label]
        expected = np.mean([m["m.q.lora_A.weight"] for m in members], axis=0)
        np.testing.assert_allclose(means[label]["m.q.lora_A.weight"], expected, rtol=1e-6, atol=1e-6)
        assert abs(means[label]["m.q.lora_A.weight"].mean() - center) < 0.1


def test_no_more_adapters_than_clusters_leaves_slots_alone():
    adapters = [adapter(1.0, noise=1.0, seed=1), adapter(2.0, noise=1.0, seed=2)]
    means, labels = cluster_adapters(adapters, [1.0, 1.0], k=3, seed=0)
    assert list(labels) == [0, 1]
    for mean, original in zip(means, adapters, strict=True):
        assert all(np.array_equal(mean[k], original[k]) for k in original)


def test_sample_weighted_mean_inside_a_cluster():
    adapters = [adapter(1.0), adapter(1.2), adapter(-9.0), adapter(-9.2)]
    means, labels = cluster_adapters(adapters, [1.0, 3.0, 1.0, 1.0], k=2, seed=0)
    np.testing.assert_allclose(means[labels[0]]["m.q.lora_B.weight"], 1.15, rtol=1e-6)


def reply(client: int, values: list[float], tasks: list[str]) -> Reply:
    metrics = {"num-examples": 10, "num-slots": len(values)}
    for j, task in enumerate(tasks):
        metrics.update({f"slot.{j}.size": 5, f"slot.{j}.task.{task}": 1.0})
    return Reply(
        client=client,
        metrics=metrics,
        adapters={slot_name(j): adapter(v) for j, v in enumerate(values)},
        content=RecordDict(),
    )


def test_every_slot_gets_its_clusters_mean_and_ids_stay_stable(make_cfg):
    strategy = FLTAC(make_cfg("method=fltac", "method.n_clusters=2"), TEMPLATE)
    first = [reply(0, [1.0, -5.0], ["a", "b"]), reply(1, [3.0, -7.0], ["a", "b"])]
    strategy.aggregate_train(1, first)
    slot_a, slot_b = strategy.slot_cluster[(0, 0)], strategy.slot_cluster[(0, 1)]
    assert strategy.slot_cluster[(1, 0)] == slot_a and strategy.slot_cluster[(1, 1)] == slot_b != slot_a
    np.testing.assert_allclose(strategy.means[slot_a]["m.q.lora_A.weight"], 2.0)
    payload = strategy.configure_train(2, [1])[1]
    assert [int(k) for k in payload[CONFIG]["fltac.slots"]] == [slot_a, slot_b]
    sent = read_adapter(payload[cluster_name(slot_b)], TEMPLATE)
    np.testing.assert_allclose(sent["m.q.lora_B.weight"], -6.0)
    # Next round the clusters come out of k-means in another order: ids must follow the adapters.
    strategy.aggregate_train(2, [reply(0, [-6.5, 2.5], ["b", "a"]), reply(1, [-5.5, 1.5], ["b", "a"])])
    assert strategy.slot_cluster[(0, 0)] == slot_b and strategy.slot_cluster[(0, 1)] == slot_a
    np.testing.assert_allclose(strategy.means[slot_a]["m.q.lora_A.weight"], 2.0)
    assert strategy.cluster_tasks() == {slot_a: {"a": 2}, slot_b: {"b": 2}}


def test_a_new_client_gets_the_initial_adapter_for_its_slots(make_cfg):
    strategy = FLTAC(make_cfg("method=fltac"), TEMPLATE)
    payload = strategy.configure_train(1, [5])[5]
    assert list(payload[CONFIG]["fltac.slots"]) == [-1]
    assert "initial" in payload.array_records and not any(k.startswith("cluster.") for k in payload.array_records)
