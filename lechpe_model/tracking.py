"""Faces as tracks with stable ids, carried through detector misses (occlusion).

One :class:`FaceTracker` per camera stream (the pipeline keeps them). Each
frame on which the detector ran, :meth:`FaceTracker.update` associates the
detections with the tracks' *predicted* boxes (IoU, optimal assignment with
``scipy.optimize.linear_sum_assignment``):

* a matched track takes the detected box and updates its velocity, unless the
  box's side jumped by more than ``max_size_jump`` since the track's last
  detection: a face does not shrink by a quarter in a frame, but the
  detector's box does when a hand or an object starts to cover it (it closes
  on the part still visible). Such a detection is taken as a miss: the track
  keeps its own box, predicted, and is reported ``tracked`` (while it may miss
  once more; after ``max_misses`` it takes the detected box);
* an unmatched track (the detector missed the face, e.g. a hand covers it)
  is *predicted*: its box moves by its constant velocity and it is returned
  flagged ``tracked``; after more than ``max_misses`` misses in a row it ends;
* an unmatched detection starts a new track with the next integer id.

On frames where the detector does not run (``detect_every``),
:meth:`FaceTracker.predict` moves every track by its velocity without counting
a miss. :meth:`FaceTracker.end` ends a track early (the pipeline calls it when
the pose network's confidence says a predicted box holds no face).

Motion model: constant velocity of the four box coordinates (pixels per frame),
smoothed exponentially (``velocity_smoothing``), i.e. an alpha-beta filter with
alpha = 1 on the position: boxes the detector gives are used as they are, only
predictions use the velocity. Predicted velocity decays by ``velocity_decay``
per missed frame so a long occlusion does not fling the box away.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from lechpe_model.detection import FaceDetection
from lechpe_model.preprocessing import box_iou_matrix


@dataclass
class Track:
    """One face over time.

    Attributes:
        track_id: stable integer id (unique per tracker, increasing from 0).
        box: ``(4,)`` float32 current box (x1, y1, x2, y2) px.
        velocity: ``(4,)`` float32 box change per frame.
        score: detector score of the last detection.
        landmarks: detector landmarks of the last detection (not moved by predictions).
        misses: frames in a row on which the detector ran and missed this face.
        hits: detections matched so far.
    """

    track_id: int
    box: np.ndarray
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4, np.float32))
    score: float = 0.0
    landmarks: np.ndarray | None = None
    misses: int = 0
    hits: int = 1
    #: box of the last detection and frames since it (velocity = change / frames)
    detected_box: np.ndarray | None = None
    frames_since_detection: int = 0

    def __post_init__(self) -> None:
        if self.detected_box is None:
            self.detected_box = self.box.copy()

    @property
    def predicted(self) -> bool:
        """The current box comes from the motion model, not from a detection."""
        return self.misses > 0


@dataclass
class TrackedFace:
    """A face of this frame: a detection, or a track's predicted box."""

    detection: FaceDetection
    track_id: int
    tracked: bool  #: box predicted by the tracker (detector missed or did not run)


