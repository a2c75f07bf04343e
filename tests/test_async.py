"""The asynchronous loop (``async_training=True``): rate limiter, learning, learners, nodes, faults.

The multi-node and fault checks need a Ray cluster of their own, so they run
``tests/async_cluster_checks.py`` in a subprocess; the rest share the session's Ray instance.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from async_cluster_checks import small_async_config
from ray.rllib.utils.metrics import (
    ALL_MODULES,
    ENV_RUNNER_RESULTS,
    LEARNER_RESULTS,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    NUM_MODULE_STEPS_TRAINED_LIFETIME,
)

from rllib_drqn import DRQNConfig, presets
from rllib_drqn.async_training import ReplayRatioLimiter, apex_epsilon, sync_updates_per_env_step

CHECKS = Path(__file__).resolve().parent / "async_cluster_checks.py"
#: The return a memory-less DQN stays below on StatelessCartPole (tests/test_learning.py).
MEMORYLESS_BAR = 150.0


# ---- The rate limiter, alone -------------------------------------------------------------------


def test_limiter_holds_the_ratio_against_a_fast_producer_and_a_fast_consumer() -> None:
    limiter = ReplayRatioLimiter(replay_ratio=4.0, min_size_to_train=100, error_buffer=40)
    assert not limiter.can_train(8)  # Nothing in replay yet.
    while limiter.can_sample(0, 10):  # A producer that never waits: stopped by the limiter.
        limiter.record_sampled(10)
    assert limiter.env_steps_sampled == 110  # 100 to start, then 10 steps = 40 of buffer.
    while limiter.can_train(8):  # A learner that never waits: stopped too.
        limiter.record_trained(8)
    assert limiter.timesteps_trained == 80  # 4 * 10 + 40 of buffer.
    for _ in range(1000):  # Both sides as fast as they are allowed: the ratio converges.
        assert limiter.can_sample(0, 10) or limiter.can_train(8)  # Never both paused.
        if limiter.can_sample(0, 10):
            limiter.record_sampled(10)
        while limiter.can_train(8):
            limiter.record_trained(8)
    print("achieved", limiter.achieved_ratio, "after", limiter.env_steps_sampled)
    # Trained timesteps stay within the buffer of the target, so the ratio within buffer/steps.
    assert abs(limiter.achieved_ratio - 4.0) <= 40 / (limiter.env_steps_sampled - 100) + 1e-12


def test_limiter_counts_requests_in_flight_as_sampled() -> None:
    limiter = ReplayRatioLimiter(replay_ratio=1.0, min_size_to_train=0, error_buffer=5)
    assert limiter.can_sample(0, 4)
    assert not limiter.can_sample(4, 4)  # 8 steps in flight would put training 8 behind.
    assert math.isnan(limiter.achieved_ratio)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"replay_ratio": 0.0, "min_size_to_train": 0, "error_buffer": 1}, "replay_ratio"),
        ({"replay_ratio": 1.0, "min_size_to_train": 0, "error_buffer": -1}, "error_buffer"),
    ],
)
def test_limiter_rejects_bad_settings(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ReplayRatioLimiter(**kwargs)


def test_apex_epsilons_span_0_4_to_0_4_to_the_8th() -> None:
    epsilons = [apex_epsilon(i, 8) for i in range(8)]
    assert epsilons[0] == pytest.approx(0.4)
    assert epsilons[-1] == pytest.approx(0.4**8)
    assert epsilons == sorted(epsilons, reverse=True)
    assert apex_epsilon(0, 1) == pytest.approx(0.4)
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        apex_epsilon(2, 2)


def test_sync_updates_per_env_step_follow_rllibs_round_robin() -> None:
    # One remote runner, 2 steps per sample round, one update per round.
    config = small_async_config(num_env_runners=1).training(num_sequences_per_batch=32)
    config.rl_module(model_config={"max_seq_len": 20, "lstm_cell_size": 16})
    assert sync_updates_per_env_step(config) == pytest.approx(0.5)
    # Two runners sample 4 steps per round.
    config.env_runners(num_env_runners=2)
    assert sync_updates_per_env_step(config) == pytest.approx(0.25)
    # training_intensity=320 asks for 320 per env step; RLlib's calculate_rr_weights takes the
    # native ratio as 640 / (2 steps x (num_env_runners + 1) = 3), so the loop makes 3 updates
    # per round of 4 env steps: 480 padded timesteps per env step, what it really trains.
    config.training(training_intensity=320)
    assert sync_updates_per_env_step(config) == pytest.approx(0.75)


# ---- One unit: the timesteps RLlib's learner counts --------------------------------------------

#: 30-step windows over StatelessCartPole's short early episodes: half of a batch is padding,
#: so a limiter counting padded timesteps would train about half the set ratio.
PADDED_WINDOWS = {"lstm_cell_size": 16, "fcnet_hiddens": [16], "max_seq_len": 30}


def _achieved_ratio(config: Any, iterations: int = 5) -> tuple[float, dict[str, Any]]:
    """Timesteps trained per env step since learning started, from RLlib's own counters."""
    torch.set_num_threads(1)
    algo = config.build_algo()
    try:
        for _ in range(iterations):
            result = algo.train()
    finally:
        algo.stop()
    trained = result[LEARNER_RESULTS][ALL_MODULES][NUM_MODULE_STEPS_TRAINED_LIFETIME]
    since_start = (
        result[ENV_RUNNER_RESULTS][NUM_ENV_STEPS_SAMPLED_LIFETIME]
        - config.num_steps_sampled_before_learning_starts
    )
    return trained / since_start, result


