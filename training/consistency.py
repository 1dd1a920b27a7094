"""``lechpe-eval consistency``: does the model respect exact image transformations?

On a real photo the true pose is unknown, but how it changes is known exactly:
rotating the photo clockwise by ``theta`` about the camera axis turns the head
to ``conventions.rotate_in_image_plane(pose, theta)`` and mirroring it gives
``conventions.mirror_euler(pose)``. The check runs the model on the original
and on each transformed photo through the runtime's own crop path (the
runtime's face detector, its calibrated crop margin and shift, the shared
preprocessing, the backend, the published uncertainty) and reports the
disagreement ``|pred(transformed photo) - transform(pred(original))|`` per
angle (wrapped to [-180, 180)), per transform and overall.

Photos: scikit-image's ``astronaut`` (public domain) and ``camera`` (CC0), and
matplotlib's ``grace_hopper`` sample photo (public domain, US Navy; matplotlib
PR #1599), read from the installed packages: the real face photos this project
may use.

Rotations are about the centre of the original face box, with reflected
borders (``cv2.BORDER_REFLECT_101``), so no artificial edge enters the face
crop. When the detector misses the face in a transformed photo (or finds none
near where it must be), the original detector box moved exactly (its centre
rotated / mirrored, its size kept) is used, and the row says so (``box``).
``mirror-of-mirror`` (the same pixels) checks the harness: it must give 0.

::

    lechpe-eval consistency --model MODEL --out DIR [--angles 15,30,45]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from lechpe_model.conventions import ANGLE_NAMES, mirror_euler, rotate_in_image_plane

LOG = logging.getLogger("training.consistency")

#: Photos that may ship: scikit-image data (licences in its README) and matplotlib's
#: public-domain sample photo.
PHOTOS = ("astronaut", "camera", "grace_hopper")

DEFAULT_ANGLES = (15.0, 30.0, 45.0)


@dataclass(frozen=True)
class Transform:
    """An exact image transformation: mirror (optional) then clockwise rotation.

    Attributes:
        name: label in the report.
        theta: clockwise in-plane rotation in degrees (as seen in the image).
        mirrors: how many horizontal mirrorings are applied first (0, 1 or 2).
    """

    name: str
    theta: float = 0.0
    mirrors: int = 0

    def pose(self, angles: np.ndarray) -> np.ndarray:
        """The exactly transformed pose of ``angles`` ``(..., 3)`` degrees."""
        out = np.asarray(angles, dtype=np.float64)
        for _ in range(self.mirrors):
            out = mirror_euler(out)
        if self.theta:
            out = rotate_in_image_plane(out, self.theta)
        return out

    def image(self, bgr: np.ndarray, centre: tuple[float, float]) -> np.ndarray:
        """The transformed image; rotation about ``centre`` (x, y) of the original."""
        out = bgr
        cx = float(centre[0])
        for _ in range(self.mirrors):
            out = out[:, ::-1]
            cx = out.shape[1] - 1 - cx
        out = np.ascontiguousarray(out)
        if self.theta:
            # OpenCV's positive angle is counter-clockwise as seen: -theta turns clockwise.
            matrix = cv2.getRotationMatrix2D((cx, float(centre[1])), -self.theta, 1.0)
            out = cv2.warpAffine(
                out,
                matrix,
                (out.shape[1], out.shape[0]),
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_REFLECT_101,
            )
        return out

    def box(self, box: np.ndarray, width: int, centre: tuple[float, float]) -> np.ndarray:
        """The original face box moved exactly: centre transformed, size kept."""
        x1, y1, x2, y2 = (float(v) for v in box)
        bx, by = 0.5 * (x1 + x2), 0.5 * (y1 + y2)
        cx, cy = float(centre[0]), float(centre[1])
        for _ in range(self.mirrors):
            bx, cx = width - 1 - bx, width - 1 - cx
        if self.theta:
            t = np.radians(self.theta)
            # Clockwise as seen (image y down): x' = c + R(+theta) (x - c) in pixel axes.
            dx, dy = bx - cx, by - cy
            bx = cx + dx * np.cos(t) - dy * np.sin(t)
            by = cy + dx * np.sin(t) + dy * np.cos(t)
        hw, hh = 0.5 * (x2 - x1), 0.5 * (y2 - y1)
        return np.array([bx - hw, by - hh, bx + hw, by + hh], dtype=np.float32)


def default_transforms(angles: Sequence[float] = DEFAULT_ANGLES) -> list[Transform]:
    """Rotations by +-each angle, the mirror, and mirror-of-mirror (harness check)."""
    out = []
    for a in angles:
        out += [Transform(f"rotate {-a:+g}", -float(a)), Transform(f"rotate {a:+g}", float(a))]
    out += [Transform("mirror", 0.0, 1), Transform("mirror-of-mirror", 0.0, 2)]
    return out


def angle_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``|a - b|`` per angle, wrapped to [0, 180] degrees."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return np.abs((d + 180.0) % 360.0 - 180.0)


def disagreement(original: np.ndarray, transformed: np.ndarray, transform: Transform) -> np.ndarray:
    """``(3,)`` |prediction on the transformed photo - exactly transformed original prediction|."""
    return angle_difference(transformed, transform.pose(original))


#: A predictor: (BGR image, fallback face box) -> (angles (3,), sigma (3,), box source).
Predictor = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, str]]


def run_consistency(
    predict: Predictor,
    photos: dict[str, tuple[np.ndarray, np.ndarray]],
    transforms: Sequence[Transform],
) -> dict:
    """Predict on every photo and transformed photo; collect the disagreements.

    Args:
        predict: see :data:`Predictor`.
        photos: ``{name: (bgr image, face box of the original)}``.
        transforms: what to apply.

    Returns:
        ``{"rows": [...], "summary": {...}}``: a row per (photo, transform) with the
        predictions, the exact expectation, the disagreement per angle and mean,
        and the box source; the summary averages per transform and overall
        (``mirror-of-mirror``, the harness check, is reported but not averaged).
    """
    rows = []
    for name, (bgr, box) in photos.items():
        centre = (0.5 * (box[0] + box[2]), 0.5 * (box[1] + box[3]))
        base, base_sigma, base_source = predict(bgr, np.asarray(box, np.float32))
        rows.append(
            {
                "photo": name,
                "transform": "original",
                "prediction": [float(v) for v in base],
                "sigma": [float(v) for v in base_sigma],
                "box": base_source,
            }
        )
        for tf in transforms:
            image = tf.image(bgr, centre)
            fallback = tf.box(box, bgr.shape[1], centre)
            pred, sigma, source = predict(image, fallback)
            expected = tf.pose(base)
            diff = disagreement(base, pred, tf)
            rows.append(
                {
                    "photo": name,
                    "transform": tf.name,
                    "theta": tf.theta,
                    "mirrors": tf.mirrors,
                    "prediction": [float(v) for v in pred],
                    "expected": [float(v) for v in expected],
                    "sigma": [float(v) for v in sigma],
                    "disagreement": {a: float(v) for a, v in zip(ANGLE_NAMES, diff, strict=True)},
                    "disagreement_mean": float(diff.mean()),
                    "box": source,
                }
            )
    return {"rows": rows, "summary": summarise(rows)}


def summarise(rows: list[dict]) -> dict:
    """Mean disagreement per angle and overall, per transform and over all transforms."""
    scored = [r for r in rows if "disagreement" in r]
    checks = [r for r in scored if r["transform"] == "mirror-of-mirror"]
    main = [r for r in scored if r["transform"] != "mirror-of-mirror"]

    def mean_of(group: list[dict]) -> dict:
        if not group:
            return {a: float("nan") for a in (*ANGLE_NAMES, "mean")} | {"n": 0}
        d = np.array([[r["disagreement"][a] for a in ANGLE_NAMES] for r in group])
        out = {a: float(d[:, k].mean()) for k, a in enumerate(ANGLE_NAMES)}
        out["mean"] = float(d.mean())
        out["n"] = len(group)
        return out

    per_transform, per_photo = {}, {}
    originals = {r["photo"]: r for r in rows if r["transform"] == "original"}
    for r in main:
        per_transform.setdefault(r["transform"], []).append(r)
        per_photo.setdefault(r["photo"], []).append(r)
    return {
        "all": mean_of(main),
        "rotations": mean_of([r for r in main if r.get("mirrors", 0) == 0]),
        "mirror": mean_of([r for r in main if r.get("mirrors", 0) == 1]),
        "per_transform": {k: mean_of(v) for k, v in per_transform.items()},
        "per_photo": {k: mean_of(v) for k, v in per_photo.items()},
        "harness_mirror_of_mirror": mean_of(checks),
        "uncertainty": uncertainty_check(main, originals),
        "median_sigma_per_photo": {
            k: {
                a: float(np.median([r["sigma"][i] for r in rows if r["photo"] == k]))
                for i, a in enumerate(ANGLE_NAMES)
            }
            for k in originals
        },
        "fallback_boxes": sum(1 for r in rows if r["box"] != "detector"),
        "rows": len(rows),
    }


def uncertainty_check(scored: list[dict], originals: dict[str, dict]) -> dict:
    """Does the published sigma know where the photos disagree? Per angle, over the
    transformed photos: the Spearman correlation of the disagreement with the two
    predictions' combined sigma ``sqrt(sigma_original^2 + sigma_transformed^2)``
    (the spread of a difference of two independent errors), and the fraction of
    disagreements within it (NaN with fewer than 3 rows or a constant column), as
    ``uncertainty.rank_and_coverage`` computes them for errors."""
    from lechpe_model.uncertainty import rank_and_coverage

    disagreement = np.array([[r["disagreement"][a] for a in ANGLE_NAMES] for r in scored])
    combined = np.array(
        [np.hypot(originals[r["photo"]]["sigma"], r["sigma"]) for r in scored], np.float64
    )
    stats = rank_and_coverage(combined, disagreement)
    return {
        "spearman": stats["spearman"],
        "within_combined_sigma": stats["coverage_1sigma"],
        "n": len(scored),
    }


def shipped_photos(names: Sequence[str] = PHOTOS) -> dict[str, np.ndarray]:
    """BGR uint8 copies of the shipped photos (scikit-image's astronaut and camera,
    matplotlib's grace_hopper sample)."""
    out = {}
    for name in names:
        if name not in PHOTOS:
            raise ValueError(f"unknown photo {name!r}; choose from {', '.join(PHOTOS)}")
        if name == "grace_hopper":
            from matplotlib import cbook

            path = str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
            out[name] = cv2.imread(path, cv2.IMREAD_COLOR)
            if out[name] is None:
                raise FileNotFoundError(f"cannot read matplotlib's sample photo {path}")
            continue
        from skimage import data

        img = getattr(data, name)()
        out[name] = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR if img.ndim == 2 else cv2.COLOR_RGB2BGR)
    return out


