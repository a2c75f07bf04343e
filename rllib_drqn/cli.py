"""``rllib``: train DRQN (or RLlib's DQN as a memory-less baseline) from a YAML file.

Ray 2.60 no longer ships RLlib's ``rllib`` command. This is its ``train file`` half for the new
API stack, installed as the ``rllib`` console script and runnable as ``python -m rllib_drqn``::

    rllib train file tuned_examples/drqn_stateless_cartpole.yaml
    rllib train file tuned_examples/drqn_stateless_cartpole.yaml \\
        --stop '{"training_iteration": 5}' --storage-path /tmp/results --checkpoint-freq 2

The file holds one experiment in RLlib's tuned-example format::

    stateless-cartpole-drqn:
      run: DRQN                      # or DQN: RLlib's own, the memory-less baseline
      env: StatelessCartPole
      stop: {env_runners/episode_return_mean: 150, num_env_steps_sampled_lifetime: 50000}
      config:                        # flat AlgorithmConfig keys of the new API stack
        lr: 0.001
        model_config: {lstm_cell_size: 32, max_seq_len: 10}

Everything is checked in the driver before Ray starts: the file, its YAML, its structure, every
config and stop key (unknown and old-API-stack keys are rejected with the key to use instead),
then ``config.validate()`` and the resources the run needs. A mistake costs a second and leaves
the storage path untouched.

Training runs as one Tune trial, so results and checkpoints land where RLlib users look for
them (``<storage-path>/<experiment name>/<trial>/checkpoint_00000N``), one line of progress is
printed per training iteration, and a checkpoint is always saved at the end.

Exit status:
    0: training met a stop criterion and saved a checkpoint. A stop on steps, iterations or
       time counts as success even if the return target was not met; the summary says
       whether it was.
    1: training started but failed (the trial raised), was interrupted, or saved no
       checkpoint.
    2: bad command line, file or config; nothing was started or written.

``rllib evaluate CHECKPOINT --flicker-probs 0,0.5,1 --episodes 10`` plays a checkpoint at each
flicker probability and writes a table and a plot; it is a thin layer over
:func:`rllib_drqn.evaluate.evaluate` and exits 0 when done, 2 for a bad command line or
checkpoint (checked before any episode is played; nothing is written).

To add a subcommand, write an ``_add_<name>_parser(subparsers)`` function that registers its
parser with ``set_defaults(handler=...)`` and list it in ``_SUBCOMMANDS``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import inspect
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import ray
import torch
import yaml
from ray import tune
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.algorithms.dqn import DQNConfig
from ray.rllib.utils.annotations import override
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    EPISODE_RETURN_MEAN,
    EVALUATION_RESULTS,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    NUM_EPISODES_LIFETIME,
)
from ray.tune.result import TIME_TOTAL_S, TRAINING_ITERATION

from rllib_drqn import evaluate as evaluation
from rllib_drqn.baselines import FrameStackDQNConfig
from rllib_drqn.config import DRQNConfig, require_known_env
from rllib_drqn.module import DRQN_MODEL_DEFAULTS

__all__ = [
    "ALGORITHMS",
    "STOP_KEYS",
    "CLIError",
    "Experiment",
    "build_config",
    "build_parser",
    "load_experiment",
    "main",
    "resolve_stop",
]

#: Algorithms a YAML ``run:`` may name. Config classes are imported directly: naming "DQN" by
#: string through ``ray.rllib.algorithms.registry`` would import DreamerV3 (and Pillow) too.
ALGORITHMS: Final[Mapping[str, type[AlgorithmConfig]]] = {
    "DRQN": DRQNConfig,
    "DQN": DQNConfig,
    "FrameStackDQN": FrameStackDQNConfig,
}

RETURN_MEAN: Final[str] = f"{ENV_RUNNER_RESULTS}/{EPISODE_RETURN_MEAN}"

#: Stop keys, as RLlib's tuned examples write them; in Ray 2.60 each is the "/"-joined path of a
#: real entry of ``Algorithm.train()``'s result, which is how Tune matches stop criteria.
STOP_KEYS: Final[tuple[str, ...]] = (
    RETURN_MEAN,
    f"{EVALUATION_RESULTS}/{RETURN_MEAN}",
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    f"{ENV_RUNNER_RESULTS}/{NUM_ENV_STEPS_SAMPLED_LIFETIME}",
    f"{ENV_RUNNER_RESULTS}/{NUM_EPISODES_LIFETIME}",
    TRAINING_ITERATION,
    TIME_TOTAL_S,
)

# Old-API-stack result keys (Ray <= 2.9 tuned examples) -> the Ray 2.60 key.
_OLD_STOP_KEYS: Final[Mapping[str, str]] = {
    "episode_reward_mean": RETURN_MEAN,
    "episode_return_mean": RETURN_MEAN,
    "sampler_results/episode_reward_mean": RETURN_MEAN,
    "env_runners/episode_reward_mean": RETURN_MEAN,
    "evaluation/episode_reward_mean": f"{EVALUATION_RESULTS}/{RETURN_MEAN}",
    "evaluation/sampler_results/episode_reward_mean": f"{EVALUATION_RESULTS}/{RETURN_MEAN}",
    "timesteps_total": NUM_ENV_STEPS_SAMPLED_LIFETIME,
    "num_env_steps_sampled": NUM_ENV_STEPS_SAMPLED_LIFETIME,
    "agent_timesteps_total": NUM_ENV_STEPS_SAMPLED_LIFETIME,
    "episodes_total": f"{ENV_RUNNER_RESULTS}/{NUM_EPISODES_LIFETIME}",
}

_EXPERIMENT_KEYS: Final[tuple[str, ...]] = ("run", "env", "stop", "config")

# Experiment-level keys of the old `rllib train` / `tune.run` format -> what to do instead.
_OLD_EXPERIMENT_KEYS: Final[Mapping[str, str]] = {
    "checkpoint_freq": "pass --checkpoint-freq N on the command line",
    "checkpoint_at_end": "remove it: a checkpoint is always saved at the end",
    "checkpoint_config": "pass --checkpoint-freq N on the command line",
    "storage_path": "pass --storage-path DIR on the command line",
    "local_dir": "pass --storage-path DIR on the command line",
    "num_samples": "remove it: the command runs one trial per file",
}

_ENV_RUNNERS_HINT = "use num_env_runners (the new API stack's name for rollout workers)"
_REPLAY_HINT = "use replay_buffer_config: {type: ..., capacity: N, ...}"

# Old-API-stack config keys -> the new-API-stack key (or what to do instead).
_OLD_CONFIG_KEYS: Final[Mapping[str, str]] = {
    "model": "use model_config (a dict), e.g. model_config: {lstm_cell_size: 32, max_seq_len: 10}",
    "exploration_config": "use epsilon (a schedule of [timestep, value] pairs), e.g. "
    "epsilon: [[0, 1.0], [10000, 0.05]]",
    "num_workers": _ENV_RUNNERS_HINT,
    "num_rollout_workers": _ENV_RUNNERS_HINT,
    "num_envs_per_worker": "use num_envs_per_env_runner",
    "num_cpus_per_worker": "use num_cpus_per_env_runner",
    "num_gpus_per_worker": "use num_gpus_per_env_runner",
    "custom_resources_per_worker": "use custom_resources_per_env_runner",
    "num_gpus": "use num_gpus_per_learner (or pass --num-gpus-per-learner N)",
    "num_learner_workers": "use num_learners",
    "num_cpus_per_learner_worker": "use num_cpus_per_learner",
    "num_gpus_per_learner_worker": "use num_gpus_per_learner",
    "num_cpus_for_driver": "use num_cpus_for_main_process",
    "num_cpus_for_local_worker": "use num_cpus_for_main_process",
    "evaluation_num_workers": "use evaluation_num_env_runners",
    "evaluation_num_episodes": "use evaluation_duration with evaluation_duration_unit: episodes",
    "ignore_worker_failures": "use ignore_env_runner_failures",
    "recreate_failed_workers": "use restart_failed_env_runners",
    "recreate_failed_env_runners": "use restart_failed_env_runners",
    "max_num_worker_restarts": "use max_num_env_runner_restarts",
    "delay_between_worker_restarts_s": "use delay_between_env_runner_restarts_s",
    "num_consecutive_worker_failures_tolerance": "use num_consecutive_env_runner_failures_"
    "tolerance",
    "worker_health_probe_timeout_s": "use env_runner_health_probe_timeout_s",
    "worker_restore_timeout_s": "use env_runner_restore_timeout_s",
    "validate_workers_after_construction": "use validate_env_runners_after_construction",
    "max_requests_in_flight_per_sampler_worker": "use max_requests_in_flight_per_env_runner",
    "num_sgd_iter": "use num_epochs",
    "model_config_dict": "use model_config",
    "timesteps_per_iteration": "use min_sample_timesteps_per_iteration",
    "min_sample_timesteps_per_reporting": "use min_sample_timesteps_per_iteration",
    "min_train_timesteps_per_reporting": "use min_train_timesteps_per_iteration",
    "min_iter_time_s": "use min_time_s_per_iteration",
    "min_time_s_per_reporting": "use min_time_s_per_iteration",
    "metrics_smoothing_episodes": "use metrics_num_episodes_for_smoothing",
    "collect_metrics_timeout": "use metrics_episode_collection_timeout_s",
    "learning_starts": "use num_steps_sampled_before_learning_starts",
    "buffer_size": "use replay_buffer_config: {capacity: N}",
    "prioritized_replay": _REPLAY_HINT,
    "prioritized_replay_alpha": "use replay_buffer_config: {alpha: ...}",
    "prioritized_replay_beta": "use replay_buffer_config: {beta: ...}",
    "prioritized_replay_eps": _REPLAY_HINT,
    "replay_sequence_length": "use model_config: {max_seq_len: N}",
    "replay_batch_size": "use train_batch_size_per_learner (num_sequences_per_batch for DRQN)",
    "train_batch_size": "use train_batch_size_per_learner (num_sequences_per_batch for DRQN)",
    "lr_schedule": "give lr a schedule of [timestep, value] pairs, e.g. lr: [[0, 1.0e-3], "
    "[100000, 1.0e-4]]",
    "hiddens": "use model_config: {head_fcnet_hiddens: [...]}",
    "input_evaluation": "use off_policy_estimation_methods",
    "simple_optimizer": "remove it: the new API stack has no policy optimizers",
    "_enable_new_api_stack": "remove it: the new API stack is always on",
    "enable_rl_module_and_learner": "remove it: the plugin runs on the new API stack only",
    "enable_env_runner_and_connector_v2": "remove it: the plugin runs on the new API stack only",
    "framework": "remove it (or set framework: torch): the new API stack runs on torch only",
}

# Keys that `AlgorithmConfig._translate_special_keys` renames before setting them.
_TRANSLATED_KEYS: Final[Mapping[str, str]] = {
    "callbacks": "callbacks_class",
    "create_env_on_driver": "create_env_on_local_worker",
    "custom_eval_function": "custom_evaluation_function",
    "input": "input_",
    "lambda": "lambda_",
}

# Config setters whose keyword arguments may set attributes stored under a private name.
_SETTERS: Final[tuple[str, ...]] = (
    "environment",
    "env_runners",
    "learners",
    "training",
    "rl_module",
    "evaluation",
    "reporting",
    "checkpointing",
    "debugging",
    "fault_tolerance",
    "resources",
)

# Keys that belong one level down; named in the error for a key written at the top level.
_NESTED_KEYS: Final[Mapping[str, str]] = {
    **{key: "model_config" for key in DRQN_MODEL_DEFAULTS},
    **{key: "model_config" for key in ("use_lstm", "head_fcnet_hiddens")},
    **{key: "env_config" for key in ("game", "flicker_prob", "frame_stack", "frame_skip")},
    **{key: "replay_buffer_config" for key in ("capacity", "alpha", "beta")},
}

#: Default storage path, resolved against the working directory.
DEFAULT_STORAGE_PATH: Final[str] = "./results"


class CLIError(Exception):
    """A mistake in the command line, the YAML file or the config; reported in one line."""


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One experiment of a tuned-example YAML file, checked for structure but not yet built.

    Attributes:
        name: The top-level key; Tune names the experiment directory after it.
        run: The algorithm, a key of :data:`ALGORITHMS`.
        env: The env name (from ``env:`` or ``config: {env: ...}``).
        stop: Stop criteria as written (not yet checked; see :func:`resolve_stop`).
        config: Flat AlgorithmConfig keys (not yet checked; see :func:`build_config`).
        path: The file it came from, for error messages.
    """

    name: str
    run: str
    env: str
    stop: dict[str, Any]
    config: dict[str, Any]
    path: Path


