"""The vectorized FlickeringAtari (ale-py's C++ vector env) against the scalar wrapper stack.

The scalar reference is what RLlib builds by default: gymnasium's ``SyncVectorEnv`` over one
``make_flickering_atari`` stack per env, reset with the same seed. With sticky actions and
no-op starts off both sides are deterministic, so every frame, reward, life count, episode end
and flicker mask must match exactly; with them on, the two draw different random numbers.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

import rllib_drqn.envs
from rllib_drqn import DRQNConfig
from rllib_drqn.envs import (
    check_vectorize_mode,
    make_flickering_atari,
    validate_flickering_atari_config,
)
from rllib_drqn.vector_atari import FlickeringAtariVectorEnv

# Deterministic emulation, so that the scalar and the vector env can be compared frame by frame.
DETERMINISTIC = {"noop_max": 0, "repeat_action_probability": 0.0}


def make_pair(
    num_envs: int, **env_config: Any
) -> tuple[gym.vector.VectorEnv, gym.vector.VectorEnv]:
    config = {**DETERMINISTIC, **env_config}
    scalar = gym.vector.SyncVectorEnv([lambda: make_flickering_atari(config)] * num_envs)
    vector = make_flickering_atari({**config, "vectorized": True, "num_envs": num_envs})
    return scalar, vector


def run_side_by_side(
    scalar: gym.vector.VectorEnv, vector: gym.vector.VectorEnv, steps: int, seed: int = 0
) -> dict[str, int]:
    """Steps both with the same random actions; asserts they agree; counts what happened."""
    scalar_obs, scalar_info = scalar.reset(seed=seed)
    vector_obs, vector_info = vector.reset(seed=seed)
    np.testing.assert_array_equal(vector_obs, scalar_obs)
    np.testing.assert_array_equal(vector_info["lives"], scalar_info["lives"])
    actions_rng = np.random.default_rng(seed)
    seen = {"episode_ends": 0, "truncations": 0, "nonzero_rewards": 0, "blank_frames": 0}
    seen["reward_values"] = set()
    for step in range(steps):
        actions = actions_rng.integers(0, scalar.single_action_space.n, scalar.num_envs)
        s_obs, s_reward, s_term, s_trunc, s_info = scalar.step(actions)
        v_obs, v_reward, v_term, v_trunc, v_info = vector.step(actions)
        assert v_obs.dtype == s_obs.dtype == np.uint8
        np.testing.assert_array_equal(v_obs, s_obs, err_msg=f"frames differ at step {step}")
        np.testing.assert_array_equal(v_reward, s_reward, err_msg=f"rewards, step {step}")
        assert v_reward.dtype == s_reward.dtype
        np.testing.assert_array_equal(v_term, s_term, err_msg=f"terminations, step {step}")
        np.testing.assert_array_equal(v_trunc, s_trunc, err_msg=f"truncations, step {step}")
        np.testing.assert_array_equal(v_info["lives"], s_info["lives"])
        seen["episode_ends"] += int(np.sum(s_term | s_trunc))
        seen["truncations"] += int(np.sum(s_trunc))
        seen["nonzero_rewards"] += int(np.count_nonzero(s_reward))
        seen["reward_values"] |= set(np.unique(s_reward).tolist())
        seen["blank_frames"] += int(np.sum(~s_obs.any(axis=(1, 2, 3))))
    print(seen)
    return seen


def test_spaces_dtypes_and_info_keys_match_the_scalar_env() -> None:
    scalar, vector = make_pair(3, game="Pong", flicker_prob=0.5)
    assert isinstance(vector, FlickeringAtariVectorEnv)
    assert vector.single_observation_space == scalar.single_observation_space
    assert vector.single_observation_space == gym.spaces.Box(0, 255, (84, 84, 1), np.uint8)
    assert vector.observation_space == scalar.observation_space
    assert vector.single_action_space == scalar.single_action_space
    assert vector.action_space == scalar.action_space
    assert vector.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    _, scalar_info = scalar.reset(seed=0)
    _, vector_info = vector.reset(seed=0)
    scalar_keys = {key for key in scalar_info if not key.startswith("_") and key != "seeds"}
    assert set(vector_info) == scalar_keys == {"lives", "frame_number", "episode_frame_number"}


def test_flickering_pong_matches_frame_by_frame_with_the_same_flicker_masks() -> None:
    scalar, vector = make_pair(3, game="Pong", flicker_prob=0.5)
    seen = run_side_by_side(scalar, vector, steps=150, seed=7)
    # About half of 450 frames are blank; identical arrays mean identical masks.
    assert 150 < seen["blank_frames"] < 300


def test_episode_ends_and_autoreset_match_in_breakout() -> None:
    scalar, vector = make_pair(2, game="Breakout")
    seen = run_side_by_side(scalar, vector, steps=400)
    assert seen["episode_ends"] >= 2  # a random Breakout player loses 5 lives in ~180 steps


def test_life_loss_ends_the_episode_in_both_when_asked() -> None:
    scalar, vector = make_pair(2, game="Breakout", terminal_on_life_loss=True)
    seen = run_side_by_side(scalar, vector, steps=150)
    assert seen["episode_ends"] >= 5  # one per lost life (a whole game lasts ~180 steps)


def test_rewards_are_clipped_alike_and_unclipped_alike() -> None:
    scalar, vector = make_pair(2, game="SpaceInvaders", clip_rewards=True)
    clipped = run_side_by_side(scalar, vector, steps=250)
    assert clipped["nonzero_rewards"] > 0 and clipped["reward_values"] <= {-1.0, 0.0, 1.0}
    scalar, vector = make_pair(2, game="SpaceInvaders", clip_rewards=False)
    raw = run_side_by_side(scalar, vector, steps=250)
    assert max(raw["reward_values"]) >= 5.0  # Space Invaders pays 5-30 points per alien


def test_truncation_at_ales_frame_cap_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    # Both envs read the cap from this one constant; 200 frames = 50 agent steps at skip 4.
    monkeypatch.setattr(rllib_drqn.envs, "ALE_MAX_FRAMES_PER_EPISODE", 200)
    scalar, vector = make_pair(2, game="Pong")
    seen = run_side_by_side(scalar, vector, steps=110)
    assert seen["truncations"] == 4  # steps 50 and 101 (the reset step counts in between)


def test_sticky_actions_and_noops_are_on_by_default_and_reset_is_seeded() -> None:
    config = {"game": "Pong", "flicker_prob": 0.5, "vectorized": True, "num_envs": 2}
    first, second = make_flickering_atari(config), make_flickering_atari(config)
    frames = []
    for env in (first, second):
        obs, _ = env.reset(seed=3)
        steps = [env.step(np.array([2, 3]))[0] for _ in range(60)]
        frames.append(np.stack([obs, *steps]))
    np.testing.assert_array_equal(frames[0], frames[1])  # the same seed, the same episode


def test_each_step_returns_a_fresh_frame_array() -> None:
    """RLlib keeps references to earlier frames; blanking in place must not reach them."""
    _, vector = make_pair(2, game="Pong", flicker_prob=1.0)
    previous, _ = vector.reset(seed=0)
    for _ in range(5):
        current = vector.step(np.zeros(2, dtype=np.int64))[0]
        assert not np.shares_memory(previous, current)
        previous = current


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"frame_stack": 4}, r"frame_stack=4: ale-py's vector env stacks frames in C\+\+"),
        ({"max_episode_steps": 100}, r"max_episode_steps=100: .*emulator frames"),
        ({"num_threads": -1}, r"num_threads must be an integer >= 0, got -1"),
        ({"vectorized": "yes"}, r"vectorized must be True or False, got 'yes'"),
        ({"num_envs": 0}, r"num_envs must be an integer >= 1, got 0 .*Leave num_envs out"),
    ],
)
def test_settings_the_vector_env_cannot_express_are_rejected(
    extra: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        validate_flickering_atari_config({"game": "Pong", "vectorized": True, **extra})


def test_the_scalar_env_keeps_those_settings() -> None:
    config = validate_flickering_atari_config({"game": "Pong", "frame_stack": 4})
    assert config["vectorized"] is False
    # A vectorized config still builds the scalar stack where RLlib asks for one env
    # (evaluation, "sync" mode).
    env = make_flickering_atari({"game": "Pong", "vectorized": True})
    assert env.observation_space.shape == (84, 84, 1) and not isinstance(env, gym.vector.VectorEnv)


def test_vector_entry_point_without_vectorized_says_what_to_set() -> None:
    with pytest.raises(ValueError, match=r"asked for 4 envs at once.*vectorized=False"):
        make_flickering_atari({"game": "Pong", "num_envs": 4})


def test_vectorized_in_sync_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"gym_env_vectorize_mode is 'sync'.*vector_entry_point"):
        check_vectorize_mode({"game": "Pong", "vectorized": True}, "sync")
    check_vectorize_mode({"game": "Pong", "vectorized": True}, "vector_entry_point")
    check_vectorize_mode({"game": "Pong", "vectorized": True}, gym.VectorizeMode.VECTOR_ENTRY_POINT)
    check_vectorize_mode({"game": "Pong"}, "sync")


def test_config_validate_rejects_vectorized_in_sync_mode() -> None:
    """DRQNConfig.validate runs the check in the driver, before any env runner starts."""
    config = DRQNConfig().environment(
        "FlickeringAtari", env_config={"game": "Pong", "vectorized": True}
    )
    with pytest.raises(ValueError, match=r"gym_env_vectorize_mode is 'sync'"):
        config.validate()


# ---- One batched forward per step, one LSTM state per env ---------------------------------


def small_vectorized_config(game: str, num_envs: int, **env_config: Any) -> DRQNConfig:
    return (
        DRQNConfig()
        .environment(
            "FlickeringAtari",
            env_config={"game": game, "vectorized": True, **DETERMINISTIC, **env_config},
        )
        .env_runners(
            num_env_runners=0,
            num_envs_per_env_runner=num_envs,
            gym_env_vectorize_mode="vector_entry_point",
        )
        .rl_module(
            model_config={
                "conv_filters": [[8, 8, 4], [8, 4, 2]],
                "lstm_cell_size": 16,
                "max_seq_len": 4,
            }
        )
        .debugging(seed=0)
    )


def test_the_module_runs_once_per_step_over_all_envs_and_resets_only_ended_states() -> None:
    num_envs = 4
    config = small_vectorized_config("Breakout", num_envs, terminal_on_life_loss=True)
    runner = SingleAgentEnvRunner(config=config)
    assert isinstance(runner.env.unwrapped, FlickeringAtariVectorEnv)
    module = runner.module
    calls: list[dict[str, torch.Tensor]] = []
    forward = module._forward_exploration

    def recording_forward(batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        out = forward(batch, **kwargs)
        calls.append(
            {
                "batch": batch[Columns.OBS].shape[0],
                "state_in": batch[Columns.STATE_IN]["h"].clone(),
                "state_out": out[Columns.STATE_OUT]["h"].clone(),
            }
        )
        return out

    ends: list[np.ndarray] = []
    env_step = runner.env.step

    def recording_step(actions: Any) -> Any:
        result = env_step(actions)
        ends.append(np.asarray(result[2]) | np.asarray(result[3]))
        return result

    module._forward_exploration = recording_forward
    runner.env.step = recording_step
    runner.sample(num_timesteps=num_envs * 80, random_actions=False)

    assert len(calls) == len(ends) > 80  # one forward per vector step
    assert all(call["batch"] == num_envs for call in calls)
    assert calls[0]["state_in"].shape == (num_envs, 16)
    assert not calls[0]["state_in"].any()  # every episode starts from the zero state
    resets = carried = 0
    for step in range(1, len(calls)):
        # Env i's episode ended at step - 2; step - 1 was its reset step; now it starts afresh.
        restarted = ends[step - 2] if step >= 2 else np.zeros(num_envs, dtype=bool)
        for env in range(num_envs):
            state_in = calls[step]["state_in"][env]
            if restarted[env]:
                assert not state_in.any(), (step, env)
                resets += 1
            else:
                torch.testing.assert_close(state_in, calls[step - 1]["state_out"][env])
                carried += 1
    # Episodes ended while the other envs played on: some states reset, most carried over.
    mixed = [step for step in range(len(ends)) if 0 < ends[step].sum() < num_envs]
    print(f"{resets} states reset, {carried} carried, {len(mixed)} steps with mixed ends")
    assert resets >= 4 and mixed and carried > resets
    runner.stop()


@pytest.mark.usefixtures("ray_session")
def test_flickering_pong_trains_on_the_vectorized_env() -> None:
    """Smoke run: two iterations on the C++ vector env, learner updates included."""
    config = (
        small_vectorized_config("Pong", 4, flicker_prob=0.5)
        .environment(env_config={"game": "Pong", "flicker_prob": 0.5, "vectorized": True})
        .env_runners(rollout_fragment_length=25)
        .training(num_sequences_per_batch=4, num_steps_sampled_before_learning_starts=100)
        .reporting(min_sample_timesteps_per_iteration=200)
    )
    algo = config.build_algo()
    try:
        assert isinstance(algo.env_runner.env.unwrapped, FlickeringAtariVectorEnv)
        results = [algo.train() for _ in range(2)]
        learner = results[-1]["learners"]["default_policy"]
        steps = results[-1]["env_runners"]["num_env_steps_sampled_lifetime"]
        print("env steps:", steps, "qf_loss:", learner["qf_loss"])
        assert steps >= 400
        assert np.isfinite(learner["qf_loss"])
        assert learner["num_module_steps_trained"] > 0
        episode = algo.local_replay_buffer.episodes[0]
        assert episode.get_observations(0).dtype == np.uint8
    finally:
        algo.stop()


def test_vector_acting_bench_smoke_prints_every_row(tmp_path: Any) -> None:
    """``bench/throughput.py --vector-acting --smoke`` runs, prints its rows, writes JSON."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "vector_acting.json"
    completed = subprocess.run(
        [sys.executable, "bench/throughput.py", "--vector-acting", "--smoke", "--out", str(out)],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    print(completed.stdout)
    rows = json.loads(out.read_text())["acting"]["rows"]
    names = [(row["name"], row["num_envs"]) for row in rows]
    assert names[0][0].startswith("bare ALE")
    for path in ("ale-py AtariVectorEnv alone", "DRQN runner, SyncVectorEnv"):
        assert [n for name, n in names if name == path] == [1, 2]
    assert [n for name, n in names if name == "DRQN runner, vectorized"] == [1, 2]
    for row in rows:
        assert row["env_steps_per_s"] > 0 and row["env_steps_per_cpu_s"] > 0
        assert f"{row['name']:<10}"[:10] in completed.stdout
    for row in rows[3:]:
        assert row["module_ms"] > 0 and row["connectors_us_per_env"] > 0