@pytest.mark.usefixtures("ray_session")
def test_a_set_replay_ratio_is_held_in_rllibs_count_of_timesteps_trained() -> None:
    config = small_async_config(n_step=1, replay_ratio=40.0).rl_module(model_config=PADDED_WINDOWS)
    achieved, result = _achieved_ratio(config)
    limiter = result["rate_limiter"]
    print(f"achieved {achieved:.1f} per env step (limiter {limiter['replay_ratio']:.1f}), set 40")
    assert achieved == pytest.approx(40.0, rel=0.1)
    # The limiter counts exactly what RLlib's learner counted.
    assert (
        limiter["num_timesteps_trained_lifetime"]
        == (result[LEARNER_RESULTS][ALL_MODULES][NUM_MODULE_STEPS_TRAINED_LIFETIME])
    )


@pytest.mark.usefixtures("ray_session")
def test_replay_ratio_none_trains_as_much_as_the_sync_loop_on_the_same_config() -> None:
    """Both loops make one update per 2 env steps, so RLlib's counters agree.

    Each loop's batches are padded as its own episodes are: on ``PADDED_WINDOWS`` the two
    differ by 4-7% from their data alone, so this uses windows that little padding changes.
    """
    sync_ratio, _ = _achieved_ratio(small_async_config(async_training=False))
    async_ratio, result = _achieved_ratio(small_async_config(async_training=True))
    print(f"timesteps trained per env step: sync {sync_ratio:.1f}, async {async_ratio:.1f}")
    assert async_ratio == pytest.approx(sync_ratio, rel=0.1)
    assert result["rate_limiter"]["target_replay_ratio"] == pytest.approx(
        0.5 * result["rate_limiter"]["timesteps_per_update"]
    )


# ---- Bad settings, before any worker starts ----------------------------------------------------


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda c: c.env_runners(num_env_runners=0), r"async_training=True needs remote env"),
        (
            lambda c: c.env_runners(num_env_runners=0).training(
                async_training=False, per_runner_epsilon=True
            ),
            r"per_runner_epsilon=True needs remote env runners.*num_env_runners=0",
        ),
        (lambda c: c.training(async_training="yes"), r"async_training must be True or False"),
        (lambda c: c.training(replay_ratio=-2), r"replay_ratio .* must be a number > 0.*-2"),
        (lambda c: c.training(replay_ratio_tolerance=0), r"replay_ratio_tolerance.*\(0, 1\]"),
        (lambda c: c.training(broadcast_interval=0), r"broadcast_interval must be a positive"),
        (lambda c: c.training(per_runner_epsilon_base=1.5), r"per_runner_epsilon_base.*1.5"),
        (lambda c: c.training(per_runner_epsilon_alpha=-1), r"per_runner_epsilon_alpha.*-1"),
        (
            lambda c: c.env_runners(max_requests_in_flight_per_env_runner=0),
            r"max_requests_in_flight_per_env_runner=0",
        ),
    ],
)
def test_bad_async_settings_are_rejected_by_validate(change: Any, match: str) -> None:
    config = change(small_async_config(num_env_runners=1))
    with pytest.raises(ValueError, match=match):
        config.validate()


