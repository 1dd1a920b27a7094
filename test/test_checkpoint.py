"""lechpe_model.checkpoint: save/load round trip and rejection of bad files with the reason."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lechpe_model.checkpoint import (
    CHECKSUM_KEY,
    INTEGRITY_KEY,
    METADATA_KEY,
    CheckpointError,
    ModelMetadata,
    load_checkpoint,
    read_metadata,
    rehash_checkpoint,
    save_checkpoint,
)
from lechpe_model.conventions import CONVENTION_VERSION
from lechpe_model.network import LECHPENet

BACKBONE = "mobilenet_v3_small"


@pytest.fixture(scope="module")
def model() -> LECHPENet:
    torch.manual_seed(0)
    net = LECHPENet(BACKBONE, num_clusters=3)
    # Non-default BN statistics so that buffers are really checked too.
    net.train()
    with torch.no_grad():
        net.forward_train(torch.randn(4, 3, 64, 64))
    return net.eval()


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_checkpoint(path, model, training_config={"stage": 2, "beta": 100.0, "data": Path("/d")})
    return path


def _outputs(net, seed=1):
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return [t.numpy() for t in net(x)]


def _seal(meta: dict) -> None:
    """Recompute integrity_sha256 as documented (sha256 of "<weights_sha256>|<canonical JSON
    of the other fields>"): an edit made by code that re-saves consistently."""
    import hashlib

    other = {k: v for k, v in meta.items() if k not in (CHECKSUM_KEY, INTEGRITY_KEY)}
    canonical = json.dumps(other, sort_keys=True, separators=(",", ":"))
    text = f"{meta.get(CHECKSUM_KEY)}|{canonical}"
    meta[INTEGRITY_KEY] = hashlib.sha256(text.encode()).hexdigest()


def _rewrite(
    src: Path, dst: Path, *, meta_edit=None, tensor_edit=None, keep_checksum=True, reseal=True
) -> Path:
    """Copy a checkpoint with edited metadata/tensors (to build mismatched files).

    ``reseal``: recompute the integrity hash after the edit (to reach the field
    checks behind it); False keeps the saved one (a plain edit of the file)."""
    tensors = load_file(str(src))
    from safetensors import safe_open

    with safe_open(str(src), framework="pt") as handle:
        header_meta = dict(handle.metadata())
    meta = json.loads(header_meta[METADATA_KEY])
    if meta_edit:
        meta_edit(meta)
    if tensor_edit:
        tensor_edit(tensors)
    if not keep_checksum:
        meta.pop(CHECKSUM_KEY)
    if reseal:
        _seal(meta)
    header_meta[METADATA_KEY] = json.dumps(meta)
    save_file(tensors, str(dst), metadata=header_meta)
    return dst


def test_round_trip_identical_outputs(model, saved):
    loaded, meta = load_checkpoint(saved)
    assert not loaded.training
    for a, b in zip(_outputs(model), _outputs(loaded), strict=True):
        np.testing.assert_array_equal(a, b)
    for (name, u), v in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(u, v), name


def test_metadata_contents(model, saved):
    meta = read_metadata(saved)
    assert meta.architecture == BACKBONE
    assert (meta.num_bins, meta.bin_width, meta.angle_limit) == (66, 3.0, 99.0)
    assert (meta.num_clusters, meta.latent_dim, meta.input_size) == (3, 576, 224)
    assert meta.mean == pytest.approx((0.485, 0.456, 0.406))
    assert meta.std == pytest.approx((0.229, 0.224, 0.225))
    assert meta.angle_order == ("yaw", "pitch", "roll")
    assert meta.convention_version == CONVENTION_VERSION
    assert meta.training_config == {"stage": 2, "beta": 100.0, "data": "/d"}
    assert isinstance(meta.code_revision, str) and meta.code_revision
    assert dt.datetime.fromisoformat(meta.created).tzinfo is not None
    np.testing.assert_allclose(meta.bin_spec.centers, model.bin_centers.numpy())


def test_read_metadata_does_not_need_torch(saved, repo_root):
    code = (
        "import sys; from lechpe_model.checkpoint import read_metadata; "
        f"m = read_metadata({str(saved)!r}); print(m.architecture, 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo_root
    )
    assert out.stdout.split() == [BACKBONE, "False"]


def test_float16_file_is_smaller_and_loads_as_float32(model, saved, tmp_path):
    path = tmp_path / "half.safetensors"
    save_checkpoint(path, model, dtype=torch.float16)
    assert os.path.getsize(path) < 0.6 * os.path.getsize(saved)
    assert load_file(str(path))["heads.yaw.weight"].dtype == torch.float16
    loaded, _ = load_checkpoint(path)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    for a, b in zip(_outputs(model), _outputs(loaded), strict=True):
        np.testing.assert_allclose(a, b, atol=0.05)


def test_same_model_same_bytes_and_no_temp_files(model, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_checkpoint(a, model)
    save_checkpoint(b, model)
    save_checkpoint(b, model)  # overwriting an existing file is atomic too
    assert a.read_bytes() == b.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.safetensors"]
    assert read_metadata(a).created == "2023-11-14T22:13:20+00:00"


def test_missing_file_names_path(tmp_path):
    path = tmp_path / "nope.safetensors"
    with pytest.raises(CheckpointError, match=f"not found: {path}"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        read_metadata(path)


@pytest.mark.parametrize("keep", [0, 5, 20, 0.5, 0.999])
def test_truncated_file_rejected(saved, tmp_path, keep):
    data = saved.read_bytes()
    size = keep if isinstance(keep, int) else int(len(data) * keep)
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[:size])
    with pytest.raises(CheckpointError, match="truncated") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_flipped_weight_byte_rejected(saved, tmp_path):
    data = bytearray(saved.read_bytes())
    data[-1000] ^= 0xFF  # inside the tensor data
    path = tmp_path / "flip.safetensors"
    path.write_bytes(bytes(data))
    read_metadata(path)  # the header is intact
    with pytest.raises(CheckpointError, match="corrupt weights"):
        load_checkpoint(path)


def test_corrupt_header_rejected(saved, tmp_path):
    data = bytearray(saved.read_bytes())
    data[8] = ord("X")  # the opening brace of the JSON header
    path = tmp_path / "hdr.safetensors"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        read_metadata(path)


def test_garbage_and_foreign_files_rejected(tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_checkpoint(garbage)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a LEC-HPE checkpoint"):
        load_checkpoint(foreign)


class _Payload:
    """Unpickling this would create a marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_file_is_rejected_without_unpickling(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.safetensors"
    torch.save({"x": _Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match="pickled PyTorch file"):
        load_checkpoint(path)
    assert not marker.exists()


def test_header_length_starting_with_pickle_byte_still_loads(model, tmp_path):
    # The 8-byte little-endian header length of a valid file may begin with 0x80,
    # the byte that starts a raw pickle; such a file must load, not be refused.
    path = tmp_path / "x80.safetensors"
    pad = 0
    for _ in range(4):  # each "x" adds one header byte; safetensors may re-align once
        save_checkpoint(path, model, training_config={"pad": "x" * pad})
        low_byte = path.read_bytes()[0]
        if low_byte == 0x80:
            break
        pad += (0x80 - low_byte) % 256
    else:
        pytest.fail("could not pad the header to a length whose low byte is 0x80")
    loaded, _ = load_checkpoint(path)
    np.testing.assert_array_equal(_outputs(loaded)[0], _outputs(model)[0])


def test_input_size_is_recorded(model, tmp_path):
    path = tmp_path / "small.safetensors"
    assert save_checkpoint(path, model, input_size=96).input_size == 96
    assert read_metadata(path).input_size == 96


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda m: m.update(convention_version="other-v0"),
            "convention_version.*'other-v0'.*300wlp",
        ),
        (lambda m: m.update(format_version=2), "format_version = 2"),
        (lambda m: m.pop("mean"), "lacks field.*mean"),
        (lambda m: m.update(extra=1), "unknown field.*extra"),
        (lambda m: m.update(num_clusters="3"), "num_clusters = '3'.*integer"),
        (lambda m: m.update(latent_dim=512), "latent_dim = 512.*576"),
        (lambda m: m.update(architecture="vgg"), "architecture = 'vgg'"),
        (lambda m: m.update(angle_limit=90.0), "bins are inconsistent"),
        (lambda m: m.update(angle_order=["pitch", "yaw", "roll"]), "angle_order"),
        (lambda m: m.update(std=[0.2, 0.0, 0.2]), "std"),
        (lambda m: m.update(mirror_average="yes"), "mirror_average = 'yes'.*true or false"),
    ],
)
def test_bad_metadata_names_the_field(saved, tmp_path, edit, message):
    path = _rewrite(saved, tmp_path / "bad.safetensors", meta_edit=edit)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_metadata_disagreeing_with_tensors_names_tensor(saved, tmp_path):
    def sixty_bins(meta):
        meta.update(num_bins=60, angle_limit=90.0)

    path = _rewrite(saved, tmp_path / "bins.safetensors", meta_edit=sixty_bins)
    read_metadata(path)  # self-consistent metadata ...
    with pytest.raises(CheckpointError, match=r"'heads.pitch.bias' has shape \[66\].*\[60\]"):
        load_checkpoint(path)  # ... but not what the tensors are

    def other_backbone(meta):
        meta.update(architecture="resnet18", latent_dim=512)

    path = _rewrite(saved, tmp_path / "arch.safetensors", meta_edit=other_backbone)
    with pytest.raises(
        CheckpointError, match="tensor 'encoder.bn1.bias' required by the architecture is missing"
    ):
        load_checkpoint(path)


def test_missing_and_unexpected_tensors_named(saved, tmp_path):
    path = _rewrite(saved, tmp_path / "m.safetensors", tensor_edit=lambda t: t.pop("centroids"))
    with pytest.raises(
        CheckpointError, match="'centroids' required by the architecture is missing"
    ):
        load_checkpoint(path)
    path = _rewrite(
        saved, tmp_path / "u.safetensors", tensor_edit=lambda t: t.update(extra=torch.zeros(1))
    )
    with pytest.raises(CheckpointError, match="unexpected tensor 'extra'"):
        load_checkpoint(path)


def test_missing_checksum_rejected(saved, tmp_path):
    path = _rewrite(saved, tmp_path / "nosum.safetensors", keep_checksum=False)
    with pytest.raises(CheckpointError, match=CHECKSUM_KEY):
        load_checkpoint(path)


def test_expect_checks_values(saved):
    load_checkpoint(
        saved, expect={"num_bins": 66, "bin_width": 3, "angle_order": ("yaw", "pitch", "roll")}
    )
    with pytest.raises(
        CheckpointError, match="architecture = 'mobilenet_v3_small', expected 'resnet50'"
    ):
        load_checkpoint(saved, expect={"architecture": "resnet50"})
    with pytest.raises(CheckpointError, match="num_clusters = 3, expected 10"):
        load_checkpoint(saved, expect={"num_clusters": 10})
    with pytest.raises(CheckpointError, match="unknown metadata field 'bins'"):
        load_checkpoint(saved, expect={"bins": 66})


def test_mirror_average_round_trips_and_is_absent_when_off(model, saved, tmp_path):
    assert "mirror_average" not in json.loads(read_metadata(saved).to_json())  # older layout
    assert load_checkpoint(saved)[0].mirror_average is False
    model.mirror_average = True
    try:
        path = tmp_path / "mirror.safetensors"
        assert save_checkpoint(path, model).mirror_average is True
    finally:
        model.mirror_average = False
    loaded, meta = load_checkpoint(path)
    assert meta.mirror_average is True and loaded.mirror_average is True
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = model(torch.flip(x, dims=[3]))[0].numpy() * np.array([-1.0, 1.0, -1.0])
        want = (model(x)[0].numpy() + want) / 2
        np.testing.assert_allclose(loaded(x)[0].numpy(), want, atol=1e-4)


def test_metadata_dict_round_trip():
    meta = ModelMetadata(architecture="resnet18", latent_dim=512, training_config={"a": [1, 2]})
    again = ModelMetadata.from_dict(json.loads(meta.to_json()))
    assert again == meta
    with pytest.raises(CheckpointError, match="JSON object"):
        ModelMetadata.from_dict([1, 2])


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.update(bin_width=3.0000001, angle_limit=99.0000033),
        lambda m: m.update(input_size=160),
        lambda m: m.update(mean=[0.5, 0.5, 0.5]),
        lambda m: m.update(std=[0.25, 0.25, 0.25]),
        lambda m: m.update(mirror_average=True),
    ],
    ids=["bin_width", "input_size", "mean", "std", "mirror_average"],
)
def test_metadata_edits_that_still_load_are_refused(saved, tmp_path, edit):
    # Before: the hash covered the tensors only, and these edits changed the angles silently.
    path = _rewrite(saved, tmp_path / "edited.safetensors", meta_edit=edit, reseal=False)
    with pytest.raises(CheckpointError, match="metadata changed after saving"):
        read_metadata(path)
    with pytest.raises(CheckpointError, match=f"{INTEGRITY_KEY} does not match"):
        load_checkpoint(path)


def test_file_without_integrity_hash_is_refused_and_rehash_restores_it(model, saved, tmp_path):
    def drop(meta):
        meta.pop(INTEGRITY_KEY)

    old = _rewrite(saved, tmp_path / "old.safetensors", meta_edit=drop, reseal=False)
    with pytest.raises(CheckpointError, match="no 'integrity_sha256'.*rehash_checkpoint"):
        load_checkpoint(old)
    rehash_checkpoint(old, tmp_path / "upgraded.safetensors")
    upgraded, meta = load_checkpoint(tmp_path / "upgraded.safetensors")
    assert meta == read_metadata(saved)
    for a, b in zip(_outputs(upgraded), _outputs(model), strict=True):
        np.testing.assert_array_equal(a, b)
    assert load_file(str(tmp_path / "upgraded.safetensors")).keys() == load_file(str(saved)).keys()


def test_shipped_default_model_has_the_integrity_hash():
    from lechpe_model.default_model import default_model_path

    path = default_model_path()
    read_metadata(path)  # raises without integrity_sha256
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        assert INTEGRITY_KEY in json.loads(handle.metadata()[METADATA_KEY])
