"""``rllib plot``: curves from the per-episode logs of a real two-seed Tune sweep; bad inputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import tiny_drqn_config
from ray import tune

from rllib_drqn.cli import main
from rllib_drqn.plotting import (
    CURVE_COLUMNS,
    on_grid,
    plot_runs,
    rolling_mean,
)
from rllib_drqn.reporting import EPISODE_COLUMNS, EPISODES_CSV, read_episodes

WINDOW = 10


@pytest.fixture(scope="module")
def sweep(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-seed Tune sweep of a tiny DRQN, two iterations per trial; its experiment dir."""
    import rllib_drqn  # noqa: F401  (registers "DRQN" with Tune)

    torch.set_num_threads(1)
    storage = tmp_path_factory.mktemp("sweep")
    config = tiny_drqn_config(seed=tune.grid_search([0, 1])).reporting(episode_return_window=WINDOW)
    results = tune.Tuner(
        "DRQN",
        param_space=config,
        run_config=tune.RunConfig(
            name="seeds", stop={"training_iteration": 2}, storage_path=str(storage), verbose=0
        ),
    ).fit()
    assert not results.errors
    return storage / "seeds"


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def test_plot_of_a_two_seed_sweep_draws_each_seed_and_their_median(
    sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trial_dirs = sorted(path.parent for path in sweep.glob(f"*/{EPISODES_CSV}"))
    assert len(trial_dirs) == 2  # Each trial's log is in its trial directory.
    assert all((trial / "params.json").is_file() for trial in trial_dirs)

    out = tmp_path / "curves.png"
    assert main(["plot", str(sweep), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "all trials: 2 trial(s)" in printed and f"Plot: {out}" in printed

    rows = _read_csv(out.with_suffix(".csv"))
    assert tuple(rows[0]) == CURVE_COLUMNS
    assert {row["group"] for row in rows} == {"all trials"}  # Only the seed differs.
    seeds = set()
    for trial in trial_dirs:
        episodes = read_episodes(trial / EPISODES_CSV)
        mine = [row for row in rows if row["curve"] == trial.name]
        seeds.add(mine[0]["seed"])
        # One point per episode: the mean of its last WINDOW (the trials' own window).
        assert [int(row["env_steps"]) for row in mine] == [e.env_steps for e in episodes]
        expected = rolling_mean([e.episode_return for e in episodes], WINDOW)
        np.testing.assert_allclose([float(row["return_mean"]) for row in mine], expected)
    assert seeds == {"0", "1"}
    by_curve = {
        name: np.array([float(row["return_mean"]) for row in rows if row["curve"] == name])
        for name in ("median", "min", "max")
    }
    assert len(by_curve["median"]) > 10
    assert np.all(by_curve["min"] <= by_curve["median"])
    assert np.all(by_curve["median"] <= by_curve["max"])
    assert np.any(by_curve["min"] < by_curve["max"])  # Two seeds, two curves.

    from matplotlib.image import imread

    pixels = imread(out)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 500
    assert pixels[..., :3].var() > 1e-3  # Not a blank canvas.


def _fake_trial(experiment: Path, name: str, params: dict[str, Any], returns: list[float]) -> None:
    trial = experiment / name
    trial.mkdir(parents=True)
    (trial / "params.json").write_text(json.dumps(params))
    with (trial / EPISODES_CSV).open("w", newline="") as file:
        rows = csv.writer(file)
        rows.writerow(EPISODE_COLUMNS)
        rows.writerows((100 * (i + 1), ret, 10, 0) for i, ret in enumerate(returns))


def test_trials_are_grouped_by_the_swept_value_with_seeds_aside(tmp_path: Path) -> None:
    experiment = tmp_path / "sweep"
    for lr in (0.001, 0.003):
        for seed in (0, 1):
            params = {
                "lr": lr,
                "seed": seed,
                "gamma": 0.99,
                "episode_return_window": 2,
                "episode_log_dir": f"/somewhere/{lr}_{seed}",  # Differs, but is not swept.
                "callbacks_class": f"<object object at 0x{seed:x}{int(lr * 1e3)}>",  # A repr.
                "model_config": {"lstm_cell_size": 8},
            }
            _fake_trial(experiment, f"DRQN_{lr}_{seed}", params, [seed + 1.0] * 3 + [lr * 1e3])
    curves = plot_runs([experiment], tmp_path / "out" / "c.png", grid_points=7)
    assert [group.label for group in curves.groups] == ["lr=0.001", "lr=0.003"]
    first = curves.groups[0]
    assert len(first.trials) == 2
    # Both seeds' rolling means on the grid 0..400: none before the first episode at 100.
    assert list(first.grid) == [133, 200, 267, 333, 400]
    np.testing.assert_allclose(first.median, [1.5, 1.5, 1.5, 1.5, 1.25])
    np.testing.assert_allclose(first.low, [1.0, 1.0, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(first.high, [2.0, 2.0, 2.0, 2.0, 1.5])
    assert (tmp_path / "out" / "c.csv").is_file() and (tmp_path / "out" / "c.png").is_file()
    # Two run directories: each names its groups.
    other = tmp_path / "other"
    _fake_trial(other, "DQN_0", {"lr": 0.001, "seed": 0}, [3.0])
    both = plot_runs([experiment, other], tmp_path / "both.png")
    labels = [group.label for group in both.groups]
    assert labels == ["sweep: lr=0.001", "sweep: lr=0.003", "other"]


def test_rolling_mean_and_grid() -> None:
    np.testing.assert_allclose(rolling_mean([1, 2, 3, 4], 2), [1.0, 1.5, 2.5, 3.5])
    values = on_grid([10, 20], [1.0, 2.0], np.array([0, 10, 15, 25]))
    np.testing.assert_array_equal(values, [np.nan, 1.0, 1.0, 2.0])


def _header_only(path: Path) -> Path:
    (path / "trial").mkdir(parents=True)
    (path / "trial" / EPISODES_CSV).write_text(",".join(EPISODE_COLUMNS) + "\n")
    return path


BAD_INPUTS = [
    ("missing", lambda tmp: [str(tmp / "nope")], "no such directory"),
    ("no_run", lambda tmp: [str(tmp)], "no run there: no episodes.csv"),
    ("no_episodes", lambda tmp: [str(_header_only(tmp / "run"))], "no episodes yet"),
    (
        "not_png",
        lambda tmp: [str(_header_only(tmp / "run")), "--out", str(tmp / "c.jpg")],
        "pass a path ending in .png",
    ),
    ("bad_window", lambda tmp: [str(tmp), "--window", "0"], "expected an integer >= 1"),
]


@pytest.mark.parametrize(
    ("name", "arguments", "message"), BAD_INPUTS, ids=[bad[0] for bad in BAD_INPUTS]
)
def test_bad_input_exits_2_with_one_line(
    name: str, arguments: Any, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["plot", *arguments(tmp_path)]
    if name == "bad_window":
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        status = exit_info.value.code
    else:
        status = main(argv)
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert message in err
    if name != "bad_window":  # argparse prints its usage first.
        assert len(err.splitlines()) == 1 and err.startswith("rllib: error: ")
    assert not list(tmp_path.rglob("*.png"))
