"""Tests of ``rllib evaluate`` and ``rllib_drqn.evaluate``: a real checkpoint, every bad input.

One tiny DRQN checkpoint (one training iteration of 200 StatelessCartPole steps) is written
per module and evaluated once in a subprocess, as a user runs it, and otherwise in this process
through ``cli.main`` with ``ray.init`` replaced by a function that fails the test: evaluation
starts no Ray. ``play_episodes`` is tested on modules built directly, without training.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import math
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import ray
import torch
import tree
from ray.rllib.algorithms.dqn import DQNConfig
from ray.rllib.core.columns import Columns

from rllib_drqn import DRQNConfig, DRQNTorchRLModule
from rllib_drqn.cli import main
from rllib_drqn.envs import FLICKERING_ATARI, make_stateless_cartpole
from rllib_drqn.evaluate import (
    DEFAULT_MAX_EPISODE_STEPS,
    MODULE_SUBDIR,
    EvaluationError,
    FlickerResult,
    GifRecorder,
    evaluate,
    inspect_checkpoint,
    load_module,
    make_env,
    parse_flicker_probs,
    play_episodes,
    plot_observability,
)
from rllib_drqn.module import PREV_ACTIONS, PREV_REWARDS

torch.set_num_threads(1)  # Batch-1 inference; threads only fight over CI's 2 cores.

COMMAND = (sys.executable, "-m", "rllib_drqn", "evaluate")
PROBS = "0,0.5,1"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def checkpoint(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = (
        DRQNConfig()
        .environment("StatelessCartPole")
        .env_runners(num_env_runners=0)
        .training(num_steps_sampled_before_learning_starts=100, num_sequences_per_batch=4)
        .rl_module(model_config={"lstm_cell_size": 16, "fcnet_hiddens": [16]})
        .reporting(min_sample_timesteps_per_iteration=200)
    )
    algo = config.build_algo()
    try:
        algo.train()
        path = algo.save_to_path(tmp_path_factory.mktemp("checkpoints") / "drqn_cartpole")
    finally:
        algo.stop()
    return Path(path)


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails the test if anything calls ``ray.init``."""

    def fail(*args: Any, **kwargs: Any) -> None:
        pytest.fail("evaluation must not start Ray")

    monkeypatch.setattr(ray, "init", fail)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_ray: None) -> Path:
    """An empty working directory, so the default ./evaluation/<name> lands in tmp_path."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {
        str(path.relative_to(directory)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(directory.rglob("*"))
    }


def _read_outputs(out: Path) -> tuple[list[dict[str, str]], dict[str, Any]]:
    with (out / "evaluation.csv").open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    return rows, json.loads((out / "evaluation.json").read_text())


# ---------------------------------------------------------------------------------------------
# The command, end to end.
# ---------------------------------------------------------------------------------------------


def test_evaluate_command_writes_table_json_and_plot(checkpoint: Path, tmp_path: Path) -> None:
    before = _snapshot(checkpoint)
    completed = subprocess.run(
        [*COMMAND, str(checkpoint), "--flicker-probs", PROBS, "--episodes", "2"],
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    out = tmp_path / "evaluation" / checkpoint.name
    for name in ("evaluation.csv", "evaluation.json", "observability.png"):
        assert str(Path("evaluation") / checkpoint.name / name) in completed.stdout

    rows, document = _read_outputs(out)
    assert [float(row["flicker_prob"]) for row in rows] == [0.0, 0.5, 1.0]
    assert all(math.isfinite(float(row["mean"])) and row["episodes"] == "2" for row in rows)
    assert document["env"] == "StatelessCartPole"
    assert document["epsilon"] == 0.05 and document["seed"] == 0
    results = document["results"]
    assert [result["flicker_prob"] for result in results] == [0.0, 0.5, 1.0]
    for result, row in zip(results, rows, strict=True):
        assert len(result["returns"]) == result["episodes"] == 2
        assert result["mean"] == pytest.approx(np.mean(result["returns"]))
        assert result["std"] == pytest.approx(np.std(result["returns"]))
        assert float(row["mean"]) == pytest.approx(result["mean"])

    png = out / "observability.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert png.stat().st_size > 10_000  # A drawn plot, not an empty canvas.
    assert not out.resolve().is_relative_to(checkpoint.resolve())
    assert _snapshot(checkpoint) == before


def test_evaluate_in_process_is_reproducible_and_leaves_checkpoint_alone(
    checkpoint: Path, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _snapshot(checkpoint)
    args = [str(checkpoint), "--flicker-probs", PROBS, "--episodes", "2", "--epsilon", "0.3"]
    assert main(["evaluate", *args, "--out", "first"]) == 0
    assert main(["evaluate", *args, "--out", "second"]) == 0
    assert main(["evaluate", *args, "--out", "other_seed", "--seed", "7"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("of frames shown") == 9

    first, second, other = (
        _read_outputs(workdir / name)[1] for name in ("first", "second", "other_seed")
    )
    assert first["results"] == second["results"]
    assert other["seed"] == 7 and other["results"] != first["results"]
    assert _snapshot(checkpoint) == before


def test_max_episode_steps_cuts_episodes_of_envs_without_a_time_limit(
    checkpoint: Path, workdir: Path
) -> None:
    # RLlib's StatelessCartPole has no TimeLimit: without the cap a good policy plays for ever.
    args = [str(checkpoint), "--flicker-probs", "0", "--episodes", "3", "--epsilon", "0"]
    assert main(["evaluate", *args, "--out", "uncut"]) == 0
    assert main(["evaluate", *args, "--out", "cut", "--max-episode-steps", "5"]) == 0
    uncut, cut = (_read_outputs(workdir / name)[1] for name in ("uncut", "cut"))
    assert uncut["max_episode_steps"] == DEFAULT_MAX_EPISODE_STEPS
    assert cut["max_episode_steps"] == 5
    # CartPole pays 1 per step, and no episode of this policy ends within 5 steps by itself.
    assert min(uncut["results"][0]["returns"]) > 5
    assert cut["results"][0]["returns"] == [5.0, 5.0, 5.0]


def test_tune_trial_checkpoint_is_named_after_its_trial(checkpoint: Path, workdir: Path) -> None:
    # `rllib train file` leaves <storage>/<experiment>/<trial>/checkpoint_00000N, each written
    # by Algorithm.save_checkpoint -> save_to_path: the same layout as the fixture's.
    trial = workdir / "results" / "exp" / "DRQN_StatelessCartPole_abc12_00000_0"
    tune_checkpoint = trial / "checkpoint_000000"
    shutil.copytree(checkpoint, tune_checkpoint)
    assert (
        main(["evaluate", str(tune_checkpoint), "--flicker-probs", "0.25", "--episodes", "1"]) == 0
    )
    rows, _ = _read_outputs(workdir / "evaluation" / f"{trial.name}_checkpoint_000000")
    assert [row["flicker_prob"] for row in rows] == ["0.25"]


def test_plot_has_one_point_per_flicker_prob() -> None:
    results = [FlickerResult(p, (float(i), float(i) + 2.0)) for i, p in enumerate((1.0, 0.0, 0.5))]
    figure = plot_observability(results, title="ckpt", trained_flicker_prob=0.5)
    (axes, *_) = figure.axes
    (errorbar,) = axes.containers  # matplotlib's ErrorbarContainer: (data line, caps, bars).
    points = errorbar.lines[0]
    np.testing.assert_allclose(np.asarray(points.get_xdata(), dtype=float), [0.0, 0.5, 1.0])
    np.testing.assert_allclose(np.asarray(points.get_ydata(), dtype=float), [2.0, 3.0, 1.0])
    assert "flicker probability" in axes.get_xlabel()
    assert axes.get_title() == "ckpt"


# ---------------------------------------------------------------------------------------------
# Bad inputs: exit 2, one line, nothing written.
# ---------------------------------------------------------------------------------------------


def _expect_error(args: list[str], *fragments: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["evaluate", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rllib: error: ") and "\n" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--flicker-probs", "0,1.5"], ["'1.5'", "[0, 1]"]),
        (["--flicker-probs", "a"], ["'a' is not a number"]),
        (["--flicker-probs", "0,,1"], ["'' is not a number"]),
        (["--flicker-probs", "nan"], ["'nan'", "[0, 1]"]),
        (["--episodes", "0"], ["--episodes must be an integer >= 1, got '0'"]),
        (["--episodes", "1.5"], ["--episodes", "'1.5'"]),
        (["--epsilon", "1.5"], ["--epsilon must be a probability in [0, 1], got '1.5'"]),
        (["--max-episode-steps", "0"], ["--max-episode-steps must be an integer >= 1, got '0'"]),
        (["--out", "INSIDE"], ["lies inside the checkpoint", "never writes into a checkpoint"]),
        (["--video", "INSIDE"], ["--video", "lies inside the checkpoint"]),
    ],
    ids=[
        "prob_above_1",
        "prob_text",
        "prob_empty",
        "prob_nan",
        "episodes_0",
        "episodes_float",
        "epsilon",
        "max_episode_steps_0",
        "out_inside",
        "video_inside",
    ],
)
def test_bad_arguments_exit_2(
    checkpoint: Path,
    workdir: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    fragments: list[str],
) -> None:
    before = _snapshot(checkpoint)
    args = {"--flicker-probs": PROBS, "--episodes": "1"}
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        args[flag] = str(checkpoint / "evaluation") if value == "INSIDE" else value
    _expect_error(
        [str(checkpoint), *(x for item in args.items() for x in item)], *fragments, capsys=capsys
    )
    assert list(workdir.iterdir()) == []
    assert _snapshot(checkpoint) == before


def _corrupt_copy(checkpoint: Path, tmp_path: Path, how: str) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(checkpoint, copy)
    if how == "truncated_config":
        file = copy / "class_and_ctor_args.pkl"
        file.write_bytes(file.read_bytes()[:100])
    elif how == "unimportable_module":
        file = copy / MODULE_SUBDIR / "class_and_ctor_args.pkl"
        # Same length, so the pickle stays well-formed and only the import fails.
        data = file.read_bytes().replace(b"rllib_drqn.module", b"nodrqn_pkg.module")
        file.write_bytes(data)
    elif how == "weights":
        (copy / MODULE_SUBDIR / "module_state.pkl").write_bytes(pickle.dumps({"q_net": 1}))
    elif how == "bad_json":
        (copy / "rllib_checkpoint.json").write_text("{not json")
    return copy


@pytest.mark.parametrize(
    ("how", "fragments"),
    [
        ("truncated_config", ["class_and_ctor_args.pkl: corrupt checkpoint, cannot unpickle"]),
        ("unimportable_module", ["RLModule class cannot be imported", "nodrqn_pkg"]),
        ("weights", ["corrupt checkpoint, cannot restore the DRQNTorchRLModule"]),
        ("bad_json", ["corrupt checkpoint, cannot read rllib_checkpoint.json"]),
    ],
)
def test_damaged_checkpoint_exit_2(
    checkpoint: Path,
    workdir: Path,
    capsys: pytest.CaptureFixture[str],
    how: str,
    fragments: list[str],
) -> None:
    copy = _corrupt_copy(checkpoint, workdir, how)
    _expect_error(
        [str(copy), "--flicker-probs", PROBS, "--episodes", "1"],
        *fragments,
        "pass a checkpoint",
        capsys=capsys,
    )
    assert not (workdir / "evaluation").exists()


def test_paths_that_are_not_checkpoints_exit_2(
    checkpoint: Path, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--flicker-probs", PROBS, "--episodes", "1"]
    _expect_error(
        ["missing", *args], "missing: no such directory", "checkpoint_00000N", capsys=capsys
    )
    (workdir / "empty").mkdir()
    _expect_error(["empty", *args], "not an Algorithm checkpoint", "save_to_path", capsys=capsys)
    trial = workdir / "trial"
    (trial / "checkpoint_000000").mkdir(parents=True)
    (trial / "checkpoint_000001").mkdir()
    _expect_error(
        [str(trial), *args], "directory of Tune results", "checkpoint_000001", capsys=capsys
    )
    _expect_error([str(checkpoint / MODULE_SUBDIR), *args], f"pass {checkpoint}", capsys=capsys)
    assert not (workdir / "evaluation").exists()


@pytest.mark.skipif(
    importlib.util.find_spec("pygame") is not None,
    reason="pygame is installed, so CartPole renders",
)
def test_video_without_a_renderer_exit_2(
    checkpoint: Path, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _expect_error(
        [str(checkpoint), "--flicker-probs", "0", "--episodes", "1", "--video", "videos"],
        "--video",
        "cannot render frames",
        "pygame",
        capsys=capsys,
    )
    assert not (workdir / "videos").exists() and not (workdir / "evaluation").exists()


def test_parse_flicker_probs() -> None:
    assert parse_flicker_probs(" 0, 0.1 ,1.0") == (0.0, 0.1, 1.0)
    with pytest.raises(EvaluationError, match=r"'-0\.1' is not a probability"):
        parse_flicker_probs("0,-0.1")


def test_inspect_checkpoint_reads_env_without_building(checkpoint: Path) -> None:
    spec = inspect_checkpoint(checkpoint)
    assert spec.algorithm == "DRQN" and spec.env == "StatelessCartPole"
    assert spec.module_class is DRQNTorchRLModule
    assert spec.module_path == checkpoint / "learner_group/learner/rl_module/default_policy"
    assert spec.trained_flicker_prob == 0.0


def test_load_module_restores_the_trained_weights(checkpoint: Path) -> None:
    spec = inspect_checkpoint(checkpoint)
    module = load_module(spec)
    with (spec.module_path / "module_state.pkl").open("rb") as stream:
        saved = pickle.load(stream)
    weights = module.state_dict()
    assert module.inference_only and weights.keys() == {
        key for key in saved if key.startswith("q_net.")
    }
    for key, value in weights.items():
        np.testing.assert_array_equal(value.numpy(), np.asarray(saved[key]))


# ---------------------------------------------------------------------------------------------
# play_episodes on modules built directly.
# ---------------------------------------------------------------------------------------------


def _tiny_module(env: gym.Env, **model_config: Any) -> DRQNTorchRLModule:
    torch.manual_seed(0)
    return DRQNTorchRLModule(
        observation_space=env.observation_space,
        action_space=env.action_space,
        model_config={"lstm_cell_size": 8, "fcnet_hiddens": [8], **model_config},
    )


@pytest.fixture
def cartpole() -> Iterator[gym.Env]:
    env = make_stateless_cartpole({"flicker_prob": 0.5})
    yield env
    env.close()


def test_play_episodes_same_seed_same_returns(cartpole: gym.Env) -> None:
    module = _tiny_module(cartpole)
    first = play_episodes(module, cartpole, 4, epsilon=0.5, seed=3)
    assert play_episodes(module, cartpole, 4, epsilon=0.5, seed=3) == first
    assert len(first) == 4 and all(value >= 1.0 for value in first)
    # Episode i resets with seed + i and starts from the initial LSTM state: played alone
    # with that seed (greedily, so no coins are shared), it returns the same.
    greedy = play_episodes(module, cartpole, 3, epsilon=0.0, seed=10)
    assert play_episodes(module, cartpole, 1, epsilon=0.0, seed=12) == greedy[2:]


def test_play_episodes_epsilon_one_differs_from_greedy(cartpole: gym.Env) -> None:
    module = _tiny_module(cartpole)
    greedy = play_episodes(module, cartpole, 5, epsilon=0.0, seed=0)
    random = play_episodes(module, cartpole, 5, epsilon=1.0, seed=0)
    assert greedy != random


def test_play_episodes_carries_and_resets_lstm_state(
    cartpole: gym.Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _tiny_module(cartpole)
    calls: list[tuple[dict[str, Any], dict[str, Any]]] = []
    forward = module.forward_inference

    def spy(batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        out = forward(batch, **kwargs)
        calls.append((batch, out))
        return out

    monkeypatch.setattr(module, "forward_inference", spy)
    returns = play_episodes(module, cartpole, 2, epsilon=0.0, seed=0)
    assert len(calls) == sum(returns)  # CartPole pays 1 per step: one forward per step.
    starts = {0, int(returns[0])}
    for step, (batch, _) in enumerate(calls):
        assert batch[Columns.OBS].shape == (1, 1, 2)
        state = batch[Columns.STATE_IN]
        if step in starts:
            assert all(torch.count_nonzero(state[key]) == 0 for key in ("h", "c"))
        else:
            previous = calls[step - 1][1][Columns.STATE_OUT]
            assert all(state[key] is previous[key] for key in ("h", "c"))


def test_play_episodes_memoryless_dqn_module(cartpole: gym.Env) -> None:
    # RLlib's own DQN module (the memory-less baseline) has no state and takes [1, ...] obs.
    config = DQNConfig().rl_module(model_config={"fcnet_hiddens": [8]})
    spec = config.get_default_rl_module_spec()
    spec.observation_space, spec.action_space = cartpole.observation_space, cartpole.action_space
    spec.model_config = config.model_config
    torch.manual_seed(0)
    module = spec.build()
    assert not module.is_stateful()
    returns = play_episodes(module, cartpole, 3, epsilon=0.0, seed=0)
    assert play_episodes(module, cartpole, 3, epsilon=0.0, seed=0) == returns
    assert play_episodes(module, cartpole, 3, epsilon=1.0, seed=0) != returns


def test_play_episodes_rejects_bad_arguments(cartpole: gym.Env) -> None:
    module = _tiny_module(cartpole)
    with pytest.raises(EvaluationError, match="--episodes must be an integer >= 1, got 0"):
        play_episodes(module, cartpole, 0, epsilon=0.0, seed=0)
    with pytest.raises(EvaluationError, match=r"--epsilon must be a probability in \[0, 1\]"):
        play_episodes(module, cartpole, 1, epsilon=-0.1, seed=0)


def test_atari_episode_records_a_gif(tmp_path: Path) -> None:
    env = make_env(
        FLICKERING_ATARI, {"game": "Pong", "max_episode_steps": 12}, 0.5, render_mode="rgb_array"
    )
    module = _tiny_module(env, conv_filters=[[4, 8, 8]])
    recorder = GifRecorder()
    play_episodes(module, env, 1, epsilon=0.05, seed=0, record=recorder)
    env.close()
    path = recorder.save(tmp_path / "pong.gif")

    from PIL import Image

    assert len(recorder.frames) == 13  # The reset frame and 12 steps.
    with Image.open(path) as gif:
        # Pillow merges identical consecutive frames, so the file may hold fewer.
        assert gif.format == "GIF" and 1 <= gif.n_frames <= 13
        assert gif.size == (160, 210)  # ALE's full RGB screen, not the agent's 84x84 frame.


# ---------------------------------------------------------------------------------------------
# Structured observations and previous action/reward inputs.
# ---------------------------------------------------------------------------------------------

TINY = {"lstm_cell_size": 8, "fcnet_hiddens": [8], "max_seq_len": 4}
PREV_INPUTS = {"lstm_use_prev_action": True, "lstm_use_prev_reward": True}


class _DictObsEnv(gym.Env):
    """Name the cue of step 0 at step 3: a Dict of every leaf kind the module one-hot encodes.

    ``env_config["noise_size"]`` (default 2) changes one Box's shape, for the mismatch test.
    """

    def __init__(self, config: Any = None) -> None:
        noise = int((config or {}).get("noise_size", 2))
        self.observation_space = gym.spaces.Dict(
            {
                "cue": gym.spaces.Discrete(4),  # cues 0-2, blank 3
                "noise": gym.spaces.Box(-1.0, 1.0, (noise,), np.float32),
                "flags": gym.spaces.Tuple(
                    (gym.spaces.MultiBinary(2), gym.spaces.MultiDiscrete([2, 3]))
                ),
            }
        )
        self.action_space = gym.spaces.Discrete(3)

    def _obs(self) -> dict[str, Any]:
        noise = self.observation_space["noise"]
        return {
            "cue": np.int64(self._cue if self._t == 0 else 3),
            "noise": self.np_random.uniform(-1, 1, noise.shape).astype(np.float32),
            "flags": (
                np.array([self._t % 2, self._t == 3], dtype=np.int8),
                np.array([self._t % 2, self._t % 3], dtype=np.int64),
            ),
        }

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self._cue, self._t = int(self.np_random.integers(3)), 0
        return self._obs(), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        done = self._t == 3
        reward = float(done and int(action) == self._cue)
        self._t += 1
        return self._obs(), reward, done, False, {}


def _train_and_save(config: DRQNConfig, path: Path) -> Path:
    algo = config.build_algo()
    try:
        for _ in range(2):
            algo.train()
        return Path(algo.save_to_path(path))
    finally:
        algo.stop()


def _tiny_drqn(env: Any, env_config: dict[str, Any], **model_config: Any) -> DRQNConfig:
    return (
        DRQNConfig()
        .environment(env, env_config=env_config)
        .env_runners(num_env_runners=0)
        .training(num_steps_sampled_before_learning_starts=32, num_sequences_per_batch=4)
        .rl_module(model_config={**TINY, **model_config})
        .reporting(min_sample_timesteps_per_iteration=64)
        .debugging(seed=0)
    )


@pytest.fixture(scope="module")
def structured_checkpoints(
    ray_session: None, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """A Dict-observation checkpoint and a Discrete one (DelayedRecall) with prev inputs."""
    root = tmp_path_factory.mktemp("structured")
    return {
        "dict": _train_and_save(_tiny_drqn(_DictObsEnv, {}), root / "dict"),
        "delayed_recall": _train_and_save(
            _tiny_drqn("DelayedRecall", {"delay": 2}, **PREV_INPUTS), root / "delayed_recall"
        ),
    }


@pytest.mark.parametrize("name", ["dict", "delayed_recall"])
def test_structured_observation_checkpoints_evaluate(
    structured_checkpoints: dict[str, Path], tmp_path: Path, no_ray: None, name: str
) -> None:
    spec = inspect_checkpoint(structured_checkpoints[name])
    module = load_module(spec)
    assert not isinstance(module.observation_space, gym.spaces.Box)
    # A module with prev inputs raises without their columns: that it plays shows they came.
    assert module.uses_prev_action == module.uses_prev_reward == (name == "delayed_recall")
    report = evaluate(spec, [0.0], 4, epsilon=0.2, out_dir=tmp_path / "first")
    again = evaluate(spec, [0.0], 4, epsilon=0.2, out_dir=tmp_path / "again")
    (result,) = report.results
    assert result.episodes == 4 and set(result.returns) <= {0.0, 1.0}  # 1 for naming the cue
    assert again.results == report.results
    rows, document = _read_outputs(tmp_path / "first")
    assert [row["flicker_prob"] for row in rows] == ["0.0"] and document["results"][0]["returns"]


def test_evaluate_command_plays_a_prev_inputs_checkpoint(
    structured_checkpoints: dict[str, Path], workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = structured_checkpoints["delayed_recall"]
    assert main(["evaluate", str(checkpoint), "--flicker-probs", "0", "--episodes", "3"]) == 0
    assert "over 3 episodes" in capsys.readouterr().out
    _expect_error(
        [str(checkpoint), "--flicker-probs", "0,0.5", "--episodes", "1", "--out", "flicker"],
        "flicker_prob=0.5",
        "Discrete(4)",
        "only Box observations can flicker",
        "pass --flicker-probs 0",
        capsys=capsys,
    )
    assert not (workdir / "flicker").exists()


@pytest.mark.parametrize(
    ("name", "env_config", "match"),
    [
        ("dict", {"noise_size": 3}, r"\(shape \(3,\) != \(2,\) at noise\)"),
        ("delayed_recall", {"delay": 2, "num_cues": 3}, r"\(Discrete\(5\) != Discrete\(4\)\)"),
    ],
)
def test_env_that_does_not_fit_the_module_raises(
    structured_checkpoints: dict[str, Path],
    tmp_path: Path,
    name: str,
    env_config: dict[str, Any],
    match: str,
) -> None:
    spec = dataclasses.replace(
        inspect_checkpoint(structured_checkpoints[name]), env_config=env_config
    )
    with pytest.raises(EvaluationError, match=f"{match}; the checkpoint is inconsistent"):
        evaluate(spec, [0.0], 1, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


class _ScriptedEnv(gym.Env):
    """Ignores its seed, so the env runner and ``play_episodes`` play the same episodes."""

    def __init__(self, config: Any = None) -> None:
        self.observation_space = gym.spaces.Dict(
            {"t": gym.spaces.Discrete(6), "last": gym.spaces.MultiBinary(3)}
        )
        self.action_space = gym.spaces.Discrete(3)

    def _obs(self, action: int) -> dict[str, Any]:
        last = np.zeros(3, np.int8)
        if action >= 0:
            last[action] = 1
        return {"t": np.int64(self._t), "last": last}

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self._t = 0
        return self._obs(-1), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        self._t += 1
        reward = 0.25 * self._t + float(action)  # Every step's reward differs.
        return self._obs(int(action)), reward, self._t == 5, False, {}


def _recording(module: DRQNTorchRLModule) -> list[dict[str, Any]]:
    """Makes ``module.forward_inference`` keep every batch it is given; returns the list."""
    batches: list[dict[str, Any]] = []
    forward = module.forward_inference

    def spy(batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        batches.append(batch)
        return forward(batch, **kwargs)

    module.forward_inference = spy
    return batches


@pytest.mark.usefixtures("ray_session")
def test_play_episodes_feeds_the_env_runners_module_inputs() -> None:
    from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

    config = _tiny_drqn(_ScriptedEnv, {}, **PREV_INPUTS)
    config.validate()
    runner = SingleAgentEnvRunner(config=config)
    try:
        module = runner.module
        acted = _recording(module)
        episodes = runner.sample(num_episodes=2, explore=False)
    finally:
        runner.stop()
    assert [len(episode) for episode in episodes] == [5, 5]
    played = _recording(module)
    env = _ScriptedEnv()
    returns = play_episodes(module, env, 2, epsilon=0.0, seed=0)
    assert returns == [float(sum(episode.get_rewards())) for episode in episodes]
    # The runner also runs the module on each terminal observation (t == 5; gymnasium's
    # NEXT_STEP autoreset discards that action), which no acting step corresponds to.
    acted = [batch for batch in acted if int(batch[Columns.OBS]["t"]) != 5]
    assert len(played) == 10 and len(acted) >= 10
    for step, (ours, theirs) in enumerate(zip(played, acted[:10], strict=False)):
        assert set(ours) == set(theirs), step
        for key in (Columns.OBS, PREV_ACTIONS, PREV_REWARDS, Columns.STATE_IN):
            for mine, runners in zip(
                tree.flatten(ours[key]), tree.flatten(theirs[key]), strict=True
            ):
                assert mine.dtype == runners.dtype and mine.shape == runners.shape, (step, key)
                torch.testing.assert_close(mine, runners, msg=f"step {step}, {key}")
    # The first step of each episode: no previous action (-1) and reward 0, as in training.
    for start in (0, 5):
        assert int(played[start][PREV_ACTIONS]) == -1 and float(played[start][PREV_REWARDS]) == 0
    assert float(played[3][PREV_REWARDS]) == 0.75 + float(played[3][PREV_ACTIONS])
