"""BlazeFace short-range and full-range on ONNX Runtime, with this project's decoder.

The networks are MediaPipe's ``face_detection_short_range.tflite`` (128x128
input, 896 anchors, faces within ~2 m) and ``face_detection_full_range_sparse.tflite``
(192x192 input, 2304 anchors, faces up to ~5 m), Apache-2.0, from the mediapipe
0.10.21 wheel, converted once to ONNX (``lechpe_model/assets/BLAZEFACE.md``).

Decoding follows the published SSD anchor configuration of the two MediaPipe
graphs (``face_detection_short_range.pbtxt`` / ``face_detection_full_range.pbtxt``):

================  ==========================  ==========================
                  short range                 full range
================  ==========================  ==========================
input             128 x 128, RGB in [-1, 1]   192 x 192, RGB in [-1, 1]
strides           8, 16, 16, 16               4
anchors/location  2 (stride 8), 6 (stride 16) 1
anchor size       fixed (w = h = 1)           fixed (w = h = 1)
================  ==========================  ==========================

Each anchor's 16 regressor values are ``dx, dy, w, h`` and 6 keypoints
``(x, y)`` in input pixels relative to the anchor centre; the score is the
sigmoid of the (clipped) logit. Overlapping boxes are merged by weighted NMS
(score-weighted mean of the boxes that overlap the best one, as MediaPipe does).

Frames are letterboxed (scaled to fit, padded at the bottom/right with black)
so faces keep their aspect ratio; boxes and keypoints are mapped back to frame
pixels.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from lechpe_model.detection.base import (
    DEFAULT_SCORE_THRESHOLD,
    DetectorUnavailable,
    FaceDetection,
    FaceDetector,
)
from lechpe_model.preprocessing import box_iou_matrix

ASSETS = Path(__file__).resolve().parent.parent / "assets"

#: name -> (ONNX file, input side, anchor strides, two anchors per layer)
BLAZEFACE_MODELS = {
    "blazeface": ("blazeface_short_range.onnx", 128, (8, 16, 16, 16), True),
    "blazeface_full": ("blazeface_full_range.onnx", 192, (4,), False),
    # full range fine-tuned by this project on occluded lechpe-synth scenes
    # (training.detector_train; lechpe_model/assets/BLAZEFACE.md)
    "blazeface_occluded": ("blazeface_full_occluded.onnx", 192, (4,), False),
}
#: name -> (crop_margin, crop_shift_y) turning the box into the training crop,
#: measured on the astronaut photo (test_detection::test_detector_crop_matches_training_crop):
#: short range's box spans brows to chin (wider margin, centre barely lower);
#: full range's box starts higher on the forehead (like YuNet's).
#: blazeface_occluded was trained so that full range's constants give the training crop.
BLAZEFACE_CROP = {
    "blazeface": (0.23, 0.03),
    "blazeface_full": (0.15, 0.11),
    "blazeface_occluded": (0.15, 0.11),
}
#: name -> how the box changes on a face turned in the image plane: median ratio of the
#: box side turned / upright on identities 800-899 (docs/results/
#: blazeface_full_turned_box_scale_val.json and occluded_detector_pose_model/
#: blazeface_occluded_turned_box_scale_val.json; test_tilt_eval checks the copies).
#: Full range's box shrinks; the fine-tuned detector's grows.
BLAZEFACE_TURNED_BOX_SCALE = {
    "blazeface_full": ((0.0, 1.0), (15.0, 0.9773), (30.0, 0.9048), (45.0, 0.8665)),
    "blazeface_occluded": ((0.0, 1.0), (15.0, 1.0220), (30.0, 1.0736), (45.0, 1.1318)),
}
#: logits are clipped to this magnitude before the sigmoid (MediaPipe's score_clipping_thresh)
SCORE_CLIP = 100.0


def ssd_anchor_centres(input_size: int, strides: tuple[int, ...], interpolated: bool) -> np.ndarray:
    """Anchor centres ``(N, 2)`` (x, y) in [0, 1] of MediaPipe's SSD anchor generator.

    Consecutive layers with the same stride share one feature map; each layer
    adds one anchor per location (two with the interpolated aspect ratio).
    With ``fixed_anchor_size`` every anchor is 1 x 1, so only centres matter.
    """
    centres = []
    layer = 0
    while layer < len(strides):
        stride = strides[layer]
        per_location = 0
        while layer < len(strides) and strides[layer] == stride:
            per_location += 2 if interpolated else 1
            layer += 1
        side = int(math.ceil(input_size / stride))
        ys, xs = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
        grid = np.stack([(xs + 0.5) / side, (ys + 0.5) / side], axis=-1).reshape(-1, 2)
        centres.append(np.repeat(grid, per_location, axis=0))
    return np.concatenate(centres).astype(np.float32)


def _shrink(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Halve ``image`` (exact 2x2 averages) while it is at least twice ``width x height``.

    OpenCV's INTER_AREA is fast for integer factors only: 640x480 -> 192x144 in one
    step took 2.0 ms here, halving then a bilinear step 0.25 ms (the pixels differ by
    about 1 grey level on average). Frames with an odd side take the one-step path.
    """
    while (
        image.shape[1] >= 2 * width
        and image.shape[0] >= 2 * height
        and image.shape[1] % 2 == 0
        and image.shape[0] % 2 == 0
    ):
        image = cv2.resize(
            image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA
        )
    return image


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """``image`` scaled to fit ``size x size`` (aspect kept), padded bottom/right with black.

    Returns the square image and the scale (frame px -> letterbox px).
    """
    height, width = image.shape[:2]
    scale = size / max(height, width)
    new_w = min(max(int(round(width * scale)), 1), size)
    new_h = min(max(int(round(height * scale)), 1), size)
    resized = _shrink(image, new_w, new_h) if scale < 1 else image
    if resized.shape[1] != new_w or resized.shape[0] != new_h:
        # what is left after halving shrinks by less than 2x: bilinear barely aliases
        left = new_w / resized.shape[1]
        interpolation = cv2.INTER_AREA if left < 0.5 else cv2.INTER_LINEAR
        resized = cv2.resize(resized, (new_w, new_h), interpolation=interpolation)
    square = np.zeros((size, size, 3), dtype=np.uint8)
    square[:new_h, :new_w] = resized
    return square, scale


