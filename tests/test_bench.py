"""The bench/ scripts run end to end on a tiny budget (``--smoke``).

Benchmarks are not timed tests: these check that each script runs, prints its table and writes
JSON holding finite numbers. The one number asserted is a property, not a timing: replay
without the LSTM state stays within 7.5 KB per 84x84 step and keeps less than replay with it.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_smoke(script: str, tmp_path: Path, *extra: str) -> tuple[str, dict[str, Any]]:
    out = tmp_path / f"{script}.json"
    completed = subprocess.run(
        [sys.executable, f"bench/{script}.py", "--smoke", "--out", str(out), *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    print(completed.stdout)
    return completed.stdout, json.loads(out.read_text())


def assert_table(stdout: str, header: str, names: list[str]) -> None:
    """The table's header line, its dashed rule and one row per contender are printed."""
    lines = stdout.splitlines()
    header_index = next(i for i, line in enumerate(lines) if line.startswith(header))
    assert set(lines[header_index + 1].replace(" ", "")) == {"-"}
    rows = lines[header_index + 2 : header_index + 2 + len(names)]
    for name, row in zip(names, rows, strict=True):
        assert row.startswith(name), (name, row)


def assert_finite_numbers(row: dict[str, Any], keys: list[str]) -> None:
    for key in keys:
        value = row[key]
        assert isinstance(value, int | float) and not isinstance(value, bool), (key, value)
        assert math.isfinite(value), (key, value)


def test_memory_smoke_meets_the_replay_target(tmp_path: Path) -> None:
    stdout, result = run_smoke("memory", tmp_path)
    names = ["DRQN random", "DRQN sequential", "DRQN stored", "RLlib use_lstm DQN"]
    assert_table(stdout, "contender", names)
    rows = {row["name"]: row for row in result["rows"]}
    assert list(rows) == names
    for row in rows.values():
        assert_finite_numbers(
            row, ["bytes_per_step", "array_bytes_per_step", "peak_rss_mb", "ratio_vs_peer"]
        )
    # A property of what is stored, not a timing: 84x84 uint8 frames without the LSTM state.
    assert rows["DRQN random"]["bytes_per_step"] <= result["target_bytes_per_step"] == 7_500
    assert rows["DRQN stored"]["bytes_per_step"] > rows["DRQN random"]["bytes_per_step"]
    assert not rows["DRQN random"]["stores_lstm_state"]
    assert rows["DRQN stored"]["stores_lstm_state"]
    assert rows["DRQN random"]["frame_dtype"] == "uint8"
    # Discrete observations stay int64 in replay (the module one-hot encodes them), and no
    # previous action or reward column is stored: only the ints, not float one-hots.
    assert_table(stdout, "observations", ["Discrete(4)", "Discrete(64)"])
    for row, num_values in zip(result["discrete_rows"], (4, 64), strict=True):
        assert_finite_numbers(row, ["obs_bytes_per_step", "one_hot_bytes_per_step"])
        assert row["obs_dtype"] == "int64" and row["obs_bytes_per_step"] < 10
        assert row["extra_columns"] == ["weights_seq_no"]
        # 8 bytes per stored int against 4 per one-hot entry.
        assert row["one_hot_ratio"] == pytest.approx(num_values * 4 / 8)


def test_throughput_smoke_measures_both_contenders(tmp_path: Path) -> None:
    stdout, result = run_smoke("throughput", tmp_path)
    assert result["peer_error"] is None
    assert_table(stdout, "contender", ["DRQN", "RLlib use_lstm DQN"])
    training = result["training"]
    for row in training["rows"]:
        assert_finite_numbers(
            row, ["env_steps_per_s", "updates_per_s", "timesteps_trained_per_s", "wall_s"]
        )
        assert row["updates"] > 0
    assert_finite_numbers(training["ratio_drqn_vs_peer"], list(training["ratio_drqn_vs_peer"]))
    assert_table(stdout, "path", ["bare ALE", "FlickeringAtari", "DRQN", "DRQN", "RLlib"])
    for row in result["acting"]["rows"]:
        assert_finite_numbers(row, ["env_steps_per_s", "share_of_ale_floor", "ratio_vs_peer"])


def test_throughput_async_vs_sync_smoke_measures_both_loops_and_the_cap(tmp_path: Path) -> None:
    stdout, result = run_smoke(
        "throughput",
        tmp_path,
        "--async-vs-sync",
        "--async-envs",
        "SlowStatelessCartPole",
        "--async-runners",
        "1",
    )
    assert_table(
        stdout,
        "env ",
        ["SlowStatelessCartPole  1        sync", "SlowStatelessCartPole  1        async"],
    )
    sync_row, async_row = result["rows"]
    for row in (sync_row, async_row):
        assert_finite_numbers(row, ["env_steps_per_s", "updates_per_env_step", "replay_ratio"])
        assert row["updates"] > 0
        assert row["timesteps_trained"] > 0  # RLlib's counter, read for both loops.
    # The sync loop waits on sample() for part of its time: the shares and their cap.
    assert 0.0 < sync_row["act_share"] < 1.0
    assert sync_row["act_share"] + sync_row["learn_share"] == pytest.approx(1.0)
    cap = 1.0 / max(sync_row["act_share"], sync_row["learn_share"])
    assert async_row["overlap_cap"] == sync_row["overlap_cap"] == pytest.approx(cap)
    assert 1.0 <= cap <= 2.0
    assert async_row["speedup_of_cap"] == pytest.approx(async_row["env_steps_per_s_x_sync"] / cap)