def runtime_predictor(
    detector, backend, min_iou: float = 0.3, derotate_above_deg: float | None = None
) -> Predictor:
    """The runtime's crop path: detector box (the one overlapping the expected box
    best, IoU >= ``min_iou``), else the fallback box; then ``PoseEstimator.infer_boxes``
    (the detector's crop margin and shift, the shared preprocessing, the backend, the
    upright re-crop of tilted heads, the published uncertainty).

    ``derotate_above_deg``: ``None`` = the runtime's default; negative = off.
    """
    from lechpe_model.pipeline import DEFAULT_DEROTATE_ABOVE_DEG, PoseEstimator
    from training.detector_boxes import detect_at

    estimator = PoseEstimator(
        detector,
        backend,
        derotate_above_deg=DEFAULT_DEROTATE_ABOVE_DEG
        if derotate_above_deg is None
        else derotate_above_deg,
    )

    def predict(bgr: np.ndarray, fallback: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
        det = detect_at(detector, bgr, fallback, min_iou)
        if det is not None:
            box, source = np.asarray(det.box, np.float32), "detector"
        else:
            box, source = np.asarray(fallback, np.float32), "fallback"
        outputs, _, _ = estimator.infer_boxes(bgr, [box])
        return (
            outputs.angles[0].astype(np.float64),
            outputs.uncertainty[0].astype(np.float64),
            source,
        )

    return predict


def consistency_markdown(report: dict, model: str) -> str:
    """A markdown table per transform (and overall) for docs/RESULTS.md."""
    s = report["summary"]
    lines = [
        f"| consistency ({model}) | yaw | pitch | roll | **mean** | predictions |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in list(s["per_transform"].items()) + [
        ("all rotations", s["rotations"]),
        *((f"photo `{k}`, all transforms", v) for k, v in s.get("per_photo", {}).items()),
        ("**all transforms**", s["all"]),
        ("harness check: mirror of mirror", s["harness_mirror_of_mirror"]),
    ]:
        lines.append(
            f"| {name} | {row['yaw']:.2f} | {row['pitch']:.2f} | {row['roll']:.2f} | "
            f"**{row['mean']:.2f}** | {row['n']} |"
        )
    lines.append("")
    lines.append(
        "Mean |prediction on the transformed photo - exactly transformed prediction on "
        f"the original| in degrees; {s['fallback_boxes']} of {s['rows']} predictions used the "
        "exactly moved original box because the detector missed."
    )
    u = s.get("uncertainty")
    if u:
        lines += [
            "",
            "| published sigma vs disagreement | yaw | pitch | roll |",
            "|---|---|---|---|",
            "| Spearman(combined sigma, disagreement) | "
            + " | ".join(f"{u['spearman'][a]:.2f}" for a in ANGLE_NAMES)
            + " |",
            "| disagreements within the combined sigma | "
            + " | ".join(f"{100 * u['within_combined_sigma'][a]:.0f} %" for a in ANGLE_NAMES)
            + " |",
            *(
                f"| median sigma, photo `{k}` | "
                + " | ".join(f"{v[a]:.1f}" for a in ANGLE_NAMES)
                + " |"
                for k, v in s.get("median_sigma_per_photo", {}).items()
            ),
            "",
            f"Combined sigma = sqrt(sigma_original^2 + sigma_transformed^2), over the "
            f"{u['n']} transformed photos.",
        ]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lechpe-eval consistency",
        description="Real-photo consistency: rotate and mirror shippable photos, compare "
        "the predictions with the exactly transformed original prediction.",
    )
    p.add_argument("--model", required=True, help="checkpoint (.safetensors) or .onnx")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--backend", default="auto")
    p.add_argument("--detector", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--angles", default=",".join(f"{a:g}" for a in DEFAULT_ANGLES), help="rotations (deg), +-"
    )
    p.add_argument("--photos", default=",".join(PHOTOS))
    p.add_argument(
        "--derotate-above-deg",
        type=float,
        help="re-crop faces tilted past this |roll| upright (default: the runtime's, "
        "lechpe_model.pipeline.DEFAULT_DEROTATE_ABOVE_DEG; negative: off)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from lechpe_model.backends import create_backend
    from lechpe_model.detection import create_detector

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.makedirs(args.out, exist_ok=True)
    detector = create_detector(args.detector)
    backend = create_backend(args.backend, args.model, device=args.device)
    photos = {}
    for name, bgr in shipped_photos([n for n in args.photos.split(",") if n]).items():
        found = detector.detect(bgr)
        if not found:
            LOG.warning("%s: the detector finds no face in the original photo; skipped", name)
            continue
        best = max(found, key=lambda d: float((d.box[2] - d.box[0]) * (d.box[3] - d.box[1])))
        photos[name] = (bgr, np.asarray(best.box, np.float32))
    if not photos:
        raise SystemExit("lechpe-eval consistency: no photo with a detected face")
    transforms = default_transforms([float(a) for a in args.angles.split(",") if a])
    predictor = runtime_predictor(detector, backend, derotate_above_deg=args.derotate_above_deg)
    report = run_consistency(predictor, photos, transforms)
    report["model"] = args.model
    report["backend"] = backend.name
    report["detector"] = detector.name
    report["derotate_above_deg"] = args.derotate_above_deg
    with open(os.path.join(args.out, "consistency.json"), "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
    text = consistency_markdown(report, os.path.basename(args.model))
    with open(os.path.join(args.out, "consistency.md"), "w", encoding="utf-8") as handle:
        handle.write(text)
    print(text)
    for r in report["rows"]:
        pred = "/".join(f"{v:+.1f}" for v in r["prediction"])
        exp = "/".join(f"{v:+.1f}" for v in r.get("expected", r["prediction"]))
        print(f"{r['photo']:>9} {r['transform']:>17}: pred {pred}  expected {exp}  box {r['box']}")
    return 0
