"""A short Pong training run for the GPU check, as three steps that pass files.

``check.sh`` runs, per tuned example (``drqn_pong.yaml``, then ``drqn_flickering_pong.yaml``)::

    python bench/gpu/pong_curve.py prepare tuned_examples/drqn_pong.yaml --out OUT/pong --budget gpu
    rllib train file OUT/pong/experiment.yaml --storage-path OUT/pong/results \\
        --num-env-runners 15 --num-gpus-per-learner 1 --stop '{"time_total_s": 180}'
    python bench/gpu/pong_curve.py report OUT/pong

1. ``prepare`` loads the tuned example with the project's own loader
   (:func:`rllib_drqn.cli.load_experiment`) and writes ``experiment.yaml``: the same
   experiment with the few settings a minutes-long run must change (when learning starts,
   epsilon decay, replay capacity, iteration length) and the tuned example's replay ratio kept
   for any number of env runners (``training_intensity``). ``settings.json`` records both.
2. Training is the project's ``rllib train file`` (one Tune trial, RLlib's DQN loop, the GPU
   learner); Tune writes ``result.json`` after every iteration, so a run that is killed by
   its stage timeout still leaves its curve on disk.
3. ``report`` reads only the saved ``result.json`` (never a live run) and writes
   ``curve.csv`` (env steps, wall s, return mean of the last 100 episodes, ...),
   ``curve.png`` and ``summary.json`` (the machine, the settings, the final numbers). It can
   be rerun on copied-back files.

``--budget tiny`` shrinks the run to seconds on a CPU (episodes truncated at 20 steps so some
end, LSTM 32, 4 sequences per update): what CI runs through ``check.sh --cpu --tiny``. Its
numbers mean nothing.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import machine_info, write_json  # bench/common.py

__all__ = ["BUDGETS", "CURVE_COLUMNS", "main", "prepare", "read_progress", "report"]

#: Tune result key ("/"-joined) -> curve.csv column; the first three are the curve itself.
CURVE_COLUMNS: Final[Mapping[str, str]] = {
    "num_env_steps_sampled_lifetime": "env_steps",
    "time_total_s": "wall_s",
    # The mean return of the last 100 training episodes (rllib_drqn.reporting), across reports.
    "env_runners/episode_return_window_mean": "return_mean",
    "training_iteration": "iteration",
    "env_runners/num_episodes_lifetime": "episodes",
    "learners/__all_modules__/num_env_steps_trained_lifetime": "timesteps_trained",
}

#: Settings a short run changes, per budget. The tuned examples start learning at 50,000 env
#: steps and decay epsilon over 250,000; a run of minutes never gets there, so it would
#: measure acting only. Everything else (network, batch, lr, update mode) stays the example's.
BUDGETS: Final[Mapping[str, Mapping[str, Any]]] = {
    "gpu": {
        "num_steps_sampled_before_learning_starts": 10_000,
        "epsilon": [[0, 1.0], [100_000, 0.01]],
        "target_network_update_freq": 2_000,
        "replay_capacity": 200_000,
        "min_time_s_per_iteration": 5,
    },
    "tiny": {
        "num_steps_sampled_before_learning_starts": 100,
        "epsilon": [[0, 1.0], [1_000, 0.1]],
        "target_network_update_freq": 200,
        "replay_capacity": 2_000,
        "min_time_s_per_iteration": 1,
        "num_sequences_per_batch": 4,
        "model_config": {"lstm_cell_size": 32},
        "env_config": {"max_episode_steps": 20},
    },
}

EXPERIMENT_FILE = "experiment.yaml"
SETTINGS_FILE = "settings.json"


# ---- Step 1: the experiment file ----------------------------------------------------------


def prepare(
    tuned_example: Path,
    out: Path,
    budget: str,
    num_env_runners: int,
    num_gpus_per_learner: float,
    seed: int,
    keep_replay_ratio: bool = True,
) -> Path:
    """Writes ``out/experiment.yaml`` (the tuned example, shortened) and ``out/settings.json``.

    The file is read back and checked with the project's own loader and
    :func:`rllib_drqn.cli.build_config`, as ``rllib train file`` will, so a bad combination
    fails here, before any Ray worker starts.
    """
    from rllib_drqn.cli import build_config, load_experiment

    if num_env_runners < 0:
        raise ValueError(f"num_env_runners must be >= 0, got {num_env_runners}.")
    experiment = load_experiment(tuned_example)
    tuned_config = build_config(experiment)
    overrides = dict(BUDGETS[budget])
    config = dict(experiment.config)

    replay = dict(config.get("replay_buffer_config") or {})
    replay["capacity"] = overrides.pop("replay_capacity")
    config["replay_buffer_config"] = replay
    for key in ("model_config", "env_config"):
        if key in overrides:
            config[key] = {**(config.get(key) or {}), **overrides.pop(key)}
    config.update(overrides)
    config["min_sample_timesteps_per_iteration"] = 0  # Iterations end on time alone.
    config["seed"] = seed
    # In the file too, so that it alone reproduces the run.
    config["num_env_runners"] = num_env_runners
    config["num_gpus_per_learner"] = num_gpus_per_learner

    out.mkdir(parents=True, exist_ok=True)
    path = out / EXPERIMENT_FILE
    checked = _write_and_check(experiment, config, path, num_env_runners, num_gpus_per_learner)
    # RLlib's DQN loop does one update per sampling round of all runners' envs unless
    # training_intensity says otherwise (dqn.py: calculate_rr_weights). With 15 runners instead
    # of the example's one, that would be 15x fewer updates per env step. Keep the example's
    # updates per env step instead; training_intensity counts timesteps replayed per env step.
    updates_per_env_step = 1 / (
        tuned_config.get_rollout_fragment_length()
        * tuned_config.num_envs_per_env_runner
        * max(tuned_config.num_env_runners, 1)
    )
    if keep_replay_ratio:
        config["training_intensity"] = updates_per_env_step * checked.total_train_batch_size
        checked = _write_and_check(experiment, config, path, num_env_runners, num_gpus_per_learner)
    settings = {
        "tuned_example": str(tuned_example),
        "experiment": experiment.name,
        "budget": budget,
        "overrides": BUDGETS[budget],
        "num_env_runners": num_env_runners,
        "num_envs_per_env_runner": checked.num_envs_per_env_runner,
        "num_gpus_per_learner": num_gpus_per_learner,
        "seed": seed,
        "train_batch_size_per_learner": checked.train_batch_size_per_learner,
        "tuned_updates_per_env_step": updates_per_env_step,
        "training_intensity": checked.training_intensity,
        "lstm_cell_size": checked.model_config.get("lstm_cell_size"),
        "max_seq_len": checked.model_config.get("max_seq_len"),
        "env_config": dict(checked.env_config),
    }
    write_json(out / SETTINGS_FILE, settings)
    return path


def _write_and_check(
    experiment: Any,
    config: Mapping[str, Any],
    path: Path,
    num_env_runners: int,
    num_gpus_per_learner: float,
) -> Any:
    """Writes the shortened experiment to ``path`` and checks it as ``rllib train file`` will."""
    from rllib_drqn.cli import build_config, load_experiment

    spec = {"run": experiment.run, "env": experiment.env, "stop": {}, "config": dict(config)}
    path.write_text(
        "# Written by bench/gpu/pong_curve.py prepare: a tuned example shortened for minutes.\n"
        + yaml.safe_dump({experiment.name: spec}, sort_keys=False)
    )
    return build_config(
        load_experiment(path),
        num_env_runners=num_env_runners,
        num_gpus_per_learner=num_gpus_per_learner,
    )


# ---- Step 3: the report -------------------------------------------------------------------


def read_progress(run_dir: Path) -> list[dict[str, float | None]]:
    """Reads the newest Tune trial's ``result.json`` under ``run_dir/results`` as curve rows.

    ``result.json`` (one full result per line, written after every iteration), not
    ``progress.csv``: Tune fixes the CSV's columns at the first iteration, so a metric that
    first appears later (the return mean before any episode ended, the learner's counters
    before learning started) never reaches the CSV.
    """
    candidates = sorted(
        (run_dir / "results").glob("*/*/result.json"), key=lambda p: p.stat().st_mtime
    )
    if not candidates:
        raise FileNotFoundError(
            f"no result.json under {run_dir / 'results'}: the training step wrote no iteration "
            "(see its log next to it)."
        )
    rows = []
    for line in candidates[-1].read_text().splitlines():
        if not line.strip():
            continue
        try:
            result = json.loads(line)
        except json.JSONDecodeError:  # The last line of a killed run may be cut short.
            continue
        rows.append({name: _number(_get(result, key)) for key, name in CURVE_COLUMNS.items()})
    return rows


def _get(result: Mapping[str, Any], key: str) -> Any:
    node: Any = result
    for part in key.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def report(run_dir: Path, training_exit_status: int | None = None) -> dict[str, Any]:
    """Writes ``curve.csv``, ``curve.png`` and ``summary.json`` into ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    settings_path = run_dir / SETTINGS_FILE
    settings = json.loads(settings_path.read_text()) if settings_path.exists() else None
    try:
        rows = read_progress(run_dir)
        error = None
    except FileNotFoundError as missing:
        rows, error = [], str(missing)

    with (run_dir / "curve.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(CURVE_COLUMNS.values()))
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if value is None else value for key, value in row.items()})
    _plot(rows, run_dir / "curve.png", settings)

    last = rows[-1] if rows else {}
    returns = [row["return_mean"] for row in rows if row["return_mean"] is not None]
    wall = last.get("wall_s")
    batch = (settings or {}).get("train_batch_size_per_learner")
    trained = last.get("timesteps_trained")
    # Approximate: RLlib counts the rows a batch trains on, not updates, and its count for
    # DRQN's [B, T] batches is not exactly B * T per update (Ray 2.60 reports no update count).
    updates = trained / batch if trained is not None and batch else None
    summary = {
        "what": "short DRQN training run (bench/gpu/pong_curve.py); rates over Tune's time_total_s",
        "machine": machine_info(),
        "settings": settings,
        "training_exit_status": training_exit_status,
        "error": error,
        "final": {
            "iterations": last.get("iteration"),
            "env_steps": last.get("env_steps"),
            "wall_s": wall,
            "episodes": last.get("episodes"),
            "return_mean_last": returns[-1] if returns else None,
            "return_mean_best": max(returns) if returns else None,
            "timesteps_trained": trained,
            "learner_updates_approx": updates,
            "env_steps_per_s": _rate(last.get("env_steps"), wall),
            "updates_per_s_approx": _rate(updates, wall),
        },
    }
    write_json(run_dir / "summary.json", summary)
    return summary


