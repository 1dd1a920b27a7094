"""Frame -> head poses of every face: detect, crop, one batched network call.

::

    est = PoseEstimator(create_detector("auto"), create_backend("auto", model))
    result = est.estimate(frame_bgr)          # or est.estimate_encoded(jpeg_bytes)
    for face in result.faces:
        face.angles        # (3,) degrees (yaw, pitch, roll), lechpe_model.conventions
    result.timings_ms      # {"decode"?, "detect", "preprocess", "network", "postprocess"}
    result.error           # None, or why the frame (or some faces) were skipped

``estimate`` never raises: bad frames (empty, tiny, oversized, NaN, wrong
dtype; see ``image_checks``) give no faces and an ``error`` string, faces whose
network outputs are not finite are dropped and counted in ``dropped``.

Crops: the detector box is turned into the crop with
``expand_box(box, margin, shift_y=shift_y)``; ``margin``/``shift_y`` default to
the detector's calibrated values (``FaceDetector.crop_margin``,
``crop_shift_y``), which make the crop match training's test-time crop of the
landmark box (``preprocessing.TEST_MARGIN``).

Tilted heads: the network is most accurate on upright faces and, on real
photos, follows only part of an in-plane tilt. A face whose estimated tilt in
the image (``conventions.image_tilt``: the angle of the head's up axis as seen,
which is the roll only for a frontal head) exceeds ``derotate_above_deg``
(default 15) is cropped again from the frame turned upright about the crop
centre (``preprocessing.rotated_crop``), the crop grown
by the detector's ``turned_box_scale`` (a detector's box shrinks on a turned
face); the network runs on that crop, and its answer is turned back exactly
(``conventions.rotate_in_image_plane``): a second, batched network call for the
tilted faces only. ``FacePose.turned_deg`` says by how much the crop was turned.

Confidence: ``1 - H(q) / log K`` with ``q`` the soft cluster assignment and ``H``
its entropy. A latent close to one learned centroid (a face like the training
data, occluded or not) gives ~1; a latent far from every centroid, i.e. a crop
unlike the training faces (a false detection, an extreme occlusion), spreads q
evenly and gives ~0. Unlike ``max(q)`` it does not depend on K (its floor would
be 1/K). With K = 1 it is 1. It is not a calibrated probability of the angle
error; ``uncertainty`` (std of the bin softmax, degrees) speaks to that.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from lechpe_model.backends import Backend, PoseOutputs
from lechpe_model.conventions import ANGLE_NAMES, image_tilt, rotate_in_image_plane
from lechpe_model.detection import FaceDetection, FaceDetector, keep_largest
from lechpe_model.image_checks import DEFAULT_MAX_SIDE, InvalidImage, to_bgr8
from lechpe_model.preprocessing import crop_face, expand_box, preprocess_crops, rotated_crop
from lechpe_model.tracking import FaceTracker
from lechpe_model.uncertainty import calibrated_outputs_uncertainty

LOG = logging.getLogger(__name__)

#: Frames a tracked face is carried through detector misses (``track_max_misses``).
#: 0 in the library: frames of one stream may be unrelated photos (``lechpe-infer``
#: on a folder), where a predicted face would be a ghost; the node sets 15.
DEFAULT_TRACK_MAX_MISSES = 0
#: Faces whose estimated |tilt| in the image exceeds this many degrees are re-cropped upright
#: (``derotate_above_deg``; negative: never). Chosen on held-out identities and the
#: real-photo consistency check (docs/RESULTS.md, "Tilted heads").
DEFAULT_DEROTATE_ABOVE_DEG = 15.0
#: Stages reported in ``EstimateResult.timings_ms`` (decode only for encoded input).
STAGES = ("decode", "detect", "preprocess", "network", "postprocess")


@dataclass
class FacePose:
    """Head pose of one face.

    Attributes:
        box: ``(4,)`` float32 detector box ``(x1, y1, x2, y2)`` in frame pixels.
        score: detector score in [0, 1].
        angles: ``(3,)`` float32 degrees (yaw, pitch, roll), label convention of
            ``lechpe_model.conventions``.
        uncertainty: ``(3,)`` float32 degrees: the calibrated standard deviation of
            each angle's error when the model carries an ``uncertainty_calibration``
            (``lechpe_model.uncertainty``), else the std of its bin softmax.
        assignment: ``(K,)`` float32 soft cluster assignment q.
        cluster: ``argmax(assignment)``.
        confidence: ``1 - entropy(q) / log K`` in [0, 1] (module docstring).
        landmarks: ``(5, 2)`` (YuNet) / ``(6, 2)`` (BlazeFace) float32 detector
            landmarks of the last detection, or ``None``.
        crop_box: ``(4,)`` float32 box actually cropped (may extend past the frame).
        track_id: stable integer id of this face within its stream (``lechpe_model.tracking``).
        tracked: the box was predicted by the tracker (the detector missed the
            face, e.g. behind an occluder, or did not run on this frame).
        turned_deg: clockwise turn (degrees) of the crop the pose was estimated
            on; 0 unless the head was tilted past ``derotate_above_deg``.
    """

    box: np.ndarray
    score: float
    angles: np.ndarray
    uncertainty: np.ndarray
    assignment: np.ndarray
    cluster: int
    confidence: float
    landmarks: np.ndarray | None = None
    crop_box: np.ndarray | None = None
    track_id: int = -1
    tracked: bool = False
    turned_deg: float = 0.0

    @property
    def yaw(self) -> float:
        return float(self.angles[0])

    @property
    def pitch(self) -> float:
        return float(self.angles[1])

    @property
    def roll(self) -> float:
        return float(self.angles[2])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (floats rounded to 1e-3 degrees / pixels)."""

        def rounded(values) -> list:
            return [round(float(v), 3) for v in np.asarray(values).reshape(-1)]

        out: dict[str, Any] = {
            "box": rounded(self.box),
            "score": round(float(self.score), 4),
        }
        for name, value in zip(ANGLE_NAMES, self.angles, strict=True):
            out[name] = round(float(value), 3)
        out["uncertainty"] = {
            name: round(float(v), 3) for name, v in zip(ANGLE_NAMES, self.uncertainty, strict=True)
        }
        out["cluster"] = int(self.cluster)
        out["confidence"] = round(float(self.confidence), 4)
        out["track_id"] = int(self.track_id)
        out["tracked"] = bool(self.tracked)
        out["turned_deg"] = round(float(self.turned_deg), 3)
        out["landmarks"] = (
            None if self.landmarks is None else [rounded(p) for p in np.asarray(self.landmarks)]
        )
        return out


