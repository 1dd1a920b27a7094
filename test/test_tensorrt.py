"""TensorRT backend: cache-key and rebuild rules everywhere; engines where TensorRT + a GPU exist."""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest

from lechpe_model import backends
from lechpe_model.backends import tensorrt_backend as trtb
from lechpe_model.preprocessing import preprocess_crops

KEY = trtb.EngineKey(
    onnx_sha256="ab" * 32,
    tensorrt_version="10.3.0",
    gpu_name="NVIDIA Jetson Orin",
    compute_capability="8.7",
    precision="fp16",
    max_batch=16,
)

TRT_REASON = trtb.tensorrt_unavailable_reason()
needs_trt = pytest.mark.skipif(
    TRT_REASON is not None, reason=f"TensorRT engine tests need TensorRT and a GPU: {TRT_REASON}"
)


# ------------------------------------------------------------- pure cache logic


def test_key_digest_is_stable_and_field_sensitive():
    assert KEY.digest() == trtb.EngineKey(**dataclasses.asdict(KEY)).digest()
    assert len(KEY.digest()) == 64
    for name, other in [
        ("tensorrt_version", "10.4.0"),
        ("gpu_name", "NVIDIA GeForce RTX 4090"),
        ("compute_capability", "8.9"),
        ("onnx_sha256", "cd" * 32),
        ("precision", "int8"),
        ("max_batch", 8),
    ]:
        assert dataclasses.replace(KEY, **{name: other}).digest() != KEY.digest(), name


def test_file_name_is_shared_across_tensorrt_versions_and_gpus(tmp_path):
    engine, record = trtb.engine_paths(tmp_path, KEY)
    assert engine == tmp_path / "tensorrt" / "abababababababab-fp16-b16.engine"
    assert record.with_suffix(".engine") == engine
    moved = dataclasses.replace(KEY, tensorrt_version="10.4.0", gpu_name="other")
    assert trtb.engine_paths(tmp_path, moved) == (engine, record)  # rebuilt in place


def test_rebuild_reason():
    stored = dataclasses.asdict(KEY)
    assert trtb.rebuild_reason(stored, KEY, engine_exists=True) is None
    assert trtb.rebuild_reason(stored, KEY, True, force=True).startswith("rebuild forced")
    assert trtb.rebuild_reason(stored, KEY, engine_exists=False) == "no cached engine"
    assert "no readable cache record" in trtb.rebuild_reason(None, KEY, True)
    newer = dataclasses.replace(KEY, tensorrt_version="10.4.0")
    assert trtb.rebuild_reason(stored, newer, True) == (
        "TensorRT version changed: '10.3.0' -> '10.4.0'"
    )
    other_gpu = dataclasses.replace(KEY, gpu_name="NVIDIA A100", compute_capability="8.0")
    reason = trtb.rebuild_reason(stored, other_gpu, True)
    assert "GPU changed: 'NVIDIA Jetson Orin' -> 'NVIDIA A100'" in reason
    assert "GPU compute capability changed: '8.7' -> '8.0'" in reason


def test_record_round_trip(tmp_path):
    _, record = trtb.engine_paths(tmp_path, KEY)
    trtb._atomic_write(record, json.dumps(dataclasses.asdict(KEY)).encode())
    assert trtb.rebuild_reason(trtb.read_record(record), KEY, True) is None
    record.write_text("{corrupt")
    assert trtb.read_record(record) is None