class FaceTracker:
    """Constant-velocity IoU tracker of face boxes for one camera stream.

    Args:
        max_misses: a track missed by the detector on more than this many frames
            in a row ends (0: tracks end at the first miss, no prediction).
        iou_threshold: minimum IoU between a predicted box and a detection to match.
        velocity_smoothing: weight of the newest box change in the velocity (0..1].
        velocity_decay: factor applied to the velocity on each missed frame.
        max_size_jump: a matched detection whose box side differs from the track's
            last detected side by more than this fraction per frame since then
            (either way) counts as a miss (see the module docstring); 0 disables.
    """

    def __init__(
        self,
        max_misses: int = 5,
        iou_threshold: float = 0.3,
        velocity_smoothing: float = 0.5,
        velocity_decay: float = 0.8,
        max_size_jump: float = 0.25,
    ) -> None:
        if int(max_misses) < 0:
            raise ValueError(f"track_max_misses must be >= 0, got {max_misses}")
        if not 0.0 < float(iou_threshold) <= 1.0:
            raise ValueError(f"track iou_threshold must be in (0, 1], got {iou_threshold}")
        if not 0.0 < float(velocity_smoothing) <= 1.0:
            raise ValueError(f"velocity_smoothing must be in (0, 1], got {velocity_smoothing}")
        if not 0.0 <= float(max_size_jump) < 1.0:
            raise ValueError(f"max_size_jump must be in [0, 1), got {max_size_jump}")
        self.max_misses = int(max_misses)
        self.max_size_jump = float(max_size_jump)
        self.iou_threshold = float(iou_threshold)
        self.velocity_smoothing = float(velocity_smoothing)
        self.velocity_decay = float(velocity_decay)
        self.tracks: list[Track] = []
        self._next_id = 0

    def _faces(self) -> list[TrackedFace]:
        return [
            TrackedFace(
                FaceDetection(box=t.box.copy(), score=t.score, landmarks=t.landmarks),
                t.track_id,
                t.predicted,
            )
            for t in sorted(self.tracks, key=lambda t: t.track_id)
        ]

    def predict(self) -> list[TrackedFace]:
        """A frame without detection: every track moves by its velocity (no miss counted)."""
        for track in self.tracks:
            track.box = (track.box + track.velocity).astype(np.float32)
            track.frames_since_detection += 1
        return [TrackedFace(f.detection, f.track_id, True) for f in self._faces()]

    def update(self, detections: list[FaceDetection]) -> list[TrackedFace]:
        """Associate this frame's detections; returns every live track's face, by track id."""
        predicted = np.array([t.box + t.velocity for t in self.tracks], np.float32).reshape(-1, 4)
        boxes = np.array([d.box for d in detections], np.float32).reshape(-1, 4)
        matches: list[tuple[int, int]] = []
        if len(self.tracks) and len(detections):
            overlap = box_iou_matrix(predicted, boxes)
            rows, cols = linear_sum_assignment(-overlap)
            matches = [
                (r, c)
                for r, c in zip(rows, cols, strict=True)
                if overlap[r, c] >= self.iou_threshold
            ]
        matched_dets = {c for _, c in matches}  # a jumped detection is still this face
        # ... carried as a miss while the track can take one more (else the box is used)
        matches = [
            (r, c)
            for r, c in matches
            if self.tracks[r].misses >= self.max_misses
            or not self._size_jumped(self.tracks[r], boxes[c])
        ]
        matched_tracks = {r for r, _ in matches}
        for r, c in matches:
            track, det = self.tracks[r], detections[c]
            new_box = np.asarray(det.box, np.float32)
            # per-frame change since the last detection (frames in between were predicted)
            change = (new_box - track.detected_box) / (track.frames_since_detection + 1)
            a = self.velocity_smoothing
            track.velocity = (a * change + (1 - a) * track.velocity).astype(np.float32)
            track.box = new_box.copy()
            track.detected_box = new_box.copy()
            track.frames_since_detection = 0
            track.score = float(det.score)
            track.landmarks = det.landmarks
            track.misses = 0
            track.hits += 1
        survivors = []
        for i, track in enumerate(self.tracks):
            if i not in matched_tracks:
                track.misses += 1
                track.frames_since_detection += 1
                if track.misses > self.max_misses:
                    continue
                track.box = predicted[i].copy()
                track.velocity = (track.velocity * self.velocity_decay).astype(np.float32)
            survivors.append(track)
        for c, det in enumerate(detections):
            if c not in matched_dets:
                survivors.append(
                    Track(
                        track_id=self._next_id,
                        box=np.asarray(det.box, np.float32).copy(),
                        score=float(det.score),
                        landmarks=det.landmarks,
                    )
                )
                self._next_id += 1
        self.tracks = survivors
        return self._faces()

    def _size_jumped(self, track: Track, box: np.ndarray) -> bool:
        """The detection's side left ``[(1 - j)^k, (1 - j)^-k]`` of the track's last
        detected side, ``k`` the frames since that detection."""
        if self.max_size_jump <= 0.0:
            return False

        def side_of(b: np.ndarray) -> float:
            return max(float(b[2] - b[0]), float(b[3] - b[1]))

        side, last_side = side_of(box), side_of(track.detected_box)
        if side <= 0.0 or last_side <= 0.0:
            return True
        low = (1.0 - self.max_size_jump) ** (track.frames_since_detection + 1)
        return not low <= side / last_side <= 1.0 / low

    def end(self, track_id: int) -> None:
        """End a track now (e.g. the pose network says its predicted box holds no face)."""
        self.tracks = [t for t in self.tracks if t.track_id != track_id]

    def reset(self) -> None:
        """Forget every track (ids keep increasing)."""
        self.tracks = []
