"""PoseEstimator: real detector + real ONNX Runtime backend on real photos and bad frames."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

pytest.importorskip("torch")
skimage_data = pytest.importorskip("skimage.data")

from lechpe_model import preprocessing as pp  # noqa: E402
from lechpe_model.backends import create_backend  # noqa: E402
from lechpe_model.cli.bench import random_checkpoint  # noqa: E402
from lechpe_model.conventions import image_tilt, rotate_in_image_plane  # noqa: E402
from lechpe_model.detection import create_detector  # noqa: E402
from lechpe_model.pipeline import (  # noqa: E402
    DEFAULT_DEROTATE_ABOVE_DEG,
    PoseEstimator,
    confidence_from_assignment,
)

FACE_BOX = np.array([178, 63, 267, 175], dtype=np.float32)  # YuNet box of the astronaut


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("pipe") / "m.safetensors", "resnet18")


@pytest.fixture(scope="module")
def backend(checkpoint):
    return create_backend("onnxruntime", checkpoint, cache_dir=checkpoint.parent)


@pytest.fixture(scope="module")
def detector():
    # 0.4: the default BlazeFace full-range scores the two smaller faces of the
    # 820 px group canvas below 0.5 (test_detection.py::GROUP_THRESHOLD)
    return create_detector("auto", score_threshold=0.4)


@pytest.fixture(scope="module")
def estimator(detector, backend):
    return PoseEstimator(detector, backend, max_faces=10)


@pytest.fixture(scope="module")
def astronaut():
    return cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR)


def face_tile(astronaut: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(astronaut[20:230, 120:330], (size, size), interpolation=cv2.INTER_AREA)


class CountingBackend:
    """Passes every call to the real backend and records the batch sizes."""

    def __init__(self, real):
        self.real, self.calls = real, []
        self.name, self.metadata = real.name, real.metadata

    def infer(self, batch):
        self.calls.append(len(batch))
        return self.real.infer(batch)


def test_astronaut_pose_matches_direct_composition(estimator, detector, backend, astronaut):
    result = estimator.estimate(astronaut)
    assert result.error is None and result.detected == 1 and len(result.faces) == 1
    face = result.faces[0]
    assert np.abs(face.box - FACE_BOX).max() < 15
    # independent composition of the documented steps
    (det,) = detector.detect(astronaut)
    crop_box = pp.expand_box(det.box, detector.crop_margin, shift_y=detector.crop_shift_y)
    expected = backend.infer(pp.preprocess_crops([pp.crop_face(astronaut, crop_box)]))
    tilt = float(image_tilt(expected.angles[0]))
    # tilted in the image past the threshold: the upright crop, turned back
    tilted = abs(tilt) > estimator.derotate_above_deg
    if tilted:
        grown = pp.expand_box(crop_box, 0.5 / detector.turned_box_scale(tilt) - 0.5)
        upright = backend.infer(pp.preprocess_crops([pp.rotated_crop(astronaut, grown, -tilt)]))
        expected.angles = rotate_in_image_plane(upright.angles, tilt).astype(np.float32)
        expected.uncertainty, expected.assignment = upright.uncertainty, upright.assignment
    assert face.turned_deg == pytest.approx(-tilt if tilted else 0.0)
    np.testing.assert_allclose(face.angles, expected.angles[0], atol=1e-4)
    np.testing.assert_allclose(face.uncertainty, expected.uncertainty[0], atol=1e-4)
    np.testing.assert_allclose(face.assignment, expected.assignment[0], atol=1e-6)
    assert face.cluster == int(np.argmax(expected.assignment[0]))
    q = expected.assignment[0].astype(np.float64)
    entropy = -(q * np.log(q)).sum()
    assert face.confidence == pytest.approx(1 - entropy / math.log(len(q)), abs=1e-5)
    assert face.landmarks is None or face.landmarks.shape in ((5, 2), (6, 2))
    assert face.track_id == 0 and not face.tracked
    assert set(result.timings_ms) == {"detect", "preprocess", "network", "postprocess"}
    assert all(v >= 0 for v in result.timings_ms.values())
    out = face.to_dict()
    assert set(out) >= {"box", "yaw", "pitch", "roll", "uncertainty", "cluster", "confidence"}
    assert out["yaw"] == pytest.approx(float(face.angles[0]), abs=1e-3)


def turned_photo(image: np.ndarray, centre, theta: float) -> np.ndarray:
    """``image`` turned clockwise by ``theta`` about ``centre`` (reflected borders)."""
    matrix = cv2.getRotationMatrix2D(centre, -theta, 1.0)
    size = (image.shape[1], image.shape[0])
    return cv2.warpAffine(image, matrix, size, borderMode=cv2.BORDER_REFLECT_101)


def test_tilted_faces_are_estimated_upright_and_turned_back(detector, astronaut):
    """The embedded model on the astronaut turned by +-30/45 deg: the upright re-crop
    follows the turn (exactly transformed original) better than the plain crop on
    average, and equals the
    independent composition: rotated_crop by -tilt, network, rotate_in_image_plane."""
    from lechpe_model.default_model import default_model_path

    backend = create_backend("onnxruntime", default_model_path())  # the embedded model
    plain = PoseEstimator(detector, backend, derotate_above_deg=-1)
    counting = CountingBackend(backend)
    upright = PoseEstimator(detector, counting)
    original = plain.estimate(astronaut).faces[0]
    assert abs(original.roll) < upright.derotate_above_deg  # upright photo: one call
    assert upright.estimate(astronaut).faces[0].turned_deg == 0.0 and counting.calls == [1]
    centre = tuple(float(v) for v in 0.5 * (original.box[:2] + original.box[2:]))
    errors = {}
    for theta in (-45.0, -30.0, 30.0, 45.0):
        photo = turned_photo(astronaut, centre, theta)
        truth = rotate_in_image_plane(original.angles, theta)
        counting.calls.clear()
        (face,) = upright.estimate(photo).faces
        (first,) = plain.estimate(photo).faces
        tilt = float(image_tilt(first.angles))
        assert counting.calls == [1, 1] and face.turned_deg == pytest.approx(-tilt)
        # the upright crop is the first crop grown back by the detector's turned-box shrink
        grow = 1.0 / detector.turned_box_scale(tilt)
        side, first_side = (
            face.crop_box[2] - face.crop_box[0],
            first.crop_box[2] - first.crop_box[0],
        )
        assert side == pytest.approx(first_side * grow, rel=1e-4) and grow > 1.0
        np.testing.assert_allclose(
            face.crop_box[:2] + face.crop_box[2:],
            first.crop_box[:2] + first.crop_box[2:],
            atol=1e-3,
        )
        meta = backend.metadata
        crop = pp.rotated_crop(photo, face.crop_box, -tilt)
        again = backend.infer(
            pp.preprocess_crops([crop], meta.input_size, tuple(meta.mean), tuple(meta.std))
        )
        np.testing.assert_allclose(
            face.angles, rotate_in_image_plane(again.angles[0], tilt), atol=1e-3
        )
        errors[theta] = (np.abs(face.angles - truth).mean(), np.abs(first.angles - truth).mean())
    turned_back, plain_error = np.mean(list(errors.values()), axis=0)
    assert turned_back < plain_error, errors


class FixedAnglesBackend:
    """The real backend's outputs with the angles replaced by fixed ones."""

    def __init__(self, real, angles):
        self.real, self.angles, self.calls = real, np.asarray(angles, np.float32), []
        self.name, self.metadata = real.name, real.metadata

    def infer(self, batch):
        self.calls.append(len(batch))
        out = self.real.infer(batch)
        out.angles = np.tile(self.angles, (len(batch), 1))
        return out


