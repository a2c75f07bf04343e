"""Bad inputs, one table: config, env_config, YAML files, command-line arguments, checkpoints.

Every row is a mistake a user makes (a typo, a value out of range, the wrong directory, a
damaged or foreign checkpoint). Each must fail at once with a message that names the bad
value and says what to do instead, without starting Ray or training, and without touching
anything already saved: a ``keep.txt``, an earlier run under ``results/`` and the inputs
themselves (checkpoints included) are compared file by file, size and mtime, before and after.

The categories also covered by ``test_config.py`` and ``test_cli.py`` (unknown keys, update
modes, envs, old-API-stack keys, YAML syntax, stop keys) are not repeated here: these are
other values of the same inputs, and the checkpoint loader's errors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import pickle
import re
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import ray
import torch
from ray.rllib.algorithms.algorithm import Algorithm

from rllib_drqn import DRQN, DRQNConfig, DRQNTorchRLModule, cli
from rllib_drqn.checkpoints import load_algorithm
from rllib_drqn.config import PRIORITIZED_REPLAY_BUFFER_TYPE
from rllib_drqn.envs import make_stateless_cartpole

torch.set_num_threads(1)

TINY_MODEL = {"lstm_cell_size": 8, "fcnet_hiddens": [8], "max_seq_len": 5}
MODULE_DIR = Path("learner_group/learner/rl_module/default_policy")

#: A case writes its inputs under tmp_path and returns the attempt, which returns the error
#: text (an exception's "Type: message", or the command's stderr after exit status 2).
Prepare = Callable[[Path], Callable[[], str]]


@dataclasses.dataclass(frozen=True)
class BadInput:
    id: str
    prepare: Prepare
    #: Must match the error text: the bad value and the fix.
    match: str


# ---------------------------------------------------------------------------------------------
# How each kind of input is tried.
# ---------------------------------------------------------------------------------------------


def _raised(action: Callable[[], object]) -> str:
    try:
        action()
    except (ValueError, TypeError, FileNotFoundError) as error:
        return f"{type(error).__name__}: {error}"
    pytest.fail("the bad input was accepted")


def config(change: Callable[[DRQNConfig], DRQNConfig]) -> Prepare:
    """``change`` applied to a valid StatelessCartPole config; ``validate()`` must refuse it."""
    base = DRQNConfig().environment("StatelessCartPole").rl_module(model_config=TINY_MODEL)
    return lambda tmp: lambda: _raised(lambda: change(base.copy(copy_frozen=False)).validate())


def atari_env_config(env_config: Any) -> Prepare:
    def prepare(tmp: Path) -> Callable[[], str]:
        built = DRQNConfig().environment("FlickeringAtari", env_config=env_config)
        return lambda: _raised(built.validate)

    return prepare


def cartpole_env_config(env_config: Any) -> Prepare:
    return lambda tmp: lambda: _raised(lambda: make_stateless_cartpole(env_config))


def _run_cli(argv: list[str]) -> str:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = cli.main(argv)
        except SystemExit as exit_:  # argparse's own errors.
            status = exit_.code
    assert status == 2, f"exit status {status}: {stderr.getvalue()}"
    return stderr.getvalue()


def command(*argv: str, files: dict[str, str] | None = None) -> Prepare:
    """``rllib *argv``; ``{tmp}`` in an argument is the test's directory."""

    def prepare(tmp: Path) -> Callable[[], str]:
        for name, text in (files or {}).items():
            (tmp / name).write_text(textwrap.dedent(text))
        return lambda: _run_cli([arg.format(tmp=tmp) for arg in argv])

    return prepare


def yaml_file(text: str, *extra: str) -> Prepare:
    """``rllib train file exp.yaml`` with ``text``, results going to the existing results/."""
    return command(
        "train",
        "file",
        "{tmp}/exp.yaml",
        "--storage-path",
        "{tmp}/results",
        *extra,
        files={"exp.yaml": text},
    )