# ---------------------------------------------------------------------------------------------
# Reading the file.
# ---------------------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """A safe loader that rejects duplicate keys and reads ``1e-3`` as a float.

    PyYAML implements YAML 1.1, where a float needs a dot: ``lr: 1e-3`` would be the string
    ``"1e-3"`` and fail deep inside the optimizer; YAML 1.2 (and JSON) read it as a number.
    A duplicate key would otherwise silently keep the last value.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_experiment(path: str | os.PathLike[str]) -> Experiment:
    """Reads and checks the structure of a tuned-example YAML file with one experiment.

    Args:
        path: The YAML file.

    Returns:
        The experiment; its ``stop`` and ``config`` are checked later, by
        :func:`resolve_stop` and :func:`build_config`.

    Raises:
        CLIError: If the file is missing or unreadable, is not valid YAML, or does not hold
            exactly one experiment of the form ``name: {run: ..., env: ..., stop: ..., config:
            ...}``.
    """
    path = Path(path)
    if not path.exists():
        raise CLIError(f"{path}: no such file; pass the path of an experiment YAML file.")
    if not path.is_file():
        raise CLIError(f"{path}: not a file; pass the path of an experiment YAML file.")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise CLIError(f"{path}: cannot read the file: {error}") from None
    try:
        document = yaml.load(text, Loader=_StrictLoader)  # A SafeLoader subclass.
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        what = " ".join(str(part) for part in (error.context, error.problem) if part)
        raise CLIError(f"{where}: invalid YAML: {what}.") from None
    except yaml.YAMLError as error:
        raise CLIError(f"{path}: invalid YAML: {_one_line(str(error))}") from None

    example = "name: {run: DRQN, env: StatelessCartPole, stop: {...}, config: {...}}"
    if not isinstance(document, dict) or not document:
        raise CLIError(f"{path}: holds no experiment; write one as {example}.")
    if len(document) > 1:
        raise CLIError(
            f"{path}: holds {len(document)} experiments {list(document)}; the command runs one "
            "per file. Move each into its own file."
        )
    ((name, spec),) = document.items()
    if not isinstance(name, str) or not name.strip() or "/" in name or "\\" in name:
        raise CLIError(
            f"{path}: the experiment name {name!r} must be a non-empty string without slashes "
            "(it names the results directory)."
        )
    if not isinstance(spec, dict):
        raise CLIError(f"{path}: experiment {name!r} must be a mapping, as in {example}.")
    for key in spec:
        if key in _OLD_EXPERIMENT_KEYS:
            raise CLIError(
                f"{path}: experiment key {key!r} is not read here; {_OLD_EXPERIMENT_KEYS[key]}."
            )
        if key not in _EXPERIMENT_KEYS:
            raise CLIError(
                f"{path}: unknown experiment key {key!r}{_did_you_mean(key, _EXPERIMENT_KEYS)}; "
                f"the keys are {list(_EXPERIMENT_KEYS)}."
            )

    run = spec.get("run")
    if run is None:
        raise CLIError(f"{path}: experiment {name!r} has no 'run'; set run: DRQN (or DQN).")
    if run not in ALGORITHMS:
        raise CLIError(
            f"{path}: unknown algorithm run: {run!r}{_did_you_mean(str(run), list(ALGORITHMS))}; "
            f"this command runs {list(ALGORITHMS)} (DQN is RLlib's, for memory-less baselines)."
        )

    stop = spec.get("stop") or {}
    config = spec.get("config") or {}
    for key, value in (("stop", stop), ("config", config)):
        if not isinstance(value, dict):
            raise CLIError(
                f"{path}: experiment {name!r}: {key} must be a mapping, got {_describe(value)}."
            )
    env = spec.get("env")
    config_env = config.get("env")
    if env is not None and config_env is not None and env != config_env:
        raise CLIError(
            f"{path}: env is set twice, to {env!r} and to config.env {config_env!r}; keep one."
        )
    env = env if env is not None else config_env
    if env is None:
        raise CLIError(f"{path}: experiment {name!r} has no env; set e.g. env: StatelessCartPole.")
    if not isinstance(env, str):
        raise CLIError(f"{path}: env must be a registered env name, got {_describe(env)}.")
    config = {key: value for key, value in config.items() if key != "env"}
    return Experiment(name=name, run=run, env=env, stop=dict(stop), config=config, path=path)


