"""``DRQNConfig`` and ``DRQN``: RLlib's DQN, set up so a recurrent Q-network trains out of the box.

Everything here is configuration on top of RLlib's ``DQNConfig``/``DQN``; the training loop,
learners, env runners and replay storage are RLlib's. What the defaults absorb (measured on
Ray 2.60):

- DQN's default ``PrioritizedEpisodeReplayBuffer`` samples rows of one step for stateful modules
  and crashes in ``update_priorities``; DRQN uses ``DRQNEpisodeReplayBuffer`` (sequences).
- ``max_seq_len`` is read by ``DQN.training_step`` only from the config-level ``model_config``
  (``ray/rllib/algorithms/dqn/dqn.py``, ``_training_step_new_api_stack``); DRQN includes it there
  and rejects a spec-level value that disagrees.
- ``train_batch_size_per_learner`` counts timesteps; DRQN sizes batches in sequences
  (``num_sequences_per_batch``, 32 as in the paper) and derives the timestep count from it.
"""

from __future__ import annotations

import difflib
from typing import Any

import gymnasium as gym
from ray.rllib.algorithms.algorithm_config import NotProvided
from ray.rllib.algorithms.dqn.dqn import DQN, DQNConfig
from ray.rllib.algorithms.dqn.torch.default_dqn_torch_rl_module import DefaultDQNTorchRLModule
from ray.rllib.core.rl_module.rl_module import RLModule, RLModuleSpec
from ray.rllib.utils.annotations import override

from rllib_drqn.batching import add_prev_inputs_piece
from rllib_drqn.envs import (
    FLICKERING_ATARI,
    STATELESS_CARTPOLE,
    make_stateless_cartpole,
    validate_flickering_atari_config,
)
from rllib_drqn.learner import DRQNTorchLearner
from rllib_drqn.module import (
    DRQN_MODEL_DEFAULTS,
    DRQNTorchRLModule,
    check_spaces,
    resolve_model_config,
)
from rllib_drqn.replay import (
    UPDATE_MODES,
    DRQNEpisodeReplayBuffer,
    DRQNPrioritizedEpisodeReplayBuffer,
)
from rllib_drqn.resumable import ReplayCheckpointing

__all__ = [
    "BUFFER_TYPES",
    "DRQN",
    "PRIORITIZED_REPLAY_BUFFER_TYPE",
    "DRQNConfig",
    "require_known_env",
]

_BUFFER_CLASSES = (DRQNEpisodeReplayBuffer, DRQNPrioritizedEpisodeReplayBuffer)
#: Import paths of DRQN's replay buffers: RLlib builds the buffer from this string.
BUFFER_TYPES = {cls: f"{cls.__module__}.{cls.__name__}" for cls in _BUFFER_CLASSES}
_REPLAY_BUFFER_TYPE = BUFFER_TYPES[DRQNEpisodeReplayBuffer]
PRIORITIZED_REPLAY_BUFFER_TYPE = BUFFER_TYPES[DRQNPrioritizedEpisodeReplayBuffer]