def write_checkpoint(path: Path, *, env: str = "StatelessCartPole") -> Path:
    """The files ``Algorithm.save_to_path`` writes that matter for loading, without Ray.

    The module is a real ``DRQNTorchRLModule`` saved by RLlib, the algorithm config is a real
    ``DRQNConfig`` state; only the learner's optimizer and the env runner state are left out.
    """
    config = DRQNConfig().environment(env).rl_module(model_config=TINY_MODEL)
    module = DRQNTorchRLModule(
        observation_space=gym.spaces.Box(-np.inf, np.inf, (2,), np.float32),
        action_space=gym.spaces.Discrete(2),
        model_config=config.model_config,
    )
    module.save_to_path(path / MODULE_DIR)
    (path / "rllib_checkpoint.json").write_text(
        json.dumps(
            {
                "class_and_ctor_args_file": "class_and_ctor_args.pkl",
                "state_file": "algorithm_state",
                "ray_version": ray.__version__,
                "checkpoint_version": "2.1",
            }
        )
    )
    with (path / "class_and_ctor_args.pkl").open("wb") as stream:
        pickle.dump({"class": DRQN, "ctor_args_and_kwargs": ((config.get_state(),), {})}, stream)
    with (path / "algorithm_state.pkl").open("wb") as stream:
        pickle.dump({"training_iteration": 3}, stream)
    return path


def checkpoint(
    damage: Callable[[Path], Any] = lambda path: path, *, env: str = "StatelessCartPole"
) -> Prepare:
    """``load_algorithm`` on a checkpoint after ``damage``, which returns the path to load."""

    def prepare(tmp: Path) -> Callable[[], str]:
        target = damage(write_checkpoint(tmp / "checkpoint", env=env))
        return lambda: _raised(lambda: load_algorithm(target))

    return prepare


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def _replace_bytes(file: Path, old: bytes, new: bytes) -> None:
    data = file.read_bytes()
    assert old in data and len(old) == len(new)  # Same length: the pickle stays well-formed.
    file.write_bytes(data.replace(old, new))


def _tune_trial_dir(path: Path) -> Path:
    trial = path.parent / "DRQN_StatelessCartPole_00000"
    trial.mkdir()
    path.rename(trial / "checkpoint_000001")
    (trial / "checkpoint_000000").mkdir()
    return trial


def _set_version(path: Path, version: str) -> Path:
    metadata = json.loads((path / "rllib_checkpoint.json").read_text())
    (path / "rllib_checkpoint.json").write_text(
        json.dumps(metadata | {"checkpoint_version": version})
    )
    return path


def _module_class_moved(path: Path) -> Path:
    # As if the checkpoint came from a package (or version) this machine does not have.
    _replace_bytes(
        path / MODULE_DIR / "class_and_ctor_args.pkl", b"rllib_drqn.module", b"rllib_gone.module"
    )
    return path


def _algorithm_class_renamed(path: Path) -> Path:
    _replace_bytes(
        path / "class_and_ctor_args.pkl", b"\x94\x8c\x04DRQN\x94", b"\x94\x8c\x04DRQX\x94"
    )
    return path


def _without(relative: str) -> Callable[[Path], Path]:
    def damage(path: Path) -> Path:
        import shutil

        target = path / relative
        shutil.rmtree(target) if target.is_dir() else target.unlink()
        return path

    return damage


def _then(*steps: Callable[[Path], Any]) -> Callable[[Path], Path]:
    def damage(path: Path) -> Path:
        for step in steps:
            step(path)
        return path

    return damage


EXPERIMENT = """\
    drqn:
      run: DRQN
      env: StatelessCartPole
      stop: {training_iteration: 1}
      config: {num_env_runners: 0}
    """


def experiment(**replace: str) -> str:
    """EXPERIMENT with whole lines replaced, e.g. ``stop="stop: {}"``."""
    lines = textwrap.dedent(EXPERIMENT).splitlines()
    for key, line in replace.items():
        lines = [f"  {line}" if row.strip().startswith(f"{key}:") else row for row in lines]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# The table.
# ---------------------------------------------------------------------------------------------

