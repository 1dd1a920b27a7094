"""lechpe-infer: head poses of every face in images, folders, videos or a camera.

Examples::

    lechpe-infer photo.jpg                                  # JSON lines to stdout
    lechpe-infer photos/ --out annotated/ --jsonl poses.jsonl
    lechpe-infer clip.mp4 --out annotated/                  # annotated clip_pose.mp4
    lechpe-infer --camera 0 --max-frames 300 --backend onnxruntime

One JSON line per frame::

    {"source": "photo.jpg", "frame": 0, "width": 512, "height": 512,
     "faces": [{"box": [x1, y1, x2, y2], "score": 0.93, "yaw": 3.1, "pitch": -2.0,
                "roll": 1.2, "uncertainty": {"yaw": .., "pitch": .., "roll": ..},
                "cluster": 4, "confidence": 0.71, "landmarks": [[x, y] x 5] | null}],
     "detected": 1, "dropped": 0, "error": null, "timings_ms": {...}}

Angles are degrees (lechpe_model.conventions). Annotated outputs show the head
axes: red forward, green the person's left, blue up.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from lechpe_model.pipeline import DEFAULT_DEROTATE_ABOVE_DEG

LOG = logging.getLogger("lechpe-infer")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lechpe-infer",
        description="Estimate the head pose (yaw, pitch, roll in degrees) of every face.",
    )
    parser.add_argument(
        "input", nargs="?", type=Path, help="image, folder of images, or video file"
    )
    parser.add_argument("--camera", type=int, help="camera device index (instead of INPUT)")
    parser.add_argument(
        "--model", type=Path, help=".safetensors or .onnx model (default: the embedded model)"
    )
    parser.add_argument("--backend", default="auto", help="auto, tensorrt, onnxruntime or torch")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument(
        "--detector",
        default="blazeface_full",
        help="blazeface_full (default), blazeface_occluded, blazeface, yuface, yunet, haar, "
        "auto, or a union "
        "such as blazeface_full+yuface",
    )
    parser.add_argument(
        "--detector-model", type=Path, help="ONNX file for --detector yunet (or blazeface*)"
    )
    parser.add_argument("--score-threshold", type=float, default=0.5, help="min detector score")
    parser.add_argument("--max-faces", type=int, default=10, help="keep the N largest faces")
    parser.add_argument("--margin", type=float, help="crop margin (default: the detector's)")
    parser.add_argument("--max-side", type=int, default=8192, help="refuse larger frames")
    parser.add_argument(
        "--derotate-above-deg",
        type=float,
        default=DEFAULT_DEROTATE_ABOVE_DEG,
        help="faces tilted past this |roll| are estimated again on an upright crop "
        "(turned back exactly); negative: off",
    )
    parser.add_argument("--out", type=Path, help="folder for annotated images / videos")
    parser.add_argument("--jsonl", type=Path, help="write JSON lines here instead of stdout")
    parser.add_argument("--max-frames", type=int, help="stop after N frames (videos, camera)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the chosen components")
    return parser


def iter_folder(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def read_image(path: Path, max_side: int = 8192) -> np.ndarray:
    """Decode an image file as stored (16-bit, alpha and gray kept; the pipeline normalises).

    The size the header declares is checked before decoding, and decoders
    print nothing (:func:`lechpe_model.image_checks.decode_image_bytes`).

    Raises:
        InvalidImage: the file cannot be read, sized, or decoded; the text says why.
    """
    from lechpe_model.image_checks import InvalidImage, decode_image_bytes

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidImage(f"cannot read {path}: {exc.strerror or exc}") from exc
    if not data:
        raise InvalidImage(f"{path} is empty")
    try:
        return decode_image_bytes(data, unchanged=True, max_side=max_side)
    except InvalidImage as exc:
        raise InvalidImage(f"{path}: {exc}") from exc


def iter_video(capture: cv2.VideoCapture, max_frames: int | None) -> Iterator[np.ndarray]:
    count = 0
    while max_frames is None or count < max_frames:
        ok, frame = capture.read()
        if not ok:
            return
        count += 1
        yield frame


class VideoSink:
    """Annotated frames -> an mp4 (mp4v), opened on the first frame."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path, self.fps, self.writer = path, fps if fps and fps > 0 else 30.0, None

    def write(self, frame: np.ndarray) -> None:
        if self.writer is None:
            height, width = frame.shape[:2]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fourcc = cv2.VideoWriter_fourcc(*"mp4v")
            self.writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, (width, height))
        self.writer.write(frame)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


