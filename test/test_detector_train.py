"""BlazeFace as a torch module, its weights written back, and the fine-tuning targets."""

from __future__ import annotations

import json

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from skimage import data as skdata

from lechpe_model import preprocessing as pp
from lechpe_model.detection import BlazeFaceDetector, create_detector
from lechpe_model.detection.blazeface import (
    ASSETS,
    BLAZEFACE_CROP,
    BLAZEFACE_MODELS,
    decode_boxes,
    letterbox,
    ssd_anchor_centres,
)
from training import detector_train as dt
from training.blazeface_torch import OnnxBlazeFace, write_onnx_weights
from training.detector_bench import TrueFace


def _input(variant: str) -> np.ndarray:
    size = BLAZEFACE_MODELS[variant][1]
    square, _ = letterbox(cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR), size)
    rgb = cv2.cvtColor(square, cv2.COLOR_BGR2RGB).astype(np.float32)
    return (rgb.transpose(2, 0, 1)[None] / 127.5 - 1.0).astype(np.float32)


def _ort(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


@pytest.mark.parametrize("variant", ["blazeface", "blazeface_full"])
def test_torch_module_matches_onnx_runtime_on_a_photo(variant):
    path = ASSETS / BLAZEFACE_MODELS[variant][0]
    x = _input(variant)
    reg_ort, logit_ort = _ort(path, x)
    net = OnnxBlazeFace(path)
    with torch.no_grad():  # a batch of two: the graph was exported for batch 1
        reg, logit = net(torch.from_numpy(np.concatenate([x, x[:, :, ::-1].copy()])))
    assert reg.shape == (2, *reg_ort.shape[1:]) and logit.shape == (2, *logit_ort.shape[1:])
    assert np.abs(reg[0].numpy() - reg_ort[0]).max() < 1e-3
    assert np.abs(logit[0].numpy() - logit_ort[0]).max() < 1e-3
    assert logit_ort.max() > 1.0  # the photo's face is there: the comparison means something


def test_weights_written_back_run_on_onnx_runtime(tmp_path):
    source = ASSETS / BLAZEFACE_MODELS["blazeface_full"][0]
    net = OnnxBlazeFace(source)
    x = _input("blazeface_full")
    same = write_onnx_weights(net, source, tmp_path / "same.onnx")
    for a, b in zip(_ort(source, x), _ort(same, x), strict=True):
        assert np.array_equal(a, b)
    with torch.no_grad():  # change every weight: the written file must follow the module
        for p in net.parameters():
            p.mul_(1.01).add_(0.001)
        reg, logit = net(torch.from_numpy(x))
    changed = write_onnx_weights(net, source, tmp_path / "changed.onnx")
    reg_ort, logit_ort = _ort(changed, x)
    assert np.abs(logit_ort - _ort(source, x)[1]).max() > 0.01
    assert np.abs(reg.numpy() - reg_ort).max() < 1e-3
    assert np.abs(logit.numpy() - logit_ort).max() < 1e-3
    # the detector loads it like the shipped file
    detector = BlazeFaceDetector("blazeface_full", model_path=same)
    assert len(detector.detect(cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR))) == 1


