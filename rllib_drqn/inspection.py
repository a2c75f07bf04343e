"""Reading a checkpoint for evaluation or export: its env, env_config and RLModule, no Algorithm.

Only the RLModule is loaded (from ``learner_group/learner/rl_module/default_policy`` inside
the checkpoint), plus the env name and ``env_config`` from the pickled algorithm config
(``class_and_ctor_args.pkl``): no ``Algorithm``, no env runners, no Ray. Every problem
(a missing, partial, corrupt or old-API-stack checkpoint, a class that cannot be imported)
surfaces here, as an :class:`EvaluationError` that names the path and what to pass instead,
before a weight is loaded. :mod:`rllib_drqn.checkpoints` checks a checkpoint for restoring a
whole Algorithm; this module for playing (or exporting) its module alone.
:func:`inspect_module_checkpoint` reads an RLModule directory on its own
(``module.save_to_path()``), for :mod:`rllib_drqn.export`.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
from pathlib import Path
from typing import Any, Final

import torch
from ray.rllib.core import (
    COMPONENT_LEARNER,
    COMPONENT_LEARNER_GROUP,
    COMPONENT_RL_MODULE,
    DEFAULT_MODULE_ID,
)
from ray.rllib.core.rl_module.rl_module import RLModule
from ray.rllib.utils.checkpoints import Checkpointable, get_checkpoint_info

from rllib_drqn.envs import FLICKERING_ATARI, STATELESS_CARTPOLE
from rllib_drqn.messages import one_line

__all__ = [
    "MODULE_SUBDIR",
    "CheckpointSpec",
    "EvaluationError",
    "default_out_dir",
    "inspect_checkpoint",
    "inspect_module_checkpoint",
    "is_module_checkpoint",
    "load_module",
]

#: Where, inside an Algorithm checkpoint of the new API stack, the single-agent RLModule lies.
MODULE_SUBDIR: Final[Path] = (
    Path(COMPONENT_LEARNER_GROUP) / COMPONENT_LEARNER / COMPONENT_RL_MODULE / DEFAULT_MODULE_ID
)

_CHECKPOINT_HINT: Final[str] = (
    "pass a checkpoint directory written by `rllib train file` (<storage-path>/<experiment>/"
    "<trial>/checkpoint_00000N) or by Algorithm.save_to_path()"
)
_TUNE_CHECKPOINT: Final[re.Pattern[str]] = re.compile(r"^checkpoint_\d+$")


class EvaluationError(ValueError):
    """A bad checkpoint, flicker probability, episode count, epsilon or output directory.

    The message is one line that names the value received and what to pass instead.
    """


@dataclasses.dataclass(frozen=True)
class CheckpointSpec:
    """What evaluation needs from an Algorithm checkpoint, read without building anything.

    Attributes:
        path: The checkpoint directory, absolute.
        name: A readable name: the directory's name, prefixed with the trial's for Tune
            checkpoints (``checkpoint_000003`` alone says nothing).
        algorithm: The algorithm class's name (``"DRQN"``, ``"DQN"``).
        env: The env as configured: a registered name, a gymnasium id or an env class
            (``None`` for an RLModule checkpoint read alone, see
            :func:`inspect_module_checkpoint`).
        env_config: The config's ``env_config``.
        module_path: The RLModule checkpoint, ``<path>/learner_group/learner/rl_module/
            default_policy``.
        module_class: The RLModule class, imported.
    """

    path: Path
    name: str
    algorithm: str
    env: Any
    env_config: dict[str, Any]
    module_path: Path
    module_class: type[RLModule]

    @property
    def env_name(self) -> str:
        return self.env if isinstance(self.env, str) else getattr(self.env, "__name__", "env")

    @property
    def trained_flicker_prob(self) -> float | None:
        """The flicker probability training saw, for the plugin's own envs; else ``None``."""
        if self.env in (FLICKERING_ATARI, STATELESS_CARTPOLE):
            return float(self.env_config.get("flicker_prob", 0.0))
        return None