@dataclass
class EstimateResult:
    """Outcome of one frame.

    Attributes:
        faces: poses, ordered by track id (stable across frames of a stream).
        timings_ms: milliseconds per stage (see :data:`STAGES`).
        error: ``None`` or a message (frame refused, detector/backend failure,
            faces dropped for non-finite outputs).
        detected: faces found by the detector before ``max_faces``.
        dropped: faces removed because their box or outputs were not finite.
        reused_detections: the detector did not run on this frame
            (``detect_every`` > 1); the boxes are the tracker's predictions.
        tracked: faces whose box was predicted by the tracker.
    """

    faces: list[FacePose] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    detected: int = 0
    dropped: int = 0
    reused_detections: bool = False
    tracked: int = 0


class BackendFailure(RuntimeError):
    """The backend raised on a batch (the message names the backend and the error)."""


def confidence_from_assignment(q: np.ndarray) -> np.ndarray:
    """``1 - H(q) / log K`` for rows of ``q`` ``(N, K)``; 1 when K = 1. Returns ``(N,)``."""
    q = np.asarray(q, dtype=np.float64)
    k = q.shape[-1]
    if k <= 1:
        return np.ones(q.shape[:-1])
    p = np.clip(q, 0.0, 1.0)
    p = p / np.maximum(p.sum(axis=-1, keepdims=True), 1e-12)
    entropy = -np.sum(np.where(p > 0, p * np.log(np.maximum(p, 1e-300)), 0.0), axis=-1)
    return np.clip(1.0 - entropy / math.log(k), 0.0, 1.0)


