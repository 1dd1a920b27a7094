"""lechpe-demo end to end: render -> camera_replay -> pose_node -> /head_pose -> MAE, plots.

Runs the demo as a command (its own process, which starts pose_node and
camera_replay as further processes) on a short sequence with a random-weight
model, then recomputes the printed MAE from the files it wrote.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow]
pytest.importorskip("rclpy", reason="rclpy (ROS 2 Jazzy wheels) is not installed")

REPO = Path(__file__).resolve().parent.parent
FRAMES = 24


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    import torch

    from lechpe_model.checkpoint import save_checkpoint
    from lechpe_model.network import LECHPENet

    root = tmp_path_factory.mktemp("demo")
    torch.manual_seed(1)
    model = root / "random_tiny.safetensors"
    save_checkpoint(
        model, LECHPENet("mobilenet_v3_small", num_clusters=4), {"purpose": "demo test"}
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), LECHPE_CACHE_DIR=str(root / "cache"))
    out = root / "out"
    cmd = [
        sys.executable, "-m", "lechpe_ros.demo", "--frames", str(FRAMES), "--seed", "4", "--rate", "15",
        "--out", str(out), "--model", str(model), "--backend", "onnxruntime", "--device", "cpu",
    ]  # fmt: skip
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    return result, out


def test_demo_exits_zero_and_prints_mae_and_rate(demo_run):
    result, _ = demo_run
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(rf"{FRAMES} frames published at 15\.0 Hz, \d+ answered", result.stdout), (
        result.stdout
    )
    assert re.search(
        r"MAE \(deg\) over \d+ frames: yaw [\d.]+  pitch [\d.]+  roll [\d.]+", result.stdout
    )
    assert "achieved rate" in result.stdout and "latency image stamp -> /head_pose" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_printed_mae_matches_the_written_predictions_and_ground_truth(demo_run):
    result, out = demo_run
    with open(out / "sequence" / "ground_truth.csv") as f:
        truth = {int(r["frame"]): r for r in csv.DictReader(f)}
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert 1 <= len(rows) <= FRAMES and len({r["frame"] for r in rows}) == len(rows)
    summary = json.loads((out / "results.json").read_text())
    assert summary["frames_published"] == FRAMES and summary["frames_answered"] == len(rows)
    printed = re.search(r"yaw ([\d.]+)  pitch ([\d.]+)  roll ([\d.]+)", result.stdout).groups()
    for name, value in zip(("yaw", "pitch", "roll"), printed, strict=True):
        # independent: |pred - truth| from the ground-truth file, not the demo's *_true column
        mae = np.mean(
            [abs(float(r[f"{name}_pred"]) - float(truth[int(r["frame"])][name])) for r in rows]
        )
        assert float(value) == pytest.approx(mae, abs=0.006)
        assert summary[f"mae_{name}"] == pytest.approx(mae, abs=1e-9)
    assert 0 < summary["achieved_rate_hz"] < 1000
    counters = summary["node_counters"]
    assert counters["received_frames"] + counters["lost_in_transport"] == FRAMES
    assert counters["processed_frames"] >= len(rows)


def test_demo_writes_plot_video_and_contact_sheet(demo_run):
    _, out = demo_run
    plot = cv2.imread(str(out / "angles_over_time.png"))
    assert plot is not None and plot.shape[0] > 300 and plot.shape[1] > 400
    sheet = cv2.imread(str(out / "contact_sheet.jpg"))
    assert sheet is not None and sheet.shape[1] == 4 * 320
    video = next(p for p in (out / "annotated.mp4", out / "annotated.avi") if p.is_file())
    capture = cv2.VideoCapture(str(video))
    frames = 0
    while capture.read()[0]:
        frames += 1
    capture.release()
    assert frames == FRAMES


def test_frame_source_reads_sequences_and_video_files(demo_run, tmp_path):
    """camera_replay's sources: the sequence's intrinsics, and a video file frame by frame."""
    from lechpe_ros.camera_replay import FrameSource

    _, out = demo_run
    sequence = FrameSource(sequence=out / "sequence")
    meta = json.loads((out / "sequence" / "sequence.json").read_text())
    assert sequence.count == FRAMES and sequence.fps == meta["fps"]
    assert sequence.intrinsics(640, 480, 90.0) == (meta["fx"], meta["fy"], meta["cx"], meta["cy"])
    first = sequence.read()
    assert first[0] == 0 and np.array_equal(
        first[1], cv2.imread(str(out / "sequence" / "frame_000000.jpg"))
    )
    frames = [first] + [sequence.read() for _ in range(FRAMES - 1)]
    assert sequence.read() is None and sequence.read(loop=True)[0] == 0
    assert [f[0] for f in frames] == list(range(FRAMES))

    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 12.0, (64, 48))
    for i in range(5):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    video = FrameSource(video=str(path))
    assert video.fps == pytest.approx(12.0) and video.count == 5
    read = [video.read() for _ in range(5)]
    assert [r[0] for r in read] == list(range(5)) and video.read() is None
    assert [int(round(r[1].mean())) for r in read] == pytest.approx([0, 40, 80, 120, 160], abs=3)
    # No intrinsics in a video: a pinhole with the given horizontal field of view (90 deg: f = w/2).
    assert video.intrinsics(64, 48, 90.0) == pytest.approx((32.0, 32.0, 31.5, 23.5))
    with pytest.raises(FileNotFoundError, match="OpenCV cannot open video file"):
        FrameSource(video=str(tmp_path / "missing.mp4"))
    with pytest.raises(FileNotFoundError, match="lechpe-synth sequence"):
        FrameSource(sequence=tmp_path)