def inspect_checkpoint(path: str | os.PathLike[str]) -> CheckpointSpec:
    """Checks an Algorithm checkpoint and reads its env and module class; builds nothing.

    Reads ``rllib_checkpoint.json`` (through RLlib's ``get_checkpoint_info``), the pickled
    algorithm config in ``class_and_ctor_args.pkl`` (the ``AlgorithmConfig.get_state()`` dict
    that ``Algorithm.get_ctor_args_and_kwargs`` stores) and the module's own
    ``class_and_ctor_args.pkl``, so that every problem surfaces before a weight is loaded.

    Raises:
        EvaluationError: If the path is missing, is not a (new-API-stack, single-agent)
            Algorithm checkpoint, is corrupt, or names a class that cannot be imported. The
            message says what to pass instead (e.g. the checkpoint inside a trial directory).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise EvaluationError(f"{path}: no such directory; {_CHECKPOINT_HINT}.")
    if not path.is_dir():
        raise EvaluationError(f"{path}: not a directory; {_CHECKPOINT_HINT}.")
    path = path.resolve()
    if not any((path / f"algorithm_state.{ext}").is_file() for ext in ("pkl", "msgpck")):
        raise EvaluationError(_not_a_checkpoint(path))

    try:
        info = get_checkpoint_info(str(path))
    except Exception as error:  # JSONDecodeError from a corrupt rllib_checkpoint.json, ...
        raise EvaluationError(
            f"{path}: corrupt checkpoint, cannot read rllib_checkpoint.json "
            f"({one_line(error)}); {_CHECKPOINT_HINT}."
        ) from None
    if info["type"] != "Algorithm" or info["checkpoint_version"].major < 2:
        raise EvaluationError(
            f"{path}: a {info['type']} checkpoint of version {info['checkpoint_version']} (old "
            f"API stack); this command reads new-API-stack Algorithm checkpoints (version >= "
            f"2.0, Ray >= 2.10); {_CHECKPOINT_HINT}."
        )
    module_ids = sorted(info.get("module_ids") or ())
    if module_ids != [DEFAULT_MODULE_ID]:
        found = f"modules {module_ids}" if module_ids else f"no {MODULE_SUBDIR.parent}"
        raise EvaluationError(
            f"{path}: has {found}; evaluation plays single-agent checkpoints, whose one "
            f"module is {MODULE_SUBDIR}. {_CHECKPOINT_HINT[0].upper()}{_CHECKPOINT_HINT[1:]}."
        )

    ctor_info = _load_ctor_info(path / Checkpointable.CLASS_AND_CTOR_ARGS_FILE_NAME, "algorithm")
    try:
        config = ctor_info["ctor_args_and_kwargs"][0][0]
        env, env_config = config["env"], dict(config["env_config"] or {})
    except (KeyError, IndexError, TypeError, ValueError):
        raise EvaluationError(
            f"{path / Checkpointable.CLASS_AND_CTOR_ARGS_FILE_NAME}: corrupt checkpoint, holds "
            f"no algorithm config with env and env_config; {_CHECKPOINT_HINT}."
        ) from None
    if not env:
        raise EvaluationError(
            f"{path}: the checkpoint's config names no env (config.environment() was not "
            "called), so there is nothing to evaluate on; pass a checkpoint trained on an env."
        )

    module_path = path / MODULE_SUBDIR
    module_info = _load_ctor_info(
        module_path / Checkpointable.CLASS_AND_CTOR_ARGS_FILE_NAME, "RLModule"
    )
    module_class = module_info.get("class")
    if not (isinstance(module_class, type) and issubclass(module_class, RLModule)):
        raise EvaluationError(
            f"{module_path}: corrupt checkpoint, its class_and_ctor_args.pkl names "
            f"{module_class!r}, not an RLModule class; {_CHECKPOINT_HINT}."
        )
    algorithm = ctor_info.get("class")
    return CheckpointSpec(
        path=path,
        name=_checkpoint_name(path),
        algorithm=getattr(algorithm, "__name__", str(algorithm)),
        env=env,
        env_config=env_config,
        module_path=module_path,
        module_class=module_class,
    )


def is_module_checkpoint(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an RLModule checkpoint directory (``module_state.*`` in it)."""
    path = Path(path).expanduser()
    return path.is_dir() and any(path.glob("module_state.*"))


def inspect_module_checkpoint(path: str | os.PathLike[str]) -> CheckpointSpec:
    """Checks an RLModule checkpoint directory and reads its module class; builds nothing.

    Inside an Algorithm checkpoint (``<checkpoint>/learner_group/learner/rl_module/
    default_policy``) this is :func:`inspect_checkpoint` of that checkpoint, env included.
    A module saved on its own (``module.save_to_path(path)``) says nothing of its env: its
    spec has ``env=None``, ``env_config={}``, ``algorithm=""`` and ``path == module_path``.

    Raises:
        EvaluationError: If ``path`` holds no ``module_state.*`` or its
            ``class_and_ctor_args.pkl`` is missing, corrupt or names a class that cannot be
            imported or is no RLModule.
    """
    path = Path(path).expanduser()
    if not is_module_checkpoint(path):
        raise EvaluationError(
            f"{path}: not an RLModule checkpoint (it holds no module_state.*); pass a "
            "directory written by module.save_to_path(), or " + _CHECKPOINT_HINT
        )
    path = path.resolve()
    for ancestor in path.parents:
        if (ancestor / "algorithm_state.pkl").is_file() and ancestor / MODULE_SUBDIR == path:
            return inspect_checkpoint(ancestor)
    module_info = _load_ctor_info(path / Checkpointable.CLASS_AND_CTOR_ARGS_FILE_NAME, "RLModule")
    module_class = module_info.get("class")
    if not (isinstance(module_class, type) and issubclass(module_class, RLModule)):
        raise EvaluationError(
            f"{path}: corrupt checkpoint, its class_and_ctor_args.pkl names "
            f"{module_class!r}, not an RLModule class; pass a directory written by "
            "module.save_to_path()."
        )
    return CheckpointSpec(
        path=path,
        name=path.name,
        algorithm="",
        env=None,
        env_config={},
        module_path=path,
        module_class=module_class,
    )