# ---------------------------------------------------------------------------------------------
# Stop criteria.
# ---------------------------------------------------------------------------------------------


def resolve_stop(stop: Mapping[str, Any], override_json: str | None = None) -> dict[str, float]:
    """Merges ``--stop`` JSON over the file's stop criteria and checks every key and value.

    Args:
        stop: The file's ``stop`` mapping.
        override_json: ``--stop`` as given, a JSON object; its keys replace the file's.

    Returns:
        Stop criteria for ``tune.RunConfig(stop=...)``: keys from :data:`STOP_KEYS`, numbers.

    Raises:
        CLIError: For bad JSON, an unknown or old-API key, a non-number, or no criterion at all.
    """
    merged = dict(stop)
    if override_json is not None:
        try:
            override = json.loads(override_json)
        except json.JSONDecodeError as error:
            raise CLIError(
                f"--stop {override_json!r} is not valid JSON ({error.msg} at column "
                f"{error.colno}); pass an object such as "
                '\'{"training_iteration": 5, "env_runners/episode_return_mean": 150}\'.'
            ) from None
        if not isinstance(override, dict):
            raise CLIError(
                f"--stop must be a JSON object, got {_describe(override)}; pass e.g. "
                "'{\"training_iteration\": 5}'."
            )
        merged.update(override)
    for key, value in merged.items():
        if key in _OLD_STOP_KEYS:
            raise CLIError(
                f"stop key {key!r} is the old API stack's; use {_OLD_STOP_KEYS[key]!r} instead."
            )
        if key not in STOP_KEYS:
            raise CLIError(
                f"unknown stop key {key!r}{_did_you_mean(str(key), STOP_KEYS)}; Tune would never "
                f"see it and train forever. Use one of {list(STOP_KEYS)}."
            )
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise CLIError(f"stop value for {key!r} must be a number, got {_describe(value)}.")
    if not merged:
        raise CLIError(
            "no stop criterion: training would never end. Add stop: {...} to the file or pass "
            "--stop '{\"num_env_steps_sampled_lifetime\": 50000}'."
        )
    return merged


