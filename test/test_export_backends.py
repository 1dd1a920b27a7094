"""ONNX export and the torch / ONNX Runtime backends (real exports, real sessions)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from lechpe_model import backends  # noqa: E402
from lechpe_model import preprocessing as pp  # noqa: E402
from lechpe_model.backends.onnxruntime_backend import select_providers  # noqa: E402
from lechpe_model.checkpoint import read_metadata  # noqa: E402
from lechpe_model.cli.bench import random_checkpoint  # noqa: E402
from lechpe_model.export import export_onnx  # noqa: E402

TOLERANCE_DEG = 0.05


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    ckpt = random_checkpoint(folder / "tiny.safetensors", "resnet18", num_clusters=4)
    onnx_path = export_onnx(ckpt, folder / "tiny.onnx")
    return ckpt, onnx_path


@pytest.fixture(scope="module")
def torch_backend(model_files):
    return backends.create_backend("torch", model_files[0], device="cpu")


@pytest.fixture(scope="module")
def ort_backend(model_files):
    return backends.create_backend("onnxruntime", model_files[1], device="cpu")


@pytest.fixture(scope="module")
def face_batch():
    """Real face crops: the astronaut, mirrored, shifted and zoomed, via the shared preprocessing."""
    data = pytest.importorskip("skimage.data")
    import cv2

    img = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    box = np.array([179, 87, 271, 175], dtype=np.float32)  # face of the astronaut
    crops = [
        pp.crop_face(img, pp.expand_box(box, pp.TEST_MARGIN)),
        pp.crop_face(
            img[:, ::-1].copy(),
            pp.expand_box(box[[2, 1, 0, 3]] * [-1, 1, -1, 1] + [512, 0, 512, 0], pp.TEST_MARGIN),
        ),
        pp.crop_face(img, pp.expand_box(box + 10, 0.1)),
        pp.crop_face(img, pp.expand_box(box, 0.6)),
    ]
    return pp.preprocess_crops(crops)


def test_onnx_graph_names_dynamic_batch_and_metadata(model_files):
    ckpt, onnx_path = model_files
    model = onnx.load(str(onnx_path))
    onnx.checker.check_model(model, full_check=True)
    (inp,) = model.graph.input
    assert inp.name == "image"
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 224, 224]
    assert [o.name for o in model.graph.output] == ["angles", "uncertainty", "assignment"]
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["lechpe_metadata"]) == read_metadata(ckpt).to_dict()
    assert backends.read_onnx_metadata(onnx_path) == read_metadata(ckpt)


def test_export_is_deterministic(model_files, tmp_path):
    ckpt, onnx_path = model_files
    again = export_onnx(ckpt, tmp_path / "again.onnx")
    assert again.read_bytes() == onnx_path.read_bytes()


def assert_close(a: backends.PoseOutputs, b: backends.PoseOutputs) -> None:
    assert np.abs(a.angles - b.angles).max() < TOLERANCE_DEG
    assert np.abs(a.uncertainty - b.uncertainty).max() < TOLERANCE_DEG
    assert np.abs(a.assignment - b.assignment).max() < 1e-4


def test_ort_equals_torch_on_random_inputs(torch_backend, ort_backend):
    batch = np.random.default_rng(0).standard_normal((5, 3, 224, 224)).astype(np.float32)
    ref, out = torch_backend.infer(batch), ort_backend.infer(batch)
    # the comparison is not trivial: outputs vary over tens of degrees
    assert np.ptp(ref.angles, axis=0).max() > 5.0
    assert_close(ref, out)
    np.testing.assert_allclose(ref.assignment.sum(axis=1), 1.0, atol=1e-5)


def test_ort_equals_torch_on_real_face_crops(torch_backend, ort_backend, face_batch):
    ref, out = torch_backend.infer(face_batch), ort_backend.infer(face_batch)
    assert np.ptp(ref.angles, axis=0).max() > 1.0
    assert_close(ref, out)


def test_batched_equals_one_by_one(ort_backend, face_batch):
    together = ort_backend.infer(face_batch)
    for i in range(len(face_batch)):
        single = ort_backend.infer(face_batch[i : i + 1])
        np.testing.assert_allclose(single.angles[0], together.angles[i], atol=1e-3)


@pytest.mark.parametrize("which", ["torch", "onnxruntime"])
def test_empty_batch_and_bad_shapes(which, torch_backend, ort_backend):
    backend = torch_backend if which == "torch" else ort_backend
    out = backend.infer(np.zeros((0, 3, 224, 224), np.float32))
    assert out.angles.shape == (0, 3) and out.uncertainty.shape == (0, 3)
    assert out.assignment.shape == (0, 4) and len(out) == 0
    with pytest.raises(ValueError, match=r"\(N, 3, 224, 224\)"):
        backend.infer(np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(ValueError, match="float32"):
        backend.infer(np.zeros((1, 3, 224, 224), np.float64))


def test_backend_metadata_and_names(torch_backend, ort_backend, model_files):
    meta = read_metadata(model_files[0])
    assert torch_backend.metadata == meta and ort_backend.metadata == meta
    assert (torch_backend.name, ort_backend.name) == ("torch", "onnxruntime")
    assert ort_backend.providers == ["CPUExecutionProvider"]


def test_onnxruntime_from_checkpoint_exports_once_into_cache(model_files, tmp_path):
    ckpt, onnx_path = model_files
    ckpt = Path(shutil.copy(ckpt, tmp_path / "alone.safetensors"))  # no sibling .onnx
    first = backends.create_backend("onnxruntime", ckpt, cache_dir=tmp_path)
    cached = list((tmp_path / "onnx").glob("*.onnx"))
    assert cached == [first.onnx_path]
    assert cached[0].read_bytes() == onnx_path.read_bytes()
    stamp = cached[0].stat().st_mtime_ns
    second = backends.create_backend("onnxruntime", ckpt, cache_dir=tmp_path)
    assert second.onnx_path == cached[0] and cached[0].stat().st_mtime_ns == stamp


def test_shipped_sibling_onnx_is_used_only_when_exported_from_the_checkpoint(
    model_files, tmp_path, caplog
):
    ckpt, onnx_path = model_files  # tiny.onnx was exported from tiny.safetensors
    cache = tmp_path / "cache"
    assert backends.onnx_for_model(ckpt, cache_dir=cache) == onnx_path
    assert not (cache / "onnx").exists()  # nothing exported: no torch needed
    other = random_checkpoint(tmp_path / "other.safetensors", "resnet18", num_clusters=4, seed=7)
    shutil.copy(onnx_path, tmp_path / "other.onnx")  # a stale export beside a new checkpoint
    with caplog.at_level(logging.WARNING):
        used = backends.onnx_for_model(other, cache_dir=cache)
    assert used.parent == cache / "onnx" and "was not exported from" in caplog.text


def test_corrupt_sibling_onnx_is_ignored_with_a_warning(model_files, tmp_path, caplog):
    # Before: the sibling was parsed unguarded and a valid checkpoint refused to start.
    ckpt, _ = model_files
    valid = Path(shutil.copy(ckpt, tmp_path / "model.safetensors"))
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07garbage, not a protobuf" * 10)
    cache = tmp_path / "cache"
    with caplog.at_level(logging.WARNING):
        backend = backends.create_backend("onnxruntime", valid, cache_dir=cache)
    assert backend.onnx_path.parent == cache / "onnx"  # exported from the checkpoint instead
    assert f"{tmp_path / 'model.onnx'} is unreadable" in caplog.text
    assert backend.infer(np.zeros((1, 3, 224, 224), np.float32)).angles.shape == (1, 3)


def test_auto_prefers_onnxruntime_without_tensorrt(model_files, caplog):
    if "tensorrt" in backends.available_backends():
        pytest.skip("TensorRT usable here: auto picks it (covered by test_tensorrt.py)")
    with caplog.at_level(logging.INFO, logger="lechpe_model.backends"):
        backend = backends.create_backend("auto", model_files[1])
    assert backend.name == "onnxruntime"
    assert "picked onnxruntime" in caplog.text
    assert "tensorrt: TensorRT is not installed" in caplog.text or "tensorrt" in caplog.text
    assert set(backends.available_backends()) >= {"onnxruntime", "torch"}


def test_errors_name_the_problem(model_files, tmp_path):
    ckpt, onnx_path = model_files
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        backends.create_backend("onnxruntime", tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="unknown backend 'openvino'"):
        backends.create_backend("openvino", onnx_path)
    with pytest.raises(backends.BackendUnavailable, match="not the ONNX file"):
        backends.create_backend("torch", onnx_path)
    with pytest.raises(backends.BackendUnavailable, match="CUDA execution provider"):
        backends.create_backend("onnxruntime", onnx_path, device="cuda")
    # an ONNX file that was not exported by lechpe-export
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["image"], ["angles"])
    graph = helper.make_graph(
        [node],
        "plain",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("angles", TensorProto.FLOAT, [1, 3])],
    )
    plain = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph), str(plain))
    with pytest.raises(ValueError, match="lechpe_metadata"):
        backends.create_backend("onnxruntime", plain)


def test_select_providers():
    cpu_only = ["AzureExecutionProvider", "CPUExecutionProvider"]
    gpu = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert select_providers(cpu_only, "auto") == ["CPUExecutionProvider"]
    assert select_providers(gpu, "auto") == gpu
    assert select_providers(gpu, "cpu") == ["CPUExecutionProvider"]
    assert select_providers(gpu, "cuda:1") == gpu
    with pytest.raises(backends.BackendUnavailable, match="onnxruntime-gpu"):
        select_providers(cpu_only, "cuda")