def load_module(spec: CheckpointSpec) -> RLModule:
    """Builds the checkpoint's RLModule on the CPU, with its trained weights, in eval mode.

    This is ``RLModule.from_checkpoint`` with ``inference_only=True`` forced into the stored
    constructor arguments (``from_checkpoint`` cannot override them for a ``TorchRLModule``,
    whose ``__init__`` takes ``*args, **kwargs``): only an inference-only module makes
    ``TorchRLModule.set_state`` fail on missing weights, while a full one loads with
    ``strict=False`` and would silently keep random weights from a damaged state. Acting needs
    no target network anyway, and env runners build their modules the same way.
    """
    ctor_info = _load_ctor_info(
        spec.module_path / Checkpointable.CLASS_AND_CTOR_ARGS_FILE_NAME, "RLModule"
    )
    try:
        args, kwargs = ctor_info["ctor_args_and_kwargs"]
        module = spec.module_class(*args, **{**kwargs, "inference_only": True})
        module.restore_from_path(spec.module_path)
    except Exception as error:
        raise EvaluationError(
            f"{spec.module_path}: corrupt checkpoint, cannot restore the "
            f"{spec.module_class.__name__} ({type(error).__name__}: {one_line(error)}); "
            f"{_CHECKPOINT_HINT}."
        ) from None
    if isinstance(module, torch.nn.Module):
        module.eval()
    return module


def default_out_dir(spec: CheckpointSpec) -> Path:
    """``./evaluation/<checkpoint name>``: next to the user, never inside the checkpoint."""
    return Path("evaluation") / spec.name


def _load_ctor_info(file: Path, what: str) -> dict[str, Any]:
    """Unpickles a ``class_and_ctor_args.pkl``; a missing class is a one-line error."""
    if not file.is_file():
        raise EvaluationError(f"{file}: missing, the checkpoint is incomplete; {_CHECKPOINT_HINT}.")
    try:
        with file.open("rb") as stream:
            ctor_info = pickle.load(stream)
    except (ImportError, AttributeError) as error:
        # AttributeError: the module imports but no longer defines the class.
        raise EvaluationError(
            f"{file}: the checkpoint's {what} class cannot be imported ({one_line(error)}); "
            "install the package (and version) that defined it when the checkpoint was "
            "written, or pass a checkpoint whose classes this environment has."
        ) from None
    except Exception as error:  # UnpicklingError, EOFError, ...: a damaged file.
        raise EvaluationError(
            f"{file}: corrupt checkpoint, cannot unpickle it ({type(error).__name__}: "
            f"{one_line(error)}); {_CHECKPOINT_HINT}."
        ) from None
    if not isinstance(ctor_info, dict) or "ctor_args_and_kwargs" not in ctor_info:
        raise EvaluationError(
            f"{file}: corrupt checkpoint, not an RLlib class_and_ctor_args file; "
            f"{_CHECKPOINT_HINT}."
        )
    return ctor_info


def _not_a_checkpoint(path: Path) -> str:
    """Says why ``path`` is no Algorithm checkpoint and, where it can, which one to pass."""
    # A trial, experiment or storage directory of `rllib train file`: point at a checkpoint.
    for pattern in ("checkpoint_*", "*/checkpoint_*", "*/*/checkpoint_*"):
        children = [
            child
            for child in sorted(path.glob(pattern))
            if child.is_dir() and _TUNE_CHECKPOINT.match(child.name)
        ]
        if children:
            break
    if children:
        return (
            f"{path}: not a checkpoint but a directory of Tune results holding "
            f"{len(children)}; pass one of them, e.g. the last: {children[-1]}"
        )
    for ancestor in path.parents:
        if (ancestor / "algorithm_state.pkl").is_file():
            return (
                f"{path}: a part of the Algorithm checkpoint {ancestor} (the RLModule alone "
                f"does not say which env it plays); pass {ancestor}"
            )
    return f"{path}: not an Algorithm checkpoint (it holds no algorithm_state.pkl); " + (
        _CHECKPOINT_HINT
    )


def _checkpoint_name(path: Path) -> str:
    if _TUNE_CHECKPOINT.match(path.name) and path.parent.name:
        return f"{path.parent.name}_{path.name}"
    return path.name
