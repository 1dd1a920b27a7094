"""lechpe-export: checkpoint (.safetensors) -> ONNX with the metadata embedded.

Examples::

    lechpe-export model.safetensors model.onnx            # dynamic batch, opset 17
    lechpe-export model.safetensors model.onnx --info     # and print what was written
    lechpe-export --info model.onnx                       # only show a model's metadata
    lechpe-export model.safetensors model.onnx --int8 --calibration-dir /tmp/synth_calib
        # also model.int8.onnx (ONNX Runtime static INT8, QDQ) and model.calib.npy
        # (the preprocessed calibration crops; TensorRT's INT8 calibrator reads it too)
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


def write_int8(args: argparse.Namespace) -> None:
    """Quantise ``args.output`` to ``<stem>.int8.onnx`` and keep its calibration tensors."""
    from lechpe_model.backends import read_onnx_metadata
    from lechpe_model.quantization import (
        calibration_tensors,
        default_int8_path,
        quantize_onnx_int8,
        save_calibration_tensors,
    )

    if args.calibration_dir is None:
        raise ValueError("--int8 needs --calibration-dir (a folder of face images or a .npy)")
    meta = read_onnx_metadata(args.output)
    tensors = calibration_tensors(
        args.calibration_dir, int(meta.input_size), meta.mean, meta.std, args.calibration_count
    )
    npy = save_calibration_tensors(args.output.with_suffix(".calib.npy"), tensors)
    print(f"wrote {npy} ({len(tensors)} calibration crops)", file=sys.stderr)
    target = quantize_onnx_int8(
        args.output, default_int8_path(args.output), tensors, quant_format=args.int8_format
    )
    print(f"wrote {target}", file=sys.stderr)


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
    int8 = parser.add_argument_group("INT8 (ONNX Runtime static quantisation, CPU)")
    int8.add_argument(
        "--int8",
        action="store_true",
        help="also write OUTPUT with suffix .int8.onnx, calibrated on --calibration-dir",
    )
    int8.add_argument(
        "--calibration-dir",
        type=Path,
        help="folder of images with an index.csv of face boxes (lechpe-synth images), "
        "or of face crops, or a .npy of calibration tensors",
    )
    int8.add_argument("--calibration-count", type=int, default=256, help="crops used (default 256)")
    int8.add_argument(
        "--int8-format",
        choices=("qdq", "qoperator"),
        default="qdq",
        help="ONNX Runtime quantisation format (default qdq)",
    )
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
            if args.int8:
                write_int8(args)
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
