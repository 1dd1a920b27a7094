"""Training crops that match the deployed face detector.

The node crops faces from detector boxes (``lechpe_model.detection``: the box
expanded by the detector's ``crop_margin`` with ``crop_shift_y``), training
from the 68-landmark box with ``data.test_margin``.  This module measures how
the two crops differ and lets training draw crops like the deployed ones.

::

    # 1. statistics of a detector's boxes relative to the landmark box, by |yaw| range
    python -m training.detector_boxes measure --detector yuface --data data/synth_val \\
        --out runs/yuface_boxes.json
    # 2. train with crops drawn from them (data.detector_box_stats)
    lechpe-train ... --set data.detector_box_stats=runs/yuface_boxes.json
    # 3. one model, the same test faces: landmark crops vs detector crops
    python -m training.detector_boxes compare --model runs/x/model.safetensors \\
        --detector yuface --data data/test --out runs/x/crop_gap

Statistics (per |yaw| range, faces matched to a detection by IoU with the
landmark box >= ``MIN_IOU``): with the landmark box side ``s = max(w, h)``
and centre ``c``, and the *deployed crop square* (side ``S``, centre ``C``)
made from the detector box,

* ``dx = (C_x - c_x) / s * sign(yaw)`` (mirror-symmetric: the offset toward
  the side the face turns to), ``dy = (C_y - c_y) / s``,
* ``log_scale = log(S / (s * (1 + 2 * test_margin)))``: 0 when the deployed
  crop has the size of the training test crop,

their means and covariance, and the miss rate.  Training then draws
``(dx, dy, log_scale)`` from a normal with that mean and covariance for the
sample's |yaw| range and makes the crop square of that centre and size
(before the usual margin jitter and augmentation), so the network sees the
centre offsets and scale errors the detector will give it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from collections.abc import Sequence

import numpy as np

from lechpe_model.preprocessing import TEST_MARGIN, box_iou, expand_box

LOG = logging.getLogger("training.detector_boxes")

#: |yaw| ranges (degrees) the statistics are kept for.
YAW_EDGES = (0.0, 30.0, 60.0, 99.0)
#: A detection belongs to the labelled face when its IoU with the landmark box is this high.
MIN_IOU = 0.3
FIELDS = ("dx", "dy", "log_scale")


def deployed_square(det_box, crop_margin: float, crop_shift_y: float) -> np.ndarray:
    """The crop square the runtime makes from a detector box (as ``preprocess_face``)."""
    return expand_box(det_box, crop_margin, square=True, shift_y=crop_shift_y)


def landmark_equivalent_box(square, test_margin: float = TEST_MARGIN) -> np.ndarray:
    """The box that ``expand_box(box, test_margin)`` turns into ``square`` (same centre)."""
    x1, y1, x2, y2 = (float(v) for v in square)
    side = max(x2 - x1, y2 - y1) / (1.0 + 2.0 * test_margin)
    cx, cy = 0.5 * (x1 + x2), 0.5 * (y1 + y2)
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], np.float32)


def box_offsets(
    landmark_box, square, yaw: float, test_margin: float = TEST_MARGIN
) -> tuple[float, float, float]:
    """``(dx, dy, log_scale)`` of a deployed crop square relative to a landmark box."""
    lx1, ly1, lx2, ly2 = (float(v) for v in landmark_box)
    side = max(lx2 - lx1, ly2 - ly1)
    x1, y1, x2, y2 = (float(v) for v in square)
    sign = -1.0 if yaw < 0 else 1.0
    dx = ((x1 + x2) / 2 - (lx1 + lx2) / 2) / side * sign
    dy = ((y1 + y2) / 2 - (ly1 + ly2) / 2) / side
    log_scale = math.log(max(x2 - x1, y2 - y1) / (side * (1.0 + 2.0 * test_margin)))
    return dx, dy, log_scale


def yaw_bin(yaw: float, edges: Sequence[float] = YAW_EDGES) -> int:
    """Index of the |yaw| range (the last range includes its upper edge and beyond)."""
    a = abs(float(yaw))
    for i in range(len(edges) - 1):
        if a < edges[i + 1]:
            return i
    return len(edges) - 2


def detect_at(detector, image: np.ndarray, box, min_iou: float = MIN_IOU):
    """The detection of ``image`` overlapping ``box`` best, or ``None`` below ``min_iou``."""
    det, overlap = best_match(detector.detect(image), box)
    return det if det is not None and overlap >= min_iou else None


def best_match(detections, landmark_box) -> tuple[object | None, float]:
    """The detection with the highest IoU with the landmark box, and that IoU."""
    best, best_iou = None, 0.0
    for det in detections:
        value = box_iou(np.asarray(det.box, np.float64), np.asarray(landmark_box, np.float64))
        if value > best_iou:
            best, best_iou = det, value
    return best, best_iou


def measure(samples, detector, test_margin: float = TEST_MARGIN, progress: bool = False) -> dict:
    """Box statistics of ``detector`` on labelled samples with landmark boxes (JSON-ready)."""
    from training.datasets import ImageLoadError, load_image

    rows: list[list[list[float]]] = [[] for _ in range(len(YAW_EDGES) - 1)]
    counts = [{"faces": 0, "missed": 0, "unreadable": 0} for _ in rows]
    iterator = samples
    if progress:
        from tqdm import tqdm

        iterator = tqdm(samples, desc=f"{detector.name} boxes", unit="face")
    for sample in iterator:
        if sample.box is None:
            continue
        b = yaw_bin(sample.angles[0])
        counts[b]["faces"] += 1
        try:
            image = load_image(sample)
        except ImageLoadError as exc:
            LOG.warning("skipped unreadable image: %s", exc)
            counts[b]["unreadable"] += 1
            continue
        det = detect_at(detector, image, sample.box)
        if det is None:
            counts[b]["missed"] += 1
            continue
        square = deployed_square(det.box, detector.crop_margin, detector.crop_shift_y)
        rows[b].append(list(box_offsets(sample.box, square, sample.angles[0], test_margin)))
    bins = []
    for i, values in enumerate(rows):
        arr = np.asarray(values, np.float64).reshape(-1, len(FIELDS))
        entry: dict = {
            "yaw_range": [YAW_EDGES[i], YAW_EDGES[i + 1]],
            **counts[i],
            "matched": len(arr),
            "miss_rate": counts[i]["missed"] / max(counts[i]["faces"], 1),
        }
        if len(arr) >= 2:
            entry["mean"] = dict(zip(FIELDS, arr.mean(0).tolist(), strict=True))
            entry["std"] = dict(zip(FIELDS, arr.std(0, ddof=1).tolist(), strict=True))
            entry["cov"] = np.cov(arr.T).tolist()
        bins.append(entry)
    return {
        "detector": detector.name,
        "crop_margin": float(detector.crop_margin),
        "crop_shift_y": float(detector.crop_shift_y),
        "test_margin": float(test_margin),
        "fields": list(FIELDS),
        "min_iou": MIN_IOU,
        "bins": bins,
    }


class DetectorBoxSampler:
    """``box_jitter`` for ``FaceCropDataset``: landmark-equivalent boxes of drawn
    detector-like crops (see the module docstring).

    A |yaw| range without statistics (fewer than 2 matched faces) falls back to
    the nearest range that has them.
    """

    def __init__(self, stats: dict, prob: float = 1.0) -> None:
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"data.detector_box_prob must be in [0, 1], got {prob}")
        self.prob = float(prob)  # share of crops drawn like the detector's; others: landmark box
        self.test_margin = float(stats.get("test_margin", TEST_MARGIN))
        self.means, self.covs = [], []
        usable = [i for i, b in enumerate(stats["bins"]) if "mean" in b]
        if not usable:
            raise ValueError("detector box statistics have no range with matched faces")
        for i, _ in enumerate(stats["bins"]):
            j = min(usable, key=lambda u: abs(u - i))
            entry = stats["bins"][j]
            self.means.append(np.array([entry["mean"][f] for f in FIELDS], np.float64))
            self.covs.append(np.asarray(entry["cov"], np.float64))

    @classmethod
    def from_json(cls, path: str, prob: float = 1.0) -> DetectorBoxSampler:
        with open(path, encoding="utf-8") as handle:
            return cls(json.load(handle), prob)

    def __call__(self, sample, rng: np.random.Generator) -> np.ndarray:
        # A mix keeps the model good on landmark crops (the benchmarks' protocol) while
        # it learns the deployed crops; prob 1 draws nothing extra (same stream as before).
        if self.prob < 1.0 and rng.random() >= self.prob:
            return np.asarray(sample.box, np.float32)
        b = yaw_bin(sample.angles[0])
        offsets = rng.multivariate_normal(self.means[b], self.covs[b])
        return _offset_box(sample.box, sample.angles[0], *offsets)

    def mean_box(self, landmark_box, yaw: float) -> np.ndarray:
        """The landmark-equivalent box of the detector's *mean* crop for this face."""
        return _offset_box(landmark_box, yaw, *self.means[yaw_bin(yaw)])