@pytest.mark.parametrize(
    ("angles", "turned"),
    [
        ((0.0, 0.0, 20.0), -20.0),  # frontal: the tilt is the roll
        ((80.0, 0.0, 20.0), 0.0),  # near profile: roll 20 leans it by 3.6 deg only
        ((45.0, -10.0, -30.0), None),  # image_tilt says how far
    ],
)
def test_the_re_crop_turns_by_the_tilt_in_the_image_not_the_roll(
    detector, backend, astronaut, angles, turned
):
    fixed = FixedAnglesBackend(backend, angles)
    (face,) = PoseEstimator(detector, fixed).estimate(astronaut).faces
    tilt = float(image_tilt(np.array(angles)))
    want = -tilt if abs(tilt) > DEFAULT_DEROTATE_ABOVE_DEG else 0.0
    assert turned is None or want == pytest.approx(turned, abs=0.05)
    assert face.turned_deg == pytest.approx(want, abs=1e-4)
    assert fixed.calls == ([1, 1] if want else [1])


def test_derotate_above_deg_is_checked_and_one_default(detector, backend):
    from lechpe_model.cli.infer import build_parser
    from lechpe_model.pipeline import DEFAULT_DEROTATE_ABOVE_DEG
    from lechpe_ros.parameters import PARAMETERS, ParameterError, validate_value

    with pytest.raises(ValueError, match="derotate_above_deg"):
        PoseEstimator(detector, backend, derotate_above_deg=float("nan"))
    # the node, lechpe-infer and the library share the default
    node_default = next(p.default for p in PARAMETERS if p.name == "derotate_above_deg")
    assert node_default == DEFAULT_DEROTATE_ABOVE_DEG
    assert build_parser().parse_args(["x.jpg"]).derotate_above_deg == DEFAULT_DEROTATE_ABOVE_DEG
    assert PoseEstimator(detector, backend).derotate_above_deg == DEFAULT_DEROTATE_ABOVE_DEG
    with pytest.raises(ParameterError, match="derotate_above_deg"):
        validate_value("derotate_above_deg", 500.0)