BAD_INPUTS = [
    # --- config: DRQNConfig settings, refused by validate() ---------------------------------
    BadInput(
        "config-num_sequences_per_batch-bool",
        config(lambda c: c.training(num_sequences_per_batch=True)),
        r"num_sequences_per_batch must be a positive int, got True",
    ),
    BadInput(
        "config-burn_in_len-negative",
        config(lambda c: c.training(burn_in_len=-1)),
        r"burn_in_len must be an int >= 0, got -1; set config\.training\(burn_in_len=0\)",
    ),
    BadInput(
        "config-prioritized-replay-with-sequential",
        config(
            lambda c: c.training(
                update_mode="sequential",
                replay_buffer_config={"type": PRIORITIZED_REPLAY_BUFFER_TYPE},
            )
        ),
        r"update_mode='sequential'.*Use update_mode='random' or 'stored'",
    ),
    BadInput(
        "config-noisy",
        config(lambda c: c.training(noisy=True)),
        r"noisy=True\. Set config\.training\(num_atoms=1, noisy=False\)",
    ),
    BadInput(
        "config-update_mode-none",
        config(lambda c: c.training(update_mode=None)),
        r"Unknown update_mode None; use one of \['random', 'sequential', 'stored'\]",
    ),
    BadInput(
        "config-lstm_cell_size-zero",
        config(lambda c: c.rl_module(model_config={**TINY_MODEL, "lstm_cell_size": 0})),
        r"model_config\['lstm_cell_size'\] must be a positive int, got 0\. Set e\.g\. "
        r"model_config=\{'lstm_cell_size': 512\}",
    ),
    BadInput(
        "config-activation-typo",
        config(lambda c: c.rl_module(model_config={**TINY_MODEL, "fcnet_activation": "sigmoid"})),
        r"'sigmoid' is not one of \['elu', 'relu', 'tanh'\]",
    ),
    # --- env_config: FlickeringAtari and StatelessCartPole keys ------------------------------
    BadInput(
        "env_config-atari-flicker_prob-above-1",
        atari_env_config({"game": "Pong", "flicker_prob": 1.5}),
        r"flicker_prob must be a real number in \[0, 1\], got 1\.5.*0\.5 as in Hausknecht",
    ),
    BadInput(
        "env_config-atari-frame_stack-zero",
        atari_env_config({"game": "Pong", "frame_stack": 0}),
        r"frame_stack must be an integer >= 1, got 0.*Set frame_stack to 1 for DRQN",
    ),
    BadInput(
        "env_config-atari-no-game",
        atari_env_config({"flicker_prob": 0.5}),
        r"has no 'game'\. Set it, e\.g\. env_config=\{'game': 'Pong'\}",
    ),
    BadInput(
        "env_config-atari-sticky-actions-bool",
        atari_env_config({"game": "Pong", "repeat_action_probability": True}),
        r"repeat_action_probability must be a real number in \[0, 1\], got True.*0\.25",
    ),
    BadInput(
        "env_config-atari-max_episode_steps-zero",
        atari_env_config({"game": "Pong", "max_episode_steps": 0}),
        r"max_episode_steps must be an integer >= 1, got 0.*or None",
    ),
    BadInput(
        "env_config-cartpole-unknown-key",
        cartpole_env_config({"flicker": 0.5}),
        r"key\(s\) \['flicker'\].*'flicker_prob'",
    ),
    BadInput(
        "env_config-cartpole-flicker_prob-negative",
        cartpole_env_config({"flicker_prob": -0.1}),
        r"flicker_prob must be a real number in \[0, 1\], got -0\.1.*Set flicker_prob",
    ),
    BadInput(
        "env_config-cartpole-not-a-dict",
        cartpole_env_config("0.5"),
        r"env_config must be a dict.*got '0\.5' \(str\)\. Pass \{\} or e\.g\.",
    ),
    # --- YAML files: `rllib train file exp.yaml` -----------------------------------------------
    BadInput(
        "yaml-config-is-a-list",
        yaml_file(experiment(config="config: [lr, 0.001]")),
        r"config must be a mapping, got \['lr', 0\.001\] \(list\)",
    ),
    BadInput(
        "yaml-experiment-name-with-slash",
        yaml_file(experiment().replace("drqn:", "runs/drqn:", 1)),
        r"experiment name 'runs/drqn' must be a non-empty string without slashes",
    ),
    BadInput(
        "yaml-env-set-twice",
        yaml_file(experiment(config="config: {env: CartPole-v1}")),
        r"env is set twice, to 'StatelessCartPole' and to config\.env 'CartPole-v1'; keep one",
    ),
    BadInput(
        "yaml-old-checkpoint_freq-key",
        yaml_file(experiment() + "  checkpoint_freq: 5\n"),
        r"experiment key 'checkpoint_freq' is not read here; pass --checkpoint-freq N",
    ),
    BadInput(
        "yaml-stop-value-not-a-number",
        yaml_file(experiment(stop="stop: {training_iteration: five}")),
        r"stop value for 'training_iteration' must be a number, got 'five' \(str\)",
    ),
    BadInput(
        "yaml-no-stop-criterion",
        yaml_file(experiment(stop="stop: {}")),
        r"no stop criterion: training would never end\. Add stop: \{\.\.\.\}",
    ),
    BadInput(
        "yaml-model_config-is-a-list",
        yaml_file(experiment(config="config: {model_config: [32]}")),
        r"model_config must be a mapping, got \[32\] \(list\); write e\.g\. model_config: \{",
    ),
    BadInput(
        "yaml-no-run",
        yaml_file(experiment(run="# run: DRQN")),
        r"experiment 'drqn' has no 'run'; set run: DRQN",
    ),
    BadInput(
        "yaml-path-is-a-directory",
        command("train", "file", "{tmp}/results"),
        r"results: not a file; pass the path of an experiment YAML file",
    ),
    BadInput(
        "yaml-batch-in-sequences-zero",
        yaml_file(experiment(config="config: {num_sequences_per_batch: 0}")),
        r"num_sequences_per_batch must be a positive int, got 0",
    ),
    # --- command-line arguments ------------------------------------------------------------------
    BadInput(
        "cli-stop-not-an-object",
        yaml_file(EXPERIMENT, "--stop", "[1, 2]"),
        r"--stop must be a JSON object, got \[1, 2\] \(list\); pass e\.g\.",
    ),
    BadInput(
        "cli-num-gpus-nan",
        yaml_file(EXPERIMENT, "--num-gpus-per-learner", "nan"),
        r"expected a number >= 0, got 'nan'",
    ),
    BadInput(
        "cli-checkpoint-freq-not-an-int",
        yaml_file(EXPERIMENT, "--checkpoint-freq", "2.5"),
        r"expected an integer >= 0, got '2\.5'",
    ),
    BadInput(
        "cli-storage-path-under-a-file",
        yaml_file(EXPERIMENT, "--storage-path", "{tmp}/keep.txt/results"),
        r"keep\.txt/results': cannot create it \(Not a directory\); pass a writable directory",
    ),
    BadInput(
        "cli-subcommand-typo",
        command("trian", "file", "{tmp}/exp.yaml"),
        r"invalid choice: 'trian' \(choose from .*train",
    ),
    BadInput(
        "cli-evaluate-flicker-prob-above-1",
        command("evaluate", "{tmp}/results", "--flicker-probs", "0,1.5", "--episodes", "1"),
        r"--flicker-probs: '1\.5' is not a probability in \[0, 1\].*0,0\.5,1",
    ),
    BadInput(
        "cli-evaluate-out-inside-the-checkpoint",
        lambda tmp: (
            write_checkpoint(tmp / "checkpoint"),
            command(
                "evaluate",
                "{tmp}/checkpoint",
                "--flicker-probs",
                "0",
                "--episodes",
                "1",
                "--out",
                "{tmp}/checkpoint/evaluation",
            )(tmp),
        )[1],
        r"--out .*checkpoint/evaluation lies inside the checkpoint.*Pass a directory outside",
    ),
    # --- checkpoints: rllib_drqn.checkpoints.load_algorithm -------------------------------------
    BadInput(
        "checkpoint-missing",
        checkpoint(lambda path: path.parent / "checkpoint_000009"),
        r"FileNotFoundError: checkpoint '.*checkpoint_000009' does not exist; pass a directory "
        r"written by Algorithm\.save_to_path\(\)",
    ),
    BadInput(
        "checkpoint-a-file-inside-it",
        checkpoint(lambda path: path / "algorithm_state.pkl"),
        r"'.*algorithm_state\.pkl' is a file, not a directory; pass its directory '.*checkpoint'",
    ),
    BadInput(
        "checkpoint-tune-trial-directory",
        checkpoint(_tune_trial_dir),
        r"'.*DRQN_StatelessCartPole_00000' is not a checkpoint but holds 2.*pass one of them, "
        r"e\.g\. the latest '.*checkpoint_000001'",
    ),
    BadInput(
        "checkpoint-rlmodule-instead-of-algorithm",
        checkpoint(lambda path: path / MODULE_DIR),
        r"default_policy' is an RLModule checkpoint.*RLModule\.from_checkpoint\(path\)",
    ),
    BadInput(
        "checkpoint-truncated-state",
        checkpoint(_then(lambda path: _truncate(path / "algorithm_state.pkl"))),
        r"'.*checkpoint' is corrupt: algorithm_state\.pkl cannot be read.*pass an earlier one",
    ),
    BadInput(
        "checkpoint-truncated-weights",
        checkpoint(_then(lambda path: _truncate(path / MODULE_DIR / "module_state.pkl"))),
        r"is corrupt: learner_group/learner/rl_module/default_policy/module_state\.pkl cannot "
        r"be read",
    ),
    BadInput(
        "checkpoint-corrupt-metadata",
        checkpoint(_then(lambda path: (path / "rllib_checkpoint.json").write_text("{'chec"))),
        r"is corrupt: rllib_checkpoint\.json is not RLlib's metadata.*pass a directory",
    ),
    BadInput(
        "checkpoint-old-api-stack-version",
        checkpoint(lambda path: _set_version(path, "1.1")),
        r"has version 1\.1, the old API stack's.*Retrain, or restore it with the Ray version",
    ),
    BadInput(
        "checkpoint-without-weights",
        checkpoint(_without("learner_group")),
        r"is incomplete: it holds no weights.*RLlib would restore it with random ones",
    ),
    BadInput(
        "checkpoint-module-class-not-importable",
        checkpoint(_module_class_moved),
        r"needs rllib_gone\.module\.DRQNTorchRLModule \(in learner_group/.*No module named "
        r"'rllib_gone'.*Install the package that defined it",
    ),
    BadInput(
        "checkpoint-algorithm-class-renamed",
        checkpoint(_algorithm_class_renamed),
        r"needs rllib_drqn\.config\.DRQX \(in class_and_ctor_args\.pkl\).*AttributeError.*"
        r"Install the package that defined it, in the version that wrote the checkpoint",
    ),
    BadInput(
        "checkpoint-env-not-registered",
        checkpoint(env="MyGridWorld-v0"),
        r"trains on env 'MyGridWorld-v0', which is not registered in this process\. Register "
        r"it before loading \(ray\.tune\.registry\.register_env\('MyGridWorld-v0', creator\)\)",
    ),
]