class PoseEstimator:
    """Detector + shared preprocessing + backend.

    Args:
        detector: a ``detection.FaceDetector``.
        backend: a ``backends.Backend``.
        max_faces: keep at most this many faces per frame, the largest boxes.
        margin: crop margin around the detector box; ``None`` = the detector's
            calibrated ``crop_margin``.
        shift_y: crop centre shift (fraction of box height); ``None`` = detector's.
        max_side: frames larger than this (px a side) are refused.
        detect_every: run the face detector on one frame in N of each stream; on
            the N - 1 frames between, the tracker's predicted boxes are used
            (1: every frame). A frame whose stream has no live track, or whose
            size changed, is detected anew.
        track_max_misses: each stream's faces are tracks with stable ids
            (``lechpe_model.tracking.FaceTracker``); when the detector misses a
            tracked face its box is predicted (constant velocity) and its pose
            still estimated, flagged ``tracked``, for up to this many frames in
            a row (0: no prediction, a face missed by the detector is dropped).
        track_min_confidence: a predicted (``tracked``) face whose network
            confidence is below this ends its track and is not reported (the
            network says the box holds no face any more); 0 disables.
        derotate_above_deg: faces whose estimated tilt in the image
            (``conventions.image_tilt``) exceeds this are estimated again on a crop
            turned upright (module docstring); negative disables.
    """

    def __init__(
        self,
        detector: FaceDetector,
        backend: Backend,
        max_faces: int = 10,
        margin: float | None = None,
        shift_y: float | None = None,
        max_side: int = DEFAULT_MAX_SIDE,
        detect_every: int = 1,
        track_max_misses: int = DEFAULT_TRACK_MAX_MISSES,
        track_min_confidence: float = 0.0,
        derotate_above_deg: float = DEFAULT_DEROTATE_ABOVE_DEG,
    ) -> None:
        if not math.isfinite(float(derotate_above_deg)):
            raise ValueError(
                f"derotate_above_deg must be a finite number, got {derotate_above_deg}"
            )
        self.derotate_above_deg = float(derotate_above_deg)
        if int(detect_every) < 1:
            raise ValueError(f"detect_every must be >= 1, got {detect_every}")
        if int(track_max_misses) < 0:
            raise ValueError(f"track_max_misses must be >= 0, got {track_max_misses}")
        if not 0.0 <= float(track_min_confidence) <= 1.0:
            raise ValueError(f"track_min_confidence must be in [0, 1], got {track_min_confidence}")
        self.track_max_misses = int(track_max_misses)
        self.track_min_confidence = float(track_min_confidence)
        self.detector = detector
        self.backend = backend
        self.max_faces = int(max_faces)
        self.detect_every = int(detect_every)
        # stream -> (frame shape, its tracker, frames served since the detector ran)
        self._streams: dict[object, tuple[tuple[int, ...], FaceTracker, int]] = {}
        self.margin = float(detector.crop_margin if margin is None else margin)
        self.shift_y = float(detector.crop_shift_y if shift_y is None else shift_y)
        self.max_side = int(max_side)
        meta = backend.metadata
        self.input_size = int(meta.input_size)
        self.mean = tuple(meta.mean)
        self.std = tuple(meta.std)

    # ------------------------------------------------------------------ public
    def estimate_encoded(self, data: bytes | np.ndarray) -> EstimateResult:
        """Decode an encoded image (JPEG, PNG, ... bytes) and estimate; never raises."""
        start = time.perf_counter()
        try:
            buffer = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else data
            image = (
                cv2.imdecode(np.asarray(buffer, dtype=np.uint8).reshape(-1), cv2.IMREAD_UNCHANGED)
                if np.asarray(buffer).size
                else None
            )
        except Exception as exc:  # cv2.error, bad buffer types
            image, reason = None, f"{type(exc).__name__}: {exc}"
        else:
            reason = "not a supported image encoding or corrupt data"
        decode_ms = (time.perf_counter() - start) * 1e3
        if image is None:
            return EstimateResult(
                timings_ms={"decode": decode_ms}, error=f"cannot decode image: {reason}"
            )
        result = self.estimate(image)
        result.timings_ms = {"decode": decode_ms, **result.timings_ms}
        return result

    def estimate(self, image: np.ndarray, stream: object = None) -> EstimateResult:
        """Poses of the faces in one frame; never raises (see ``EstimateResult.error``).

        Args:
            image: ``(H, W, 3)`` uint8 BGR, or any input ``image_checks.to_bgr8`` accepts.
            stream: which camera the frame comes from (any hashable); boxes are
                only reused within one stream (``detect_every``).
        """
        result = EstimateResult()
        try:
            self._estimate(image, result, stream)
        except Exception as exc:  # last line of defence: a frame never kills the caller
            LOG.exception("pose estimation failed on a frame")
            result.faces = []
            result.error = f"pose estimation failed: {type(exc).__name__}: {exc}"
        return result

    def infer_boxes(
        self, bgr: np.ndarray, boxes: list[np.ndarray], timings: dict[str, float] | None = None
    ) -> tuple[PoseOutputs, list[np.ndarray], np.ndarray]:
        """The network's outputs for detector boxes of one BGR frame, with the upright
        re-crop of tilted heads.

        Returns ``(outputs, crop_boxes, turned_deg)``: ``outputs.uncertainty`` is the
        published (calibrated) sigma; ``crop_boxes`` the boxes cropped (a tilted
        face's grown by the detector's ``turned_box_scale`` and turned by its
        ``turned_deg`` about its centre); ``turned_deg`` ``(N,)`` the clockwise turn
        of each face's final crop. Adds ``preprocess`` and ``network`` milliseconds to
        ``timings``. Raises :class:`BackendFailure` if the backend fails.
        """
        timings = {} if timings is None else timings
        start = time.perf_counter()
        crop_boxes = [expand_box(b, self.margin, shift_y=self.shift_y) for b in boxes]
        batch = preprocess_crops(
            [crop_face(bgr, box) for box in crop_boxes], self.input_size, self.mean, self.std
        )
        timings["preprocess"] = timings.get("preprocess", 0.0) + (time.perf_counter() - start) * 1e3
        outputs = self._infer(batch, timings)
        turned = np.zeros(len(crop_boxes))
        if self.derotate_above_deg < 0 or not len(crop_boxes):
            return outputs, crop_boxes, turned
        finite = np.isfinite(outputs.angles).all(axis=1)  # non-finite rows are dropped later
        # the head's tilt in the image, not its roll: a turned head's roll is not how far
        # it leans in the picture (conventions.image_tilt)
        tilt = image_tilt(np.where(finite[:, None], outputs.angles, 0.0))
        tilted = np.flatnonzero(finite & (np.abs(tilt) > self.derotate_above_deg))
        if not tilted.size:
            return outputs, crop_boxes, turned
        # own the first call's arrays: a backend may reuse its output buffers
        outputs = outputs.rows(slice(None))
        start = time.perf_counter()
        # the detector's box shrinks on a turned face: the upright crop is grown back
        scale = getattr(self.detector, "turned_box_scale", lambda turn: 1.0)
        for i in tilted:
            crop_boxes[i] = expand_box(crop_boxes[i], 0.5 / scale(tilt[i]) - 0.5)
        # turning the frame clockwise by -tilt makes the head upright
        batch = preprocess_crops(
            [rotated_crop(bgr, crop_boxes[i], -tilt[i]) for i in tilted],
            self.input_size,
            self.mean,
            self.std,
        )
        timings["preprocess"] += (time.perf_counter() - start) * 1e3
        upright = self._infer(batch, timings)
        outputs.angles[tilted] = rotate_in_image_plane(upright.angles, tilt[tilted]).astype(
            outputs.angles.dtype
        )
        outputs.uncertainty[tilted] = upright.uncertainty
        outputs.assignment[tilted] = upright.assignment
        if outputs.log_error is not None:
            outputs.log_error[tilted] = upright.log_error
        turned[tilted] = -tilt[tilted]
        return outputs, crop_boxes, turned

    def _infer(self, batch: np.ndarray, timings: dict[str, float]) -> PoseOutputs:
        """One backend call with the published sigma; its time added to ``network``."""
        start = time.perf_counter()
        try:
            outputs = self.backend.infer(batch)  # all faces of the frame in one call
            # Calibrated sigma from the metadata (raw softmax spread if none): same for all backends.
            outputs.uncertainty = calibrated_outputs_uncertainty(outputs, self.backend.metadata)
        except Exception as exc:
            raise BackendFailure(
                f"backend {self.backend.name} failed: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            timings["network"] = timings.get("network", 0.0) + (time.perf_counter() - start) * 1e3
        return outputs

    # ---------------------------------------------------------------- internal
    def _detect(self, bgr: np.ndarray, stream: object, result: EstimateResult):
        """This frame's faces: detections associated with the stream's tracks, or predictions."""
        state = self._streams.get(stream)
        if state is None or state[0] != bgr.shape:
            state = (bgr.shape, FaceTracker(max_misses=self.track_max_misses), self.detect_every)
        shape, tracker, since = state
        if tracker.tracks and since < self.detect_every - 1:
            self._streams[stream] = (shape, tracker, since + 1)
            result.reused_detections = True
            return tracker, tracker.predict()
        faces = tracker.update(self.detector.detect(bgr))
        self._streams[stream] = (shape, tracker, 0)
        return tracker, faces

    def _estimate(self, image: np.ndarray, result: EstimateResult, stream: object = None) -> None:
        timings = result.timings_ms
        start = time.perf_counter()
        try:
            bgr = to_bgr8(image, max_side=self.max_side)
        except InvalidImage as exc:
            timings["preprocess"] = (time.perf_counter() - start) * 1e3
            result.error = f"invalid image: {exc}"
            return
        check_ms = (time.perf_counter() - start) * 1e3

        start = time.perf_counter()
        try:
            tracker, tracked_faces = self._detect(bgr, stream, result)
        except Exception as exc:
            timings["detect"] = (time.perf_counter() - start) * 1e3
            result.error = f"face detector {self.detector.name} failed: {type(exc).__name__}: {exc}"
            return
        good, bad = [], []
        for face in tracked_faces:
            (good if _usable_box(face.detection) else bad).append(face)
        for face in bad:
            tracker.end(face.track_id)
        result.detected = sum(not f.tracked for f in good)
        result.dropped += len(bad)
        # at most max_faces, the largest boxes; then in track-id order
        by_detection = {id(f.detection): f for f in good}
        kept = keep_largest([f.detection for f in good], self.max_faces)
        entries = sorted((by_detection[id(d)] for d in kept), key=lambda f: f.track_id)
        faces = [f.detection for f in entries]
        timings["detect"] = (time.perf_counter() - start) * 1e3

        timings["preprocess"] = check_ms
        try:
            outputs, crop_boxes, turned = self.infer_boxes(bgr, [d.box for d in faces], timings)
        except BackendFailure as exc:
            result.error = str(exc)
            return

        start = time.perf_counter()
        finite = (
            np.isfinite(outputs.angles).all(axis=1)
            & np.isfinite(outputs.uncertainty).all(axis=1)
            & np.isfinite(outputs.assignment).all(axis=1)
        )
        confidence = confidence_from_assignment(outputs.assignment)
        for i, det in enumerate(faces):
            if not finite[i]:
                continue
            if entries[i].tracked and confidence[i] < self.track_min_confidence:
                tracker.end(entries[i].track_id)  # the network sees no face in the prediction
                continue
            result.tracked += int(entries[i].tracked)
            result.faces.append(
                FacePose(
                    box=det.box.astype(np.float32),
                    score=float(det.score),
                    angles=outputs.angles[i].copy(),
                    uncertainty=outputs.uncertainty[i].copy(),
                    assignment=outputs.assignment[i].copy(),
                    cluster=int(np.argmax(outputs.assignment[i]))
                    if outputs.assignment.shape[1]
                    else 0,
                    confidence=float(confidence[i]),
                    landmarks=None if det.landmarks is None else det.landmarks.astype(np.float32),
                    crop_box=crop_boxes[i],
                    track_id=entries[i].track_id,
                    tracked=entries[i].tracked,
                    turned_deg=float(turned[i]),
                )
            )
        bad = int((~finite).sum())
        if bad:
            result.dropped += bad
            result.error = f"dropped {bad} face(s) whose network outputs were NaN or infinite"
            LOG.warning(result.error)
        timings["postprocess"] = (time.perf_counter() - start) * 1e3


def _usable_box(detection: FaceDetection) -> bool:
    box = np.asarray(detection.box, dtype=np.float64)
    return (
        box.shape == (4,)
        and bool(np.all(np.isfinite(box)))
        and box[2] - box[0] >= 1.0
        and box[3] - box[1] >= 1.0
        and math.isfinite(float(detection.score))
    )