def test_throughput_on_cuda_says_so_without_a_gpu(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present; test_throughput_smoke covers the measuring path")
    stdout, result = run_smoke("throughput", tmp_path, "--device", "cuda")
    assert "No CUDA GPU found" in stdout
    assert "skipped" in result


def test_sample_efficiency_smoke_runs_every_contender(tmp_path: Path) -> None:
    stdout, result = run_smoke("sample_efficiency", tmp_path)
    names = [
        "DRQN random",
        "DRQN sequential",
        "DRQN stored",
        "RLlib use_lstm DQN",
        "DQN (no memory)",
    ]
    assert_table(stdout, "contender", names)
    assert [row["name"] for row in result["rows"]] == names
    for run in result["runs"]:
        assert_finite_numbers(run, ["env_steps", "wall_s", "env_steps_per_s"])
    # The smoke target (a return of 10) is within a random policy's reach, so the
    # "reached" path is exercised: every median is a number.
    for row in result["rows"]:
        assert_finite_numbers(row, ["median_env_steps_to_target", "median_wall_s_to_target"])
        assert row["wall_speedup_vs_peer"] is not None


def test_export_latency_smoke_times_every_contender(tmp_path: Path) -> None:
    stdout, result = run_smoke("export_latency", tmp_path)
    names = ["RLModule", "TorchScript", "TorchScript, oneDNN off", "ONNX (onnxruntime)"]
    assert_table(stdout, "contender", names)
    assert [(row["name"], row["batch"]) for row in result["rows"]] == [
        (name, batch) for batch in (1, 16) for name in names
    ]
    for row in result["rows"]:
        assert_finite_numbers(row, ["us_per_call", "us_per_env_step", "speedup"])


def test_sample_efficiency_smoke_runs_the_reference_on_both_envs(tmp_path: Path) -> None:
    """``reference DRQN`` (bench/reference_drqn.py, no Ray) reports in the same columns."""
    for env in ("StatelessCartPole", "DelayedRecall"):
        stdout, result = run_smoke(
            "sample_efficiency", tmp_path, "--env", env, "--contenders", "reference DRQN"
        )
        assert_table(stdout, "contender", ["reference DRQN"])
        (run,) = result["runs"]
        assert_finite_numbers(run, ["env_steps", "wall_s", "env_steps_per_s"])
        assert run["env_steps"] <= 200


def test_wall_speedup_is_a_lower_bound_when_the_peer_missed() -> None:
    """A peer that never reached the target took longer than its runs lasted."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        from sample_efficiency import summarize, wall_speedup_vs_peer
    finally:
        sys.path.remove(str(REPO / "bench"))

    def run(name: str, wall_to_target: float | None, wall: float) -> dict[str, object]:
        reached = wall_to_target is not None
        return {
            "name": name,
            "reached": reached,
            "env_steps_to_target": 1000.0 if reached else None,
            "wall_s_to_target": wall_to_target,
            "wall_s": wall,
            "best_mean_return": 1.0,
            "env_steps_per_s": 10.0,
        }

    runs = [run("fast", 50.0, 50.0), run("fast", 100.0, 100.0), run("fast", None, 400.0)]
    runs += [run("peer", None, 300.0), run("peer", None, 320.0), run("peer", 200.0, 200.0)]
    fast, peer = summarize("fast", runs), summarize("peer", runs)
    assert fast["median_wall_s_to_target"] == 100.0
    assert peer["median_wall_s_to_target"] is None
    assert peer["median_wall_s_at_least"] == 300.0
    assert wall_speedup_vs_peer(fast, peer) == (3.0, True)
    # A peer that reached it in most seeds gives the exact ratio.
    runs[3] = run("peer", 250.0, 250.0)
    assert wall_speedup_vs_peer(fast, summarize("peer", runs)) == (2.5, False)
    assert wall_speedup_vs_peer(fast, None) == (None, False)


def test_reference_parity_smoke_trains_both_sides_on_the_same_protocol(tmp_path: Path) -> None:
    stdout, result = run_smoke("reference_parity", tmp_path)
    names = ["plugin (RLlib DQN + DRQN)", "reference (plain PyTorch)"]
    assert_table(stdout, "contender", [*names, *names, "plugin / reference"])
    assert [run["name"] for run in result["runs"]] == names
    for run in result["runs"]:
        # Both evaluated at the same env steps (every --eval-interval, and at the end).
        assert [steps for steps, _ in run["evaluations"]] == [300, 600]
        assert_finite_numbers(run, ["best", "final", "wall_s"])
    assert_finite_numbers(result["summary"][-1], ["best", "final", "wall_s"])


def test_c1_power_matches_a_simulation_of_the_rules_test() -> None:
    """At the seed count it returns, C1's own test rejects about as often as asked."""
    import numpy as np
    from scipy import stats

    sys.path.insert(0, str(REPO / "bench"))
    try:
        from c1_power import seeds_needed
    finally:
        sys.path.remove(str(REPO / "bench"))
    drqn, dqn = {"mean": 200.0, "std": 40.0}, {"mean": 190.0, "std": 60.0}
    n, gap, direction = seeds_needed(drqn, dqn, power=0.8)
    assert direction == "holds" and gap == pytest.approx(29.0) and n is not None
    rng = np.random.default_rng(0)

    def rejection_rate(seeds: int) -> float:
        a = rng.normal(drqn["mean"], drqn["std"], (4000, seeds))
        b = rng.normal(dqn["mean"], dqn["std"], (4000, seeds))
        margin = 0.1 * dqn["mean"]  # The rule's margin, from DQN's (here: true) mean.
        test = stats.ttest_ind(a + margin, b, axis=1, equal_var=False, alternative="greater")
        return float((test.pvalue < 0.05).mean())

    assert rejection_rate(n) == pytest.approx(0.8, abs=0.04)
    assert rejection_rate(n - 1) < 0.8
