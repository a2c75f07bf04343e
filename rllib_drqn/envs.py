"""Partially observable environments for DRQN: Flickering Atari and StatelessCartPole.

Hausknecht & Stone (2015), "Deep Recurrent Q-Learning for Partially Observable MDPs"
(https://arxiv.org/abs/1507.06527), make Atari partially observable by blanking the whole
screen with probability ``p`` ("flickering"), so that a single frame no longer reveals the
game state and the agent has to integrate information over time. This module provides that
wrapper, an env factory that builds the whole preprocessing stack for RLlib, and a
registration helper.

Recipe (validate the config *before* any Ray worker starts, then register and train)::

    from rllib_drqn.envs import (
        FLICKERING_ATARI,
        register_envs,
        validate_flickering_atari_config,
    )

    env_config = validate_flickering_atari_config({"game": "Pong", "flicker_prob": 0.5})
    register_envs()
    config = your_algorithm_config.environment(FLICKERING_ATARI, env_config=env_config)

Every observation of ``FlickeringAtari`` is ``uint8`` of shape ``(84, 84, k)``, channels last,
with ``k = frame_stack`` (1 for DRQN, 4 for the k-frame DQN baseline).
"""

from __future__ import annotations

import difflib
import numbers
import re
from collections.abc import Mapping
from typing import Any, Final

import ale_py
import gymnasium as gym
import numpy as np
from gymnasium.spaces import Box
from gymnasium.wrappers import (
    AtariPreprocessing,
    FrameStackObservation,
    ReshapeObservation,
    TimeLimit,
    TransformObservation,
    TransformReward,
)

__all__ = [
    "ALE_MAX_FRAMES_PER_EPISODE",
    "DELAYED_RECALL",
    "FLICKERING_ATARI",
    "FLICKERING_GYM",
    "STATELESS_CARTPOLE",
    "DelayedRecall",
    "FlickerObservation",
    "check_vectorize_mode",
    "make_delayed_recall",
    "make_flickering_atari",
    "make_flickering_gym",
    "make_stateless_cartpole",
    "register_envs",
    "validate_flickering_atari_config",
]

# `gymnasium.make` only knows the "ALE/<Game>-v5" ids once ale-py's registration has run;
# register_envs makes that import explicit (and keeps linters from dropping it as unused).
gym.register_envs(ale_py)

FLICKERING_ATARI: Final[str] = "FlickeringAtari"
"""Name under which :func:`register_envs` registers :func:`make_flickering_atari` with Ray."""

STATELESS_CARTPOLE: Final[str] = "StatelessCartPole"
"""Name under which :func:`register_envs` registers :func:`make_stateless_cartpole` with Ray."""

# Defaults follow the DQN/DRQN Atari protocol (Mnih et al. 2015; Hausknecht & Stone 2015) on
# top of ALE v5's sticky actions (Machado et al. 2018, https://arxiv.org/abs/1709.06009).
_ATARI_DEFAULTS: Final[Mapping[str, Any]] = {
    "game": None,  # Required; no sensible default.
    "flicker_prob": 0.0,
    "frame_stack": 1,
    "clip_rewards": True,
    "frame_skip": 4,
    "screen_size": 84,
    "noop_max": 30,
    "terminal_on_life_loss": False,
    "repeat_action_probability": 0.25,
    "full_action_space": False,
    "max_episode_steps": None,
    # One C++ vector env per env runner instead of RLlib's SyncVectorEnv of wrapper stacks
    # (rllib_drqn/vector_atari.py); needs gym_env_vectorize_mode="vector_entry_point".
    "vectorized": False,
    # Threads of that vector env: 1, as RLlib reserves one CPU per env runner by default.
    "num_threads": 1,
    # Set by RLlib itself: SingleAgentEnvRunner.make_env calls the creator with
    # env_config | {"num_envs": N} in "vector_entry_point" mode, and only then.
    "num_envs": None,
}

#: ALE v5's cap on an episode, in emulator frames (no-ops included): 27,000 agent steps at
#: frame_skip 4. Both the scalar and the vector env are built with it, so they truncate alike.
ALE_MAX_FRAMES_PER_EPISODE: Final[int] = 108_000

