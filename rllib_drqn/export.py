"""Deploy a trained DRQN without Ray: its Q-network as ONNX or TorchScript, one env step a call.

The exported graph is one step of the module's own inference network (``module.q_net``:
torso, LSTM or GRU, Q head), run through the module's own ``compute_q_values``, the function
``forward_inference`` calls, so the math is the module's and not a copy. The recurrent state
is explicit: ``h`` and ``c`` (LSTM) or ``h`` (GRU) go in, ``h_out``/``c_out`` come out, and
the caller carries them from step to step and zeroes them at every episode start. Every
input and output has a dynamic batch axis (one row per env)::

    rllib export results/.../checkpoint_000003 --format onnx --out deploy/pong

or, from Python::

    from rllib_drqn.export import export_checkpoint

    result = export_checkpoint("results/.../checkpoint_000003", "deploy/pong", format="onnx")
    print(result.model_path, result.metadata["inputs"])

``DIR/model.json`` describes the inputs in order (a ``Dict``/``Tuple`` observation is one input
per leaf, in the module's order, each in its space's dtype; then ``prev_action`` and
``prev_reward`` when the module reads them; then the state), the outputs (``q_values``,
``action``: the greedy action, then the state), the observation and action spaces, the
initial state, the ONNX opset or the torch version, and the checkpoint. ``docs/deploy.md``
has the reference and ``docs/examples/play_onnx.py`` a player that needs only onnxruntime,
numpy and gymnasium.

Why the exporters chosen: ONNX goes through ``torch.onnx.export(..., dynamo=False)``, the
tracing exporter, which records the module's Python (``tree``, shape checks) as it runs and
writes the LSTM as one ONNX ``LSTM`` op; the ``torch.export``-based exporter, the default
since torch 2.9, needs ``onnxscript`` as one more dependency and gains nothing for this graph.
TorchScript is ``torch.jit.trace`` for the same reason (``torch.jit.script`` cannot compile
the module's Python). Both are deprecated in torch 2.13 but present; each export is checked
against the module at a batch size other than the traced one before anything is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import math
import os
import secrets
import shutil
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.algorithms.dqn.default_dqn_rl_module import QF_PREDS
from ray.rllib.core.columns import Columns
from torch import nn

from rllib_drqn.inspection import (
    CheckpointSpec,
    EvaluationError,
    inspect_checkpoint,
    inspect_module_checkpoint,
    is_module_checkpoint,
    load_module,
)
from rllib_drqn.module import (
    NO_PREV_ACTION,
    NO_PREV_REWARD,
    PREV_ACTIONS,
    PREV_REWARDS,
    DRQNTorchRLModule,
    _space_leaves,
)

__all__ = [
    "EXPORT_EXTRA",
    "FORMATS",
    "METADATA_FILE",
    "MODEL_FILES",
    "ONNX_OPSET",
    "ExportError",
    "ExportResult",
    "check_format",
    "check_out_dir",
    "describe_space",
    "export_checkpoint",
    "export_module",
]

#: What ``--format`` takes.
FORMATS: Final[tuple[str, ...]] = ("onnx", "torchscript")
#: The model file each format writes into the output directory, next to :data:`METADATA_FILE`.
MODEL_FILES: Final[dict[str, str]] = {"onnx": "model.onnx", "torchscript": "model.pt"}
METADATA_FILE: Final[str] = "model.json"
#: ONNX opset 17: onnxruntime >= 1.11 runs it, and the tracing exporter writes the LSTM and
#: GRU as single ONNX ops there.
ONNX_OPSET: Final[int] = 17
#: The pip extra that installs what ``--format onnx`` needs.
EXPORT_EXTRA: Final[str] = 'pip install "rllib-drqn[export]"'

#: Names of the non-observation inputs and of the outputs (the state's are ``h``/``c`` in,
#: ``h_out``/``c_out`` out).
PREV_ACTION_INPUT: Final[str] = "prev_action"
PREV_REWARD_INPUT: Final[str] = "prev_reward"
Q_VALUES_OUTPUT: Final[str] = "q_values"
ACTION_OUTPUT: Final[str] = "action"
_BATCH: Final[str] = "batch"
#: Rows of the example batch that traces the graph, and of the batch that checks it (a second
#: size, so a batch axis baked in as a constant fails the check).
_TRACE_BATCH, _CHECK_BATCH = 2, 3
#: Largest |Q| difference the export-time check accepts between the file and the module.
_CHECK_ATOL: Final[float] = 1e-4


class ExportError(ValueError):
    """A bad export request: not a (DRQN) checkpoint, unknown format, existing output, ...

    The message is one line that names the value received and what to pass instead.
    """


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What :func:`export_module` wrote.

    Attributes:
        out_dir: The output directory (absolute).
        model_path: ``out_dir/model.onnx`` or ``out_dir/model.pt``.
        metadata_path: ``out_dir/model.json``.
        metadata: The contents of ``model.json``.
    """

    out_dir: Path
    model_path: Path
    metadata_path: Path
    metadata: dict[str, Any]


