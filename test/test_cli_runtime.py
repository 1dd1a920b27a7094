"""lechpe-export, lechpe-infer, lechpe-bench on tiny real inputs; pose axes drawing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

pytest.importorskip("torch")
skimage_data = pytest.importorskip("skimage.data")

from hostile_images import gif_garbage, png_declaring  # noqa: E402

from lechpe_model.cli import bench, infer  # noqa: E402
from lechpe_model.cli import export as export_cli  # noqa: E402
from lechpe_model.cli.bench import random_checkpoint  # noqa: E402
from lechpe_model.visualization import AXIS_COLORS, axis_endpoints, draw_pose_axes  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    ckpt = random_checkpoint(folder / "m.safetensors", "resnet18")
    onnx_path = folder / "m.onnx"
    assert export_cli.main([str(ckpt), str(onnx_path)]) == 0
    photo = cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR)
    image = folder / "astronaut.png"
    cv2.imwrite(str(image), photo)
    return {"ckpt": ckpt, "onnx": onnx_path, "image": image, "photo": photo, "dir": folder}


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------ lechpe-export


def test_export_info_reports_outputs_and_metadata(files, tmp_path, capsys):
    out = tmp_path / "again.onnx"
    assert export_cli.main([str(files["ckpt"]), str(out), "--opset", "17", "--info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "onnx" and info["opset"] == 17
    assert list(info["outputs"]) == ["angles", "uncertainty", "assignment"]
    assert info["inputs"]["image"] == ["batch", 3, 224, 224]
    assert info["outputs"]["assignment"] == ["batch", 4]
    assert info["metadata"]["architecture"] == "resnet18"
    assert out.read_bytes() == files["onnx"].read_bytes()
    assert export_cli.main(["--info", str(files["ckpt"])]) == 0
    assert json.loads(capsys.readouterr().out)["metadata"]["num_clusters"] == 4


def test_export_errors(tmp_path, capsys):
    assert export_cli.main([str(tmp_path / "nope.safetensors"), str(tmp_path / "x.onnx")]) == 1
    assert "checkpoint not found" in capsys.readouterr().err
    assert export_cli.main([str(tmp_path / "nope.safetensors")]) == 2


# ------------------------------------------------------------------- lechpe-infer


def test_infer_image_writes_jsonl_and_annotated_image(files, tmp_path):
    jsonl, out = tmp_path / "poses.jsonl", tmp_path / "annotated"
    args = [str(files["image"]), "--model", str(files["onnx"]), "--backend", "onnxruntime"]
    assert infer.main([*args, "--jsonl", str(jsonl), "--out", str(out)]) == 0
    (record,) = read_jsonl(jsonl)
    assert record["source"] == str(files["image"]) and record["frame"] == 0
    assert (record["width"], record["height"], record["error"]) == (512, 512, None)
    (face,) = record["faces"]
    assert set(face) >= {"box", "yaw", "pitch", "roll", "uncertainty", "cluster", "confidence"}
    assert 0.0 <= face["confidence"] <= 1.0 and 0 <= face["cluster"] < 4
    x1, y1, x2, y2 = face["box"]
    assert 150 < (x1 + x2) / 2 < 300 and 60 < (y1 + y2) / 2 < 180
    drawn = cv2.imread(str(out / "astronaut_pose.jpg"))
    assert drawn.shape == files["photo"].shape
    changed = np.abs(drawn.astype(int) - files["photo"].astype(int)).sum(axis=2) > 60
    ys, xs = np.nonzero(changed)
    assert len(xs) > 200  # box, label and axes drawn around the face
    assert np.median(xs) == pytest.approx((x1 + x2) / 2, abs=60)


def test_infer_folder_with_bad_files(files, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "a_face.png"), files["photo"])
    noise = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    cv2.imwrite(str(folder / "b_noise.png"), noise)
    (folder / "c_broken.jpg").write_bytes(b"\xff\xd8 truncated")
    (folder / "c_bomb.png").write_bytes(png_declaring(40000, 40000))  # 312 bytes, issue 13
    (folder / "c_garbage.gif").write_bytes(gif_garbage())
    cv2.imwrite(
        str(folder / "d_gray16.png"),
        (cv2.cvtColor(files["photo"], cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257),
    )
    # re-crop off: this random network "sees" a head tilted by ~116 deg, and on the
    # turned crop its colour and grey answers part; the grey input is what is tested
    args = [str(folder), "--model", str(files["onnx"]), "--derotate-above-deg", "-1"]
    assert infer.main(args) == 0
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["source"].rsplit("/", 1)[1] for r in records] == [
        "a_face.png",
        "b_noise.png",
        "c_bomb.png",
        "c_broken.jpg",
        "c_garbage.gif",
        "d_gray16.png",
    ]
    assert len(records[0]["faces"]) == 1 and records[0]["error"] is None
    assert records[1]["faces"] == [] and records[1]["error"] is None
    assert "declares 40000x40000 px" in records[2]["error"]
    assert "JPEG marker expected at byte 2 (corrupt data)" in records[3]["error"]
    assert "GIF" in records[4]["error"]
    assert all(r["faces"] == [] and r["error"].startswith("skipped: ") for r in records[2:5])
    assert len(records[5]["faces"]) == 1  # 16-bit grayscale PNG: the run went on
    np.testing.assert_allclose(records[5]["faces"][0]["yaw"], records[0]["faces"][0]["yaw"], atol=3)
    err = captured.err
    assert "Traceback" not in err and err.count("lechpe-infer: skipped ") == 3
    assert err.rstrip().endswith(
        "6 frame(s), 2 face(s), 3 file(s) skipped (unreadable or refused, see above)"
    )


def test_infer_video_writes_one_line_per_frame_and_an_mp4(files, tmp_path):
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (320, 320))
    small = cv2.resize(files["photo"], (320, 320), interpolation=cv2.INTER_AREA)
    for i in range(5):
        writer.write(np.roll(small, 4 * i, axis=1))
    writer.release()
    jsonl, out = tmp_path / "v.jsonl", tmp_path / "vout"
    args = [str(video), "--model", str(files["onnx"]), "--jsonl", str(jsonl), "--out", str(out)]
    assert infer.main(args) == 0
    records = read_jsonl(jsonl)
    assert [r["frame"] for r in records] == [0, 1, 2, 3, 4]
    assert all(len(r["faces"]) == 1 for r in records)
    centres = [(r["faces"][0]["box"][0] + r["faces"][0]["box"][2]) / 2 for r in records]
    assert centres[4] - centres[0] == pytest.approx(16, abs=5)  # the face moved 4 px a frame
    capture = cv2.VideoCapture(str(out / "clip_pose.mp4"))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    assert count == 5


def test_infer_bad_arguments(files, tmp_path, capsys):
    assert infer.main([str(tmp_path / "missing.jpg"), "--model", str(files["onnx"])]) == 2
    assert "input not found" in capsys.readouterr().err
    assert infer.main(["--camera", "99", "--model", str(files["onnx"])]) == 2
    assert "cannot open camera:99" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        infer.main([str(files["image"]), "--camera", "0"])
    assert (
        infer.main([str(files["image"]), "--model", str(files["onnx"]), "--backend", "nope"]) == 1
    )
    assert "unknown backend" in capsys.readouterr().err


def test_infer_default_model_message(files, capsys, monkeypatch):
    from lechpe_model import default_model

    monkeypatch.setattr(default_model, "DEFAULT_MODEL_NAME", "absent.safetensors")
    assert infer.main([str(files["image"])]) == 1
    err = capsys.readouterr().err
    assert "default model" in err and "absent.safetensors" in err and "--model" in err


def test_infer_with_the_embedded_default_model_on_a_real_photo(files, tmp_path):
    # The astronaut looks almost straight into the camera, slightly down.
    jsonl = tmp_path / "poses.jsonl"
    assert infer.main([str(files["image"]), "--jsonl", str(jsonl)]) == 0
    (face,) = read_jsonl(jsonl)[0]["faces"]
    assert abs(face["yaw"]) < 15 and abs(face["pitch"]) < 15 and abs(face["roll"]) < 15


def test_infer_console_module_in_a_subprocess(files, tmp_path, repo_root):
    env = dict(os.environ, PYTHONPATH=str(repo_root))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lechpe_model.cli.infer",
            str(files["image"]),
            "--model",
            str(files["onnx"]),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["faces"]) == 1
    assert "1 frame(s), 1 face(s)" in proc.stderr


# ------------------------------------------------------------------- lechpe-bench


def test_bench_rewrites_only_its_section(files, tmp_path, capsys):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(
        "# Benchmarks\n\nkeep me\n\n<!-- lechpe-bench:start -->\nold\n<!-- lechpe-bench:end -->\n\n## Training\nkeep me too\n"
    )
    args = [
        "--model",
        str(files["ckpt"]),
        "--backends",
        "onnxruntime,torch",
        "--batch-sizes",
        "1,4",
    ]
    args += ["--repeats", "2", "--warmup", "0", "--output", str(doc)]
    assert bench.main(args) == 0
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nkeep me\n") and text.endswith(
        "## Training\nkeep me too\n"
    )
    assert "\nold\n" not in text and text.count("<!-- lechpe-bench:start -->") == 1
    assert "| onnxruntime | 4 |" in text and "| torch | 1 |" in text
    assert "ONNX Runtime vs PyTorch eager" in text and "everything except the network" in text
    assert bench.main(args) == 0  # idempotent: still one section
    assert doc.read_text().count("## Inference runtime (lechpe-bench)") == 1


def test_bench_non_network_share_is_amortised_with_detect_every():
    # Three frames: the detector ran on the first only (9 ms), then reused boxes (0 ms).
    samples = {s: [1.0, 1.0, 1.0] for s in bench.STAGE_COLUMNS}
    samples.update(detect=[9.0, 0.0, 0.0], network=[40.0, 40.0, 40.0])
    stats = bench.StageStats(samples=samples, wall_s=1.0, frames=3, faces=[1, 1, 1])
    others = len(bench.STAGE_COLUMNS) - 2  # stages besides detect and network, 1 ms each
    text, ratios = bench.format_model_section("m", [("onnxruntime", 1, stats)], detect_every=3)
    assert ratios["non_network_onnxruntime"] == pytest.approx((others + 3.0) / 40.0)
    assert "detector on 1 frame in 3" in text
    _, per_frame = bench.format_model_section("m", [("onnxruntime", 1, stats)])
    assert per_frame["non_network_onnxruntime"] == pytest.approx(others / 40.0)  # p50 of detect: 0


def test_bench_frames_hold_the_requested_faces():
    from lechpe_model.detection import create_detector

    pytest.importorskip("yuface")
    detector = create_detector("yuface", max_input_side=640)  # finds every head of the grid
    for n in (1, 4, 16):
        frame = bench.make_frame(n)
        assert frame.shape == (480, 640, 3)
        assert len(detector.detect(frame)) == n
    # lechpe-bench's default (the node's): every face of the 1- and 4-face frames, on which
    # the non-network share is measured
    assert bench.build_parser().parse_args([]).detector == "blazeface_full"
    default = create_detector("blazeface_full")
    for n in (1, 4):
        assert len(default.detect(bench.make_frame(n))) == n


# -------------------------------------------------------------------- drawing


def test_axis_directions_follow_the_conventions():
    centre = (100.0, 100.0)
    frontal = axis_endpoints((0, 0, 0), centre, 50)
    np.testing.assert_allclose(frontal[:, :2], [[100, 100], [150, 100], [100, 50]], atol=1e-9)
    assert axis_endpoints((45, 0, 0), centre, 50)[0, 0] < 100  # yaw+: nose to image left
    assert axis_endpoints((0, 30, 0), centre, 50)[0, 1] < 100  # pitch+: nose up
    assert axis_endpoints((0, 0, 30), centre, 50)[2, 0] > 100  # roll+: clockwise


def test_draw_pose_axes_colours():
    image = np.zeros((200, 200, 3), np.uint8)
    draw_pose_axes(image, (60, 0, 0), (100, 100), 60)
    red = np.all(image == AXIS_COLORS[0], axis=2)
    green = np.all(image == AXIS_COLORS[1], axis=2)
    assert red[:, :95].sum() > 10 and red[:, 105:].sum() == 0  # forward to the left
    assert green[:, 105:].sum() > 10
    untouched = np.zeros((20, 20, 3), np.uint8)
    draw_pose_axes(untouched, (np.nan, 0, 0), (10, 10), 5)
    assert untouched.max() == 0