_STATELESS_CARTPOLE_KEYS: Final[tuple[str, ...]] = ("flicker_prob",)

_LIST_GAMES_COMMAND: Final[str] = (
    'python -c "import gymnasium, ale_py; gymnasium.register_envs(ale_py); '
    "print([e for e in gymnasium.registry if e.startswith('ALE/')])\""
)

_FLICKER_PROB_FIX: Final[str] = (
    "Set flicker_prob to the probability of blanking a frame: 0.5 as in Hausknecht & Stone "
    "(2015), or 0.0 to disable flickering."
)

_ALE_V5_ID: Final[re.Pattern[str]] = re.compile(r"^ALE/(?P<name>[A-Za-z0-9]+)-v5$")
_LEGACY_ID: Final[re.Pattern[str]] = re.compile(r"^(?P<name>[A-Za-z0-9]+?)(?:NoFrameskip)?-v[04]$")


class FlickerObservation(
    gym.ObservationWrapper[np.ndarray, Any, np.ndarray], gym.utils.RecordConstructorArgs
):
    """Blanks the whole observation with probability ``flicker_prob`` ("flickering screen").

    This is the partial observability of Hausknecht & Stone (2015),
    https://arxiv.org/abs/1507.06527: each frame is either shown unchanged or replaced by
    zeros, independently, so a memory-less agent cannot tell "nothing is there" from "the
    screen flickered" and a recurrent agent must carry the state across frames. Apply it per
    frame, *before* any frame stacking, as PFRL's ``train_drqn_ale.py`` does; otherwise a
    whole stack would flicker at once.

    The coin is drawn from ``self.np_random`` (the wrapped env's generator), never from the
    global ``np.random``, so ``env.reset(seed=...)`` reproduces the flicker mask exactly.

    Example:
        >>> import gymnasium as gym
        >>> from rllib_drqn.envs import FlickerObservation
        >>> env = gym.make("CartPole-v1")
        >>> env.observation_space
        Box([-4.8...], [4.8...], (4,), float32)
        >>> env = FlickerObservation(env, flicker_prob=1.0)
        >>> env.observation_space  # Unchanged: a blank frame is a valid observation.
        Box([-4.8...], [4.8...], (4,), float32)
        >>> obs, _ = env.reset(seed=0)
        >>> obs
        array([0., 0., 0., 0.], dtype=float32)

    Args:
        env: The env to wrap. Its observation space must be a ``Box`` that contains zero, so
            that a blanked frame is still a valid observation.
        flicker_prob: Probability in ``[0, 1]`` of blanking each observation. ``0.0`` never
            blanks and ``1.0`` always blanks, exactly. The paper uses ``0.5``.

    Raises:
        TypeError: If the observation space is not a ``gymnasium.spaces.Box``.
        ValueError: If ``flicker_prob`` is not a real number in ``[0, 1]``, or if zero lies
            outside the observation space's bounds.
    """

    def __init__(self, env: gym.Env[np.ndarray, Any], flicker_prob: float = 0.5) -> None:
        flicker_prob = _check_probability("flicker_prob", flicker_prob, _FLICKER_PROB_FIX)
        gym.utils.RecordConstructorArgs.__init__(self, flicker_prob=flicker_prob)
        gym.ObservationWrapper.__init__(self, env)

        space = env.observation_space
        if not isinstance(space, Box):
            raise TypeError(
                f"FlickerObservation needs a gymnasium.spaces.Box observation space, got "
                f"{space!r} ({type(space).__name__}). Wrap a Box-valued env (an image or a "
                "vector), e.g. flatten the observation first with "
                "gymnasium.wrappers.FlattenObservation."
            )
        # A blank frame outside the space would break RLlib's and gymnasium's space checks
        # only later and far from here, so reject it now.
        if np.any(space.low > 0) or np.any(space.high < 0):
            raise ValueError(
                f"FlickerObservation blanks frames to zeros, but zero lies outside the "
                f"observation space {space!r}. Shift or rescale the observations so that "
                "low <= 0 <= high before wrapping."
            )
        self.flicker_prob: float = flicker_prob

    def observation(self, observation: np.ndarray) -> np.ndarray:
        """Returns zeros (same shape and dtype) with probability ``flicker_prob``.

        ``random()`` lies in ``[0, 1)``, so ``< flicker_prob`` is never true for 0 and always
        true for 1: the two ends are exact, not just very likely.
        """
        if self.np_random.random() < self.flicker_prob:
            return np.zeros_like(observation)
        return observation


