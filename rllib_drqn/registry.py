"""One place that makes the plugin's names known to Ray Tune (and so to RLlib and YAML files)."""

from __future__ import annotations

__all__ = ["ALGORITHM_NAME", "BASELINE_NAME", "register"]

ALGORITHM_NAME = "DRQN"
#: The k-frame DQN baseline (rllib_drqn.baselines), by name for YAML files and Tuner.
BASELINE_NAME = "FrameStackDQN"


def register() -> None:
    """Registers ``"DRQN"``, ``"FrameStackDQN"`` and the plugin's envs with Tune; idempotent.

    Env runners in other processes import ``rllib_drqn`` when they unpickle the config, which
    runs this again there, so registered names resolve on remote workers too.
    """
    from ray.tune.registry import register_trainable

    from rllib_drqn.baselines import FrameStackDQN
    from rllib_drqn.config import DRQN
    from rllib_drqn.envs import register_envs

    register_trainable(ALGORITHM_NAME, DRQN)
    register_trainable(BASELINE_NAME, FrameStackDQN)
    register_envs()
