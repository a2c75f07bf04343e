"""FlickeringAtari as one vector env: ale-py's C++ ``AtariVectorEnv`` plus a per-env flicker.

``make_flickering_atari`` builds one gymnasium wrapper stack per env, and RLlib's default
``SyncVectorEnv`` steps them one after the other in Python. ale-py ships a vector env written
in C++ that steps all envs in its own threads and does the same preprocessing (frame skip,
max-pooling of the last two frames, 84x84 grayscale, no-op starts, sticky actions, reward
clipping, life loss) before Python sees a frame. This module puts DRQN's flicker on top of it
and hands RLlib frames shaped like the scalar env's.

Recipe (RLlib calls the env creator with ``num_envs`` only in ``"vector_entry_point"`` mode,
``ray/rllib/env/single_agent_env_runner.py``, ``SingleAgentEnvRunner.make_env``)::

    config = (
        DRQNConfig()
        .environment("FlickeringAtari", env_config={"game": "Pong", "flicker_prob": 0.5,
                                                     "vectorized": True})
        .env_runners(num_envs_per_env_runner=16, gym_env_vectorize_mode="vector_entry_point")
    )

Measured against the scalar stack on the same seeds (``tests/test_vector_env.py``): with
sticky actions and no-op starts off, frames, rewards, lives, terminations and truncations at
ALE's 108,000-frame cap are identical bit for bit, and so are the flicker masks. With them on,
the C++ env draws its own random numbers, so episodes are alike in distribution only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import gymnasium as gym
import numpy as np
from gymnasium.spaces import Box
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

__all__ = [
    "VECTOR_UNSUPPORTED",
    "FlickeringAtariVectorEnv",
    "flicker_generator",
    "unsupported_vector_settings",
]

#: Settings of the scalar env that ale-py's vector env cannot reproduce, each with the reason
#: (the error message quotes it). Checked by ``validate_flickering_atari_config`` on the
#: driver, so the user hears it before any env runner starts.
VECTOR_UNSUPPORTED: Final[Mapping[str, str]] = {
    # AtariVectorEnv stacks frames in C++ (``stack_num``), before Python could flicker each
    # frame, and pads a new episode's stack with zeros where FrameStackObservation repeats the
    # reset frame. Either would change what the k-frame baseline sees.
    "frame_stack": "ale-py's vector env stacks frames in C++ before a frame could flicker on "
    "its own, and pads a new episode with zeros where the scalar env repeats the first frame",
    # The scalar env's max_episode_steps is gymnasium's TimeLimit, counted in agent steps
    # after the reset no-ops. AtariVectorEnv can only cap episodes in emulator frames
    # (``max_num_frames_per_episode``, which counts the no-ops), and measured here its last
    # frame at a cap that TimeLimit would place differs from the scalar env's.
    "max_episode_steps": "ale-py's vector env caps episodes in emulator frames including the "
    "reset no-ops, not in agent steps as gymnasium's TimeLimit does",
}


def unsupported_vector_settings(config: Mapping[str, Any]) -> list[str]:
    """The keys of a validated config that the vector env cannot express, with the reason."""
    problems = []
    if config["frame_stack"] != 1:
        problems.append(f"frame_stack={config['frame_stack']}: {VECTOR_UNSUPPORTED['frame_stack']}")
    if config["max_episode_steps"] is not None:
        problems.append(
            f"max_episode_steps={config['max_episode_steps']}: "
            f"{VECTOR_UNSUPPORTED['max_episode_steps']}"
        )
    return problems


def flicker_generator(seed: int | None) -> np.random.Generator:
    """The generator a scalar FlickeringAtari env reset with ``seed`` flickers with.

    :class:`~rllib_drqn.envs.FlickerObservation` draws from the wrapped env's
    ``np_random``, which ale-py's ``AtariEnv.seed_game`` derives from the reset seed
    (``SeedSequence(seed).generate_state(2)[0]``, ``ale_py/env.py``). Deriving it the same
    way gives env ``i`` of the vector env, reset with ``seed + i`` as gymnasium's
    ``SyncVectorEnv`` seeds its ``i``-th env, the very flicker mask of the scalar env.
    """
    if seed is None:
        return np.random.default_rng()
    np_seed = np.random.SeedSequence(seed).generate_state(n_words=2)[0]
    return seeding.np_random(int(np_seed))[0]


class FlickeringAtariVectorEnv(VectorEnv):
    """``num_envs`` flickering Atari games stepped by ale-py's C++ ``AtariVectorEnv``.

    Observations are ``uint8 (num_envs, size, size, 1)``, channels last like the scalar env's
    (the C++ env gives ``(num_envs, 1, size, size)``; with one channel the reshape is exact and
    copies nothing). Each env's frame is blanked with probability ``flicker_prob`` by a coin
    from that env's own generator (:func:`flicker_generator`), the convention of
    :class:`~rllib_drqn.envs.FlickerObservation`: one coin per frame, reset frames included,
    blank when ``random() < flicker_prob``. Episodes reset themselves on the step after they
    end (gymnasium's ``NEXT_STEP`` autoreset), which is what RLlib's env runner expects.

    Build it through ``make_flickering_atari`` (the env config is validated there).

    Args:
        config: A config returned by ``validate_flickering_atari_config``.
        num_envs: Number of games.
    """

    def __init__(self, config: Mapping[str, Any], num_envs: int) -> None:
        from ale_py.vector_env import AtariVectorEnv

        from rllib_drqn.envs import ALE_MAX_FRAMES_PER_EPISODE

        size = config["screen_size"]
        # The scalar env's defaults made explicit: AtariPreprocessing never presses FIRE at
        # reset and clips nothing itself; life loss ends an episode only when asked to.
        self.ale_env = AtariVectorEnv(
            game=gym.registry[config["game"]].kwargs["game"],
            num_envs=num_envs,
            num_threads=config["num_threads"],
            max_num_frames_per_episode=ALE_MAX_FRAMES_PER_EPISODE,
            repeat_action_probability=config["repeat_action_probability"],
            full_action_space=config["full_action_space"],
            autoreset_mode=AutoresetMode.NEXT_STEP,
            img_height=size,
            img_width=size,
            grayscale=True,
            stack_num=1,
            frameskip=config["frame_skip"],
            maxpool=True,
            noop_max=config["noop_max"],
            episodic_life=config["terminal_on_life_loss"],
            reward_clipping=config["clip_rewards"],
            use_fire_reset=False,
        )
        self.num_envs = num_envs
        self.flicker_prob: float = config["flicker_prob"]
        self._flicker_rngs = [flicker_generator(None) for _ in range(num_envs)]
        self._frame_shape = (num_envs, size, size, 1)
        self.single_observation_space = Box(0, 255, (size, size, 1), np.uint8)
        self.single_action_space = self.ale_env.single_action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.metadata = {**self.metadata, "autoreset_mode": AutoresetMode.NEXT_STEP}

    def reset(
        self, *, seed: int | np.ndarray | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Resets the games; an int ``seed`` seeds game ``i`` (and its flicker) with ``seed + i``.

        ``options={"reset_mask": mask}`` resets only the games where ``mask`` is true, as
        ale-py's vector env does.
        """
        mask = None if options is None else options.get("reset_mask")
        indices = np.arange(self.num_envs) if mask is None else np.flatnonzero(mask)
        if seed is not None:
            seeds = np.arange(seed, seed + len(indices)) if isinstance(seed, int) else seed
            for index, env_seed in zip(indices, seeds, strict=True):
                self._flicker_rngs[index] = flicker_generator(int(env_seed))
        frames, infos = self.ale_env.reset(seed=seed, options=options)
        return self._observe(frames, indices), self._infos(infos)

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        frames, rewards, terminated, truncated, infos = self.ale_env.step(
            np.asarray(actions, dtype=np.int64).reshape(self.num_envs)
        )
        # float64 rewards, as SyncVectorEnv batches the scalar env's float rewards.
        return (
            self._observe(frames),
            rewards.astype(np.float64),
            terminated,
            truncated,
            self._infos(infos),
        )

    def close_extras(self, **kwargs: Any) -> None:
        self.ale_env.close()

    def _observe(self, frames: np.ndarray, indices: np.ndarray | None = None) -> np.ndarray:
        """Channels last, and one flicker coin per new frame (of ``indices``, or every env)."""
        # The C++ env returns a fresh array on every call (checked in the tests), so blanking
        # in place cannot reach a frame RLlib already holds.
        frames = frames.reshape(self._frame_shape)
        if self.flicker_prob > 0.0:
            indices = range(self.num_envs) if indices is None else indices
            rngs = self._flicker_rngs
            blank = [index for index in indices if rngs[index].random() < self.flicker_prob]
            frames[blank] = 0
        return frames

    @staticmethod
    def _infos(infos: dict[str, Any]) -> dict[str, Any]:
        # The scalar env's info keys; "env_id" is only np.arange(num_envs) here.
        return {key: value for key, value in infos.items() if key != "env_id"}