def validate_flickering_atari_config(env_config: Mapping[str, Any]) -> dict[str, Any]:
    """Checks a ``FlickeringAtari`` env config and returns it normalised with all defaults.

    Call this on the driver before building the algorithm: a typo found here costs nothing,
    while the same typo found inside :func:`make_flickering_atari` surfaces only as a failed
    remote env runner. It creates no ALE env; the game is checked against
    ``gymnasium.registry``.

    Keys (all optional except ``game``):
        game: ``"Pong"``, ``"pong"``, ``"space_invaders"`` or a full id ``"ALE/Pong-v5"``;
            normalised to the ``"ALE/<Game>-v5"`` id.
        flicker_prob: Probability in ``[0, 1]`` of blanking each frame (default ``0.0``;
            the paper uses ``0.5``).
        frame_stack: Number ``k >= 1`` of frames stacked into the channels (default ``1``
            for DRQN; ``4`` for the DQN baseline).
        clip_rewards: Clip rewards to their sign, as in DQN (default ``True``).
        frame_skip: Emulator frames per agent step (default ``4``).
        screen_size: Side of the square grayscale frame (default ``84``).
        noop_max: Maximum random no-ops at reset (default ``30``).
        terminal_on_life_loss: End the episode when a life is lost (default ``False``).
        repeat_action_probability: Sticky-action probability (default ``0.25`` as in v5).
        full_action_space: Use all 18 actions instead of the game's minimal set
            (default ``False``).
        max_episode_steps: Truncate after this many *agent* steps (default ``None``: only
            ALE v5's own 108,000-frame limit, i.e. 27,000 steps at frame_skip 4).
        vectorized: Step all envs of an env runner in ale-py's C++ vector env
            (``rllib_drqn.vector_atari``) instead of RLlib's ``SyncVectorEnv`` of wrapper
            stacks (default ``False``). Set ``gym_env_vectorize_mode="vector_entry_point"``
            in ``config.env_runners`` with it. ``frame_stack > 1`` and
            ``max_episode_steps`` are rejected: that env cannot express them.
        num_threads: Threads of the vector env (default ``1``; ``0``: one per core).
        num_envs: Set by RLlib's env runner in ``"vector_entry_point"`` mode; leave it out.

    Args:
        env_config: A dict or RLlib ``EnvContext``; only its keys are read.

    Returns:
        A new dict holding every key above, with defaults filled in and ``game`` as a full
        ``"ALE/<Game>-v5"`` id. Passing it back in returns an equal dict.

    Raises:
        TypeError: If ``env_config`` is not a mapping.
        ValueError: If a key is unknown, ``game`` is missing or unknown, or a value has the
            wrong type or range. The message names the value and what to set instead.
    """
    if not isinstance(env_config, Mapping):
        raise TypeError(
            f"env_config must be a dict (or RLlib EnvContext), got {env_config!r} "
            f"({type(env_config).__name__}). Pass e.g. {{'game': 'Pong', 'flicker_prob': 0.5}}."
        )
    _reject_unknown_keys(env_config, tuple(_ATARI_DEFAULTS), FLICKERING_ATARI)
    config = {key: env_config.get(key, default) for key, default in _ATARI_DEFAULTS.items()}

    config["game"] = _normalise_game(config["game"])
    config["flicker_prob"] = _check_probability(
        "flicker_prob", config["flicker_prob"], _FLICKER_PROB_FIX
    )
    config["repeat_action_probability"] = _check_probability(
        "repeat_action_probability",
        config["repeat_action_probability"],
        "Set repeat_action_probability to 0.25 (ALE v5's sticky actions) or 0.0 to disable.",
    )
    config["frame_stack"] = _check_int(
        "frame_stack",
        config["frame_stack"],
        minimum=1,
        fix="Set frame_stack to 1 for DRQN (one frame per step) or 4 for the DQN baseline.",
    )
    config["frame_skip"] = _check_int(
        "frame_skip", config["frame_skip"], minimum=1, fix="Set frame_skip to 4 as in DQN."
    )
    config["screen_size"] = _check_int(
        "screen_size", config["screen_size"], minimum=1, fix="Set screen_size to 84 as in DQN."
    )
    config["noop_max"] = _check_int(
        "noop_max",
        config["noop_max"],
        minimum=0,
        fix="Set noop_max to 30 as in DQN, or 0 to disable the random no-ops at reset.",
    )
    if config["max_episode_steps"] is not None:
        config["max_episode_steps"] = _check_int(
            "max_episode_steps",
            config["max_episode_steps"],
            minimum=1,
            fix="Set max_episode_steps to a positive number of agent steps, or None to keep "
            "only ALE's 108,000-frame limit.",
        )
    for key in ("clip_rewards", "terminal_on_life_loss", "full_action_space", "vectorized"):
        config[key] = _check_bool(key, config[key])
    config["num_threads"] = _check_int(
        "num_threads",
        config["num_threads"],
        minimum=0,
        fix="Set num_threads to the vector env's threads per env runner (1, or 0 for one per "
        "core).",
    )
    if config["num_envs"] is not None:
        config["num_envs"] = _check_int(
            "num_envs",
            config["num_envs"],
            minimum=1,
            fix="Leave num_envs out: RLlib sets it from num_envs_per_env_runner.",
        )
    if config["vectorized"]:
        from rllib_drqn.vector_atari import unsupported_vector_settings

        problems = unsupported_vector_settings(config)
        if problems:
            raise ValueError(
                "FlickeringAtari with vectorized=True cannot express "
                + "; ".join(problems)
                + ". Drop these keys or set vectorized=False (the scalar env has them)."
            )
    return config


