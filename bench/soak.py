"""Soak test: train DRQN for a set time and record RSS; after the replay fills, RSS stays flat.

Run (from the repository root)::

    python bench/soak.py --minutes 60 --out bench/out/soak.json   # the hour issue 6 asks for
    python bench/soak.py --minutes 2                               # a quick look (CI-sized)
    python bench/soak.py --env FlickeringAtari --minutes 60        # Pong, flicker 0.5, uint8
    python bench/soak.py --seconds 40 --sample-every 5             # what tests/ runs

The replay capacity is small (``--capacity``, 2,000 steps on StatelessCartPole) so it fills in
the first minute or so; from then on every episode added evicts old ones and the memory the
run holds should stop growing. Every ``--sample-every`` seconds (between training
iterations) the script records the resident set size (RSS) of the driver, which holds the
learner and the replay (``num_learners=0``), and of every Ray worker process (``ray::*``:
the env runners); Ray's own daemons (raylet, GCS, ...; each by name in the JSON) are
recorded apart. It prints one table row per sample: time, env steps, replay timesteps, RSS MB.

At the end it reports, for the samples taken after the replay filled (the first eviction):

- ``rss_growth_mb_per_hour_after_fill``: least-squares slope of driver + workers RSS;
- ``rss_growth_mb_per_hour_second_half``: the same over the later half of those samples,
  which leaves out allocator warm-up right after the fill;
- ``rss_first_vs_last_after_fill_mb``: last minus first.

``--fail-above MB_PER_HOUR`` makes the script exit 1 when the second-half slope is above it.
The JSON (``--out``) holds the settings, the machine, every sample and the summary.

Stand-alone on purpose: it imports only the package and Ray, not ``bench/common.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

MB = 2**20
ENVS = ("StatelessCartPole", "FlickeringAtari")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    duration = parser.add_mutually_exclusive_group()
    duration.add_argument("--minutes", type=float, help="how long to train (default 2)")
    duration.add_argument("--seconds", type=float, help="how long to train, in seconds")
    parser.add_argument("--env", choices=ENVS, default="StatelessCartPole")
    parser.add_argument(
        "--capacity",
        type=int,
        help="replay capacity in timesteps (default 2000 for StatelessCartPole, 5000 for "
        "FlickeringAtari): small, so it fills early",
    )
    parser.add_argument(
        "--sample-every", type=float, default=10.0, help="seconds between RSS samples"
    )
    parser.add_argument(
        "--num-env-runners", type=int, default=1, help="remote env runners (default 1)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/out/soak.json", help="where the JSON goes")
    parser.add_argument(
        "--fail-above",
        type=float,
        metavar="MB_PER_HOUR",
        help="exit 1 if RSS grows faster than this after the replay filled (second half)",
    )
    args = parser.parse_args(argv)
    if args.seconds is None:
        args.seconds = 60.0 * (args.minutes if args.minutes is not None else 2.0)
    for name in ("seconds", "sample_every"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.capacity is None:
        args.capacity = 2_000 if args.env == "StatelessCartPole" else 5_000
    if args.capacity < 100:
        parser.error(f"--capacity must be >= 100 timesteps, got {args.capacity}")
    if args.num_env_runners < 0:
        parser.error(f"--num-env-runners must be >= 0, got {args.num_env_runners}")
    return args


def build_config(args: argparse.Namespace) -> Any:
    from rllib_drqn import DRQNConfig
    from rllib_drqn.config import BUFFER_TYPES
    from rllib_drqn.replay import DRQNEpisodeReplayBuffer

    if args.env == "FlickeringAtari":
        config = DRQNConfig().environment(
            "FlickeringAtari", env_config={"game": "Pong", "flicker_prob": 0.5}
        )
        model_config = {"lstm_cell_size": 256, "max_seq_len": 10}
        rollout = 50
    else:
        config = DRQNConfig().environment("StatelessCartPole")
        model_config = {"lstm_cell_size": 16, "fcnet_hiddens": [16], "max_seq_len": 10}
        rollout = 16
    return (
        config.env_runners(
            num_env_runners=args.num_env_runners,
            num_cpus_per_env_runner=0.5,
            rollout_fragment_length=rollout,
        )
        .training(
            num_sequences_per_batch=8,
            num_steps_sampled_before_learning_starts=min(500, args.capacity // 4),
            replay_buffer_config={
                "type": BUFFER_TYPES[DRQNEpisodeReplayBuffer],
                "capacity": args.capacity,
            },
        )
        .rl_module(model_config=model_config)
        .reporting(min_sample_timesteps_per_iteration=4 * rollout)
        .debugging(seed=args.seed)
    )


def rss_mb(driver: Any) -> tuple[dict[str, float], dict[str, float]]:
    """RSS in MB: totals (driver, ``ray::`` workers, Ray's daemons) and each daemon by name."""
    import psutil  # Ray vendors it (ray/thirdparty_files); `import ray` puts it on the path.

    totals = {"driver": driver.memory_info().rss / MB, "workers": 0.0, "ray_daemons": 0.0}
    daemons: dict[str, float] = {}
    for child in driver.children(recursive=True):
        try:
            rss = child.memory_info().rss / MB
            title = " ".join(child.cmdline()[:1]) or child.name()
            name = child.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue  # An idle worker exiting between the listing and the read.
        if title.startswith("ray::"):
            totals["workers"] += rss
        else:
            totals["ray_daemons"] += rss
            daemons[name] = round(daemons.get(name, 0.0) + rss, 2)
    return totals, daemons


def slope_mb_per_hour(samples: list[dict[str, Any]]) -> float | None:
    """Least-squares slope of ``rss_mb`` over time, MB per hour; None for < 2 samples."""
    if len(samples) < 2:
        return None
    seconds = np.array([sample["t_s"] for sample in samples])
    rss = np.array([sample["rss_mb"] for sample in samples])
    if np.ptp(seconds) == 0:
        return None
    return float(np.polyfit(seconds, rss, 1)[0] * 3600.0)


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    filled = [sample for sample in samples if sample["replay_filled"]]
    half = filled[len(filled) // 2 :]
    return {
        "replay_filled_at_s": filled[0]["t_s"] if filled else None,
        "samples_after_fill": len(filled),
        "rss_mb_at_fill": filled[0]["rss_mb"] if filled else None,
        "rss_mb_last": samples[-1]["rss_mb"] if samples else None,
        "rss_growth_mb_per_hour_after_fill": slope_mb_per_hour(filled),
        "rss_growth_mb_per_hour_second_half": slope_mb_per_hour(half),
        "rss_first_vs_last_after_fill_mb": (
            filled[-1]["rss_mb"] - filled[0]["rss_mb"] if len(filled) >= 2 else None
        ),
        "driver_first_vs_last_after_fill_mb": (
            filled[-1]["driver_mb"] - filled[0]["driver_mb"] if len(filled) >= 2 else None
        ),
    }


def _format(value: float | None, unit: str) -> str:
    return (
        "n/a (too few samples after the replay filled)" if value is None else f"{value:+.1f} {unit}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    # Two busy cores: intra-op threads only oversubscribe them (measured 30x slower).
    torch.set_num_threads(1)
    import ray

    ray.init(num_cpus=max(2, args.num_env_runners), include_dashboard=False, log_to_driver=False)
    import psutil  # After ray: Ray vendors it (ray/thirdparty_files) and puts it on the path.

    driver = psutil.Process()
    config = build_config(args)
    print(
        f"Soak: DRQN on {args.env} for {args.seconds:.0f} s, replay capacity {args.capacity} "
        f"timesteps, {args.num_env_runners} remote env runner(s), an RSS sample every "
        f"{args.sample_every:g} s",
        flush=True,
    )
    print(
        f"{'time s':>8} | {'env steps':>10} | {'replay steps':>12} | {'RSS MB':>8} | "
        f"{'driver':>8} | {'workers':>8} | {'ray daemons':>11}",
        flush=True,
    )
    samples: list[dict[str, Any]] = []
    algo = config.build_algo()
    started = time.monotonic()
    next_sample = started
    try:
        while True:
            result = algo.train()
            now = time.monotonic()
            if now >= next_sample or now - started >= args.seconds:
                buffer = algo.local_replay_buffer
                rss, daemons = rss_mb(driver)
                sample = {
                    "t_s": round(now - started, 2),
                    "iteration": result["training_iteration"],
                    "env_steps": int(result["env_runners"]["num_env_steps_sampled_lifetime"]),
                    "replay_timesteps": int(buffer.get_num_timesteps()),
                    "replay_episodes_evicted": int(buffer.get_num_episodes_evicted()),
                    "replay_filled": buffer.get_num_episodes_evicted() > 0,
                    "rss_mb": round(rss["driver"] + rss["workers"], 2),
                    "driver_mb": round(rss["driver"], 2),
                    "workers_mb": round(rss["workers"], 2),
                    "ray_daemons_mb": round(rss["ray_daemons"], 2),
                    "ray_daemons_by_name_mb": daemons,
                }
                samples.append(sample)
                print(
                    f"{sample['t_s']:8.0f} | {sample['env_steps']:10,} | "
                    f"{sample['replay_timesteps']:12,} | {sample['rss_mb']:8.1f} | "
                    f"{sample['driver_mb']:8.1f} | {sample['workers_mb']:8.1f} | "
                    f"{sample['ray_daemons_mb']:11.1f}"
                    + ("  (replay full)" * sample["replay_filled"]),
                    flush=True,
                )
                next_sample = now + args.sample_every
            if now - started >= args.seconds:
                break
    finally:
        algo.stop()
        ray.shutdown()

    summary = summarize(samples)
    report = {
        "settings": {key: value for key, value in vars(args).items() if key != "out"},
        "machine": {
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            "ray": ray.__version__,
            "torch": torch.__version__,
        },
        "samples": samples,
        "summary": summary,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    filled_at = summary["replay_filled_at_s"]
    print(
        f"Replay filled at {filled_at:.0f} s; RSS (driver + workers) after that: "
        if filled_at is not None
        else "The replay never filled: raise --minutes or lower --capacity. ",
        end="",
    )
    if filled_at is not None:
        print(
            f"{_format(summary['rss_growth_mb_per_hour_after_fill'], 'MB/hour')} (all), "
            f"{_format(summary['rss_growth_mb_per_hour_second_half'], 'MB/hour')} (second "
            f"half), first vs last {_format(summary['rss_first_vs_last_after_fill_mb'], 'MB')}."
        )
    print(f"JSON: {out}")
    growth = summary["rss_growth_mb_per_hour_second_half"]
    if args.fail_above is not None and (growth is None or growth > args.fail_above):
        print(
            f"soak: RSS grew {_format(growth, 'MB/hour')} after the replay filled, above "
            f"--fail-above {args.fail_above:g}.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
