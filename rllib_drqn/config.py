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

from rllib_drqn.async_training import AsyncDRQNLoop, apply_runner_epsilons, check_runner_epsilon
from rllib_drqn.batching import add_prev_inputs_piece
from rllib_drqn.envs import (
    FLICKERING_ATARI,
    STATELESS_CARTPOLE,
    check_vectorize_mode,
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
from rllib_drqn.reporting import EpisodeReporting, EpisodeReportingConfig
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


class DRQNConfig(EpisodeReportingConfig, DQNConfig):
    """Configuration of a DRQN run: RLlib's ``DQNConfig`` plus the update mode.

    Reports ``env_runners/episode_return_window_mean`` (the mean return of the last
    ``episode_return_window`` episodes, 100 by default) beside RLlib's keys and writes every
    episode to ``episodes.csv``; see ``rllib_drqn.reporting`` and ``reporting()``.

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
        #: "stored" (R2D2's stored state), "random" (the paper's default: zero state) or
        #: "sequential" (whole episodes). Stored is the default because acting carries the
        #: state through episodes of hundreds of steps, which 10 steps from a zero state never
        #: train: with random updates StatelessCartPole missed 150 in 25k env steps at seed 2
        #: (best 138 at lr 3e-3), with stored state it reached 150 at seeds 0-2 (README,
        #: "Configuration"). ``presets.drqn_paper`` and the Atari YAMLs pin "random".
        self.update_mode = "stored"
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
        # lr 3e-3 (the StatelessCartPole tuned example's): at 1e-3 stored-state updates were
        # still below 130 at 25k env steps on StatelessCartPole seed 2.
        self.lr = 3e-3
        self.epsilon = [(0, 1.0), (5_000, 0.02)]
        #: 3-step targets inside each sequence (R2D2's n-step, 5 there): rewards reach the
        #: steps that earned them in a third of the updates.
        self.n_step = 3
        #: One update per 4 env steps (Nature DQN's interval): 4 steps per sample.
        self.rollout_fragment_length = 4
        #: RLlib's own env_runners/episode_return_mean: at most 20 (not 100) of the episodes
        #: that ended since the previous report. In Ray 2.60 it is no sliding window (its
        #: MeanStats is emptied at every report); the plugin's episode_return_window_mean is
        #: (rllib_drqn.reporting).
        self.metrics_num_episodes_for_smoothing = 20
        self._init_async_settings()

    def _init_async_settings(self) -> None:
        """Asynchronous training (R2D2 / Ape-X actors, ``rllib_drqn.async_training``)."""
        #: Remote env runners sample while the learner trains, at a held replay ratio.
        self.async_training = False
        #: Timesteps trained per env step sampled; None: what the sync loop would run at.
        self.replay_ratio = None
        #: Relative slack of the rate limiter (Acme's samples_per_insert_tolerance_rate).
        self.replay_ratio_tolerance = 0.1
        #: Learner updates between two weight broadcasts to the env runners.
        self.broadcast_interval = 1
        #: Ape-X exploration: runner i of N acts with base ** (1 + alpha * i / (N - 1)).
        self.per_runner_epsilon = False
        self.per_runner_epsilon_base = 0.4
        self.per_runner_epsilon_alpha = 7.0
        # Two sample requests per runner in flight, so a runner starts its next rollout while
        # the driver collects the last one. Only the async loop sends more than one.
        self.max_requests_in_flight_per_env_runner = 2

    @override(DQNConfig)
    def training(
        self,
        *,
        update_mode: str | None = NotProvided,
        num_sequences_per_batch: int | None = NotProvided,
        value_rescaling: bool | None = NotProvided,
        value_rescaling_epsilon: float | None = NotProvided,
        async_training: bool | None = NotProvided,
        replay_ratio: float | None = NotProvided,
        replay_ratio_tolerance: float | None = NotProvided,
        broadcast_interval: int | None = NotProvided,
        per_runner_epsilon: bool | None = NotProvided,
        per_runner_epsilon_base: float | None = NotProvided,
        per_runner_epsilon_alpha: float | None = NotProvided,
        **kwargs: Any,
    ) -> DRQNConfig:
        """DQN's ``training()`` settings plus DRQN's.

        Args:
            update_mode: ``"random"``: zero initial state, random starts inside episodes (the
                paper's bootstrapped random updates). ``"sequential"``: whole episodes in
                consecutive ``max_seq_len`` chunks with the LSTM state carried between them.
                ``"stored"`` (the default): the state stored while acting, with optional
                ``burn_in_len`` (R2D2).
            num_sequences_per_batch: Sequences per update. The train batch in timesteps is
                this times ``max_seq_len``; do not set ``train_batch_size_per_learner``.
            value_rescaling: Learn Q in R2D2's rescaled space h(x) (Pohlen et al. 2018).
            value_rescaling_epsilon: The eps of h(x); RLlib's former R2D2 used 1e-3.
            async_training: Remote env runners sample continuously while the learner
                trains (``rllib_drqn.async_training``); needs ``num_env_runners >= 1``.
            replay_ratio: Async only: timesteps trained per env step sampled, held by a rate
                limiter. Timesteps trained are RLlib's learner count,
                ``num_module_steps_trained``: every step of a replayed sequence but its
                padding (burn-in and n-step lookahead steps count). None: the synchronous
                loop's updates per env step on this config, so the async loop trains as much
                as the sync loop would.
            replay_ratio_tolerance: Async only: the limiter's slack, as Acme's tolerance
                rate: training may run ``tolerance * replay_ratio *
                num_steps_sampled_before_learning_starts`` timesteps ahead or behind.
            broadcast_interval: Async only: learner updates between weight broadcasts.
            per_runner_epsilon: Ape-X exploration: remote runner i of N acts with the fixed
                epsilon ``per_runner_epsilon_base ** (1 + per_runner_epsilon_alpha * i /
                (N - 1))`` instead of the ``epsilon`` schedule.
            per_runner_epsilon_base: Ape-X's 0.4.
            per_runner_epsilon_alpha: Ape-X's 7.
            **kwargs: Any ``DQNConfig.training()`` argument. ``n_step > 1`` gives n-step
                targets computed inside each sequence (R2D2), not by the replay: each
                sampled window holds ``max_seq_len`` trained steps and up to ``n_step - 1``
                lookahead steps after them, unrolled but without loss, so every trained
                step's target spans the full n steps unless its episode ends sooner.
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
        async_settings = {
            "async_training": async_training,
            "replay_ratio": replay_ratio,
            "replay_ratio_tolerance": replay_ratio_tolerance,
            "broadcast_interval": broadcast_interval,
            "per_runner_epsilon": per_runner_epsilon,
            "per_runner_epsilon_base": per_runner_epsilon_base,
            "per_runner_epsilon_alpha": per_runner_epsilon_alpha,
        }
        for name, value in async_settings.items():
            if value is not NotProvided:
                setattr(self, name, value)
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
        self._validate_async_settings()
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

    def _validate_async_settings(self) -> None:
        for name in ("async_training", "per_runner_epsilon"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}.")
        uses_runners = self.async_training or self.per_runner_epsilon
        # RLlib validates the evaluation config too (Algorithm.setup); its runners only
        # evaluate, and the training loop is the training config's.
        if uses_runners and not self.in_evaluation and (self.num_env_runners or 0) < 1:
            what = "async_training=True" if self.async_training else "per_runner_epsilon=True"
            raise ValueError(
                f"{what} needs remote env runners, got num_env_runners={self.num_env_runners}: "
                "with 0 the env is sampled in the learner's own process, so there is nothing "
                "to overlap with learning and no actor to give an epsilon. Set "
                "config.env_runners(num_env_runners=1) or more, or "
                "config.training(async_training=False, per_runner_epsilon=False)."
            )
        ratio = self.replay_ratio
        if ratio is not None and (
            isinstance(ratio, bool) or not isinstance(ratio, int | float) or not ratio > 0
        ):
            raise ValueError(
                f"replay_ratio (timesteps trained per env step sampled, as RLlib's "
                f"num_module_steps_trained counts them) must be a number > 0 or None, got "
                f"{ratio!r}. None trains as much as the synchronous loop would; 320 trains "
                f"one batch of {self.train_batch_size_per_learner} unpadded timesteps per "
                f"{self.train_batch_size_per_learner / 320:g} env steps."
            )
        tolerance = self.replay_ratio_tolerance
        if (
            isinstance(tolerance, bool)
            or not isinstance(tolerance, int | float)
            or not (0 < tolerance <= 1)
        ):
            raise ValueError(
                f"replay_ratio_tolerance must be in (0, 1], got {tolerance!r}; 0.1 lets "
                "training run 10% of the learning-starts budget ahead or behind."
            )
        _require_positive_int("broadcast_interval", self.broadcast_interval)
        base, alpha = self.per_runner_epsilon_base, self.per_runner_epsilon_alpha
        if not (isinstance(base, int | float) and 0 < base < 1):
            raise ValueError(
                f"per_runner_epsilon_base must be in (0, 1), got {base!r} (Ape-X: 0.4)."
            )
        if not (isinstance(alpha, int | float) and alpha >= 0):
            raise ValueError(f"per_runner_epsilon_alpha must be >= 0, got {alpha!r}; Ape-X: 7.")
        if self.async_training and self.max_requests_in_flight_per_env_runner < 1:
            raise ValueError(
                "async_training=True sends sample requests to every runner; "
                "max_requests_in_flight_per_env_runner="
                f"{self.max_requests_in_flight_per_env_runner} allows none. Set "
                "config.env_runners(max_requests_in_flight_per_env_runner=2)."
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
            check_vectorize_mode(self.env_config, self.gym_env_vectorize_mode)
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


class DRQN(EpisodeReporting, ReplayCheckpointing, DQN):
    """RLlib's DQN with DRQN's defaults and replay; registered with Tune as ``"DRQN"``."""

    @classmethod
    @override(DQN)
    def get_default_config(cls) -> DRQNConfig:
        return DRQNConfig()

    @override(DQN)
    def setup(self, config: Any) -> None:
        super().setup(config)
        #: The asynchronous loop, made at the first training step (after a restore, so its
        #: counts resume from the restored metrics); None while training synchronously.
        self._async_loop: AsyncDRQNLoop | None = None
        if self.config.per_runner_epsilon:
            check_runner_epsilon(self.env_runner_group)
            apply_runner_epsilons(self.env_runner_group, wait=True)

    @override(DQN)
    def training_step(self) -> None:
        """RLlib's DQN step, or with ``async_training`` the asynchronous one."""
        if not self.config.async_training:
            # EpisodeReporting.training_step: DQN's step, then the episodes' env steps.
            return super().training_step()
        if self._async_loop is None:
            self._async_loop = AsyncDRQNLoop(self)
        self._async_loop.training_step()
        self.note_episode_arrivals()

    @override(DQN)
    def restore_env_runners(self, env_runner_group: Any) -> list[int]:
        """RLlib's restore, or without blocking the learner when training asynchronously."""
        if env_runner_group is not self.env_runner_group:
            return super().restore_env_runners(env_runner_group)  # Evaluation runners.
        if self.config.async_training:
            if self._async_loop is None:
                self._async_loop = AsyncDRQNLoop(self)
            return self._async_loop.restore_env_runners(env_runner_group)
        restored = super().restore_env_runners(env_runner_group)
        if restored and self.config.per_runner_epsilon:
            apply_runner_epsilons(env_runner_group, restored)
        return restored

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