def _plot(rows: Sequence[Mapping[str, float | None]], path: Path, settings: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(r["env_steps"], r["return_mean"]) for r in rows if r["return_mean"] is not None]
    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    if points:
        axes.plot(*zip(*points, strict=True), marker=".")
    else:
        axes.text(0.5, 0.5, "no episode ended", ha="center", transform=axes.transAxes)
    name = (settings or {}).get("experiment", path.parent.name)
    axes.set_title(f"{name}: mean episode return")
    axes.set_xlabel("env steps sampled")
    axes.set_ylabel("mean return, last 100 episodes (episode_return_window_mean)")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _number(value: Any) -> float | None:
    try:
        value = float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
    return None if value is None or math.isnan(value) else value


def _rate(amount: float | None, seconds: float | None) -> float | None:
    return amount / seconds if amount is not None and seconds else None


# ---- Command line -------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    steps = parser.add_subparsers(dest="step", required=True)
    prep = steps.add_parser("prepare", help="write OUT/experiment.yaml and OUT/settings.json")
    prep.add_argument("tuned_example", type=Path)
    prep.add_argument("--out", type=Path, required=True)
    prep.add_argument("--budget", choices=sorted(BUDGETS), default="gpu")
    prep.add_argument("--num-env-runners", type=int, required=True)
    prep.add_argument("--num-gpus-per-learner", type=float, default=0)
    prep.add_argument("--seed", type=int, default=0)
    prep.add_argument(
        "--native-replay-ratio",
        action="store_true",
        help="RLlib's default: one update per sampling round of all runners, instead of the "
        "tuned example's updates per env step.",
    )
    rep = steps.add_parser("report", help="write curve.csv, curve.png and summary.json")
    rep.add_argument("run_dir", type=Path)
    rep.add_argument("--training-exit-status", type=int, default=None)
    args = parser.parse_args(argv)

    if args.step == "prepare":
        if args.num_env_runners < 0:
            parser.error(f"--num-env-runners must be >= 0, got {args.num_env_runners}")
        from rllib_drqn.cli import CLIError

        try:
            path = prepare(
                args.tuned_example,
                args.out,
                args.budget,
                args.num_env_runners,
                args.num_gpus_per_learner,
                args.seed,
                keep_replay_ratio=not args.native_replay_ratio,
            )
        except CLIError as error:
            print(f"pong_curve.py prepare: {error}", file=sys.stderr)
            return 2
        print(path)
        return 0
    summary = report(args.run_dir, args.training_exit_status)
    print(json.dumps(summary["final"], indent=2))
    return 0 if summary["error"] is None else 1


if __name__ == "__main__":
    sys.exit(main())
