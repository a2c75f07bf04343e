"""Long runs survive: ``rllib train file`` killed, signalled and resumed, as a user would do it.

Each run is a subprocess in its own process group with its own Ray instance (a SIGKILL of the
group takes Ray's workers with it, as a preempted machine does). Training is tiny
(StatelessCartPole, LSTM(8), 100 env steps an iteration, a checkpoint every iteration), so
each command takes tens of seconds, most of it Ray's start.

What a resume must show, measured from the outside: the first iteration after it continues the
counters of the checkpoint it restored (iteration + 1, more env steps), and the replay in the
first checkpoint after it holds the restored replay plus the steps sampled since (a replay
that was not restored would hold only the latter).
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

from rllib_drqn import cli
from rllib_drqn.cli import main
from rllib_drqn.cli.run import EXIT_INTERRUPTED, RUN_FILE, SNAPSHOT_PERIOD_S, RunSettings
from rllib_drqn.resumable import REPLAY_STATE_KEY

REPO = Path(__file__).resolve().parents[1]
# Large enough that a run cannot finish in the seconds between the checkpoint a test waits for
# and its kill (on idle cores an iteration takes well under a second; 1,500 steps once did).
STEP_BUDGET = 4000
STEPS_PER_ITERATION = 100

EXPERIMENT = textwrap.dedent(
    f"""\
    long-run:
      run: DRQN
      env: StatelessCartPole
      stop: {{num_env_steps_sampled_lifetime: {STEP_BUDGET}}}
      config:
        num_env_runners: 0
        rollout_fragment_length: 16
        num_sequences_per_batch: 4
        num_steps_sampled_before_learning_starts: 64
        min_sample_timesteps_per_iteration: {STEPS_PER_ITERATION}
        seed: 0
        model_config: {{lstm_cell_size: 8, fcnet_hiddens: [8], max_seq_len: 5}}
    """
)

RESUMING = re.compile(
    r"^Resuming (?P<dir>\S+) from (?P<checkpoint>\S+) \(iteration (?P<iteration>\d+), "
    r"(?P<steps>[\d,]+) env steps\)",
    re.M,
)
ITERATION = re.compile(r"^iter +(?P<iteration>\d+) \| env steps +(?P<steps>[\d,]+) \|", re.M)


def fresh_process_env() -> dict[str, str]:
    """A new session's environment: its own Ray instance, single-threaded torch."""
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def start(tmp_path: Path, yaml_file: Path, *extra: str) -> tuple[subprocess.Popen[str], Path]:
    """Starts ``rllib train file`` in its own process group; its output goes to a log file."""
    log = tmp_path / f"run-{time.monotonic_ns()}.log"
    command = [sys.executable, "-m", "rllib_drqn", "train", "file", str(yaml_file)]
    # Every checkpoint is kept, so that the test can read the ones it compares after the fact.
    command += ["--checkpoint-freq", "1", "--keep", "1000"]
    command += ["--storage-path", str(tmp_path / "results"), *extra]
    process = subprocess.Popen(
        command,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        env=fresh_process_env(),
        start_new_session=True,  # Its own process group, killed as a whole below.
    )
    return process, log


def checkpoints(tmp_path: Path) -> list[Path]:
    """Every checkpoint directory, oldest first, whose state file is complete."""
    found = (tmp_path / "results").glob("long-run*/*/checkpoint_*/rllib_checkpoint.json")
    return sorted(file.parent for file in found)


