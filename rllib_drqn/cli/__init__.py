"""``rllib``: train DRQN (or RLlib's DQN as a memory-less baseline), evaluate and plot runs.

Ray 2.60 no longer ships RLlib's ``rllib`` command. This is its ``train file`` half for the new
API stack, installed as the ``rllib`` console script and runnable as ``python -m rllib_drqn``::

    rllib train file tuned_examples/drqn_stateless_cartpole.yaml
    rllib train file tuned_examples/drqn_stateless_cartpole.yaml --resume   # after a crash
    rllib evaluate CHECKPOINT --flicker-probs 0,0.5,1 --episodes 10
    rllib reproduce --out docs/reproduction   # the paper's three claims
    rllib export CHECKPOINT --format onnx --out deploy/   # run it without Ray
    rllib plot results/stateless-cartpole-drqn   # return against env steps, per seed

One module per concern:

- :mod:`rllib_drqn.cli.experiment_file`: reading and checking the YAML experiment, building
  its config (no Ray);
- :mod:`rllib_drqn.cli.run`: ``rllib train file``: running, checkpointing, resuming, signals,
  progress (its docstring lists the exit statuses);
- :mod:`rllib_drqn.cli.evaluation`: ``rllib evaluate``, over :mod:`rllib_drqn.evaluate`;
- :mod:`rllib_drqn.cli.reproduce`: ``rllib reproduce``, over :mod:`rllib_drqn.reproduce`;
- :mod:`rllib_drqn.cli.export`: ``rllib export``, over :mod:`rllib_drqn.export`.
- :mod:`rllib_drqn.cli.plot`: ``rllib plot``, over :mod:`rllib_drqn.plotting`.

To add a subcommand, write a module with an ``add_parser(subparsers)`` function that adds its
parser and sets ``handler`` (a function of the parsed arguments that returns the exit status and
raises :class:`CLIError` for a bad input), and list that function in ``SUBCOMMANDS``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Final

from rllib_drqn.cli import evaluation, export, plot, reproduce, run
from rllib_drqn.cli.experiment_file import (
    ALGORITHMS,
    DEFAULT_STORAGE_PATH,
    RETURN_MEAN,
    RETURN_WINDOW,
    STOP_KEYS,
    CLIError,
    Experiment,
    build_config,
    load_experiment,
    resolve_stop,
)
from rllib_drqn.cli.run import train

__all__ = [
    "ALGORITHMS",
    "DEFAULT_STORAGE_PATH",
    "EXIT_BAD_INPUT",
    "RETURN_MEAN",
    "RETURN_WINDOW",
    "STOP_KEYS",
    "SUBCOMMANDS",
    "CLIError",
    "Experiment",
    "build_config",
    "build_parser",
    "load_experiment",
    "main",
    "resolve_stop",
    "train",
]

#: Exit status for a bad command line, file, config or checkpoint: nothing was started.
EXIT_BAD_INPUT: Final[int] = 2

#: One function per subcommand; each adds its parser and sets ``handler``.
SUBCOMMANDS: Final[tuple[Callable[[argparse._SubParsersAction], None], ...]] = (
    run.add_parser,
    evaluation.add_parser,
    reproduce.add_parser,
    export.add_parser,
    plot.add_parser,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``rllib`` argument parser, one subparser per entry of :data:`SUBCOMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="rllib",
        description="Train DRQN (rllib-drqn) or RLlib's DQN from tuned-example YAML files, "
        "resume runs, evaluate checkpoints across observability, plot learning curves, and "
        "export them.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_subcommand in SUBCOMMANDS:
        add_subcommand(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``rllib`` command; returns its exit status (see :mod:`rllib_drqn.cli.run`)."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except CLIError as error:
        print(f"rllib: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