def check_vectorize_mode(env_config: Mapping[str, Any], gym_env_vectorize_mode: Any) -> None:
    """Raises if ``vectorized=True`` meets an env runner that would not use the vector env.

    In RLlib's default ``"sync"`` mode the creator is called once per env without
    ``num_envs`` (``SingleAgentEnvRunner.make_env``), so it has to build the scalar stack and
    ``vectorized`` would be ignored without a word. Call this on the driver with
    ``config.gym_env_vectorize_mode``.
    """
    mode = getattr(gym_env_vectorize_mode, "value", gym_env_vectorize_mode)
    if env_config.get("vectorized") and str(mode).lower() != "vector_entry_point":
        raise ValueError(
            f"FlickeringAtari env_config has vectorized=True, but gym_env_vectorize_mode is "
            f"{mode!r}: RLlib would then build one scalar env per sub-env and never the vector "
            "env. Set config.env_runners(gym_env_vectorize_mode='vector_entry_point'), or "
            "vectorized=False."
        )


def make_flickering_atari(env_config: Mapping[str, Any]) -> gym.Env[np.ndarray, Any]:
    """Builds a (flickering) Atari env whose observations are ``uint8 (84, 84, k)``.

    The wrapper stack reads top to bottom in the order data flows, as in CleanRL's
    ``dqn_atari.py``. Registered with Ray under :data:`FLICKERING_ATARI` by
    :func:`register_envs`; see :func:`validate_flickering_atari_config` for the keys.

    Rewards are clipped *before* RLlib sees them, so RLlib's episode returns are clipped
    returns when ``clip_rewards`` is on (identical to the score for Pong, whose rewards are
    already +-1).

    Example:
        >>> from rllib_drqn.envs import make_flickering_atari
        >>> env = make_flickering_atari({"game": "Pong", "flicker_prob": 0.5, "frame_stack": 4})
        >>> env.observation_space
        Box(0, 255, (84, 84, 4), uint8)
        >>> obs, _ = env.reset(seed=0)
        >>> obs.shape, obs.dtype
        ((84, 84, 4), dtype('uint8'))

    Args:
        env_config: A dict or RLlib ``EnvContext`` with at least ``game``.

    Returns:
        The wrapped env, or with ``num_envs`` set (RLlib's ``"vector_entry_point"`` mode)
        and ``vectorized=True`` a ``FlickeringAtariVectorEnv`` of ``num_envs`` games.
        ``env.observation_space`` is ``Box(0, 255, (size, size, k), uint8)``,
        channels last, newest frame in the last channel.

    Raises:
        TypeError: If ``env_config`` is not a mapping.
        ValueError: If ``env_config`` is invalid (see
            :func:`validate_flickering_atari_config`).
    """
    config = validate_flickering_atari_config(env_config)
    if config["num_envs"] is not None:
        return _make_vector_env(config)
    size, k = config["screen_size"], config["frame_stack"]

    # frameskip=1: AtariPreprocessing does the skipping (and max-pools the last two frames).
    env = gym.make(
        config["game"],
        frameskip=1,
        repeat_action_probability=config["repeat_action_probability"],
        full_action_space=config["full_action_space"],
        max_num_frames_per_episode=ALE_MAX_FRAMES_PER_EPISODE,
    )
    # -> (size, size) uint8 grayscale, one observation per `frame_skip` emulator frames.
    env = AtariPreprocessing(
        env,
        noop_max=config["noop_max"],
        frame_skip=config["frame_skip"],
        screen_size=size,
        terminal_on_life_loss=config["terminal_on_life_loss"],
        grayscale_obs=True,
        scale_obs=False,
    )
    if config["max_episode_steps"] is not None:
        # Counted in agent steps: wrapping the frameskip=1 ALE env instead would count frames.
        env = TimeLimit(env, max_episode_steps=config["max_episode_steps"])
    if config["clip_rewards"]:
        env = TransformReward(env, _reward_sign)
    if config["flicker_prob"] > 0.0:
        # Per frame, before stacking (as in PFRL), so each stacked frame flickers on its own.
        env = FlickerObservation(env, flicker_prob=config["flicker_prob"])
    if k > 1:
        # -> (k, size, size): FrameStackObservation stacks on a new leading axis.
        env = FrameStackObservation(env, stack_size=k)
        # -> (size, size, k). Gymnasium 1.x has no transpose wrapper (ReshapeObservation would
        # scramble pixels across frames), so move the axis with TransformObservation.
        stacked = env.observation_space
        env = TransformObservation(
            env,
            _stack_axis_to_channels_last,
            Box(
                low=_stack_axis_to_channels_last(stacked.low),
                high=_stack_axis_to_channels_last(stacked.high),
                dtype=stacked.dtype,
            ),
        )
    else:
        # -> (size, size, 1): one channel, so a plain reshape is exact.
        env = ReshapeObservation(env, (size, size, 1))
    return env


