"""lechpe-export: checkpoint (.safetensors) -> ONNX with the metadata embedded.

Examples::

    lechpe-export model.safetensors model.onnx            # dynamic batch, opset 17
    lechpe-export model.safetensors model.onnx --info     # and print what was written
    lechpe-export --info model.onnx                       # only show a model's metadata
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def describe_model(path: Path) -> dict:
    """Metadata (and ONNX inputs/outputs) of a .safetensors or .onnx model."""
    if path.suffix.lower() == ".onnx":
        import onnx

        from lechpe_model.backends import read_onnx_metadata

        model = onnx.load(str(path), load_external_data=False)

        def dims(value) -> list:
            return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

        return {
            "file": str(path),
            "format": "onnx",
            "opset": max(
                (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None
            ),
            "inputs": {v.name: dims(v) for v in model.graph.input},
            "outputs": {v.name: dims(v) for v in model.graph.output},
            "metadata": read_onnx_metadata(path).to_dict(),
        }
    from lechpe_model.checkpoint import read_metadata

    return {"file": str(path), "format": "safetensors", "metadata": read_metadata(path).to_dict()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lechpe-export",
        description="Export a LEC-HPE checkpoint to ONNX (outputs: angles, uncertainty, "
        "assignment; the checkpoint metadata is embedded).",
    )
    parser.add_argument(
        "checkpoint", type=Path, help=".safetensors checkpoint (or a model for --info)"
    )
    parser.add_argument("output", type=Path, nargs="?", help="ONNX file to write")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument(
        "--static-batch", action="store_true", help="fixed batch of 1 instead of dynamic"
    )
    parser.add_argument("--info", action="store_true", help="print the model's metadata as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.output is not None:
            from lechpe_model.export import export_onnx

            export_onnx(
                args.checkpoint, args.output, opset=args.opset, dynamic_batch=not args.static_batch
            )
            print(f"wrote {args.output}", file=sys.stderr)
        elif not args.info:
            print("lechpe-export: give an OUTPUT .onnx file, or --info", file=sys.stderr)
            return 2
        if args.info:
            print(json.dumps(describe_model(args.output or args.checkpoint), indent=2))
    except Exception as exc:  # CheckpointError, ValidationError, OSError ...
        print(f"lechpe-export: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
