"""Learning curves from the per-episode logs: return against env steps, per seed and median.

Reads the ``episodes.csv`` that every DRQN (and ``BaselineDQN``) run writes into its trial
directory (``rllib_drqn.reporting``) and draws, per trial, the rolling mean return of the last
N episodes against env steps, as Stable-Baselines3's ``ep_rew_mean`` over CleanRL's
per-episode ``charts/episodic_return``. Over a Tune sweep (trial directories with
``params.json``), trials are grouped by the swept value: the config keys whose values differ
between the trials, except seeds. Each group gets one thin line per seed, and the median and
the min-max spread across its seeds on a common env-step grid (min-max rather than the IQR: a
sweep has two to five seeds, and quartiles of so few would be interpolated between two or three
curves).

On the grid, a seed's value at ``x`` env steps is its rolling mean at its last episode that
ended at or before ``x``; the grid runs from 0 to where the shortest seed of the group ends,
so every point has every seed (before a seed's first episode it has none; such points are left
out).

Example::

    from rllib_drqn.plotting import plot_runs

    curves = plot_runs(["results/stateless-cartpole-drqn"], "curves.png")
    print(curves.png_path, curves.csv_path, [group.label for group in curves.groups])
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np

from rllib_drqn.reporting import (
    DEFAULT_EPISODE_RETURN_WINDOW,
    EPISODES_CSV,
    Episode,
    read_episodes,
)

__all__ = [
    "CURVE_COLUMNS",
    "DEFAULT_GRID_POINTS",
    "Curves",
    "Group",
    "PlotError",
    "Trial",
    "find_trials",
    "group_trials",
    "on_grid",
    "plot_runs",
    "rolling_mean",
    "swept_keys",
    "trial_curve",
    "trial_window",
]

#: Columns of the CSV written next to the PNG: what was drawn, point by point.
CURVE_COLUMNS: Final[tuple[str, ...]] = ("group", "curve", "seed", "env_steps", "return_mean")
#: Points of the common env-step grid of each group's median and spread.
DEFAULT_GRID_POINTS: Final[int] = 200
#: Config keys that differ between trials without being what a sweep sweeps.
_NOT_SWEPT: Final[frozenset[str]] = frozenset({"episode_log_dir"})


class PlotError(ValueError):
    """A run directory without a run or without episodes, a bad file, or a bad ``--out``.

    The message is one line that names the path and what to pass instead.
    """


@dataclasses.dataclass(frozen=True)
class Trial:
    """One run's episodes and its config.

    Attributes:
        name: The trial directory's name.
        run_dir: The ``RUN_DIR`` it was found under.
        params: ``params.json`` flattened to ``"a/b"`` keys; empty without one.
        episodes: The rows of its ``episodes.csv``.
    """

    name: str
    run_dir: Path
    params: Mapping[str, Any]
    episodes: Sequence[Episode]

    @property
    def seed(self) -> Any:
        """The value of its first ``seed`` key (``seed``, ``trial/seed``, ...), else None."""
        return next((value for key, value in self.params.items() if _is_seed(key)), None)


@dataclasses.dataclass(frozen=True)
class Group:
    """Trials that share every swept value; their median and min-max on a common grid."""

    label: str
    trials: Sequence[Trial]
    grid: np.ndarray
    median: np.ndarray
    low: np.ndarray
    high: np.ndarray


@dataclasses.dataclass(frozen=True)
class Curves:
    """What :func:`plot_runs` drew and where it wrote it."""

    groups: Sequence[Group]
    window: int | None
    png_path: Path
    csv_path: Path
    skipped: Sequence[Path]


# ---- Finding the runs --------------------------------------------------------------------------


def find_trials(run_dirs: Sequence[str | os.PathLike[str]]) -> tuple[list[Trial], list[Path]]:
    """The trials under each run directory, and the directories skipped for no episodes yet.

    A run directory is a trial directory or an algorithm's ``logdir`` (it holds
    ``episodes.csv``), a Tune experiment directory (its trial directories do), or a storage
    path one level above experiments.

    Raises:
        PlotError: For a missing directory, one with no run in it, one whose runs have no
            episode yet, or a malformed ``episodes.csv`` or ``params.json``.
    """
    trials: list[Trial] = []
    skipped: list[Path] = []
    for given in run_dirs:
        run_dir = Path(given).expanduser()
        if not run_dir.is_dir():
            raise PlotError(
                f"{given}: no such directory; pass a run directory (a Tune experiment or trial "
                f"directory, or an algorithm's logdir) that holds {EPISODES_CSV}."
            )
        logs = _episode_logs(run_dir)
        if not logs:
            raise PlotError(
                f"{given}: no run there: no {EPISODES_CSV} in it or in its trial directories; "
                "pass the directory `rllib train file` or Tune wrote (DRQN and the plugin's "
                "DQN baselines write it)."
            )
        found = []
        for log in logs:
            try:
                episodes = read_episodes(log)
            except ValueError as error:
                raise PlotError(str(error)) from None
            if not episodes:
                skipped.append(log.parent)
                continue
            params = _read_params(log.parent / "params.json")
            found.append(Trial(log.parent.name, run_dir, params, episodes))
        if not found:
            raise PlotError(
                f"{given}: no episodes yet: {EPISODES_CSV} has no rows in {len(logs)} trial(s) "
                "(no training episode has ended); plot again once one has."
            )
        trials += found
    return trials, skipped


def _episode_logs(run_dir: Path) -> list[Path]:
    if (run_dir / EPISODES_CSV).is_file():
        return [run_dir / EPISODES_CSV]
    for pattern in (f"*/{EPISODES_CSV}", f"*/*/{EPISODES_CSV}"):
        logs = sorted(path for path in run_dir.glob(pattern) if path.is_file())
        if logs:
            return logs
    return []


def _read_params(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        params = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PlotError(
            f"{path}: not valid JSON ({error}); Tune writes it: rerun the trial, or move the "
            "file away to plot without its config."
        ) from None
    return _flatten(params) if isinstance(params, dict) else {}


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat |= _flatten(value, f"{name}/")
        else:
            flat[name] = json.dumps(value, sort_keys=True) if isinstance(value, list) else value
    return flat


def _is_seed(key: str) -> bool:
    return key.rsplit("/", 1)[-1] == "seed"


# ---- Curves -----------------------------------------------------------------------------------


def rolling_mean(returns: Sequence[float], window: int) -> np.ndarray:
    """The mean of the last ``window`` returns at each episode (fewer at the start)."""
    values = np.asarray(returns, dtype=float)
    sums = np.concatenate([[0.0], np.cumsum(values)])
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def on_grid(env_steps: Sequence[int], values: Sequence[float], grid: np.ndarray) -> np.ndarray:
    """``values`` as they stood at each grid point: the last one at or before it, else NaN."""
    index = np.searchsorted(np.asarray(env_steps), grid, side="right") - 1
    out = np.asarray(values, dtype=float)[np.maximum(index, 0)]
    return np.where(index >= 0, out, np.nan)


def trial_window(trial: Trial, window: int | None) -> int:
    """``window``, else the trial's ``episode_return_window``, else the plugin's default."""
    if window is not None:
        return window
    value = trial.params.get("episode_return_window")
    return value if isinstance(value, int) and value >= 1 else DEFAULT_EPISODE_RETURN_WINDOW


def trial_curve(trial: Trial, window: int | None) -> tuple[np.ndarray, np.ndarray]:
    steps = np.array([episode.env_steps for episode in trial.episodes])
    returns = [episode.episode_return for episode in trial.episodes]
    return steps, rolling_mean(returns, trial_window(trial, window))


def swept_keys(trials: Sequence[Trial]) -> list[str]:
    """Config keys whose values differ between ``trials``, except seeds and object reprs."""
    keys = sorted({key for trial in trials for key in trial.params})
    swept = []
    for key in keys:
        if _is_seed(key) or key.rsplit("/", 1)[-1] in _NOT_SWEPT:
            continue
        values = [trial.params.get(key) for trial in trials]
        # Objects Tune could not write as JSON are their repr, which differs per trial.
        if any(isinstance(value, str) and " at 0x" in value for value in values):
            continue
        if len({json.dumps(value, sort_keys=True, default=str) for value in values}) > 1:
            swept.append(key)
    return swept


def group_trials(trials: Sequence[Trial]) -> dict[str, list[Trial]]:
    """Trials grouped by swept value within each run directory, in a stable order.

    Labels name the swept keys (``lr=0.001, update_mode=stored``), prefixed with the run
    directory's name when several were given.
    """
    run_dirs = list(dict.fromkeys(trial.run_dir for trial in trials))
    groups: dict[str, list[Trial]] = {}
    for run_dir in run_dirs:
        mine = [trial for trial in trials if trial.run_dir == run_dir]
        keys = swept_keys(mine)
        for trial in mine:
            swept = ", ".join(f"{key}={trial.params.get(key)}" for key in keys)
            prefix = run_dir.name if len(run_dirs) > 1 else ""
            label = ": ".join(part for part in (prefix, swept) if part) or "all trials"
            groups.setdefault(label, []).append(trial)
    return groups


def _group(label: str, trials: Sequence[Trial], window: int | None, points: int) -> Group:
    curves = [trial_curve(trial, window) for trial in trials]
    end = min(int(steps[-1]) for steps, _ in curves)
    grid = np.unique(np.linspace(0, end, points).round().astype(int))
    stacked = np.array([on_grid(steps, values, grid) for steps, values in curves])
    with warnings.catch_warnings():  # All-NaN columns (before every seed's first episode).
        warnings.simplefilter("ignore", RuntimeWarning)
        median = np.nanmedian(stacked, axis=0)
        low, high = np.nanmin(stacked, axis=0), np.nanmax(stacked, axis=0)
    # Only where every seed has a value, so the median is over all of them.
    keep = ~np.isnan(stacked).any(axis=0)
    return Group(label, list(trials), grid[keep], median[keep], low[keep], high[keep])


# ---- Drawing ---------------------------------------------------------------------------------


def plot_runs(
    run_dirs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    window: int | None = None,
    grid_points: int = DEFAULT_GRID_POINTS,
) -> Curves:
    """Draws the runs' curves into ``out`` (a ``.png``) and writes what it drew beside it.

    Args:
        run_dirs: Run directories (see :func:`find_trials`).
        out: The PNG path; the CSV goes next to it with the suffix ``.csv``.
        window: N of the rolling mean; None: each trial's ``episode_return_window`` from its
            ``params.json`` (the window its runs reported), else 100.
        grid_points: Points of each group's common env-step grid.

    Raises:
        PlotError: For a bad run directory (see :func:`find_trials`) or ``out``.
    """
    png_path = Path(out).expanduser()
    if png_path.suffix.lower() != ".png":
        raise PlotError(f"--out {out}: the plot is a PNG; pass a path ending in .png.")
    if png_path.is_dir():
        raise PlotError(f"--out {out} is a directory; pass a file path ending in .png.")
    if window is not None and (isinstance(window, bool) or window < 1):
        raise PlotError(f"--window must be an int >= 1, got {window!r}.")
    trials, skipped = find_trials(run_dirs)
    groups = [
        _group(label, members, window, grid_points)
        for label, members in group_trials(trials).items()
    ]
    csv_path = png_path.with_suffix(".csv")
    try:
        png_path.parent.mkdir(parents=True, exist_ok=True)
        _write_csv(groups, window, csv_path)
        _draw(groups, window, png_path)
    except OSError as error:
        raise PlotError(f"--out {out}: cannot write there ({error.strerror}).") from None
    return Curves(groups, window, png_path, csv_path, skipped)


def _write_csv(groups: Sequence[Group], window: int | None, path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as file:
        rows = csv.writer(file)
        rows.writerow(CURVE_COLUMNS)
        for group in groups:
            for trial in group.trials:
                steps, values = trial_curve(trial, window)
                seed = "" if trial.seed is None else trial.seed
                rows.writerows(
                    (group.label, trial.name, seed, int(s), float(v))
                    for s, v in zip(steps, values, strict=True)
                )
            aggregates = (("median", group.median), ("min", group.low), ("max", group.high))
            for curve, values in aggregates:
                rows.writerows(
                    (group.label, curve, "", int(s), float(v))
                    for s, v in zip(group.grid, values, strict=True)
                )


def _draw(groups: Sequence[Group], window: int | None, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.0, 4.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colors = [f"C{i % 10}" for i in range(len(groups))]
    for group, color in zip(groups, colors, strict=True):
        # Steps: a rolling mean holds from one episode's end to the next's.
        for trial in group.trials:
            steps, values = trial_curve(trial, window)
            axes.plot(steps, values, color=color, alpha=0.35, linewidth=0.8, drawstyle="steps-post")
        seeds = len(group.trials)
        axes.plot(
            group.grid,
            group.median,
            color=color,
            linewidth=2.0,
            drawstyle="steps-post",
            label=f"{group.label} (median of {seeds} seed{'s' if seeds != 1 else ''})",
        )
        if seeds > 1:
            axes.fill_between(
                group.grid, group.low, group.high, color=color, alpha=0.15, step="post"
            )
    windows = sorted({trial_window(t, window) for group in groups for t in group.trials})
    over = f"last {windows[0]} episodes" if len(windows) == 1 else "last N episodes"
    axes.set_xlabel("env steps")
    axes.set_ylabel(f"return, mean of the {over}")
    axes.set_title(
        "Training return; thin: each seed, thick: median, band: min-max over seeds",
        fontsize="medium",
    )
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.savefig(path, dpi=120)
