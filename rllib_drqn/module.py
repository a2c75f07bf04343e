"""The DRQN network as an RLlib RLModule: frame -> conv (or MLP) torso -> LSTM -> Q-values.

This is the network of Hausknecht & Stone 2015 (https://arxiv.org/abs/1507.06527): DQN's three
convolutions, an LSTM where DQN had its first dense layer, and one linear layer out to a Q-value
per action. Vector observations get an MLP torso instead of the convolutions. ``Discrete``,
``MultiDiscrete`` and ``MultiBinary`` observations, and ``Tuple``/``Dict`` spaces of these and
``Box``, are one-hot encoded and concatenated inside the module (replay keeps the env's small
integers); an image inside a ``Dict``/``Tuple`` goes through the conv torso, the rest through
the MLP. ``cell_type`` picks an LSTM (the paper's) or a GRU; ``lstm_use_prev_action`` and
``lstm_use_prev_reward`` feed a one-hot of a_{t-1} and r_{t-1} into the cell, next to the torso
features (R2D2's inputs; the keys are named after the old RLlib ``use_lstm`` model's).

The module plugs into RLlib's own DQN (new API stack) through the ``QNetAPI``,
``TargetNetworkAPI`` and ``InferenceOnlyAPI`` mixins. Its ``forward_train`` returns exactly the
keys ``DQNTorchLearner.compute_loss_for_module`` reads (``qf_preds``, ``qf_next_preds``,
``qf_target_next_preds``), each shaped ``[B, T, num_actions]``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
import tree
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
    "CELL_TYPES",
    "DRQN_MODEL_DEFAULTS",
    "IMAGE_CELL_SIZE",
    "NO_PREV_ACTION",
    "NO_PREV_REWARD",
    "PREV_ACTIONS",
    "PREV_REWARDS",
    "TARGET_STATE_IN",
    "VECTOR_CELL_SIZE",
    "DRQNTorchRLModule",
    "LSTMState",
    "check_spaces",
    "default_cell_size",
    "resolve_model_config",
    "uses_prev_inputs",
]

#: Every size of the network is one of these ``model_config`` keys. The conv stack is the
#: paper's (and Nature DQN's): 32 8x8/4, 64 4x4/2, 64 3x3/1. ``lstm_cell_size=None`` picks the
#: size by observation: the paper's 512 for image observations, 128 otherwise (small tasks
#: learn faster with it; see ``default_cell_size``).
DRQN_MODEL_DEFAULTS: dict[str, Any] = {
    "conv_filters": [[32, 8, 4], [64, 4, 2], [64, 3, 1]],
    "conv_activation": "relu",
    "fcnet_hiddens": [64],
    "fcnet_activation": "relu",
    "cell_type": "lstm",
    "lstm_cell_size": None,
    "lstm_use_prev_action": False,
    "lstm_use_prev_reward": False,
    "image_key": None,
    "max_seq_len": 10,
}

#: ``lstm_cell_size=None``: the paper's 512 cells when the module sees an (H, W, C) image, 128
#: for vector and discrete observations.
IMAGE_CELL_SIZE = 512
VECTOR_CELL_SIZE = 128

#: The recurrent cells ``model_config['cell_type']`` can name.
CELL_TYPES = ("lstm", "gru")

#: Batch columns holding a_{t-1} (``-1`` at an episode's first step) and r_{t-1} (``0`` there)
#: for every step of ``OBS``. ``rllib_drqn.batching`` fills them while acting (from the
#: episode) and for training (from the replayed sequences and their lookback step).
PREV_ACTIONS = "prev_actions"
PREV_REWARDS = "prev_rewards"

#: a_{t-1} and r_{t-1} at an episode's first step (the one-hot of -1 is all zeros). Acting,
#: training and ``rllib_drqn.evaluate.play_episodes`` all feed these.
NO_PREV_ACTION = -1
NO_PREV_REWARD = 0.0

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
    """Torso -> LSTM (or GRU) -> Q head. One instance is the online net, a deep copy the target.

    The recurrent state is a dict: ``{"h", "c"}`` for an LSTM, ``{"h"}`` for a GRU.
    """

    def __init__(
        self,
        torso: nn.Module,
        torso_out: int,
        extra_inputs: int,
        cell_type: str,
        cell_size: int,
        num_actions: int,
        dueling: bool,
    ) -> None:
        super().__init__()
        self.torso = torso
        self.cell_type = cell_type
        cell_class = nn.LSTM if cell_type == "lstm" else nn.GRU
        # Registered as `lstm` or `gru`: an LSTM's parameter names stay those of earlier
        # checkpoints (`q_net.lstm.weight_ih_l0`, ...).
        setattr(self, cell_type, cell_class(torso_out + extra_inputs, cell_size, batch_first=True))
        # The paper has one linear layer from the LSTM to the Q-values; dueling (Wang et al.
        # 2016, https://arxiv.org/abs/1511.06581) splits it into advantage and value streams.
        self.advantage = nn.Linear(cell_size, num_actions)
        self.value = nn.Linear(cell_size, 1) if dueling else None

    def embed(self, obs: Any) -> torch.Tensor:
        """Runs the torso over ``[B, T, ...]`` observations as one ``[B*T, ...]`` batch."""
        batch, time = tree.flatten(obs)[0].shape[:2]
        flat = tree.map_structure(lambda leaf: leaf.reshape(batch * time, *leaf.shape[2:]), obs)
        return self.torso(flat).reshape(batch, time, -1)

    def recur(
        self, features: torch.Tensor, state: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Runs the cell over ``[B, T, F]`` features; one call so cuDNN unrolls it whole."""
        cell = getattr(self, self.cell_type)
        if features.shape[1] == 1 and features.device.type == "cpu":
            # Acting (one step per call) on a CPU: torch's oneDNN RNN kernel reorders all the
            # weights on every call, which one step cannot amortize. Measured on the paper's
            # LSTM (3,136 -> 512) at 16 envs, one thread: 706 us per env step with oneDNN,
            # 400 us with torch's own kernel (the same math); over 11 steps (training) the
            # two are even (2,977 vs 2,850 us), so only the one-step call opts out.
            with _without_onednn():
                return self._run_cell(cell, features, state)
        return self._run_cell(cell, features, state)

    def _run_cell(
        self, cell: nn.Module, features: torch.Tensor, state: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.cell_type == "lstm":
            out, (h, c) = cell(features, (state["h"].unsqueeze(0), state["c"].unsqueeze(0)))
            return out, {"h": h.squeeze(0), "c": c.squeeze(0)}
        out, h = cell(features, state["h"].unsqueeze(0))
        return out, {"h": h.squeeze(0)}

    def q_values(self, lstm_out: torch.Tensor) -> torch.Tensor:
        advantages = self.advantage(lstm_out)
        if self.value is None:
            return advantages
        return self.value(lstm_out) + advantages - advantages.mean(dim=-1, keepdim=True)


@contextlib.contextmanager
def _without_onednn() -> Iterator[None]:
    """Turns torch's oneDNN kernels off for a block; its other oneDNN flags stay as they are.

    ``torch.backends.mkldnn.flags(enabled=False)`` would also reset ``deterministic`` and
    ``allow_tf32`` (and warn about TF32 on every first call); the property changes one flag.
    """
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = enabled


def _detached(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach() for key, value in state.items()}


class DRQNTorchRLModule(TorchRLModule, QNetAPI, TargetNetworkAPI, InferenceOnlyAPI):
    """Deep Recurrent Q-Network for RLlib's DQN on the new API stack.

    Image observations ``(H, W, C)`` go through the paper's three convolutions, vector
    observations ``(D,)`` through an MLP; ``Discrete``/``MultiDiscrete``/``MultiBinary``
    observations and ``Tuple``/``Dict`` spaces are one-hot encoded and concatenated (an image
    inside them through the convolutions); then an LSTM (or GRU) and a linear Q head.
    ``uint8`` frames are scaled to ``[0, 1]`` inside the module, so replay and acting stay
    ``uint8`` (4x less replay memory than float frames), as integer observations stay integers.

    Example (runs on dummy spaces)::

        import gymnasium as gym
        import numpy as np
        import torch
        from ray.rllib.core.columns import Columns
        from rllib_drqn import DRQNTorchRLModule

        module = DRQNTorchRLModule(
            observation_space=gym.spaces.Box(0, 255, (84, 84, 1), np.uint8),
            action_space=gym.spaces.Discrete(6),
            model_config={"epsilon": 0.1, "lstm_cell_size": 512},
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
        check_spaces(self.observation_space, self.action_space, config)
        self.num_actions = int(self.action_space.n)
        self.cell_type = str(config["cell_type"])
        self.cell_size = int(config["lstm_cell_size"] or default_cell_size(self.observation_space))
        self.max_seq_len = int(config["max_seq_len"])
        self.burn_in_len = int(config.get("burn_in_len", 0))
        self.uses_double_q = bool(config.get("double_q", True))
        self.uses_dueling = bool(config.get("dueling", False))
        self.uses_prev_action = bool(config["lstm_use_prev_action"])
        self.uses_prev_reward = bool(config["lstm_use_prev_reward"])
        self.epsilon_schedule = Scheduler(
            fixed_value_or_schedule=config.get("epsilon", 0.0), framework="torch"
        )

        torso, torso_out, self.scales_pixels = _build_torso(self.observation_space, config)
        extra_inputs = self.num_actions * self.uses_prev_action + self.uses_prev_reward
        self.q_net = _RecurrentQNet(
            torso,
            torso_out,
            extra_inputs,
            self.cell_type,
            self.cell_size,
            self.num_actions,
            self.uses_dueling,
        )

    # ---- State ---------------------------------------------------------------------------

    @override(RLModule)
    def get_initial_state(self) -> dict[str, np.ndarray]:
        """Zero state, unbatched: RLlib's connectors add the batch dim per episode."""
        keys = ("h", "c") if self.cell_type == "lstm" else ("h",)
        return {key: np.zeros((self.cell_size,), dtype=np.float32) for key in keys}

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
        """Q-values ``[B, T, A]`` and the state after the last step, from ``STATE_IN``.

        With ``lstm_use_prev_action``/``lstm_use_prev_reward`` the batch also holds
        ``PREV_ACTIONS``/``PREV_REWARDS`` ``[B, T]``, aligned with ``OBS``.
        """
        return self._q_forward(self.q_net, batch)

    def _q_forward(self, net: _RecurrentQNet, batch: dict[str, Any]) -> dict[str, Any]:
        obs = self._check_obs(batch[Columns.OBS])
        prev = self._prev_inputs(batch.get(PREV_ACTIONS), batch.get(PREV_REWARDS))
        features = self._with_prev(net.embed(self._preprocess(obs)), prev)
        lstm_out, state_out = net.recur(features, batch[Columns.STATE_IN])
        return {QF_PREDS: net.q_values(lstm_out), Columns.STATE_OUT: state_out}

    def _preprocess(self, obs: Any) -> Any:
        """Box observations become float (pixels in [0, 1]); structured ones the torso encodes."""
        if not isinstance(obs, torch.Tensor) or not isinstance(
            self.observation_space, gym.spaces.Box
        ):
            return obs
        obs = obs.float()
        return obs / 255.0 if self.scales_pixels else obs

    def _check_obs(self, obs: Any) -> Any:
        """Each observation leaf must be ``[B, T, *leaf_shape]`` for the module's space."""
        leaves = _space_leaves(self.observation_space)
        try:
            got = [(path, _get_path(obs, path)) for path, _ in leaves]
        except (KeyError, IndexError, TypeError):
            raise ValueError(
                f"DRQNTorchRLModule was built for observations of {self.observation_space}, "
                f"got a batch shaped {tree.map_structure(lambda x: tuple(x.shape), obs)}. "
                "Observations must match the observation space the module was built for."
            ) from None
        lead = None
        for (path, tensor), (_, leaf_space) in zip(got, leaves, strict=True):
            expected = tuple(leaf_space.shape)
            shape = tuple(getattr(tensor, "shape", ()))
            where = f" (at {'/'.join(map(str, path))})" if path else ""
            if (
                len(shape) != len(expected) + 2
                or shape[2:] != expected
                or (lead is not None and shape[:2] != lead)
            ):
                raise ValueError(
                    f"DRQNTorchRLModule expects observations shaped [B, T, *{expected}]{where}, "
                    f"got {shape}. Observations must match the observation space the "
                    "module was built for; add a time axis of 1 when acting step by step."
                )
            lead = shape[:2]
        return obs

    def _prev_inputs(
        self, prev_actions: torch.Tensor | None, prev_rewards: torch.Tensor | None
    ) -> torch.Tensor | None:
        """``[B, T, A + 1]``: one-hot a_{t-1} (all zero for ``-1``) and r_{t-1}, as configured."""
        parts = []
        if self.uses_prev_action:
            if prev_actions is None:
                raise ValueError(
                    f"model_config['lstm_use_prev_action'] is set, but the batch has no "
                    f"{PREV_ACTIONS!r} column [B, T]. DRQNConfig's connectors add it; when "
                    "calling the module yourself, pass a_(t-1) per step (-1 at episode start)."
                )
            prev_actions = torch.as_tensor(prev_actions).long()
            one_hot = nn.functional.one_hot(prev_actions.clamp(min=0), self.num_actions)
            parts.append(one_hot.float() * (prev_actions >= 0).unsqueeze(-1).float())
        if self.uses_prev_reward:
            if prev_rewards is None:
                raise ValueError(
                    f"model_config['lstm_use_prev_reward'] is set, but the batch has no "
                    f"{PREV_REWARDS!r} column [B, T]. DRQNConfig's connectors add it; when "
                    "calling the module yourself, pass r_(t-1) per step (0 at episode start)."
                )
            parts.append(torch.as_tensor(prev_rewards).float().unsqueeze(-1))
        return torch.cat(parts, dim=-1) if parts else None

    @staticmethod
    def _with_prev(features: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
        if prev is None:
            return features
        return torch.cat([features, prev.to(features.device, features.dtype)], dim=-1)

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
        The previous action and reward of step t+1 are a_t and r_t, so the T+1 steps' inputs
        are ``PREV_ACTIONS[:, 0]`` followed by ``ACTIONS`` (likewise for rewards).

        A batch with ``TARGET_STATE_IN`` comes from sequential updates, which carry states
        from chunk to chunk: only then are the states after the chunk's ``max_seq_len``
        trained steps returned (``STATE_OUT`` online, ``NEXT_STATE_OUT`` target); the steps
        after them are the chunk's n-step lookahead, the next chunk's first steps. Getting
        them costs a second LSTM call per net (T steps, then the rest), measured as 25-30%
        of the forward and backward pass of a Pong update with 3 sequences on a CPU, so the
        other modes make one call over T+1 steps.
        """
        if self.inference_only:
            raise RuntimeError(
                "Trying to train an inference-only DRQN module. Build it with "
                "inference_only=False (RLlib's learners do)."
            )
        obs = self._check_obs(batch[Columns.OBS])
        next_obs = self._check_obs(batch[Columns.NEXT_OBS])
        frames = self._preprocess(
            tree.map_structure(lambda o, n: torch.cat([o[:, :1], n], dim=1), obs, next_obs)
        )
        prev = self._prev_inputs(
            _then(batch.get(PREV_ACTIONS), batch[Columns.ACTIONS])
            if self.uses_prev_action
            else None,
            _then(batch.get(PREV_REWARDS), batch[Columns.REWARDS])
            if self.uses_prev_reward
            else None,
        )
        seq_len = tree.flatten(obs)[0].shape[1]
        carries_state = TARGET_STATE_IN in batch
        online_state = batch[Columns.STATE_IN]
        target_state = batch.get(TARGET_STATE_IN, batch[Columns.STATE_IN])
        state_after = min(self.max_seq_len, seq_len) if carries_state else None

        q_online, online_final = self._unroll_with_burn_in(frames, prev, online_state, state_after)
        with torch.no_grad():
            q_target, target_final = self._unroll(
                self._target_q_net, frames, prev, target_state, state_after
            )

        output = {
            QF_PREDS: q_online[:, :seq_len],
            QF_TARGET_NEXT_PREDS: q_target[:, 1:],
        }
        if carries_state:
            output[Columns.STATE_OUT] = _detached(online_final)
            output[Columns.NEXT_STATE_OUT] = target_final
        if self.uses_double_q:
            output[QF_NEXT_PREDS] = q_online[:, 1:].detach()
        return output

    def _unroll(
        self,
        net: _RecurrentQNet,
        frames: Any,
        prev: torch.Tensor | None,
        state: dict[str, torch.Tensor],
        state_after: int | None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """Q-values over ``frames`` and, if ``state_after`` is given, the state after that step.

        Without ``state_after`` the LSTM runs as one call over all steps (cuDNN's whole
        sequence on a GPU), and no state is returned.
        """
        features = self._with_prev(net.embed(frames), prev)
        if state_after is None:
            out, _ = net.recur(features, state)
            return net.q_values(out), None
        out_head, state_at = net.recur(features[:, :state_after], state)
        out_tail, _ = net.recur(features[:, state_after:], state_at)
        return net.q_values(torch.cat([out_head, out_tail], dim=1)), state_at

    def _unroll_with_burn_in(
        self,
        frames: Any,
        prev: torch.Tensor | None,
        state: dict[str, torch.Tensor],
        state_after: int | None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        seq_len = tree.flatten(frames)[0].shape[1] - 1
        burn_in = min(self.burn_in_len, seq_len - 1)
        if burn_in <= 0:
            return self._unroll(self.q_net, frames, prev, state, state_after)
        head = tree.map_structure(lambda leaf: leaf[:, :burn_in], frames)
        tail = tree.map_structure(lambda leaf: leaf[:, burn_in:], frames)
        prev_head = None if prev is None else prev[:, :burn_in]
        prev_tail = None if prev is None else prev[:, burn_in:]
        # R2D2 (Kapturowski et al. 2019): burn-in steps neither carry loss nor gradient.
        with torch.no_grad():
            features = self._with_prev(self.q_net.embed(head), prev_head)
            _, state = self.q_net.recur(features, state)
        rest_after = None if state_after is None else state_after - burn_in
        q_values, final = self._unroll(self.q_net, tail, prev_tail, state, rest_after)
        padding = torch.zeros_like(q_values[:, :burn_in])
        return torch.cat([padding, q_values], dim=1), final


def _then(first: Any, rest: torch.Tensor) -> torch.Tensor:
    """``[B, T+1]``: each row's ``first[:, 0]`` (a_{-1} of the sequence), then ``rest``."""
    if first is None:
        return None
    first = torch.as_tensor(first).to(rest.device)
    return torch.cat([first[:, :1].to(rest.dtype), rest], dim=1)


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
    for key, example in (("lstm_cell_size", IMAGE_CELL_SIZE), ("max_seq_len", 10)):
        value = config[key]
        if key == "lstm_cell_size" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"model_config['{key}'] must be a positive int, got {value!r}. "
                f"Set e.g. model_config={{'{key}': {example}}}."
            )
    for key in ("conv_activation", "fcnet_activation"):
        if config[key] not in _ACTIVATIONS:
            raise ValueError(
                f"model_config['{key}']={config[key]!r} is not one of {sorted(_ACTIVATIONS)}."
            )
    if config["cell_type"] not in CELL_TYPES:
        raise ValueError(
            f"Unknown model_config['cell_type']={config['cell_type']!r}; use one of "
            f"{list(CELL_TYPES)} (e.g. model_config={{'cell_type': 'gru'}})."
        )
    for key in ("lstm_use_prev_action", "lstm_use_prev_reward"):
        if not isinstance(config[key], bool):
            raise ValueError(f"model_config['{key}'] must be True or False, got {config[key]!r}.")
    if config["image_key"] is not None and not isinstance(config["image_key"], str):
        raise ValueError(
            f"model_config['image_key'] names the image entry of a Dict observation space and "
            f"must be a str or None, got {config['image_key']!r}."
        )
    if config.get("num_atoms", 1) > 1:
        raise ValueError(
            f"DRQN learns expected Q-values; num_atoms={config['num_atoms']} "
            "(distributional Q) is not supported. Set config.training(num_atoms=1)."
        )
    return config


def default_cell_size(observation_space: gym.Space) -> int:
    """512 (the paper's) when the observations hold an (H, W, C) image, else 128."""
    try:
        leaves = _space_leaves(observation_space)
    except TypeError:
        return VECTOR_CELL_SIZE
    return IMAGE_CELL_SIZE if any(_is_image(leaf) for _, leaf in leaves) else VECTOR_CELL_SIZE


def uses_prev_inputs(model_config: dict[str, Any] | None) -> bool:
    """Whether the module reads ``PREV_ACTIONS``/``PREV_REWARDS`` (so connectors must add them)."""
    config = model_config or {}
    return bool(config.get("lstm_use_prev_action") or config.get("lstm_use_prev_reward"))


#: Observation spaces encoded inside the module; anything else is refused by `check_spaces`.
_LEAF_SPACES = (
    gym.spaces.Box,
    gym.spaces.Discrete,
    gym.spaces.MultiDiscrete,
    gym.spaces.MultiBinary,
)


def check_spaces(
    observation_space: gym.Space, action_space: gym.Space, model_config: dict[str, Any]
) -> None:
    """Raises for spaces the module cannot take, naming the space and the fix.

    Called by the module's ``setup`` and by ``DRQNConfig.validate`` (in the driver, before any
    worker starts) once the env's spaces are known.
    """
    config = resolve_model_config(model_config)
    if not isinstance(action_space, gym.spaces.Discrete):
        prev_keys = [k for k in ("lstm_use_prev_action", "lstm_use_prev_reward") if config[k]]
        also = (
            f" ({' and '.join(prev_keys)} also needs it: the previous action goes in as a one-hot"
            " of a Discrete action.)"
            if prev_keys
            else ""
        )
        raise TypeError(
            f"DRQN needs a Discrete action space (one Q-value per action), got "
            f"{action_space}. Use an env with discrete actions.{also}"
        )
    image_key = config["image_key"]
    if image_key is not None:
        if not isinstance(observation_space, gym.spaces.Dict):
            raise ValueError(
                f"model_config['image_key']={image_key!r} names an entry of a Dict observation "
                f"space, but the observation space is {observation_space}. Remove image_key."
            )
        if image_key not in observation_space.spaces:
            raise ValueError(
                f"model_config['image_key']={image_key!r} is not a key of the Dict observation "
                f"space (its keys are {list(observation_space.spaces)}). Set image_key to the "
                "key holding the (H, W, C) image, or None to find a rank-3 Box by itself."
            )
        if not _is_image(observation_space.spaces[image_key]):
            raise ValueError(
                f"model_config['image_key']={image_key!r} names "
                f"{observation_space.spaces[image_key]}, which is not an (H, W, C) Box image."
            )
    if isinstance(observation_space, gym.spaces.Box):
        if len(observation_space.shape) not in (1, 3):
            raise ValueError(
                f"DRQN handles image observations (H, W, C) and vector observations (D,), got "
                f"shape {observation_space.shape}. For Atari use the 'FlickeringAtari' env "
                "(84x84x1 frames); flatten other observations with "
                "gymnasium.wrappers.FlattenObservation."
            )
        return
    leaves = _space_leaves(observation_space)  # Raises for unsupported spaces.
    images = [path for path, leaf in leaves if _is_image(leaf)]
    if image_key is None and len(images) > 1:
        raise ValueError(
            f"DRQN's conv torso takes one image, but {observation_space} holds {len(images)} "
            f"(at {['/'.join(map(str, p)) for p in images]}). Set model_config['image_key'] to "
            "the one the convolutions should see (the others are flattened into the MLP)."
        )


def _is_image(space: gym.Space) -> bool:
    return isinstance(space, gym.spaces.Box) and len(space.shape) == 3


def _space_leaves(space: gym.Space, path: tuple[Any, ...] = ()) -> list[tuple[tuple, gym.Space]]:
    """The leaf spaces of ``space`` with their paths (Dict keys, Tuple indices), in order."""
    if isinstance(space, gym.spaces.Dict):
        return [
            leaf for key, sub in space.spaces.items() for leaf in _space_leaves(sub, (*path, key))
        ]
    if isinstance(space, gym.spaces.Tuple):
        return [
            leaf
            for index, sub in enumerate(space.spaces)
            for leaf in _space_leaves(sub, (*path, index))
        ]
    if isinstance(space, _LEAF_SPACES):
        return [(path, space)]
    where = f" at {'/'.join(map(str, path))}" if path else ""
    raise TypeError(
        f"DRQN cannot encode the observation space {space}{where}. It takes Box, Discrete, "
        "MultiDiscrete and MultiBinary spaces and Tuple/Dict spaces of these; wrap the env so "
        "it returns one of them (e.g. token ids as a MultiDiscrete for Text, a fixed-size Box "
        "for a Graph or Sequence)."
    )


def _get_path(obs: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        obs = obs[key]
    return obs


def _build_torso(space: gym.Space, config: dict[str, Any]) -> tuple[nn.Module, int, bool]:
    """Conv torso for ``(H, W, C)`` frames, MLP torso for ``(D,)`` vectors, else encoders.

    Returns the torso, its output width and whether Box pixels are scaled from ``[0, 255]``.
    """
    if isinstance(space, gym.spaces.Box) and len(space.shape) == 3:
        return (*_build_conv_torso(space, config), space.dtype == np.uint8)
    if isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
        return (*_build_mlp_torso(space.shape[0], config), False)
    torso = _StructuredTorso(space, config)
    return torso, torso.out_size, False


class _StructuredTorso(nn.Module):
    """Discrete/MultiDiscrete/MultiBinary/Box leaves one-hot (or float) encoded and concatenated.

    Encoding here rather than in a wrapper or connector keeps the env's integers in replay (8
    bytes a step for a Discrete observation instead of a float one-hot of every value). One
    rank-3 Box (or the ``image_key`` entry of a Dict) goes through the conv torso, the other
    leaves through the MLP; their features are concatenated.
    """

    def __init__(self, space: gym.Space, config: dict[str, Any]) -> None:
        super().__init__()
        leaves = _space_leaves(space)
        image_key = config["image_key"]
        if image_key is not None:
            image_paths = [(image_key,)]
        else:
            image_paths = [path for path, leaf in leaves if _is_image(leaf)]
        self.image_path = image_paths[0] if image_paths else None
        self.leaves = [(path, leaf) for path, leaf in leaves if path != self.image_path]
        self.out_size = 0
        self.conv: nn.Module | None = None
        self.scales_image = False
        if self.image_path is not None:
            image_space = dict(leaves)[self.image_path]
            self.conv, conv_out = _build_conv_torso(image_space, config)
            self.scales_image = image_space.dtype == np.uint8
            self.out_size += conv_out
        self.mlp: nn.Module | None = None
        in_size = sum(_encoded_size(leaf) for _, leaf in self.leaves)
        if in_size:
            self.mlp, mlp_out = _build_mlp_torso(in_size, config)
            self.out_size += mlp_out

    def forward(self, obs: Any) -> torch.Tensor:
        parts = []
        if self.conv is not None:
            image = _get_path(obs, self.image_path).float()
            parts.append(self.conv(image / 255.0 if self.scales_image else image))
        if self.mlp is not None:
            encoded = [_encode(_get_path(obs, path), leaf) for path, leaf in self.leaves]
            parts.append(self.mlp(torch.cat(encoded, dim=-1)))
        return torch.cat(parts, dim=-1)


def _encoded_size(space: gym.Space) -> int:
    if isinstance(space, gym.spaces.Discrete):
        return int(space.n)
    if isinstance(space, gym.spaces.MultiDiscrete):
        return int(np.sum(space.nvec))
    return int(math.prod(space.shape))


def _encode(values: torch.Tensor, space: gym.Space) -> torch.Tensor:
    """``[N, *shape]`` values of one leaf -> ``[N, width]`` floats (one-hots for integers)."""
    batch = values.shape[0]
    if isinstance(space, gym.spaces.Discrete):
        index = (values.long() - int(space.start)).clamp(0, int(space.n) - 1)
        return nn.functional.one_hot(index, int(space.n)).float()
    if isinstance(space, gym.spaces.MultiDiscrete):
        nvec = torch.as_tensor(space.nvec.reshape(-1), device=values.device)
        start = torch.as_tensor(np.asarray(space.start).reshape(-1), device=values.device)
        index = torch.minimum((values.reshape(batch, -1).long() - start).clamp(min=0), nvec - 1)
        offsets = torch.cumsum(nvec, 0) - nvec
        out = torch.zeros(batch, int(nvec.sum()), device=values.device)
        return out.scatter_(1, index + offsets, 1.0)
    return values.reshape(batch, -1).float()


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
