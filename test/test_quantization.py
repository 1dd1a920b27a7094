"""INT8 quantisation: calibration crops, the shared .npy, lechpe-export --int8, the backend option."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
skdata = pytest.importorskip("skimage.data")

from lechpe_model import backends  # noqa: E402
from lechpe_model import preprocessing as pp  # noqa: E402
from lechpe_model import quantization as q  # noqa: E402
from lechpe_model.backends import tensorrt_backend as trtb  # noqa: E402
from lechpe_model.cli import export as export_cli  # noqa: E402
from lechpe_model.cli.bench import random_checkpoint  # noqa: E402

FACE_BOX = np.array([179, 87, 271, 175], np.float32)  # the astronaut's face
BASE_BOXES = [FACE_BOX, FACE_BOX] + [
    np.array([x, y, x + s, y + s], np.float32)
    for x, y, s in ((40, 300, 120), (300, 250, 150), (60, 40, 90), (380, 60, 100), (200, 330, 80))
]


def _shift(i: int) -> tuple[int, int]:
    return 7 * i - 15, 5 * i - 10


def _astronaut() -> np.ndarray:
    return cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR)


@pytest.fixture(scope="module")
def synth_folder(tmp_path_factory):
    """A lechpe-synth style folder: PNG frames + index.csv with boxes (shifted astronaut;
    frames 0 and 1 box her face, the others other parts of the photo, so the random
    network's outputs vary)."""
    folder = tmp_path_factory.mktemp("calib")
    image = _astronaut()
    rows = []
    for i in range(len(BASE_BOXES)):
        dx, dy = _shift(i)
        shifted = np.roll(image, (dy, dx), axis=(0, 1))
        name = f"synth_{i:06d}.png"
        cv2.imwrite(str(folder / name), shifted)
        x1, y1, x2, y2 = (BASE_BOXES[i] + [dx, dy, dx, dy]).tolist()
        rows.append(
            {"name": name, "yaw": 0, "pitch": 0, "roll": 0, "x1": x1, "y1": y1, "x2": x2, "y2": y2}
        )
    with open(folder / "index.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory, synth_folder):
    """lechpe-export --int8 on a random-weight resnet18 (the real CLI)."""
    folder = tmp_path_factory.mktemp("model")
    ckpt = random_checkpoint(folder / "tiny.safetensors", "resnet18", num_clusters=4)
    onnx_path = folder / "tiny.onnx"
    code = export_cli.main(
        [str(ckpt), str(onnx_path), "--int8", "--calibration-dir", str(synth_folder)]
    )
    assert code == 0
    return ckpt, onnx_path


def test_calibration_crops_follow_the_index_boxes(synth_folder):
    tensors = q.calibration_tensors(synth_folder, 64)
    assert tensors.shape == (7, 3, 64, 64) and tensors.dtype == np.float32
    # independent computation: every image cropped around its own box with the test margin
    for i in (0, 5):
        shifted = cv2.imread(str(synth_folder / f"synth_{i:06d}.png"))
        box = BASE_BOXES[i] + list(_shift(i)) * 2
        crop = pp.crop_face(shifted, pp.expand_box(box, pp.TEST_MARGIN))
        np.testing.assert_array_equal(tensors[i], pp.preprocess_crops([crop], 64)[0])
    # the face is where the box says: frames 0 and 1 (shifted differently) give the same face
    assert np.abs(tensors[0] - tensors[1]).mean() < 0.05 < np.abs(tensors[0] - tensors[2]).mean()
    assert len(q.calibration_tensors(synth_folder, 64, limit=2)) == 2


def test_plain_crop_folder_skips_unreadable_files(tmp_path, caplog):
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (30 + i, 40, 3), dtype=np.uint8) for i in range(3)]
    for i, crop in enumerate(crops):
        cv2.imwrite(str(tmp_path / f"c{i}.png"), crop)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    tensors = q.calibration_tensors(tmp_path, 32)
    np.testing.assert_array_equal(tensors, pp.preprocess_crops(crops, 32))
    assert "cannot read" in caplog.text and "1 unreadable image(s) skipped" in caplog.text
    with pytest.raises(q.CalibrationError, match="calibration folder not found"):
        q.calibration_tensors(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(q.CalibrationError, match="no usable image"):
        q.calibration_tensors(tmp_path / "empty")


def test_npy_round_trip_feeds_the_tensorrt_calibrator(tmp_path, synth_folder):
    tensors = q.calibration_tensors(synth_folder, 64)
    npy = q.save_calibration_tensors(tmp_path / "calib.npy", tensors)
    np.testing.assert_array_equal(q.load_calibration_tensors(npy, 64), tensors)
    np.testing.assert_array_equal(q.calibration_tensors(npy, 64), tensors)
    # TensorRT's calibrator reads the same file: batches of 4, the last padded by repetition
    batches, sha = trtb.calibration_source(npy, 4, 64, pp.IMAGENET_MEAN, pp.IMAGENET_STD)
    batches = list(batches)
    assert [b.shape for b in batches] == [(4, 3, 64, 64)] * 2
    np.testing.assert_array_equal(np.concatenate(batches)[:7], tensors)
    np.testing.assert_array_equal(batches[1][3], tensors[4])  # padded by repetition
    assert sha == q.tensors_sha256(tensors)
    # ... and the synth folder itself gives the same batches and the same cache name
    folder_batches, folder_sha = trtb.calibration_source(
        synth_folder, 4, 64, pp.IMAGENET_MEAN, pp.IMAGENET_STD
    )
    np.testing.assert_array_equal(np.concatenate(list(folder_batches)), np.concatenate(batches))
    assert folder_sha == sha
    assert trtb.calibration_cache_path(tmp_path, "ab" * 32, sha).name == (
        f"calib-{'ab' * 8}-{sha[:12]}.cache"
    )
    with pytest.raises(q.CalibrationError, match=r"must be \(N, 3, 224, 224\) float32"):
        q.load_calibration_tensors(npy, 224)
    np.save(tmp_path / "bad.npy", np.zeros((2, 3, 8, 8), np.float64))
    with pytest.raises(q.CalibrationError, match="float64"):
        q.load_calibration_tensors(tmp_path / "bad.npy")


def test_export_int8_writes_a_quantised_model_with_the_metadata(exported, synth_folder):
    import onnx

    _, onnx_path = exported
    int8_path = onnx_path.with_name("tiny.int8.onnx")
    npy = onnx_path.with_name("tiny.calib.npy")
    assert int8_path.is_file() and npy.is_file()
    np.testing.assert_array_equal(np.load(npy), q.calibration_tensors(synth_folder))
    model = onnx.load(str(int8_path))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    props = {p.key: p.value for p in model.metadata_props}
    fp32_props = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert props[q.PRECISION_KEY] == "int8"
    assert props[q.CALIBRATION_HASH_KEY] == q.tensors_sha256(np.load(npy))
    for key in ("lechpe_metadata", "lechpe_source_sha256"):
        assert props[key] == fp32_props[key]
    # int8 weights are about a quarter of the fp32 file
    assert int8_path.stat().st_size < 0.4 * onnx_path.stat().st_size


def test_int8_backend_tracks_fp32_on_face_crops(exported, synth_folder, tmp_path):
    _, onnx_path = exported
    batch = q.calibration_tensors(synth_folder)
    fp32 = backends.create_backend("onnxruntime", onnx_path, device="cpu")
    int8 = backends.create_backend("onnxruntime", onnx_path, device="cpu", onnx_precision="int8")
    assert int8.onnx_path.name == "tiny.int8.onnx" and int8.precision == "int8"
    assert fp32.onnx_path == onnx_path and fp32.precision == "fp32"
    a, b = fp32.infer(batch), int8.infer(batch)
    assert b.angles.shape == a.angles.shape and b.assignment.shape == a.assignment.shape
    # the random heads spread the angles over tens of degrees; int8 stays close
    assert a.angles.std() > 3.0
    assert np.abs(b.angles - a.angles).mean() < 0.25 * np.abs(a.angles - a.angles.mean(0)).mean()
    np.testing.assert_allclose(b.assignment.sum(1), 1.0, atol=1e-4)


def test_int8_backend_quantises_into_the_cache_or_says_what_is_missing(
    exported, synth_folder, tmp_path
):
    _, onnx_path = exported
    lone = tmp_path / "lone.onnx"
    lone.write_bytes(onnx_path.read_bytes())
    with pytest.raises(backends.BackendUnavailable, match=r"lechpe-export --int8"):
        backends.create_backend("onnxruntime", lone, device="cpu", onnx_precision="int8")
    with pytest.raises(ValueError, match="onnx_precision must be one of"):
        backends.create_backend("onnxruntime", lone, device="cpu", onnx_precision="fp8")
    npy = onnx_path.with_name("tiny.calib.npy")
    cache = tmp_path / "cache"
    first = backends.create_backend(
        "onnxruntime",
        lone,
        device="cpu",
        onnx_precision="int8",
        calibration_dir=npy,
        cache_dir=cache,
    )
    assert first.onnx_path.parent == cache / "onnx" and first.onnx_path.name.endswith(".int8.onnx")
    stamp = first.onnx_path.stat().st_mtime_ns
    again = backends.create_backend(
        "onnxruntime",
        lone,
        device="cpu",
        onnx_precision="int8",
        calibration_dir=npy,
        cache_dir=cache,
    )
    assert again.onnx_path == first.onnx_path and again.onnx_path.stat().st_mtime_ns == stamp
    # an INT8 file passed directly is used as it is
    direct = backends.create_backend(
        "onnxruntime", first.onnx_path, device="cpu", onnx_precision="int8"
    )
    assert direct.onnx_path == first.onnx_path


def test_export_int8_without_calibration_is_a_clear_error(exported, tmp_path, capsys):
    ckpt, _ = exported
    code = export_cli.main([str(ckpt), str(tmp_path / "m.onnx"), "--int8"])
    assert code == 1
    assert "--int8 needs --calibration-dir" in capsys.readouterr().err


def test_qoperator_format_and_keep_float_groups(exported, synth_folder, tmp_path):
    import onnx

    _, onnx_path = exported
    tensors = q.calibration_tensors(synth_folder)
    target = q.quantize_onnx_int8(
        onnx_path, tmp_path / "qop.onnx", tensors, quant_format="qoperator", keep_float=()
    )
    ops = [n.op_type for n in onnx.load(str(target)).graph.node]
    assert "QLinearConv" in ops and ops.count("Conv") == 0
    with pytest.raises(ValueError, match="quant_format must be one of"):
        q.quantize_onnx_int8(onnx_path, tmp_path / "x.onnx", tensors, quant_format="int4")
    with pytest.raises(ValueError, match="keep_float: unknown group"):
        q.quantize_onnx_int8(onnx_path, tmp_path / "x.onnx", tensors, keep_float=("middle",))


def _stats(**ms_per_stage):
    from lechpe_model.cli import bench

    samples = {s: [ms_per_stage.get(s, 0.0)] * 3 for s in bench.STAGE_COLUMNS}
    return bench.StageStats(samples=samples, wall_s=1.0, frames=3, faces=[1, 1, 1])


def test_bench_int8_ratio_and_non_network_share_from_the_same_run():
    from lechpe_model.cli import bench

    rows = [
        ("onnxruntime", 1, _stats(network=30.0, detect=6.0, decode=1.0)),
        ("onnxruntime-int8", 1, _stats(network=12.0, detect=6.0, decode=1.0)),
        ("onnxruntime", 8, _stats(network=200.0)),
        ("onnxruntime-int8", 8, _stats(network=80.0)),
    ]
    lines, ratios = bench.int8_section("default", rows)
    assert ratios == {"int8_speedup_1": 2.5, "int8_speedup_8": 2.5}
    assert "30.00 / 12.00 ms = **2.50x** (target >= 2x: meets)" in lines[0]
    all_rows = {
        "resnet50 (random weights)": [("onnxruntime", 1, _stats(network=40.0, detect=8.0))],
        "default (shipped MobileNetV2 model)": rows,
    }
    share, share_ratios = bench.non_network_section(all_rows, detect_every=1)
    assert share_ratios["non_network_share_resnet50"] == pytest.approx(8.0 / 40.0)
    assert share_ratios["non_network_share_default"] == pytest.approx(7.0 / 30.0)
    assert "**20%** (target <= 10%: misses)" in share[0]
    assert "**23%** (target <= 50%: meets)" in share[1]