class DRQNConfig(DQNConfig):
    """Configuration of a DRQN run: RLlib's ``DQNConfig`` plus the update mode.

    Example::

        from rllib_drqn import DRQNConfig

        config = (
            DRQNConfig()
            .environment("FlickeringAtari", env_config={"game": "Pong", "flicker_prob": 0.5})
            .training(update_mode="random", num_sequences_per_batch=32)
            .rl_module(model_config={"lstm_cell_size": 512, "max_seq_len": 10})
        )
        algo = config.build_algo()
    """

    def __init__(self, algo_class: type | None = None) -> None:
        super().__init__(algo_class=algo_class or DRQN)
        #: "random" (paper's default), "sequential" (whole episodes) or "stored" (R2D2).
        self.update_mode = "random"
        #: R2D2's value rescaling h(x) = sign(x)(sqrt(|x|+1)-1) + eps*x of the learned Q.
        self.value_rescaling = False
        self.value_rescaling_epsilon = 1e-3
        #: Sequences per learner update; the paper's minibatch is 32 sequences of 10 steps.
        self.num_sequences_per_batch = 32
        # The paper's head is one linear layer (no dueling); its optimizer clips gradients at
        # 10 (recurrent_solver.prototxt in the authors' code).
        self.dueling = False
        self.grad_clip = 10.0
        # DRQN's learner refuses non-finite gradients itself, with one fused norm
        # (rllib_drqn.learner.DRQNTorchLearner.apply_gradients). RLlib's flag then only skips
        # its own two isfinite passes over every gradient tensor (TorchLearner.apply_gradients
        # in ray/rllib/core/learner/torch/torch_learner.py): ~30 ms of a Pong update on a CPU.
        self.torch_skip_nan_gradients = True
        self.replay_buffer_config = {"type": _REPLAY_BUFFER_TYPE, "capacity": 50_000}
        # Defaults that learn small tasks out of the box (README, "Configuration"); the paper's
        # Atari settings are pinned in rllib_drqn.presets and the Atari tuned examples.
        # RLlib's DQN defaults (Adam 5e-4, one update per env step, epsilon over 10k steps)
        # reached a mean return of 0.47 of 1.0 on a Discrete memory task in 20k env steps.
        self.lr = 1e-3
        self.epsilon = [(0, 1.0), (5_000, 0.02)]
        #: 3-step targets inside each sequence (R2D2's n-step, 5 there): rewards reach the
        #: steps that earned them in a third of the updates.
        self.n_step = 3
        #: One update per 4 env steps (Nature DQN's interval): 4 steps per sample.
        self.rollout_fragment_length = 4
        #: The reported mean return follows the last 20 episodes, not RLlib's 100, so it
        #: tracks a run of a few hundred episodes instead of lagging by most of it.
        self.metrics_num_episodes_for_smoothing = 20

    @override(DQNConfig)
    def training(
        self,
        *,
        update_mode: str | None = NotProvided,
        num_sequences_per_batch: int | None = NotProvided,
        value_rescaling: bool | None = NotProvided,
        value_rescaling_epsilon: float | None = NotProvided,
        **kwargs: Any,
    ) -> DRQNConfig:
        """DQN's ``training()`` settings plus DRQN's.

        Args:
            update_mode: ``"random"``: zero initial state, random starts inside episodes (the
                paper's bootstrapped random updates). ``"sequential"``: whole episodes in
                consecutive ``max_seq_len`` chunks with the LSTM state carried between them.
                ``"stored"``: the state stored while acting, with optional ``burn_in_len``
                (R2D2).
            num_sequences_per_batch: Sequences per update. The train batch in timesteps is
                this times ``max_seq_len``; do not set ``train_batch_size_per_learner``.
            value_rescaling: Learn Q in R2D2's rescaled space h(x) (Pohlen et al. 2018).
            value_rescaling_epsilon: The eps of h(x); RLlib's former R2D2 used 1e-3.
            **kwargs: Any ``DQNConfig.training()`` argument. ``n_step > 1`` gives n-step
                targets computed inside each sequence (R2D2), not by the replay.
        """
        super().training(**kwargs)
        if update_mode is not NotProvided:
            self.update_mode = update_mode
        if num_sequences_per_batch is not NotProvided:
            self.num_sequences_per_batch = num_sequences_per_batch
        if value_rescaling is not NotProvided:
            self.value_rescaling = value_rescaling
        if value_rescaling_epsilon is not NotProvided:
            self.value_rescaling_epsilon = value_rescaling_epsilon
        return self

    @override(DQNConfig)
    def get_rollout_fragment_length(self, worker_index: int = 0) -> int:
        """``"auto"`` means 1 step: n-step returns are computed inside sequences, by the learner.

        RLlib's DQN sets ``"auto"`` to ``n_step`` because its replay builds n-step transitions
        from each sampled fragment; DRQN's sequences do not need that.
        """
        if self.rollout_fragment_length == "auto":
            return 1
        return self.rollout_fragment_length

    @property
    def max_seq_len(self) -> int:
        return self.model_config.get("max_seq_len", DRQN_MODEL_DEFAULTS["max_seq_len"])

    @property
    def train_batch_size_per_learner(self) -> int:
        """Timesteps per learner update: ``num_sequences_per_batch * max_seq_len``."""
        return self.num_sequences_per_batch * self.max_seq_len

    @train_batch_size_per_learner.setter
    def train_batch_size_per_learner(self, value: int) -> None:
        self._train_batch_size_per_learner = value

    @property
    @override(DQNConfig)
    def _model_config_auto_includes(self) -> dict[str, Any]:
        # Lowest precedence: the user's `model_config` overrides max_seq_len.
        return super()._model_config_auto_includes | {
            "max_seq_len": DRQN_MODEL_DEFAULTS["max_seq_len"],
            "burn_in_len": self.burn_in_len,
        }

    @override(DQNConfig)
    def build_env_to_module_connector(
        self, env: Any = None, spaces: Any = None, device: Any = None
    ) -> Any:
        """RLlib's pipeline, plus the previous action and reward for modules that read them."""
        pipeline = super().build_env_to_module_connector(env=env, spaces=spaces, device=device)
        add_prev_inputs_piece(pipeline)
        return pipeline

    @override(DQNConfig)
    def get_default_rl_module_spec(self) -> RLModuleSpec:
        return RLModuleSpec(module_class=DRQNTorchRLModule)

    @override(DQNConfig)
    def get_default_learner_class(self) -> type:
        return DRQNTorchLearner

    @override(DQNConfig)
    def validate(self) -> None:
        """Rejects bad settings here, in the driver, before any env runner or learner starts."""
        self._validate_drqn_settings()
        self._validate_module_settings()
        self._validate_env_settings()
        fragment = self.rollout_fragment_length
        if isinstance(fragment, int) and not isinstance(fragment, bool) and fragment >= 1:
            # DQNConfig.validate rejects rollout_fragment_length < n_step because RLlib's replay
            # builds n-step transitions from each sampled fragment (ray/rllib/algorithms/dqn/
            # dqn.py, DQNConfig.validate). DRQN computes n-step targets inside the replayed
            # sequences, so any fragment works: the base checks see "auto" (1 step for DRQN).
            self.rollout_fragment_length = "auto"
            try:
                super().validate()
            finally:
                self.rollout_fragment_length = fragment
        else:
            super().validate()

    def _validate_drqn_settings(self) -> None:
        if self.update_mode not in UPDATE_MODES:
            close = difflib.get_close_matches(str(self.update_mode), UPDATE_MODES, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"Unknown update_mode {self.update_mode!r}; use one of {list(UPDATE_MODES)}"
                f" in config.training(update_mode=...).{hint}"
            )
        _require_positive_int("num_sequences_per_batch", self.num_sequences_per_batch)
        if self._train_batch_size_per_learner not in (None, self.train_batch_size_per_learner):
            raise ValueError(
                "DRQN sizes batches in sequences: train_batch_size_per_learner="
                f"{self._train_batch_size_per_learner} cannot be set. Set "
                "config.training(num_sequences_per_batch=N) instead; the batch then holds "
                f"N * max_seq_len timesteps (now {self.num_sequences_per_batch} * "
                f"{self.max_seq_len})."
            )
        _require_positive_int("max_seq_len", self.max_seq_len)
        if not isinstance(self.burn_in_len, int) or self.burn_in_len < 0:
            raise ValueError(
                f"burn_in_len must be an int >= 0, got {self.burn_in_len!r}; "
                "set config.training(burn_in_len=0) to train on every step."
            )
        if self.burn_in_len >= self.max_seq_len:
            raise ValueError(
                f"burn_in_len={self.burn_in_len} must be smaller than max_seq_len="
                f"{self.max_seq_len}, or no step is left to train on. R2D2 uses burn_in_len=40 "
                "with max_seq_len=80."
            )
        if self.update_mode == "sequential" and self.burn_in_len > 0:
            raise ValueError(
                f"burn_in_len={self.burn_in_len} has no meaning with update_mode='sequential': "
                "each chunk already starts from the state its predecessor ended with. Set "
                "burn_in_len=0, or use update_mode='stored' or 'random' for burn-in."
            )
        if self.update_mode == "sequential" and (self.num_learners or 0) > 1:
            raise ValueError(
                f"update_mode='sequential' carries LSTM states inside one learner; got "
                f"num_learners={self.num_learners}. Set config.learners(num_learners=1) or use "
                "update_mode='random'."
            )
        if isinstance(self.n_step, bool) or not isinstance(self.n_step, int) or self.n_step < 1:
            raise ValueError(
                f"DRQN computes n-step targets inside each sequence and needs one int n_step "
                f">= 1; got n_step={self.n_step!r}. Set e.g. config.training(n_step=5) (R2D2) "
                "or n_step=1 (the paper)."
            )
        if self.value_rescaling and not 0 < self.value_rescaling_epsilon < 1:
            raise ValueError(
                f"value_rescaling_epsilon must be in (0, 1), got {self.value_rescaling_epsilon!r}"
                "; R2D2 uses 1e-3."
            )
        if self.num_atoms != 1 or self.noisy:
            raise ValueError(
                f"DRQN learns expected Q-values with epsilon-greedy exploration; got "
                f"num_atoms={self.num_atoms}, noisy={self.noisy}. Set "
                "config.training(num_atoms=1, noisy=False)."
            )
        buffer_type = self.replay_buffer_config.get("type")
        if buffer_type not in (*BUFFER_TYPES, *BUFFER_TYPES.values()):
            raise ValueError(
                f"DRQN samples sequences by update mode from its own replay buffers; got "
                f"replay_buffer_config type {buffer_type!r}. Set replay_buffer_config="
                f"{{'type': '{_REPLAY_BUFFER_TYPE}', 'capacity': ...}}, or for prioritized "
                f"replay {{'type': '{PRIORITIZED_REPLAY_BUFFER_TYPE}', 'alpha': 0.9, ...}}."
            )
        prioritized = buffer_type in (
            DRQNPrioritizedEpisodeReplayBuffer,
            PRIORITIZED_REPLAY_BUFFER_TYPE,
        )
        if prioritized and self.update_mode == "sequential":
            raise ValueError(
                "Prioritized replay draws sequences by priority, but update_mode='sequential' "
                "walks whole episodes in order. Use update_mode='random' or 'stored' with "
                f"{PRIORITIZED_REPLAY_BUFFER_TYPE}, or the plain {_REPLAY_BUFFER_TYPE}."
            )

    def _validate_module_settings(self) -> None:
        user_model_config = self._model_config
        if not isinstance(user_model_config, dict):
            raise TypeError(
                f"DRQN's model_config must be a dict of DRQN keys, got "
                f"{type(user_model_config).__name__}. Pass e.g. "
                "config.rl_module(model_config={'lstm_cell_size': 512, 'max_seq_len': 10})."
            )
        if "burn_in_len" in user_model_config:
            raise ValueError(
                "burn_in_len is a training setting, not a model_config key. Remove it from "
                "model_config and set config.training(burn_in_len=...)."
            )
        spec = self._rl_module_spec
        if isinstance(spec, RLModuleSpec):
            spec_config = spec.model_config or {}
            if "max_seq_len" in spec_config and spec_config["max_seq_len"] != self.max_seq_len:
                raise ValueError(
                    f"max_seq_len={spec_config['max_seq_len']} is set in the RLModuleSpec but "
                    "RLlib's DQN reads it only from the config-level model_config (it would "
                    "sample sequences of another length). Set it with "
                    "config.rl_module(model_config={'max_seq_len': ...})."
                )
            module_class = spec.module_class
            if module_class is not None and not _is_recurrent_module_class(
                module_class, self.model_config
            ):
                raise ValueError(
                    f"DRQN trains recurrent modules; {module_class.__name__} keeps no state. "
                    "Use rllib_drqn.DRQNTorchRLModule (the default) or a module whose "
                    "get_initial_state() returns the LSTM state; for a memory-less baseline "
                    "use RLlib's DQNConfig."
                )
        resolve_model_config(self.model_config)
        spaces = self._probe_spaces()
        is_drqn_module = not isinstance(spec, RLModuleSpec) or spec.module_class in (
            None,
            DRQNTorchRLModule,
        )
        if spaces is not None and is_drqn_module:
            module_config = dict(self.model_config)
            if isinstance(spec, RLModuleSpec):
                module_config.update(spec.model_config or {})
            check_spaces(*spaces, module_config)

    def _probe_spaces(self) -> tuple[gym.Space, gym.Space] | None:
        """The env's observation and action spaces, read in the driver; ``None`` if unknown.

        Set spaces win; FlickeringAtari's are known (uint8 frames, Discrete actions) and its
        config is checked on its own; other envs are built once, as RLlib's env runners build
        them (Tune's registry, then gymnasium), and closed. An env that fails to build here
        is left for RLlib to report as it would.
        """
        if self.observation_space is not None and self.action_space is not None:
            return self.observation_space, self.action_space
        if self.env == FLICKERING_ATARI or not isinstance(self.env, str):
            return None
        from ray.rllib.env.env_context import EnvContext
        from ray.tune.registry import ENV_CREATOR, _global_registry

        try:
            if _global_registry.contains(ENV_CREATOR, self.env):
                creator = _global_registry.get(ENV_CREATOR, self.env)
                env = creator(EnvContext(dict(self.env_config), worker_index=0))
            elif self.env in gym.registry:
                env = gym.make(self.env, **dict(self.env_config))
            else:
                return None
        except Exception:  # RLlib's env runner reports it, with its context.
            return None
        try:
            return env.observation_space, env.action_space
        finally:
            env.close()

    def _validate_env_settings(self) -> None:
        if self.env == FLICKERING_ATARI:
            validate_flickering_atari_config(dict(self.env_config))
        elif self.env == STATELESS_CARTPOLE:
            make_stateless_cartpole(dict(self.env_config)).close()  # cheap; checks the keys
        elif isinstance(self.env, str):
            require_known_env(self.env)


