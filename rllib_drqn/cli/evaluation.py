"""``rllib evaluate CHECKPOINT``: play a checkpoint across flicker probabilities; report it.

A thin layer over :func:`rllib_drqn.evaluate.evaluate`: one line per flicker probability as it
is played, then where the table, JSON, plot (and GIF) went. Exits 0 when done, 2 for a bad
command line or checkpoint (checked before any episode is played; nothing is written).
"""

from __future__ import annotations

import argparse

from rllib_drqn import evaluate as evaluation
from rllib_drqn.cli.experiment_file import CLIError, non_negative_int

__all__ = ["add_parser"]


def _run_evaluate(args: argparse.Namespace) -> int:
    def report(result: evaluation.FlickerResult) -> None:
        print(
            f"flicker prob {result.flicker_prob:4.2f} ({result.fraction_shown:4.0%} of frames "
            f"shown) | return {result.mean:8.2f} +- {result.std:7.2f} over {result.episodes} "
            "episodes",
            flush=True,
        )

    try:
        probs = evaluation.parse_flicker_probs(args.flicker_probs)
        episodes = evaluation.check_num_episodes(args.episodes)
        epsilon = evaluation.check_epsilon(args.epsilon)
        max_episode_steps = evaluation.check_max_episode_steps(args.max_episode_steps)
        spec = evaluation.inspect_checkpoint(args.checkpoint)
        print(
            f"Evaluating {spec.algorithm} checkpoint {spec.path} on {spec.env_name} at flicker "
            f"probs {list(probs)}: {episodes} episodes each, epsilon {epsilon:g}, seed "
            f"{args.seed}",
            flush=True,
        )
        result = evaluation.evaluate(
            spec,
            probs,
            episodes,
            epsilon=epsilon,
            seed=args.seed,
            max_episode_steps=max_episode_steps,
            out_dir=args.out,
            video_dir=args.video,
            progress=report,
        )
    except evaluation.EvaluationError as error:
        raise CLIError(str(error)) from None
    print(f"Table: {result.csv_path}\nJSON:  {result.json_path}\nPlot:  {result.plot_path}")
    if result.video_path is not None:
        print(f"Video: {result.video_path}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Registers ``rllib evaluate``."""
    parser = subparsers.add_parser(
        "evaluate",
        help="play a checkpoint across flicker probabilities",
        description="Play a checkpoint epsilon-greedily at each flicker probability (the "
        "probability of blanking a frame) and write evaluation.csv, evaluation.json and "
        "observability.png (mean return +- std against observability), as in Hausknecht & "
        "Stone (2015), Figure 5.",
        epilog="Exit status: 0 when done, 2 for a bad command line or checkpoint (checked "
        "before any episode is played; nothing is written).",
    )
    parser.add_argument(
        "checkpoint",
        metavar="CHECKPOINT",
        help="an algorithm checkpoint: <storage-path>/<experiment>/<trial>/checkpoint_00000N "
        "from `rllib train file`, or a directory written by Algorithm.save_to_path()",
    )
    parser.add_argument(
        "--flicker-probs",
        required=True,
        metavar="P,P,...",
        help="comma-separated probabilities in [0, 1] of blanking a frame, e.g. "
        "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1 (only Box observations flicker: for "
        "Discrete, MultiDiscrete, MultiBinary, Dict and Tuple ones pass 0)",
    )
    parser.add_argument(
        "--episodes", required=True, metavar="N", help="episodes per flicker probability (>= 1)"
    )
    parser.add_argument(
        "--epsilon",
        default=str(evaluation.DEFAULT_EPSILON),
        metavar="E",
        help="probability of a random action per step (default "
        f"{evaluation.DEFAULT_EPSILON}, the paper's evaluation; 0: greedy)",
    )
    parser.add_argument(
        "--seed",
        type=non_negative_int,
        default=0,
        metavar="S",
        help="episode i resets its env with seed S+i at every flicker probability (default 0)",
    )
    parser.add_argument(
        "--max-episode-steps",
        default=str(evaluation.DEFAULT_MAX_EPISODE_STEPS),
        metavar="N",
        help="cut an episode after N steps; its return so far counts (default "
        f"{evaluation.DEFAULT_MAX_EPISODE_STEPS:,}, ALE's own cap; envs without a time limit, "
        "such as StatelessCartPole, need one)",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="where the table, JSON and plot go (default ./evaluation/<checkpoint name>; "
        "never inside the checkpoint)",
    )
    parser.add_argument(
        "--video",
        metavar="DIR",
        help="also save the first episode at the first flicker probability as a GIF in DIR",
    )
    parser.set_defaults(handler=_run_evaluate)