def _make_vector_env(config: dict[str, Any]) -> gym.vector.VectorEnv:
    """The vector entry point: RLlib asked for ``num_envs`` envs at once."""
    if not config["vectorized"]:
        # In this mode RLlib uses the creator's return value as the vector env itself, and
        # a single wrapper stack is not one.
        raise ValueError(
            f"FlickeringAtari was asked for {config['num_envs']} envs at once "
            "(gym_env_vectorize_mode='vector_entry_point'), but env_config has "
            "vectorized=False. Set env_config['vectorized']=True to use ale-py's vector env, "
            "or gym_env_vectorize_mode='sync' for one wrapper stack per env."
        )
    from rllib_drqn.vector_atari import FlickeringAtariVectorEnv

    return FlickeringAtariVectorEnv(config, num_envs=config["num_envs"])


def make_stateless_cartpole(
    env_config: Mapping[str, Any] | None = None,
) -> gym.Env[np.ndarray, Any]:
    """Builds RLlib's StatelessCartPole (positions only, no velocities), optionally flickering.

    Without velocities a single observation does not determine the state, so a memory-less
    agent stalls while a recurrent one can infer the velocities from consecutive frames. That
    makes it the quick sanity check for DRQN before spending hours on Atari.

    Args:
        env_config: A dict or RLlib ``EnvContext``. The only key allowed is ``flicker_prob``;
            when given, the env is wrapped in :class:`FlickerObservation`.

    Returns:
        The env; observations are ``float32`` of shape ``(2,)`` (cart position, pole angle).

    Raises:
        TypeError: If ``env_config`` is not a mapping.
        ValueError: If ``env_config`` has a key other than ``flicker_prob`` or an invalid
            ``flicker_prob``.
    """
    # Imported here: `ray.rllib` takes seconds to import, and the Atari half of this module
    # (and its tests) should not pay for it.
    from ray.rllib.examples.envs.classes.stateless_cartpole import StatelessCartPole

    env_config = {} if env_config is None else env_config
    if not isinstance(env_config, Mapping):
        raise TypeError(
            f"env_config must be a dict (or RLlib EnvContext), got {env_config!r} "
            f"({type(env_config).__name__}). Pass {{}} or e.g. {{'flicker_prob': 0.5}}."
        )
    _reject_unknown_keys(env_config, _STATELESS_CARTPOLE_KEYS, STATELESS_CARTPOLE)
    env = StatelessCartPole(dict(env_config))
    if "flicker_prob" in env_config:
        env = FlickerObservation(env, flicker_prob=env_config["flicker_prob"])
    return env


