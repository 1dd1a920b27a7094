"""LEC-HPE checkpoints: one ``.safetensors`` file with JSON metadata in its header.

Layout (the standard safetensors format, nothing pickled)::

    8 bytes   little-endian u64: header length n
    n bytes   JSON header: {tensor name: {dtype, shape, data_offsets}, ...,
                            "__metadata__": {"lechpe_metadata": "<JSON object>"}}
    rest      raw tensor bytes

The ``lechpe_metadata`` object holds the :class:`ModelMetadata` fields plus
``weights_sha256``, a hash of every tensor (name, dtype, shape, bytes, in name
order), so that a flipped bit in the weights is reported instead of silently
producing wrong poses, and ``integrity_sha256``, a hash of ``weights_sha256``
and every other metadata field (canonical JSON), so that an edit of the
metadata that still loads (bin width, input size, normalisation ...) is refused
too. Files written before ``integrity_sha256`` existed are refused; upgrade
one whose provenance you trust with :func:`rehash_checkpoint`.  It is the only ``__metadata__`` key because safetensors
writes several keys in a random order, and the same model must give the same
bytes.

:func:`read_metadata` parses only the header and needs neither torch nor the
weights (ONNX / TensorRT backends use it).  :func:`load_checkpoint` validates
the metadata, the architecture's tensor names and shapes, and the checksum,
and raises :class:`CheckpointError` naming the first problem.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lechpe_model.bins import BinSpec
from lechpe_model.conventions import ANGLE_NAMES, CONVENTION_VERSION
from lechpe_model.preprocessing import IMAGENET_MEAN, IMAGENET_STD, INPUT_SIZE

#: Version of this file layout / metadata schema; bump on incompatible change.
FORMAT_VERSION = 1

#: Backbones a checkpoint may name, with the size D of their pooled feature.
ARCHITECTURE_LATENT_DIMS: dict[str, int] = {
    "resnet18": 512,
    "resnet34": 512,
    "resnet50": 2048,
    "mobilenet_v2": 1280,
    "mobilenet_v3_small": 576,
    "mobilenet_v3_large": 960,
}

METADATA_KEY = "lechpe_metadata"
CHECKSUM_KEY = "weights_sha256"  # inside the lechpe_metadata object
#: sha256 over the weights checksum and every other metadata field (bin width,
#: input size, mean/std, ...): metadata edits change the angles, so they are refused.
INTEGRITY_KEY = "integrity_sha256"

# Metadata fields a checkpoint may lack (added after format 1 was fixed).
_OPTIONAL_FIELDS = ("uncertainty_calibration", "mirror_average", "error_head")

# A safetensors header larger than this is not one of ours (corrupt length field).
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_FLOAT_DTYPES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
_INT_DTYPES = {"I64": 8, "I32": 4}


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or does not match what is expected."""


def _code_revision() -> str:
    """``git describe`` of the source tree this module lives in, or "unknown"."""
    try:
        result = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=os.path.dirname(os.path.abspath(__file__)),
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else "unknown"


def _now_iso() -> str:
    # SOURCE_DATE_EPOCH makes repeated saves byte-identical (reproducible builds).
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (
        _dt.datetime.fromtimestamp(int(epoch), tz=_dt.UTC)
        if epoch and epoch.isdigit()
        else _dt.datetime.now(tz=_dt.UTC)
    )
    return when.isoformat(timespec="seconds")


