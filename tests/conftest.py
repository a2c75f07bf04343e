"""Shared fixtures: one Ray instance per test session, and tiny configs built in one place."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import ray

#: A network small enough that an update costs milliseconds on one CPU thread.
TINY_MODEL: dict[str, Any] = {"lstm_cell_size": 8, "fcnet_hiddens": [8], "max_seq_len": 5}


def tiny_drqn_config(
    env: str = "StatelessCartPole",
    *,
    learning_starts: int = 100,
    steps_per_iteration: int = 150,
    seed: Any = 0,
) -> Any:
    """A local-runner DRQN config that trains for real in a second or two per iteration.

    Callers chain their own settings on top (``.reporting(...)``, ``.env_runners(...)``).
    """
    from rllib_drqn import DRQNConfig

    return (
        DRQNConfig()
        .environment(env)
        .env_runners(num_env_runners=0, rollout_fragment_length=8)
        .training(
            num_sequences_per_batch=4, num_steps_sampled_before_learning_starts=learning_starts
        )
        .rl_module(model_config=dict(TINY_MODEL))
        .reporting(min_sample_timesteps_per_iteration=steps_per_iteration)
        .debugging(seed=seed, log_level="ERROR")
    )


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