# ---- DelayedRecall: a small memory task with Discrete observations ---------------------------

DELAYED_RECALL: Final[str] = "DelayedRecall"
"""Name under which :func:`register_envs` registers :func:`make_delayed_recall` with Ray."""

_DELAYED_RECALL_KEYS: Final[tuple[str, ...]] = ("num_cues", "delay")


class DelayedRecall(gym.Env[np.int64, np.int64]):
    """Remember a cue through ``delay`` blank steps, then name it: memory or chance.

    Step 0 shows one of ``num_cues`` cues (observations ``0 .. num_cues - 1``); the next
    ``delay`` steps show a blank (``num_cues``); the last step shows a query
    (``num_cues + 1``). The action taken at the query earns 1 if it names the cue and ends
    the episode; every other action earns 0 and does nothing. The answer therefore depends on
    the observation ``delay + 1`` steps back: a memory-less agent sees the same query whatever
    the cue and scores ``1 / num_cues`` on average, one with memory scores 1.

    Example::

        env = DelayedRecall(num_cues=2, delay=4)
        env.observation_space  # Discrete(4): cues 0-1, blank 2, query 3
        env.action_space  # Discrete(2): the cue named at the query
        obs, _ = env.reset(seed=0)  # a cue; then 4 blanks; then the query
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, num_cues: int = 2, delay: int = 4) -> None:
        self.num_cues = _check_int("num_cues", num_cues, 2, "Set e.g. num_cues=2.")
        self.delay = _check_int("delay", delay, 0, "Set e.g. delay=4.")
        self.observation_space = gym.spaces.Discrete(self.num_cues + 2)
        self.action_space = gym.spaces.Discrete(self.num_cues)
        self._cue = 0
        self._t = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.int64, dict[str, Any]]:
        super().reset(seed=seed)
        self._cue = int(self.np_random.integers(self.num_cues))
        self._t = 0
        return np.int64(self._cue), {}

    def step(self, action: Any) -> tuple[np.int64, float, bool, bool, dict[str, Any]]:
        if not self.action_space.contains(action):
            raise ValueError(f"DelayedRecall got action {action!r}; expected {self.action_space}.")
        if self._t == self.delay + 1:  # The query step: answer and end.
            reward = float(int(action) == self._cue)
            return np.int64(self.num_cues + 1), reward, True, False, {}
        self._t += 1
        obs = self.num_cues + 1 if self._t == self.delay + 1 else self.num_cues
        return np.int64(obs), 0.0, False, False, {}


def make_delayed_recall(env_config: Mapping[str, Any] | None = None) -> DelayedRecall:
    """Builds :class:`DelayedRecall` from an env config (keys ``num_cues``, ``delay``)."""
    env_config = {} if env_config is None else env_config
    if not isinstance(env_config, Mapping):
        raise TypeError(
            f"env_config must be a dict (or RLlib EnvContext), got {env_config!r} "
            f"({type(env_config).__name__}). Pass {{}} or e.g. {{'num_cues': 2, 'delay': 4}}."
        )
    _reject_unknown_keys(env_config, _DELAYED_RECALL_KEYS, DELAYED_RECALL)
    return DelayedRecall(**dict(env_config))


# ---- FlickeringGym: any Box-observation gymnasium env, flickered, optionally frame-stacked ----

FLICKERING_GYM: Final[str] = "FlickeringGym"
"""Name under which :func:`register_envs` registers :func:`make_flickering_gym` with Ray."""

_FLICKERING_GYM_DEFAULTS: Final[Mapping[str, Any]] = {
    "env_id": "CartPole-v1",
    "flicker_prob": 0.0,
    "frame_stack": 1,
}


def make_flickering_gym(env_config: Mapping[str, Any] | None = None) -> gym.Env[np.ndarray, Any]:
    """Builds ``gymnasium.make(env_id)`` -> :class:`FlickerObservation` -> last k observations.

    The paper's protocol on any vector task (``rllib reproduce``'s small scale): each
    observation is blanked with ``flicker_prob`` *before* stacking, so the k-frame baseline
    sees a stack in which each frame flickered on its own, as in Flickering Atari. With
    ``frame_stack`` k > 1 the stack is gymnasium's ``FrameStackObservation`` (the first frame
    repeated at a reset) flattened to one vector of k x the observation, which RLlib's MLP
    encoder takes.

    Args:
        env_config: Keys ``env_id`` (a gymnasium id with a ``Box`` observation; default
            ``"CartPole-v1"``), ``flicker_prob`` (default 0) and ``frame_stack`` (default 1).

    Raises:
        ValueError: For an unknown key or id, a non-Box observation, or a bad value.
    """
    env_config = {} if env_config is None else env_config
    if not isinstance(env_config, Mapping):
        raise TypeError(
            f"env_config must be a dict (or RLlib EnvContext), got {_describe(env_config)}. "
            "Pass e.g. {'env_id': 'CartPole-v1', 'flicker_prob': 0.5}."
        )
    _reject_unknown_keys(env_config, tuple(_FLICKERING_GYM_DEFAULTS), FLICKERING_GYM)
    config = {**_FLICKERING_GYM_DEFAULTS, **env_config}
    env_id = config["env_id"]
    if not isinstance(env_id, str) or env_id not in gym.registry:
        close = difflib.get_close_matches(str(env_id), list(gym.registry), n=3)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"Unknown gymnasium env id {_describe(env_id)} in the {FLICKERING_GYM} "
            f"env_config.{hint} Set env_id to a registered id such as 'CartPole-v1'."
        )
    frame_stack = _check_int("frame_stack", config["frame_stack"], 1, "Set e.g. frame_stack=4.")
    env = FlickerObservation(gym.make(env_id), flicker_prob=config["flicker_prob"])
    if frame_stack > 1:
        env = gym.wrappers.FlattenObservation(FrameStackObservation(env, frame_stack))
    return env


def register_envs() -> None:
    """Registers ``FlickeringAtari``, ``StatelessCartPole``, ``DelayedRecall``, ``FlickeringGym``.

    After this, ``AlgorithmConfig.environment("FlickeringAtari", env_config=...)`` works on
    every worker of the cluster. Safe to call any number of times: registering a name again
    just replaces its creator with the same function.
    """
    # Imported here so that building envs does not require importing Ray Tune.
    from ray.tune.registry import register_env

    register_env(FLICKERING_ATARI, make_flickering_atari)
    register_env(STATELESS_CARTPOLE, make_stateless_cartpole)
    register_env(DELAYED_RECALL, make_delayed_recall)
    register_env(FLICKERING_GYM, make_flickering_gym)


def _reward_sign(reward: Any) -> float:
    """Clips a reward to -1, 0 or +1 (DQN's reward clipping); module-level so it pickles."""
    return float(np.sign(reward))


def _stack_axis_to_channels_last(stack: np.ndarray) -> np.ndarray:
    """Moves the leading frame axis to the end: ``(k, H, W) -> (H, W, k)``.

    Returns a C-contiguous copy (a few KB) rather than a strided view, so that consumers such
    as ``torch.from_numpy`` and the replay buffer get a plain array.
    """
    return np.ascontiguousarray(np.moveaxis(stack, 0, -1))


def _reject_unknown_keys(env_config: Mapping[str, Any], valid: tuple[str, ...], env: str) -> None:
    """Raises on keys outside ``valid`` so a typo is not silently replaced by a default."""
    unknown = [key for key in env_config if key not in valid]
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), valid, n=1)
        if close:
            hints.append(f"{key!r} -> {close[0]!r}")
    hint = f" Did you mean: {', '.join(hints)}?" if hints else ""
    raise ValueError(
        f"Unknown {env} env_config key(s) {unknown}.{hint} Valid keys are {list(valid)}; "
        "remove or rename the others."
    )


