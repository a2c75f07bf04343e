"""The baselines: RLlib's own DQN, and the paper's DQN seeing the last k frames (4 or 10).

Each is RLlib's own DQN, reporting as DRQN reports: :class:`BaselineDQN` adds only the
plugin's episode reporting (``rllib_drqn.reporting``: ``env_runners/episode_return_window_mean``
and ``episodes.csv``), so a comparison reads the same metric on both sides; it trains exactly
as ``ray.rllib.algorithms.dqn.DQN``. For the k-frame baseline the only other addition is that
uint8 frames are scaled to [0, 1] inside the module. RLlib 2.60's CNN encoder feeds the
observation straight into ``conv2d`` (``ray/rllib/core/models/torch/encoder.py``,
``TorchCNNEncoder._forward``), which fails on uint8 frames, and RLlib's own Atari path works
around it by storing float32 frames (4x the replay memory). Scaling in the module keeps replay
uint8, as DRQN's does.
"""

from __future__ import annotations

from typing import Any

import torch
from ray.rllib.algorithms.dqn.dqn import DQN, DQNConfig
from ray.rllib.algorithms.dqn.torch.default_dqn_torch_rl_module import DefaultDQNTorchRLModule
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.utils.annotations import override

from rllib_drqn.reporting import EpisodeReporting, EpisodeReportingConfig

__all__ = [
    "BaselineDQN",
    "BaselineDQNConfig",
    "FrameStackDQN",
    "FrameStackDQNConfig",
    "PixelDQNTorchRLModule",
    "memoryless_dqn",
]

#: Nature DQN's torso (Mnih et al. 2015), the same convolutions as DRQN's, then a dense 512.
NATURE_CONV_FILTERS = [[32, 8, 4], [64, 4, 2], [64, 3, 1]]


class PixelDQNTorchRLModule(DefaultDQNTorchRLModule):
    """RLlib's default DQN module, with uint8 frames scaled to [0, 1] before the encoder."""

    @override(DefaultDQNTorchRLModule)
    def _qf_forward_helper(self, batch: dict[str, Any], encoder: Any, head: Any) -> dict:
        obs = batch[Columns.OBS]
        if isinstance(obs, torch.Tensor) and obs.dtype == torch.uint8:
            batch = {**batch, Columns.OBS: obs.float() / 255.0}
        return super()._qf_forward_helper(batch, encoder, head)


class BaselineDQNConfig(EpisodeReportingConfig, DQNConfig):
    """RLlib's ``DQNConfig`` with the plugin's episode reporting (``reporting()`` takes
    ``episode_return_window``); every other setting and default is RLlib's."""

    def __init__(self, algo_class: type | None = None) -> None:
        super().__init__(algo_class=algo_class or BaselineDQN)


class BaselineDQN(EpisodeReporting, DQN):
    """RLlib's DQN, reporting the return window and writing ``episodes.csv`` as DRQN does."""

    @classmethod
    @override(DQN)
    def get_default_config(cls) -> BaselineDQNConfig:
        return BaselineDQNConfig()


class FrameStackDQNConfig(BaselineDQNConfig):
    """``DQNConfig`` whose module scales uint8 frames: the k-frame DQN baseline on Atari.

    The module spec is set on the instance (not only returned by a method), so it survives
    Tune's ``to_dict``/``from_dict`` round trip into the trial.
    """

    def __init__(self, algo_class: type | None = None) -> None:
        super().__init__(algo_class=algo_class or FrameStackDQN)
        self._rl_module_spec = RLModuleSpec(module_class=PixelDQNTorchRLModule)
        # The paper's baseline has no dueling head; RLlib's DQN defaults to one.
        self.dueling = False


class FrameStackDQN(BaselineDQN):
    """RLlib's DQN with ``FrameStackDQNConfig``'s defaults; Tune name ``"FrameStackDQN"``."""

    @classmethod
    @override(BaselineDQN)
    def get_default_config(cls) -> FrameStackDQNConfig:
        return FrameStackDQNConfig()


def memoryless_dqn(env: str, env_config: dict[str, Any] | None = None) -> BaselineDQNConfig:
    """RLlib's DQN with ``DRQNConfig()``'s small-task defaults and no memory: their baseline.

    What a memory test compares DRQN's defaults against: the same lr, epsilon schedule,
    n-step targets, update interval and return windows (read from ``DRQNConfig()``, so the two
    cannot drift apart), 32 x ``max_seq_len`` transitions per update, and a dense layer of
    the LSTM's size where DRQN has the LSTM. Discrete and Tuple/Dict observations are one-hot
    encoded by RLlib's own ``FlattenObservations`` piece, as DRQN's module encodes them.
    """
    from ray.rllib.connectors.env_to_module import FlattenObservations

    from rllib_drqn.config import DRQNConfig
    from rllib_drqn.module import DRQN_MODEL_DEFAULTS, VECTOR_CELL_SIZE

    defaults = DRQNConfig()
    return (
        BaselineDQNConfig()
        .environment(env, env_config=dict(env_config or {}))
        .training(
            lr=defaults.lr,
            epsilon=defaults.epsilon,
            n_step=defaults.n_step,
            dueling=defaults.dueling,
            grad_clip=defaults.grad_clip,
            train_batch_size_per_learner=defaults.train_batch_size_per_learner,
        )
        .env_runners(
            rollout_fragment_length=defaults.rollout_fragment_length,
            env_to_module_connector=lambda *args, **kwargs: FlattenObservations(),
        )
        .rl_module(
            model_config={
                "fcnet_hiddens": [*DRQN_MODEL_DEFAULTS["fcnet_hiddens"], VECTOR_CELL_SIZE],
                "head_fcnet_hiddens": [],
            }
        )
        .reporting(
            metrics_num_episodes_for_smoothing=defaults.metrics_num_episodes_for_smoothing,
            episode_return_window=defaults.episode_return_window,
        )
    )