def test_confidence_bounds():
    assert confidence_from_assignment(np.full((1, 4), 0.25))[0] == pytest.approx(0.0, abs=1e-12)
    assert confidence_from_assignment(np.array([[1.0, 0, 0, 0]]))[0] == pytest.approx(1.0)
    assert confidence_from_assignment(np.ones((2, 1))).tolist() == [1.0, 1.0]


def test_all_faces_in_one_batch_and_max_faces_keeps_largest(detector, backend, astronaut):
    canvas = np.full((300, 820, 3), 120, dtype=np.uint8)
    sizes, x = [120, 230, 150, 190], 10
    for size in sizes:
        canvas[20 : 20 + size, x : x + size] = face_tile(astronaut, size)
        x += size + 20
    counting = CountingBackend(backend)
    # derotate_above_deg=-1: one call (tilted faces' second call: test_tilted_faces_...)
    result = PoseEstimator(detector, counting, max_faces=10, derotate_above_deg=-1).estimate(canvas)
    assert len(result.faces) == 4 and counting.calls == [4]
    counting.calls.clear()
    two = PoseEstimator(detector, counting, max_faces=2, derotate_above_deg=-1).estimate(canvas)
    assert result.detected == 4 and len(two.faces) == 2 and counting.calls == [2]
    # faces come in track-id order; max_faces keeps the two largest boxes
    assert [f.track_id for f in result.faces] == sorted(f.track_id for f in result.faces)
    assert [f.track_id for f in two.faces] == sorted(f.track_id for f in two.faces)
    largest = sorted(result.faces, key=lambda f: f.box[2] - f.box[0], reverse=True)[:2]
    largest.sort(key=lambda f: f.box[0])
    by_x = sorted(two.faces, key=lambda f: f.box[0])
    np.testing.assert_allclose([f.box for f in by_x], [f.box for f in largest])
    np.testing.assert_allclose(by_x[0].angles, largest[0].angles, atol=1e-3)


