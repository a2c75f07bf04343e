"""Presets, tuned-example YAMLs and Tune: what users run, run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ray import tune

from rllib_drqn import presets
from rllib_drqn.cli import build_config, load_experiment

REPO = Path(__file__).resolve().parent.parent
TUNED = REPO / "tuned_examples"
YAMLS = sorted(TUNED.glob("*.yaml"))

# Every tuned example that has a preset must agree with it on these settings.
COMPARED = (
    "env",
    "env_config",
    "lr",
    "gamma",
    "grad_clip",
    "double_q",
    "dueling",
    "n_step",
    "train_batch_size_per_learner",
    "num_steps_sampled_before_learning_starts",
    "target_network_update_freq",
    "num_env_runners",
    "num_envs_per_env_runner",
    "rollout_fragment_length",
    "update_mode",
    "burn_in_len",
    "value_rescaling",
    "value_rescaling_epsilon",
    "adam_epsilon",
    "num_cpus_per_env_runner",
    "async_training",
    "replay_ratio",
    "per_runner_epsilon",
    "per_runner_epsilon_base",
    "per_runner_epsilon_alpha",
)
PRESET_OF = {
    "drqn_pong.yaml": lambda: presets.drqn_paper("Pong", flicker_prob=0.0),
    "drqn_flickering_pong.yaml": lambda: presets.drqn_paper("Pong", flicker_prob=0.5),
    "dqn10_flickering_pong.yaml": lambda: presets.dqn_frame_stack(10, "Pong", 0.5),
    "r2d2_flickering_pong.yaml": lambda: presets.r2d2("Pong", flicker_prob=0.5),
}


def _settings(config: Any) -> dict[str, Any]:
    settings = {key: getattr(config, key, None) for key in COMPARED}
    settings["env_config"] = dict(config.env_config)
    settings["epsilon"] = [list(point) for point in config.epsilon]
    buffer_config = dict(config.replay_buffer_config)
    # update_from_dict (the YAML path) turns the type's import path into the class.
    if isinstance(buffer_config["type"], type):
        buffer_type = buffer_config["type"]
        buffer_config["type"] = f"{buffer_type.__module__}.{buffer_type.__name__}"
    settings["replay_buffer_config"] = buffer_config
    settings["model_config"] = {
        k: v for k, v in config.model_config.items() if k in config._model_config
    }
    return settings


def test_every_tuned_example_starts_with_its_expectations() -> None:
    assert len(YAMLS) >= 5
    for path in YAMLS:
        header = path.read_text().split("\n\n")[0]
        for field in ("Run:", "Expected:", "Hardware:", "Settings:"):
            assert field in header, f"{path.name} lacks '{field}' in its opening comment"


@pytest.mark.parametrize("name", sorted(PRESET_OF))
def test_tuned_example_agrees_with_its_preset(name: str) -> None:
    from_yaml = build_config(load_experiment(TUNED / name))
    from_preset = PRESET_OF[name]()
    from_preset.validate()
    assert type(from_yaml) is type(from_preset)
    assert _settings(from_yaml) == _settings(from_preset)


def test_sequential_preset_only_changes_the_update_mode() -> None:
    paper, sequential = presets.drqn_paper(), presets.drqn_sequential()
    sequential.validate()
    assert sequential.update_mode == "sequential"
    assert {**_settings(sequential), "update_mode": "random"} == _settings(paper)


@pytest.mark.parametrize("path", YAMLS, ids=[p.name for p in YAMLS])
def test_tuned_example_runs_one_iteration_through_the_rllib_command(
    path: Path, tmp_path: Path
) -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "rllib_drqn",
            "train",
            "file",
            str(path),
            "--stop",
            '{"training_iteration": 1}',
            "--storage-path",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    print(completed.stdout[-2000:])
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "iter    1" in completed.stdout
    assert list(tmp_path.rglob("checkpoint_*")), "no checkpoint left at the end"


@pytest.mark.usefixtures("ray_session")
def test_two_trial_tuner_sweep_over_update_mode(tmp_path: Path) -> None:
    """The README's Tuner example, shrunk: "DRQN" by name, a grid over update_mode."""
    import rllib_drqn  # noqa: F401  (registers "DRQN" with Tune)
    from rllib_drqn import DRQNConfig

    config = (
        DRQNConfig()
        .environment("StatelessCartPole")
        .env_runners(num_env_runners=0)
        .training(
            lr=tune.grid_search([1e-3]),
            update_mode=tune.grid_search(["random", "sequential"]),
            num_sequences_per_batch=4,
            num_steps_sampled_before_learning_starts=100,
        )
        .rl_module(model_config={"lstm_cell_size": 8, "fcnet_hiddens": [8]})
        .reporting(min_sample_timesteps_per_iteration=200)
    )
    tuner = tune.Tuner(
        "DRQN",
        param_space=config,
        run_config=tune.RunConfig(
            stop={"training_iteration": 1}, storage_path=str(tmp_path), verbose=0
        ),
        tune_config=tune.TuneConfig(max_concurrent_trials=1),
    )
    results = tuner.fit()
    assert len(results) == 2
    assert not results.errors
    modes = sorted(result.config["update_mode"] for result in results)
    assert modes == ["random", "sequential"]
    for result in results:
        assert result.metrics["training_iteration"] == 1