def _offset_box(landmark_box, yaw: float, dx: float, dy: float, log_scale: float) -> np.ndarray:
    """Landmark-equivalent box moved and scaled by ``box_offsets``-style offsets."""
    x1, y1, x2, y2 = (float(v) for v in landmark_box)
    side = max(x2 - x1, y2 - y1)
    sign = -1.0 if yaw < 0 else 1.0
    cx = 0.5 * (x1 + x2) + dx * side * sign
    cy = 0.5 * (y1 + y2) + dy * side
    half = 0.5 * side * math.exp(log_scale)
    return np.array([cx - half, cy - half, cx + half, cy + half], np.float32)


def detector_crop_samples(samples, detector) -> tuple[list, list]:
    """(landmark-crop samples, detector-crop samples) for the faces the detector finds.

    The detector samples carry the landmark-equivalent box of the deployed crop,
    so ``FaceCropDataset(..., train=False)`` crops exactly what the runtime crops.
    """
    import dataclasses

    from training.datasets import ImageLoadError, load_image

    kept, detected = [], []
    for sample in samples:
        if sample.box is None:
            continue
        try:
            image = load_image(sample)
        except ImageLoadError:
            continue
        det = detect_at(detector, image, sample.box)
        if det is None:
            continue
        square = deployed_square(det.box, detector.crop_margin, detector.crop_shift_y)
        kept.append(sample)
        detected.append(dataclasses.replace(sample, box=landmark_equivalent_box(square)))
    return kept, detected


