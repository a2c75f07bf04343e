"""What the benchmark scripts share: the contenders' configs, timing, tables and JSON.

Each contender is built here and nowhere else, so every script compares the same things:

- **DRQN**: ``rllib_drqn.DRQNConfig`` (uint8 frames, sequences counted in sequences).
- **RLlib's use_lstm DQN** (the peer): RLlib's DQN (``rllib_drqn.baselines.BaselineDQNConfig``:
  ``DQNConfig`` with the plugin's episode reporting, so it reports the same return window as
  DRQN; training is RLlib's) with ``model_config={"use_lstm": True}``,
  set to the same LSTM size, sequence length and batch in sequences. Two things make it run at
  all on Ray 2.60, both measured: DQN's default ``PrioritizedEpisodeReplayBuffer`` crashes for
  stateful modules, so it gets RLlib's ``EpisodeReplayBuffer``; and its CNN does not cast uint8
  frames (``RuntimeError: Input type (unsigned char) and bias type (float)``), so its Atari env
  hands out float32 frames in [0, 1] (:data:`FLOAT32_FLICKERING_ATARI`). RLlib counts each
  sampled sequence as ``max_seq_len + 1`` timesteps, so its train batch is
  ``num_sequences * (max_seq_len + 1)`` timesteps. By default its network is DRQN's: the
  paper's convs (unpadded), an LSTM, one linear layer (see :func:`lstm_dqn_config`).
- **DQN without memory**: the same ``BaselineDQNConfig`` with an MLP in place of the LSTM
  (StatelessCartPole).

Settings both sides share (learning rate, replay, when learning starts, target updates,
double-Q, no dueling, gradient clipping, rollout length) come from one :class:`Shared`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

__all__ = [
    "DRQN_NAME",
    "FLOAT32_FLICKERING_ATARI",
    "MEMORYLESS_NAME",
    "PAPER_CONV_FILTERS",
    "PEER_NAME",
    "Column",
    "Recurrent",
    "Shared",
    "UpdateCounter",
    "base_parser",
    "drqn_config",
    "format_table",
    "init_ray",
    "lstm_dqn_config",
    "machine_info",
    "make_float32_flickering_atari",
    "memoryless_dqn_config",
    "progress",
    "ratio",
    "register_bench_envs",
    "require_finite",
    "set_torch_threads",
    "write_json",
]

#: Hausknecht & Stone (2015) / Nature DQN conv stack: 32 8x8/4, 64 4x4/2, 64 3x3/1.
PAPER_CONV_FILTERS: list[list[int]] = [[32, 8, 4], [64, 4, 2], [64, 3, 1]]

#: FlickeringAtari with float32 frames scaled to [0, 1], for RLlib's default DQN module.
FLOAT32_FLICKERING_ATARI = "FlickeringAtariFloat32"

DRQN_NAME = "DRQN"
PEER_NAME = "RLlib use_lstm DQN"
MEMORYLESS_NAME = "DQN (no memory)"


# ---- Command line --------------------------------------------------------------------------


def base_parser(description: str, default_out: str) -> argparse.ArgumentParser:
    """The flags every script has: ``--smoke``, ``--out``, ``--torch-threads``."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="Shrink every budget to seconds (what CI runs); the numbers mean nothing.",
    )
    parser.add_argument("--out", default=default_out, help="Where to write the JSON results.")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch.set_num_threads in this process. 1 on a small shared CPU machine: more "
        "threads than free cores made runs 30x slower here.",
    )
    return parser


def set_torch_threads(num_threads: int) -> None:
    """Called first thing: oversubscribed torch threads dominate every other cost."""
    import torch

    if num_threads < 1:
        raise ValueError(f"--torch-threads must be >= 1, got {num_threads}.")
    torch.set_num_threads(num_threads)


def init_ray(num_cpus: int | None = None) -> None:
    """Starts Ray once, quietly; RLlib would start it anyway when the first algo is built."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=num_cpus or os.cpu_count() or 1,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.ERROR,
        )
    # RLlib logs a new-API-stack notice and deprecation warnings per algo; the table is the
    # output here.
    logging.getLogger("ray").setLevel(logging.ERROR)


def progress(message: str) -> None:
    """Progress goes to stderr so stdout holds only the tables."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---- Contenders ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Recurrent:
    """The recurrent part both sides are set to: LSTM size, sequence length, batch."""

    lstm_cell_size: int
    max_seq_len: int
    num_sequences: int
    #: MLP torso for vector observations (StatelessCartPole); ignored for frames.
    fcnet_hiddens: tuple[int, ...] = (64,)


