"""The DRQN network as an RLlib RLModule: frame -> conv (or MLP) torso -> LSTM -> Q-values.

This is the network of Hausknecht & Stone 2015 (https://arxiv.org/abs/1507.06527): DQN's three
convolutions, an LSTM where DQN had its first dense layer, and one linear layer out to a Q-value
per action. Vector observations get an MLP torso instead of the convolutions.

The module plugs into RLlib's own DQN (new API stack) through the ``QNetAPI``,
``TargetNetworkAPI`` and ``InferenceOnlyAPI`` mixins. Its ``forward_train`` returns exactly the
keys ``DQNTorchLearner.compute_loss_for_module`` reads (``qf_preds``, ``qf_next_preds``,
``qf_target_next_preds``), each shaped ``[B, T, num_actions]``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.algorithms.dqn.default_dqn_rl_module import (
    QF_NEXT_PREDS,
    QF_PREDS,
    QF_TARGET_NEXT_PREDS,
)
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.utils import make_target_network
from ray.rllib.core.rl_module.apis import InferenceOnlyAPI, QNetAPI, TargetNetworkAPI
from ray.rllib.core.rl_module.rl_module import RLModule
from ray.rllib.core.rl_module.torch import TorchRLModule
from ray.rllib.utils.annotations import override
from ray.rllib.utils.schedules.scheduler import Scheduler
from torch import nn

__all__ = [
    "DRQN_MODEL_DEFAULTS",
    "TARGET_STATE_IN",
    "DRQNTorchRLModule",
    "LSTMState",
    "resolve_model_config",
]

#: Every size of the network is one of these ``model_config`` keys. The conv stack is the
#: paper's (and Nature DQN's): 32 8x8/4, 64 4x4/2, 64 3x3/1; the LSTM has 512 cells.
DRQN_MODEL_DEFAULTS: dict[str, Any] = {
    "conv_filters": [[32, 8, 4], [64, 4, 2], [64, 3, 1]],
    "conv_activation": "relu",
    "fcnet_hiddens": [64],
    "fcnet_activation": "relu",
    "lstm_cell_size": 512,
    "max_seq_len": 10,
}

# Keys that RLlib's DQNConfig adds to every model_config on its own
# (ray/rllib/algorithms/dqn/dqn.py, DQNConfig._model_config_auto_includes), plus the burn-in
# length that DRQNConfig adds so the module can stop gradients through the burn-in steps.
_AUTO_INCLUDED_KEYS = frozenset(
    {"double_q", "dueling", "epsilon", "num_atoms", "std_init", "v_min", "v_max", "burn_in_len"}
)

#: Batch column holding the target network's own initial LSTM state (sequential updates carry
#: it separately from the online network's). When absent, the target starts from ``STATE_IN``.
TARGET_STATE_IN = "target_state_in"

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU}


class LSTMState(NamedTuple):
    """The LSTM's hidden and cell state, each ``[B, lstm_cell_size]``."""

    h: torch.Tensor
    c: torch.Tensor

    @classmethod
    def from_dict(cls, state: dict[str, torch.Tensor]) -> LSTMState:
        return cls(state["h"], state["c"])

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {"h": self.h, "c": self.c}

    def detach(self) -> LSTMState:
        return LSTMState(self.h.detach(), self.c.detach())