def check_format(format: str) -> str:
    """``format`` lower-cased if it is one of :data:`FORMATS`; else :class:`ExportError`."""
    name = str(format).strip().lower()
    if name not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; use one of {list(FORMATS)}.")
    return name


def check_out_dir(out_dir: str | os.PathLike[str]) -> Path:
    """``out_dir`` as an absolute path, which must not exist: nothing is ever overwritten."""
    path = Path(out_dir).expanduser().absolute()
    if path.exists() or path.is_symlink():
        kind = "directory" if path.is_dir() else "file"
        raise ExportError(
            f"output {kind} {path} already exists; export never overwrites. Pass a new "
            "directory, or remove the old export first."
        )
    return path


def export_checkpoint(
    checkpoint: str | os.PathLike[str], out_dir: str | os.PathLike[str], format: str = "onnx"
) -> ExportResult:
    """Exports the DRQN module of a checkpoint into ``out_dir`` (which must not exist).

    Args:
        checkpoint: A checkpoint of ``rllib train file`` (``.../checkpoint_00000N``), a
            directory written by ``algo.save_to_path()``, or an RLModule directory
            (``module.save_to_path()``, or ``learner_group/learner/rl_module/default_policy``
            inside an Algorithm checkpoint). Read with :mod:`rllib_drqn.inspection`, only read.
        out_dir: Where ``model.onnx`` (or ``model.pt``) and ``model.json`` go; created.
        format: ``"onnx"`` or ``"torchscript"``.

    Raises:
        ExportError: For an unknown format, an existing ``out_dir`` or one inside the
            checkpoint, a path that is no checkpoint or holds no DRQN module, or (for ONNX)
            missing ``onnx``/``onnxruntime``. All are checked before a weight is loaded, and
            nothing is written.
    """
    format = check_format(format)
    out = check_out_dir(out_dir)
    spec = _inspect(checkpoint)
    if out.resolve().is_relative_to(spec.path):
        raise ExportError(
            f"--out {out} lies inside the checkpoint {spec.path}; export never writes into a "
            "checkpoint. Pass a directory outside it."
        )
    if not issubclass(spec.module_class, DRQNTorchRLModule):
        algorithm = f" of {spec.algorithm}" if spec.algorithm else ""
        raise ExportError(
            f"{spec.path}: holds a {spec.module_class.__name__}{algorithm}, not a DRQN module; "
            "export writes DRQNTorchRLModule networks (checkpoints of algorithm DRQN)."
        )
    _require_exporter(format)
    try:
        module = load_module(spec)
    except EvaluationError as error:
        raise ExportError(str(error)) from None
    return export_module(module, out, format, source=spec)