def test_encoded_jpeg_and_garbage(estimator, astronaut):
    ok, jpeg = cv2.imencode(".jpg", astronaut, [cv2.IMWRITE_JPEG_QUALITY, 95])
    result = estimator.estimate_encoded(jpeg.tobytes())
    assert result.error is None and len(result.faces) == 1 and "decode" in result.timings_ms
    bad = estimator.estimate_encoded(b"not an image")
    assert bad.faces == [] and "cannot decode" in bad.error
    assert "cannot decode" in estimator.estimate_encoded(b"").error


# ----------------------------------------------------------------- bad input


def test_empty_frames(estimator):
    for frame in (np.zeros((0, 0, 3), np.uint8), np.zeros((0, 0), np.uint8), np.zeros(0)):
        result = estimator.estimate(frame)
        assert result.faces == [] and "empty" in result.error


def test_one_pixel_frame(estimator):
    result = estimator.estimate(np.zeros((1, 1, 3), np.uint8))
    assert result.faces == [] and "too small" in result.error


@pytest.mark.parametrize("shape", ["hw", "hw1"])
def test_grayscale_frames(estimator, astronaut, shape):
    gray = cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY)
    result = estimator.estimate(gray if shape == "hw" else gray[:, :, None])
    assert result.error is None and len(result.faces) == 1
    assert np.isfinite(result.faces[0].angles).all()


def test_four_channel_frame_equals_three_channel(estimator, astronaut):
    bgra = cv2.cvtColor(astronaut, cv2.COLOR_BGR2BGRA)
    bgra[..., 3] = 7  # alpha is ignored
    a, b = estimator.estimate(bgra), estimator.estimate(astronaut)
    assert a.error is None and len(a.faces) == 1
    np.testing.assert_allclose(a.faces[0].angles, b.faces[0].angles, atol=1e-5)


def test_sixteen_bit_frame_equals_eight_bit(estimator, astronaut):
    wide = astronaut.astype(np.uint16) * 257  # 255 -> 65535
    a, b = estimator.estimate(wide), estimator.estimate(astronaut)
    assert a.error is None and len(a.faces) == 1
    np.testing.assert_allclose(a.faces[0].angles, b.faces[0].angles, atol=1e-5)


def test_oversized_frame_is_refused(detector, backend, astronaut):
    small_limit = PoseEstimator(detector, backend, max_side=256)
    result = small_limit.estimate(astronaut)  # 512 px > 256
    assert result.faces == [] and "exceeds the limit of 256 px" in result.error
    assert PoseEstimator(detector, backend).max_side == 8192


def test_no_face_in_noise(estimator):
    noise = np.random.default_rng(3).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    result = estimator.estimate(noise)
    assert result.error is None and result.faces == [] and result.detected == 0
    assert result.timings_ms["network"] >= 0


def test_fifty_faces(backend, astronaut):
    # 30 px faces at full resolution: YuNet (BlazeFace sees the frame at 192 px)
    pytest.importorskip("yuface")
    detector = create_detector("yuface", max_input_side=640)
    tile = face_tile(astronaut, 64)
    canvas = np.full((5 * 64, 10 * 64, 3), 128, np.uint8)
    for i in range(50):
        row, col = divmod(i, 10)
        canvas[row * 64 : (row + 1) * 64, col * 64 : (col + 1) * 64] = tile
    counting = CountingBackend(backend)
    result = PoseEstimator(detector, counting, max_faces=50, derotate_above_deg=-1).estimate(canvas)
    assert result.error is None and len(result.faces) == 50 and counting.calls == [50]
    assert all(
        np.isfinite(f.angles).all() and np.isfinite(f.uncertainty).all() for f in result.faces
    )
    # identical tiles -> identical poses (crop geometry is translation invariant)
    angles = np.stack([f.angles for f in result.faces])
    assert np.ptp(angles, axis=0).max() < 1.0
    default = PoseEstimator(detector, backend).estimate(canvas)  # max_faces=10
    assert default.detected == 50 and len(default.faces) == 10


