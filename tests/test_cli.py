"""Tests of the ``rllib`` command: every bad input fails in the driver, and one real run.

The bad-input tests call ``cli.main`` in this process with ``ray.init`` replaced by a function
that fails the test, so they prove that nothing starts Ray (and take a second each). The smoke
test runs the command in a subprocess, as a user would, and trains one iteration for real.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from rllib_drqn import cli
from rllib_drqn.cli import (
    RETURN_MEAN,
    RETURN_WINDOW,
    build_config,
    build_parser,
    load_experiment,
    main,
    resolve_stop,
)

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "tuned_examples" / "drqn_stateless_cartpole.yaml"


def _experiment_yaml(config: str = "{}", *, run: str = "DRQN", env: str = "StatelessCartPole"):
    return textwrap.dedent(
        f"""\
        test-experiment:
          run: {run}
          env: {env}
          stop: {{training_iteration: 1}}
          config: {config}
        """
    )


# (id, file text or None for a missing file, extra arguments, substrings of the error).
BAD_INPUTS = [
    ("missing_file", None, [], ["missing.yaml", "no such file"]),
    (
        "yaml_syntax",
        "test-experiment:\n  run: DRQN\n  env: [StatelessCartPole\n",
        [],
        ["bad.yaml:4:1: invalid YAML", "expected ',' or ']'"],
    ),
    (
        "duplicate_key",
        "test-experiment:\n  run: DRQN\n  run: DQN\n",
        [],
        ["bad.yaml:3:3", "duplicate key 'run'"],
    ),
    (
        "two_experiments",
        _experiment_yaml() + _experiment_yaml().replace("test-experiment", "second"),
        [],
        ["2 experiments", "'test-experiment', 'second'", "its own file"],
    ),
    (
        "no_experiment",
        "# nothing here\n",
        [],
        ["holds no experiment", "run: DRQN"],
    ),
    (
        "unknown_run",
        _experiment_yaml(run="PPO"),
        [],
        ["unknown algorithm run: 'PPO'", "['DRQN', 'DQN', 'FrameStackDQN']"],
    ),
    (
        "unknown_config_key",
        _experiment_yaml("{lrr: 0.001}"),
        [],
        ["unknown key 'lrr'", "did you mean 'lr'?"],
    ),
    (
        "model_key_at_top_level",
        _experiment_yaml("{lstm_cell_size: 32}"),
        [],
        ["'lstm_cell_size'", "inside model_config"],
    ),
    (
        "old_api_framework",
        _experiment_yaml("{framework: tf}"),
        [],
        ["'framework' is an old-API-stack key", "torch only"],
    ),
    (
        "old_api_num_workers",
        _experiment_yaml("{num_workers: 2}"),
        [],
        ["'num_workers' is an old-API-stack key", "use num_env_runners"],
    ),
    (
        "old_api_model",
        _experiment_yaml("{model: {lstm_cell_size: 32}}"),
        [],
        ["'model' is an old-API-stack key", "use model_config"],
    ),
    (
        "old_api_exploration",
        _experiment_yaml("{exploration_config: {type: EpsilonGreedy}}"),
        [],
        ["'exploration_config' is an old-API-stack key", "use epsilon"],
    ),
    (
        "unknown_env",
        _experiment_yaml(env="StatelesCartPole"),
        [],
        ["Unknown env 'StatelesCartPole'", "Close matches: ['StatelessCartPole']"],
    ),
    (
        "unknown_env_dqn",
        _experiment_yaml(run="DQN", env="CartPol-v1"),
        [],
        ["Unknown env 'CartPol-v1'", "'CartPole-v1'"],
    ),
    (
        "bad_stop_json",
        _experiment_yaml(),
        ["--stop", "{training_iteration: 1}"],
        ["--stop '{training_iteration: 1}' is not valid JSON", '{"training_iteration": 5'],
    ),
    (
        "unknown_stop_key",
        _experiment_yaml(),
        ["--stop", '{"env_runners/episode_retrun_mean": 100}'],
        ["unknown stop key 'env_runners/episode_retrun_mean'", f"did you mean '{RETURN_MEAN}'"],
    ),
    (
        "old_api_stop_key",
        _experiment_yaml(),
        ["--stop", '{"episode_reward_mean": 100}'],
        ["'episode_reward_mean' is the old API stack's", f"use '{RETURN_WINDOW}'"],
    ),
    (
        "bad_update_mode",
        _experiment_yaml("{update_mode: randm}"),
        [],
        ["Unknown update_mode 'randm'", "Did you mean 'random'?"],
    ),
    (
        "drqn_key_for_dqn",
        _experiment_yaml("{update_mode: random}", run="DQN"),
        [],
        ["unknown key 'update_mode' for DQN"],
    ),
    (
        "too_many_cpus",
        _experiment_yaml(),
        ["--num-env-runners", "1000"],
        ["needs 1001 CPUs", "lower --num-env-runners"],
    ),
]


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fails the test if anything calls ``ray.init`` or starts training."""
    was_initialized = ray.is_initialized()

    def fail(*args: object, **kwargs: object) -> None:
        pytest.fail("Ray or training was started before the input was validated")

    monkeypatch.setattr(ray, "init", fail)
    monkeypatch.setattr(cli.run, "train", fail)  # Ray may be up already (conftest's ray_session).
    yield
    assert ray.is_initialized() == was_initialized


