"""The honest proof that memory works: DRQN beats a memory-less DQN on StatelessCartPole.

Both runs are built from the tuned-example YAML files (the same files `rllib train file` runs),
at a fixed seed, on the same env-step budget.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rllib_drqn.cli import build_config, load_experiment

TUNED = Path(__file__).resolve().parent.parent / "tuned_examples"
TARGET_RETURN = 150.0
BUDGET_STEPS = 25_000


def train_until(yaml_name: str, target: float, budget: int) -> tuple[float, float, list[float]]:
    """Trains until the mean return reaches ``target`` or ``budget`` env steps pass.

    Returns the best mean return, the env steps at which it was reached, and the curve.
    """
    experiment = load_experiment(TUNED / yaml_name)
    algo = build_config(experiment).build_algo()
    best, best_at, curve = float("-inf"), 0.0, []
    try:
        steps = 0.0
        while steps < budget:
            result = algo.train()
            steps = result["env_runners"]["num_env_steps_sampled_lifetime"]
            mean_return = result["env_runners"].get("episode_return_mean", float("nan"))
            curve.append(round(float(mean_return), 1))
            if mean_return > best:
                best, best_at = float(mean_return), float(steps)
            if mean_return >= target:
                break
    finally:
        algo.stop()
    return best, best_at, curve


@pytest.mark.learning
@pytest.mark.usefixtures("ray_session")
def test_drqn_reaches_150_on_stateless_cartpole_where_memoryless_dqn_does_not() -> None:
    # Small networks: one thread is faster, and it keeps two cores from thrashing.
    torch.set_num_threads(1)
    drqn_best, drqn_at, drqn_curve = train_until(
        "drqn_stateless_cartpole.yaml", TARGET_RETURN, BUDGET_STEPS
    )
    dqn_best, dqn_at, dqn_curve = train_until(
        "dqn_stateless_cartpole.yaml", TARGET_RETURN, BUDGET_STEPS
    )
    print(f"\nDRQN: best mean return {drqn_best:.1f} at {drqn_at:.0f} env steps; {drqn_curve}")
    print(f"DQN (no memory): best mean return {dqn_best:.1f} at {dqn_at:.0f}; {dqn_curve}")
    assert drqn_best >= TARGET_RETURN
    assert dqn_best < TARGET_RETURN