def compare(model_path: str, samples, detector, batch_size: int = 64) -> dict:
    """MAE of one model on the same faces with landmark crops and with detector crops."""
    from lechpe_model.checkpoint import load_checkpoint
    from training.clustering import mae, run_inference
    from training.torch_data import FaceCropDataset

    model, meta = load_checkpoint(model_path, device="cpu")
    kept, detected = detector_crop_samples(samples, detector)
    result: dict = {"detector": detector.name, "faces": len(samples), "detected": len(kept)}
    if not kept:
        return result
    preds = {}
    for name, subset in (("landmark", kept), ("detector", detected)):
        ds = FaceCropDataset(subset, int(meta.input_size), train=False, test_margin=TEST_MARGIN)
        preds[name] = run_inference(model, ds, batch_size=batch_size)
    yaw = np.array([s.angles[0] for s in kept])
    rows = []
    for lo, hi in [(0.0, 99.0)] + list(zip(YAW_EDGES[:-1], YAW_EDGES[1:], strict=True)):
        sel = (np.abs(yaw) >= lo) & (np.abs(yaw) <= hi if hi == 99.0 else np.abs(yaw) < hi)
        if not sel.any():
            continue
        row = {"yaw_range": [lo, hi], "n": int(sel.sum())}
        for name, res in preds.items():
            row[f"{name}_mae"] = float(np.mean(mae(res["angles"], res["target"], sel)))
        row["gap"] = row["detector_mae"] - row["landmark_mae"]
        rows.append(row)
    result["rows"] = rows
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.detector_boxes", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="detector box statistics relative to the landmark box")
    c = sub.add_parser("compare", help="MAE with landmark crops vs detector crops")
    for q in (m, c):
        q.add_argument("--detector", required=True, help="lechpe_model.detection name")
        q.add_argument("--data", required=True, help="faces with landmark boxes (300W-LP layout)")
        q.add_argument("--max-samples", type=int, default=None)
        q.add_argument("--score-threshold", type=float, default=0.5)
    m.add_argument("--out", required=True, help="statistics JSON")
    c.add_argument("--model", required=True)
    c.add_argument("--out", required=True, help="folder for crop_gap.json / crop_gap.md")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from lechpe_model.detection import create_detector
    from training.datasets import load_dataset

    detector = create_detector(args.detector, score_threshold=args.score_threshold)
    samples = load_dataset(args.data).samples[: args.max_samples]
    if args.command == "measure":
        stats = measure(samples, detector, progress=True)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(stats, handle, indent=2)
        for b in stats["bins"]:
            print(json.dumps(b))
        return 0
    result = compare(args.model, samples, detector)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "crop_gap.json"), "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
    lines = [
        f"| {detector.name}: \\|yaw\\| | faces | landmark crops MAE | detector crops MAE | gap |",
        "|---|---|---|---|---|",
    ]
    for row in result.get("rows", []):
        lo, hi = row["yaw_range"]
        lines.append(
            f"| {lo:g}-{hi:g} | {row['n']} | {row['landmark_mae']:.3f} | "
            f"{row['detector_mae']:.3f} | {row['gap']:+.3f} |"
        )
    lines.append(f"\n{result['detected']} of {result['faces']} faces detected (IoU >= {MIN_IOU}).")
    with open(os.path.join(args.out, "crop_gap.md"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
