"""Replay memory for 84x84 frames: bytes per stored step and peak RSS, by update mode.

Run (from the repository root)::

    python bench/memory.py                  # 100,000 stored steps per contender (about 1 min)
    python bench/memory.py --steps 20000    # less memory on a small machine
    python bench/memory.py --smoke          # seconds; what CI runs

The episodes are synthetic but shaped like the ones RLlib's env runner hands to replay for
flickering Pong (checked against a real one): ``uint8 (84, 84, 1)`` frames with random pixels,
``int32`` actions, ``float64`` rewards, ALE's info dict per step (``lives``,
``episode_frame_number``, ``frame_number`` as numpy ints), the LSTM state the module returned
at every step (``STATE_OUT``: ``h`` and ``c``, ``--lstm-cell-size`` float32 each) and
``weights_seq_no``; ``--episode-len`` steps each, numpy'd as the env runner does.

Contenders:

- ``DRQN random`` / ``DRQN sequential``: ``DRQNEpisodeReplayBuffer``; the acting LSTM state is
  dropped on ``add`` because these modes never read it.
- ``DRQN stored``: the same buffer keeping the state (R2D2's stored-state mode reads it).
- ``RLlib use_lstm DQN``: RLlib's ``EpisodeReplayBuffer`` as the peer runs it, with float32
  frames (its CNN does not cast uint8) and the state kept.

Measured, each contender on its own:

- **bytes per stored step**: ``tracemalloc``'s traced memory after adding ``--bytes-steps``
  steps (and dropping every reference but the buffer's), minus before, divided by the steps
  the buffer reports stored. numpy reports its array buffers to tracemalloc, so this counts
  arrays and the Python objects around them (info dicts, episode objects). The array payload
  alone (sum of ``nbytes``) is reported next to it.
- **peak RSS** (``resource.getrusage(...).ru_maxrss``) of a forked child process that fills a
  buffer with ``--steps`` steps, and its growth over the child's RSS at the start.

Target (issue 5): <= 7.5 KB (7,500 bytes) per stored step.

Discrete observations (issue 14), a second table: ``DelayedRecall`` episodes sampled by DRQN's
own env runner (``lstm_use_prev_action`` and ``lstm_use_prev_reward`` on, epsilon-greedy),
for each of ``--discrete-num-cues`` (observation space ``Discrete(num_cues + 2)``), added to
``DRQNEpisodeReplayBuffer`` (random mode). The module one-hot encodes observations and the
previous action itself, so replay should hold the env's int64 observations and no previous
action or reward column. Reported: the observation column's bytes per stored step, what float32
one-hots of the same stored observations take (``np.eye(n)[obs]``, built in the same run), and
bytes per step as above (``tracemalloc`` around adding a deep copy of the sampled episodes;
episodes of ``delay + 2`` = 6 steps, so the per-episode objects dominate it).
"""

from __future__ import annotations

import gc
import multiprocessing
import resource
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    PEER_NAME,
    Column,
    base_parser,
    format_table,
    machine_info,
    progress,
    ratio,
    set_torch_threads,
    write_json,
)

TARGET_BYTES_PER_STEP = 7_500

#: name -> (replay buffer, update mode, frame dtype)
CONTENDERS: dict[str, tuple[str, str | None, str]] = {
    "DRQN random": ("drqn", "random", "uint8"),
    "DRQN sequential": ("drqn", "sequential", "uint8"),
    "DRQN stored": ("drqn", "stored", "uint8"),
    PEER_NAME: ("rllib", None, "float32"),
}


