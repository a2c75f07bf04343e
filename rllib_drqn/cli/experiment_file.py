"""Experiment files: reading, checking and building a tuned-example YAML experiment, without Ray.

The file holds one experiment in RLlib's tuned-example format::

    stateless-cartpole-drqn:
      run: DRQN                      # or DQN: RLlib's own, the memory-less baseline
      env: StatelessCartPole
      stop: {env_runners/episode_return_window_mean: 150, num_env_steps_sampled_lifetime: 50000}
      config:                        # flat AlgorithmConfig keys of the new API stack
        lr: 0.001
        model_config: {lstm_cell_size: 32, max_seq_len: 10}

Everything is checked in the driver before Ray starts: the file, its YAML, its structure, every
config and stop key (unknown and old-API-stack keys are rejected with the key to use instead),
then ``config.validate()`` and the resources the run needs. A mistake costs a second and leaves
the storage path untouched.
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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import ray
import torch
import yaml
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    EPISODE_RETURN_MEAN,
    EVALUATION_RESULTS,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    NUM_EPISODES_LIFETIME,
)
from ray.tune.result import TIME_TOTAL_S, TRAINING_ITERATION

from rllib_drqn.baselines import BaselineDQNConfig, FrameStackDQNConfig
from rllib_drqn.config import DRQNConfig, require_known_env
from rllib_drqn.messages import one_line
from rllib_drqn.module import DRQN_MODEL_DEFAULTS
from rllib_drqn.reporting import RETURN_WINDOW_MEAN

__all__ = [
    "ALGORITHMS",
    "DEFAULT_STORAGE_PATH",
    "RETURN_MEAN",
    "RETURN_WINDOW",
    "STOP_KEYS",
    "CLIError",
    "Experiment",
    "build_config",
    "check_resources",
    "load_experiment",
    "non_negative_float",
    "non_negative_int",
    "parse_experiment",
    "resolve_stop",
]

#: Algorithms a YAML ``run:`` may name. Config classes are imported directly: naming "DQN" by
#: string through ``ray.rllib.algorithms.registry`` would import DreamerV3 (and Pillow) too.
#: "DQN" is RLlib's DQN with the plugin's episode reporting (``BaselineDQNConfig``), so it
#: reports the return window DRQN reports and its YAML can stop on it.
ALGORITHMS: Final[Mapping[str, type[AlgorithmConfig]]] = {
    "DRQN": DRQNConfig,
    "DQN": BaselineDQNConfig,
    "FrameStackDQN": FrameStackDQNConfig,
}

#: The mean return of the last ``episode_return_window`` episodes (``rllib_drqn.reporting``):
#: what the tuned examples stop on and the progress line shows.
RETURN_WINDOW: Final[str] = f"{ENV_RUNNER_RESULTS}/{RETURN_WINDOW_MEAN}"
#: RLlib's own: the mean of the episodes since the previous report (at most
#: ``metrics_num_episodes_for_smoothing``), often one or two near a threshold.
RETURN_MEAN: Final[str] = f"{ENV_RUNNER_RESULTS}/{EPISODE_RETURN_MEAN}"

#: Stop keys, as RLlib's tuned examples write them; in Ray 2.60 each is the "/"-joined path of a
#: real entry of ``Algorithm.train()``'s result, which is how Tune matches stop criteria.
STOP_KEYS: Final[tuple[str, ...]] = (
    RETURN_WINDOW,
    RETURN_MEAN,
    f"{EVALUATION_RESULTS}/{RETURN_MEAN}",
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    f"{ENV_RUNNER_RESULTS}/{NUM_ENV_STEPS_SAMPLED_LIFETIME}",
    f"{ENV_RUNNER_RESULTS}/{NUM_EPISODES_LIFETIME}",
    TRAINING_ITERATION,
    TIME_TOTAL_S,
)

# Old-API-stack result keys (Ray <= 2.9 tuned examples) -> the Ray 2.60 key. The old
# episode_reward_mean averaged the last 100 episodes: the return window is its equivalent.
_OLD_STOP_KEYS: Final[Mapping[str, str]] = {
    "episode_reward_mean": RETURN_WINDOW,
    "episode_return_mean": RETURN_WINDOW,
    "sampler_results/episode_reward_mean": RETURN_WINDOW,
    "env_runners/episode_reward_mean": RETURN_WINDOW,
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
    return parse_experiment(text, path)


def parse_experiment(text: str, path: Path) -> Experiment:
    """Checks the structure of an experiment file's text (see :func:`load_experiment`).

    Args:
        text: The file's contents.
        path: Where they came from, for error messages.
    """
    try:
        document = yaml.load(text, Loader=_StrictLoader)  # A SafeLoader subclass.
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        what = " ".join(str(part) for part in (error.context, error.problem) if part)
        raise CLIError(f"{where}: invalid YAML: {what}.") from None
    except yaml.YAMLError as error:
        raise CLIError(f"{path}: invalid YAML: {one_line(str(error), limit=None)}") from None

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
                '\'{"training_iteration": 5, "env_runners/episode_return_window_mean": 150}\'.'
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
        raise CLIError(f"{experiment.path}: env: {one_line(str(error), limit=None)}") from None
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
        raise CLIError(
            f"{where}: {one_line(str(error), limit=None) or type(error).__name__}"
        ) from None
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


def check_resources(config: AlgorithmConfig) -> None:
    """Fails now, not after Tune waits forever, if this machine cannot host the trial."""
    if os.environ.get("RAY_ADDRESS"):
        return  # A cluster to connect to: it may autoscale, and Tune says what is missing.
    try:
        required = config.algo_class.default_resource_request(config.to_dict()).required_resources
    except Exception as error:  # The round trip Tune does to rebuild the config in the trial.
        raise CLIError(
            f"config: {one_line(str(error), limit=None) or type(error).__name__}"
        ) from None
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


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 0:  # Also rejects NaN.
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _did_you_mean(key: str, candidates: Sequence[str] | set[str]) -> str:
    close = difflib.get_close_matches(key, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"