def _require_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")


def _is_recurrent_module_class(module_class: type, model_config: dict[str, Any]) -> bool:
    if issubclass(module_class, DRQNTorchRLModule):
        return True
    if issubclass(module_class, DefaultDQNTorchRLModule):
        return bool(model_config.get("use_lstm"))
    return module_class.get_initial_state is not RLModule.get_initial_state


def require_known_env(env_id: str) -> None:
    """Fails early, in the driver, for an env name that neither Tune nor gymnasium knows."""
    from ray.tune.registry import ENV_CREATOR, _global_registry

    if _global_registry.contains(ENV_CREATOR, env_id) or env_id in gym.registry:
        return
    if ":" in env_id or "." in env_id:
        return  # A "module:Class" or "package.module.Class" path that RLlib imports itself.
    known = [FLICKERING_ATARI, "StatelessCartPole", *gym.registry.keys()]
    close = difflib.get_close_matches(env_id, known, n=3)
    raise ValueError(
        f"Unknown env {env_id!r}. Register it with ray.tune.registry.register_env, use a "
        f"gymnasium id, or one of the plugin's envs ({FLICKERING_ATARI!r}, 'StatelessCartPole')."
        + (f" Close matches: {close}." if close else "")
    )


class DRQN(ReplayCheckpointing, DQN):
    """RLlib's DQN with DRQN's defaults and replay; registered with Tune as ``"DRQN"``."""

    @classmethod
    @override(DQN)
    def get_default_config(cls) -> DRQNConfig:
        return DRQNConfig()

    @override(DQN)
    def _create_local_replay_buffer_if_necessary(self, config: Any) -> Any:
        """Hands the update mode and seed to the buffer, which picks sequences by them."""
        buffer_config = dict(config["replay_buffer_config"])
        # RLlib's base method matches the type by substring, so it must be the import path.
        buffer_config["type"] = BUFFER_TYPES.get(buffer_config["type"], buffer_config["type"])
        buffer_config.setdefault("update_mode", self.config.update_mode)
        buffer_config.setdefault("seed", self.config.seed)
        return super()._create_local_replay_buffer_if_necessary(
            {"replay_buffer_config": buffer_config}
        )
