"""What the benchmarks share to show their numbers."""

from bench.render import mean_std, portable_command, publish


def test_a_command_loses_the_machines_own_paths():
    command = "python -m bench.privacy --json /home/me/repo/outputs/bench/p.json --into /home/me/repo/docs/r.md"
    assert portable_command(command) == "python -m bench.privacy --json outputs/bench/p.json --into docs/r.md"


def test_mean_std_leaves_out_what_was_not_recorded():
    assert mean_std([1.0, None, 3.0]) == "2.000 ± 1.000"
    assert mean_std([0.25]) == "0.250"
    assert mean_std([None]) == "-"


def test_publish_prints_and_puts_the_text_between_the_markers(tmp_path, capsys):
    page = tmp_path / "page.md"
    page.write_text("before\n<!-- t:start -->\nold\n<!-- t:end -->\nafter\n")
    publish("| a |\n", page, "t")
    assert "| a |" in capsys.readouterr().out
    assert "old" not in page.read_text() and "| a |" in page.read_text()
    publish("| b |\n", None, "t")
    assert "| a |" in page.read_text()


def test_ray_cluster_rounds_render_against_the_cost_model():
    from bench.ray_cluster import render, round_costs

    results = {
        "rounds": [
            {
                "round": 1,
                "seconds": 2.0,
                "train": {"clients": {str(c): {"train-seconds": 0.6} for c in range(6)}},
                "evaluate": {"clients": {}},
            },
            {
                "round": 2,
                "seconds": 3.0,
                "train": {"clients": {str(c): {"train-seconds": 0.7} for c in range(6)}},
                "evaluate": {"clients": {"0": {}}},
            },
        ]
    }
    rows = round_costs(results, actors=2)
    assert [(r["waves"], round(r["rest"], 2)) for r in rows] == [(3, 0.2), (3, 0.9)]
    record = {"rows": {"two nodes": rows}, "load": [0.5, 1.5], "cpus": 2, "seconds": 80.0}
    record["command"] = "python -m bench.ray_cluster"
    text = render(record)
    assert "| two nodes | 1 (train) | 2.00 | 0.600 | 3 x 0.600 = 1.80 | 0.20 |" in text
    assert "| two nodes | 2 (train + evaluate) | 3.00 | 0.700 | 3 x 0.700 = 2.10 | 0.90 |" in text
    assert "accounts for 90% to 90% of the round; the rest, 0.20 to 0.20 s" in text
