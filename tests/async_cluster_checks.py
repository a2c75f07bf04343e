"""Checks of the asynchronous loop that need a Ray cluster of their own; run as a subprocess.

``python tests/async_cluster_checks.py multi_node`` starts two raylets on loopback
(``ray.cluster_utils.Cluster``) and trains with the env runners on the second one;
``python tests/async_cluster_checks.py runner_fault`` kills an env runner mid-run. Each prints
one JSON line of what it saw, which ``tests/test_async.py`` checks; nothing is asserted here,
so a failure shows the numbers.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from typing import Any

import ray

#: Custom resource that only the non-head node of the multi-node cluster has.
RUNNER_NODE_RESOURCE = "drqn_runner_node"


def small_async_config(num_env_runners: int = 1, **training: Any) -> Any:
    """A StatelessCartPole DRQN config that trains within seconds, with the async loop."""
    from rllib_drqn import DRQNConfig

    settings: dict[str, Any] = {
        "lr": 3e-3,
        "update_mode": "stored",
        "burn_in_len": 4,
        "num_sequences_per_batch": 8,
        "n_step": 3,
        "num_steps_sampled_before_learning_starts": 200,
        "target_network_update_freq": 200,
        "epsilon": [[0, 1.0], [2000, 0.02]],
        "async_training": True,
        **training,
    }
    return (
        DRQNConfig()
        .environment("StatelessCartPole")
        .env_runners(
            num_env_runners=num_env_runners,
            rollout_fragment_length=2,
            num_cpus_per_env_runner=0.5,
        )
        .training(**settings)
        .rl_module(model_config={"lstm_cell_size": 16, "fcnet_hiddens": [16], "max_seq_len": 12})
        .reporting(
            min_sample_timesteps_per_iteration=200,
            min_time_s_per_iteration=0,
            metrics_num_episodes_for_smoothing=10,
            # The learning test's bar is a mean over the last 20 episodes, as the
            # StatelessCartPole tuned examples' (100 near 150 steps would be 15,000 env steps).
            episode_return_window=20,
        )
        .debugging(seed=0, log_level="ERROR")
    )


def _runner_info(algo: Any) -> list[dict[str, Any]]:
    """Per remote runner: its node, its weights version and its epsilon."""

    def info(env_runner: Any) -> dict[str, Any]:
        module = env_runner.module
        return {
            "worker_index": env_runner.worker_index,
            "node_id": ray.get_runtime_context().get_node_id(),
            "weights_seq_no": int(env_runner._weights_seq_no),
            "epsilon": float(module.epsilon_schedule.get_current_value()),
        }

    return algo.env_runner_group.foreach_env_runner(info, local_env_runner=False)


def multi_node() -> dict[str, Any]:
    """The async loop with its env runners on the non-head node of a two-raylet cluster."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False},
    )
    cluster.add_node(num_cpus=2, resources={RUNNER_NODE_RESOURCE: 2})
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        cluster.wait_for_nodes()
        head_node_id = ray.get_runtime_context().get_node_id()
        config = small_async_config(num_env_runners=2).env_runners(
            custom_resources_per_env_runner={RUNNER_NODE_RESOURCE: 1}
        )
        algo = config.build_algo()
        results = [algo.train() for _ in range(4)]
        runners = _runner_info(algo)
        algo.stop()
        nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
        return {
            "head_node_id": head_node_id,
            "alive_nodes": nodes,
            "runners": runners,
            "env_steps": results[-1]["env_runners"]["num_env_steps_sampled_lifetime"],
            "timesteps_trained": results[-1]["rate_limiter"]["num_timesteps_trained_lifetime"],
            "replay_ratio": results[-1]["rate_limiter"]["replay_ratio"],
            "target_replay_ratio": results[-1]["rate_limiter"]["target_replay_ratio"],
        }
    finally:
        ray.shutdown()
        cluster.shutdown()


def runner_fault() -> dict[str, Any]:
    """Kills env runner 1 mid-run; records what the loop did until Ray replaced it."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    config = small_async_config(num_env_runners=2, per_runner_epsilon=True).fault_tolerance(
        restart_failed_env_runners=True
    )
    algo = config.build_algo()
    step_seconds: list[float] = []
    train_step = algo.training_step

    def timed_training_step() -> None:
        start = time.perf_counter()
        train_step()
        step_seconds.append(time.perf_counter() - start)

    algo.training_step = timed_training_step  # type: ignore[method-assign]
    replay = algo.local_replay_buffer
    for _ in range(2):
        algo.train()
    before = {
        "replay_timesteps": replay.get_num_timesteps(),
        "updates_steps": len(step_seconds),
        "timesteps_trained": algo._async_loop.limiter.timesteps_trained,
        "runners": _runner_info(algo),
    }
    handles = algo.env_runner_group.foreach_env_runner(
        lambda env_runner: ray.get_runtime_context().current_actor,
        remote_worker_ids=[1],
        local_env_runner=False,
    )
    killed_at = time.perf_counter()
    ray.kill(handles[0], no_restart=False)
    # From now on, step by step: the loop must keep going while runner 1 is out.
    replay_sizes = [replay.get_num_timesteps()]
    while_down = {"env_steps": 0, "timesteps_trained": 0.0, "steps": 0}
    saw_down = False
    restored_at = None
    while time.perf_counter() - killed_at < 120:
        env_steps_before = algo._async_loop.limiter.env_steps_sampled
        trained_before = algo._async_loop.limiter.timesteps_trained
        restored = algo.restore_env_runners(algo.env_runner_group)
        algo.training_step()
        replay_sizes.append(replay.get_num_timesteps())
        healthy = algo.env_runner_group.num_healthy_remote_workers()
        if healthy < 2:
            saw_down = True
            while_down["env_steps"] += algo._async_loop.limiter.env_steps_sampled - env_steps_before
            while_down["timesteps_trained"] += (
                algo._async_loop.limiter.timesteps_trained - trained_before
            )
            while_down["steps"] += 1
        if saw_down and restored:
            restored_at = time.perf_counter()
            break
    # A few more steps so the restored runner samples again with the broadcast weights.
    steps_after = len(step_seconds)
    for _ in range(3):
        algo.train()
    after_runners = _runner_info(algo)
    result = {
        "before": before,
        "saw_runner_down": saw_down,
        "restore_s": None if restored_at is None else restored_at - killed_at,
        "while_down": while_down,
        "slowest_steps_s_while_down": sorted(step_seconds[before["updates_steps"] : steps_after])[
            -5:
        ],
        "replay_sizes_never_shrink": all(a <= b for a, b in itertools.pairwise(replay_sizes)),
        "replay_timesteps": replay.get_num_timesteps(),
        "env_steps_collected": algo._async_loop.limiter.env_steps_sampled,
        "runners_after": after_runners,
        "num_healthy_after": algo.env_runner_group.num_healthy_remote_workers(),
        "num_restored": algo._counters["total_num_restored_workers"],
    }
    algo.stop()
    ray.shutdown()
    return result


if __name__ == "__main__":
    checks = {"multi_node": multi_node, "runner_fault": runner_fault}
    outcome = checks[sys.argv[1]]()
    print("RESULT " + json.dumps(outcome, default=float), flush=True)