def decode_boxes(
    regressors: np.ndarray, anchors: np.ndarray, input_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(N, 16)`` raw regressors -> boxes ``(N, 4)`` x1 y1 x2 y2 and keypoints ``(N, 6, 2)``.

    Both in input pixels (0..input_size).
    """
    reg = np.asarray(regressors, dtype=np.float32)
    centre = anchors * input_size + reg[:, 0:2]
    half = reg[:, 2:4] / 2.0
    boxes = np.concatenate([centre - half, centre + half], axis=1)
    keypoints = reg[:, 4:16].reshape(-1, 6, 2) + anchors[:, None, :] * input_size
    return boxes, keypoints


def weighted_nms(
    boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, iou_threshold: float
) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Merge overlapping candidates: score-weighted mean of every box overlapping the best.

    Returns ``(box, keypoints, best score)`` per merged face, best first.
    """
    order = np.argsort(-scores)
    boxes, keypoints, scores = boxes[order], keypoints[order], scores[order]
    remaining = np.ones(len(scores), dtype=bool)
    faces = []
    for i in range(len(scores)):
        if not remaining[i]:
            continue
        overlap = remaining & (box_iou_matrix(boxes[i], boxes)[0] > iou_threshold)
        overlap[i] = True
        weights = scores[overlap][:, None]
        box = (boxes[overlap] * weights).sum(axis=0) / weights.sum()
        points = (keypoints[overlap] * weights[:, :, None]).sum(axis=0) / weights.sum()
        faces.append((box, points, float(scores[i])))
        remaining &= ~overlap
    return faces


class BlazeFaceDetector(FaceDetector):
    """MediaPipe BlazeFace (short or full range) on ONNX Runtime.

    Landmarks are BlazeFace's 6 keypoints ``(6, 2)``: right eye, left eye, nose
    tip, mouth centre, right ear tragion, left ear tragion (the person's
    right/left).

    Args:
        variant: ``"blazeface"`` (short range) or ``"blazeface_full"``.
        score_threshold: minimum sigmoid score.
        nms_threshold: IoU above which candidates are merged.
        model_path: another ONNX file with the same inputs/outputs (default: shipped).
        num_threads: ONNX Runtime intra-op threads (default 1).
    """

    # no pre-downscale: the letterbox resizes the frame straight to the input size
    default_max_input_side = 0

    def __init__(
        self,
        variant: str = "blazeface",
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        nms_threshold: float = 0.3,
        model_path: str | Path | None = None,
        num_threads: int = 1,
        **kwargs,
    ) -> None:
        if variant not in BLAZEFACE_MODELS:
            raise ValueError(
                f"unknown BlazeFace variant {variant!r}; use {sorted(BLAZEFACE_MODELS)}"
            )
        super().__init__(score_threshold, **kwargs)
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"{variant}: score_threshold must be in [0, 1], got {score_threshold}")
        if not 0.0 < float(nms_threshold) <= 1.0:
            raise ValueError(f"{variant}: nms_threshold must be in (0, 1], got {nms_threshold}")
        self.name = variant
        self.crop_margin, self.crop_shift_y = BLAZEFACE_CROP[variant]
        self.turned_box_scale_table = BLAZEFACE_TURNED_BOX_SCALE.get(variant)
        filename, self.input_size, strides, interpolated = BLAZEFACE_MODELS[variant]
        path = Path(model_path) if model_path else ASSETS / filename
        if not path.is_file():
            raise DetectorUnavailable(f"detector {variant!r}: model file {path} does not exist")
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise DetectorUnavailable(f"detector {variant!r} needs onnxruntime: {exc}") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(num_threads)
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise DetectorUnavailable(
                f"detector {variant!r} cannot load {path}: {type(exc).__name__}: {exc}"
            ) from exc
        inputs = self._session.get_inputs()
        outputs = self._session.get_outputs()
        expected_anchors = len(ssd_anchor_centres(self.input_size, strides, interpolated))
        if (
            len(inputs) != 1
            or list(inputs[0].shape)[1:] != [3, self.input_size, self.input_size]
            or len(outputs) != 2
            or outputs[0].shape[1:] != [expected_anchors, 16]
        ):
            raise DetectorUnavailable(
                f"detector {variant!r}: {path} is not a {variant} ONNX model (inputs "
                f"{[i.shape for i in inputs]}, outputs {[o.shape for o in outputs]}; expected "
                f"[1, 3, {self.input_size}, {self.input_size}] -> [1, {expected_anchors}, 16], "
                f"[1, {expected_anchors}, 1])"
            )
        self._input_name = inputs[0].name
        self.anchors = ssd_anchor_centres(self.input_size, strides, interpolated)
        self.nms_threshold = float(nms_threshold)
        self.model_path = path
        # logit below which a candidate cannot pass the threshold (skips the sigmoid)
        threshold = min(max(self.score_threshold, 1e-6), 1 - 1e-6)
        self._min_logit = math.log(threshold / (1.0 - threshold))

    def _detect(self, image: np.ndarray) -> list[FaceDetection]:
        square, scale = letterbox(image, self.input_size)
        rgb = cv2.cvtColor(square, cv2.COLOR_BGR2RGB).astype(np.float32)
        batch = (rgb.transpose(2, 0, 1)[None] / 127.5 - 1.0).astype(np.float32)
        regressors, logits = self._session.run(None, {self._input_name: batch})
        logits = np.clip(logits.reshape(-1), -SCORE_CLIP, SCORE_CLIP)
        keep = np.flatnonzero(logits >= self._min_logit)
        if keep.size == 0:
            return []
        scores = 1.0 / (1.0 + np.exp(-logits[keep]))
        boxes, keypoints = decode_boxes(
            regressors.reshape(-1, 16)[keep], self.anchors[keep], self.input_size
        )
        faces = []
        for box, points, score in weighted_nms(boxes, keypoints, scores, self.nms_threshold):
            faces.append(
                FaceDetection(
                    box=(box / scale).astype(np.float32),
                    score=score,
                    landmarks=(points / scale).astype(np.float32),
                )
            )
        return faces

    def __repr__(self) -> str:
        return f"BlazeFaceDetector({self.name!r}, score_threshold={self.score_threshold})"
