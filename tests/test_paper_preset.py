"""``sweep=paper`` (the FedRouter authors' setting): its settings, and one of its jobs end to end on the CPU.

The job runs through the sweep launcher on Flower's Ray runtime with only what a CPU and no hub need swapped in:
a randomly initialised Llama of Llama-3.2-1B's architecture (grouped-query attention, llama3 RoPE, tied embeddings,
a byte-level tokenizer with Llama-3's BOS/EOS and no pad token) saved to a temporary directory, the four hub
datasets as local files shaped like them, float32 weights without NF4 (bitsandbytes needs CUDA), and tiny sizes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

# datasets reads its cache location at import; Ray workers inherit the environment of the process that starts Ray.
os.environ.setdefault("HF_DATASETS_CACHE", str(Path(os.environ["FEDROUTER_CACHE"]) / "hf-datasets"))
pa = pytest.importorskip("pyarrow")
pytest.importorskip("datasets")

import pyarrow.parquet as pq  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

from fedrouter_app.cli.sweep import job_overrides, run_job  # noqa: E402
from fedrouter_app.config.compose import CONF_DIR, compose_config, load_run_config  # noqa: E402
from fedrouter_app.data.partition import build_client_data, client_tasks  # noqa: E402

BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"


def paper_sweep() -> Any:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            return compose("config", overrides=["sweep=paper"], return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def test_the_preset_holds_the_authors_settings(local_hub):
    config = paper_sweep()
    jobs = job_overrides(config)
    methods = ["fedrouter", "fedit", "fedprox", "local", "feddpa", "ifca", "fltac", "tap"]
    assert len(jobs) == 5 * 3 * len(methods)
    assert {o for job in jobs for o in job if o.startswith("seed=")} == {f"seed={s}" for s in (111, 222, 333, 444, 555)}
    assert {o for job in jobs for o in job if o.startswith("scenario=")} == {
        "scenario=cross_task",
        "scenario=dual",
        "scenario=iid",
    }
    assert {o for job in jobs for o in job if o.startswith("method=")} == {f"method={m}" for m in methods}
    # Resumable: a fixed directory, one subdirectory per (scenario, method, seed).
    assert OmegaConf.to_container(config.hydra.sweep) == {
        "dir": "${output.dir}/sweeps/paper",
        "subdir": "${scenario.name}-${hydra:runtime.choices.method}-s${seed}",
    }

    # Composed as the sweep composes a job, with only the dataset ids pointed at local copies (no hub here).
    cfg = load_run_config(["sweep=paper", "scenario=dual", "method=fedrouter", "seed=111", *local_hub])
    assert (cfg.model.name, cfg.model.quantization, cfg.model.max_length) == ("meta-llama/Llama-3.2-1B", "4bit", 1024)
    lora = cfg.lora
    assert (lora.r, lora.alpha, lora.dropout, lora.target_modules, lora.layers) == (
        8,
        16,
        0.05,
        ["q_proj", "v_proj"],
        None,
    )
    train = cfg.train
    assert (train.lr, train.lr_min, train.lr_schedule, train.local_steps, train.batch_size) == (
        5e-4,
        1e-5,
        "cosine",
        10,
        16,
    )
    assert (cfg.num_rounds, cfg.num_clients, cfg.fraction_train) == (25, 8, 1.0)
    assert cfg.data.source == "hub" and cfg.data.task_prompts is False
    hub = compose_config(["sweep=paper"]).data.tables
    assert [(t.path, t.get("config"), t.max_rows) for t in hub] == [
        ("nyu-mll/glue", "qqp", 30000),
        ("GEM/web_nlg", "en", None),
        ("knkarthick/samsum", None, None),
        ("Harvard/gigaword", None, 30000),
    ]
    assert all(t.test_split is None for t in cfg.data.tables) and cfg.data.test_fraction == 0.2  # 80/20 of each pool
    assert cfg.data.prompt_template.startswith("Below is an instruction that describes a task.")
    # Up to 600 training and 300 test examples per client (every client tested on all four tasks).
    assert cfg.scenario.train_examples_per_client == 600 and cfg.scenario.shares == "pool"
    assert cfg.scenario.test_examples_per_task * len(cfg.data.tasks) == 300 and cfg.eval.scope == "global"
    # The reference's dual pairs: qqp+gigaword, gigaword+samsum, samsum+webnlg, webnlg+qqp.
    assert [client_tasks(cfg, i) for i in range(4)] == [
        ("paraphrase", "headline"),
        ("headline", "summarization"),
        ("summarization", "data_to_text"),
        ("data_to_text", "paraphrase"),
    ]
    assert (cfg.method.n_local, cfg.method.n_global, cfg.method.schedule) == (2, 4, "round_robin")
    for scenario, n_local in (("cross_task", 1), ("iid", 4)):
        other = load_run_config(["sweep=paper", f"scenario={scenario}", "method=fedrouter", *local_hub])
        assert (other.method.n_local, other.method.n_global, other.eval.scope) == (n_local, 4, "global")


def llama_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts``, with Llama-3's BOS and EOS and, like it, no pad token."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=[BOS, EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS)


def tiny_llama(out: Path, texts: list[str]) -> Path:
    """A randomly initialised Llama of Llama-3.2-1B's architecture, scaled down, saved with its tokenizer."""
    tokenizer = llama_tokenizer(texts)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention, as Llama-3.2 (32 heads, 8 KV heads)
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
        },
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def hub_like(root: Path) -> dict[str, Path]:
    """One local directory per hub dataset, with a train split of rows shaped like the hub's (pools of 40/30/20/40)."""
    rows = {
        "qqp": [
            {"question1": f"How do I learn {i}?", "question2": f"What is the way to learn {i % 7}?", "label": i % 2,
             "idx": i}
            for i in range(40)
        ],
        "web_nlg": [
            {"input": [f"Place_{i} | country | Land_{i % 5}", f"Place_{i} | leader | Person_{i % 3}"],
             "target": f"Place {i} is in Land {i % 5} and led by Person {i % 3}.", "gem_id": f"web_nlg_en-train-{i}"}
            for i in range(30)
        ],
        "samsum": [
            {"id": str(i), "dialogue": f"Ann: shall we meet at {i}?\nBob: yes, see you at {i}.",
             "summary": f"Ann and Bob meet at {i}."}
            for i in range(20)
        ],
        "gigaword": [
            {"document": f"the minister said on monday that prices rose by {i} percent",
             "summary": f"prices up {i} pct"}
            for i in range(40)
        ],
    }  # fmt: skip
    dirs = {}
    for name, table in rows.items():
        dirs[name] = root / name
        dirs[name].mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(table), dirs[name] / "train.parquet")
    return dirs