#: Inputs refused by DRQNConfig.validate() in the driver (added after the first table).
KNOWN_GAPS = [
    pytest.param(
        BadInput(
            "config-cartpole-env_config-unknown-key",
            config(lambda c: c.environment("StatelessCartPole", env_config={"flicker": 0.5})),
            r"'flicker'.*'flicker_prob'",
        ),
        id="config-cartpole-env_config-unknown-key",
    ),
    pytest.param(
        BadInput(
            "config-max_seq_len-zero",
            config(lambda c: c.rl_module(model_config={**TINY_MODEL, "max_seq_len": 0})),
            r"max_seq_len.*must be a positive int, got 0",
        ),
        id="config-max_seq_len-zero",
    ),
]


def test_the_table_covers_every_kind_of_input() -> None:
    kinds = {case.id.split("-")[0] for case in BAD_INPUTS}
    assert kinds == {"config", "env_config", "yaml", "cli", "checkpoint"}
    assert len(BAD_INPUTS) >= 20
    assert len({case.id for case in BAD_INPUTS}) == len(BAD_INPUTS)


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {
        str(path.relative_to(directory)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(directory.rglob("*"))
    }


@pytest.fixture
def saved_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An earlier run's files, and a guard that nothing starts Ray, trains or restores."""
    (tmp_path / "keep.txt").write_text("an earlier note")
    earlier = tmp_path / "results" / "drqn" / "DRQN_StatelessCartPole_00000"
    earlier.mkdir(parents=True)
    (earlier / "result.json").write_text('{"training_iteration": 7}\n')
    monkeypatch.chdir(tmp_path)  # Relative defaults (./results, ./evaluation) land here.

    def fail(*args: object, **kwargs: object) -> None:
        pytest.fail("Ray, training or a restore was started before the input was checked")

    was_initialized = ray.is_initialized()
    monkeypatch.setattr(ray, "init", fail)
    monkeypatch.setattr(cli.run, "train", fail)
    monkeypatch.setattr(Algorithm, "from_checkpoint", classmethod(fail))
    yield tmp_path
    assert ray.is_initialized() == was_initialized


@pytest.mark.parametrize(
    "case", [pytest.param(case, id=case.id) for case in BAD_INPUTS] + KNOWN_GAPS
)
def test_bad_input_names_the_value_and_the_fix_and_keeps_saved_work(
    case: BadInput, saved_work: Path
) -> None:
    attempt = case.prepare(saved_work)
    before = snapshot(saved_work)

    message = attempt()

    print(message)
    assert re.search(case.match, message, re.S), message
    assert "Traceback" not in message
    assert snapshot(saved_work) == before, "a file was written, changed or deleted"
    assert (saved_work / "keep.txt").read_text() == "an earlier note"
