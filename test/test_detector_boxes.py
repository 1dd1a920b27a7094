"""Detector-matched training crops: statistics, drawing, and the crop-gap comparison."""

from __future__ import annotations

import json

import numpy as np
import pytest
from training_fixtures import write_300wlp

from lechpe_model.detection import FaceDetection, FaceDetector
from lechpe_model.preprocessing import TEST_MARGIN, expand_box
from training import detector_boxes as db
from training.datasets import load_dataset


class OffsetDetector(FaceDetector):
    """A detector whose boxes are the labelled landmark box moved and scaled by known
    amounts (a face drawn by training_fixtures has no real face for a real detector)."""

    name = "offset"
    crop_margin = 0.4
    crop_shift_y = 0.1

    def __init__(self, boxes, shift=(0.1, -0.05), scale=1.2):
        super().__init__(max_input_side=0)
        self.boxes, self.shift, self.scale = list(boxes), shift, scale

    def _detect(self, image):
        x1, y1, x2, y2 = self.boxes.pop(0)
        w, h = x2 - x1, y2 - y1
        cx, cy = (x1 + x2) / 2 + self.shift[0] * w, (y1 + y2) / 2 + self.shift[1] * h
        w, h = w * self.scale, h * self.scale
        box = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], np.float32)
        far = box + 500  # a second face elsewhere: must not be matched
        return [FaceDetection(far, 0.9), FaceDetection(box, 0.8)]


def test_landmark_equivalent_box_reproduces_the_deployed_square():
    det = np.array([40.0, 30.0, 100.0, 110.0])
    square = db.deployed_square(det, 0.4, 0.1)
    # by hand: side max(60, 80) * 1.8 = 144, centre (70, 70 + 0.1 * 80)
    np.testing.assert_allclose(square, [70 - 72, 78 - 72, 70 + 72, 78 + 72], atol=1e-4)
    eq = db.landmark_equivalent_box(square)
    np.testing.assert_allclose(expand_box(eq, TEST_MARGIN), square, atol=1e-4)
    dx, dy, log_scale = db.box_offsets([50, 40, 90, 100], square, yaw=-20.0)
    # landmark side 60, centre (70, 70): dx 0 (sign irrelevant), dy 8 / 60
    assert (dx, dy) == pytest.approx((0.0, 8 / 60))
    assert log_scale == pytest.approx(np.log(144 / (60 * 1.5)))


def test_measure_recovers_known_offsets_and_the_sampler_draws_them(tmp_path):
    angles = np.array([[y, 0.0, 0.0] for y in (-50, -40, 45, 50, 10, -12, 15, 5)], float)
    write_300wlp(str(tmp_path), len(angles), seed=0, size=64, angles=angles)
    samples = load_dataset(str(tmp_path)).samples
    detector = OffsetDetector([s.box for s in samples])
    stats = db.measure(samples, detector)
    assert [b["matched"] for b in stats["bins"]] == [4, 4, 0]
    assert stats["bins"][2]["miss_rate"] == 0.0 and stats["crop_margin"] == 0.4
    for sample in samples:  # independent expected value per face
        x1, y1, x2, y2 = sample.box
        w, h = x2 - x1, y2 - y1
        cx, cy = (x1 + x2) / 2 + 0.1 * w, (y1 + y2) / 2 - 0.05 * h
        det = [cx - 0.6 * w, cy - 0.6 * h, cx + 0.6 * w, cy + 0.6 * h]
        sq = expand_box(det, 0.4, shift_y=0.1)
        side = max(w, h)
        sign = np.sign(sample.angles[0])
        expected = (
            ((sq[0] + sq[2]) / 2 - (x1 + x2) / 2) / side * sign,
            ((sq[1] + sq[3]) / 2 - (y1 + y2) / 2) / side,
            np.log((sq[2] - sq[0]) / (side * 1.5)),
        )
        got = db.box_offsets(sample.box, sq, sample.angles[0])
        np.testing.assert_allclose(got, expected, atol=1e-5)
    # the far-away detection is never matched: a plain mean over the bin's faces
    near = [s for s in samples if abs(s.angles[0]) < 30]
    sq_of = {
        s.key: expand_box(
            np.array(OffsetDetector([s.box])._detect(None)[1].box, float), 0.4, shift_y=0.1
        )
        for s in near
    }
    mean_dy = np.mean([db.box_offsets(s.box, sq_of[s.key], s.angles[0])[1] for s in near])
    assert stats["bins"][0]["mean"]["dy"] == pytest.approx(mean_dy, abs=1e-5)
    path = tmp_path / "stats.json"
    path.write_text(json.dumps(stats))
    sampler = db.DetectorBoxSampler.from_json(str(path))
    rng = np.random.default_rng(0)
    s = near[0]
    draws = np.array(
        [
            db.box_offsets(s.box, expand_box(sampler(s, rng), TEST_MARGIN), s.angles[0])
            for _ in range(400)
        ]
    )
    mean = [stats["bins"][0]["mean"][f] for f in db.FIELDS]
    std = [stats["bins"][0]["std"][f] for f in db.FIELDS]
    np.testing.assert_allclose(draws.mean(0), mean, atol=0.15 * max(std) + 1e-4)
    # a range without statistics (|yaw| > 60 here) borrows the nearest one's
    far = type(s)(key="x", angles=np.array([80.0, 0, 0]), image_path="", box=s.box)
    assert np.all(np.isfinite(sampler(far, rng)))
    # data.detector_box_prob: that share of crops drawn, the rest keep the landmark box
    mixed = db.DetectorBoxSampler(stats, prob=0.3)
    rng = np.random.default_rng(1)
    kept = [np.array_equal(mixed(s, rng), np.asarray(s.box, np.float32)) for _ in range(1000)]
    assert 0.65 < np.mean(kept) < 0.75  # binomial sd 0.015 around 0.7
    rng = np.random.default_rng(1)
    again = [np.array_equal(mixed(s, rng), np.asarray(s.box, np.float32)) for _ in range(1000)]
    assert kept == again  # seeded: the same draws
    never = db.DetectorBoxSampler(stats, prob=0.0)
    assert np.array_equal(never(s, rng), np.asarray(s.box, np.float32))
    with pytest.raises(ValueError, match="detector_box_prob must be in"):
        db.DetectorBoxSampler(stats, prob=1.5)