class _RecurrentQNet(nn.Module):
    """Torso -> LSTM -> Q head. One instance is the online net, a deep copy the target."""

    def __init__(
        self,
        torso: nn.Module,
        torso_out: int,
        cell_size: int,
        num_actions: int,
        dueling: bool,
    ) -> None:
        super().__init__()
        self.torso = torso
        self.lstm = nn.LSTM(torso_out, cell_size, batch_first=True)
        # The paper has one linear layer from the LSTM to the Q-values; dueling (Wang et al.
        # 2016, https://arxiv.org/abs/1511.06581) splits it into advantage and value streams.
        self.advantage = nn.Linear(cell_size, num_actions)
        self.value = nn.Linear(cell_size, 1) if dueling else None

    def embed(self, obs: torch.Tensor) -> torch.Tensor:
        """Runs the torso over ``[B, T, ...]`` observations as one ``[B*T, ...]`` batch."""
        batch, time = obs.shape[:2]
        features = self.torso(obs.reshape(batch * time, *obs.shape[2:]))
        return features.reshape(batch, time, -1)

    def recur(self, features: torch.Tensor, state: LSTMState) -> tuple[torch.Tensor, LSTMState]:
        """Runs the LSTM over ``[B, T, F]`` features; one call so cuDNN unrolls it whole."""
        out, (h, c) = self.lstm(features, (state.h.unsqueeze(0), state.c.unsqueeze(0)))
        return out, LSTMState(h.squeeze(0), c.squeeze(0))

    def q_values(self, lstm_out: torch.Tensor) -> torch.Tensor:
        advantages = self.advantage(lstm_out)
        if self.value is None:
            return advantages
        return self.value(lstm_out) + advantages - advantages.mean(dim=-1, keepdim=True)


