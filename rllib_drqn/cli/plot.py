"""``rllib plot RUN_DIR [RUN_DIR ...]``: training return against env steps, from episodes.csv.

A thin layer over :func:`rllib_drqn.plotting.plot_runs`: draws each trial's rolling mean of the
last N episode returns, and over a Tune sweep the median and min-max across seeds per swept
value, into one PNG, and writes the CSV it drew from beside it. Exits 0 when done, 2 for a bad
command line, a directory with no run in it or a run with no episode yet (one line; nothing is
written).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rllib_drqn import plotting
from rllib_drqn.cli.experiment_file import CLIError, non_negative_int

__all__ = ["DEFAULT_OUT", "add_parser"]

#: The PNG's name in the first RUN_DIR when --out is not given.
DEFAULT_OUT = "curves.png"


def _run_plot(args: argparse.Namespace) -> int:
    out = args.out or str(Path(args.run_dirs[0]) / DEFAULT_OUT)
    try:
        curves = plotting.plot_runs(args.run_dirs, out, window=args.window)
    except plotting.PlotError as error:
        raise CLIError(str(error)) from None
    for group in curves.groups:
        ends = ", ".join(
            f"{trial.name}: {len(trial.episodes)} episodes to {trial.episodes[-1].env_steps:,} "
            "env steps"
            for trial in group.trials
        )
        print(f"{group.label}: {len(group.trials)} trial(s) ({ends})", flush=True)
    if curves.skipped:
        print(f"Skipped (no episode yet): {', '.join(str(path) for path in curves.skipped)}")
    print(f"Plot: {curves.png_path}\nCSV:  {curves.csv_path}")
    return 0


def _window(text: str) -> int:
    value = non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Registers ``rllib plot``."""
    parser = subparsers.add_parser(
        "plot",
        help="draw training return against env steps from runs' episodes.csv",
        description="Draw the training return against env steps from the episodes.csv of each "
        "run: per trial the mean return of its last N episodes at each episode; over a Tune "
        "sweep one thin line per seed, and per swept value (the config keys that differ "
        "between trials, seeds aside) the median and the min-max band across seeds on a "
        "common env-step grid. Writes the PNG and, beside it, the CSV it drew from.",
        epilog="Exit status: 0 when done, 2 for a bad command line, a directory with no run "
        "in it, or runs with no episode yet (nothing is written).",
    )
    parser.add_argument(
        "run_dirs",
        nargs="+",
        metavar="RUN_DIR",
        help="a Tune experiment or trial directory (e.g. results/<experiment> from `rllib "
        "train file`), or an algorithm's logdir; each holds episodes.csv in it or in its "
        "trial directories",
    )
    parser.add_argument(
        "--out",
        metavar="PATH.png",
        help=f"the plot (default RUN_DIR/{DEFAULT_OUT} of the first RUN_DIR); the CSV goes "
        "next to it as PATH.csv",
    )
    parser.add_argument(
        "--window",
        type=_window,
        metavar="N",
        help="episodes in the rolling mean (default: each trial's episode_return_window from "
        "its params.json, else 100)",
    )
    parser.set_defaults(handler=_run_plot)
