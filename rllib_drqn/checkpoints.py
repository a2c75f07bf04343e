"""Checkpoints that survive a fresh process: replay in the checkpoint, and loads that explain.

A DRQN run on Atari lasts hours to days, so it is checkpointed, killed and resumed. RLlib 2.60
(new API stack) gets three things wrong there, measured:

- ``store_buffer_in_checkpoints=True`` (a ``DQNConfig.training()`` setting) does nothing:
  only the old API stack's ``Algorithm.__getstate__`` reads it, so the replay always comes back
  empty. :class:`~rllib_drqn.resumable.ReplayCheckpointing` (re-exported here) puts the buffer
  into ``Algorithm.get_state()`` when the setting is on, and restores it in ``set_state()``.
- ``Algorithm.from_checkpoint`` on a checkpoint whose classes cannot be imported logs "possible
  version mismatch", falls back to the base class with no config and fails with
  ``'NoneType' object has no attribute 'to_dict'``; a checkpoint without ``learner_group/``
  restores with fresh random weights and no error at all. :func:`load_algorithm` checks the
  directory first and raises one error that names the path, what is wrong and what to do.
- An env registered by name in the training process is unknown in a fresh one
  (``NameNotFound`` from deep inside an env runner). Importing this package registers the
  plugin's envs (and unpickling the ``DRQN`` class imports it), and :func:`load_algorithm`
  names any other env that is missing before anything is built.

Usage::

    from rllib_drqn.checkpoints import load_algorithm

    algo = load_algorithm("results/stateless-cartpole-drqn/DRQN_.../checkpoint_000003")
    algo.train()  # Continues: same weights, counters and (if stored) replay.

The checks read the directory only: nothing in a checkpoint is ever written, moved or deleted.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import pickle
import pickletools
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Final

from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.core import COMPONENT_LEARNER, COMPONENT_LEARNER_GROUP, COMPONENT_RL_MODULE
from ray.rllib.utils.checkpoints import Checkpointable

from rllib_drqn.config import require_known_env
from rllib_drqn.messages import one_line
from rllib_drqn.resumable import REPLAY_STATE_KEY, ReplayCheckpointing

__all__ = [
    "REPLAY_STATE_KEY",
    "CheckpointError",
    "CheckpointInfo",
    "ReplayCheckpointing",
    "check_checkpoint",
    "load_algorithm",
]

_HINT: Final[str] = (
    "pass a directory written by Algorithm.save_to_path() or by `rllib train file` "
    "(<storage-path>/<experiment>/<trial>/checkpoint_00000N)"
)
_STATE_FILES: Final[tuple[str, ...]] = (
    f"{Algorithm.STATE_FILE_NAME}.pkl",
    f"{Algorithm.STATE_FILE_NAME}.msgpack",
    f"{Algorithm.STATE_FILE_NAME}.msgpck",
)
_MODULES_DIR: Final[Path] = Path(COMPONENT_LEARNER_GROUP, COMPONENT_LEARNER, COMPONENT_RL_MODULE)


class CheckpointError(ValueError):
    """A directory that is no (complete, loadable) Algorithm checkpoint.

    The message names the path, what is wrong with it and what to pass or install instead.
    """


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """What :func:`check_checkpoint` read from a checkpoint, without building anything.

    Attributes:
        path: The checkpoint directory, absolute.
        algorithm_class: The ``Algorithm`` subclass that wrote it (imported).
        env: The env as configured: a registered name, a gymnasium id or a class.
        module_ids: The RLModules whose weights it holds.
        num_bytes: Its size on disk.
    """

    path: Path
    algorithm_class: type[Algorithm]
    env: Any
    module_ids: tuple[str, ...]
    num_bytes: int


def check_checkpoint(path: str | os.PathLike[str]) -> CheckpointInfo:
    """Checks that ``path`` is an Algorithm checkpoint this process can load; builds nothing.

    In order: the directory and its state file, ``rllib_checkpoint.json`` and its version, the
    weights (``learner_group/learner/rl_module/<module>/module_state.*``), every pickle in it
    (complete, and every class it names importable: read opcode by opcode with
    ``pickletools``, so nothing in it is run or loaded twice; a pickle over 64 MB, a stored
    replay, only has its end checked), and the env, which must be registered by name here.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        CheckpointError: If it is not a checkpoint, is incomplete or corrupt, names a class
            that cannot be imported, or trains on an env unknown here. The message names the
            path, the problem and the fix.
    """
    given = Path(path).expanduser()
    if not given.exists():
        raise FileNotFoundError(f"checkpoint {str(given)!r} does not exist; {_HINT}.")
    if not given.is_dir():
        where = (
            f"; pass its directory {str(given.parent)!r}"
            if given.name in (*_STATE_FILES, Algorithm.METADATA_FILE_NAME)
            else f"; {_HINT}"
        )
        raise CheckpointError(f"checkpoint {str(given)!r} is a file, not a directory{where}.")
    root = given.resolve()
    if not any((root / name).is_file() for name in _STATE_FILES):
        raise CheckpointError(_not_a_checkpoint(root))

    _check_metadata(root)
    module_ids = _check_weights(root)
    for file in sorted(root.rglob("*.pkl")):
        _check_pickle(root, file)

    ctor_file = root / Checkpointable.CLASS_AND_CTOR_ARGS_FILE_NAME
    ctor_info = _unpickle_small(root, ctor_file)
    algorithm_class = ctor_info.get("class") if isinstance(ctor_info, dict) else None
    if not (isinstance(algorithm_class, type) and issubclass(algorithm_class, Algorithm)):
        raise CheckpointError(
            f"checkpoint {str(root)!r}: {ctor_file.name} names {algorithm_class!r}, not an "
            f"Algorithm class (a checkpoint of something else?); {_HINT}."
        )
    try:
        config_state = ctor_info["ctor_args_and_kwargs"][0][0]
        env = config_state.get("env")
    except (KeyError, IndexError, TypeError, AttributeError):
        raise CheckpointError(
            f"checkpoint {str(root)!r}: {ctor_file.name} holds no algorithm config, so the "
            f"checkpoint is corrupt; {_HINT}."
        ) from None
    if isinstance(env, str):
        _check_env_known(root, env)
    num_bytes = sum(file.stat().st_size for file in root.rglob("*") if file.is_file())
    return CheckpointInfo(root, algorithm_class, env, module_ids, num_bytes)


def load_algorithm(path: str | os.PathLike[str], **kwargs: Any) -> Algorithm:
    """Restores the Algorithm in ``path`` after :func:`check_checkpoint` found it loadable.

    Weights, optimizer state, counters (``training_iteration``, env steps) and, if the run
    set ``store_buffer_in_checkpoints=True``, the replay come back; ``algo.train()``
    continues from there. Starts Ray (as ``Algorithm.from_checkpoint`` does) if it is not
    running. The checkpoint directory is only read.

    Args:
        path: The checkpoint directory. A URI (``s3://...``) goes to RLlib unchecked.
        **kwargs: Passed to ``Algorithm.from_checkpoint``.

    Raises:
        FileNotFoundError, CheckpointError: See :func:`check_checkpoint`.
    """
    if "://" in str(path):  # s3://, gs://...: RLlib reads those through pyarrow, unchecked.
        return Algorithm.from_checkpoint(str(path), **kwargs)
    info = check_checkpoint(path)
    try:
        return info.algorithm_class.from_checkpoint(str(info.path), **kwargs)
    except (pickle.UnpicklingError, EOFError) as error:  # Damage the checks could not see.
        raise CheckpointError(_corrupt(info.path, "a state file", error)) from error


# ---------------------------------------------------------------------------------------------
# The checks.
# ---------------------------------------------------------------------------------------------


def _not_a_checkpoint(root: Path) -> str:
    """Says why ``root`` is no Algorithm checkpoint and, where it can, what to pass."""
    inside = sorted(root.glob("checkpoint_*")) or sorted(root.glob("*/checkpoint_*"))
    inside = [child for child in inside if child.is_dir()]
    if inside:
        return (
            f"{str(root)!r} is not a checkpoint but holds {len(inside)} (a Tune trial or "
            f"experiment directory); pass one of them, e.g. the latest {str(inside[-1])!r}."
        )
    if any(root.glob("module_state.*")):
        return (
            f"{str(root)!r} is an RLModule checkpoint (weights only), not an Algorithm "
            "checkpoint; load it with RLModule.from_checkpoint(path), or pass the algorithm "
            "checkpoint that contains it."
        )
    return f"{str(root)!r} is not an Algorithm checkpoint (no {_STATE_FILES[0]}); {_HINT}."


def _check_metadata(root: Path) -> None:
    metadata_file = root / Algorithm.METADATA_FILE_NAME
    if not metadata_file.is_file():
        raise CheckpointError(
            f"checkpoint {str(root)!r} is incomplete: {metadata_file.name} is missing (was the "
            f"save interrupted?); {_HINT}."
        )
    try:
        metadata = json.loads(metadata_file.read_text(encoding="utf-8"))
        version = str(metadata["checkpoint_version"])
        major = int(version.split(".")[0])
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(
            f"checkpoint {str(root)!r} is corrupt: {metadata_file.name} is not RLlib's "
            f"metadata ({type(error).__name__}: {one_line(error)}); {_HINT}."
        ) from None
    if major < 2:
        raise CheckpointError(
            f"checkpoint {str(root)!r} has version {version}, the old API stack's (Ray < "
            "2.10); DRQN runs on the new API stack and loads version 2.x. Retrain, or restore "
            "it with the Ray version that wrote it."
        )


def _check_weights(root: Path) -> tuple[str, ...]:
    """The module ids whose weights are saved; RLlib would silently start from random ones."""
    modules_dir = root / _MODULES_DIR
    module_ids = tuple(
        sorted(
            child.name
            for child in (modules_dir.iterdir() if modules_dir.is_dir() else ())
            if child.is_dir() and any(child.glob("module_state.*"))
        )
    )
    if not module_ids:
        raise CheckpointError(
            f"checkpoint {str(root)!r} is incomplete: it holds no weights ({_MODULES_DIR}/"
            "<module>/module_state.pkl is missing), and RLlib would restore it with random "
            f"ones; {_HINT}."
        )
    return module_ids


_STRING_OPS: Final[frozenset[str]] = frozenset(
    {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"}
    | {"SHORT_BINSTRING", "BINSTRING", "STRING"}
)
_MEMO_GETS: Final[frozenset[str]] = frozenset({"GET", "BINGET", "LONG_BINGET"})
_MEMO_PUTS: Final[frozenset[str]] = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
#: Pickles up to this size are scanned opcode by opcode; larger ones (a stored replay) only
#: have their end checked, and a damage inside them surfaces when RLlib loads them.
_FULL_SCAN_BYTES: Final[int] = 64 * 2**20


def _pickle_globals(stream: IO[bytes]) -> Iterator[tuple[str, str]]:
    """Yields the ``(module, qualname)`` of every class or function a pickle refers to.

    Walks the opcodes only (nothing is constructed, so a pickle of gigabytes is read once in
    constant memory). ``STACK_GLOBAL`` takes its two names from the two values pushed just
    before it, strings or memo lookups of strings (``pickle.Pickler.save_global``). Raises
    ``ValueError`` for a truncated pickle.
    """
    memo: dict[int, Any] = {}
    pushed: list[Any] = [None, None]  # The last two values pushed, where they are strings.
    for opcode, arg, _ in pickletools.genops(stream):
        name = opcode.name
        if name in ("FRAME", "PROTO", "STOP"):
            continue
        if name == "MEMOIZE":
            memo[len(memo)] = pushed[-1]
            continue
        if name in _MEMO_PUTS:
            memo[arg] = pushed[-1]
            continue
        value = None
        if name in _STRING_OPS:
            value = arg
        elif name in _MEMO_GETS:
            value = memo.get(arg)
        elif name == "GLOBAL":
            module, _, qualname = arg.partition(" ")
            yield module, qualname
        elif name == "STACK_GLOBAL" and all(isinstance(v, str) for v in pushed):
            yield pushed[0], pushed[1]
        pushed = [pushed[-1], value]


def _check_pickle(root: Path, file: Path) -> None:
    """Fails for a truncated pickle, or one naming a class this process cannot import.

    Files over :data:`_FULL_SCAN_BYTES` (a stored replay: about 36 opcodes and 70 us of
    scanning per Atari step) only have their last byte checked, which must be pickle's STOP.
    """
    relative = file.relative_to(root)
    try:
        if file.stat().st_size > _FULL_SCAN_BYTES:
            with file.open("rb") as stream:
                stream.seek(-1, os.SEEK_END)
                if stream.read(1) != pickle.STOP:
                    raise ValueError("it does not end with pickle's STOP opcode")
            return
        with file.open("rb") as stream:
            names = set(_pickle_globals(stream))
    except (ValueError, EOFError, OSError) as error:
        raise CheckpointError(_corrupt(root, relative, error)) from None
    for module, qualname in sorted(names):
        try:
            target: Any = importlib.import_module(module)
            for part in qualname.split("."):
                target = getattr(target, part)
        except Exception as error:  # ImportError, AttributeError, or the module's own error.
            raise CheckpointError(
                f"checkpoint {str(root)!r} needs {module}.{qualname} (in {relative}), which "
                f"cannot be imported here ({type(error).__name__}: {one_line(error)}). Install "
                "the package that defined it, in the version that wrote the checkpoint, or put "
                "its module on PYTHONPATH. (RLlib itself would fall back to a base class and "
                "fail with \"'NoneType' object has no attribute 'to_dict'\".)"
            ) from None


def _corrupt(root: Path, relative: Path | str, error: BaseException) -> str:
    return (
        f"checkpoint {str(root)!r} is corrupt: {relative} cannot be read ({one_line(error)}; "
        "truncated by an interrupted save or copy?). Restore the checkpoint from a backup or "
        "pass an earlier one."
    )


def _unpickle_small(root: Path, file: Path) -> Any:
    if not file.is_file():
        raise CheckpointError(
            f"checkpoint {str(root)!r} is incomplete: {file.name} is missing (was the save "
            f"interrupted?); {_HINT}."
        )
    try:
        with file.open("rb") as stream:
            return pickle.load(stream)
    except Exception as error:  # Passed _check_pickle; anything left is a damaged file.
        raise CheckpointError(
            f"checkpoint {str(root)!r} is corrupt: {file.name} cannot be unpickled "
            f"({type(error).__name__}: {one_line(error)}); {_HINT}."
        ) from None


def _check_env_known(root: Path, env: str) -> None:
    try:
        require_known_env(env)
    except ValueError as error:
        raise CheckpointError(
            f"checkpoint {str(root)!r} trains on env {env!r}, which is not registered in this "
            "process. Register it before loading (ray.tune.registry.register_env("
            f"{env!r}, creator)), or import the package that registers it. ({error})"
        ) from None
