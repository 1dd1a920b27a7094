"""lechpe-eval consistency: exact transforms, known answers, the real image path."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from training import consistency as cons


def independent_rotation(angles, theta):
    """Clockwise image rotation of a label pose, composed with scipy only.

    Label convention: R = (Rz(roll) Ry(yaw) Rx(pitch))^T in a frame with z toward the
    viewer; a clockwise turn as seen is a rotation by -theta about +z, applied after R.
    """
    yaw, pitch, roll = angles
    r = Rotation.from_euler("ZYX", [roll, yaw, pitch], degrees=True).inv()
    turned = Rotation.from_euler("z", -theta, degrees=True) * r
    roll2, yaw2, pitch2 = turned.inv().as_euler("ZYX", degrees=True)
    return np.array([yaw2, pitch2, roll2])


def test_exact_predictor_agrees_and_naive_roll_does_not():
    pose = np.array([40.0, 10.0, 5.0])  # a turned head
    for tf in cons.default_transforms([15, 30, 45]):
        exact = tf.pose(pose)
        assert np.all(cons.disagreement(pose, exact, tf) < 1e-9)
    tf = cons.Transform("rotate +30", 30.0)
    naive = pose + [0.0, 0.0, 30.0]
    expected = independent_rotation(pose, 30.0)
    got = cons.disagreement(pose, naive, tf)
    np.testing.assert_allclose(got, np.abs(naive - expected), atol=1e-9)
    assert got.max() > 3.0  # roll + theta is wrong for a turned head
    # ... and right for a frontal one
    assert np.all(cons.disagreement([0.0, 0, 5], [0.0, 0, 35], tf) < 1e-9)
    # mirroring negates yaw and roll
    np.testing.assert_allclose(cons.Transform("m", 0, 1).pose(pose), [-40, 10, -5])
    assert cons.angle_difference(179.0, -179.0) == pytest.approx(2.0)


def bar_photo(roll: float, size: int = 200, centre=(90.0, 110.0)):
    """A textured image with an elongated dark ellipse turned clockwise by ``roll``."""
    rng = np.random.default_rng(0)
    img = np.clip(180 + rng.normal(0, 10, (size, size, 3)), 0, 255).astype(np.uint8)
    # cv2.ellipse's angle turns the axes clockwise as seen (image y down).
    cv2.ellipse(img, (int(centre[0]), int(centre[1])), (12, 40), roll, 0, 360, (20, 20, 20), -1)
    box = np.array([centre[0] - 45, centre[1] - 45, centre[0] + 45, centre[1] + 45], np.float32)
    return img, box


def moment_predictor(offsets: list):
    """'Head pose' of the bar from image moments inside the fallback box: (0, 0, roll)."""

    def predict(bgr, box):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        dark = (bgr[max(y1, 0) : y2, max(x1, 0) : x2, 0] < 90).astype(np.float64)
        ys, xs = np.nonzero(dark)
        cx, cy = xs.mean(), ys.mean()
        offsets.append(
            np.hypot(cx + max(x1, 0) - 0.5 * (x1 + x2), cy + max(y1, 0) - 0.5 * (y1 + y2))
        )
        mu20, mu02 = np.mean((xs - cx) ** 2), np.mean((ys - cy) ** 2)
        mu11 = np.mean((xs - cx) * (ys - cy))
        major = np.degrees(0.5 * np.arctan2(2 * mu11, mu20 - mu02))  # from +x, y down
        roll = (major - 90.0 + 90.0) % 180.0 - 90.0  # vertical axis = roll 0
        return np.array([0.0, 0.0, roll]), np.ones(3), "fallback"

    return predict


def test_image_path_rotates_clockwise_and_moves_the_box_exactly():
    img, box = bar_photo(roll=10.0)
    offsets: list = []
    report = cons.run_consistency(
        moment_predictor(offsets), {"bar": (img, box)}, cons.default_transforms([15, 30, 45])
    )
    original = report["rows"][0]
    assert original["prediction"][2] == pytest.approx(10.0, abs=1.0)
    for row in report["rows"][1:]:
        assert row["disagreement_mean"] < 0.7, row
    plus30 = next(r for r in report["rows"] if r["transform"] == "rotate +30")
    assert plus30["prediction"][2] == pytest.approx(40.0, abs=1.5)  # clockwise = +roll
    mirror = next(r for r in report["rows"] if r["transform"] == "mirror")
    assert mirror["prediction"][2] == pytest.approx(-10.0, abs=1.0)
    # the exactly moved box is centred on the bar in every transformed image
    assert max(offsets) < 1.5
    s = report["summary"]
    assert s["rotations"]["n"] == 6 and s["mirror"]["n"] == 1
    assert s["harness_mirror_of_mirror"]["mean"] == pytest.approx(0.0, abs=1e-9)
    assert s["fallback_boxes"] == 9
    means = [r["disagreement_mean"] for r in report["rows"][1:] if r["mirrors"] != 2]
    assert s["all"]["mean"] == pytest.approx(np.mean(means))
    # one photo: its own row is the overall mean, and the markdown table names it
    assert s["per_photo"]["bar"]["mean"] == pytest.approx(s["all"]["mean"])
    assert s["per_photo"]["bar"]["n"] == 7
    assert "| photo `bar`, all transforms |" in cons.consistency_markdown(report, "m")


def test_uncertainty_check_ranks_disagreements_by_the_combined_sigma():
    originals = {"p": {"sigma": [3.0, 4.0, 1.0]}, "q": {"sigma": [0.0, 1.0, 2.0]}}
    rows = [
        {"photo": "p", "sigma": [4.0, 3.0, 1.0], "disagreement": {"yaw": 6, "pitch": 1, "roll": 9}},
        {"photo": "q", "sigma": [1.0, 1.0, 2.0], "disagreement": {"yaw": 1, "pitch": 2, "roll": 2}},
        {"photo": "q", "sigma": [2.0, 0.0, 0.0], "disagreement": {"yaw": 3, "pitch": 3, "roll": 1}},
    ]
    out = cons.uncertainty_check(rows, originals)
    # yaw: combined sigma 5, 1, 2 (hand-computed) against disagreements 6, 1, 3
    assert out["spearman"]["yaw"] == pytest.approx(1.0)
    assert out["within_combined_sigma"]["yaw"] == pytest.approx(1 / 3)  # only 1 <= 1
    # pitch: 5, sqrt 2, 1 against 1, 2, 3: the order reversed
    assert out["spearman"]["pitch"] == pytest.approx(-1.0)
    assert out["n"] == 3


def test_consistency_cli_on_the_shipped_photos(tmp_path):
    """The real runtime path (detector, backend) on a tiny random model: runs, reports."""
    pytest.importorskip("skimage")
    import json

    from lechpe_model.cli.bench import random_checkpoint
    from training import evaluate

    ckpt = random_checkpoint(tmp_path / "tiny.safetensors", "mobilenet_v3_small", num_clusters=2)
    out = tmp_path / "cons"
    assert (
        evaluate.main(
            [
                "consistency",
                "--model",
                str(ckpt),
                "--out",
                str(out),
                "--angles",
                "30",
                "--backend",
                "torch",
            ]
        )
        == 0
    )
    report = json.load(open(out / "consistency.json"))
    photos = {r["photo"] for r in report["rows"]}
    assert photos == {"astronaut", "camera", "grace_hopper"} == set(cons.PHOTOS)
    # original, -30, +30, mirror, mirror-of-mirror per photo
    assert len(report["rows"]) == 15
    assert report["summary"]["harness_mirror_of_mirror"]["mean"] == pytest.approx(0.0, abs=1e-4)
    assert "| **all transforms** |" in open(out / "consistency.md").read()
