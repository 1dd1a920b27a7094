"""lechpe-detbench: rendered frames, matching/metrics, the report, tracking mode (--quick)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from lechpe_model import preprocessing as pp
from lechpe_model.detection import FaceDetection
from training import detector_bench as bench


class TruthDetector:
    """Answers each frame's true crops (margin 0) plus one box far from any face.

    An independent check of the matching and of every metric: recall must be
    100 %, the crop IoU 1, and every face-free frame has exactly one false face.
    """

    name = "truth"
    crop_margin = 0.0
    crop_shift_y = 0.0

    def __init__(self, frames):
        self.by_id = {id(f.image): f for f in frames}

    def detect(self, image):
        frame = self.by_id[id(image)]
        faces = [FaceDetection(box=f.crop.copy(), score=1.0) for f in frame.faces]
        if frame.kind != "faces":
            faces.append(FaceDetection(box=np.array([0, 0, 10, 10], np.float32), score=1.0))
        return faces


@pytest.fixture(scope="module")
def frames():
    return bench.render_frames([(320, 240)], face_frames=4, free_frames=3, seed=3)


def test_frames_are_seeded_and_labelled(frames):
    again = bench.render_frames([(320, 240)], face_frames=4, free_frames=3, seed=3)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(frames, again, strict=True))
    assert [f.kind == "faces" for f in frames] == [True] * 4 + [False] * 3
    faces = [face for f in frames for face in f.faces]
    assert 4 <= len(faces) <= 12
    assert {face.occluder for face in faces} - {"none"} <= set(bench.PROCEDURAL_TYPES)
    occluded = [face for face in faces if face.occluder != "none"]
    assert occluded and all(0.0 <= face.coverage <= 0.62 for face in occluded)
    for frame in frames:
        assert frame.image.shape == (240, 320, 3) and frame.image.dtype == np.uint8


def test_metrics_with_a_detector_that_answers_the_truth(frames):
    result = bench.evaluate(TruthDetector(frames), frames)
    assert result["clean"][0] == 100.0 and result["occluded all"][0] == 100.0
    assert result["mean crop IoU"] == pytest.approx(1.0)
    assert result["false per free frame"] == 1.0
    assert result["free frames with a false face %"] == 100.0
    total = sum(n for _, n in result["by size"].values())
    assert total == sum(len(f.faces) for f in frames)


def test_a_detector_that_finds_nothing_has_zero_recall(frames):
    class Blind(TruthDetector):
        def detect(self, image):
            return []

    result = bench.evaluate(Blind(frames), frames)
    assert result["clean"][0] == 0.0 and result["false per free frame"] == 0.0


def test_box_iou_by_hand():
    assert pp.box_iou(np.array([0, 0, 10, 10]), np.array([5, 0, 15, 10])) == pytest.approx(50 / 150)
    crop = pp.expand_box(np.array([0, 0, 10, 10]), 0.0)
    assert pp.box_iou(crop, crop) == 1.0


def test_quick_run_writes_the_section_json_and_plot(tmp_path):
    doc = tmp_path / "BENCH.md"
    doc.write_text("# Benchmarks\n\nkept text\n")
    code = bench.main(
        [
            "--quick",
            "--detectors",
            "blazeface 0.5,blazeface_full 0.5",
            "--output",
            str(doc),
            "--json",
            str(tmp_path / "r.json"),
            "--plot",
            str(tmp_path / "r.png"),
        ]
    )
    assert code == 0
    text = doc.read_text()
    assert "kept text" in text and text.count(bench.SECTION_START) == 1
    assert "| blazeface_full 0.5 |" in text and "| blazeface 0.5 |" in text
    data = json.loads((tmp_path / "r.json").read_text())
    assert set(data["results"]) == {"blazeface 0.5", "blazeface_full 0.5"}
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a second run replaces the section instead of appending one
    bench.main(["--quick", "--detectors", "blazeface 0.5", "--output", str(doc)])
    assert doc.read_text().count(bench.SECTION_START) == 1
    assert bench.main(["--quick", "--detectors", "nope 1"]) == 2


def test_occluder_path_covers_the_face_mid_way():
    image = np.zeros((100, 100, 3), np.uint8)
    box = np.array([30, 30, 70, 70], np.float32)
    before = bench.occluder_path_frame(image, box, 0.0, "object", (255, 255, 255))
    middle = bench.occluder_path_frame(image, box, 0.5, "hand", (255, 255, 255))
    face = (slice(30, 70), slice(30, 70))
    assert (before[face] > 0).mean() < 0.2  # still left of the face
    assert (middle[face] > 0).mean() > 0.5  # on the face


def test_tracking_mode_quick(tmp_path):
    out = tmp_path / "track.json"
    assert bench.main(["--tracking", "--quick", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    off, on = summary.values()
    assert on["answered %"] >= off["answered %"]


def test_identity_frames_draw_the_held_out_people_with_their_landmarks(frames):
    """--identities renders lechpe-synth identities: other pixels, same geometry draws."""
    from training.synth.renderer import build_head_model

    model = build_head_model(True)
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    test_ids = bench.IDENTITY_SETS["test"]
    a = bench.render_frame(rng_a, 320, 240, 2, occluded=False, model=model, identities=test_ids)
    b = bench.render_frame(rng_b, 320, 240, 2, occluded=False, model=model, identities=test_ids)
    assert np.array_equal(a.image, b.image) and len(a.faces) >= 1
    for face in a.faces:
        # the crop is the landmark box expanded by the test margin
        lm_box = np.array([*face.landmarks.min(axis=0), *face.landmarks.max(axis=0)])
        expected = bench.pp.expand_box(lm_box, bench.pp.TEST_MARGIN)
        assert np.allclose(face.crop, expected, atol=1e-3)
        assert face.landmarks.shape == (68, 2)
    astronaut = bench.render_frame(
        np.random.default_rng(5), 320, 240, 2, occluded=False, model=model
    )
    assert not np.array_equal(astronaut.image, a.image)
    assert list(bench.IDENTITY_SETS["test"]) == list(range(900, 1000))