def export_module(
    module: DRQNTorchRLModule,
    out_dir: str | os.PathLike[str],
    format: str = "onnx",
    *,
    source: CheckpointSpec | None = None,
) -> ExportResult:
    """Exports ``module``'s inference network into ``out_dir`` (which must not exist).

    The files are written into a temporary directory beside ``out_dir`` and renamed into
    place once the exported model has matched the module, so a failed export leaves nothing.

    Args:
        module: The DRQN module; its weights are read, never changed.
        out_dir: Where ``model.onnx`` (or ``model.pt``) and ``model.json`` go; created.
        format: ``"onnx"`` or ``"torchscript"``.
        source: The checkpoint the module came from, recorded in ``model.json``.

    Raises:
        ExportError: See :func:`export_checkpoint`; also if the exported model disagrees
            with the module (a bug: please report it).
    """
    format = check_format(format)
    out = check_out_dir(out_dir)
    if not isinstance(module, DRQNTorchRLModule):
        raise ExportError(
            f"export_module takes a DRQNTorchRLModule, got {type(module).__name__}; export "
            "writes DRQN networks only."
        )
    devices = sorted({str(p.device) for p in module.q_net.parameters()} - {"cpu"})
    if devices:
        raise ExportError(
            f"export_module traces the module on the CPU, but its weights are on {devices}; "
            "export a CPU copy instead: copy.deepcopy(module).to('cpu')."
        )
    _require_exporter(format)

    step = _OneStep(module)
    inputs, outputs = _signature(module)
    metadata = _metadata(module, format, inputs, outputs, source)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Beside out_dir (one file system, so the rename is atomic), with the umask's mode.
    staging = out.parent / f".{out.name}.partial-{secrets.token_hex(4)}"
    staging.mkdir()
    was_training = module.q_net.training
    try:
        module.q_net.eval()  # Traced as it acts; put back as it was below.
        model_path = staging / MODEL_FILES[format]
        with _quiet_tracing(), torch.no_grad():
            example = _example_inputs(module, inputs, _TRACE_BATCH, seed=0)
            if format == "onnx":
                _export_onnx(step, example, inputs, outputs, model_path)
            else:
                torch.jit.save(torch.jit.trace(step, example, check_trace=False), model_path)
            _check_against_module(step, model_path, format, module, inputs, outputs)
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        check_out_dir(out)  # Still free after the export's seconds?
        staging.rename(out)
    finally:
        module.q_net.train(was_training)
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(out, out / MODEL_FILES[format], out / METADATA_FILE, metadata)


# ---------------------------------------------------------------------------------------------
# The exported step.
# ---------------------------------------------------------------------------------------------


class _OneStep(nn.Module):
    """One env step of the module's inference network, every tensor a positional argument.

    ``forward(*observation_leaves, [prev_action], [prev_reward], h, [c])`` with
    ``[B, *leaf_shape]`` leaves, ``[B]`` previous action (-1 at an episode's start) and reward,
    ``[B, cell_size]`` states; returns ``(q_values [B, A], action [B], h_out, [c_out])``. It
    adds the time axis of one step and calls ``module.compute_q_values``: the module's own
    preprocessing, one-hot encoding, torso, cell and head. Only ``q_net`` is a submodule, so
    only the inference network's weights go into the exported file.
    """

    def __init__(self, module: DRQNTorchRLModule) -> None:
        super().__init__()
        self.q_net = module.q_net
        self._module = (module,)  # A tuple: not registered as a submodule.
        self._obs_space = module.observation_space
        self._num_leaves = len(_space_leaves(module.observation_space))
        self._prev_columns = [
            column
            for column, used in (
                (PREV_ACTIONS, module.uses_prev_action),
                (PREV_REWARDS, module.uses_prev_reward),
            )
            if used
        ]
        self._state_keys = tuple(module.get_initial_state())

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        rest = iter(tensors)
        leaves = iter([next(rest)[:, None] for _ in range(self._num_leaves)])
        batch: dict[str, Any] = {Columns.OBS: _nest(self._obs_space, leaves)}
        for column in self._prev_columns:
            batch[column] = next(rest)[:, None]
        batch[Columns.STATE_IN] = {key: next(rest) for key in self._state_keys}
        out = self._module[0].compute_q_values(batch)
        q_values = out[QF_PREDS][:, 0]
        state_out = out[Columns.STATE_OUT]
        return (q_values, q_values.argmax(dim=-1), *(state_out[k] for k in self._state_keys))


def _nest(space: gym.Space, leaves: Iterator[torch.Tensor]) -> Any:
    """The observation's structure rebuilt from its leaves, in ``_space_leaves`` order."""
    if isinstance(space, gym.spaces.Dict):
        return {key: _nest(sub, leaves) for key, sub in space.spaces.items()}
    if isinstance(space, gym.spaces.Tuple):
        return tuple(_nest(sub, leaves) for sub in space.spaces)
    return next(leaves)


# ---------------------------------------------------------------------------------------------
# Inputs, outputs and model.json.
# ---------------------------------------------------------------------------------------------