class DRQNTorchRLModule(TorchRLModule, QNetAPI, TargetNetworkAPI, InferenceOnlyAPI):
    """Deep Recurrent Q-Network for RLlib's DQN on the new API stack.

    Image observations ``(H, W, C)`` go through the paper's three convolutions, vector
    observations ``(D,)`` through an MLP; then an LSTM and a linear Q head. ``uint8`` frames are
    scaled to ``[0, 1]`` inside the module, so replay and acting stay ``uint8`` (4x less replay
    memory than float frames).

    Example (runs on dummy spaces)::

        import gymnasium as gym
        import numpy as np
        import torch
        from ray.rllib.core.columns import Columns
        from rllib_drqn import DRQNTorchRLModule

        module = DRQNTorchRLModule(
            observation_space=gym.spaces.Box(0, 255, (84, 84, 1), np.uint8),
            action_space=gym.spaces.Discrete(6),
            model_config={"epsilon": 0.1},
        )
        frames = torch.zeros((2, 10, 84, 84, 1), dtype=torch.uint8)
        state = {k: torch.zeros(2, 512) for k in ("h", "c")}
        out = module.compute_q_values({Columns.OBS: frames, Columns.STATE_IN: state})
        assert out["qf_preds"].shape == (2, 10, 6)
    """

    framework: str = "torch"

    @override(RLModule)
    def setup(self) -> None:
        config = resolve_model_config(self.model_config)
        if not isinstance(self.action_space, gym.spaces.Discrete):
            raise TypeError(
                f"DRQN needs a Discrete action space (one Q-value per action), got "
                f"{self.action_space}. Use an env with discrete actions."
            )
        self.num_actions = int(self.action_space.n)
        self.cell_size = int(config["lstm_cell_size"])
        self.max_seq_len = int(config["max_seq_len"])
        self.burn_in_len = int(config.get("burn_in_len", 0))
        self.uses_double_q = bool(config.get("double_q", True))
        self.uses_dueling = bool(config.get("dueling", False))
        self.epsilon_schedule = Scheduler(
            fixed_value_or_schedule=config.get("epsilon", 0.0), framework="torch"
        )

        torso, torso_out, self.scales_pixels = _build_torso(self.observation_space, config)
        self.q_net = _RecurrentQNet(
            torso, torso_out, self.cell_size, self.num_actions, self.uses_dueling
        )

    # ---- State ---------------------------------------------------------------------------

    @override(RLModule)
    def get_initial_state(self) -> dict[str, np.ndarray]:
        """Zero state, unbatched: RLlib's connectors add the batch dim per episode."""
        zeros = np.zeros((self.cell_size,), dtype=np.float32)
        return {"h": zeros, "c": zeros.copy()}

    # ---- Target network ------------------------------------------------------------------

    @override(TargetNetworkAPI)
    def make_target_networks(self) -> None:
        self._target_q_net = make_target_network(self.q_net)

    @override(TargetNetworkAPI)
    def get_target_network_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.q_net, self._target_q_net)]

    @override(InferenceOnlyAPI)
    def get_non_inference_attributes(self) -> list[str]:
        return ["_target_q_net"]

    @override(TargetNetworkAPI)
    def forward_target(self, batch: dict[str, Any]) -> dict[str, Any]:
        with torch.no_grad():
            return self._q_forward(self._target_q_net, batch)

    # ---- Q-values --------------------------------------------------------------------------

    @override(QNetAPI)
    def compute_q_values(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Q-values ``[B, T, A]`` and the state after the last step, from ``STATE_IN``."""
        return self._q_forward(self.q_net, batch)

    def _q_forward(self, net: _RecurrentQNet, batch: dict[str, Any]) -> dict[str, Any]:
        obs = self._check_obs(batch[Columns.OBS])
        state = LSTMState.from_dict(batch[Columns.STATE_IN])
        lstm_out, state_out = net.recur(net.embed(self._preprocess(obs)), state)
        return {QF_PREDS: net.q_values(lstm_out), Columns.STATE_OUT: state_out.as_dict()}

    def _preprocess(self, obs: torch.Tensor) -> torch.Tensor:
        obs = obs.float()
        return obs / 255.0 if self.scales_pixels else obs

    def _check_obs(self, obs: torch.Tensor) -> torch.Tensor:
        expected = tuple(self.observation_space.shape)
        if obs.dim() != len(expected) + 2 or tuple(obs.shape[2:]) != expected:
            raise ValueError(
                f"DRQNTorchRLModule expects observations shaped [B, T, *{expected}], got "
                f"{tuple(obs.shape)}. Observations must match the observation space the "
                "module was built for; add a time axis of 1 when acting step by step."
            )
        return obs

    # ---- Forward passes ------------------------------------------------------------------

    @override(RLModule)
    def _forward_inference(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        with torch.no_grad():
            out = self.compute_q_values(batch)
        return {
            Columns.ACTIONS: out[QF_PREDS].argmax(dim=-1),
            Columns.STATE_OUT: out[Columns.STATE_OUT],
        }

    @override(RLModule)
    def _forward_exploration(
        self, batch: dict[str, Any], t: int = 0, **kwargs: Any
    ) -> dict[str, Any]:
        """Epsilon-greedy over ``[B, T]``: one coin and one random action per env and step.

        RLlib's default DQN module draws one coin per batch row and broadcasts ``[B]`` against
        ``[B, 1]`` actions into ``[B, B]``; drawing with the actions' own shape avoids that.
        """
        with torch.no_grad():
            out = self.compute_q_values(batch)
        q_values = out[QF_PREDS]
        greedy = q_values.argmax(dim=-1)
        self.epsilon_schedule.update(t)
        epsilon = self.epsilon_schedule.get_current_value()
        random_actions = torch.randint(
            self.num_actions, greedy.shape, device=greedy.device, dtype=greedy.dtype
        )
        explore = torch.rand(greedy.shape, device=greedy.device) < epsilon
        return {
            Columns.ACTIONS: torch.where(explore, random_actions, greedy),
            Columns.STATE_OUT: out[Columns.STATE_OUT],
        }

    @override(RLModule)
    def _forward_train(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """One pass of T+1 steps per network yields Q(o_t) and Q(o_{t+1}) for all t.

        RLlib's default DQN module runs the online net over ``OBS`` and again over
        ``NEXT_OBS`` (each T steps) and the target net over ``NEXT_OBS``. Inside a sequence
        ``NEXT_OBS[:, t] == OBS[:, t + 1]``, so both nets run once over
        ``[o_0, ..., o_T]`` from the same initial state instead; the online net's outputs
        1..T give the double-Q argmax. ``burn_in_len`` steps (R2D2) only warm the online
        state up: they run without gradient and their Q-values are zeros that the learner
        masks out (``DQNTorchLearner`` zeroes the first ``burn_in_len`` mask columns).

        A batch with ``TARGET_STATE_IN`` comes from sequential updates, which carry states
        from chunk to chunk: only then are the states after the T trained steps returned
        (``STATE_OUT`` online, ``NEXT_STATE_OUT`` target). Getting them costs a second LSTM
        call per net (T steps, then the last one), measured as 25-30% of the forward and
        backward pass of a Pong update with 3 sequences on a CPU, so the other modes make one
        call over T+1 steps.
        """
        if self.inference_only:
            raise RuntimeError(
                "Trying to train an inference-only DRQN module. Build it with "
                "inference_only=False (RLlib's learners do)."
            )
        obs = self._check_obs(batch[Columns.OBS])
        next_obs = self._check_obs(batch[Columns.NEXT_OBS])
        frames = self._preprocess(torch.cat([obs[:, :1], next_obs], dim=1))
        seq_len = obs.shape[1]
        carries_state = TARGET_STATE_IN in batch
        online_state = LSTMState.from_dict(batch[Columns.STATE_IN])
        target_state = LSTMState.from_dict(batch.get(TARGET_STATE_IN, batch[Columns.STATE_IN]))
        state_after = seq_len if carries_state else None

        q_online, online_final = self._unroll_with_burn_in(frames, online_state, state_after)
        with torch.no_grad():
            q_target, target_final = self._unroll(
                self._target_q_net, frames, target_state, state_after
            )

        output = {
            QF_PREDS: q_online[:, :seq_len],
            QF_TARGET_NEXT_PREDS: q_target[:, 1:],
        }
        if carries_state:
            output[Columns.STATE_OUT] = online_final.detach().as_dict()
            output[Columns.NEXT_STATE_OUT] = target_final.as_dict()
        if self.uses_double_q:
            output[QF_NEXT_PREDS] = q_online[:, 1:].detach()
        return output

    @staticmethod
    def _unroll(
        net: _RecurrentQNet, frames: torch.Tensor, state: LSTMState, state_after: int | None
    ) -> tuple[torch.Tensor, LSTMState | None]:
        """Q-values over ``frames`` and, if ``state_after`` is given, the state after that step.

        Without ``state_after`` the LSTM runs as one call over all steps (cuDNN's whole
        sequence on a GPU), and no state is returned.
        """
        features = net.embed(frames)
        if state_after is None:
            out, _ = net.recur(features, state)
            return net.q_values(out), None
        out_head, state_at = net.recur(features[:, :state_after], state)
        out_tail, _ = net.recur(features[:, state_after:], state_at)
        return net.q_values(torch.cat([out_head, out_tail], dim=1)), state_at

    def _unroll_with_burn_in(
        self, frames: torch.Tensor, state: LSTMState, state_after: int | None
    ) -> tuple[torch.Tensor, LSTMState | None]:
        seq_len = frames.shape[1] - 1
        burn_in = min(self.burn_in_len, seq_len - 1)
        if burn_in <= 0:
            return self._unroll(self.q_net, frames, state, state_after)
        # R2D2 (Kapturowski et al. 2019): burn-in steps neither carry loss nor gradient.
        with torch.no_grad():
            _, state = self.q_net.recur(self.q_net.embed(frames[:, :burn_in]), state)
        rest_after = None if state_after is None else state_after - burn_in
        q_values, final = self._unroll(self.q_net, frames[:, burn_in:], state, rest_after)
        padding = torch.zeros_like(q_values[:, :burn_in])
        return torch.cat([padding, q_values], dim=1), final


def resolve_model_config(model_config: dict[str, Any] | None) -> dict[str, Any]:
    """The module's defaults overlaid with the user's keys; unknown or bad values raise.

    Called by ``DRQNConfig.validate`` in the driver too, so mistakes surface before any worker
    starts.
    """
    user_config = dict(model_config or {})
    unknown = sorted(set(user_config) - set(DRQN_MODEL_DEFAULTS) - _AUTO_INCLUDED_KEYS)
    if unknown:
        raise ValueError(
            f"Unknown DRQN model_config key(s) {unknown}. Valid keys are "
            f"{sorted(DRQN_MODEL_DEFAULTS)} (RLlib adds {sorted(_AUTO_INCLUDED_KEYS)} "
            "itself). Fix the spelling or remove them from `model_config`."
        )
    config = {**DRQN_MODEL_DEFAULTS, **user_config}
    for key in ("lstm_cell_size", "max_seq_len"):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"model_config['{key}'] must be a positive int, got {value!r}. "
                f"Set e.g. model_config={{'{key}': {DRQN_MODEL_DEFAULTS[key]}}}."
            )
    for key in ("conv_activation", "fcnet_activation"):
        if config[key] not in _ACTIVATIONS:
            raise ValueError(
                f"model_config['{key}']={config[key]!r} is not one of {sorted(_ACTIVATIONS)}."
            )
    if config.get("num_atoms", 1) > 1:
        raise ValueError(
            f"DRQN learns expected Q-values; num_atoms={config['num_atoms']} "
            "(distributional Q) is not supported. Set config.training(num_atoms=1)."
        )
    return config


def _build_torso(space: gym.Space, config: dict[str, Any]) -> tuple[nn.Module, int, bool]:
    """Conv torso for ``(H, W, C)`` frames, MLP torso for ``(D,)`` vectors.

    Returns the torso, its output width and whether pixels are scaled from ``[0, 255]``.
    """
    if not isinstance(space, gym.spaces.Box):
        raise TypeError(
            f"DRQN needs a Box observation space, got {space}. Wrap the env so it returns "
            "an image (H, W, C) or a flat vector (D,)."
        )
    if len(space.shape) == 3:
        return (*_build_conv_torso(space, config), space.dtype == np.uint8)
    if len(space.shape) == 1:
        return (*_build_mlp_torso(space.shape[0], config), False)
    raise ValueError(
        f"DRQN handles image observations (H, W, C) and vector observations (D,), got shape "
        f"{space.shape}. For Atari use the 'FlickeringAtari' env (84x84x1 frames); flatten "
        "other observations with gymnasium.wrappers.FlattenObservation."
    )


def _activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(f"Unknown activation {name!r}; use one of {sorted(_ACTIVATIONS)}.")
    return _ACTIVATIONS[name]()


def _build_conv_torso(space: gym.spaces.Box, config: dict[str, Any]) -> tuple[nn.Module, int]:
    height, width, channels = space.shape
    layers: list[nn.Module] = []
    in_channels = channels
    for spec in config["conv_filters"]:
        if len(spec) != 3:
            raise ValueError(
                f"Each conv_filters entry is [out_channels, kernel, stride], got {spec!r}."
            )
        out_channels, kernel, stride = spec
        layers += [
            nn.Conv2d(in_channels, out_channels, kernel, stride),
            _activation(config["conv_activation"]),
        ]
        in_channels = out_channels
    convs = nn.Sequential(*layers)
    try:
        with torch.no_grad():
            probe = convs(torch.zeros(1, channels, height, width))
    except RuntimeError:  # torch refuses a kernel larger than what is left of the frame
        probe = torch.zeros(0)
    if probe.numel() == 0:
        raise ValueError(
            f"conv_filters {config['conv_filters']} shrink a {height}x{width} frame to nothing; "
            "use fewer or smaller strides, or a larger screen_size."
        )
    # Frames arrive channels-last (H, W, C) as gymnasium makes them; torch wants (C, H, W).
    torso = nn.Sequential(_ChannelsFirst(), convs, nn.Flatten())
    return torso, int(probe.numel())


def _build_mlp_torso(in_size: int, config: dict[str, Any]) -> tuple[nn.Module, int]:
    layers: list[nn.Module] = []
    for out_size in config["fcnet_hiddens"]:
        layers += [nn.Linear(in_size, int(out_size)), _activation(config["fcnet_activation"])]
        in_size = int(out_size)
    return nn.Sequential(*layers), in_size


class _ChannelsFirst(nn.Module):
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return frames.permute(0, 3, 1, 2)