def test_float_frames(estimator, astronaut):
    scaled = astronaut.astype(np.float32) / 255.0
    ok = estimator.estimate(scaled)
    assert ok.error is None and len(ok.faces) == 1
    nan = scaled.copy()
    nan[10, 10, 0] = np.nan
    result = estimator.estimate(nan)
    assert result.faces == [] and "NaN or infinite" in result.error
    inf = scaled.copy()
    inf[0, 0, 1] = np.inf
    assert "NaN or infinite" in estimator.estimate(inf).error
    assert "must lie in [0, 1]" in estimator.estimate(astronaut.astype(np.float64)).error


@pytest.mark.parametrize(
    "frame, words",
    [
        (np.zeros((32, 32, 5), np.uint8), "channels"),
        (np.zeros((32, 32, 3), np.int32), "unsupported pixel type"),
        (None, "NumPy image"),
        ("frame.jpg", "NumPy image"),
        (np.zeros((2, 32, 32, 3), np.uint8), "malformed"),
    ],
)
def test_other_bad_frames(estimator, frame, words):
    result = estimator.estimate(frame)
    assert result.faces == [] and words in result.error


def test_non_finite_network_outputs_are_dropped(tmp_path, detector, astronaut):
    """A real model with a NaN weight in the yaw head: faces are dropped, not published."""
    import torch

    from lechpe_model.checkpoint import load_checkpoint, save_checkpoint

    model, _ = load_checkpoint(random_checkpoint(tmp_path / "ok.safetensors", "resnet18"))
    with torch.no_grad():
        model.heads["yaw"].weight[0, 0] = float("nan")
    save_checkpoint(tmp_path / "nan.safetensors", model)
    broken = create_backend("torch", tmp_path / "nan.safetensors", device="cpu")
    result = PoseEstimator(detector, broken).estimate(astronaut)
    assert result.faces == [] and result.dropped == 1 and result.detected == 1
    assert "NaN or infinite" in result.error


class CountingDetector:
    """Passes every call to the real detector and counts them."""

    def __init__(self, real):
        self.real, self.calls = real, 0
        self.name, self.crop_margin, self.crop_shift_y = (
            real.name,
            real.crop_margin,
            real.crop_shift_y,
        )

    def detect(self, image):
        self.calls += 1
        return self.real.detect(image)

    def turned_box_scale(self, roll_deg):
        return self.real.turned_box_scale(roll_deg)


def test_detect_every_reuses_boxes_per_stream(detector, backend, astronaut):
    counting = CountingDetector(detector)
    est = PoseEstimator(counting, backend, detect_every=3)
    every = PoseEstimator(detector, backend)
    moved = np.roll(astronaut, 12, axis=1)  # the face moves; reused boxes lag behind
    results = [est.estimate(frame, stream="front") for frame in (astronaut, moved, moved)]
    assert counting.calls == 1
    assert [r.reused_detections for r in results] == [False, True, True]
    np.testing.assert_allclose(results[1].faces[0].box, results[0].faces[0].box)
    # same boxes -> same crops -> the same angles as a fresh estimate of that frame
    np.testing.assert_allclose(
        results[0].faces[0].angles, every.estimate(astronaut).faces[0].angles
    )
    # another stream never sees these boxes; the 4th frame of "front" detects again
    assert not est.estimate(moved, stream="back").reused_detections
    assert counting.calls == 2
    fourth = est.estimate(moved, stream="front")
    assert not fourth.reused_detections and counting.calls == 3
    np.testing.assert_allclose(fourth.faces[0].box, every.estimate(moved).faces[0].box)


