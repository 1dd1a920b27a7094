"""training.tilt_eval: the turned photo, its exact label, and the paired comparison."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import scipy.io

from lechpe_model.conventions import euler_to_pose_para
from training import tilt_eval


def test_turn_face_moves_pixels_clockwise_and_bounds_the_turned_box():
    image = np.zeros((200, 200, 3), np.uint8)
    box = np.array([60.0, 80.0, 140.0, 120.0])  # centre (100, 100), 80 x 40
    image[100, 130] = 255  # 30 px right of the centre
    turned, turned_box = tilt_eval.turn_face(image, box, 90.0)
    # clockwise by 90 as seen (y down): right of the centre -> below it
    ys, xs = np.nonzero(turned[..., 0] > 100)
    assert (np.mean(xs), np.mean(ys)) == pytest.approx((100.0, 130.0), abs=1.0)
    # the 80 x 40 box turned by 90 deg is bounded by a 40 x 80 box, same centre
    np.testing.assert_allclose(turned_box, [80.0, 60.0, 120.0, 140.0], atol=1e-6)


def test_paired_errors_on_a_real_photo(tmp_path):
    """The astronaut as a one-face data set labelled with the runtime's own upright
    answer: upright with the re-crop off the error is exactly 0 (same detector, box and
    crop path); turned, the label is turned exactly, so the error measures only how far
    the network misses the turn, and the re-crop misses it by less."""
    skimage_data = pytest.importorskip("skimage.data")
    from lechpe_model.backends import create_backend
    from lechpe_model.default_model import default_model_path
    from lechpe_model.detection import create_detector
    from lechpe_model.pipeline import PoseEstimator
    from training.datasets import load_dataset

    photo = cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR)
    detector = create_detector("blazeface_full")
    backend = create_backend("onnxruntime", default_model_path())
    (face,) = PoseEstimator(detector, backend, derotate_above_deg=-1).estimate(photo).faces
    x1, y1, x2, y2 = (float(v) for v in face.box)
    # 68 "landmarks" whose tight box is the detector box (only the box is used)
    points = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]] * 17, float)
    cv2.imwrite(str(tmp_path / "astro.jpg"), photo, [cv2.IMWRITE_JPEG_QUALITY, 100])
    photo = cv2.imread(str(tmp_path / "astro.jpg"))  # the label is the answer on these pixels
    (face,) = PoseEstimator(detector, backend, derotate_above_deg=-1).estimate(photo).faces
    pose_para = euler_to_pose_para(*face.angles.astype(float), (0.0, 0.0, 0.0), 1.0)
    scipy.io.savemat(
        str(tmp_path / "astro.mat"), {"Pose_Para": pose_para.reshape(1, 7), "pt2d": points.T}
    )
    samples = load_dataset(str(tmp_path)).samples * 6  # six seeded turns of one face
    errors, found = tilt_eval.evaluate(
        samples, detector, backend, thresholds=[-1.0, 15.0], max_turn=40.0, seed=1
    )
    # BlazeFace is not rotation-invariant: it may miss a turned copy (counted, not scored)
    assert found["upright"] == 6 and found["turned"] >= 3, found
    assert len(errors["turned"][15.0]) == len(errors["turned"][-1.0]) == found["turned"]
    np.testing.assert_allclose(np.asarray(errors["upright"][-1.0]), 0.0, atol=0.05)
    assert np.mean(errors["turned"][15.0]) < np.mean(errors["turned"][-1.0])
    report = {"sets": {"astro": tilt_eval.summarise(errors, found, len(samples))}}
    # the box-shrink measurement on the same face: one row per angle, a shrink, not a growth
    scale = tilt_eval.measure_box_scale(samples[:1], detector, angles=(30.0,))
    assert scale["faces_found_upright"] == 1 and scale["scale"][0] == [0.0, 1.0]
    assert scale["turned_faces_found"]["30"] >= 1 and 0.6 < scale["scale"][1][1] < 1.0
    text = tilt_eval.markdown(json.loads(json.dumps(report)))
    assert f"| astro, turned | {found['turned']} / 6 | off |" in text
    assert "| astro, upright | 6 / 6 | 15 |" in text


def test_turned_box_scale_is_the_measured_table(repo_root):
    from lechpe_model.detection import create_detector
    from lechpe_model.detection.base import FaceDetector
    from lechpe_model.detection.blazeface import BLAZEFACE_TURNED_BOX_SCALE

    for name, path in (
        ("blazeface_full", "docs/results/blazeface_full_turned_box_scale_val.json"),
        (
            "blazeface_occluded",
            "docs/results/occluded_detector_pose_model/"
            "blazeface_occluded_turned_box_scale_val.json",
        ),
    ):
        measured = json.loads((repo_root / path).read_text())
        assert measured["detector"] == name
        np.testing.assert_allclose(BLAZEFACE_TURNED_BOX_SCALE[name], measured["scale"], atol=1e-4)
    # the fine-tuned detector's box grows on a turned face: the upright crop shrinks
    assert create_detector("blazeface_occluded").turned_box_scale(45.0) > 1.1
    full = create_detector("blazeface_full")
    # interpolated between rows by hand, flat beyond the last, symmetric in the sign
    assert full.turned_box_scale(0.0) == 1.0
    assert full.turned_box_scale(-22.5) == pytest.approx((0.9773 + 0.9048) / 2)
    assert full.turned_box_scale(70.0) == pytest.approx(0.8665)
    assert FaceDetector().turned_box_scale(40.0) == 1.0  # not measured: no correction