def _signature(module: DRQNTorchRLModule) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The inputs and outputs, in order, as ``model.json`` lists them."""
    inputs: list[dict[str, Any]] = []
    structured = not isinstance(module.observation_space, gym.spaces.Box)
    for path, leaf in _space_leaves(module.observation_space):
        name = ".".join(["obs", *map(str, path)]) if structured else "obs"
        inputs.append(
            {
                "name": name,
                "kind": "observation",
                "path": list(path),
                "dtype": np.dtype(leaf.dtype).name,
                "shape": [_BATCH, *map(int, leaf.shape)],
                "space": describe_space(leaf),
            }
        )
    if module.uses_prev_action:
        inputs.append(
            {
                "name": PREV_ACTION_INPUT,
                "kind": "prev_action",
                "dtype": "int64",
                "shape": [_BATCH],
                "at_episode_start": NO_PREV_ACTION,
            }
        )
    if module.uses_prev_reward:
        inputs.append(
            {
                "name": PREV_REWARD_INPUT,
                "kind": "prev_reward",
                "dtype": "float32",
                "shape": [_BATCH],
                "at_episode_start": NO_PREV_REWARD,
            }
        )
    outputs: list[dict[str, Any]] = [
        {
            "name": Q_VALUES_OUTPUT,
            "kind": "q_values",
            "dtype": "float32",
            "shape": [_BATCH, module.num_actions],
        },
        {"name": ACTION_OUTPUT, "kind": "action", "dtype": "int64", "shape": [_BATCH]},
    ]
    for key, initial in module.get_initial_state().items():
        shape = [_BATCH, *map(int, initial.shape)]
        common = {"kind": "state", "dtype": np.dtype(initial.dtype).name, "shape": shape}
        inputs.append({"name": key, **common, "at_episode_start": 0.0, "output": f"{key}_out"})
        outputs.append({"name": f"{key}_out", **common, "input": key})
    return inputs, outputs


def _metadata(
    module: DRQNTorchRLModule,
    format: str,
    inputs: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    source: CheckpointSpec | None,
) -> dict[str, Any]:
    from rllib_drqn import __version__

    metadata: dict[str, Any] = {
        "format": format,
        "model_file": MODEL_FILES[format],
        "checkpoint": str(source.path) if source else None,
        "module_checkpoint": str(source.module_path) if source else None,
        "algorithm": (source.algorithm or None) if source else None,
        "env": source.env_name if source and source.env is not None else None,
        "module_class": f"{type(module).__module__}.{type(module).__qualname__}",
        "observation_space": describe_space(module.observation_space),
        "action_space": describe_space(module.action_space),
        "cell_type": module.cell_type,
        "cell_size": module.cell_size,
        "uses_prev_action": module.uses_prev_action,
        "uses_prev_reward": module.uses_prev_reward,
        "initial_state": {
            key: {"shape": list(value.shape), "dtype": np.dtype(value.dtype).name, "fill": 0.0}
            for key, value in module.get_initial_state().items()
        },
        "inputs": inputs,
        "outputs": outputs,
        "torch_version": torch.__version__,
        "rllib_drqn_version": __version__,
    }
    if format == "onnx":
        metadata["onnx_opset"] = ONNX_OPSET
    return metadata


def describe_space(space: gym.Space) -> dict[str, Any]:
    """A JSON-able description of a gymnasium space (uniform Box bounds as one number)."""
    if isinstance(space, gym.spaces.Dict):
        return {"type": "Dict", "spaces": {k: describe_space(s) for k, s in space.spaces.items()}}
    if isinstance(space, gym.spaces.Tuple):
        return {"type": "Tuple", "spaces": [describe_space(s) for s in space.spaces]}
    if isinstance(space, gym.spaces.Box):
        return {
            "type": "Box",
            "shape": list(space.shape),
            "dtype": np.dtype(space.dtype).name,
            "low": _compact(space.low),
            "high": _compact(space.high),
        }
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start), "dtype": "int64"}
    if isinstance(space, gym.spaces.MultiDiscrete):
        return {
            "type": "MultiDiscrete",
            "nvec": np.asarray(space.nvec).tolist(),
            "start": np.asarray(space.start).tolist(),
            "dtype": np.dtype(space.dtype).name,
        }
    if isinstance(space, gym.spaces.MultiBinary):
        return {"type": "MultiBinary", "n": np.asarray(space.n).tolist(), "dtype": "int8"}
    return {"type": type(space).__name__, "repr": str(space)}


def _compact(values: np.ndarray) -> Any:
    """One number when all bounds are equal, else the nested list; infinities as strings."""
    flat = np.asarray(values, dtype=np.float64)
    if flat.size and np.all(flat == flat.flat[0]):
        return _number(flat.flat[0])
    return np.vectorize(_number, otypes=[object])(flat).tolist()


def _number(value: float) -> Any:
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return int(value) if float(value).is_integer() else float(value)


# ---------------------------------------------------------------------------------------------
# Writing and checking.
# ---------------------------------------------------------------------------------------------


def _inspect(checkpoint: str | os.PathLike[str]) -> CheckpointSpec:
    """An Algorithm checkpoint or an RLModule directory, read by :mod:`rllib_drqn.inspection`."""
    try:
        if is_module_checkpoint(checkpoint):
            return inspect_module_checkpoint(checkpoint)
        return inspect_checkpoint(checkpoint)
    except EvaluationError as error:
        message = str(error)
        if "no algorithm_state.pkl" in message:
            message += " (or an RLModule directory, written by module.save_to_path())"
        raise ExportError(message) from None


def _require_exporter(format: str) -> None:
    """ONNX export needs ``onnx`` (to check the file) and ``onnxruntime`` (to run it)."""
    if format != "onnx":
        return
    missing = []
    for name in ("onnx", "onnxruntime"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportError(
            f"--format onnx needs {' and '.join(missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not installed; install the export extra: "
            f"{EXPORT_EXTRA}"
        )


@contextlib.contextmanager
def _quiet_tracing() -> Iterator[None]:
    """Silences the tracers' warnings while exporting.

    They flag the module's shape checks (constant for a given export) and announce the
    deprecations the module docstring discusses; what guards the traced graph is
    :func:`_check_against_module`, at a batch size other than the traced one.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*(legacy TorchScript|removed|batch_size)")
        yield


