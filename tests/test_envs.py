"""Fast tests for rllib_drqn.envs: the flicker wrapper, FlickeringAtari and registration.

The flicker statistics run on a tiny constant env so that 10k frames take milliseconds; the
Atari tests build real ALE Pong envs (about 0.1 s each) and step them only a little.
"""

from __future__ import annotations

import doctest
import math
import re
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.spaces import Box, Discrete

from rllib_drqn import envs
from rllib_drqn.envs import (
    FLICKERING_ATARI,
    STATELESS_CARTPOLE,
    FlickerObservation,
    make_flickering_atari,
    make_stateless_cartpole,
    register_envs,
    validate_flickering_atari_config,
)

FRAME_SHAPE = (4, 4, 1)


class OnesEnv(gym.Env[np.ndarray, int]):
    """Emits an all-ones uint8 frame forever, so any zero frame was blanked by the wrapper."""

    def __init__(self, space: gym.Space[Any] | None = None) -> None:
        self.observation_space = space or Box(0, 255, FRAME_SHAPE, np.uint8)
        self.action_space = Discrete(2)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        return np.ones(FRAME_SHAPE, np.uint8), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        return np.ones(FRAME_SHAPE, np.uint8), 0.0, False, False, {}


def blank_mask(flicker_prob: float, seed: int, n: int) -> np.ndarray:
    """Returns which of the first ``n`` step observations came back blanked."""
    env = FlickerObservation(OnesEnv(), flicker_prob=flicker_prob)
    env.reset(seed=seed)
    return np.array([not env.step(0)[0].any() for _ in range(n)])


def rollout(env: gym.Env[np.ndarray, Any], seed: int, n: int) -> list[np.ndarray]:
    """Resets with ``seed`` and returns the reset obs plus ``n`` step obs under fixed actions."""
    obs, _ = env.reset(seed=seed)
    observations = [obs]
    for t in range(n):
        obs, _, terminated, truncated, _ = env.step(t % env.action_space.n)
        assert not (terminated or truncated)
        observations.append(obs)
    return observations


# --- FlickerObservation ---------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_blank_rate_matches_flicker_prob(p: float) -> None:
    n = 10_000
    rate = blank_mask(p, seed=0, n=n).mean()
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(rate - p) < 4 * sigma, f"blank rate {rate} too far from flicker_prob {p}"


def test_same_seed_gives_same_mask_and_other_seed_differs() -> None:
    first = blank_mask(0.5, seed=3, n=500)
    assert np.array_equal(first, blank_mask(0.5, seed=3, n=500))
    assert not np.array_equal(first, blank_mask(0.5, seed=4, n=500))


def test_flicker_does_not_use_global_numpy_random() -> None:
    np.random.seed(0)
    first = blank_mask(0.5, seed=3, n=200)
    np.random.seed(1)
    assert np.array_equal(first, blank_mask(0.5, seed=3, n=200))


def test_flicker_prob_zero_never_blanks_and_one_always_blanks() -> None:
    assert not blank_mask(0.0, seed=0, n=5_000).any()
    assert blank_mask(1.0, seed=0, n=5_000).all()
    # The reset observation goes through the wrapper too.
    obs, _ = FlickerObservation(OnesEnv(), flicker_prob=1.0).reset(seed=0)
    assert not obs.any()


def test_flicker_keeps_space_shape_and_dtype() -> None:
    base = OnesEnv()
    env = FlickerObservation(base, flicker_prob=1.0)
    assert env.observation_space == base.observation_space
    obs, _ = env.reset(seed=0)
    assert obs.shape == FRAME_SHAPE
    assert obs.dtype == np.uint8
    assert env.observation_space.contains(obs)


def test_flicker_rejects_non_box_space() -> None:
    with pytest.raises(TypeError, match=r"Box observation space, got Discrete\(3\)"):
        FlickerObservation(OnesEnv(Discrete(3)), flicker_prob=0.5)


def test_flicker_rejects_space_without_zero() -> None:
    with pytest.raises(ValueError, match="zero lies outside"):
        FlickerObservation(OnesEnv(Box(1, 255, FRAME_SHAPE, np.uint8)), flicker_prob=0.5)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.5", True, None])
def test_flicker_rejects_bad_prob(bad: Any) -> None:
    with pytest.raises(ValueError, match=re.escape(f"got {bad!r}")) as info:
        FlickerObservation(OnesEnv(), flicker_prob=bad)
    assert "Set flicker_prob" in str(info.value)


def test_flicker_records_constructor_args_in_spec() -> None:
    env = FlickerObservation(gym.make("CartPole-v1"), flicker_prob=0.25)
    assert env.spec is not None
    assert env.spec.additional_wrappers[-1].kwargs == {"flicker_prob": 0.25}


# --- FlickeringAtari ------------------------------------------------------------------------