@dataclass(frozen=True)
class Shared:
    """Settings every contender gets, so only the algorithm differs."""

    lr: float = 1e-4
    rollout_fragment_length: int = 4
    num_envs_per_env_runner: int = 1
    learning_starts: int = 1000
    target_network_update_freq: int = 500
    replay_capacity: int = 50_000
    steps_per_iteration: int = 1000
    #: Episodes in ``env_runners/episode_return_window_mean`` (and RLlib's per-report cap).
    episodes_for_smoothing: int = 100
    seed: int = 0
    num_gpus_per_learner: int = 0
    #: n-step targets. RLlib's sequence replay (``EpisodeReplayBuffer.sample`` with
    #: ``batch_length_T > 0``) asserts ``n_step == 1``, so the use_lstm peer always gets 1.
    n_step: int = 1
    #: Epsilon schedule ``[[step, value], ...]``; ``None`` keeps DQN's default.
    epsilon: tuple[tuple[int, float], ...] | None = None


def _apply_shared(config: Any, shared: Shared) -> Any:
    """Env runners in this process, the shared training settings, iterations by env steps."""
    return (
        config.env_runners(
            num_env_runners=0,
            num_envs_per_env_runner=shared.num_envs_per_env_runner,
            rollout_fragment_length=shared.rollout_fragment_length,
        )
        .learners(num_learners=0, num_gpus_per_learner=shared.num_gpus_per_learner)
        .reporting(
            min_sample_timesteps_per_iteration=shared.steps_per_iteration,
            min_train_timesteps_per_iteration=0,
            min_time_s_per_iteration=0,
            metrics_num_episodes_for_smoothing=shared.episodes_for_smoothing,
            episode_return_window=shared.episodes_for_smoothing,
        )
        .debugging(seed=shared.seed, log_level="ERROR")
    )


def _shared_training(shared: Shared, n_step: int | None = None) -> dict[str, Any]:
    # DRQN's defaults (the paper's): one linear head, double-Q, gradients clipped at 10.
    training = {
        "lr": shared.lr,
        "num_steps_sampled_before_learning_starts": shared.learning_starts,
        "target_network_update_freq": shared.target_network_update_freq,
        "double_q": True,
        "dueling": False,
        "grad_clip": 10.0,
        "n_step": shared.n_step if n_step is None else n_step,
    }
    if shared.epsilon is not None:
        training["epsilon"] = [list(point) for point in shared.epsilon]
    return training


def drqn_config(
    env: str,
    env_config: Mapping[str, Any],
    recurrent: Recurrent,
    shared: Shared,
    update_mode: str = "random",
    burn_in_len: int = 0,
) -> Any:
    """DRQN as a user would set it up: batches in sequences, uint8 frames."""
    from rllib_drqn import DRQNConfig

    config = (
        DRQNConfig()
        .environment(env, env_config=dict(env_config))
        .training(
            update_mode=update_mode,
            burn_in_len=burn_in_len,
            num_sequences_per_batch=recurrent.num_sequences,
            replay_buffer_config={
                "type": "rllib_drqn.replay.DRQNEpisodeReplayBuffer",
                "capacity": shared.replay_capacity,
            },
            **_shared_training(shared),
        )
        .rl_module(
            model_config={
                "lstm_cell_size": recurrent.lstm_cell_size,
                "max_seq_len": recurrent.max_seq_len,
                "fcnet_hiddens": list(recurrent.fcnet_hiddens),
                "conv_filters": PAPER_CONV_FILTERS,
            }
        )
    )
    return _apply_shared(config, shared)


def lstm_dqn_config(
    env: str,
    env_config: Mapping[str, Any],
    recurrent: Recurrent,
    shared: Shared,
    conv_padding: str = "valid",
) -> Any:
    """RLlib's own recurrent DQN (``use_lstm``), set to DRQN's sizes; see the module docstring.

    ``conv_padding="valid"`` gives it DRQN's network exactly (7.55M parameters on Pong);
    ``"same"`` is what RLlib does with three-element ``conv_filters`` (an 11x11 instead of a
    7x7 conv output, so an LSTM input of 7,744 features and 17.0M parameters).
    """
    if conv_padding not in ("valid", "same"):
        raise ValueError(f"conv_padding must be 'valid' or 'same', got {conv_padding!r}.")
    from rllib_drqn.baselines import BaselineDQNConfig

    if env == "FlickeringAtari":
        env = FLOAT32_FLICKERING_ATARI
    config = (
        BaselineDQNConfig()
        .environment(env, env_config=dict(env_config))
        .training(
            # Ray 2.60 counts each sampled sequence as max_seq_len + 1 timesteps.
            train_batch_size_per_learner=recurrent.num_sequences * (recurrent.max_seq_len + 1),
            replay_buffer_config={
                "type": "EpisodeReplayBuffer",
                "capacity": shared.replay_capacity,
            },
            **_shared_training(shared, n_step=1),
        )
        .rl_module(
            model_config={
                "use_lstm": True,
                "lstm_cell_size": recurrent.lstm_cell_size,
                "max_seq_len": recurrent.max_seq_len,
                "fcnet_hiddens": list(recurrent.fcnet_hiddens),
                "conv_filters": [[*spec, conv_padding] for spec in PAPER_CONV_FILTERS],
                "head_fcnet_hiddens": [],
            }
        )
    )
    return _apply_shared(config, shared)


