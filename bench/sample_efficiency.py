"""Sample efficiency on StatelessCartPole (or DelayedRecall): env steps and wall s to a target.

Run (from the repository root)::

    python bench/sample_efficiency.py           # 5 contenders x 3 seeds (hours on 2 CPUs)
    python bench/sample_efficiency.py --smoke   # seconds; what CI runs
    python bench/sample_efficiency.py --seeds 0 --max-steps 10000 \
        --contenders "DRQN random" "RLlib use_lstm DQN"

Contenders, each trained from scratch per seed with the same settings (defaults: those of the
tuned example ``tuned_examples/drqn_stateless_cartpole.yaml``: a 64-unit layer, LSTM 64, 10
trained steps per sequence, 32 sequences per update, lr 3e-3, 3-step targets, one update per 2
env steps, learning after 500 steps, target sync every 500 steps, epsilon 1 -> 0.02 over 5,000
steps):

- ``DRQN stored`` (the tuned example's mode, R2D2: ``--burn-in`` 10 warm-up steps before the
  10 trained ones, so sequences of 20) / ``DRQN sequential`` / ``DRQN random``: DRQN in each
  update mode.
- ``RLlib use_lstm DQN``: RLlib's own recurrent DQN at the same sizes (``bench/common.py``),
  with 1-step targets: its sequence replay asserts ``n_step == 1``.
- ``DQN (no memory)``: DQN with a 64-unit dense layer where the others have the LSTM; the
  same number of transitions per update.
- ``DRQN defaults`` (not in the default list): ``DRQNConfig().environment(...)`` with nothing
  else set, the out-of-the-box first try (README, "Configuration"); e.g. ``--contenders "DRQN
  defaults" --target-return 150 --max-steps 25000 --seeds 0 1 2 3 4``.
- ``DQN (no memory) defaults`` (not in the default list): its memory-less baseline,
  ``rllib_drqn.baselines.memoryless_dqn`` (RLlib's DQN with the same defaults, a dense layer
  where DRQN has its LSTM).
- ``DRQN stored async`` (not in the default list): ``DRQN stored`` with ``async_training``:
  one remote env runner samples while the learner trains in the driver, at the replay ratio
  the sync loop runs at, held by the rate limiter.
- ``reference DRQN`` (not in the default list): ``bench/reference_drqn.py``, the single-file
  PyTorch DRQN without Ray, set as ``DRQN random`` is (zero state, the same sizes and
  schedule, ``--max-seq-len`` trained steps per window, plus ``--n-step`` - 1 steps of
  lookahead so every trained step gets its full n-step target); its return is measured as
  RLlib's is (the episodes that ended in each ``--steps-per-iteration`` block, at most
  ``--window``). It runs in this process and starts no Ray.
- ``DRQN stored remote`` (not in the default list): its sync peer, ``DRQN stored`` in RLlib's
  loop with the same one remote env runner, so the two differ only in the loop (a remote
  runner seeds its env with ``seed + 1``, the driver's own runner with ``seed``).

``--env DelayedRecall`` (the package's Discrete memory env: name the cue seen 5 steps back)
takes only the two defaults contenders and ``reference DRQN``, e.g. ``--env DelayedRecall
--contenders "DRQN defaults" "DQN (no memory) defaults" --target-return 0.9 --max-steps
10000``: the others are sized for StatelessCartPole, and RLlib's ``use_lstm`` DQN takes no
Discrete observations.

A run stops when the training return averaged over the last ``--window`` completed episodes
(``env_runners/episode_return_window_mean``, ``rllib_drqn.reporting``, across reports;
epsilon-greedy; every contender reports it, the RLlib DQNs through
``rllib_drqn.baselines.BaselineDQNConfig``) first reaches ``--target-return``, or at
``--max-steps`` env steps. It is checked after
every ``algo.train()`` iteration of ``--steps-per-iteration`` env steps, which is the
resolution of the step counts. Wall seconds count ``algo.train()`` only (not building). Per
contender the table shows medians over seeds; a seed that never reaches the target counts as
infinitely slow, so the median is "-" when half or more of the seeds missed it.

Targets: DRQN reaches 450 within 20,000 env steps, and >= 1.5x faster in wall time than the
peer. On the window of 20 neither is met (README, "Measured here": median 28,500-30,000 env
steps; the peer reached 450 at none of its finished seeds in 50,000 steps, so no wall ratio).
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    MEMORYLESS_NAME,
    PEER_NAME,
    Column,
    Recurrent,
    Shared,
    base_parser,
    drqn_config,
    format_table,
    init_ray,
    lstm_dqn_config,
    machine_info,
    memoryless_dqn_config,
    progress,
    ratio,
    register_bench_envs,
    set_torch_threads,
    write_json,
)

ENVS = ("StatelessCartPole", "DelayedRecall")
TARGET_STEPS = 20_000
TARGET_WALL_RATIO = 1.5
#: DRQN stored with the asynchronous loop: 1 remote env runner samples while the learner trains
#: in the driver, the rate limiter holding the sync loop's replay ratio (one update per
#: ``--rollout-fragment-length`` env steps); "DRQN stored" is its sync peer at that ratio.
ASYNC_NAME = "DRQN stored async"
#: ``DRQN stored`` in RLlib's sync loop with the same one remote env runner as the async
#: contender: the peer that differs from it only in the loop. A remote runner seeds its env and
#: exploration with ``seed + worker_index`` (RLlib's ``EnvRunner._set_seeding``), the driver's
#: local runner with ``seed``, so "DRQN stored" at seed s acts on other episodes than either.
SYNC_REMOTE_NAME = "DRQN stored remote"
#: ``DRQNConfig().environment(env)`` and nothing else (issue #14's "good first try"): none of
#: the flags below reach it, only the measurement's iteration size and return window.
DEFAULTS_NAME = "DRQN defaults"
#: ``rllib_drqn.baselines.memoryless_dqn``: the defaults' memory-less baseline.
MEMORYLESS_DEFAULTS_NAME = "DQN (no memory) defaults"
#: ``bench/reference_drqn.py``: plain PyTorch, no Ray, set as ``DRQN random`` is.
REFERENCE_NAME = "reference DRQN"
CONTENDERS = (
    "DRQN random",
    "DRQN sequential",
    "DRQN stored",
    PEER_NAME,
    MEMORYLESS_NAME,
    ASYNC_NAME,
    SYNC_REMOTE_NAME,
    DEFAULTS_NAME,
    MEMORYLESS_DEFAULTS_NAME,
    REFERENCE_NAME,
)
DEFAULT_CONTENDERS = CONTENDERS[:5]


def parse_args(argv: list[str] | None = None) -> Any:
    parser = base_parser(__doc__.split("\n\n")[0], "bench/out/sample_efficiency.json")
    parser.add_argument("--env", choices=ENVS, default=ENVS[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--contenders",
        nargs="+",
        choices=CONTENDERS,
        default=list(DEFAULT_CONTENDERS),
        metavar="NAME",
        help=f"Any of {list(CONTENDERS)}.",
    )
    parser.add_argument("--target-return", type=float, default=450.0)
    parser.add_argument(
        "--window",
        type=int,
        default=20,
        help="Episodes in the mean return (episode_return_window; the tuned examples' 20).",
    )
    parser.add_argument("--max-steps", type=int, default=50_000, help="Env steps per run, at most.")
    parser.add_argument("--steps-per-iteration", type=int, default=500)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--lstm-cell-size", type=int, default=64)
    parser.add_argument("--fcnet-hiddens", type=int, nargs="+", default=[64])
    parser.add_argument("--max-seq-len", type=int, default=10)
    parser.add_argument(
        "--burn-in", type=int, default=10, help="DRQN stored: warm-up steps before max_seq_len."
    )
    parser.add_argument("--num-sequences", type=int, default=32)
    parser.add_argument("--n-step", type=int, default=3, help="The peer always uses 1.")
    parser.add_argument("--epsilon-steps", type=int, default=5000)
    parser.add_argument("--epsilon-final", type=float, default=0.02)
    parser.add_argument(
        "--rollout-fragment-length", type=int, default=2, help="Env steps per learner update."
    )
    parser.add_argument("--learning-starts", type=int, default=500)
    parser.add_argument("--target-network-update-freq", type=int, default=500)
    args = parser.parse_args(argv)
    defaults_only = {DEFAULTS_NAME, MEMORYLESS_DEFAULTS_NAME}
    if args.env != ENVS[0] and not set(args.contenders) <= defaults_only | {REFERENCE_NAME}:
        parser.error(
            f"--env {args.env} takes only the contenders {sorted(defaults_only)}; the others "
            f"are sized for {ENVS[0]}. Pass --contenders {' '.join(map(repr, defaults_only))}."
        )
    if args.smoke:
        args.seeds = [0]
        args.max_steps = 200
        args.steps_per_iteration = 100
        args.learning_starts = 50
        args.num_sequences = 4
        # Reachable by a random policy, so the smoke run goes through the "reached" path too.
        args.target_return = 10.0
        args.window = 5
    return args


def build(name: str, args: Any, seed: int) -> Any:
    recurrent = Recurrent(
        lstm_cell_size=args.lstm_cell_size,
        max_seq_len=args.max_seq_len,
        num_sequences=args.num_sequences,
        fcnet_hiddens=tuple(args.fcnet_hiddens),
    )
    shared = Shared(
        lr=args.lr,
        rollout_fragment_length=args.rollout_fragment_length,
        learning_starts=args.learning_starts,
        target_network_update_freq=args.target_network_update_freq,
        steps_per_iteration=args.steps_per_iteration,
        episodes_for_smoothing=args.window,
        seed=seed,
        n_step=args.n_step,
        epsilon=((0, 1.0), (args.epsilon_steps, args.epsilon_final)),
    )
    if name in (DEFAULTS_NAME, MEMORYLESS_DEFAULTS_NAME):
        from rllib_drqn import DRQNConfig
        from rllib_drqn.baselines import memoryless_dqn

        config = (
            DRQNConfig().environment(args.env)
            if name == DEFAULTS_NAME
            else memoryless_dqn(args.env)
        )
        return (
            config.reporting(
                min_sample_timesteps_per_iteration=args.steps_per_iteration,
                metrics_num_episodes_for_smoothing=args.window,
                episode_return_window=args.window,
            )
            .debugging(seed=seed)
            .build_algo()
        )
    if name.startswith("DRQN "):
        update_mode = name.removeprefix("DRQN ").removesuffix(" async").removesuffix(" remote")
        # R2D2's layout: burn-in steps only warm the stored state up, then max_seq_len trained.
        burn_in = args.burn_in if update_mode == "stored" else 0
        recurrent = replace(recurrent, max_seq_len=burn_in + args.max_seq_len)
        config = drqn_config(
            args.env, {}, recurrent, shared, update_mode=update_mode, burn_in_len=burn_in
        )
        if name in (ASYNC_NAME, SYNC_REMOTE_NAME):
            config.env_runners(num_env_runners=1)
        if name == ASYNC_NAME:
            # replay_ratio stays None: the sync loop's updates per env step.
            config.training(async_training=True)
        return config.build_algo()
    if name == PEER_NAME:
        return lstm_dqn_config(args.env, {}, recurrent, shared).build_algo()
    return memoryless_dqn_config(args.env, {}, recurrent, shared).build_algo()


def run_reference(args: Any, seed: int) -> dict[str, Any]:
    """``reference DRQN``: the same measurement as :func:`run_one`, without RLlib.

    Every ``--steps-per-iteration`` env steps, the mean return of the episodes that ended in
    that block (the last ``--window`` of them) is compared with the target, as RLlib 2.60's
    ``episode_return_mean`` is after each ``algo.train()``.
    """
    import reference_drqn as ref

    settings = ref.Settings(
        env_id=args.env,
        flicker_prob=0.0,
        seed=seed,
        env_steps=args.max_steps,
        lr=args.lr,
        n_step=args.n_step,
        target_update_interval=args.target_network_update_freq,
        learning_starts=args.learning_starts,
        epsilon_final=args.epsilon_final,
        epsilon_decay_steps=args.epsilon_steps,
        replay_capacity=Shared.replay_capacity,
        update_interval=args.rollout_fragment_length,
        batch_size=args.num_sequences,
        seq_len=args.max_seq_len,
        eval_interval=0,
        fcnet_hiddens=tuple(args.fcnet_hiddens),
        lstm_cell_size=args.lstm_cell_size,
        torch_threads=args.torch_threads,
    )
    best: float | None = None
    reached: dict[str, float] = {}

    def stop(result: Any) -> bool:
        nonlocal best
        step, block = result.env_steps, args.steps_per_iteration
        if step % block:
            return False
        ended = []
        for end, episode_return in reversed(result.episodes):
            if end <= step - block or len(ended) == args.window:
                break
            ended.append(episode_return)
        if not ended:
            return False
        mean_return = sum(ended) / len(ended)
        best = mean_return if best is None else max(best, mean_return)
        if mean_return >= args.target_return:
            reached.update(env_steps=float(step), wall_s=result.wall_s)
            return True
        return False

    result = ref.train(settings, stop=stop)
    return {
        "name": REFERENCE_NAME,
        "seed": seed,
        "reached": bool(reached),
        "env_steps_to_target": reached.get("env_steps"),
        "wall_s_to_target": reached.get("wall_s"),
        "best_mean_return": best,
        "env_steps": float(result.env_steps),
        "wall_s": result.wall_s,
        "env_steps_per_s": ratio(result.env_steps, result.wall_s),
    }


def run_one(name: str, args: Any, seed: int) -> dict[str, Any]:
    """Trains until the mean return reaches the target or the step budget is spent."""
    from rllib_drqn.reporting import RETURN_WINDOW_MEAN

    if name == REFERENCE_NAME:
        return run_reference(args, seed)
    algo = build(name, args, seed)
    wall_s, env_steps, best = 0.0, 0.0, None
    steps_to_target = wall_to_target = None
    try:
        while env_steps < args.max_steps:
            start = time.perf_counter()
            result = algo.train()
            wall_s += time.perf_counter() - start
            runners = result.get("env_runners", {})
            env_steps = float(runners.get("num_env_steps_sampled_lifetime", env_steps))
            mean_return = runners.get(RETURN_WINDOW_MEAN)  # NaN before the first episode.
            if mean_return is None or not math.isfinite(mean_return):
                continue
            best = mean_return if best is None else max(best, mean_return)
            if mean_return >= args.target_return:
                steps_to_target, wall_to_target = env_steps, wall_s
                break
    finally:
        algo.stop()
    return {
        "name": name,
        "seed": seed,
        "reached": steps_to_target is not None,
        "env_steps_to_target": steps_to_target,
        "wall_s_to_target": wall_to_target,
        "best_mean_return": best,
        "env_steps": env_steps,
        "wall_s": wall_s,
        "env_steps_per_s": ratio(env_steps, wall_s),
    }


def median_or_none(values: list[float | None]) -> float | None:
    """Median with a missing value counted as +inf; ``None`` when the median is infinite."""
    finite = [math.inf if v is None else v for v in values]
    if not finite:
        return None
    value = statistics.median(finite)
    return value if math.isfinite(value) else None


def summarize(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    mine = [run for run in runs if run["name"] == name]
    best = [run["best_mean_return"] for run in mine if run["best_mean_return"] is not None]
    return {
        "name": name,
        "seeds": len(mine),
        "reached": sum(run["reached"] for run in mine),
        "seeds_reached": f"{sum(run['reached'] for run in mine)}/{len(mine)}",
        "median_env_steps_to_target": median_or_none([r["env_steps_to_target"] for r in mine]),
        "median_wall_s_to_target": median_or_none([r["wall_s_to_target"] for r in mine]),
        # A run that missed spent its whole wall time without reaching the target, so this
        # median is a lower bound on the median wall time to the target.
        "median_wall_s_at_least": median_or_none(
            [r["wall_s_to_target"] if r["reached"] else r["wall_s"] for r in mine]
        ),
        "median_best_mean_return": statistics.median(best) if best else None,
        "median_env_steps_per_s": median_or_none([r["env_steps_per_s"] for r in mine]),
    }


def wall_speedup_vs_peer(
    row: dict[str, Any], peer: dict[str, Any] | None
) -> tuple[float | None, bool]:
    """Peer's median wall time to the target over this contender's, and if it is a bound.

    > 1: this contender reaches the target in less wall time. When the peer missed the
    target in half or more of its seeds its median is unknown but at least its runs' wall
    time, which gives a lower bound on the speed-up (``True`` as the second value).
    """
    if peer is None or row["median_wall_s_to_target"] is None:
        return None, False
    if peer["median_wall_s_to_target"] is not None:
        return ratio(peer["median_wall_s_to_target"], row["median_wall_s_to_target"]), False
    return ratio(peer["median_wall_s_at_least"], row["median_wall_s_to_target"]), True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_torch_threads(args.torch_threads)
    header = {
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "machine": machine_info(),
    }
    if set(args.contenders) != {REFERENCE_NAME}:  # The reference alone needs no Ray.
        init_ray()
        register_bench_envs()

    runs = []
    # Seeds outermost: every contender gets each seed before the next, so a slow spell of the
    # machine spreads over all of them.
    for seed in args.seeds:
        for name in args.contenders:
            progress(f"{name}, seed {seed}: training (at most {args.max_steps:,} env steps)")
            run = run_one(name, args, seed)
            runs.append(run)
            steps = run["env_steps_to_target"]
            outcome = f"reached at {steps:,.0f}" if steps is not None else "missed"
            best = run["best_mean_return"]
            best_text = "-" if best is None else f"{best:.1f}"
            progress(
                f"{name}, seed {seed}: target {outcome}, best mean return "
                f"{best_text} ({run['env_steps']:,.0f} env steps, "
                f"{run['wall_s']:.1f} s)"
            )

    rows = [summarize(name, runs) for name in args.contenders]
    peer = next((row for row in rows if row["name"] == PEER_NAME), None)
    for row in rows:
        speedup, at_least = wall_speedup_vs_peer(row, peer)
        row["wall_speedup_vs_peer"] = speedup
        row["wall_speedup_is_lower_bound"] = at_least
        row["wall_speedup_text"] = (
            None if speedup is None else f"{'>= ' if at_least else ''}{speedup:.2f}x"
        )
        steps = row["median_env_steps_to_target"]
        row["within_target_steps"] = steps is not None and steps <= TARGET_STEPS
    payload = {
        "benchmark": "sample_efficiency",
        **header,
        "load_average_1m_at_end": os.getloadavg()[0],
        "env": args.env,
        "targets": {
            "return": args.target_return,
            "env_steps": TARGET_STEPS,
            "wall_speedup_vs_peer": TARGET_WALL_RATIO,
        },
        "rows": rows,
        "runs": runs,
    }
    path = write_json(args.out, payload)
    print(
        format_table(
            f"Sample efficiency, {args.env}: to a mean return of {args.target_return:g} over "
            f"the last {args.window} episodes (medians over seeds {args.seeds}; at most "
            f"{args.max_steps:,} env steps per run)",
            [
                Column("name", "contender", "{}"),
                Column("seeds_reached", "seeds reached", "{}"),
                Column("median_env_steps_to_target", "env steps to target", "{:,.0f}"),
                Column("median_wall_s_to_target", "wall s to target"),
                Column("wall_speedup_text", "wall speed-up x peer", "{}"),
                Column("median_best_mean_return", "best mean return"),
                Column("median_env_steps_per_s", "env steps/s"),
            ],
            rows,
        )
    )
    print(
        f"Targets: DRQN within {TARGET_STEPS:,} env steps, and >= {TARGET_WALL_RATIO}x faster "
        "in wall time than the peer."
    )
    print(f"\nJSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
