"""Calibrated uncertainty: fit on known sigma, metadata round trip, same from torch and ORT."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import spearmanr

from lechpe_model import uncertainty as unc
from lechpe_model.checkpoint import CheckpointError, read_metadata


def synthetic_faces(n: int, seed: int):
    """Outputs whose true error sigma is a known function of |yaw| and the raw spread."""
    rng = np.random.default_rng(seed)
    angles = rng.uniform(-90, 90, (n, 3)) * np.array([1.0, 0.5, 0.4])
    raw = rng.uniform(5, 40, (n, 3))
    q = rng.dirichlet(np.ones(4), n)
    a = np.abs(angles[:, 0]) / 90
    sigma = np.column_stack(
        [
            np.exp(0.3 + 0.5 * np.log(raw[:, 0]) + 1.2 * a),
            np.exp(1.0 + 0.8 * a),
            np.exp(-0.5 + 0.6 * np.log(raw[:, 2])),
        ]
    )
    err = np.abs(rng.standard_normal((n, 3)) * sigma)
    return angles, raw, q, sigma, err


def test_fit_recovers_known_sigma_coverage_and_ranking():
    angles, raw, q, _, err = synthetic_faces(4000, seed=0)
    cal = unc.fit_calibration(angles, raw, q, err)
    t_angles, t_raw, t_q, t_sigma, t_err = synthetic_faces(4000, seed=1)
    sigma = cal.sigma(t_angles, t_raw, t_q)
    stats = unc.rank_and_coverage(sigma, t_err)
    truth = unc.rank_and_coverage(t_sigma, t_err)
    for k, name in enumerate(("yaw", "pitch", "roll")):
        # a Gaussian error is within +-1 sigma 68.3 % of the time
        assert stats["coverage_1sigma"][name] == pytest.approx(0.683, abs=0.03)
        assert stats["coverage_2sigma"][name] == pytest.approx(0.954, abs=0.03)
        # ranks the errors as well as the true sigma does
        assert stats["spearman"][name] > 0.9 * truth["spearman"][name] > 0.1
        # and is the true sigma (median ratio), not just a monotone function of it
        assert np.median(sigma[:, k] / t_sigma[:, k]) == pytest.approx(1.0, abs=0.08)
    assert stats["faces"] == 4000


def test_rank_and_coverage_hand_computed():
    sigma = np.array([[1.0, 1, 1], [2, 2, 2], [3, 3, 3], [4, 4, 4]])
    err = np.array([[0.5, 2, 0], [1, 3, 0], [4, 1, 0], [3.5, 9, 0]])
    out = unc.rank_and_coverage(sigma, err)
    assert out["coverage_1sigma"]["yaw"] == pytest.approx(0.75)  # 4 > 3 only
    assert out["coverage_2sigma"]["pitch"] == pytest.approx(0.75)  # 9 > 8 only
    assert out["spearman"]["yaw"] == pytest.approx(spearmanr([1, 2, 3, 4], [0.5, 1, 4, 3.5])[0])
    assert np.isnan(out["spearman"]["roll"])  # constant error: undefined
    assert out["median_sigma"]["pitch"] == pytest.approx(2.5)


def test_uncalibrated_publishes_the_raw_spread_and_bad_dicts_are_named():
    raw = np.array([[10.0, 20.0, 30.0]])
    np.testing.assert_array_equal(unc.apply_calibration({}, np.zeros((1, 3)), raw, [[1.0]]), raw)
    good = unc.fit_calibration(*synthetic_faces(200, 0)[:3], synthetic_faces(200, 0)[4]).to_dict()
    bad = json.loads(json.dumps(good))
    bad["scale"]["roll"] = -1.0
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        unc.UncertaintyCalibration.from_dict(bad)
    bad = dict(good, kind="isotonic-v9")
    with pytest.raises(ValueError, match="kind 'isotonic-v9' is not supported"):
        unc.UncertaintyCalibration.from_dict(bad)
    # the published sigma is finite even for absurd inputs
    out = unc.apply_calibration(good, np.full((1, 3), 1e6), np.full((1, 3), 1e9), [[0.5, 0.5]])
    assert np.all(np.isfinite(out))


@pytest.fixture(scope="module")
def calibrated_model(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from lechpe_model.checkpoint import save_checkpoint
    from lechpe_model.network import LECHPENet

    folder = tmp_path_factory.mktemp("calibrated")
    torch.manual_seed(0)
    net = LECHPENet("mobilenet_v3_small", num_clusters=3).eval()
    angles, raw, q, _, err = synthetic_faces(300, 2)
    q = np.random.default_rng(0).dirichlet(np.ones(3), 300)
    cal = unc.fit_calibration(angles, raw, q, err, fitted_on="test").to_dict()
    path = folder / "cal.safetensors"
    save_checkpoint(
        path,
        net,
        {"data": {"test_margin": 0.25}},
        input_size=64,
        **{"uncertainty_calibration": cal},
    )
    plain = folder / "plain.safetensors"
    save_checkpoint(plain, net, {}, input_size=64)
    return path, plain, cal


def test_metadata_round_trip(calibrated_model, tmp_path):
    from lechpe_model.checkpoint import load_checkpoint

    path, plain, cal = calibrated_model
    assert read_metadata(path).uncertainty_calibration == cal
    _, meta = load_checkpoint(path)
    assert meta.uncertainty_calibration == cal
    # an uncalibrated checkpoint has no such key at all (older readers stay happy)
    assert "uncertainty_calibration" not in read_metadata(plain).to_json()
    assert read_metadata(plain).uncertainty_calibration == {}
    # a broken calibration in the metadata is refused with the field's name
    data = json.loads(read_metadata(path).to_json())
    data["uncertainty_calibration"]["weights"]["yaw"] = [1.0, 2.0]
    from lechpe_model.checkpoint import ModelMetadata

    with pytest.raises(CheckpointError, match="metadata field uncertainty_calibration"):
        ModelMetadata.from_dict(data, source="x")


def test_torch_and_onnxruntime_publish_the_same_calibrated_uncertainty(calibrated_model, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import cv2
    from skimage import data as skdata

    from lechpe_model.backends import create_backend
    from lechpe_model.detection import FaceDetection, FaceDetector
    from lechpe_model.export import export_onnx
    from lechpe_model.pipeline import PoseEstimator
    from lechpe_model.preprocessing import crop_face, preprocess_crops

    path, _, cal = calibrated_model
    onnx_path = export_onnx(path, tmp_path / "cal.onnx")

    class FixedBox(FaceDetector):
        name = "fixed"

        def _detect(self, image):
            return [FaceDetection(np.array([179, 62, 267, 173], np.float32), 0.9)]

        def detect(self, image):
            return self._detect(image)

    frame = cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR)
    results = {}
    for name, model in (("torch", path), ("onnxruntime", onnx_path)):
        backend = create_backend(name, model, device="cpu")
        assert backend.metadata.uncertainty_calibration == cal
        est = PoseEstimator(FixedBox(), backend)
        face = est.estimate(frame).faces[0]
        batch = preprocess_crops([crop_face(frame, face.crop_box)], 64, est.mean, est.std)
        raw = backend.infer(batch)
        expected = unc.UncertaintyCalibration.from_dict(cal).sigma(
            raw.angles, raw.uncertainty, raw.assignment
        )[0]
        np.testing.assert_allclose(face.uncertainty, expected, rtol=1e-5)
        assert not np.allclose(face.uncertainty, raw.uncertainty[0], rtol=0.01)
        results[name] = face.uncertainty
    np.testing.assert_allclose(results["torch"], results["onnxruntime"], rtol=1e-3)


def test_error_head_fit_and_the_loglinear_v2_calibration():
    """Latents whose error scale is a known linear function: the fitted head ranks
    the errors like the true scale, and a v2 calibration uses it."""
    rng = np.random.default_rng(3)

    def faces(n):
        latent = rng.normal(size=(n, 16))
        log_sigma = np.column_stack([latent[:, 0], 0.5 * latent[:, 1], -latent[:, 2]]) + 1.0
        err = np.abs(rng.standard_normal((n, 3))) * np.exp(log_sigma)
        return latent, log_sigma, err

    latent, _, err = faces(3000)
    weight, bias = unc.fit_error_head(latent, err, ridge=1.0)
    assert weight.shape == (3, 16) and bias.shape == (3,) and weight.dtype == np.float32
    # log|e| = log sigma + log|z|, E log|z| = -0.635: the fit is log sigma shifted by it
    np.testing.assert_allclose(weight[:, :3], np.diag([1.0, 0.5, -1.0]), atol=0.1)
    np.testing.assert_allclose(bias, 1.0 - 0.635, atol=0.1)
    t_latent, t_log_sigma, t_err = faces(3000)
    predicted = t_latent @ weight.T + bias
    angles, raw, q = np.zeros((3000, 3)), np.full((3000, 3), 10.0), np.full((3000, 2), 0.5)
    cal = unc.fit_calibration(angles, raw, q, err, log_error=latent @ weight.T + bias)
    assert cal.uses_error_head and cal.to_dict()["kind"] == "loglinear-v2"
    assert cal.to_dict()["features"][-3:] == list(unc.ERROR_HEAD_FEATURE_NAMES)
    sigma = cal.sigma(angles, raw, q, predicted)
    stats, truth = (unc.rank_and_coverage(s, t_err) for s in (sigma, np.exp(t_log_sigma)))
    for name in ("yaw", "pitch", "roll"):
        assert stats["spearman"][name] > 0.95 * truth["spearman"][name] > 0.2
        assert stats["coverage_1sigma"][name] == pytest.approx(0.683, abs=0.03)
    # round trip, and a v2 calibration without the head's output is refused by name
    again = unc.UncertaintyCalibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    np.testing.assert_allclose(again.sigma(angles, raw, q, predicted), sigma)
    with pytest.raises(ValueError, match="uses the error head's output"):
        unc.apply_calibration(cal.to_dict(), angles, raw, q)
    # a v1 calibration ignores a log_error it does not use
    v1 = unc.fit_calibration(angles, raw, q, err)
    np.testing.assert_array_equal(v1.sigma(angles, raw, q, predicted), v1.sigma(angles, raw, q))
    with pytest.raises(ValueError, match="ridge must be > 0"):
        unc.fit_error_head(latent, err, ridge=0.0)
    with pytest.raises(ValueError, match=r"\(N, D\) latents and \(N, 3\) errors"):
        unc.fit_error_head(latent[:10], err, ridge=1.0)


def test_error_head_model_through_every_cpu_backend(tmp_path):
    """A checkpoint with an error head: the ONNX graph has the fourth output, torch
    and ONNX Runtime give the same log_error and publish the same v2 sigma."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    import onnx

    from lechpe_model.backends import create_backend
    from lechpe_model.checkpoint import ModelMetadata, load_checkpoint, save_checkpoint
    from lechpe_model.export import export_onnx
    from lechpe_model.network import LECHPENet

    torch.manual_seed(0)
    net = LECHPENet("mobilenet_v3_small", num_clusters=3, mirror_average=True).eval()
    rng = np.random.default_rng(0)
    net.set_error_head(rng.normal(0, 0.05, (3, 576)), np.array([1.0, 1.5, 0.5]))
    n = 200
    angles, raw, _, _, err = synthetic_faces(n, 4)
    q = rng.dirichlet(np.ones(3), n)
    cal = unc.fit_calibration(angles, raw, q, err, log_error=rng.normal(1, 0.5, (n, 3)))
    path = tmp_path / "head.safetensors"
    save_checkpoint(path, net, {}, input_size=64, uncertainty_calibration=cal.to_dict())
    model, meta = load_checkpoint(path)
    assert meta.error_head and model.error_head is not None
    torch.testing.assert_close(model.error_head.weight, net.error_head.weight)
    onnx_path = export_onnx(path, tmp_path / "head.onnx")
    outputs = [o.name for o in onnx.load(str(onnx_path)).graph.output]
    assert outputs == ["angles", "uncertainty", "assignment", "log_error"]
    batch = rng.normal(size=(3, 3, 64, 64)).astype(np.float32)
    got = {
        name: create_backend(name, m, device="cpu").infer(batch)
        for name, m in (("torch", path), ("onnxruntime", onnx_path))
    }
    np.testing.assert_allclose(got["torch"].log_error, got["onnxruntime"].log_error, atol=1e-4)
    with torch.no_grad():
        x = torch.from_numpy(batch)
        want = net.estimate_log_error(net.encode(x), net.encode(torch.flip(x, dims=[3])))
    np.testing.assert_allclose(got["torch"].log_error, want.numpy(), atol=1e-5)
    sigmas = [unc.calibrated_outputs_uncertainty(o, meta) for o in got.values()]
    np.testing.assert_allclose(sigmas[0], sigmas[1], rtol=1e-3)
    expected = cal.sigma(
        got["torch"].angles,
        got["torch"].uncertainty,
        got["torch"].assignment,
        got["torch"].log_error,
    )
    np.testing.assert_allclose(sigmas[0], expected, rtol=1e-5)
    # a graph without the fourth output under metadata that calls for it: named
    plain = tmp_path / "plain.safetensors"
    save_checkpoint(plain, LECHPENet("mobilenet_v3_small", num_clusters=3), {}, input_size=64)
    proto = onnx.load(str(export_onnx(plain, tmp_path / "plain.onnx")))
    del proto.metadata_props[:]
    proto.metadata_props.extend(onnx.load(str(onnx_path)).metadata_props)
    onnx.save(proto, str(tmp_path / "mismatch.onnx"))
    with pytest.raises(ValueError, match=r"graph lacks the outputs \['log_error'\]"):
        create_backend("onnxruntime", tmp_path / "mismatch.onnx", device="cpu")
    # the calibration needs the head: metadata that drops it is refused by field name
    data = json.loads(meta.to_json())
    data["error_head"] = False
    with pytest.raises(CheckpointError, match="uses the error head's output but the model"):
        ModelMetadata.from_dict(data, source="x")
    data["error_head"] = "yes"
    with pytest.raises(CheckpointError, match="metadata field error_head"):
        ModelMetadata.from_dict(data, source="x")