def memoryless_dqn_config(
    env: str, env_config: Mapping[str, Any], recurrent: Recurrent, shared: Shared
) -> Any:
    """DQN with a dense layer where DRQN has its LSTM; same transitions per update.

    RLlib's DQN builds n-step transitions from each sampled fragment and so rejects a
    ``rollout_fragment_length`` below ``n_step``; it then samples ``n_step`` steps at a time and
    ``training_intensity`` keeps the shared replay ratio (one update per
    ``shared.rollout_fragment_length`` env steps).
    """
    from rllib_drqn.baselines import BaselineDQNConfig

    batch_size = recurrent.num_sequences * recurrent.max_seq_len
    config = (
        BaselineDQNConfig()
        .environment(env, env_config=dict(env_config))
        .training(
            train_batch_size_per_learner=batch_size,
            replay_buffer_config={
                "type": "EpisodeReplayBuffer",
                "capacity": shared.replay_capacity,
            },
            **_shared_training(shared),
        )
        .rl_module(
            model_config={
                "fcnet_hiddens": [*recurrent.fcnet_hiddens, recurrent.lstm_cell_size],
                "head_fcnet_hiddens": [],
            }
        )
    )
    config = _apply_shared(config, shared)
    if shared.rollout_fragment_length < shared.n_step:
        config.env_runners(rollout_fragment_length=shared.n_step).training(
            training_intensity=batch_size / shared.rollout_fragment_length
        )
    return config


def make_float32_flickering_atari(env_config: Mapping[str, Any]) -> Any:
    """FlickeringAtari with frames cast to float32 in [0, 1]: what RLlib's own module needs."""
    import gymnasium as gym
    import numpy as np
    from gymnasium.wrappers import TransformObservation

    from rllib_drqn.envs import make_flickering_atari

    env = make_flickering_atari(env_config)
    shape = env.observation_space.shape
    return TransformObservation(
        env, _to_unit_float32, gym.spaces.Box(0.0, 1.0, shape, dtype=np.float32)
    )


def _to_unit_float32(frame: Any) -> Any:
    import numpy as np

    return frame.astype(np.float32) / np.float32(255.0)


def register_bench_envs() -> None:
    """Registers :data:`FLOAT32_FLICKERING_ATARI` (and, via rllib_drqn, the plugin's envs)."""
    from ray.tune.registry import register_env

    import rllib_drqn  # noqa: F401  (registers "DRQN", "FlickeringAtari", "StatelessCartPole")

    register_env(FLOAT32_FLICKERING_ATARI, make_float32_flickering_atari)


class UpdateCounter:
    """Counts learner updates exactly: DQN's ``training_step`` calls ``learner_group.update``
    once per update, and RLlib 2.60 reports no lifetime count of them."""

    def __init__(self, algo: Any) -> None:
        self.count = 0
        update = algo.learner_group.update

        def counted_update(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return update(*args, **kwargs)

        algo.learner_group.update = counted_update


# ---- Results -------------------------------------------------------------------------------


class Column(NamedTuple):
    """One table column: the row key, its header (with the unit) and a format."""

    key: str
    header: str
    fmt: str = "{:,.1f}"


def format_table(title: str, columns: Sequence[Column], rows: Sequence[Mapping[str, Any]]) -> str:
    """A plain-text table; a missing value (``None``) prints as ``-``."""
    cells = [[_format_cell(row.get(c.key), c.fmt) for c in columns] for row in rows]
    widths = [
        max([len(c.header)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)
    ]
    lines = [title, "  ".join(c.header.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for line in cells:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)))
    return "\n".join(lines)


def _format_cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return fmt.format(value)
    return str(value)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or ``None`` when either is missing or the divisor is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    if not (math.isfinite(numerator) and math.isfinite(denominator)):
        return None
    return numerator / denominator


def require_finite(tree: Any, path: str = "") -> None:
    """Raises if any number in ``tree`` is NaN or infinite (JSON has no such numbers)."""
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            require_finite(value, f"{path}/{key}")
    elif isinstance(tree, list | tuple):
        for index, value in enumerate(tree):
            require_finite(value, f"{path}/{index}")
    elif isinstance(tree, float) and not math.isfinite(tree):
        raise ValueError(f"Result {path} is {tree}; report a missing value as None instead.")


def machine_info() -> dict[str, Any]:
    """What the numbers depend on: CPU, load, library versions, GPU."""
    import numpy as np
    import ray
    import torch

    cpu_model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cuda = torch.cuda.is_available()
    return {
        "platform": platform.platform(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "numpy": np.__version__,
        "cuda_available": cuda,
        "cuda_device": torch.cuda.get_device_name() if cuda else None,
    }


def write_json(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> Path:
    """Writes ``payload`` (no NaN/inf allowed) to ``path``, creating its folder."""
    require_finite(payload)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, allow_nan=False, default=_json_default) + "\n")
    return out


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    raise TypeError(f"Cannot write {type(value).__name__} to JSON: {value!r}")