def test_unsupported_operator_is_named(tmp_path):
    node = onnx.helper.make_node("Sigmoid", ["x"], ["y"])
    graph = onnx.helper.make_graph(
        [node],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "sigmoid.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path))
    with pytest.raises(ValueError, match="Sigmoid"):
        OnnxBlazeFace(path)


def _frontal_landmarks(cx: float, cy: float, width: float) -> np.ndarray:
    """68 points spread over a width x 1.1 width box (enough for boxes and keypoints)."""
    rng = np.random.default_rng(0)
    points = rng.uniform(-0.5, 0.5, (68, 2)) * [width, 1.1 * width] + [cx, cy]
    points[0], points[16] = [cx - width / 2, cy], [cx + width / 2, cy]
    return points.astype(np.float32)


def test_target_box_gives_the_training_crop_through_the_detector_calibration():
    landmarks = _frontal_landmarks(90.0, 70.0, 40.0)
    box = dt.target_box(landmarks)
    margin, shift = BLAZEFACE_CROP["blazeface_full"]
    deployed = pp.expand_box(box, margin, shift_y=shift)
    training = pp.expand_box(pp.box_from_landmarks(landmarks), pp.TEST_MARGIN)
    assert np.allclose(deployed, training, atol=1e-4)
    assert box[2] - box[0] == pytest.approx(box[3] - box[1])


def test_anchor_targets_decode_back_to_the_box_and_keypoints():
    anchors = ssd_anchor_centres(192, (4,), False)
    faces = [_frontal_landmarks(60.0, 80.0, 40.0), _frontal_landmarks(140.0, 100.0, 24.0)]
    targets = dt.anchor_targets(faces, anchors)
    label = targets["label"]
    positives = np.flatnonzero(label == 1)
    boxes, keypoints = decode_boxes(targets["reg"][positives], anchors[positives], 192)
    for landmarks in faces:
        box = dt.target_box(landmarks)
        centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
        mine = np.flatnonzero(np.abs(boxes - box).max(axis=1) < 1e-3)
        assert len(mine) >= 1  # at least the nearest anchor
        # positives lie near the centre; keypoints decode to the landmarks' keypoints
        assert np.abs(anchors[positives[mine]] * 192 - centre).max() <= max(
            dt.POSITIVE_RADIUS * (box[2] - box[0]) * 1.3, 2.1
        )
        assert np.allclose(keypoints[mine], dt.keypoints_from_landmarks(landmarks), atol=1e-3)
    # an ignore zone around each face, negatives elsewhere
    assert (label == -1).sum() > 0 and (label == 0).sum() > 2000
    far = np.abs(anchors * 192 - [10.0, 180.0]).max(axis=1) < 3
    assert (label[far] == 0).all()


def test_tiny_faces_are_ignored_not_negative():
    anchors = ssd_anchor_centres(192, (4,), False)
    targets = dt.anchor_targets([_frontal_landmarks(96.0, 96.0, 3.0)], anchors)
    assert (targets["label"] == 1).sum() == 0
    nearest = np.argmin(np.abs(anchors * 192 - 96.0).sum(axis=1))
    assert targets["label"][nearest] == -1


def test_mirrored_view_moves_landmarks_with_the_pixels():
    frame = dt.Frame(image=np.zeros((120, 160, 3), np.uint8))
    landmarks = _frontal_landmarks(50.0, 60.0, 30.0)
    landmarks[0] = [32.5, 60.5]  # the person's right jaw top, on a bright patch
    frame.image[58:63, 30:35] = 255
    face = TrueFace(np.zeros(4), 30.0, "none", 0.0, landmarks=landmarks)
    frame.faces.append(face)
    view = dt.augment_view(
        frame, np.random.default_rng(0), zoom_prob=0, mirror_prob=1, photometric=False
    )
    rgb, faces = view.rgb, view.faces
    plain = dt.augment_view(
        frame, np.random.default_rng(0), zoom_prob=0, mirror_prob=0, photometric=False
    ).rgb
    assert np.array_equal(rgb, plain[:, ::-1])  # 160 x 120 fills the 192 px width: no padding
    # the mirrored person's right jaw (index 0) is the old left one (16) and vice versa
    x, y = faces[0][16]
    assert x == pytest.approx(192 - 32.5 * 1.2) and y == pytest.approx(60.5 * 1.2)
    assert rgb[int(y), int(x)].min() > 200
    assert np.allclose(faces[0][0], [192 - landmarks[16][0] * 1.2, landmarks[16][1] * 1.2])


def test_turned_view_turns_the_landmarks_with_the_pixels():
    frame = dt.Frame(image=np.zeros((120, 160, 3), np.uint8))
    landmarks = _frontal_landmarks(80.0, 60.0, 40.0)
    landmarks[30] = [40.5, 30.5]  # the nose tip, on a bright patch far from the centre
    frame.image[28:34, 38:44] = 255
    frame.faces.append(TrueFace(np.zeros(4), 40.0, "none", 0.0, landmarks=landmarks))
    turned = set()
    for seed in range(6):
        view = dt.augment_view(
            frame, np.random.default_rng(seed), zoom_prob=0, mirror_prob=0,
            photometric=False, rotate_prob=1.0, rotate_max_deg=45,
        )  # fmt: skip
        rgb, faces = view.rgb, view.faces
        x, y = faces[0][30]
        assert rgb[int(round(y)), int(round(x))].min() > 200, seed
        # rotation about the picture's centre keeps distances to it
        centre = np.array([96.0, 72.0])
        assert np.hypot(*(faces[0][30] - centre)) == pytest.approx(
            np.hypot(*(landmarks[30] * 1.2 - centre)), rel=1e-4
        )
        turned.add(round(float(x)))
    assert len(turned) == 6  # each seed turns by another angle


def test_mirrored_letterbox_keeps_its_padding_on_the_right():
    frame = dt.Frame(image=np.full((200, 100, 3), 255, np.uint8))  # tall: padded on the right
    rgb = dt.augment_view(
        frame, np.random.default_rng(0), zoom_prob=0, mirror_prob=1, photometric=False
    ).rgb
    assert rgb[:, :96].min() == 255 and rgb[:, 97:].max() == 0


def test_training_frames_are_a_function_of_the_seed():
    a = dt.render_training_frames(3, seed=4, workers=1, progress=False)
    b = dt.render_training_frames(3, seed=4, workers=2, progress=False)
    for fa, fb in zip(a, b, strict=True):
        assert np.array_equal(fa.image, fb.image)
        assert len(fa.faces) == len(fb.faces)
    assert max(f.image.shape[1] for f in a) <= dt.STORED_SIDE
    for frame in a:  # an occluded frame keeps its clean image at the same size
        assert frame.clean is None or frame.clean.shape == frame.image.shape


@pytest.mark.slow
def test_cli_fine_tunes_and_writes_a_loadable_detector(tmp_path):
    out = tmp_path / "det"
    assert (
        dt.main(
            [
                "--out",
                str(out),
                "--frames",
                "6",
                "--steps",
                "2",
                "--batch-size",
                "4",
                "--device",
                "cpu",
                "--no-progress",
                "--save-every",
                "1",
                "--targets",
                "teacher",
                "--rotate-prob",
                "0.5",
            ]
        )
        == 0
    )
    record = json.loads((out / "train_record.json").read_text())
    assert record["steps"] == 2 and record["frames"] == 6 and record["log"][-1]["step"] == 2
    assert record["targets"] == "teacher" and record["rotate_prob"] == 0.5
    assert (out / "detector_loss.png").stat().st_size > 1000
    detector = create_detector(
        "blazeface_full", model_path=out / "blazeface_full_occluded.onnx", score_threshold=0.0
    )
    assert detector.detect(np.zeros((120, 160, 3), np.uint8)) is not None


def test_score_shift_moves_every_logit_by_the_threshold_logit(tmp_path):
    from training.blazeface_torch import shift_score_threshold

    source = ASSETS / BLAZEFACE_MODELS["blazeface_full"][0]
    shifted = shift_score_threshold(source, tmp_path / "shifted.onnx", 0.3)
    x = _input("blazeface_full")
    (reg_a, logit_a), (reg_b, logit_b) = _ort(source, x), _ort(shifted, x)
    assert np.array_equal(reg_a, reg_b)
    expected = -np.log(0.3 / 0.7)  # 0.847: a score of 0.3 becomes 0.5
    assert np.allclose(logit_b - logit_a, expected, atol=1e-3)
    with pytest.raises(ValueError, match="operating_threshold"):
        shift_score_threshold(source, tmp_path / "bad.onnx", 1.0)


def test_shipped_fine_tuned_detector_is_the_documented_file():
    import hashlib

    path = ASSETS / BLAZEFACE_MODELS["blazeface_occluded"][0]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest in (ASSETS / "BLAZEFACE.md").read_text()
    assert "blazeface_full_occluded.onnx" in (ASSETS / "NOTICE").read_text()
    # the same graph as full range: only weights differ
    a, b = onnx.load(str(path)), onnx.load(str(ASSETS / BLAZEFACE_MODELS["blazeface_full"][0]))
    assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]