def test_r2d2_preset_trains_asynchronously_with_apex_epsilons() -> None:
    config = presets.r2d2()
    config.validate()
    assert config.async_training and config.per_runner_epsilon
    assert config.num_env_runners >= 2
    assert isinstance(config, DRQNConfig)


# ---- The loop, for real ------------------------------------------------------------------------


def _learner_weights(algo: Any) -> list[dict[str, np.ndarray]]:
    """Each learner's module weights (one dict per learner, local or remote)."""
    results = algo.learner_group.foreach_learner(
        lambda learner: {
            name: tensor.detach().cpu().numpy().copy()
            for name, tensor in learner.module["default_policy"].state_dict().items()
        }
    )
    return [result.get() for result in results]


def _train(
    config: Any, max_env_steps: int, target: float | None = None, algo: Any = None
) -> dict[str, Any]:
    algo = algo or config.build_algo()
    try:
        best, result = -math.inf, {}
        while True:
            result = algo.train()
            runners = result["env_runners"]
            window_mean = runners.get("episode_return_window_mean", math.nan)
            best = max(best, window_mean if math.isfinite(window_mean) else -math.inf)
            steps = runners["num_env_steps_sampled_lifetime"]
            if steps >= max_env_steps or (target is not None and best >= target):
                break
        return {"result": result, "best": best, "steps": steps, "weights": _learner_weights(algo)}
    finally:
        algo.stop()


@pytest.mark.learning
@pytest.mark.usefixtures("ray_session")
def test_async_loop_learns_stateless_cartpole_at_the_set_replay_ratio() -> None:
    """One remote runner, learner in the driver; beats the memory-less bar and holds the ratio."""
    torch.set_num_threads(1)
    config = (
        small_async_config(num_env_runners=1, replay_ratio=160.0, num_sequences_per_batch=16)
        .training(num_steps_sampled_before_learning_starts=500, target_network_update_freq=500)
        .rl_module(model_config={"lstm_cell_size": 64, "fcnet_hiddens": [64], "max_seq_len": 20})
        .training(burn_in_len=10, epsilon=[[0, 1.0], [5000, 0.02]])
    )
    run = _train(config, max_env_steps=15_000, target=MEMORYLESS_BAR)
    limiter = run["result"]["rate_limiter"]
    print(
        f"best mean return {run['best']:.1f} by {run['steps']:,.0f} env steps; replay ratio "
        f"{limiter['replay_ratio']:.1f} (target {limiter['target_replay_ratio']:.1f}, buffer "
        f"{limiter['error_buffer']:.0f} timesteps, {limiter['num_weight_broadcasts']:.0f} "
        "broadcasts)"
    )
    assert run["best"] >= MEMORYLESS_BAR
    assert limiter["target_replay_ratio"] == 160.0
    since_start = run["steps"] - 500
    slack = (limiter["error_buffer"] + 16 * 20) / (limiter["target_replay_ratio"] * since_start)
    assert abs(limiter["replay_ratio"] / 160.0 - 1.0) <= slack
    assert limiter["num_weight_broadcasts"] > 10


