"""The GPU check (bench/gpu/check.sh) runs end to end on this CPU, on a budget of seconds.

The GPU machine is lent rarely and for minutes, so its one command must not rot between loans:
``check.sh --cpu --tiny`` runs every stage here (env report, the throughput bench, a Pong and a
flickering Pong training run through ``rllib train file``) and this test checks what it writes,
not only that it exists. The numbers of a tiny run mean nothing; their shapes and bounds do.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHECK = REPO / "bench" / "gpu" / "check.sh"
CURVE = REPO / "bench" / "gpu" / "pong_curve.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_check(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, **env}
    return subprocess.run(
        ["bash", str(CHECK), *args],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=2400,
    )


def read_curve(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def tiny_check(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp_path = tmp_path_factory.mktemp("gpu-check")
    completed = run_check(tmp_path, "--cpu", "--tiny")
    print(completed.stdout[-6000:])
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-2000:]
    return tmp_path / "out"


def test_every_stage_finishes(tiny_check: Path) -> None:
    check = json.loads((tiny_check / "check.json").read_text())
    assert check["device"] == "cpu"
    assert check["budget"] == "tiny"
    for name in ("env", "throughput", "pong", "flicker"):
        assert check["stages"][name]["status"] == "ok", check["stages"]
        assert check["stages"][name]["exit"] == 0
    assert "ray sees {'CPU'" in (tiny_check / "env.log").read_text()
    throughput = json.loads((tiny_check / "throughput.json").read_text())
    assert throughput["benchmark"] == "throughput"
    assert throughput["settings"]["device"] == "cpu"
    assert throughput["training"]["rows"][0]["updates_per_s"] > 0


@pytest.mark.parametrize(
    ("run", "flicker_prob"), [("pong", 0.0), ("flicker", 0.5)], ids=["pong", "flicker"]
)
def test_training_run_writes_its_curve_and_summary(
    tiny_check: Path, run: str, flicker_prob: float
) -> None:
    run_dir = tiny_check / run
    rows = read_curve(run_dir / "curve.csv")
    assert list(rows[0]) == [
        "env_steps",
        "wall_s",
        "return_mean",
        "iteration",
        "episodes",
        "timesteps_trained",
    ]
    env_steps = [float(row["env_steps"]) for row in rows]
    wall = [float(row["wall_s"]) for row in rows]
    assert env_steps[0] > 0
    assert env_steps == sorted(env_steps) and wall == sorted(wall)
    assert [int(float(row["iteration"])) for row in rows] == list(range(1, len(rows) + 1))
    returns = [float(row["return_mean"]) for row in rows if row["return_mean"]]
    # Episodes are cut at 20 agent steps in the tiny budget: at most 20 points either way.
    assert returns, "no episode ended in the tiny run"
    assert all(-20 <= value <= 20 for value in returns)

    summary = json.loads((run_dir / "summary.json").read_text())
    print(run, json.dumps(summary["final"]))
    assert summary["error"] is None
    assert summary["training_exit_status"] == 0
    assert summary["machine"]["cpu_count"] >= 1 and summary["machine"]["cuda_device"] is None
    settings = summary["settings"]
    assert settings["budget"] == "tiny"
    assert settings["num_gpus_per_learner"] == 0
    assert settings["env_config"]["flicker_prob"] == flicker_prob
    # The tuned example's one update per 4 env steps, kept for the run's batch size.
    assert settings["training_intensity"] == settings["train_batch_size_per_learner"] / 4
    final = summary["final"]
    assert final["env_steps"] == env_steps[-1]
    assert final["wall_s"] == wall[-1]
    assert final["return_mean_last"] == returns[-1]
    assert final["learner_updates_approx"] > 0 and final["updates_per_s_approx"] > 0
    assert math.isclose(final["env_steps_per_s"], env_steps[-1] / wall[-1])

    png = (run_dir / "curve.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    import matplotlib.image

    image = matplotlib.image.imread(run_dir / "curve.png")
    assert image.shape[:2] == (400, 600)
    assert image.std() > 0.01  # Not a blank canvas.
    # The experiment file the run trained from reads back with the project's loader.
    from rllib_drqn.cli import load_experiment

    experiment = load_experiment(run_dir / "experiment.yaml")
    assert experiment.config["env_config"]["max_episode_steps"] == 20


def test_report_of_a_run_that_wrote_nothing(tmp_path: Path) -> None:
    """A training stage killed before its first iteration still gets files, and says why."""
    completed = subprocess.run(
        [sys.executable, str(CURVE), "report", str(tmp_path), "--training-exit-status", "124"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "no result.json" in summary["error"]
    assert summary["training_exit_status"] == 124
    assert summary["final"]["env_steps"] is None
    assert read_curve(tmp_path / "curve.csv") == []
    assert (tmp_path / "curve.png").read_bytes().startswith(PNG_SIGNATURE)


def test_bad_invocations_fail_before_anything_runs(tmp_path: Path) -> None:
    unknown = run_check(tmp_path, "--tinyy")
    assert unknown.returncode == 2
    assert "unknown option '--tinyy'" in unknown.stderr
    no_pack = run_check(tmp_path, GPU_DIR=str(tmp_path / "nothing-packed"))
    assert no_pack.returncode == 2
    assert "run bench/gpu/pack.sh" in no_pack.stderr
    assert not (tmp_path / "out" / "check.json").exists()