def wait_until(process: subprocess.Popen[str], log: Path, ready: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            pytest.fail(f"the run exited ({process.returncode}) early:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"timed out:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)


def kill_group(process: subprocess.Popen[str]) -> None:
    os.killpg(process.pid, signal.SIGKILL)  # The driver, Ray's raylet, GCS and the trial.
    process.wait(timeout=60)


def replay_steps(checkpoint: Path) -> tuple[int, int]:
    """(training iteration, env steps in the stored replay) of a checkpoint."""
    with (checkpoint / "algorithm_state.pkl").open("rb") as stream:
        state = pickle.load(stream)
    return int(state["training_iteration"]), int(state[REPLAY_STATE_KEY]["_num_timesteps"])


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``directory`` with its size and mtime: proof that nothing changed."""
    return {
        str(path.relative_to(directory)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def check_resume(output: str) -> tuple[Path, int, int, int, int]:
    """The restored checkpoint's counters and the first iteration's after it, checked."""
    match = RESUMING.search(output)
    assert match, output[-4000:]
    checkpoint = Path(match["checkpoint"])
    iteration, steps = int(match["iteration"]), int(match["steps"].replace(",", ""))
    first = next(ITERATION.finditer(output, match.end()))
    next_iteration, next_steps = int(first["iteration"]), int(first["steps"].replace(",", ""))
    print(
        f"restored {checkpoint.name}: iteration {iteration}, {steps} env steps; first "
        f"iteration after the resume: {next_iteration}, {next_steps} env steps"
    )
    assert next_iteration == iteration + 1
    assert next_steps > steps
    return checkpoint, iteration, steps, next_iteration, next_steps


def resume_to_the_end(tmp_path: Path, yaml_file: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "rllib_drqn", "train", "file", str(yaml_file), "--resume"]
    command += ["--checkpoint-freq", "1", "--storage-path", str(tmp_path / "results")]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=fresh_process_env()
    )


@pytest.fixture
def yaml_file(tmp_path: Path) -> Path:
    path = tmp_path / "long_run.yaml"
    path.write_text(EXPERIMENT, encoding="utf-8")
    return path


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fails the test if anything would start Ray or train."""

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("a bad input reached Ray")

    monkeypatch.setattr(ray, "init", fail)
    monkeypatch.setattr(cli.run, "train", fail)
    yield


def test_sigkilled_run_resumes_twice_with_its_counters_and_replay(
    tmp_path: Path, yaml_file: Path
) -> None:
    # 1. Killed (the whole process group) after its second checkpoint.
    process, log = start(tmp_path, yaml_file)
    wait_until(process, log, lambda: len(checkpoints(tmp_path)) >= 2, timeout=420)
    time.sleep(2 * float(SNAPSHOT_PERIOD_S))  # Tune records it in its state within a second.
    kill_group(process)

    # 2. Resumed, and killed again once it has saved a new checkpoint.
    saved_before = set(checkpoints(tmp_path))
    process, log = start(tmp_path, yaml_file, "--resume")
    wait_until(process, log, lambda: ITERATION.search(log.read_text()), timeout=420)
    wait_until(
        process, log, lambda: len(set(checkpoints(tmp_path)) - saved_before) >= 1, timeout=300
    )
    time.sleep(2 * float(SNAPSHOT_PERIOD_S))
    kill_group(process)
    output = log.read_text()
    restored, iteration, steps, next_iteration, next_steps = check_resume(output)
    restored_iteration, restored_replay = replay_steps(restored)
    (new,) = [c for c in checkpoints(tmp_path) if replay_steps(c)[0] == next_iteration][:1]
    new_replay = replay_steps(new)[1]
    print(
        f"replay: {restored_replay} env steps in {restored.name}, {new_replay} in {new.name} "
        f"({next_steps - steps} sampled since)"
    )
    assert restored_iteration == iteration
    assert restored_replay == steps  # Nothing evicted yet: the replay holds every step.
    assert new_replay == restored_replay + (next_steps - steps)

    # 3. Resumed again: it runs to its stop criterion.
    completed = resume_to_the_end(tmp_path, yaml_file)
    output = completed.stdout
    assert completed.returncode == 0, (output + completed.stderr)[-4000:]
    _, iteration, steps, _, _ = check_resume(output)
    assert iteration >= next_iteration
    assert "reached: ['num_env_steps_sampled_lifetime']" in output
    assert f"tensorboard --logdir {tmp_path / 'results'}" in output
    # RLlib's noise is silenced in the CLI's output (and only there).
    assert "RLModule(config=" not in output + completed.stderr
    assert "Install gputil" not in output + completed.stderr

    # 4. A finished run is not resumed, and nothing in it changes.
    experiment_dir = Path(RESUMING.search(output)["dir"])
    before = snapshot(experiment_dir)
    assert main(["train", "file", str(yaml_file), "--resume", str(experiment_dir)]) == 2
    assert snapshot(experiment_dir) == before


def test_sigterm_saves_a_checkpoint_and_resume_skips_a_truncated_one(
    tmp_path: Path, yaml_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    process, log = start(tmp_path, yaml_file)
    wait_until(process, log, lambda: len(checkpoints(tmp_path)) >= 1, timeout=420)
    saved_before = set(checkpoints(tmp_path))
    process.send_signal(signal.SIGTERM)  # The driver only, as `kill PID` does.
    assert process.wait(timeout=300) == EXIT_INTERRUPTED, log.read_text()[-4000:]
    output = log.read_text()
    print(output[-2000:])
    saved = re.search(
        r"^Stopped by SIGTERM; checkpoint (\S+)\. Resume with:\n +(.+)$", output, re.M
    )
    assert saved, output[-4000:]
    checkpoint = Path(saved[1])
    assert checkpoint in set(checkpoints(tmp_path)) - saved_before
    assert f"--resume {checkpoint.parent.parent}" in saved[2]

    # A save cut off mid-write: a newer checkpoint directory with a truncated state file.
    truncated = checkpoint.with_name(f"checkpoint_{int(checkpoint.name[11:]) + 1:06d}")
    shutil.copytree(checkpoint, truncated)
    state_file = truncated / "algorithm_state.pkl"
    state_file.write_bytes(state_file.read_bytes()[: state_file.stat().st_size // 2])

    # A YAML that changed since the start is refused, and nothing is written.
    experiment_dir = checkpoint.parent.parent
    before = snapshot(tmp_path / "results")
    changed = tmp_path / "changed.yaml"
    changed.write_text(EXPERIMENT.replace("seed: 0", "seed: 1"), encoding="utf-8")
    assert main(["train", "file", str(changed), "--resume", str(experiment_dir)]) == 2
    assert "changed since the run" in capsys.readouterr().err
    assert snapshot(tmp_path / "results") == before

    completed = resume_to_the_end(tmp_path, yaml_file)
    output = completed.stdout
    assert completed.returncode == 0, (output + completed.stderr)[-4000:]
    assert f"Skipping {truncated.name}" in output
    restored, *_ = check_resume(output)
    assert restored == checkpoint
    assert "reached: ['num_env_steps_sampled_lifetime']" in output


@pytest.mark.parametrize(
    ("make_dir", "expected"),
    [
        (lambda root: root / "nowhere", "no such directory"),
        (lambda root: root, "not an experiment directory"),
        (lambda root: _trial_dir(root), "a trial directory; pass its parent"),
        (lambda root: _tune_dir(root), "not started by `rllib train file`"),
    ],
    ids=["missing", "empty_dir", "trial_dir", "foreign_tune_experiment"],
)
def test_resume_of_a_directory_that_is_no_run_says_what_to_pass(
    tmp_path: Path,
    yaml_file: Path,
    no_ray: None,
    capsys: pytest.CaptureFixture[str],
    make_dir: Any,
    expected: str,
) -> None:
    root = tmp_path / "dir"
    root.mkdir()
    directory = make_dir(root)
    before = snapshot(tmp_path)
    assert main(["train", "file", str(yaml_file), "--resume", str(directory)]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.startswith("rllib: error: --resume")
    assert snapshot(tmp_path) == before


def test_resume_without_a_run_of_that_name(
    tmp_path: Path, yaml_file: Path, no_ray: None, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = tmp_path / "results"
    assert main(["train", "file", str(yaml_file), "--resume", "--storage-path", str(storage)]) == 2
    assert "no experiment 'long-run' under" in capsys.readouterr().err
    assert not storage.exists()


def test_resume_before_any_state_was_saved(
    tmp_path: Path, yaml_file: Path, no_ray: None, capsys: pytest.CaptureFixture[str]
) -> None:
    experiment_dir = tmp_path / "results" / "long-run"
    experiment_dir.mkdir(parents=True)
    settings = RunSettings(EXPERIMENT, {"num_env_steps_sampled_lifetime": STEP_BUDGET}, None, None)
    (experiment_dir / RUN_FILE).write_text(settings.to_json(), encoding="utf-8")
    before = snapshot(tmp_path)
    assert main(["train", "file", str(yaml_file), "--resume", str(experiment_dir)]) == 2
    assert "before Tune saved any state" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def _trial_dir(root: Path) -> Path:
    trial = root / "DRQN_StatelessCartPole_0"
    (trial / "checkpoint_000000").mkdir(parents=True)
    (trial / "params.json").write_text("{}", encoding="utf-8")
    return trial


def _tune_dir(root: Path) -> Path:
    (root / "tuner.pkl").write_bytes(b"")
    return root