@pytest.fixture(scope="module")
def local_hub(tmp_path_factory) -> list[str]:
    """Overrides pointing the preset's four hub datasets at local copies (what datasets reads offline)."""
    dirs = hub_like(tmp_path_factory.mktemp("hub"))
    return [
        *(f"data.tables.{i}.path={dirs[name]}" for i, name in enumerate(("qqp", "web_nlg", "samsum", "gigaword"))),
        "data.tables.0.config=null",
        "data.tables.1.config=null",
    ]


@pytest.fixture(scope="module")
def cpu_overrides(local_hub, tmp_path_factory) -> list[str]:
    """``local_hub``, a tiny Llama for the hub model, float32 on the CPU for NF4, and a much smaller run."""
    corpus = [
        f"Below is an instruction that describes a task. Write a response that appropriately completes the request. "
        f"### Instruction: ### Response: How do I learn {i}?-What is the way to learn {i}? yes no "
        f"['Place_{i} | country | Land_{i}'] Ann: shall we meet at {i}? the minister said prices rose by {i} percent"
        for i in range(60)
    ]
    model = tiny_llama(tmp_path_factory.mktemp("model") / "tiny-llama-3.2", corpus)
    return [
        *local_hub,
        f"model.name={model}",
        "model.quantization=none",
        "model.precision=fp32",
        "model.device=cpu",
        "model.max_length=96",
        "num_clients=3",
        "num_rounds=2",
        "train.local_steps=2",
        "train.batch_size=4",
        "scenario.train_examples_per_client=12",
        "scenario.test_examples_per_task=2",
        "eval.batch_size=16",
        "eval.max_new_tokens=4",
        "method.embed_batch_size=16",
    ]


def test_pool_shares_and_raw_inputs_reach_the_clients(cpu_overrides):
    cfg = load_run_config(["sweep=paper", "scenario=dual", "method=fedrouter", "seed=111", *cpu_overrides])
    data = build_client_data(cfg, 0)
    counts = {t: sum(ex.task == t for ex in data.train) for t in data.tasks}
    # 80/20 of pools of 40 (qqp) and 40 (gigaword) rows: 32 and 32 training rows, so 6 + 6 of the client's 12.
    assert counts == {"paraphrase": 6, "headline": 6}
    counts = {t: sum(ex.task == t for ex in build_client_data(cfg, 1).train) for t in ("headline", "summarization")}
    assert counts == {"headline": 8, "summarization": 4}  # pools of 32 and 16 training rows: 2:1
    qqp = next(ex for ex in data.train if ex.task == "paraphrase")
    assert qqp.instruction.startswith("How do I learn ") and "-What is the way" in qqp.instruction
    assert len(data.test) == 2 * 4  # every client is tested on every task


@pytest.mark.slow
def test_a_paper_job_runs_end_to_end_on_the_cpu(cpu_overrides, tmp_path):
    job = next(j for j in job_overrides(paper_sweep()) if {"scenario=dual", "method=fedrouter", "seed=111"} <= set(j))
    record = run_job([*job, *cpu_overrides], tmp_path)
    assert record["status"] == "completed", record.get("traceback", record)
    results = json.loads((Path(record["run_dir"]) / "results.json").read_text())
    assert results["run"]["status"] == "completed"
    config = results["config"]
    assert (config["method"]["name"], config["scenario"]["name"], config["seed"]) == ("fedrouter", "dual", 111)
    assert config["lora"]["target_modules"] == ["q_proj", "v_proj"] and config["data"]["task_prompts"] is False
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    # Every client is tested on all four tasks (2 rows each); each task has a loss and a score.
    final = results["final"]
    assert results["tasks"]["all"] == ["paraphrase", "headline", "summarization", "data_to_text"]
    for client in final["clients"].values():
        tasks = client["tasks"]
        assert set(tasks) == set(results["tasks"]["all"]) and all(t["n"] == 2 for t in tasks.values())
        assert all(t["loss"] > 0 for t in tasks.values())
    assert set(final["views"]) >= {"router-global", "router-local"}
    # Only the q/v LoRA tensors travel: 2 blocks x 2 modules x (A and B).
    assert results["adapter"]["num_parameters"] == 2 * (8 * 64 + 64 * 8) + 2 * (8 * 64 + 32 * 8)
