"""Single-step latency of an exported DRQN: ONNX (onnxruntime) and TorchScript vs the RLModule.

Run (from the repository root; about a minute on a 2-core CPU)::

    python bench/export_latency.py            # the paper's network, batch 1 and 16
    python bench/export_latency.py --smoke    # seconds; the numbers mean nothing

The network is the paper's: 84x84x1 uint8 frames, the three convolutions, LSTM(512), a Q-value
for each of Pong's 6 actions (random weights: latency does not depend on them). It is exported
with :func:`rllib_drqn.export.export_module` in both formats, and the three contenders run in
this process, one thread each (``torch.set_num_threads(--torch-threads)``, onnxruntime's
intra-op and inter-op threads 1):

- **RLModule**: ``module.forward_inference`` on ``[B, 1, 84, 84, 1]`` frames with its state,
  as an env runner calls it;
- **TorchScript**: the traced ``model.pt`` on ``[B, 84, 84, 1]`` frames, ``h`` and ``c``; and
  again with ``torch.backends.mkldnn.enabled = False`` around the call, as the module itself
  runs one-step calls on a CPU (oneDNN's LSTM reorders all its weights on every call);
- **ONNX**: ``model.onnx`` in an onnxruntime ``InferenceSession`` with the same inputs.

Each contender carries its own state from call to call. Calls go in rounds of ``--calls``
per contender, the contenders alternating, so machine noise hits all three; a row is the
median over rounds of the mean time per call, and the time per env step (per call / B).
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Column, base_parser, format_table, machine_info, set_torch_threads, write_json

BATCH_SIZES = (1, 16)
NUM_ACTIONS = 6
CELL_SIZE = 512
COLUMNS = [
    Column("name", "contender"),
    Column("batch", "batch", "{:d}"),
    Column("us_per_call", "us/call"),
    Column("us_per_env_step", "us/env step"),
    Column("speedup", "vs RLModule", "{:.2f}x"),
]


def export_paper_network(out_dir: Path) -> tuple[Any, Path, Path]:
    """The paper's module (random weights) and its ONNX and TorchScript exports."""
    import gymnasium as gym
    import numpy as np

    from rllib_drqn import DRQNTorchRLModule
    from rllib_drqn.export import export_module

    module = DRQNTorchRLModule(
        observation_space=gym.spaces.Box(0, 255, (84, 84, 1), np.uint8),
        action_space=gym.spaces.Discrete(NUM_ACTIONS),
        model_config={"lstm_cell_size": CELL_SIZE},
        inference_only=True,
    ).eval()
    onnx = export_module(module, out_dir / "onnx", "onnx").model_path
    torchscript = export_module(module, out_dir / "torchscript", "torchscript").model_path
    return module, onnx, torchscript


def build_contenders(
    module: Any, onnx_path: Path, torchscript_path: Path, batch: int
) -> dict[str, Callable[[], None]]:
    """One zero-argument step function per contender, each carrying its own state."""
    import numpy as np
    import onnxruntime
    import torch
    from ray.rllib.core.columns import Columns

    frames = np.random.default_rng(0).integers(0, 256, size=(batch, 84, 84, 1), dtype=np.uint8)
    zeros = np.zeros((batch, CELL_SIZE), np.float32)
    frames_t = torch.as_tensor(frames)

    module_state = {"h": torch.as_tensor(zeros), "c": torch.as_tensor(zeros)}

    def rl_module() -> None:
        nonlocal module_state
        out = module.forward_inference(
            {Columns.OBS: frames_t[:, None], Columns.STATE_IN: module_state}
        )
        module_state = out[Columns.STATE_OUT]

    traced = torch.jit.load(str(torchscript_path))
    script_state = (torch.as_tensor(zeros), torch.as_tensor(zeros))

    def torchscript() -> None:
        nonlocal script_state
        with torch.no_grad():
            _, _, h, c = traced(frames_t, *script_state)
        script_state = (h, c)

    def torchscript_without_onednn() -> None:
        # What the module does for one-step calls on a CPU (see _RecurrentQNet.recur):
        # oneDNN's LSTM reorders all its weights on every call.
        enabled = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = False
        try:
            torchscript()
        finally:
            torch.backends.mkldnn.enabled = enabled

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    session = onnxruntime.InferenceSession(
        str(onnx_path), options, providers=["CPUExecutionProvider"]
    )
    onnx_feed = {"obs": frames, "h": zeros, "c": zeros}

    def onnx() -> None:
        _, _, h, c = session.run(None, onnx_feed)
        onnx_feed["h"], onnx_feed["c"] = h, c

    return {
        "RLModule": rl_module,
        "TorchScript": torchscript,
        "TorchScript, oneDNN off": torchscript_without_onednn,
        "ONNX (onnxruntime)": onnx,
    }


def measure(contenders: dict[str, Callable[[], None]], calls: int, rounds: int) -> dict[str, float]:
    """Median over rounds of the mean seconds per call, contenders alternating each round."""
    for step in contenders.values():  # Warm-up: first calls allocate and pick kernels.
        for _ in range(max(3, calls // 4)):
            step()
    per_round: dict[str, list[float]] = {name: [] for name in contenders}
    for round_index in range(rounds):
        order = list(contenders.items())
        if round_index % 2:
            order.reverse()
        for name, step in order:
            start = time.perf_counter()
            for _ in range(calls):
                step()
            per_round[name].append((time.perf_counter() - start) / calls)
    return {name: median(times) for name, times in per_round.items()}


def main() -> int:
    parser = base_parser(__doc__.splitlines()[0], "bench/results/export_latency.json")
    parser.add_argument("--calls", type=int, default=50, help="Calls per contender and round.")
    parser.add_argument("--rounds", type=int, default=9, help="Rounds (the median is kept).")
    args = parser.parse_args()
    set_torch_threads(args.torch_threads)
    calls, rounds = (3, 2) if args.smoke else (args.calls, args.rounds)

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        module, onnx_path, torchscript_path = export_paper_network(Path(tmp))
        for batch in BATCH_SIZES:
            contenders = build_contenders(module, onnx_path, torchscript_path, batch)
            seconds = measure(contenders, calls, rounds)
            base = seconds["RLModule"]
            for name, value in seconds.items():
                rows.append(
                    {
                        "name": name,
                        "batch": batch,
                        "us_per_call": value * 1e6,
                        "us_per_env_step": value * 1e6 / batch,
                        "speedup": base / value,
                    }
                )
    title = (
        f"Single-step latency, paper's DRQN (84x84x1 uint8, 3 convs, LSTM({CELL_SIZE}), "
        f"{NUM_ACTIONS} actions), torch threads {args.torch_threads}, onnxruntime threads 1; "
        f"median of {rounds} rounds x {calls} calls"
    )
    print(format_table(title, COLUMNS, rows))
    import onnxruntime

    info = {**machine_info(), "onnxruntime": onnxruntime.__version__}
    out = write_json(
        args.out,
        {"smoke": args.smoke, "calls": calls, "rounds": rounds, "machine": info, "rows": rows},
    )
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
