"""FaceTracker: stable ids, constant-velocity prediction through misses, track end, association."""

from __future__ import annotations

import numpy as np
import pytest

from lechpe_model.detection import FaceDetection
from lechpe_model.preprocessing import box_iou_matrix as iou_matrix
from lechpe_model.tracking import FaceTracker


def face(x: float, y: float, side: float = 40.0, score: float = 0.9) -> FaceDetection:
    return FaceDetection(box=np.array([x, y, x + side, y + side], np.float32), score=score)


def test_iou_matrix_by_hand():
    a = np.array([[0, 0, 10, 10], [0, 0, 4, 4]], np.float32)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    # overlap 5x10 = 50, union 150; second box does not touch
    np.testing.assert_allclose(iou_matrix(a, b), [[50 / 150, 0], [0, 0]])
    assert iou_matrix(np.zeros((0, 4)), b).shape == (0, 2)


def test_ids_are_stable_and_new_faces_get_the_next_id():
    tracker = FaceTracker()
    first = tracker.update([face(0, 0), face(200, 0)])
    assert [(f.track_id, f.tracked) for f in first] == [(0, False), (1, False)]
    # detections arrive in the other order and moved a little: ids follow the boxes
    second = tracker.update([face(205, 3), face(4, 2), face(400, 100)])
    by_id = {f.track_id: f.detection.box[0] for f in second}
    assert by_id == {0: 4.0, 1: 205.0, 2: 400.0}
    assert [f.track_id for f in second] == [0, 1, 2]  # always in id order


def test_prediction_continues_the_motion_while_the_detector_misses():
    tracker = FaceTracker(max_misses=3, velocity_smoothing=1.0, velocity_decay=1.0)
    for k in range(3):  # moves +5 px/frame right, +2 px/frame down
        tracker.update([face(100 + 5 * k, 50 + 2 * k)])
    for k in range(3, 6):  # occluded: the detector finds nothing
        (predicted,) = tracker.update([])
        assert predicted.tracked and predicted.track_id == 0
        np.testing.assert_allclose(
            predicted.detection.box, [100 + 5 * k, 50 + 2 * k] * 2 + np.array([0, 0, 40, 40])
        )
    # the face reappears where the prediction expects it: same track, no longer tracked
    (back,) = tracker.update([face(130, 62)])
    assert back.track_id == 0 and not back.tracked


def test_velocity_decays_during_misses():
    tracker = FaceTracker(max_misses=5, velocity_smoothing=1.0, velocity_decay=0.5)
    tracker.update([face(0, 0)])
    tracker.update([face(8, 0)])  # velocity 8 px/frame
    xs = [tracker.update([])[0].detection.box[0] for _ in range(3)]
    assert xs == [16.0, 20.0, 22.0]  # +8, +4, +2


def test_track_ends_after_max_misses():
    tracker = FaceTracker(max_misses=2)
    tracker.update([face(0, 0)])
    assert len(tracker.update([])) == 1
    assert len(tracker.update([])) == 1
    assert tracker.update([]) == []  # third miss in a row
    # a face at the same place now is a new track
    assert tracker.update([face(0, 0)])[0].track_id == 1


def test_no_prediction_with_zero_misses_and_end():
    tracker = FaceTracker(max_misses=0)
    tracker.update([face(0, 0), face(100, 0)])
    assert [f.track_id for f in tracker.update([face(100, 0)])] == [1]
    tracker.end(1)
    assert tracker.tracks == []


def test_far_detection_is_not_associated():
    tracker = FaceTracker(iou_threshold=0.3)
    tracker.update([face(0, 0)])
    out = tracker.update([face(35, 0)])  # IoU 5*40 / (2*1600 - 200) = 0.067
    assert [(f.track_id, f.tracked) for f in out] == [(0, True), (1, False)]


def test_predict_moves_tracks_without_counting_a_miss():
    tracker = FaceTracker(max_misses=0, velocity_smoothing=1.0)
    tracker.update([face(0, 0)])
    tracker.update([face(3, 0)])
    (moved,) = tracker.predict()
    assert moved.tracked and moved.detection.box[0] == 6.0
    assert tracker.tracks[0].misses == 0


def test_a_box_that_collapses_under_an_occluder_is_carried_as_a_miss():
    """A hand covers the right half: the detector's box closes on the visible left
    part (side 40 -> 28, -30 % in a frame). The track keeps the face's box."""
    tracker = FaceTracker(max_misses=3, velocity_smoothing=1.0, velocity_decay=1.0)
    tracker.update([face(100, 50)])
    tracker.update([face(102, 50)])  # +2 px/frame
    (carried,) = tracker.update([face(106, 56, side=28)])  # IoU 0.49 with the prediction
    assert carried.tracked and carried.track_id == 0  # the same face, no new track
    np.testing.assert_allclose(carried.detection.box, [104, 50, 144, 90])
    assert tracker.tracks[0].misses == 1
    # the hand leaves: the full box near the prediction is the same face again
    (back,) = tracker.update([face(106, 50)])
    assert back.track_id == 0 and not back.tracked and len(tracker.tracks) == 1
    # a face coming closer (+10 % a frame) is followed, not carried
    tracker = FaceTracker(max_misses=3)
    for k in range(5):
        (f,) = tracker.update([face(100, 50, side=40 * 1.1**k)])
        assert not f.tracked and f.track_id == 0
    # after two frames without detection a jump of up to (1 - 0.25)^3 is allowed
    tracker = FaceTracker(max_misses=3)
    tracker.update([face(100, 50)])
    tracker.update([])
    tracker.update([])
    (f,) = tracker.update([face(100, 50, side=40 * 0.6)])  # 0.6 > 0.42 = 0.75^3
    assert not f.tracked


def test_a_collapsed_box_is_used_when_the_track_cannot_miss_again():
    # no prediction (tracker off): the detection is reported as it is
    tracker = FaceTracker(max_misses=0)
    tracker.update([face(100, 50)])
    (f,) = tracker.update([face(100, 58, side=24)])
    assert not f.tracked and f.detection.box[2] - f.detection.box[0] == 24
    # ... and at the last miss allowed the track takes it
    tracker = FaceTracker(max_misses=1)
    tracker.update([face(100, 50)])
    assert tracker.update([face(100, 58, side=24)])[0].tracked  # first jump: carried
    (f,) = tracker.update([face(100, 58, side=24)])  # the track may not miss again
    assert not f.tracked and f.track_id == 0
    # switched off: every overlapping box is taken
    tracker = FaceTracker(max_misses=3, max_size_jump=0.0)
    tracker.update([face(100, 50)])
    assert not tracker.update([face(100, 58, side=24)])[0].tracked


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"max_misses": -1}, "track_max_misses must be >= 0, got -1"),
        ({"iou_threshold": 0}, "iou_threshold must be in"),
        ({"velocity_smoothing": 2}, "velocity_smoothing must be in"),
        ({"max_size_jump": 1.0}, r"max_size_jump must be in \[0, 1\), got 1.0"),
    ],
)
def test_bad_parameters(kwargs, words):
    with pytest.raises(ValueError, match=words):
        FaceTracker(**kwargs)