def test_detect_every_detects_again_after_an_empty_frame_or_a_new_size(
    detector, backend, astronaut
):
    counting = CountingDetector(detector)
    est = PoseEstimator(counting, backend, detect_every=5)
    assert est.estimate(np.full((200, 200, 3), 127, np.uint8)).faces == []
    assert not est.estimate(astronaut).reused_detections  # nothing to reuse: detect
    assert est.estimate(astronaut).reused_detections
    assert not est.estimate(cv2.resize(astronaut, (400, 400))).reused_detections  # new size
    assert counting.calls == 3
    with pytest.raises(ValueError, match="detect_every"):
        PoseEstimator(detector, backend, detect_every=0)


# ------------------------------------------------------------------ tracking


def occluded_frame(astronaut: np.ndarray) -> np.ndarray:
    """The astronaut with a grey hand-sized block over her face (the detector misses it)."""
    frame = astronaut.copy()
    frame[40:200, 150:300] = 110
    return frame


def test_a_face_hidden_for_a_few_frames_keeps_its_track(detector, backend, astronaut):
    hidden = occluded_frame(astronaut)
    assert detector.detect(hidden) == []  # the premise: the detector alone loses the face
    est = PoseEstimator(detector, backend, track_max_misses=2)
    results = [
        est.estimate(f, stream="cam") for f in (astronaut, hidden, hidden, hidden, astronaut)
    ]
    seen = [[(f.track_id, f.tracked) for f in r.faces] for r in results]
    # two misses are bridged with the predicted (unmoved) box, the third ends the track;
    # when the face is back it is a new track
    assert seen == [[(0, False)], [(0, True)], [(0, True)], [], [(1, False)]]
    assert results[1].tracked == 1 and results[1].detected == 0
    np.testing.assert_allclose(results[1].faces[0].box, results[0].faces[0].box)
    # the pose of a predicted box is the network's answer on the occluded crop
    direct = PoseEstimator(detector, backend, track_max_misses=0)
    assert direct.estimate(hidden).faces == []


def test_tracking_off_and_low_confidence_end_the_track(detector, backend, astronaut):
    hidden = occluded_frame(astronaut)
    off = PoseEstimator(detector, backend, track_max_misses=0)
    assert [len(off.estimate(f).faces) for f in (astronaut, hidden)] == [1, 0]
    # a confidence no crop reaches: the predicted face is dropped and its track ended
    strict = PoseEstimator(detector, backend, track_max_misses=5, track_min_confidence=1.0)
    assert len(strict.estimate(astronaut).faces) == 1  # detected faces are never dropped
    assert strict.estimate(hidden).faces == []
    assert strict._streams[None][1].tracks == []
    with pytest.raises(ValueError, match="track_max_misses must be >= 0, got -1"):
        PoseEstimator(detector, backend, track_max_misses=-1)
    with pytest.raises(ValueError, match="track_min_confidence must be in"):
        PoseEstimator(detector, backend, track_min_confidence=2)


def test_detect_every_uses_the_predicted_boxes(detector, backend, astronaut):
    """Between detections the boxes move with the face's velocity, not stay stale."""
    counting = CountingDetector(detector)
    est = PoseEstimator(counting, backend, detect_every=2)
    frames = [np.roll(astronaut, 10 * k, axis=1) for k in range(4)]
    results = [est.estimate(f) for f in frames]
    assert counting.calls == 2 and [r.reused_detections for r in results] == [
        False,
        True,
        False,
        True,
    ]
    x0 = [r.faces[0].box[0] for r in results]
    assert results[1].faces[0].tracked and not results[2].faces[0].tracked
    assert x0[2] - x0[0] == pytest.approx(20, abs=3)  # detected: moved 20 px in 2 frames
    # frame 3 is predicted from the velocity learnt between frames 0 and 2 (not stale)
    assert x0[3] > x0[2] + 2


def test_default_estimator_predicts_no_ghost_faces_between_unrelated_photos(
    detector, backend, astronaut
):
    est = PoseEstimator(detector, backend)  # library default: track_max_misses = 0
    assert len(est.estimate(astronaut).faces) == 1
    assert est.estimate(np.full_like(astronaut, 127)).faces == []