# ---------------------------------------------------------------------------------------------
# Building the config.
# ---------------------------------------------------------------------------------------------


def build_config(
    experiment: Experiment,
    *,
    num_env_runners: int | None = None,
    num_gpus_per_learner: float | None = None,
) -> AlgorithmConfig:
    """Builds and validates the experiment's AlgorithmConfig, in this process, without Ray.

    Keys are applied as ``AlgorithmConfig.update_from_dict`` would apply them (that is how Tune
    rebuilds the config in the trial), after checking each one: ``update_from_dict`` itself
    silently ``setattr``s unknown keys, so a typo would otherwise train with a default.
    ``model_config`` goes through ``config.rl_module()``: ``update_from_dict`` cannot set it
    (a read-only property in Ray 2.60).

    Args:
        experiment: From :func:`load_experiment`.
        num_env_runners: Overrides the file's ``num_env_runners``.
        num_gpus_per_learner: Overrides the file's ``num_gpus_per_learner``.

    Returns:
        The validated config.

    Raises:
        CLIError: For an unknown or old-API key, or anything ``config.validate()`` rejects.
    """
    config = ALGORITHMS[experiment.run]()
    by_update_from_dict, by_setter = _sort_config_keys(experiment, config)
    try:
        require_known_env(experiment.env)
    except ValueError as error:
        raise CLIError(f"{experiment.path}: env: {_one_line(str(error))}") from None
    where = f"{experiment.path}: config"
    try:
        config.environment(experiment.env)
        # A copy: update_from_dict replaces class paths in the dicts it is given by classes.
        config.update_from_dict(copy.deepcopy(by_update_from_dict))
        for setter, kwargs in by_setter.items():
            getattr(config, setter)(**kwargs)
        if num_env_runners is not None:
            config.env_runners(num_env_runners=num_env_runners)
        if num_gpus_per_learner is not None:
            config.learners(num_gpus_per_learner=num_gpus_per_learner)
        config.validate()
    except Exception as error:  # Any error here comes from the user's settings.
        raise CLIError(f"{where}: {_one_line(str(error)) or type(error).__name__}") from None
    return config