@dataclass
class ModelMetadata:
    """Everything needed to rebuild, feed and interpret a model.

    Attributes:
        format_version: checkpoint schema version (:data:`FORMAT_VERSION`).
        architecture: backbone name (``network.SUPPORTED_BACKBONES``).
        num_bins, bin_width, angle_limit: the angle bins (degrees).
        num_clusters: K.
        latent_dim: D, the encoder's pooled feature size.
        input_size: square input side in pixels (224).
        mean, std: per-channel RGB normalisation of inputs scaled to [0, 1].
        angle_order: order of the heads and of every angle triple.
        convention_version: ``conventions.CONVENTION_VERSION`` of the labels.
        training_config: the trainer's configuration (JSON-serialisable).
        code_revision: ``git describe`` of the code that saved it.
        created: ISO 8601 UTC time of saving.
        uncertainty_calibration: optional map from the raw bin-softmax spread to a
            calibrated standard deviation (``lechpe_model.uncertainty``; written by
            ``lechpe-eval calibrate-uncertainty``); ``{}``: publish the raw spread.
            Omitted from the JSON when empty (older checkpoints lack it).
        mirror_average: inference averages the crop's prediction with its mirrored
            crop's (``network.LECHPENet``); exported graphs include it. Omitted from
            the JSON when false (older checkpoints lack it).
        error_head: the model has the error head (``network.LECHPENet``: a fourth
            output ``log_error``, fitted by ``lechpe-eval calibrate-uncertainty
            --error-head-data``). Omitted from the JSON when false.
    """

    format_version: int = FORMAT_VERSION
    architecture: str = "resnet50"
    num_bins: int = 66
    bin_width: float = 3.0
    angle_limit: float = 99.0
    num_clusters: int = 10
    latent_dim: int = 2048
    input_size: int = INPUT_SIZE
    mean: tuple[float, float, float] = tuple(float(v) for v in IMAGENET_MEAN)
    std: tuple[float, float, float] = tuple(float(v) for v in IMAGENET_STD)
    angle_order: tuple[str, str, str] = ANGLE_NAMES
    convention_version: str = CONVENTION_VERSION
    training_config: dict[str, Any] = field(default_factory=dict)
    code_revision: str = "unknown"
    created: str = ""
    uncertainty_calibration: dict[str, Any] = field(default_factory=dict)
    mirror_average: bool = False
    error_head: bool = False

    @property
    def bin_spec(self) -> BinSpec:
        return BinSpec(self.num_bins, self.bin_width, self.angle_limit)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        data = dataclasses.asdict(self)
        for key in ("mean", "std", "angle_order"):
            data[key] = list(data[key])
        for key in _OPTIONAL_FIELDS:  # omitted when unset: older files stay byte-identical
            if not data[key]:
                del data[key]
        return data

    def to_json(self) -> str:
        try:
            return json.dumps(self.to_dict(), sort_keys=True, default=str)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"metadata is not JSON-serialisable: {exc}") from exc

    @classmethod
    def from_dict(cls, data: Any, source: str = "metadata") -> ModelMetadata:
        """Validate a decoded JSON dict; raises :class:`CheckpointError` naming the field."""
        if not isinstance(data, dict):
            raise CheckpointError(
                f"{source}: metadata must be a JSON object, got {type(data).__name__}"
            )
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in data and n not in _OPTIONAL_FIELDS]
        if missing:
            raise CheckpointError(f"{source}: metadata lacks field(s) {', '.join(missing)}")
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise CheckpointError(f"{source}: metadata has unknown field(s) {', '.join(unknown)}")

        def fail(name: str, why: str) -> CheckpointError:
            return CheckpointError(f"{source}: metadata field {name} = {data[name]!r}: {why}")

        def as_int(name: str, minimum: int) -> int:
            value = data[name]
            if isinstance(value, bool) or not isinstance(value, int):
                raise fail(name, "must be an integer")
            if value < minimum:
                raise fail(name, f"must be >= {minimum}")
            return value

        def as_float(name: str) -> float:
            value = data[name]
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                raise fail(name, "must be a finite number")
            return float(value)

        def as_triple(name: str, kind: type) -> tuple:
            value = data[name]
            if not isinstance(value, list) or len(value) != 3:
                raise fail(name, "must be a list of 3 values")
            if kind is float:
                if any(isinstance(v, bool) or not isinstance(v, int | float) for v in value):
                    raise fail(name, "must be a list of 3 numbers")
                return tuple(float(v) for v in value)
            if any(not isinstance(v, kind) for v in value):
                raise fail(name, f"must be a list of 3 {kind.__name__}")
            return tuple(value)

        def as_str(name: str) -> str:
            if not isinstance(data[name], str):
                raise fail(name, "must be a string")
            return data[name]

        version = as_int("format_version", 1)
        if version != FORMAT_VERSION:
            raise fail("format_version", f"this code reads format_version {FORMAT_VERSION} only")
        architecture = as_str("architecture")
        if architecture not in ARCHITECTURE_LATENT_DIMS:
            raise fail("architecture", f"supported: {', '.join(ARCHITECTURE_LATENT_DIMS)}")
        num_bins = as_int("num_bins", 2)
        bin_width = as_float("bin_width")
        angle_limit = as_float("angle_limit")
        try:
            BinSpec(num_bins, bin_width, angle_limit)
        except ValueError as exc:
            raise CheckpointError(f"{source}: metadata bins are inconsistent: {exc}") from exc
        latent_dim = as_int("latent_dim", 1)
        if latent_dim != ARCHITECTURE_LATENT_DIMS[architecture]:
            raise fail(
                "latent_dim",
                f"{architecture} has latent_dim {ARCHITECTURE_LATENT_DIMS[architecture]}",
            )
        std = as_triple("std", float)
        if any(v <= 0 for v in std):
            raise fail("std", "must be > 0")
        angle_order = as_triple("angle_order", str)
        if angle_order != tuple(ANGLE_NAMES):
            raise fail("angle_order", f"this code uses {list(ANGLE_NAMES)}")
        convention = as_str("convention_version")
        if convention != CONVENTION_VERSION:
            raise fail(
                "convention_version",
                f"this code uses angle convention {CONVENTION_VERSION!r}; its angles would "
                f"have different signs or order (retrain or convert the labels)",
            )
        if not isinstance(data["training_config"], dict):
            raise fail("training_config", "must be a JSON object")
        mirror_average = data.get("mirror_average", False)
        if not isinstance(mirror_average, bool):
            raise fail("mirror_average", "must be true or false")
        error_head = data.get("error_head", False)
        if not isinstance(error_head, bool):
            raise fail("error_head", "must be true or false")
        calibration = data.get("uncertainty_calibration") or {}
        if calibration:
            from lechpe_model.uncertainty import UncertaintyCalibration

            try:
                parsed = UncertaintyCalibration.from_dict(calibration)
            except ValueError as exc:
                raise fail("uncertainty_calibration", str(exc)) from exc
            if parsed.uses_error_head and not error_head:
                raise fail(
                    "uncertainty_calibration",
                    "uses the error head's output but the model has no error head",
                )
        return cls(
            format_version=version,
            architecture=architecture,
            num_bins=num_bins,
            bin_width=bin_width,
            angle_limit=angle_limit,
            num_clusters=as_int("num_clusters", 1),
            latent_dim=latent_dim,
            input_size=as_int("input_size", 32),
            mean=as_triple("mean", float),
            std=std,
            angle_order=angle_order,
            convention_version=convention,
            training_config=data["training_config"],
            code_revision=as_str("code_revision"),
            created=as_str("created"),
            uncertainty_calibration=dict(calibration),
            mirror_average=mirror_average,
            error_head=error_head,
        )

    @classmethod
    def from_model(
        cls, model, training_config: dict | None = None, input_size: int = INPUT_SIZE
    ) -> ModelMetadata:
        """Metadata describing a ``network.LECHPENet`` trained on ``input_size`` crops."""
        return cls(
            input_size=int(input_size),
            architecture=model.backbone_name,
            num_bins=int(model.num_bins),
            bin_width=float(model.bin_width),
            angle_limit=float(model.num_bins * model.bin_width / 2.0),
            num_clusters=int(model.num_clusters),
            latent_dim=int(model.latent_dim),
            mirror_average=bool(getattr(model, "mirror_average", False)),
            error_head=getattr(model, "error_head", None) is not None,
            training_config=dict(training_config or {}),
            code_revision=_code_revision(),
            created=_now_iso(),
        )