def test_pong_observation_is_84x84x1_uint8() -> None:
    env = make_flickering_atari({"game": "Pong"})
    assert env.observation_space == Box(0, 255, (84, 84, 1), np.uint8)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (84, 84, 1)
    assert obs.dtype == np.uint8
    assert env.observation_space.contains(obs)
    assert obs.any(), "flicker_prob defaults to 0, so the screen must not be blank"


def test_frame_stack_is_channels_last_with_newest_frame_last() -> None:
    # Flicker is drawn per frame before stacking, so both envs see the same mask and the
    # stacked env's channels must be the single env's last k frames, oldest first.
    config = {"game": "Pong", "flicker_prob": 0.5}
    single = rollout(make_flickering_atari(config), seed=7, n=12)
    stacked_env = make_flickering_atari({**config, "frame_stack": 4})
    assert stacked_env.observation_space == Box(0, 255, (84, 84, 4), np.uint8)
    stacked = rollout(stacked_env, seed=7, n=12)
    for t in range(3, len(single)):
        assert stacked[t].shape == (84, 84, 4)
        assert stacked[t].dtype == np.uint8
        expected = np.concatenate(single[t - 3 : t + 1], axis=-1)
        np.testing.assert_array_equal(stacked[t], expected)
    blank = [not frame.any() for frame in single]
    assert any(blank) and not all(blank), "seed 7 should mix blank and visible frames"


def test_flicker_prob_one_blanks_every_atari_frame() -> None:
    env = make_flickering_atari({"game": "Pong", "flicker_prob": 1.0, "frame_stack": 2})
    for obs in rollout(env, seed=0, n=10):
        assert obs.shape == (84, 84, 2)
        assert not obs.any()


@pytest.mark.parametrize("game", ["Pong", "pong", "ALE/Pong-v5", "ale/pong-v5"])
def test_game_spellings_are_normalised(game: str) -> None:
    assert validate_flickering_atari_config({"game": game})["game"] == "ALE/Pong-v5"


def test_snake_case_game_is_normalised() -> None:
    config = validate_flickering_atari_config({"game": "space_invaders"})
    assert config["game"] == "ALE/SpaceInvaders-v5"


def test_make_accepts_every_pong_spelling() -> None:
    for game in ("Pong", "pong", "ALE/Pong-v5"):
        env = make_flickering_atari({"game": game})
        assert env.unwrapped.spec is not None
        assert env.unwrapped.spec.id == "ALE/Pong-v5"


def test_validate_fills_defaults_and_is_idempotent() -> None:
    config = validate_flickering_atari_config({"game": "pong", "flicker_prob": 1})
    assert config == {
        "game": "ALE/Pong-v5",
        "flicker_prob": 1.0,
        "frame_stack": 1,
        "clip_rewards": True,
        "frame_skip": 4,
        "screen_size": 84,
        "noop_max": 30,
        "terminal_on_life_loss": False,
        "repeat_action_probability": 0.25,
        "full_action_space": False,
        "max_episode_steps": None,
        "vectorized": False,
        "num_threads": 1,
        "num_envs": None,
    }
    assert isinstance(config["flicker_prob"], float)
    assert validate_flickering_atari_config(config) == config


