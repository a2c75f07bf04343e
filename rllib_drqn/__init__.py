"""rllib-drqn: Deep Recurrent Q-Networks (Hausknecht & Stone 2015) for Ray RLlib.

Importing the package registers the ``"DRQN"`` algorithm and the ``"FlickeringAtari"`` and
``"StatelessCartPole"`` envs with Tune, so YAML files, ``Tuner`` and remote env runners find
them by name.
"""

from __future__ import annotations

from rllib_drqn.config import DRQN, DRQNConfig
from rllib_drqn.envs import FLICKERING_ATARI, FlickerObservation, make_flickering_atari
from rllib_drqn.module import DRQNTorchRLModule
from rllib_drqn.registry import register

__all__ = [
    "DRQN",
    "FLICKERING_ATARI",
    "DRQNConfig",
    "DRQNTorchRLModule",
    "FlickerObservation",
    "make_flickering_atari",
    "register",
]

__version__ = "0.1.0"

register()