def frame_record(source: str, index: int, image, result) -> dict:
    shape = getattr(image, "shape", None)
    return {
        "source": source,
        "frame": index,
        "width": int(shape[1]) if shape is not None and len(shape) >= 2 else None,
        "height": int(shape[0]) if shape is not None and len(shape) >= 2 else None,
        "faces": [face.to_dict() for face in result.faces],
        "detected": result.detected,
        "dropped": result.dropped,
        "error": result.error,
        "timings_ms": {k: round(v, 3) for k, v in result.timings_ms.items()},
    }


def annotated_frame(image: np.ndarray, result) -> np.ndarray | None:
    from lechpe_model.image_checks import InvalidImage, to_bgr8
    from lechpe_model.visualization import annotate

    try:
        bgr = to_bgr8(image, max_side=1 << 30, min_side=1)
    except InvalidImage:
        return None
    return annotate(bgr, result.faces)


def build_estimator(args):
    from lechpe_model.backends import create_backend
    from lechpe_model.default_model import default_model_path
    from lechpe_model.detection import create_detector
    from lechpe_model.pipeline import PoseEstimator

    model = args.model or default_model_path()
    detector = create_detector(
        args.detector, score_threshold=args.score_threshold, model_path=args.detector_model
    )
    backend = create_backend(args.backend, model, device=args.device)
    LOG.info(
        "detector %s, backend %s on %s, model %s",
        detector.name,
        backend.name,
        backend.device,
        model,
    )
    return PoseEstimator(
        detector,
        backend,
        max_faces=args.max_faces,
        margin=args.margin,
        max_side=args.max_side,
        derotate_above_deg=args.derotate_above_deg,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(name)s: %(message)s",
        stream=sys.stderr,
    )
    if (args.input is None) == (args.camera is None):
        parser.error("give exactly one of INPUT or --camera N")
    if args.input is not None and not args.input.exists():
        print(f"lechpe-infer: error: input not found: {args.input}", file=sys.stderr)
        return 2
    try:
        estimator = build_estimator(args)
    except Exception as exc:
        print(f"lechpe-infer: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1

    sink_jsonl = open(args.jsonl, "w", encoding="utf-8") if args.jsonl else sys.stdout
    frames = faces = skipped = 0

    def emit(record: dict) -> None:
        nonlocal frames, faces
        frames += 1
        faces += len(record["faces"])
        sink_jsonl.write(json.dumps(record) + "\n")
        sink_jsonl.flush()

    try:
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
        if args.camera is not None or (args.input and args.input.suffix.lower() in VIDEO_SUFFIXES):
            source = f"camera:{args.camera}" if args.camera is not None else str(args.input)
            capture = cv2.VideoCapture(args.camera if args.camera is not None else str(args.input))
            if not capture.isOpened():
                print(f"lechpe-infer: error: cannot open {source}", file=sys.stderr)
                return 2
            stem = f"camera{args.camera}" if args.camera is not None else args.input.stem
            video = (
                VideoSink(args.out / f"{stem}_pose.mp4", capture.get(cv2.CAP_PROP_FPS))
                if args.out
                else None
            )
            try:
                for index, frame in enumerate(iter_video(capture, args.max_frames)):
                    result = estimator.estimate(frame)
                    emit(frame_record(source, index, frame, result))
                    if video is not None:
                        drawn = annotated_frame(frame, result)
                        if drawn is not None:
                            video.write(drawn)
            finally:
                capture.release()
                if video is not None:
                    video.close()
        else:
            paths = iter_folder(args.input) if args.input.is_dir() else [args.input]
            from lechpe_model.image_checks import InvalidImage
            from lechpe_model.pipeline import EstimateResult

            for path in paths:
                try:
                    image = read_image(path, max_side=args.max_side)
                except InvalidImage as exc:  # reported and skipped; the run goes on
                    print(f"lechpe-infer: skipped {exc}", file=sys.stderr)
                    skipped += 1
                    image, result = None, EstimateResult(error=f"skipped: {exc}")
                else:
                    result = estimator.estimate(image)
                emit(frame_record(str(path), 0, image, result))
                if args.out and image is not None:
                    drawn = annotated_frame(image, result)
                    if drawn is not None:
                        cv2.imwrite(str(args.out / f"{path.stem}_pose.jpg"), drawn)
    except KeyboardInterrupt:
        pass
    finally:
        if sink_jsonl is not sys.stdout:
            sink_jsonl.close()
    summary = f"lechpe-infer: {frames} frame(s), {faces} face(s)"
    if skipped:
        summary += f", {skipped} file(s) skipped (unreadable or refused, see above)"
    print(summary, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