def parse_args(argv: list[str] | None = None) -> Any:
    parser = base_parser(__doc__.split("\n\n")[0], "bench/out/memory.json")
    parser.add_argument(
        "--steps", type=int, default=100_000, help="Stored steps for the peak-RSS measurement."
    )
    parser.add_argument(
        "--bytes-steps",
        type=int,
        default=10_000,
        help="Stored steps for the bytes-per-step measurement (tracemalloc slows adding).",
    )
    parser.add_argument("--episode-len", type=int, default=1_000, help="Steps per episode.")
    parser.add_argument("--frame-size", type=int, default=84)
    parser.add_argument("--lstm-cell-size", type=int, default=512)
    parser.add_argument(
        "--contenders",
        nargs="+",
        choices=list(CONTENDERS),
        default=list(CONTENDERS),
        metavar="NAME",
        help=f"Any of {list(CONTENDERS)}.",
    )
    parser.add_argument(
        "--discrete-num-cues",
        type=int,
        nargs="*",
        default=[2, 62],
        metavar="K",
        help="DelayedRecall num_cues per row of the Discrete table (Discrete(K + 2) "
        "observations); none skips the table.",
    )
    parser.add_argument(
        "--discrete-steps",
        type=int,
        default=10_000,
        help="Env steps sampled per Discrete row.",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps = 3_000
        args.bytes_steps = 2_000
        args.episode_len = 500
        args.discrete_steps = 600
    if any(num_cues < 2 for num_cues in args.discrete_num_cues):
        raise SystemExit("--discrete-num-cues: DelayedRecall needs num_cues >= 2.")
    for flag in ("steps", "bytes_steps", "episode_len", "discrete_steps"):
        if getattr(args, flag) < 1:
            raise SystemExit(f"--{flag.replace('_', '-')} must be >= 1.")
    return args


# ---- Synthetic episodes and buffers --------------------------------------------------------


class EpisodeFactory:
    """Builds numpy'd episodes shaped like the env runner's; pixels drawn once, copied per use."""

    def __init__(self, args: Any, frame_dtype: str) -> None:
        import numpy as np

        rng = np.random.default_rng(args.seed)
        size, length = args.frame_size, args.episode_len
        frames = rng.integers(0, 256, (length + 1, size, size, 1), dtype=np.uint8)
        self.frames = frames if frame_dtype == "uint8" else frames.astype(np.float32) / 255.0
        self.length = length
        self.cell = args.lstm_cell_size

    def make(self, length: int) -> Any:
        import numpy as np
        from ray.rllib.core.columns import Columns
        from ray.rllib.env.single_agent_episode import SingleAgentEpisode

        state = np.zeros((self.cell,), np.float32)
        episode = SingleAgentEpisode(
            observations=list(self.frames[: length + 1]),
            actions=[np.int32(t % 6) for t in range(length)],
            rewards=[0.0] * length,
            infos=[
                {
                    "lives": np.int64(0),
                    "episode_frame_number": np.int64(4 * t),
                    "frame_number": np.int64(4 * t),
                }
                for t in range(length + 1)
            ],
            extra_model_outputs={
                Columns.STATE_OUT: [{"h": state, "c": state} for _ in range(length)],
                "weights_seq_no": [np.int64(0)] * length,
            },
            terminated=True,
            len_lookback_buffer=0,
        )
        # np.stack copies every frame and state: the episode owns its arrays, as in RLlib.
        return episode.to_numpy()


def make_buffer(name: str, capacity: int) -> Any:
    from ray.rllib.utils.replay_buffers.episode_replay_buffer import EpisodeReplayBuffer

    from rllib_drqn.replay import DRQNEpisodeReplayBuffer

    kind, update_mode, _ = CONTENDERS[name]
    if kind == "drqn":
        return DRQNEpisodeReplayBuffer(capacity, update_mode=update_mode, seed=0)
    return EpisodeReplayBuffer(capacity)


def fill(name: str, args: Any, steps: int) -> Any:
    """A buffer of ``name`` holding ``steps`` steps; no other reference to its episodes."""
    factory = EpisodeFactory(args, CONTENDERS[name][2])
    buffer = make_buffer(name, capacity=steps + args.episode_len)
    remaining = steps
    while remaining > 0:
        length = min(args.episode_len, remaining)
        buffer.add(factory.make(length))
        remaining -= length
    del factory
    gc.collect()
    return buffer


def array_bytes(buffer: Any) -> int:
    """Sum of ``nbytes`` of every numpy array the stored episodes hold."""
    import numpy as np

    def walk(value: Any) -> int:
        if isinstance(value, np.ndarray):
            return value.nbytes
        if isinstance(value, dict):
            return sum(walk(v) for v in value.values())
        if isinstance(value, list | tuple):
            return sum(walk(v) for v in value)
        if hasattr(value, "data") and hasattr(value, "lookback"):  # InfiniteLookbackBuffer
            return walk(value.data)
        return 0

    total = 0
    for episode in buffer.episodes:
        for column in (episode.observations, episode.actions, episode.rewards):
            total += walk(column)
        total += walk(episode.extra_model_outputs)
    return total


def measure_bytes_per_step(name: str, args: Any) -> dict[str, Any]:
    # One untraced fill first, so one-off allocations (lazy imports, caches) are not counted.
    fill(name, args, min(args.episode_len, args.bytes_steps))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    buffer = fill(name, args, args.bytes_steps)
    traced = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    stored = buffer.get_num_timesteps()
    payload = array_bytes(buffer)
    stores_state = any("state_out" in e.extra_model_outputs for e in buffer.episodes)
    frame_dtype = str(buffer.episodes[0].get_observations().dtype)
    del buffer
    gc.collect()
    return {
        "stored_steps": stored,
        "bytes_per_step": traced / stored,
        "array_bytes_per_step": payload / stored,
        "frame_dtype": frame_dtype,
        "stores_lstm_state": stores_state,
    }


def _peak_rss_child(name: str, args: Any, queue: Any) -> None:
    start_rss = _max_rss_bytes()
    buffer = fill(name, args, args.steps)
    queue.put(
        {
            "stored_steps": buffer.get_num_timesteps(),
            "start_rss_bytes": start_rss,
            "peak_rss_bytes": _max_rss_bytes(),
        }
    )


def measure_peak_rss(name: str, args: Any) -> dict[str, Any]:
    """Peak RSS of a forked child (it starts from this process's current RSS, not its peak)."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_peak_rss_child, args=(name, args, queue))
    child.start()
    result = queue.get()
    child.join()
    growth = result["peak_rss_bytes"] - result["start_rss_bytes"]
    return {
        "rss_stored_steps": result["stored_steps"],
        "start_rss_mb": result["start_rss_bytes"] / 2**20,
        "peak_rss_mb": result["peak_rss_bytes"] / 2**20,
        "rss_growth_bytes_per_step": growth / result["stored_steps"],
    }


def _max_rss_bytes() -> int:
    # Linux reports kilobytes, macOS bytes.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


# ---- Discrete observations -----------------------------------------------------------------


def sample_delayed_recall(num_cues: int, steps: int, seed: int) -> list[Any]:
    """``steps`` env steps of DelayedRecall as DRQN's env runner hands them to replay."""
    from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

    from rllib_drqn import DRQNConfig

    config = (
        DRQNConfig()
        .environment("DelayedRecall", env_config={"num_cues": num_cues})
        .env_runners(num_env_runners=0)
        .rl_module(model_config={"lstm_use_prev_action": True, "lstm_use_prev_reward": True})
        .debugging(seed=seed)
    )
    config.validate()
    runner = SingleAgentEnvRunner(config=config)
    try:
        return runner.sample(num_timesteps=steps, explore=True)
    finally:
        runner.stop()


def measure_discrete(num_cues: int, args: Any) -> dict[str, Any]:
    """Replay bytes per step for ``Discrete(num_cues + 2)`` observations, and a one-hot's."""
    import copy

    import numpy as np

    from rllib_drqn.replay import DRQNEpisodeReplayBuffer

    episodes = sample_delayed_recall(num_cues, args.discrete_steps, args.seed)
    capacity = 2 * args.discrete_steps
    # One untraced add first, so one-off allocations are not counted.
    DRQNEpisodeReplayBuffer(capacity, update_mode="random", seed=0).add(copy.deepcopy(episodes))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    buffer = DRQNEpisodeReplayBuffer(capacity, update_mode="random", seed=0)
    buffer.add(copy.deepcopy(episodes))
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del episodes
    stored = buffer.get_num_timesteps()
    observations = [episode.observations.data for episode in buffer.episodes]
    num_values = num_cues + 2
    one_hot = np.eye(num_values, dtype=np.float32)
    one_hot_bytes = sum(one_hot[obs].nbytes for obs in observations)
    obs_bytes = sum(obs.nbytes for obs in observations)
    columns = sorted({key for e in buffer.episodes for key in e.extra_model_outputs})
    return {
        "observations": f"Discrete({num_values})",
        "num_cues": num_cues,
        "stored_steps": stored,
        "obs_dtype": str(observations[0].dtype),
        "obs_bytes_per_step": obs_bytes / stored,
        "one_hot_bytes_per_step": one_hot_bytes / stored,
        "one_hot_ratio": ratio(one_hot_bytes, obs_bytes),
        "bytes_per_step": traced / stored,
        "array_bytes_per_step": array_bytes(buffer) / stored,
        "extra_columns": columns,
    }


# ---- Main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_torch_threads(args.torch_threads)
    header = {"settings": {k: v for k, v in vars(args).items() if k != "out"}}
    header["machine"] = machine_info()
    # Imported before forking, so each child starts with the same modules loaded.
    import rllib_drqn.replay  # noqa: F401

    rows = []
    for name in args.contenders:
        start = time.perf_counter()
        # Peak RSS first: the parent is smallest before it has filled any buffer itself.
        row = {"name": name, **measure_peak_rss(name, args)}
        row.update(measure_bytes_per_step(name, args))
        rows.append(row)
        progress(
            f"{name}: {row['bytes_per_step']:,.0f} B/step ({time.perf_counter() - start:.1f} s)"
        )

    peer = next((row for row in rows if row["name"] == PEER_NAME), None)
    for row in rows:
        row["ratio_vs_peer"] = ratio(row["bytes_per_step"], peer and peer["bytes_per_step"])
        row["meets_target"] = row["bytes_per_step"] <= TARGET_BYTES_PER_STEP
    discrete_rows = []
    for num_cues in args.discrete_num_cues:
        start = time.perf_counter()
        discrete_rows.append(measure_discrete(num_cues, args))
        row = discrete_rows[-1]
        progress(
            f"{row['observations']}: {row['obs_bytes_per_step']:,.1f} obs B/step, one-hot "
            f"{row['one_hot_bytes_per_step']:,.1f} ({time.perf_counter() - start:.1f} s)"
        )
    payload = {
        "benchmark": "memory",
        **header,
        "method": {
            "bytes_per_step": "tracemalloc traced memory added by the filled buffer / steps",
            "array_bytes_per_step": "sum of numpy nbytes in the stored episodes / steps",
            "peak_rss_mb": "ru_maxrss of a forked child that filled a buffer with --steps",
        },
        "target_bytes_per_step": TARGET_BYTES_PER_STEP,
        "rows": rows,
        "discrete_rows": discrete_rows,
    }
    path = write_json(args.out, payload)
    print(
        format_table(
            f"Replay memory, {args.frame_size}x{args.frame_size} frames, LSTM "
            f"{args.lstm_cell_size}, episodes of {args.episode_len} steps (bytes/step over "
            f"{args.bytes_steps:,} steps; peak RSS with {args.steps:,} steps)",
            [
                Column("name", "contender", "{}"),
                Column("frame_dtype", "frames", "{}"),
                Column("stores_lstm_state", "state kept", "{}"),
                Column("bytes_per_step", "bytes/step", "{:,.0f}"),
                Column("array_bytes_per_step", "array bytes/step", "{:,.0f}"),
                Column("ratio_vs_peer", "x peer", "{:.2f}x"),
                Column("meets_target", "<= 7.5 KB", "{}"),
                Column("peak_rss_mb", "peak RSS MB", "{:,.0f}"),
                Column("rss_growth_bytes_per_step", "RSS growth/step", "{:,.0f}"),
            ],
            rows,
        )
    )
    if discrete_rows:
        print()
        print(
            format_table(
                f"Replay memory, DelayedRecall (Discrete observations), DRQN random, prev "
                f"action and reward on ({args.discrete_steps:,} env steps sampled per row)",
                [
                    Column("observations", "observations", "{}"),
                    Column("obs_dtype", "stored dtype", "{}"),
                    Column("obs_bytes_per_step", "obs bytes/step", "{:,.1f}"),
                    Column("one_hot_bytes_per_step", "float32 one-hot bytes/step", "{:,.1f}"),
                    Column("one_hot_ratio", "one-hot / stored", "{:.1f}x"),
                    Column("bytes_per_step", "bytes/step", "{:,.0f}"),
                    Column("array_bytes_per_step", "array bytes/step", "{:,.0f}"),
                    Column("extra_columns", "extra columns stored", "{}"),
                ],
                [
                    {**row, "extra_columns": ", ".join(row["extra_columns"])}
                    for row in discrete_rows
                ],
            )
        )
    print(f"\nJSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