def test_validate_builds_no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_make(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("validate_flickering_atari_config must not build an env")

    monkeypatch.setattr(gym, "make", no_make)
    validate_flickering_atari_config({"game": "Pong", "frame_stack": 4})


def test_clip_rewards_maps_rewards_to_their_sign() -> None:
    # Space Invaders pays 5-30 points per alien, so clipping is visible (Pong's are +-1).
    # Same seed and actions: the clipped run must be the sign of the raw run.
    def rewards(clip: bool) -> list[float]:
        env = make_flickering_atari({"game": "SpaceInvaders", "clip_rewards": clip})
        env.reset(seed=0)
        return [env.step(t % env.action_space.n)[1] for t in range(150)]

    raw, clipped = rewards(clip=False), rewards(clip=True)
    assert max(raw) > 1, "seed 0 should score an alien within 150 steps"
    assert set(clipped) <= {-1.0, 0.0, 1.0}
    assert clipped == [float(np.sign(r)) for r in raw]


def test_reset_with_seed_reproduces_flickering_episode() -> None:
    config = {"game": "Pong", "flicker_prob": 0.5}
    env = make_flickering_atari(config)
    first = rollout(env, seed=123, n=20)
    again = rollout(env, seed=123, n=20)
    fresh = rollout(make_flickering_atari(config), seed=123, n=20)
    for a, b, c in zip(first, again, fresh, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    blank = [not obs.any() for obs in first]
    assert any(blank) and not all(blank)


def test_max_episode_steps_counts_agent_steps() -> None:
    env = make_flickering_atari({"game": "Pong", "max_episode_steps": 5})
    env.reset(seed=0)
    truncated = [env.step(0)[3] for _ in range(5)]
    assert truncated == [False] * 4 + [True]


def test_env_context_is_read_as_a_dict() -> None:
    from ray.rllib.env.env_context import EnvContext

    context = EnvContext({"game": "Pong", "frame_stack": 2}, worker_index=3, num_workers=4)
    env = make_flickering_atari(context)
    assert env.observation_space.shape == (84, 84, 2)


def test_unknown_key_is_named_with_valid_keys_and_a_suggestion() -> None:
    with pytest.raises(ValueError, match="'flickr_prob'") as info:
        validate_flickering_atari_config({"game": "Pong", "flickr_prob": 0.5})
    message = str(info.value)
    assert "-> 'flicker_prob'" in message
    assert "Valid keys are" in message and "'frame_stack'" in message


def test_unknown_game_is_named_with_suggestion_and_listing_command() -> None:
    with pytest.raises(ValueError, match="'Pongg'") as info:
        make_flickering_atari({"game": "Pongg"})
    message = str(info.value)
    assert "Did you mean 'Pong'?" in message
    assert "gymnasium.registry" in message and "ALE/" in message


def test_legacy_game_id_points_to_v5() -> None:
    with pytest.raises(ValueError, match=r"'PongNoFrameskip-v4'.*Did you mean 'ALE/Pong-v5'"):
        validate_flickering_atari_config({"game": "PongNoFrameskip-v4"})


@pytest.mark.parametrize(
    ("key", "bad"),
    [
        ("frame_stack", 0),
        ("frame_stack", 1.5),
        ("frame_stack", "4"),
        ("frame_stack", True),
        ("flicker_prob", 2),
        ("flicker_prob", -0.1),
        ("flicker_prob", float("nan")),
        ("flicker_prob", "0.5"),
        ("frame_skip", 0),
        ("screen_size", 0),
        ("noop_max", -1),
        ("repeat_action_probability", 1.5),
        ("max_episode_steps", 0),
        ("clip_rewards", "yes"),
        ("terminal_on_life_loss", 1),
        ("full_action_space", None),
        ("game", 123),
    ],
)
def test_bad_values_are_rejected_with_name_value_and_fix(key: str, bad: Any) -> None:
    with pytest.raises(ValueError, match=re.escape(f"{key} must be")) as info:
        validate_flickering_atari_config({"game": "Pong", key: bad})
    assert f"got {bad!r}" in str(info.value)


def test_missing_game_says_what_to_set() -> None:
    with pytest.raises(ValueError, match=r"no 'game'.*'game': 'Pong'"):
        validate_flickering_atari_config({"flicker_prob": 0.5})


def test_non_mapping_config_raises_type_error() -> None:
    with pytest.raises(TypeError, match=r"got 'Pong' \(str\)"):
        validate_flickering_atari_config("Pong")  # type: ignore[arg-type]


# --- StatelessCartPole and registration ------------------------------------------------------


def test_stateless_cartpole_observes_positions_only() -> None:
    env = make_stateless_cartpole({})
    assert env.observation_space.shape == (2,)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (2,)
    assert env.step(0)[0].shape == (2,)


def test_stateless_cartpole_can_flicker() -> None:
    env = make_stateless_cartpole({"flicker_prob": 1.0})
    assert isinstance(env, FlickerObservation)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (2,) and not obs.any()


def test_stateless_cartpole_rejects_unknown_key() -> None:
    with pytest.raises(ValueError, match=r"'game'.*Valid keys are \['flicker_prob'\]"):
        make_stateless_cartpole({"game": "Pong"})


def test_register_envs_is_idempotent_and_registers_both() -> None:
    from ray.tune.registry import ENV_CREATOR, _global_registry

    register_envs()
    register_envs()
    assert _global_registry.contains(ENV_CREATOR, FLICKERING_ATARI)
    assert _global_registry.contains(ENV_CREATOR, STATELESS_CARTPOLE)
    assert FLICKERING_ATARI == "FlickeringAtari"
    assert STATELESS_CARTPOLE == "StatelessCartPole"
    creator = _global_registry.get(ENV_CREATOR, FLICKERING_ATARI)
    assert creator({"game": "Pong"}).observation_space.shape == (84, 84, 1)


def test_docstring_examples_run() -> None:
    results = doctest.testmod(envs, optionflags=doctest.ELLIPSIS)
    assert results.attempted > 0
    assert results.failed == 0


def test_all_lists_the_public_api() -> None:
    public = {name for name in vars(envs) if not name.startswith("_")}
    assert set(envs.__all__) <= public
    assert {
        "FlickerObservation",
        "make_flickering_atari",
        "validate_flickering_atari_config",
        "make_stateless_cartpole",
        "register_envs",
        "FLICKERING_ATARI",
    } <= set(envs.__all__)