# --------------------------------------------------------------------------- reading


def _looks_pickled(prefix: bytes) -> bool:
    """torch.save output: a zip archive, or a raw pickle (PROTO opcode 0x80 + protocol 2-5)."""
    return prefix.startswith(b"PK\x03\x04") or (prefix[:1] == b"\x80" and 2 <= prefix[1] <= 5)


def _read_header(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, str]]:
    """Parse and check the safetensors header without reading the tensor data.

    Returns:
        (tensor entries {name: {"dtype", "shape", "data_offsets"}}, __metadata__)
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise CheckpointError(
                f"{path}: truncated or not a safetensors file ({size} bytes; the 8-byte "
                f"header length is missing)"
            )
        header_len = int.from_bytes(prefix, "little")
        header_len_valid = header_len <= min(_MAX_HEADER_BYTES, size - 8)
        # Only an impossible header length can be a pickle: a valid safetensors length
        # may well start with the byte 0x80 (one file in 256).
        if not header_len_valid and _looks_pickled(prefix):
            raise CheckpointError(
                f"{path}: this is a pickled PyTorch file (torch.save), not a safetensors "
                f"checkpoint; it is not loaded because unpickling can run arbitrary code. "
                f"Save models with lechpe_model.checkpoint.save_checkpoint"
            )
        if not header_len_valid:
            raise CheckpointError(
                f"{path}: truncated or not a safetensors file (header length field says "
                f"{header_len} bytes, but the file has {size - 8} bytes after it)"
            )
        raw = handle.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{path}: corrupt safetensors header (not valid JSON: {exc})"
        ) from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None)
    if not isinstance(metadata, dict) or METADATA_KEY not in metadata:
        raise CheckpointError(
            f"{path}: not a LEC-HPE checkpoint (no {METADATA_KEY!r} in the safetensors header)"
        )
    data_size = size - 8 - header_len
    end_max = 0
    for name, entry in header.items():
        try:
            dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            count = math.prod(int(d) for d in shape)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: corrupt header entry for tensor {name!r}") from exc
        item = _FLOAT_DTYPES.get(dtype) or _INT_DTYPES.get(dtype)
        if item is None:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {dtype!r}")
        if not (0 <= start <= end) or end - start != count * item:
            raise CheckpointError(f"{path}: corrupt header entry for tensor {name!r} (offsets)")
        end_max = max(end_max, end)
    if end_max > data_size:
        raise CheckpointError(
            f"{path}: truncated file: tensor data needs {end_max} bytes but only {data_size} "
            f"are present"
        )
    return header, metadata


def _integrity_digest(weights_sha256: str, metadata: dict[str, Any]) -> str:
    """sha256 over the weights checksum and the canonical JSON of the other metadata."""
    canonical = json.dumps(metadata, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{weights_sha256}|{canonical}".encode()).hexdigest()


def _parse_metadata(
    path, metadata: dict[str, str], verify_integrity: bool = True
) -> tuple[ModelMetadata, str | None]:
    """(validated metadata, stored weights checksum or None).

    Raises:
        CheckpointError: invalid JSON or fields, a missing ``integrity_sha256``
            (a file from before it existed) or one that does not match.
    """
    try:
        data = json.loads(metadata[METADATA_KEY])
    except (TypeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: {METADATA_KEY} is not valid JSON: {exc}") from exc
    checksum = data.pop(CHECKSUM_KEY, None) if isinstance(data, dict) else None
    integrity = data.pop(INTEGRITY_KEY, None) if isinstance(data, dict) else None
    if checksum is not None and not isinstance(checksum, str):
        raise CheckpointError(f"{path}: metadata field {CHECKSUM_KEY} must be a string")
    meta = ModelMetadata.from_dict(data, source=str(path))  # names a bad field first
    if verify_integrity and isinstance(checksum, str):
        if integrity is None:
            raise CheckpointError(
                f"{path}: no {INTEGRITY_KEY!r} in the metadata (written before metadata edits "
                "were checked); re-save it with lechpe_model.checkpoint.rehash_checkpoint if "
                "you trust where it comes from"
            )
        if integrity != _integrity_digest(checksum, data):
            raise CheckpointError(
                f"{path}: metadata changed after saving ({INTEGRITY_KEY} does not match): "
                "fields such as bin width, input size or mean/std change the angles; "
                "use the file as it was saved"
            )
    return meta, checksum


def read_metadata(path: str | os.PathLike) -> ModelMetadata:
    """Read and validate only the metadata of a checkpoint (cheap, torch-free).

    Raises:
        CheckpointError: missing file, truncated/corrupt header, invalid metadata.
    """
    _, metadata = _read_header(path)
    return _parse_metadata(path, metadata)[0]


def _check_expect(path, meta: ModelMetadata, expect: dict[str, Any] | None) -> None:
    if not expect:
        return
    actual = meta.to_dict()
    for name, wanted in expect.items():
        if name not in actual:
            raise CheckpointError(f"expect names unknown metadata field {name!r}")
        have = actual[name]
        if isinstance(wanted, tuple):
            wanted = list(wanted)
        if isinstance(have, float) and isinstance(wanted, int | float):
            same = math.isclose(have, float(wanted), rel_tol=1e-9, abs_tol=1e-12)
        else:
            same = have == wanted
        if not same:
            raise CheckpointError(f"{path}: checkpoint has {name} = {have!r}, expected {wanted!r}")


def _weights_digest(tensors: dict) -> str:
    """sha256 over (name, dtype, shape, raw bytes) of every tensor, in name order."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _check_tensors(path, header: dict[str, Any], expected: dict) -> None:
    """Compare header tensor names/shapes/dtypes with the model's state dict."""
    missing = sorted(set(expected) - set(header))
    if missing:
        raise CheckpointError(
            f"{path}: tensor {missing[0]!r} required by the architecture is missing "
            f"({len(missing)} missing in all)"
        )
    unexpected = sorted(set(header) - set(expected))
    if unexpected:
        raise CheckpointError(
            f"{path}: unexpected tensor {unexpected[0]!r} for this architecture "
            f"({len(unexpected)} unexpected in all)"
        )
    for name in sorted(expected):
        want = expected[name]
        shape = list(header[name]["shape"])
        if shape != list(want.shape):
            raise CheckpointError(
                f"{path}: tensor {name!r} has shape {shape}, the architecture needs "
                f"{list(want.shape)}"
            )
        dtype = header[name]["dtype"]
        allowed = _FLOAT_DTYPES if want.is_floating_point() else _INT_DTYPES
        if dtype not in allowed:
            raise CheckpointError(
                f"{path}: tensor {name!r} has dtype {dtype}, expected {str(want.dtype)}"
            )