def test_calibration_batches_use_the_shared_preprocessing(tmp_path):
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8) for i in range(5)]
    for i, crop in enumerate(crops):
        cv2.imwrite(str(tmp_path / f"face_{i}.png"), crop)
    (tmp_path / "notes.txt").write_text("not an image")
    files = trtb.calibration_files(tmp_path)
    assert [f.name for f in files] == [f"face_{i}.png" for i in range(5)]
    batches = list(trtb.calibration_batches(files, 2, 64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
    assert [b.shape for b in batches] == [(2, 3, 64, 64)] * 3
    expected = preprocess_crops(crops, 64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    np.testing.assert_array_equal(np.concatenate(batches)[:5], expected)
    np.testing.assert_array_equal(batches[2][1], batches[2][0])  # last batch padded
    with pytest.raises(FileNotFoundError, match="no face crops"):
        trtb.calibration_files(_empty_dir(tmp_path))
    with pytest.raises(FileNotFoundError, match="not found"):
        trtb.calibration_files(tmp_path / "missing")


def _empty_dir(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    return empty


# --------------------------------------------------------- clear errors when absent


def test_clear_error_without_tensorrt_or_gpu(tmp_path):
    if TRT_REASON is None:
        pytest.skip("TensorRT and a GPU are usable here")
    model = tmp_path / "m.onnx"
    model.write_bytes(b"placeholder: the backend refuses before reading it")
    with pytest.raises(backends.BackendUnavailable) as info:
        backends.create_backend("tensorrt", model)
    message = str(info.value)
    assert message == TRT_REASON
    assert "onnxruntime" in message
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert "TensorRT is not installed" in message and "pip install tensorrt" in message
    else:
        assert "no CUDA GPU" in message or "cannot build engines" in message
    assert "tensorrt" not in backends.available_backends()
    with pytest.raises(backends.BackendUnavailable, match="NVIDIA GPUs only"):
        backends.create_backend("tensorrt", model, device="cpu")


def test_gpu_identity_agrees_with_torch():
    torch = pytest.importorskip("torch")
    identity = trtb.gpu_identity()
    assert (identity is not None) == torch.cuda.is_available()
    if identity is not None:
        assert identity[0] == torch.cuda.get_device_name(0)


# ---------------------------------------------------- real engines (TensorRT + GPU)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    pytest.importorskip("torch")
    from lechpe_model.cli.bench import random_checkpoint
    from lechpe_model.export import export_onnx

    folder = tmp_path_factory.mktemp("trt")
    ckpt = random_checkpoint(folder / "tiny.safetensors", "resnet18")
    return export_onnx(ckpt, folder / "tiny.onnx")


@needs_trt
def test_engine_matches_onnxruntime_and_is_cached(tiny_onnx, tmp_path):
    batch = np.random.default_rng(0).standard_normal((3, 3, 224, 224)).astype(np.float32)
    reference = backends.create_backend("onnxruntime", tiny_onnx, device="cpu").infer(batch)
    built = backends.create_backend(
        "tensorrt", tiny_onnx, precision="fp32", max_batch=4, cache_dir=tmp_path
    )
    assert built.build_reason == "no cached engine" and built.engine_path.is_file()
    out = built.infer(batch)
    assert np.abs(out.angles - reference.angles).max() < 0.05
    assert np.abs(out.uncertainty - reference.uncertainty).max() < 0.05
    assert built.infer(np.concatenate([batch, batch])).angles.shape == (6, 3)  # split > max_batch
    assert built.infer(batch[:0]).assignment.shape == (0, 4)
    built.close()

    reused = backends.create_backend(
        "tensorrt", tiny_onnx, precision="fp32", max_batch=4, cache_dir=tmp_path
    )
    assert reused.build_reason is None
    np.testing.assert_allclose(reused.infer(batch).angles, out.angles, atol=1e-3)
    reused.close()

    record = json.loads(reused.record_path.read_text())
    record["tensorrt_version"] = "0.0.1"
    reused.record_path.write_text(json.dumps(record))
    rebuilt = backends.create_backend(
        "tensorrt", tiny_onnx, precision="fp32", max_batch=4, cache_dir=tmp_path
    )
    assert rebuilt.build_reason.startswith("TensorRT version changed: '0.0.1' ->")
    rebuilt.close()
    forced = backends.create_backend(
        "tensorrt", tiny_onnx, precision="fp32", max_batch=4, cache_dir=tmp_path, force_rebuild=True
    )
    assert forced.build_reason.startswith("rebuild forced")
    forced.close()


@needs_trt
def test_fp16_and_int8_engines(tiny_onnx, tmp_path):
    batch = np.random.default_rng(1).standard_normal((2, 3, 224, 224)).astype(np.float32)
    reference = backends.create_backend("onnxruntime", tiny_onnx, device="cpu").infer(batch)
    fp16 = backends.create_backend("tensorrt", tiny_onnx, max_batch=2, cache_dir=tmp_path)
    assert fp16.key.precision == "fp16"
    assert np.abs(fp16.infer(batch).angles - reference.angles).max() < 2.0
    fp16.close()
    crops = tmp_path / "crops"
    crops.mkdir()
    rng = np.random.default_rng(2)
    for i in range(16):
        cv2.imwrite(str(crops / f"{i:02d}.png"), rng.integers(0, 256, (96, 96, 3), dtype=np.uint8))
    int8 = backends.create_backend(
        "tensorrt",
        tiny_onnx,
        precision="int8",
        max_batch=2,
        cache_dir=tmp_path,
        calibration_dir=crops,
        calibration_batch=8,
    )
    assert list((tmp_path / "tensorrt").glob("calib-*.cache"))
    assert np.isfinite(int8.infer(batch).angles).all()
    int8.close()


@needs_trt
def test_int8_engine_calibrates_on_the_shared_npy(tiny_onnx, tmp_path):
    from lechpe_model.quantization import save_calibration_tensors, tensors_sha256

    rng = np.random.default_rng(3)
    crops = [rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for _ in range(16)]
    tensors = preprocess_crops(crops)
    npy = save_calibration_tensors(tmp_path / "model.calib.npy", tensors)
    int8 = backends.create_backend(
        "tensorrt",
        tiny_onnx,
        precision="int8",
        max_batch=2,
        cache_dir=tmp_path,
        calibration_dir=npy,
        calibration_batch=8,
    )
    cache = trtb.calibration_cache_path(tmp_path, int8.key.onnx_sha256, tensors_sha256(tensors))
    assert cache.is_file() and cache.stat().st_size > 0
    batch = tensors[:2]
    reference = backends.create_backend("onnxruntime", tiny_onnx, device="cpu").infer(batch)
    assert np.abs(int8.infer(batch).angles - reference.angles).max() < 10.0
    int8.close()
