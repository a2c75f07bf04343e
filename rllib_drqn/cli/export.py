"""``rllib export CHECKPOINT --format onnx|torchscript --out DIR``: a DRQN to deploy without Ray.

A thin layer over :func:`rllib_drqn.export.export_checkpoint`: it parses, calls, and prints
what was written and the model's inputs and outputs. Exits 0 when done, 2 for a bad input (not
a checkpoint, not a DRQN module, an unknown format, an existing output, the export extra
missing), checked before any weight is loaded; nothing is written then.
"""

from __future__ import annotations

import argparse
from typing import Any

from rllib_drqn import export
from rllib_drqn.cli.experiment_file import CLIError

__all__ = ["add_parser"]


def _describe(spec: dict[str, Any]) -> str:
    return f"{spec['name']} {spec['dtype']}[{', '.join(map(str, spec['shape']))}]"


def _run_export(args: argparse.Namespace) -> int:
    try:
        result = export.export_checkpoint(args.checkpoint, args.out, args.format)
    except export.ExportError as error:
        raise CLIError(str(error)) from None
    metadata = result.metadata
    size_mb = result.model_path.stat().st_size / 2**20
    print(
        f"Exported {metadata['cell_type'].upper()}({metadata['cell_size']}) DRQN from "
        f"{metadata['checkpoint']} as {metadata['format']}:\n"
        f"Model:    {result.model_path} ({size_mb:.1f} MiB)\n"
        f"Metadata: {result.metadata_path}\n"
        f"Inputs:   {', '.join(_describe(spec) for spec in metadata['inputs'])}\n"
        f"Outputs:  {', '.join(_describe(spec) for spec in metadata['outputs'])}"
    )
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Registers ``rllib export``."""
    parser = subparsers.add_parser(
        "export",
        help="export a DRQN checkpoint as ONNX or TorchScript, to run without Ray",
        description="Export a checkpoint's DRQN network (one env step per call, the recurrent "
        "state as explicit inputs and outputs, a dynamic batch axis) as ONNX or TorchScript, "
        "with model.json describing its inputs, outputs and spaces. See docs/deploy.md.",
        epilog="Exit status: 0 when done, 2 for a bad input (checked before any weight is "
        "loaded; nothing is written). ONNX needs the export extra: "
        f"{export.EXPORT_EXTRA}.",
    )
    parser.add_argument(
        "checkpoint",
        metavar="CHECKPOINT",
        help="an algorithm checkpoint (<storage-path>/<experiment>/<trial>/checkpoint_00000N "
        "from `rllib train file`, or a directory written by Algorithm.save_to_path()), or an "
        "RLModule directory (module.save_to_path())",
    )
    parser.add_argument(
        "--format",
        default="onnx",
        metavar="FORMAT",
        help=f"{' or '.join(export.FORMATS)} (default onnx)",
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="a new directory for the model and model.json (never overwritten)",
    )
    parser.set_defaults(handler=_run_export)