@pytest.mark.parametrize(
    ("text", "extra_args", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_INPUTS],
)
def test_bad_input_exits_2_with_one_clear_line(
    text: str | None,
    extra_args: list[str],
    expected: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_ray: None,
) -> None:
    path = tmp_path / ("missing.yaml" if text is None else "bad.yaml")
    if text is not None:
        path.write_text(text)
    storage = tmp_path / "results"
    storage.mkdir()
    (storage / "keep.txt").write_text("an earlier run")

    status = main(["train", "file", str(path), "--storage-path", str(storage), *extra_args])

    captured = capsys.readouterr()
    assert status == 2
    assert captured.err.startswith("rllib: error: ")
    assert captured.err.count("\n") == 1, captured.err
    for fragment in expected:
        assert fragment in captured.err
    assert "Traceback" not in captured.err
    # Nothing in the storage path was touched or added.
    assert [p.name for p in storage.iterdir()] == ["keep.txt"]
    assert (storage / "keep.txt").read_text() == "an earlier run"


def test_storage_path_that_is_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray: None
) -> None:
    storage = tmp_path / "results"
    storage.write_text("not a directory")
    status = main(["train", "file", str(EXAMPLE), "--storage-path", str(storage)])
    assert status == 2
    assert "is a file; pass a directory" in capsys.readouterr().err
    assert storage.read_text() == "not a directory"


def test_bad_option_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "file", str(EXAMPLE), "--num-env-runners", "-1"])
    assert exit_info.value.code == 2
    assert "expected an integer >= 0, got '-1'" in capsys.readouterr().err


def test_stop_json_overrides_and_merges_the_file() -> None:
    stop = resolve_stop(
        {RETURN_MEAN: 150, "training_iteration": 100},
        json.dumps({"training_iteration": 1, "time_total_s": 60}),
    )
    assert stop == {RETURN_MEAN: 150, "training_iteration": 1, "time_total_s": 60}


def test_tuned_example_builds_the_settings_it_states(no_ray: None) -> None:
    experiment = load_experiment(EXAMPLE)
    assert (experiment.run, experiment.env) == ("DRQN", "StatelessCartPole")
    config = build_config(experiment, num_env_runners=0, num_gpus_per_learner=0)
    stated = experiment.config
    assert config.lr == stated["lr"]
    assert config.update_mode == stated["update_mode"]
    assert config.burn_in_len == stated.get("burn_in_len", 0)
    assert config.model_config["lstm_cell_size"] == stated["model_config"]["lstm_cell_size"]
    assert config.model_config["max_seq_len"] == stated["model_config"]["max_seq_len"]
    assert config.train_batch_size_per_learner == (
        stated["num_sequences_per_batch"] * stated["model_config"]["max_seq_len"]
    )


def test_exponent_floats_and_dqn_baseline(tmp_path: Path, no_ray: None) -> None:
    path = tmp_path / "dqn.yaml"
    config_text = (
        "{lr: 1e-3, model_config: {fcnet_hiddens: [32]}, replay_buffer_config: {capacity: 1000}}"
    )
    path.write_text(_experiment_yaml(config_text, run="DQN"))
    config = build_config(load_experiment(path), num_env_runners=1)
    # RLlib's DQN, with the plugin's episode reporting (the return window it stops on).
    assert type(config).__name__ == "BaselineDQNConfig"
    from ray.rllib.algorithms.dqn import DQN

    assert issubclass(config.algo_class, DQN)
    assert config.lr == 0.001  # PyYAML alone would read "1e-3" as a string.
    assert config.num_env_runners == 1
    # Merged into DQN's default buffer config, as update_from_dict does.
    assert config.replay_buffer_config["capacity"] == 1000
    assert "type" in config.replay_buffer_config


def test_parser_has_one_entry_per_subcommand() -> None:
    parser = build_parser()
    args = parser.parse_args(["train", "file", "x.yaml", "--checkpoint-freq", "3"])
    assert (args.command, args.source, args.path, args.checkpoint_freq) == (
        "train",
        "file",
        "x.yaml",
        3,
    )
    assert args.storage_path == "./results"
    assert callable(args.handler)


def test_console_script_is_wired_to_main(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "rllib"
    if not script.exists():
        pytest.skip(f"no console script next to {sys.executable}; run `pip install -e .`")
    missing = tmp_path / "missing.yaml"
    completed = subprocess.run(
        [str(script), "train", "file", str(missing)], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 2
    assert f"rllib: error: {missing}: no such file" in completed.stderr


def test_train_one_iteration_leaves_a_checkpoint(tmp_path: Path) -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "rllib_drqn",
            "train",
            "file",
            str(EXAMPLE),
            "--stop",
            '{"training_iteration": 1}',
            "--storage-path",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    out = completed.stdout
    progress = (
        r"^iter +1 \| env steps +[\d,]+ \| +[\d.]+ steps/s \| return mean +[\d.]+ \( *\d+ ep\) "
        r"\| time"
    )
    # The file's stop has a step budget (50,000), so the line ends with an ETA to it.
    assert re.search(progress + r" +[\d.]+ s \| ETA \d+:\d\d:\d\d$", out, re.M), out
    assert "reached: ['training_iteration']" in out
    assert f"Mean return of the last 20 episodes ({RETURN_WINDOW}): last" in out
    (episode_log,) = tmp_path.rglob("episodes.csv")  # In the trial directory, beside params.json.
    assert (episode_log.parent / "params.json").is_file()
    assert len(episode_log.read_text().splitlines()) > 1
    checkpoints = [p for p in tmp_path.rglob("checkpoint_*") if p.is_dir()]
    assert len(checkpoints) == 1
    assert f"Checkpoint: {checkpoints[0]}" in out
    assert f"TensorBoard logs: tensorboard --logdir {tmp_path}" in out
    assert any(tmp_path.rglob("events.out.tfevents.*"))