def load_checkpoint(path: str | os.PathLike, device="cpu", expect: dict[str, Any] | None = None):
    """Load a checkpoint into a new ``LECHPENet`` in eval mode.

    Args:
        path: ``.safetensors`` file written by :func:`save_checkpoint`.
        device: torch device for the model.
        expect: metadata values the caller requires, e.g. ``{"num_bins": 66}``.

    Returns:
        ``(model, metadata)``; weights saved in float16 are cast back to float32.

    Raises:
        CheckpointError: naming the file and the first problem found.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from lechpe_model.network import build_model

    header, raw_meta = _read_header(path)
    meta, stored = _parse_metadata(path, raw_meta)
    _check_expect(path, meta, expect)
    model = build_model(meta, pretrained=False)
    _check_tensors(path, header, model.state_dict())
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot read tensor data: {exc}") from exc
    if stored is None:
        raise CheckpointError(f"{path}: no {CHECKSUM_KEY!r} in the metadata; cannot verify weights")
    if _weights_digest(tensors) != stored:
        raise CheckpointError(f"{path}: corrupt weights (sha256 of the tensors does not match)")
    model.load_state_dict(tensors, strict=True)  # copies cast float16 -> float32
    return model.to(device).eval(), meta


# --------------------------------------------------------------------------- writing


def save_checkpoint(
    path: str | os.PathLike,
    model,
    training_config: dict[str, Any] | None = None,
    dtype=None,
    input_size: int = INPUT_SIZE,
    uncertainty_calibration: dict[str, Any] | None = None,
) -> ModelMetadata:
    """Write ``model`` and its metadata to ``path`` atomically (temp file + rename).

    Args:
        path: destination ``.safetensors`` file; its folder must exist.
        model: a ``network.LECHPENet``.
        training_config: JSON-serialisable configuration stored in the metadata
            (non-JSON values such as paths are stored as strings).
        dtype: None (keep float32) or ``torch.float16`` / ``torch.bfloat16`` for a
            smaller shipped file; integer buffers are kept as they are.
        input_size: side of the square crops the model was trained on (recorded so
            inference preprocesses the same way).
        uncertainty_calibration: optional ``lechpe_model.uncertainty`` coefficients
            (stored in the metadata, covered by its validation).

    Returns:
        The metadata written.
    """
    import torch

    if dtype not in (None, torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be None, torch.float32, float16 or bfloat16, got {dtype}")
    meta = ModelMetadata.from_model(model, training_config, input_size=input_size)
    meta.uncertainty_calibration = dict(uncertainty_calibration or {})
    meta_json = meta.to_json()
    tensors = {}
    for name, value in model.state_dict().items():
        value = value.detach().to("cpu").contiguous()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        tensors[name] = value.clone()
    _write_checkpoint(path, tensors, json.loads(meta_json), _weights_digest(tensors))
    return ModelMetadata.from_dict(json.loads(meta_json), source=str(path))


def _write_checkpoint(path, tensors: dict, metadata: dict[str, Any], weights_sha256: str) -> None:
    """Atomic write of tensors + metadata with both checksums."""
    from safetensors.torch import save_file

    header = dict(
        metadata,
        **{
            CHECKSUM_KEY: weights_sha256,
            INTEGRITY_KEY: _integrity_digest(weights_sha256, metadata),
        },
    )
    header_meta = {METADATA_KEY: json.dumps(header, sort_keys=True)}
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=header_meta)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a model file is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def rehash_checkpoint(path: str | os.PathLike, out: str | os.PathLike | None = None) -> None:
    """Add ``integrity_sha256`` to a checkpoint written before it existed (in place or to ``out``).

    Tensors and metadata are kept byte for byte; the weights must match their
    stored ``weights_sha256``. It cannot tell whether the metadata was edited
    before: use it only on files whose provenance you trust.

    Raises:
        CheckpointError: unreadable file or corrupt weights.
    """
    from safetensors.torch import load_file

    _, raw_meta = _read_header(path)
    _parse_metadata(path, raw_meta, verify_integrity=False)  # validates the fields
    data = json.loads(raw_meta[METADATA_KEY])
    stored = data.pop(CHECKSUM_KEY, None)
    data.pop(INTEGRITY_KEY, None)
    tensors = load_file(str(path), device="cpu")
    if stored is None or _weights_digest(tensors) != stored:
        raise CheckpointError(f"{path}: corrupt weights (sha256 of the tensors does not match)")
    _write_checkpoint(out or path, tensors, data, stored)