def _ale_game_ids() -> dict[str, str]:
    """Maps every accepted spelling (lowercase, no ``_``/``-``) to its ``ALE/<Game>-v5`` id."""
    lookup = {}
    for env_id in gym.registry:
        match = _ALE_V5_ID.match(env_id)
        if match:
            lookup[env_id.lower()] = env_id
            lookup[match["name"].lower()] = env_id
    return lookup


def _normalise_game(game: Any) -> str:
    """Turns ``"Pong"``, ``"pong"``, ``"space_invaders"`` or ``"ALE/Pong-v5"`` into an id."""
    if game is None:
        raise ValueError(
            "The FlickeringAtari env_config has no 'game'. Set it, e.g. "
            f"env_config={{'game': 'Pong'}}; list the games with: {_LIST_GAMES_COMMAND}"
        )
    if not isinstance(game, str):
        raise ValueError(
            f"game must be a string such as 'Pong' or 'ALE/Pong-v5', got {game!r} "
            f"({type(game).__name__})."
        )
    lookup = _ale_game_ids()
    key = game.strip().lower()
    env_id = lookup.get(key) or lookup.get(re.sub(r"[\s_\-]", "", key))
    if env_id is not None:
        return env_id
    legacy = _LEGACY_ID.match(game.strip())
    if legacy and legacy["name"].lower() in lookup:
        # A v0/v4 id such as "PongNoFrameskip-v4": this factory does its own frame skipping
        # and sets sticky actions itself, so point at the v5 id and the v4 setting instead.
        hint = (
            f" Did you mean {lookup[legacy['name'].lower()]!r}? Only v5 ids are built here; "
            "set repeat_action_probability=0.0 to get v4's deterministic actions."
        )
    else:
        names = sorted({v.removeprefix("ALE/").removesuffix("-v5") for v in lookup.values()})
        by_lower = {name.lower(): name for name in names}
        close = difflib.get_close_matches(re.sub(r"[\s_\-]", "", key), list(by_lower), n=3)
        hint = f" Did you mean {' or '.join(repr(by_lower[c]) for c in close)}?" if close else ""
    raise ValueError(
        f"Unknown Atari game {game!r}.{hint} Set game to a name such as 'Pong' or a full id "
        f"such as 'ALE/Pong-v5'; list the valid ids with: {_LIST_GAMES_COMMAND}"
    )


def _describe(value: Any) -> str:
    """Formats a received value for an error message: its repr and its type."""
    return f"{value!r} ({type(value).__name__})"


def _check_probability(name: str, value: Any, fix: str) -> float:
    """Returns ``value`` as a float in ``[0, 1]``; rejects bools, strings, NaN and the rest."""
    is_real = isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)
    # `0 <= x <= 1` is False for NaN, so NaN fails here too.
    if not is_real or not (0.0 <= float(value) <= 1.0):
        raise ValueError(f"{name} must be a real number in [0, 1], got {_describe(value)}. {fix}")
    return float(value)


def _check_int(name: str, value: Any, minimum: int, fix: str) -> int:
    """Returns ``value`` as an int ``>= minimum``; rejects bools, floats and strings."""
    is_int = isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)
    if not is_int or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {_describe(value)}. {fix}")
    return int(value)


def _check_bool(name: str, value: Any) -> bool:
    """Returns ``value`` as a bool; rejects truthy strings like ``"no"``."""
    if not isinstance(value, bool | np.bool_):
        raise ValueError(
            f"{name} must be True or False, got {_describe(value)}. Set {name} to a boolean."
        )
    return bool(value)
