"""Tilted heads through the runtime's crop path: the upright re-crop on and off.

Each face of a labelled set (e.g. held-out identities 900-999) is measured
twice: as rendered, and turned in the image plane by a seeded angle drawn
uniformly from ``[-max_turn, max_turn]`` about the centre of its landmark box
(reflected borders; the label turned exactly with
``conventions.rotate_in_image_plane``). The runtime's detector finds the face
(the detection overlapping the turned landmark box best, IoU >= 0.3), and
``PoseEstimator.infer_boxes`` estimates it with ``derotate_above_deg`` off and
at each threshold asked for, on the same box, so the comparison is paired.

::

    python -m training.tilt_eval --data data/test --data data/test_occ --max-samples 600 \\
        --out docs/results/tilt_eval.json

``--box-scale`` instead measures how the detector's box shrinks when a face is
turned (the median ratio of its box side on the turned face to its side on the
upright face, per turn angle, both signs pooled), on validation identities: the
table ``BLAZEFACE_TURNED_BOX_SCALE`` the runtime's upright re-crop divides by::

    python -m training.tilt_eval --box-scale --data data/val --max-samples 400 \\
        --out docs/results/blazeface_full_turned_box_scale_val.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence

import cv2
import numpy as np

from lechpe_model.conventions import ANGLE_NAMES, rotate_in_image_plane
from lechpe_model.preprocessing import box_from_landmarks
from training.detector_boxes import detect_at

LOG = logging.getLogger("training.tilt_eval")


def turn_face(image: np.ndarray, box: np.ndarray, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """``image`` turned clockwise by ``theta`` about the centre of ``box``, and the
    axis-aligned box of the turned ``box`` corners (reflected borders)."""
    cx, cy = 0.5 * (box[0] + box[2]), 0.5 * (box[1] + box[3])
    matrix = cv2.getRotationMatrix2D((float(cx), float(cy)), -float(theta), 1.0)
    size = (image.shape[1], image.shape[0])
    turned = cv2.warpAffine(image, matrix, size, borderMode=cv2.BORDER_REFLECT_101)
    corners = np.array([[box[0], box[1]], [box[2], box[1]], [box[2], box[3]], [box[0], box[3]]])
    moved = corners @ matrix[:, :2].T + matrix[:, 2]
    return turned, box_from_landmarks(moved)


def _faces(samples):
    """``(index, sample, image, landmark box)`` of the samples with a box and a readable image."""
    from training.datasets import ImageLoadError, load_image

    for index, sample in enumerate(samples):
        if sample.box is None:
            continue
        try:
            image = load_image(sample)
        except ImageLoadError as exc:
            LOG.warning("skipped: %s", exc)
            continue
        yield index, sample, image, np.asarray(sample.box, np.float64)


def evaluate(samples, detector, backend, thresholds: Sequence[float], max_turn: float, seed: int):
    """Per face and condition (upright / turned): absolute errors per threshold."""
    from lechpe_model.pipeline import PoseEstimator

    estimators = {t: PoseEstimator(detector, backend, derotate_above_deg=t) for t in thresholds}
    turns = np.random.default_rng(seed).uniform(-max_turn, max_turn, len(samples))
    errors = {c: {t: [] for t in thresholds} for c in ("upright", "turned")}
    found = {"upright": 0, "turned": 0}
    for index, sample, image, box in _faces(samples):
        for condition, turn in (("upright", 0.0), ("turned", float(turns[index]))):
            frame, turned_box = turn_face(image, box, turn)
            det = detect_at(detector, frame, turned_box)
            if det is None:
                continue
            found[condition] += 1
            truth = rotate_in_image_plane(np.asarray(sample.angles, np.float64), turn)
            for t, estimator in estimators.items():
                outputs, _, _ = estimator.infer_boxes(frame, [np.asarray(det.box, np.float32)])
                diff = (outputs.angles[0].astype(np.float64) - truth + 180.0) % 360.0 - 180.0
                errors[condition][t].append(np.abs(diff))
    return errors, found


def measure_box_scale(samples, detector, angles: Sequence[float] = (15.0, 30.0, 45.0)) -> dict:
    """Median ratio (turned box side / upright box side) of ``detector`` per |turn|.

    Each face is detected upright and turned by +-each angle (the detection overlapping
    the turned landmark box best, IoU >= 0.3); faces missed upright are skipped.
    """
    ratios: dict[float, list[float]] = {float(a): [] for a in angles}
    faces = 0
    for _, _, image, box in _faces(samples):
        upright = detect_at(detector, image, box)
        if upright is None:
            continue
        faces += 1
        side = float(upright.box[2] - upright.box[0])
        for angle in ratios:
            for turn in (-angle, angle):
                det = detect_at(detector, *turn_face(image, box, turn))
                if det is not None:
                    ratios[angle].append(float(det.box[2] - det.box[0]) / side)
    return {
        "detector": detector.name,
        "faces_found_upright": faces,
        "scale": [[0.0, 1.0]] + [[a, float(np.median(v))] for a, v in ratios.items() if v],
        "turned_faces_found": {f"{a:g}": len(v) for a, v in ratios.items()},
    }


def summarise(errors, found, n_faces: int) -> dict:
    out = {}
    for condition, by_threshold in errors.items():
        rows = {}
        for t, errs in by_threshold.items():
            e = np.asarray(errs).reshape(-1, 3)
            rows[f"{t:g}"] = {
                **{
                    a: float(e[:, k].mean()) if len(e) else float("nan")
                    for k, a in enumerate(ANGLE_NAMES)
                },
                "mean": float(e.mean()) if len(e) else float("nan"),
            }
        out[condition] = {"faces": n_faces, "found": found[condition], "mae": rows}
    return out


def markdown(report: dict) -> str:
    lines = [
        "| set | faces | derotate_above_deg | yaw | pitch | roll | **mean** |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, sets in report["sets"].items():
        for condition, block in sets.items():
            for t, row in block["mae"].items():
                label = "off" if float(t) < 0 else t
                lines.append(
                    f"| {name}, {condition} | {block['found']} / {block['faces']} | {label} | "
                    f"{row['yaw']:.2f} | {row['pitch']:.2f} | {row['roll']:.2f} | **{row['mean']:.2f}** |"
                )
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.tilt_eval", description=__doc__.split("\n")[0]
    )
    p.add_argument("--data", action="append", required=True, help="labelled set (repeatable)")
    p.add_argument("--model", help="model (default: the embedded default model)")
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--detector", default="blazeface_full")
    p.add_argument("--max-samples", type=int, default=600)
    p.add_argument("--max-turn", type=float, default=45.0, help="largest in-plane turn (deg)")
    p.add_argument("--thresholds", default="-1,10,15", help="derotate_above_deg values; -1: off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--box-scale",
        action="store_true",
        help="measure the detector's box shrink on turned faces instead (JSON to --out)",
    )
    p.add_argument("--out", required=True, help="JSON report (a .md beside it)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from lechpe_model.backends import create_backend
    from lechpe_model.default_model import default_model_path
    from lechpe_model.detection import create_detector
    from training.datasets import load_dataset

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    thresholds = [float(v) for v in args.thresholds.split(",") if v.strip()]
    detector = create_detector(args.detector)
    if args.box_scale:
        samples = [s for data in args.data for s in load_dataset(data).samples[: args.max_samples]]
        result = measure_box_scale(samples, detector)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)) or ".", exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
        print(json.dumps(result))
        return 0
    model = args.model or str(default_model_path())
    backend = create_backend(args.backend, model)
    report = {
        "model": model,
        "detector": detector.name,
        "max_turn": args.max_turn,
        "seed": args.seed,
        "sets": {},
    }
    for data in args.data:
        samples = load_dataset(data).samples[: args.max_samples]
        errors, found = evaluate(samples, detector, backend, thresholds, args.max_turn, args.seed)
        report["sets"][os.path.basename(os.path.normpath(data))] = summarise(
            errors, found, len(samples)
        )
    os.makedirs(os.path.dirname(os.path.abspath(args.out)) or ".", exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
    text = markdown(report)
    with open(os.path.splitext(args.out)[0] + ".md", "w", encoding="utf-8") as handle:
        handle.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
