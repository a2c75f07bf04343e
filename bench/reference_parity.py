"""The plugin against the single-file reference DRQN, on the reproduction's small-scale protocol.

Run (from the repository root)::

    python bench/reference_parity.py                    # seeds 0-4, 30k env steps each
    python bench/reference_parity.py --seeds 0 --env-steps 6000 --eval-interval 2000
    python bench/reference_parity.py --smoke            # seconds; what CI runs

For each seed, in one process and one after the other (plugin, then reference, so load hits
both alike): the plugin trains the config ``rllib reproduce`` trains for DRQN at p = 0.5
(``rllib_drqn.reproduce.build_contender_config``: RLlib's sync DQN loop, its env runner in the
driver, no Tune), and ``bench/reference_drqn.py`` trains the same protocol in plain PyTorch.
Both evaluate every ``--eval-interval`` env steps (10 episodes at epsilon 0.05, the
reproduction's evaluation seeds). The table gives each side's best and final evaluation and
wall seconds, then medians over seeds and the plugin / reference ratios:

- **best**: the acceptance is the plugin's median best within 15% of the reference's;
- **wall**: the plugin's cost over plain PyTorch, the same env steps and updates (target 2x).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import reference_drqn as ref
from common import (
    Column,
    base_parser,
    format_table,
    init_ray,
    machine_info,
    progress,
    ratio,
    set_torch_threads,
    write_json,
)


def parse_args(argv: list[str] | None = None) -> Any:
    parser = base_parser(__doc__.split("\n\n")[0], "bench/results/reference_parity.json")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--env-steps", type=int, default=30_000)
    parser.add_argument("--eval-interval", type=int, default=5_000)
    parser.add_argument("--flicker-prob", type=float, default=0.5)
    args = parser.parse_args(argv)
    if args.smoke:
        args.seeds, args.env_steps, args.eval_interval = [0], 600, 300
    return args


def run_plugin(args: Any, seed: int) -> dict[str, Any]:
    """The reproduction's DRQN trial, minus Tune: the same training and evaluation loop."""
    from gymnasium.wrappers import TimeLimit

    from rllib_drqn import reproduce
    from rllib_drqn.evaluate import DEFAULT_MAX_EPISODE_STEPS, make_env

    protocol = reproduce.Protocol(
        seeds=(seed,),
        env_steps=args.env_steps,
        eval_interval=args.eval_interval,
        flicker_prob=args.flicker_prob,
    )
    contender = reproduce.Contender("DRQN", 1, args.flicker_prob)
    config = reproduce.build_contender_config(protocol, contender, seed)
    env = TimeLimit(
        make_env(config.env, config.env_config, contender.flicker_prob), DEFAULT_MAX_EPISODE_STEPS
    )
    started = time.perf_counter()
    algo = config.build_algo()
    evaluations: list[tuple[int, float]] = []
    try:
        for _, steps, score in reproduce.train_with_evaluations(algo, env, protocol, seed):
            if score is not None:
                evaluations.append((steps, score))
                progress(f"plugin seed {seed}: {steps:,} env steps, eval {score:.1f}")
    finally:
        algo.stop()
        env.close()
    return _row("plugin (RLlib DQN + DRQN)", seed, evaluations, time.perf_counter() - started)


def run_reference(args: Any, seed: int) -> dict[str, Any]:
    settings = ref.Settings(
        env_id="CartPole-v1",
        flicker_prob=args.flicker_prob,
        seed=seed,
        env_steps=args.env_steps,
        eval_interval=args.eval_interval,
        learning_starts=min(1_000, args.env_steps // 4),
    )
    started = time.perf_counter()
    result = ref.train(settings)
    return _row(
        "reference (plain PyTorch)", seed, result.evaluations, time.perf_counter() - started
    )


def _row(name: str, seed: int, evaluations: list[tuple[int, float]], wall: float) -> dict[str, Any]:
    scores = [score for _, score in evaluations]
    return {
        "name": name,
        "seed": seed,
        "evaluations": evaluations,
        "best": max(scores) if scores else math.nan,
        "final": scores[-1] if scores else math.nan,
        "wall_s": wall,
    }


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians (min - max) over seeds per side, then the plugin / reference ratios."""
    rows = []
    for name in dict.fromkeys(run["name"] for run in runs):
        mine = [run for run in runs if run["name"] == name]
        row: dict[str, Any] = {"name": name, "seed": "median"}
        for key in ("best", "final", "wall_s"):
            values = [run[key] for run in mine]
            row[key] = float(np.median(values))
            row[f"{key}_range"] = f"{min(values):.1f} - {max(values):.1f}"
        rows.append(row)
    plugin, reference = rows
    rows.append(
        {
            "name": "plugin / reference",
            "seed": "ratio",
            "best": ratio(plugin["best"], reference["best"]),
            "final": ratio(plugin["final"], reference["final"]),
            "wall_s": ratio(plugin["wall_s"], reference["wall_s"]),
        }
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_torch_threads(args.torch_threads)
    init_ray()
    runs = []
    for seed in args.seeds:
        runs.append(run_plugin(args, seed))
        runs.append(run_reference(args, seed))
    summary = summarize(runs)
    columns = [
        Column("name", "contender", "{}"),
        Column("seed", "seed", "{}"),
        Column("best", "best eval", "{:,.2f}"),
        Column("best_range", "best min - max", "{}"),
        Column("final", "final eval", "{:,.2f}"),
        Column("final_range", "final min - max", "{}"),
        Column("wall_s", "wall s", "{:,.2f}"),
    ]
    print(
        format_table(
            f"Plugin vs reference DRQN, flickering CartPole-v1 p = {args.flicker_prob:g}, "
            f"{args.env_steps:,} env steps, seeds {args.seeds}",
            columns,
            [*runs, *summary],
        )
    )
    write_json(
        args.out, {"machine": machine_info(), "args": vars(args), "runs": runs, "summary": summary}
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