@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize("update_mode", ["random", "stored"])
def test_two_learners_train_in_the_async_loop_and_end_with_identical_weights(
    update_mode: str,
) -> None:
    torch.set_num_threads(1)
    config = small_async_config(
        num_env_runners=1,
        update_mode=update_mode,
        burn_in_len=4 if update_mode == "stored" else 0,
    ).learners(num_learners=2, num_cpus_per_learner=0.5)
    algo = config.build_algo()
    start_weights = _learner_weights(algo)
    assert len(start_weights) == 2
    run = _train(config, max_env_steps=600, algo=algo)
    first, second = run["weights"]
    print(
        f"{update_mode}: {run['steps']:.0f} env steps, "
        f"{run['result']['rate_limiter']['num_timesteps_trained_lifetime']:.0f} timesteps trained"
    )
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
    moved = sum(not np.array_equal(first[name], start_weights[0][name]) for name in first)
    assert moved > len(first) // 2, "the learners did not train"
    learner_results = run["result"]["learners"]["default_policy"]
    assert math.isfinite(learner_results["qf_loss"])


def test_sequential_updates_with_two_learners_keep_their_clear_error() -> None:
    config = small_async_config(num_env_runners=1, update_mode="sequential", burn_in_len=0)
    config.learners(num_learners=2)
    with pytest.raises(ValueError, match=r"sequential.*num_learners=2"):
        config.validate()


@pytest.mark.usefixtures("ray_session")
def test_per_runner_epsilons_reach_the_runners() -> None:
    config = small_async_config(num_env_runners=2, per_runner_epsilon=True)
    algo = config.build_algo()
    try:
        epsilons = algo.env_runner_group.foreach_env_runner(
            lambda runner: runner.module.epsilon_schedule.get_current_value(),
            local_env_runner=False,
        )
    finally:
        algo.stop()
    assert [float(e) for e in epsilons] == pytest.approx([0.4, 0.4**8])


# ---- Own clusters, in subprocesses -------------------------------------------------------------


def _run_check(name: str, timeout_s: int) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, str(CHECKS), name],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    assert completed.returncode == 0 and lines, completed.stderr[-3000:]
    outcome = json.loads(lines[-1].removeprefix("RESULT "))
    print(json.dumps(outcome, indent=1))
    return outcome


def test_env_runners_on_a_second_node_train_the_async_loop() -> None:
    outcome = _run_check("multi_node", timeout_s=240)
    assert len(outcome["alive_nodes"]) == 2
    runner_nodes = {runner["node_id"] for runner in outcome["runners"]}
    assert len(outcome["runners"]) == 2
    assert runner_nodes.isdisjoint({outcome["head_node_id"]}), "a runner ran on the head node"
    assert runner_nodes <= set(outcome["alive_nodes"])
    # Training progressed, and the runners on the other node got the learner's weights.
    assert outcome["env_steps"] >= 800
    assert outcome["timesteps_trained"] > 0
    assert all(runner["weights_seq_no"] > 0 for runner in outcome["runners"])


def test_a_killed_env_runner_is_replaced_while_the_survivor_and_learner_go_on() -> None:
    outcome = _run_check("runner_fault", timeout_s=300)
    down = outcome["while_down"]
    assert outcome["saw_runner_down"]
    assert outcome["restore_s"] is not None, "the killed runner never came back"
    # The survivor sampled and the learner trained while runner 1 was out of service.
    assert down["env_steps"] > 0
    assert down["timesteps_trained"] > 0
    # No step waited for the dead runner: each took a fraction of the restart time.
    assert max(outcome["slowest_steps_s_while_down"]) < outcome["restore_s"] / 4
    # Nothing delivered was lost: replay holds every env step collected, and never shrank.
    assert outcome["replay_sizes_never_shrink"]
    assert outcome["replay_timesteps"] == outcome["env_steps_collected"]
    # The replacement is back, with fresh weights and its Ape-X epsilon.
    assert outcome["num_healthy_after"] == 2
    before = {r["worker_index"]: r for r in outcome["before"]["runners"]}
    after = {r["worker_index"]: r for r in outcome["runners_after"]}
    assert after[1]["weights_seq_no"] > before[1]["weights_seq_no"]
    assert after[1]["epsilon"] == pytest.approx(0.4)
    assert after[2]["epsilon"] == pytest.approx(0.4**8)