def _sort_config_keys(
    experiment: Experiment, config: AlgorithmConfig
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Checks every config key and splits them by how they are applied.

    A key is known if it is an attribute of the config (``vars(config)``), a settable property
    (``train_batch_size_per_learner``), a key that ``update_from_dict`` renames (``lambda``,
    ``callbacks``...), or a private attribute's public name that a setter takes as an argument
    (``model_config`` -> ``rl_module(model_config=...)``).

    Returns:
        Keys for ``update_from_dict``, and ``{setter name: kwargs}`` for the others.
    """
    attributes = {name for name in vars(config) if name not in ("algo_class", "_is_frozen")}
    settable = attributes | {
        name
        for name, member in inspect.getmembers(type(config))
        if isinstance(member, property) and member.fset is not None
    }
    setter_args = _private_setter_arguments(config, attributes)
    public = {name for name in settable if not name.startswith("_")}
    vocabulary = sorted((public - set(_OLD_CONFIG_KEYS)) | set(setter_args) | set(_TRANSLATED_KEYS))

    by_update_from_dict: dict[str, Any] = {}
    by_setter: dict[str, dict[str, Any]] = {}
    where = f"{experiment.path}: config"
    for key, value in experiment.config.items():
        if not isinstance(key, str):
            raise CLIError(f"{where}: keys must be strings, got {_describe(key)}.")
        if key in _OLD_CONFIG_KEYS and not (key == "framework" and value == "torch"):
            raise CLIError(f"{where} key {key!r} is an old-API-stack key; {_OLD_CONFIG_KEYS[key]}.")
        if key in setter_args:
            by_setter.setdefault(setter_args[key], {})[key] = value
        elif key in settable or _TRANSLATED_KEYS.get(key) in attributes or key == "framework":
            by_update_from_dict[key] = value
        else:
            nested = _NESTED_KEYS.get(key)
            hint = (
                f"; it belongs inside {nested}: {{{key}: ...}}"
                if nested
                else _did_you_mean(key, vocabulary)
            )
            raise CLIError(
                f"{where} has unknown key {key!r} for {experiment.run}{hint}. Keys are flat "
                "AlgorithmConfig settings of the new API stack (e.g. lr, gamma, "
                "num_env_runners, model_config)."
            )
    model_config = by_setter.get("rl_module", {}).get("model_config")
    if model_config is not None and not isinstance(model_config, dict):
        raise CLIError(
            f"{where}: model_config must be a mapping, got {_describe(model_config)}; write "
            "e.g. model_config: {lstm_cell_size: 32, max_seq_len: 10}."
        )
    return by_update_from_dict, by_setter


def _private_setter_arguments(config: AlgorithmConfig, attributes: set[str]) -> dict[str, str]:
    """Maps ``name`` -> setter for attributes stored as ``_name`` that a setter sets by name."""
    arguments: dict[str, str] = {}
    for setter in _SETTERS:
        for klass in type(config).__mro__:
            function = vars(klass).get(setter)
            if function is None:
                continue
            for name in inspect.signature(function).parameters:
                if f"_{name}" in attributes and name not in attributes:
                    arguments.setdefault(name, setter)
    return arguments


# ---------------------------------------------------------------------------------------------
# Training.
# ---------------------------------------------------------------------------------------------


def _check_resources(config: AlgorithmConfig) -> None:
    """Fails now, not after Tune waits forever, if this machine cannot host the trial."""
    if os.environ.get("RAY_ADDRESS"):
        return  # A cluster to connect to: it may autoscale, and Tune says what is missing.
    try:
        required = config.algo_class.default_resource_request(config.to_dict()).required_resources
    except Exception as error:  # The round trip Tune does to rebuild the config in the trial.
        raise CLIError(f"config: {_one_line(str(error)) or type(error).__name__}") from None
    if ray.is_initialized():
        cluster = ray.cluster_resources()
        available = {"CPU": int(cluster.get("CPU", 0)), "GPU": int(cluster.get("GPU", 0))}
    else:
        available = {"CPU": os.cpu_count() or 1, "GPU": torch.cuda.device_count()}
    for resource, have in available.items():
        need = required.get(resource, 0)
        if need > have:
            fix = (
                "lower --num-env-runners (env runners take 1 CPU each, the trial 1 more)"
                if resource == "CPU"
                else "pass --num-gpus-per-learner 0 to train on the CPU"
            )
            raise CLIError(
                f"the run needs {need:g} {resource}s but only {have} are available; {fix}."
            )


def _experiment_name(storage_path: Path, name: str) -> str:
    """The YAML name, or the name with a timestamp if that directory already exists."""
    if not (storage_path / name).exists():
        return name
    return f"{name}_{time.strftime('%Y-%m-%d_%H-%M-%S')}"


def _format_return(value: Any) -> str:
    if isinstance(value, int | float) and not math.isnan(value):
        return f"{value:8.2f}"
    return "     n/a"


def _get(result: Mapping[str, Any], key: str) -> Any:
    """Looks up a "/"-joined key in a nested result dict."""
    node: Any = result
    for part in key.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


class _ProgressPrinter(tune.Callback):
    """Prints one line per training iteration, in the driver (Tune's own output is off)."""

    @override(tune.Callback)
    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        steps = _get(result, NUM_ENV_STEPS_SAMPLED_LIFETIME) or 0
        print(
            f"iter {_get(result, TRAINING_ITERATION):4d} | "
            f"env steps {int(steps):>9,} | "
            f"return mean {_format_return(_get(result, RETURN_MEAN))} | "
            f"time {_get(result, TIME_TOTAL_S) or 0.0:8.1f} s",
            flush=True,
        )


def train(
    experiment: Experiment,
    config: AlgorithmConfig,
    stop: Mapping[str, float],
    *,
    storage_path: Path,
    checkpoint_freq: int = 0,
) -> int:
    """Trains one Tune trial of ``config`` until ``stop``; prints progress and a summary.

    Starts a local Ray instance with every CPU of the machine unless Ray is running already
    (or ``RAY_ADDRESS`` names a cluster), and shuts down only what it started.

    Args:
        experiment: Names the experiment directory and the summary.
        config: A validated config, from :func:`build_config`.
        stop: Stop criteria, from :func:`resolve_stop`; training ends when any is met.
        storage_path: Absolute directory for Tune's results and checkpoints.
        checkpoint_freq: Also checkpoint every this many iterations (0: only at the end).

    Returns:
        The exit status: 0 if training met a stop criterion and saved a checkpoint; 1 if it
        failed, was interrupted, or saved no checkpoint.
    """
    name = _experiment_name(storage_path, experiment.name)
    # Tune's new console output prints its own header even at verbose=0; the old one is silent
    # there, which leaves our one line per iteration (RLlib's example runner does the same).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    started_ray = not ray.is_initialized()
    if started_ray:
        if os.environ.get("RAY_ADDRESS"):
            ray.init()  # Connecting to a cluster: its resources are fixed already.
        else:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
    print(
        f"Training {experiment.run} on {experiment.env} until any of {dict(stop)}; "
        f"results in {storage_path / name}",
        flush=True,
    )
    try:
        tuner = tune.Tuner(
            config.algo_class,
            param_space=config,
            run_config=tune.RunConfig(
                name=name,
                storage_path=str(storage_path),
                stop=dict(stop),
                verbose=0,
                callbacks=[_ProgressPrinter()],
                checkpoint_config=tune.CheckpointConfig(
                    checkpoint_frequency=checkpoint_freq, checkpoint_at_end=True
                ),
            ),
        )
        result = tuner.fit()[0]
    finally:
        if started_ray:
            ray.shutdown()

    if result.error is not None:
        print(
            f"rllib: training failed: {_one_line(str(result.error))}; the full traceback is in "
            f"{result.path}/error.txt",
            file=sys.stderr,
        )
        return 1
    metrics = result.metrics or {}
    returns = (
        result.metrics_dataframe[RETURN_MEAN].dropna()
        if result.metrics_dataframe is not None and RETURN_MEAN in result.metrics_dataframe
        else None
    )
    reached = [
        key
        for key, value in stop.items()
        if isinstance(_get(metrics, key), int | float) and _get(metrics, key) >= value
    ]
    print(
        f"Stopped after {_get(metrics, TRAINING_ITERATION)} iterations, "
        f"{int(_get(metrics, NUM_ENV_STEPS_SAMPLED_LIFETIME) or 0):,} env steps, "
        f"{_get(metrics, TIME_TOTAL_S) or 0.0:.1f} s; reached: {reached or 'none'}.",
        flush=True,
    )
    if returns is not None and len(returns):
        target = stop.get(RETURN_MEAN)
        verdict = (
            f" (target {target:g}: {'reached' if returns.max() >= target else 'not reached'})"
            if target is not None
            else ""
        )
        print(
            f"Mean episode return: last {returns.iloc[-1]:.2f}, best {returns.max():.2f}{verdict}",
            flush=True,
        )
    if result.checkpoint is None:
        print("rllib: training ended without a checkpoint.", file=sys.stderr)
        return 1
    print(
        f"Checkpoint: {result.checkpoint.path}\n"
        "Load it with ray.rllib.algorithms.algorithm.Algorithm.from_checkpoint(path).",
        flush=True,
    )
    if not reached:
        print("rllib: training was interrupted before any stop criterion.", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------------------------


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 0:  # Also rejects NaN.
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


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


def _run_train_file(args: argparse.Namespace) -> int:
    experiment = load_experiment(args.path)
    stop = resolve_stop(experiment.stop, args.stop)
    config = build_config(
        experiment,
        num_env_runners=args.num_env_runners,
        num_gpus_per_learner=args.num_gpus_per_learner,
    )
    storage_path = _resolve_storage_path(args.storage_path)
    _check_resources(config)
    _make_storage_path(storage_path)  # The last check, and the first write.
    return train(
        experiment,
        config,
        stop,
        storage_path=storage_path,
        checkpoint_freq=args.checkpoint_freq,
    )


def _add_train_parser(subparsers: argparse._SubParsersAction) -> None:
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
        "(name: {run: DRQN|DQN, env: ..., stop: {...}, config: {...}}).",
        epilog="Exit status: 0 when training met a stop criterion and saved a checkpoint (the "
        "summary says whether the return target was met), 1 when training failed or was "
        "interrupted, 2 for a bad command line, file or config (nothing is started or "
        "written).",
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
        "--checkpoint-freq",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="also checkpoint every N iterations (default 0: only at the end)",
    )
    file_parser.add_argument(
        "--storage-path",
        default=DEFAULT_STORAGE_PATH,
        metavar="DIR",
        help=f"where Tune writes results and checkpoints (default {DEFAULT_STORAGE_PATH})",
    )
    file_parser.add_argument(
        "--num-env-runners",
        type=_non_negative_int,
        metavar="N",
        help="override config num_env_runners (0: sample in the trial's own process)",
    )
    file_parser.add_argument(
        "--num-gpus-per-learner",
        type=_non_negative_float,
        metavar="N",
        help="override config num_gpus_per_learner",
    )
    file_parser.set_defaults(handler=_run_train_file)


def _run_evaluate(args: argparse.Namespace) -> int:
    def report(result: evaluation.FlickerResult) -> None:
        print(
            f"flicker prob {result.flicker_prob:4.2f} ({result.fraction_shown:4.0%} of frames "
            f"shown) | return {result.mean:8.2f} +- {result.std:7.2f} over {result.episodes} "
            "episodes",
            flush=True,
        )

    try:
        probs = evaluation.parse_flicker_probs(args.flicker_probs)
        episodes = evaluation.check_num_episodes(args.episodes)
        epsilon = evaluation.check_epsilon(args.epsilon)
        max_episode_steps = evaluation.check_max_episode_steps(args.max_episode_steps)
        spec = evaluation.inspect_checkpoint(args.checkpoint)
        print(
            f"Evaluating {spec.algorithm} checkpoint {spec.path} on {spec.env_name} at flicker "
            f"probs {list(probs)}: {episodes} episodes each, epsilon {epsilon:g}, seed "
            f"{args.seed}",
            flush=True,
        )
        result = evaluation.evaluate(
            spec,
            probs,
            episodes,
            epsilon=epsilon,
            seed=args.seed,
            max_episode_steps=max_episode_steps,
            out_dir=args.out,
            video_dir=args.video,
            progress=report,
        )
    except evaluation.EvaluationError as error:
        raise CLIError(str(error)) from None
    print(f"Table: {result.csv_path}\nJSON:  {result.json_path}\nPlot:  {result.plot_path}")
    if result.video_path is not None:
        print(f"Video: {result.video_path}")
    return 0


def _add_evaluate_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="play a checkpoint across flicker probabilities",
        description="Play a checkpoint epsilon-greedily at each flicker probability (the "
        "probability of blanking a frame) and write evaluation.csv, evaluation.json and "
        "observability.png (mean return +- std against observability), as in Hausknecht & "
        "Stone (2015), Figure 5.",
        epilog="Exit status: 0 when done, 2 for a bad command line or checkpoint (checked "
        "before any episode is played; nothing is written).",
    )
    parser.add_argument(
        "checkpoint",
        metavar="CHECKPOINT",
        help="an algorithm checkpoint: <storage-path>/<experiment>/<trial>/checkpoint_00000N "
        "from `rllib train file`, or a directory written by Algorithm.save_to_path()",
    )
    parser.add_argument(
        "--flicker-probs",
        required=True,
        metavar="P,P,...",
        help="comma-separated probabilities in [0, 1] of blanking a frame, e.g. "
        "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1",
    )
    parser.add_argument(
        "--episodes", required=True, metavar="N", help="episodes per flicker probability (>= 1)"
    )
    parser.add_argument(
        "--epsilon",
        default=str(evaluation.DEFAULT_EPSILON),
        metavar="E",
        help="probability of a random action per step (default "
        f"{evaluation.DEFAULT_EPSILON}, the paper's evaluation; 0: greedy)",
    )
    parser.add_argument(
        "--seed",
        type=_non_negative_int,
        default=0,
        metavar="S",
        help="episode i resets its env with seed S+i at every flicker probability (default 0)",
    )
    parser.add_argument(
        "--max-episode-steps",
        default=str(evaluation.DEFAULT_MAX_EPISODE_STEPS),
        metavar="N",
        help="cut an episode after N steps; its return so far counts (default "
        f"{evaluation.DEFAULT_MAX_EPISODE_STEPS:,}, ALE's own cap; envs without a time limit, "
        "such as StatelessCartPole, need one)",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="where the table, JSON and plot go (default ./evaluation/<checkpoint name>; "
        "never inside the checkpoint)",
    )
    parser.add_argument(
        "--video",
        metavar="DIR",
        help="also save the first episode at the first flicker probability as a GIF in DIR",
    )
    parser.set_defaults(handler=_run_evaluate)


#: One function per subcommand; each adds its parser and sets ``handler``.
_SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_train_parser,
    _add_evaluate_parser,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``rllib`` argument parser, one subparser per entry of ``_SUBCOMMANDS``."""
    parser = argparse.ArgumentParser(
        prog="rllib",
        description="Train DRQN (rllib-drqn) or RLlib's DQN from tuned-example YAML files, "
        "and evaluate checkpoints across observability.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_subcommand in _SUBCOMMANDS:
        add_subcommand(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``rllib`` command; returns its exit status (see the module docstring)."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except CLIError as error:
        print(f"rllib: error: {error}", file=sys.stderr)
        return 2


def _did_you_mean(key: str, candidates: Sequence[str] | set[str]) -> str:
    close = difflib.get_close_matches(key, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _one_line(text: str) -> str:
    return " ".join(text.split())
