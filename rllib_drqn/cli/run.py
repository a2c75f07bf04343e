"""``rllib train file``: one Tune trial, checkpointed by default, resumable, stopped by signals.

Tune does the bookkeeping of a long run: it writes each checkpoint completely before recording
it in the experiment state (``experiment_state-*.json``), keeps the newest ``--keep`` of them
(``CheckpointConfig(num_to_keep=...)``) and, on ``--resume``, restores the unfinished trial
from the newest recorded one (``Tuner.restore(resume_errored=True)``), counters included. This
module adds what Tune cannot know:

- the replay goes into DRQN's checkpoints by default (``store_buffer_in_checkpoints``; see
  ``rllib_drqn.resumable``), so a resumed run is the same run, not a fresh learner;
- ``rllib_run.json`` in the experiment directory records the YAML text and the command-line
  settings, so ``--resume`` refuses a file that changed since the run started;
- SIGINT and SIGTERM ask for a checkpoint at the end of the current iteration, then stop the
  experiment resumably and print the command that resumes it; a second Ctrl-C stops at once;
- one progress line per iteration with env steps/s, the mean return of the last
  ``episode_return_window`` episodes (``env_runners/episode_return_window_mean``, the key the
  tuned examples stop on) and an ETA to the step budget.

Exit status (also in ``rllib train file --help``):
    0: training met a stop criterion and saved a checkpoint. A stop on steps, iterations or
       time counts as success even if the return target was not met; the summary says
       whether it was.
    1: training started but failed (the trial raised), or saved no checkpoint.
    2: bad command line, file, config or resume directory; nothing was started or written.
    3: stopped by SIGINT or SIGTERM after saving a checkpoint; ``--resume`` continues.
    130: stopped at once by a second Ctrl-C; ``--resume`` continues from the last checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import ray
from ray import tune
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.utils.annotations import override
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    NUM_ENV_STEPS_SAMPLED,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
)
from ray.tune.result import SHOULD_CHECKPOINT, TIME_TOTAL_S, TRAINING_ITERATION

from rllib_drqn.checkpoints import CheckpointError, check_checkpoint
from rllib_drqn.cli.experiment_file import (
    DEFAULT_STORAGE_PATH,
    RETURN_WINDOW,
    STOP_KEYS,
    CLIError,
    Experiment,
    build_config,
    check_resources,
    load_experiment,
    non_negative_int,
    parse_experiment,
    resolve_stop,
)
from rllib_drqn.messages import one_line
from rllib_drqn.reporting import RETURN_WINDOW_NUM_EPISODES

__all__ = [
    "DEFAULT_CHECKPOINT_FREQ",
    "DEFAULT_NUM_TO_KEEP",
    "EXIT_ABORTED",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "RUN_FILE",
    "SNAPSHOT_PERIOD_S",
    "RunSettings",
    "add_parser",
    "find_experiment_dir",
    "train",
]

EXIT_OK: Final[int] = 0
EXIT_FAILED: Final[int] = 1
EXIT_INTERRUPTED: Final[int] = 3
EXIT_ABORTED: Final[int] = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C'd command.

#: Checkpoint every this many iterations by default: a crash loses at most that much work.
DEFAULT_CHECKPOINT_FREQ: Final[int] = 10
#: Keep the newest this many checkpoints (Tune deletes older ones once a newer one is saved).
DEFAULT_NUM_TO_KEEP: Final[int] = 2

#: Seconds between Tune's snapshots of its experiment state (``TUNE_GLOBAL_CHECKPOINT_S``,
#: unless set): a checkpoint older than this when the machine dies is the one resume finds.
SNAPSHOT_PERIOD_S: Final[str] = "1"

#: Written into the experiment directory at start: what ``--resume`` checks the file against.
RUN_FILE: Final[str] = "rllib_run.json"

#: RLlib/Tune lines that tell a CLI user nothing they can act on; silenced in the processes the
#: CLI starts (never for library users, who call RLlib themselves).
_NOISE: Final[tuple[str, ...]] = (
    "RLModule(config=",  # ray.rllib.core.rl_module.rl_module: RLlib's own DQN module calls it.
    "Install gputil for GPU system monitoring.",  # ray.tune.utils.util.UtilMonitor.
)


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """What a run was started with; ``--resume`` must be given the same.

    Attributes:
        yaml_text: The experiment file's text.
        stop: The resolved stop criteria (the file's, with ``--stop`` merged over them).
        num_env_runners: ``--num-env-runners``, if given.
        num_gpus_per_learner: ``--num-gpus-per-learner``, if given.
    """

    yaml_text: str
    stop: dict[str, float]
    num_env_runners: int | None
    num_gpus_per_learner: float | None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"


# ---------------------------------------------------------------------------------------------
# Resuming: finding and checking the experiment directory.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _ResumePoint:
    experiment_dir: Path
    checkpoint: Path | None
    iteration: int
    env_steps: int


def find_experiment_dir(storage_path: Path, name: str, given: str | None) -> Path:
    """The experiment directory ``--resume`` names, or the newest of ``name`` in storage.

    Raises:
        CLIError: If there is none, or ``given`` is no experiment directory of this command.
    """
    if given:
        path = Path(given).expanduser().resolve()
        if not path.is_dir():
            raise CLIError(
                f"--resume {given!r}: no such directory; pass the experiment directory "
                f"<storage-path>/<experiment> that `rllib train file` printed at start."
            )
        return path
    candidates = [
        child
        for child in (storage_path.iterdir() if storage_path.is_dir() else ())
        if (child.name == name or child.name.startswith(f"{name}_"))
        and (child / RUN_FILE).is_file()
    ]
    if not candidates:
        raise CLIError(
            f"--resume: no experiment {name!r} under {storage_path} (no {name}*/{RUN_FILE}); "
            "start it without --resume, or pass --resume DIR (and --storage-path) where it ran."
        )
    return max(candidates, key=lambda child: (child / RUN_FILE).stat().st_mtime)


def _check_resumable(
    experiment_dir: Path, experiment: Experiment, settings: RunSettings
) -> _ResumePoint:
    """Checks that ``experiment_dir`` holds an unfinished run of this very experiment."""
    run_file = experiment_dir / RUN_FILE
    if not run_file.is_file():
        if (experiment_dir / "tuner.pkl").is_file():
            why = "a Tune experiment not started by `rllib train file` (no rllib_run.json)"
        elif (experiment_dir / "params.json").is_file() or any(experiment_dir.glob("checkpoint_*")):
            why = f"a trial directory; pass its parent {str(experiment_dir.parent)!r}"
        else:
            why = "not an experiment directory"
        raise CLIError(
            f"--resume {str(experiment_dir)!r}: {why}; pass the directory <storage-path>/"
            "<experiment> that `rllib train file` printed at start."
        )
    try:
        saved = RunSettings(**json.loads(run_file.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as error:
        raise CLIError(
            f"{run_file}: unreadable ({one_line(error)}); it cannot be resumed."
        ) from None
    _check_unchanged(experiment, settings, saved, run_file)

    from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint
    from ray.tune.experiment.trial import Trial

    state_file = _find_newest_experiment_checkpoint(str(experiment_dir))
    if state_file is None:
        raise CLIError(
            f"--resume {str(experiment_dir)!r}: the run stopped before Tune saved any state "
            "(no experiment_state-*.json), so there is nothing to resume; start it again "
            "without --resume."
        )
    # Tune's own reader (TuneController._restore_trials); the file is this user's own run.
    state = json.loads(Path(state_file).read_text(encoding="utf-8"))
    trials = []
    for trial_json, run_metadata in state["trial_data"]:
        trial = Trial.from_json_state(trial_json, stub=True)
        trial.restore_run_metadata(run_metadata)
        trials.append(trial)
    if not trials:
        raise CLIError(f"--resume {str(experiment_dir)!r}: the experiment state holds no trial.")
    (trial,) = trials
    if trial.status == Trial.TERMINATED:
        last = trial.run_metadata.last_result or {}
        steps = int(last.get(NUM_ENV_STEPS_SAMPLED_LIFETIME) or 0)
        raise CLIError(
            f"--resume {str(experiment_dir)!r}: the run finished (after "
            f"{last.get(TRAINING_ITERATION)} iterations, {steps:,} env steps); there is nothing "
            "to resume. To train longer, raise stop in a copy of "
            "the file and start a new run."
        )
    manager = trial.run_metadata.checkpoint_manager
    latest = manager.latest_checkpoint_result if manager is not None else None
    if latest is None:
        return _ResumePoint(experiment_dir, None, 0, 0)
    checkpoint = Path(latest.checkpoint.path)
    try:
        check_checkpoint(checkpoint)
    except (CheckpointError, FileNotFoundError) as error:
        raise CLIError(
            f"--resume: the newest complete checkpoint is damaged ({one_line(error)}); "
            "nothing was changed. Move that checkpoint directory away to resume from the one "
            "before it."
        ) from None
    for child in sorted(checkpoint.parent.glob("checkpoint_*")):
        if child.is_dir() and child.name > checkpoint.name:
            print(
                f"Skipping {child.name}: Tune's experiment state does not record it (it was "
                "cut off while saving, or saved in the last second before the run was "
                f"killed); resuming from {checkpoint.name}, the newest one it records.",
                flush=True,
            )
    return _ResumePoint(
        experiment_dir,
        checkpoint,
        int(latest.metrics.get(TRAINING_ITERATION) or 0),
        int(latest.metrics.get(NUM_ENV_STEPS_SAMPLED_LIFETIME) or 0),
    )


def _check_unchanged(
    experiment: Experiment, settings: RunSettings, saved: RunSettings, run_file: Path
) -> None:
    before = parse_experiment(saved.yaml_text, run_file)
    changed = [
        field
        for field in ("name", "run", "env", "stop", "config")
        if getattr(before, field) != getattr(experiment, field)
    ]
    changed += [
        flag
        for flag, field in (
            ("--stop", "stop"),
            ("--num-env-runners", "num_env_runners"),
            ("--num-gpus-per-learner", "num_gpus_per_learner"),
        )
        if "stop" not in changed and getattr(saved, field) != getattr(settings, field)
    ]
    if changed:
        raise CLIError(
            f"{experiment.path} or the command line changed since the run in "
            f"{str(run_file.parent)!r} started (different {', '.join(changed)}); resuming would "
            f"train a different experiment. Undo the change (the run's file and flags are in "
            f"{run_file}), or start a new run without --resume."
        )


# ---------------------------------------------------------------------------------------------
# Progress, checkpoint sizes and signals.
# ---------------------------------------------------------------------------------------------


def _get(result: Mapping[str, Any], key: str) -> Any:
    """Looks up a "/"-joined key in a nested result dict."""
    node: Any = result
    for part in key.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _format_return(value: Any) -> str:
    if isinstance(value, int | float) and not math.isnan(value):
        return f"{value:8.2f}"
    return "     n/a"


def _format_window(result: Mapping[str, Any]) -> str:
    """The return window's mean and how many episodes it holds: ``  41.25 (20 ep)``."""
    episodes = _get(result, f"{ENV_RUNNER_RESULTS}/{RETURN_WINDOW_NUM_EPISODES}")
    count = f"{int(episodes):3d} ep" if isinstance(episodes, int | float) else "  - ep"
    return f"{_format_return(_get(result, RETURN_WINDOW))} ({count})"


def _format_duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _directory_bytes(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


class _Interruption:
    """SIGINT/SIGTERM: the first asks for a checkpoint and a resumable stop; a second aborts."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        try:
            yield
        finally:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal_name is not None:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        print(
            f"\n{self.signal_name}: saving a checkpoint at the end of this iteration, then "
            "stopping (press Ctrl-C again to stop at once, losing the work since the last "
            "checkpoint).",
            file=sys.stderr,
            flush=True,
        )


class _Progress(tune.Callback):
    """One line per iteration; asks Tune for a checkpoint on a signal, then stops it."""

    def __init__(
        self, stop: Mapping[str, float], interruption: _Interruption, num_to_keep: int
    ) -> None:
        self.step_budget = stop.get(NUM_ENV_STEPS_SAMPLED_LIFETIME) or stop.get(
            f"{ENV_RUNNER_RESULTS}/{NUM_ENV_STEPS_SAMPLED_LIFETIME}"
        )
        self.interruption = interruption
        self.num_to_keep = num_to_keep
        self.saving_for_signal = False
        self.interrupted_checkpoint: str | None = None
        self._previous: tuple[float, float] | None = None  # (env steps, time), last result.
        self._size_printed = False

    @override(tune.Callback)
    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        steps = float(_get(result, NUM_ENV_STEPS_SAMPLED_LIFETIME) or 0)
        elapsed = float(_get(result, TIME_TOTAL_S) or 0.0)
        if self._previous is None:  # The first result of this process (a start or a resume).
            new_steps = float(_get(result, f"{ENV_RUNNER_RESULTS}/{NUM_ENV_STEPS_SAMPLED}") or 0)
            new_time = float(result.get("time_this_iter_s") or 0.0)
        else:
            new_steps, new_time = steps - self._previous[0], elapsed - self._previous[1]
        self._previous = (steps, elapsed)
        rate = new_steps / new_time if new_time > 0 else math.nan
        eta = ""
        if self.step_budget and rate > 0:
            eta = f" | ETA {_format_duration(max(self.step_budget - steps, 0) / rate)}"
        print(
            f"iter {_get(result, TRAINING_ITERATION):4d} | "
            f"env steps {int(steps):>9,} | "
            f"{rate:7.1f} steps/s | "
            f"return mean {_format_window(result)} | "
            f"time {elapsed:8.1f} s{eta}",
            flush=True,
        )
        if self.interruption.signal_name is not None and not self.saving_for_signal:
            # Tune reads this key after its callbacks (TuneController._process_trial_result).
            result[SHOULD_CHECKPOINT] = True
            self.saving_for_signal = True

    @override(tune.Callback)
    def on_checkpoint(
        self, iteration: int, trials: list[Any], trial: Any, checkpoint: Any, **info: Any
    ) -> None:
        path = Path(checkpoint.path)
        if not self._size_printed:
            self._size_printed = True
            size = _directory_bytes(path) / 2**20
            print(
                f"Checkpoint {path.name}: {size:,.1f} MB on disk (with the replay so far; it "
                f"grows with the replay up to its capacity); keeping the newest "
                f"{self.num_to_keep}.",
                flush=True,
            )
        if self.saving_for_signal:
            self.interrupted_checkpoint = str(path)
            # Tune always stops an experiment resumably on SIGUSR1 (tune.py,
            # _setup_signal_catching): it saves the experiment state and leaves the trial
            # unfinished, which Tuner.restore resumes.
            os.kill(os.getpid(), signal.SIGUSR1)


@contextlib.contextmanager
def _environment(**variables: str) -> Iterator[None]:
    """Sets environment variables for the duration of the run only."""
    previous = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _silence_noise() -> None:
    """Runs in every Ray worker the CLI starts (``worker_process_setup_hook``)."""
    import logging
    import warnings

    class _DropNoise(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            message = record.getMessage()
            return not any(noise in message for noise in _NOISE)

    for name in ("ray._common.deprecation", "ray.rllib.utils.deprecation", "ray.tune.utils.util"):
        logging.getLogger(name).addFilter(_DropNoise())
    warnings.filterwarnings("ignore", message=r".*RLModule\(config=")


# ---------------------------------------------------------------------------------------------
# Training.
# ---------------------------------------------------------------------------------------------


def _experiment_name(storage_path: Path, name: str) -> str:
    """The YAML name, or the name with a timestamp if that directory already exists."""
    if not (storage_path / name).exists():
        return name
    return f"{name}_{time.strftime('%Y-%m-%d_%H-%M-%S')}"


def _resume_command(experiment: Experiment, experiment_dir: Path) -> str:
    return f"rllib train file {experiment.path} --resume {experiment_dir}"


def train(
    experiment: Experiment,
    config: AlgorithmConfig,
    stop: Mapping[str, float],
    *,
    storage_path: Path,
    checkpoint_freq: int = DEFAULT_CHECKPOINT_FREQ,
    num_to_keep: int = DEFAULT_NUM_TO_KEEP,
    settings: RunSettings | None = None,
    resume_dir: Path | None = None,
) -> int:
    """Trains (or, with ``resume_dir``, resumes) one Tune trial of ``config`` until ``stop``.

    Starts a local Ray instance with every CPU of the machine unless Ray is running already
    (or ``RAY_ADDRESS`` names a cluster), and shuts down only what it started.

    Args:
        experiment: Names the experiment directory and the summary.
        config: A validated config, from ``build_config``.
        stop: Stop criteria, from ``resolve_stop``; training ends when any is met.
        storage_path: Absolute directory for Tune's results and checkpoints.
        checkpoint_freq: Checkpoint every this many iterations (0: only at the end).
        num_to_keep: Keep the newest this many checkpoints.
        settings: Written to ``rllib_run.json`` for a later ``--resume`` to check.
        resume_dir: An experiment directory checked by ``find_experiment_dir``.

    Returns:
        The exit status (see the module docstring).
    """
    if resume_dir is None:
        experiment_dir = storage_path / _experiment_name(storage_path, experiment.name)
    else:
        experiment_dir = resume_dir
    interruption = _Interruption()
    progress = _Progress(stop, interruption, num_to_keep)
    started_ray = not ray.is_initialized()
    # Tune's new console output prints its own header even at verbose=0; the old one is silent
    # there, which leaves our one line per iteration (RLlib's example runner does the same).
    # Tune's own SIGINT handler would stop without a checkpoint: ours asks for one first.
    # Tune records a checkpoint in its experiment state, the file resume reads, only at its
    # next snapshot of that state: by default every 10 s or more, forced only every
    # num_to_keep checkpoints (tune/execution/experiment_state.py, sync_up_experiment_state).
    # A kill in between loses the newest checkpoints (or, early on, all of them) to resume;
    # a snapshot at most every second costs one write of a few hundred KB a second.
    snapshot_period = os.environ.get("TUNE_GLOBAL_CHECKPOINT_S", SNAPSHOT_PERIOD_S)
    with _environment(
        RAY_AIR_NEW_OUTPUT="0",
        TUNE_DISABLE_SIGINT_HANDLER="1",
        TUNE_GLOBAL_CHECKPOINT_S=snapshot_period,
    ):
        if started_ray:
            setup = {"worker_process_setup_hook": _silence_noise}
            if os.environ.get("RAY_ADDRESS"):
                ray.init(runtime_env=setup)  # A cluster: its resources are fixed already.
            else:
                ray.init(num_cpus=os.cpu_count(), include_dashboard=False, runtime_env=setup)
        try:
            if resume_dir is None:
                print(
                    f"Training {experiment.run} on {experiment.env} until any of {dict(stop)}; "
                    f"results in {experiment_dir}",
                    flush=True,
                )
                tuner = tune.Tuner(
                    config.algo_class,
                    param_space=config,
                    run_config=tune.RunConfig(
                        name=experiment_dir.name,
                        storage_path=str(storage_path),
                        stop=dict(stop),
                        verbose=0,
                        callbacks=[progress],
                        checkpoint_config=tune.CheckpointConfig(
                            checkpoint_frequency=checkpoint_freq,
                            checkpoint_at_end=True,
                            num_to_keep=num_to_keep,
                        ),
                    ),
                )
                if settings is not None:
                    experiment_dir.mkdir(parents=True, exist_ok=True)
                    (experiment_dir / RUN_FILE).write_text(settings.to_json(), encoding="utf-8")
            else:
                tuner = tune.Tuner.restore(
                    str(experiment_dir),
                    trainable=config.algo_class,
                    param_space=config,
                    resume_unfinished=True,
                    resume_errored=True,
                    restart_errored=False,
                )
                # The run config comes back pickled, with the callbacks of the first run; ours
                # hold this process's signal state (tune/impl/tuner_internal.py keeps it).
                tuner._local_tuner.get_run_config().callbacks = [progress]
            with interruption.installed():
                result = tuner.fit()[0]
        except KeyboardInterrupt:
            print(
                "rllib: stopped at once; the work since the last checkpoint is lost. Resume "
                f"with:\n  {_resume_command(experiment, experiment_dir)}",
                file=sys.stderr,
                flush=True,
            )
            return EXIT_ABORTED
        finally:
            if started_ray:
                ray.shutdown()
    return _summarize(result, experiment, stop, experiment_dir, storage_path, progress)


def _summarize(
    result: Any,
    experiment: Experiment,
    stop: Mapping[str, float],
    experiment_dir: Path,
    storage_path: Path,
    progress: _Progress,
) -> int:
    if result.error is not None:
        print(
            f"rllib: training failed: {one_line(result.error, limit=None)}; the full traceback "
            f"is in {result.path}/error.txt. Resume from the last checkpoint with:\n"
            f"  {_resume_command(experiment, experiment_dir)}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    metrics = result.metrics or {}
    returns = (
        result.metrics_dataframe[RETURN_WINDOW].dropna()
        if result.metrics_dataframe is not None and RETURN_WINDOW in result.metrics_dataframe
        else None
    )
    reached = [
        key
        for key, value in stop.items()
        if isinstance(_get(metrics, key), int | float) and _get(metrics, key) >= value
    ]
    if not reached and progress.interruption.signal_name and progress.interrupted_checkpoint:
        print(
            f"Stopped by {progress.interruption.signal_name}; checkpoint "
            f"{progress.interrupted_checkpoint}. Resume with:\n"
            f"  {_resume_command(experiment, experiment_dir)}",
            flush=True,
        )
        return EXIT_INTERRUPTED
    print(
        f"Stopped after {_get(metrics, TRAINING_ITERATION)} iterations, "
        f"{int(_get(metrics, NUM_ENV_STEPS_SAMPLED_LIFETIME) or 0):,} env steps, "
        f"{_get(metrics, TIME_TOTAL_S) or 0.0:.1f} s; reached: {reached or 'none'}.",
        flush=True,
    )
    if returns is not None and len(returns):
        target = stop.get(RETURN_WINDOW)
        verdict = (
            f" (target {target:g}: {'reached' if returns.max() >= target else 'not reached'})"
            if target is not None
            else ""
        )
        window = (getattr(result, "config", None) or {}).get("episode_return_window")
        over = f" of the last {window} episodes" if window else ""
        print(
            f"Mean return{over} ({RETURN_WINDOW}): last {returns.iloc[-1]:.2f}, best "
            f"{returns.max():.2f}{verdict}",
            flush=True,
        )
    print(f"TensorBoard logs: tensorboard --logdir {storage_path}", flush=True)
    if result.checkpoint is None:
        print("rllib: training ended without a checkpoint.", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"Checkpoint: {result.checkpoint.path}\n"
        "Load it with ray.rllib.algorithms.algorithm.Algorithm.from_checkpoint(path).",
        flush=True,
    )
    if not reached:
        print(
            "rllib: training was interrupted before any stop criterion. Resume with:\n"
            f"  {_resume_command(experiment, experiment_dir)}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------------------------


def _resolve_storage_path(text: str) -> Path:
    """Makes the storage path absolute, as Tune requires."""
    path = Path(text).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise CLIError(f"--storage-path {text!r} ({path}) is a file; pass a directory.")
    return path


def _make_storage_path(path: Path) -> None:
    """Creates the storage directory (only that: existing files are left alone)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CLIError(
            f"--storage-path {str(path)!r}: cannot create it ({error.strerror}); pass a "
            "writable directory."
        ) from None


def _positive_int(text: str) -> int:
    value = non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _run_train_file(args: argparse.Namespace) -> int:
    experiment = load_experiment(args.path)
    stop = resolve_stop(experiment.stop, args.stop)
    config = build_config(
        experiment,
        num_env_runners=args.num_env_runners,
        num_gpus_per_learner=args.num_gpus_per_learner,
    )
    if "store_buffer_in_checkpoints" not in experiment.config and hasattr(
        config, "store_buffer_in_checkpoints"
    ):
        # Resuming an off-policy learner without its replay is a different run.
        config.training(store_buffer_in_checkpoints=True)
    settings = RunSettings(
        yaml_text=experiment.path.read_text(encoding="utf-8"),
        stop=dict(stop),
        num_env_runners=args.num_env_runners,
        num_gpus_per_learner=args.num_gpus_per_learner,
    )
    storage_path = _resolve_storage_path(args.storage_path)
    resume_dir = None
    if args.resume is not None:
        resume_dir = find_experiment_dir(storage_path, experiment.name, args.resume or None)
        point = _check_resumable(resume_dir, experiment, settings)
    check_resources(config)
    if resume_dir is None:
        _make_storage_path(storage_path)  # The last check, and the first write.
    else:
        where = (
            f"from {point.checkpoint} (iteration {point.iteration}, {point.env_steps:,} env steps)"
            if point.checkpoint is not None
            else "from the start (it saved no checkpoint yet)"
        )
        print(f"Resuming {resume_dir} {where}", flush=True)
    return train(
        experiment,
        config,
        stop,
        storage_path=resume_dir.parent if resume_dir is not None else storage_path,
        checkpoint_freq=args.checkpoint_freq,
        num_to_keep=args.keep,
        settings=settings,
        resume_dir=resume_dir,
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Registers ``rllib train file``."""
    from rllib_drqn.cli.experiment_file import non_negative_float

    train_parser = subparsers.add_parser(
        "train",
        help="train an algorithm",
        description="Train an algorithm; `rllib train file PATH.yaml` reads the experiment "
        "from a tuned-example YAML file.",
    )
    sources = train_parser.add_subparsers(dest="source", metavar="{file}", required=True)
    file_parser = sources.add_parser(
        "file",
        help="train the one experiment of a tuned-example YAML file",
        description="Train the one experiment of a tuned-example YAML file "
        "(name: {run: DRQN|DQN, env: ..., stop: {...}, config: {...}}). Checkpoints are saved "
        f"every --checkpoint-freq iterations (default {DEFAULT_CHECKPOINT_FREQ}) and at the "
        "end, DRQN's with its replay; --resume continues a run that crashed or was stopped.",
        epilog="Exit status: 0 when training met a stop criterion and saved a checkpoint (the "
        "summary says whether the return target was met); 1 when training failed; 2 for a "
        "bad command line, file, config or resume directory (nothing is started or written); "
        "3 when SIGINT (Ctrl-C) or SIGTERM stopped it after saving a checkpoint (--resume "
        "continues); 130 when a second Ctrl-C stopped it at once.",
    )
    file_parser.add_argument("path", metavar="PATH.yaml", help="the experiment file")
    file_parser.add_argument(
        "--stop",
        metavar="JSON",
        help="stop criteria as a JSON object, merged over the file's stop (keys: "
        + ", ".join(STOP_KEYS)
        + ")",
    )
    file_parser.add_argument(
        "--resume",
        nargs="?",
        const="",
        metavar="DIR",
        help="continue the run in experiment directory DIR (default: the newest run of this "
        "file's experiment under --storage-path) from its newest complete checkpoint, with "
        "its counters and replay; the file and flags must be those it started with",
    )
    file_parser.add_argument(
        "--checkpoint-freq",
        type=non_negative_int,
        default=DEFAULT_CHECKPOINT_FREQ,
        metavar="N",
        help=f"checkpoint every N iterations (default {DEFAULT_CHECKPOINT_FREQ}; 0: only at "
        "the end); one is also saved at the end and on SIGINT/SIGTERM",
    )
    file_parser.add_argument(
        "--keep",
        type=_positive_int,
        default=DEFAULT_NUM_TO_KEEP,
        metavar="K",
        help=f"keep the newest K checkpoints (default {DEFAULT_NUM_TO_KEEP}); each holds the "
        "replay, so the disk cost is about K times the replay's size",
    )
    file_parser.add_argument(
        "--storage-path",
        default=DEFAULT_STORAGE_PATH,
        metavar="DIR",
        help=f"where Tune writes results and checkpoints (default {DEFAULT_STORAGE_PATH})",
    )
    file_parser.add_argument(
        "--num-env-runners",
        type=non_negative_int,
        metavar="N",
        help="override config num_env_runners (0: sample in the trial's own process)",
    )
    file_parser.add_argument(
        "--num-gpus-per-learner",
        type=non_negative_float,
        metavar="N",
        help="override config num_gpus_per_learner",
    )
    file_parser.set_defaults(handler=_run_train_file)
