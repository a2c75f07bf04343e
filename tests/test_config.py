"""DRQNConfig: defaults that work out of the box, and bad settings rejected in the driver."""

from __future__ import annotations

import pytest
from ray.rllib.algorithms.dqn.torch.default_dqn_torch_rl_module import DefaultDQNTorchRLModule
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.tune.registry import TRAINABLE_CLASS, _global_registry

from rllib_drqn import DRQN, DRQNConfig, DRQNTorchRLModule
from rllib_drqn.learner import DRQNTorchLearner


def cartpole_config() -> DRQNConfig:
    return DRQNConfig().environment("StatelessCartPole")


def test_defaults_build_drqn_with_sequences_of_the_paper() -> None:
    config = cartpole_config()
    config.validate()
    assert config.algo_class is DRQN
    # Stored state is the default (small tasks learn with it); the paper's random updates
    # are presets.drqn_paper's.
    assert config.update_mode == "stored"
    assert config.burn_in_len == 0
    assert config.model_config["max_seq_len"] == 10
    assert config.num_sequences_per_batch == 32
    assert config.train_batch_size_per_learner == 320
    assert config.dueling is False
    assert config.get_rl_module_spec().module_class is DRQNTorchRLModule
    assert config.get_default_learner_class() is DRQNTorchLearner
    assert "DRQNEpisodeReplayBuffer" in config.replay_buffer_config["type"]


def test_batch_size_follows_sequences_and_their_length() -> None:
    config = (
        cartpole_config()
        .training(num_sequences_per_batch=8)
        .rl_module(model_config={"max_seq_len": 20})
    )
    config.validate()
    assert config.train_batch_size_per_learner == 160
    assert config.model_config["max_seq_len"] == 20


def test_drqn_is_registered_with_tune() -> None:
    assert _global_registry.get(TRAINABLE_CLASS, "DRQN") is DRQN


BAD_SETTINGS = [
    (
        lambda c: c.training(update_mode="randm"),
        ValueError,
        r"Unknown update_mode 'randm'.*Did you mean 'random'",
    ),
    (
        lambda c: c.training(burn_in_len=10),
        ValueError,
        r"burn_in_len=10 must be smaller than max_seq_len=10",
    ),
    (
        lambda c: c.training(update_mode="sequential", burn_in_len=2),
        ValueError,
        r"burn_in_len=2 has no meaning with update_mode='sequential'",
    ),
    (
        lambda c: c.training(train_batch_size_per_learner=500),
        ValueError,
        r"train_batch_size_per_learner=500 cannot be set.*num_sequences_per_batch",
    ),
    (
        lambda c: c.training(num_sequences_per_batch=0),
        ValueError,
        r"num_sequences_per_batch must be a positive int, got 0",
    ),
    (lambda c: c.training(n_step=(1, 5)), ValueError, r"n_step=\(1, 5\).*n_step=5"),
    (lambda c: c.training(n_step=0), ValueError, r"n_step=0.*config.training\(n_step=5\)"),
    (
        lambda c: c.training(value_rescaling=True, value_rescaling_epsilon=2.0),
        ValueError,
        r"value_rescaling_epsilon must be in \(0, 1\), got 2.0",
    ),
    (lambda c: c.training(num_atoms=51), ValueError, r"num_atoms=51.*num_atoms=1"),
    (
        lambda c: c.training(replay_buffer_config={"type": "PrioritizedEpisodeReplayBuffer"}),
        ValueError,
        r"type 'PrioritizedEpisodeReplayBuffer'.*DRQNEpisodeReplayBuffer",
    ),
    (
        lambda c: c.rl_module(model_config={"lstm_cells": 64}),
        ValueError,
        r"Unknown DRQN model_config key\(s\) \['lstm_cells'\]",
    ),
    (
        lambda c: c.rl_module(model_config={"burn_in_len": 4}),
        ValueError,
        r"burn_in_len is a training setting.*config.training\(burn_in_len",
    ),
    (
        lambda c: c.rl_module(
            rl_module_spec=RLModuleSpec(
                module_class=DRQNTorchRLModule, model_config={"max_seq_len": 40}
            )
        ),
        ValueError,
        r"max_seq_len=40 is set in the RLModuleSpec.*config.rl_module\(model_config",
    ),
    (
        lambda c: c.rl_module(rl_module_spec=RLModuleSpec(module_class=DefaultDQNTorchRLModule)),
        ValueError,
        r"DefaultDQNTorchRLModule keeps no state.*DRQNTorchRLModule",
    ),
    (
        lambda c: c.environment("StatelesCartPole"),
        ValueError,
        r"Unknown env 'StatelesCartPole'.*Close matches: \['StatelessCartPole'",
    ),
    (
        lambda c: c.environment("FlickeringAtari", env_config={"game": "Pongg"}),
        ValueError,
        r"Pongg.*Pong",
    ),
    (
        lambda c: c.environment("FlickeringAtari", env_config={"game": "Pong", "flicker": 0.5}),
        ValueError,
        r"flicker.*flicker_prob",
    ),
    (
        lambda c: c.learners(num_learners=2).training(update_mode="sequential"),
        ValueError,
        r"num_learners=2.*num_learners=1",
    ),
    (
        lambda c: c.reporting(episode_return_window=0),
        ValueError,
        r"episode_return_window must be an int >= 1.*got 0.*"
        r"reporting\(episode_return_window=100\)",
    ),
    (
        lambda c: c.reporting(episode_return_window=20.0),
        ValueError,
        r"episode_return_window must be an int >= 1.*got 20.0",
    ),
    (
        lambda c: c.reporting(episode_return_window=True),
        ValueError,
        r"episode_return_window must be an int >= 1.*got True",
    ),
    (
        lambda c: c.reporting(episode_log_dir=3),
        TypeError,
        r"episode_log_dir must be a directory path or None, got 3 \(int\)",
    ),
]


@pytest.mark.parametrize(("change", "error", "match"), BAD_SETTINGS)
def test_bad_settings_raise_in_validate(change, error, match) -> None:
    config = change(cartpole_config())
    with pytest.raises(error, match=match):
        config.validate()


def test_bad_settings_raise_before_ray_starts() -> None:
    """build_algo() validates first: nothing (not even Ray) is started for a bad config."""
    import ray

    was_running = ray.is_initialized()
    config = cartpole_config().training(update_mode="replayed")
    with pytest.raises(ValueError, match="Unknown update_mode 'replayed'"):
        config.build_algo()
    assert ray.is_initialized() == was_running


def test_n_step_longer_than_the_rollout_fragment_is_fine_for_drqn() -> None:
    """RLlib's DQN wants rollout_fragment_length >= n_step; DRQN's n-step lives in sequences."""
    config = (
        DRQNConfig()
        .environment("StatelessCartPole")
        .env_runners(rollout_fragment_length=2)
        .training(n_step=3)
    )
    config.validate()
    assert config.rollout_fragment_length == 2
    assert config.get_rollout_fragment_length() == 2