def _export_onnx(
    step: _OneStep,
    example: tuple[torch.Tensor, ...],
    inputs: Sequence[dict[str, Any]],
    outputs: Sequence[dict[str, Any]],
    path: Path,
) -> None:
    import onnx
    import torch.onnx

    input_names = [spec["name"] for spec in inputs]
    output_names = [spec["name"] for spec in outputs]
    torch.onnx.export(
        step,
        example,
        str(path),
        dynamo=False,
        input_names=input_names,
        output_names=output_names,
        dynamic_axes={name: {0: _BATCH} for name in input_names + output_names},
        opset_version=ONNX_OPSET,
    )
    onnx.checker.check_model(onnx.load(str(path)))


def _example_inputs(
    module: DRQNTorchRLModule, inputs: Sequence[dict[str, Any]], batch: int, seed: int
) -> tuple[torch.Tensor, ...]:
    """A batch of observations drawn from the module's spaces, previous actions (one row at
    an episode's start) and rewards, and random states."""
    rng = np.random.default_rng(seed)
    leaves = dict(_space_leaves(module.observation_space))
    tensors = []
    for spec in inputs:
        if spec["kind"] == "observation":
            space = leaves[tuple(spec["path"])]
            space.seed(int(rng.integers(2**31)))
            values = np.stack([np.asarray(space.sample()) for _ in range(batch)])
            values = values.astype(spec["dtype"])
        elif spec["kind"] == "prev_action":
            values = rng.integers(module.num_actions, size=batch)
            values[0] = NO_PREV_ACTION
        elif spec["kind"] == "prev_reward":
            values = rng.normal(size=batch).astype(np.float32)
        else:
            values = rng.normal(scale=0.5, size=(batch, *spec["shape"][1:])).astype(np.float32)
        tensors.append(torch.as_tensor(values))
    return tuple(tensors)


def _check_against_module(
    step: _OneStep,
    path: Path,
    format: str,
    module: DRQNTorchRLModule,
    inputs: Sequence[dict[str, Any]],
    outputs: Sequence[dict[str, Any]],
) -> None:
    """Runs the written file on a batch of another size; raises unless it matches the module."""
    example = _example_inputs(module, inputs, _CHECK_BATCH, seed=1)
    expected = [tensor.numpy() for tensor in step(*example)]
    if format == "onnx":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        feed = {spec["name"]: tensor.numpy() for spec, tensor in zip(inputs, example, strict=True)}
        got = session.run([spec["name"] for spec in outputs], feed)
    else:
        got = [tensor.numpy() for tensor in torch.jit.load(str(path))(*example)]
    for spec, want, have in zip(outputs, expected, got, strict=True):
        if spec["kind"] == "action":
            continue  # Greedy actions of near-tied random Q-values may differ; Q-values decide.
        error = float(np.max(np.abs(np.asarray(have) - want))) if want.size else 0.0
        if not (np.asarray(have).shape == want.shape and error <= _CHECK_ATOL):
            raise ExportError(
                f"the exported {format} model disagrees with the module on {spec['name']!r} "
                f"(shape {np.asarray(have).shape} vs {want.shape}, max |difference| {error:.3g} "
                f"> {_CHECK_ATOL}); nothing was written. This is a bug: please report it "
                f"with torch {torch.__version__}."
            )