def test_teacher_fallback_box_is_full_ranges_mean_crop():
    teacher = dt.TeacherBoxes()
    landmarks = _frontal_landmarks(100.0, 90.0, 40.0)
    first = json.loads(dt.DEFAULT_BOX_STATS.read_text())["bins"][0]
    assert first["yaw_range"][0] == 0.0  # the |yaw| 0-30 range
    mean = first["mean"]
    box = teacher.mapped_box(landmarks, yaw=-10.0)
    margin, shift = BLAZEFACE_CROP["blazeface_full"]
    crop = pp.expand_box(box, margin, shift_y=shift)
    lm_box = pp.box_from_landmarks(landmarks)
    side = float(max(lm_box[2] - lm_box[0], lm_box[3] - lm_box[1]))
    # yaw < 0: dx (toward the side the face turns to) is mirrored
    expected_cx = (lm_box[0] + lm_box[2]) / 2 - mean["dx"] * side
    expected_cy = (lm_box[1] + lm_box[3]) / 2 + mean["dy"] * side
    assert (crop[0] + crop[2]) / 2 == pytest.approx(expected_cx, abs=1e-3)
    assert (crop[1] + crop[3]) / 2 == pytest.approx(expected_cy, abs=1e-3)
    assert crop[2] - crop[0] == pytest.approx(side * 1.5 * np.exp(mean["log_scale"]), rel=1e-4)


def test_teacher_targets_keep_the_boxes_width_and_height():
    anchors = ssd_anchor_centres(192, (4,), False)
    landmarks = _frontal_landmarks(96.0, 96.0, 40.0)
    box = np.array([80.0, 70.0, 112.0, 110.0], np.float32)  # 32 x 40, not square
    keypoints = np.arange(12, dtype=np.float32).reshape(6, 2) + 90.0
    targets = dt.anchor_targets([landmarks], anchors, boxes=[(box, keypoints)])
    positives = np.flatnonzero(targets["label"] == 1)
    decoded, points = decode_boxes(targets["reg"][positives], anchors[positives], 192)
    assert np.allclose(decoded, box, atol=1e-3) and np.allclose(points, keypoints, atol=1e-3)
    assert np.all(targets["side"][positives] == 40.0)


def test_clean_view_gets_the_same_geometry_and_no_photometric_change():
    image = np.zeros((120, 160, 3), np.uint8)
    image[:, :80] = 200  # left half bright
    clean = image.copy()
    image[50:70, 20:40] = 30  # an "occluder" on the student image only
    frame = dt.Frame(image=image, clean=clean)
    view = dt.augment_view(frame, np.random.default_rng(0), zoom_prob=0, mirror_prob=1)
    # mirrored: the bright half is now on the right of both views (rows 144+: padding)
    assert view.clean_rgb[:144, 150:].min() == 200 and view.clean_rgb[:144, :40].max() == 0
    assert (view.clean_rgb[55:80, 145:165] == 200).all()  # no occluder on the clean view
    assert not np.array_equal(view.rgb, view.clean_rgb)  # the student's view is jittered
