"""Inference backends behind one interface: torch, ONNX Runtime, TensorRT.

::

    backend = create_backend("auto", "model.safetensors")   # or .onnx
    out = backend.infer(batch)   # batch (N, 3, S, S) float32 from preprocess_crops
    out.angles       # (N, 3) degrees, (yaw, pitch, roll)
    out.uncertainty  # (N, 3) degrees (std of the bin softmax)
    out.assignment   # (N, K) soft cluster assignment q

``"auto"`` takes TensorRT when it and a CUDA GPU are usable, else ONNX
Runtime, else torch, and logs the choice. Importing this package imports
neither torch, onnxruntime nor tensorrt; each backend imports its runtime
when it is created.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lechpe_model.checkpoint import METADATA_KEY, ModelMetadata

LOG = logging.getLogger(__name__)

#: Backend names in the order ``"auto"`` tries them.
BACKEND_NAMES = ("tensorrt", "onnxruntime", "torch")


class BackendUnavailable(RuntimeError):
    """A backend cannot run here; the message says what is missing and what to do."""


@dataclass
class PoseOutputs:
    """Network outputs for a batch of N faces (NumPy float32).

    Attributes:
        angles: ``(N, 3)`` degrees, (yaw, pitch, roll).
        uncertainty: ``(N, 3)`` degrees, standard deviation of the bin softmax.
        assignment: ``(N, K)`` soft cluster assignment (rows sum to 1).
        log_error: ``(N, 3)`` the error head's ``log |error|`` estimate, or None
            for a model without an error head (``ModelMetadata.error_head``).
    """

    angles: np.ndarray
    uncertainty: np.ndarray
    assignment: np.ndarray
    log_error: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.angles.shape[0])

    @classmethod
    def empty(cls, num_clusters: int, error_head: bool = False) -> PoseOutputs:
        return cls(
            np.zeros((0, 3), np.float32),
            np.zeros((0, 3), np.float32),
            np.zeros((0, int(num_clusters)), np.float32),
            np.zeros((0, 3), np.float32) if error_head else None,
        )

    def rows(self, index) -> PoseOutputs:
        """A copy of the rows ``index`` (any NumPy index) of every output."""
        return PoseOutputs(
            self.angles[index].copy(),
            self.uncertainty[index].copy(),
            self.assignment[index].copy(),
            None if self.log_error is None else self.log_error[index].copy(),
        )


class Backend:
    """Interface of an inference backend.

    Attributes:
        name: ``"torch"``, ``"onnxruntime"`` or ``"tensorrt"``.
        metadata: the model's :class:`~lechpe_model.checkpoint.ModelMetadata`
            (input size, normalisation, K ...).
        device: where the network runs, in words (``"cpu"``, ``"cuda:0"`` ...).
        max_batch: largest batch one call accepts (``None``: unlimited);
            :meth:`infer` splits larger batches.
    """

    name = "base"
    metadata: ModelMetadata
    device = "cpu"
    max_batch: int | None = None

    def infer(self, batch: np.ndarray) -> PoseOutputs:
        """Run the network.

        Args:
            batch: ``(N, 3, S, S)`` float32, ``S = metadata.input_size``
                (from ``preprocessing.preprocess_crops``); N may be 0.

        Returns:
            :class:`PoseOutputs` with float32 arrays of N rows.

        Raises:
            ValueError: on a batch of the wrong shape or dtype.
        """
        size = int(self.metadata.input_size)
        batch = np.asarray(batch)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != (3, size, size):
            raise ValueError(
                f"{self.name}: expected a batch of shape (N, 3, {size}, {size}), got {batch.shape}"
            )
        if batch.dtype != np.float32:
            raise ValueError(f"{self.name}: expected float32 input, got {batch.dtype}")
        error_head = bool(getattr(self.metadata, "error_head", False))
        if batch.shape[0] == 0:
            return PoseOutputs.empty(self.metadata.num_clusters, error_head)
        batch = np.ascontiguousarray(batch)
        step = self.max_batch or batch.shape[0]
        parts = [self._infer(batch[i : i + step]) for i in range(0, batch.shape[0], step)]
        if len(parts) == 1:
            outputs = parts[0]
        else:
            outputs = tuple(np.concatenate(p) for p in zip(*parts, strict=True))
        if len(outputs) != (4 if error_head else 3):
            raise RuntimeError(
                f"{self.name}: the network gave {len(outputs)} outputs, but the model's "
                f"metadata says {'4 (with the error head)' if error_head else '3'}; "
                f"re-export the model from its checkpoint"
            )
        return PoseOutputs(
            np.asarray(outputs[0], dtype=np.float32).reshape(-1, 3),
            np.asarray(outputs[1], dtype=np.float32).reshape(-1, 3),
            np.asarray(outputs[2], dtype=np.float32).reshape(-1, self.metadata.num_clusters),
            np.asarray(outputs[3], dtype=np.float32).reshape(-1, 3) if error_head else None,
        )

    def _infer(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        """The graph's outputs for one batch: angles, uncertainty, assignment and,
        with an error head, log_error (``export.graph_output_names``)."""
        raise NotImplementedError

    def warmup(self, batch_size: int = 1) -> None:
        """Run once on zeros (first-call allocations, TensorRT/cuDNN autotuning)."""
        size = int(self.metadata.input_size)
        self.infer(np.zeros((batch_size, 3, size, size), np.float32))

    def close(self) -> None:
        """Release runtime resources (sessions, GPU memory)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(device={self.device!r}, arch={self.metadata.architecture})"


def default_cache_dir() -> Path:
    """Where exported ONNX files and TensorRT engines are cached.

    ``$LECHPE_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/lechpe`` (``~/.cache/lechpe``).
    """
    if os.environ.get("LECHPE_CACHE_DIR"):
        return Path(os.environ["LECHPE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lechpe"


def onnx_for_model(model_path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """An ONNX file for ``model_path``: itself if ``.onnx``, else a cached export.

    A ``.safetensors`` checkpoint is exported once to
    ``<cache_dir>/onnx/<stem>-<sha256[:16] of the checkpoint>.onnx`` (needs torch
    and onnx); a changed checkpoint gets a new file.
    """
    model_path = Path(model_path)
    if model_path.suffix.lower() == ".onnx":
        return model_path
    from lechpe_model.export import SOURCE_HASH_KEY, export_onnx, file_sha256

    # A shipped export next to the checkpoint (the embedded default model has one)
    # serves robots without torch, as long as it was exported from these bytes.
    sibling = model_path.with_suffix(".onnx")
    if sibling.is_file():
        try:  # a corrupt sibling must not stop a valid checkpoint from loading
            source = _onnx_properties(sibling).get(SOURCE_HASH_KEY)
        except Exception as exc:  # onnx DecodeError, ORT InvalidGraph/Fail, OSError
            source = None
            LOG.warning("%s is unreadable (%s: %s); ignoring it", sibling, type(exc).__name__, exc)
        if source == file_sha256(model_path):
            return sibling
        if source is not None:
            LOG.warning("%s was not exported from %s; ignoring it", sibling, model_path)
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    target = folder / "onnx" / f"{model_path.stem}-{file_sha256(model_path)[:16]}.onnx"
    if not target.is_file():
        missing = [m for m in ("torch", "torchvision", "onnx") if not _module_present(m)]
        if missing:
            raise BackendUnavailable(
                f"{model_path} is a checkpoint; exporting it to ONNX needs {', '.join(missing)}. "
                "Export it on a workstation with `lechpe-export` and pass the .onnx file"
            )
        LOG.info("exporting %s to %s (cached for next time)", model_path, target)
        export_onnx(model_path, target)
    return target


def read_onnx_metadata(onnx_path: str | Path) -> ModelMetadata:
    """The checkpoint metadata embedded by ``export.export_onnx`` in an ONNX file.

    Uses the ``onnx`` package when installed, else ONNX Runtime's model meta.

    Raises:
        ValueError: the file carries no ``lechpe_metadata`` (not exported by us).
    """
    onnx_path = Path(onnx_path)
    props = _onnx_properties(onnx_path)
    if METADATA_KEY not in props:
        raise ValueError(
            f"{onnx_path}: no {METADATA_KEY!r} in the ONNX metadata; export it with lechpe-export"
        )
    return ModelMetadata.from_dict(json.loads(props[METADATA_KEY]), source=str(onnx_path))


def _onnx_properties(onnx_path: Path) -> dict[str, str]:
    """``metadata_props`` of an ONNX file (the ``onnx`` package, else ONNX Runtime)."""
    if importlib.util.find_spec("onnx") is not None:
        import onnx

        model = onnx.load(str(onnx_path), load_external_data=False)
        return {p.key: p.value for p in model.metadata_props}
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return dict(session.get_modelmeta().custom_metadata_map)


def _module_present(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def available_backends() -> list[str]:
    """Backends usable on this machine, in ``"auto"`` order.

    torch and onnxruntime count when their packages are importable; TensorRT
    when it imports and a CUDA GPU is visible.
    """
    names = []
    if _module_present("tensorrt"):
        from lechpe_model.backends.tensorrt_backend import tensorrt_unavailable_reason

        if tensorrt_unavailable_reason() is None:
            names.append("tensorrt")
    if _module_present("onnxruntime"):
        names.append("onnxruntime")
    if _module_present("torch") and _module_present("torchvision"):
        names.append("torch")
    return names


def create_backend(name: str, model_path: str | Path, device: str = "auto", **options) -> Backend:
    """Build a backend by name (or the best usable one for ``"auto"``).

    Args:
        name: ``"auto"``, ``"torch"``, ``"onnxruntime"`` or ``"tensorrt"``.
        model_path: a ``.safetensors`` checkpoint (every backend) or a ``.onnx``
            exported by ``lechpe-export`` (onnxruntime, tensorrt).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        **options: backend-specific (see each backend class), e.g.
            ``intra_op_threads`` (onnxruntime, torch), ``cache_dir``,
            ``precision``, ``max_batch`` (tensorrt), ``onnx_precision``
            (onnxruntime: ``"fp32"`` or ``"int8"``), ``calibration_dir``
            (INT8 calibration data for onnxruntime and tensorrt).

    Raises:
        BackendUnavailable: the backend cannot run here (what is missing, what to use).
        ValueError: unknown name. FileNotFoundError: no model file.
    """
    name = (name or "auto").lower()
    model_path = Path(model_path)
    if not model_path.is_file():
        raise FileNotFoundError(f"model file not found: {model_path}")
    if name == "auto":
        reasons = []
        for candidate in BACKEND_NAMES:
            if candidate == "torch" and model_path.suffix == ".onnx":
                reasons.append("torch: needs a .safetensors checkpoint, not an ONNX file")
                continue
            try:
                backend = create_backend(candidate, model_path, device=device, **options)
            except BackendUnavailable as exc:
                reasons.append(f"{candidate}: {exc}")
                LOG.info("backend %s not usable: %s", candidate, exc)
                continue
            LOG.info("backend 'auto' picked %s on %s", backend.name, backend.device)
            return backend
        raise BackendUnavailable("no inference backend is usable: " + "; ".join(reasons))
    if name == "torch":
        from lechpe_model.backends.torch_backend import TorchBackend

        return TorchBackend(model_path, device=device, **options)
    if name == "onnxruntime":
        from lechpe_model.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model_path, device=device, **options)
    if name == "tensorrt":
        from lechpe_model.backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(model_path, device=device, **options)
    raise ValueError(f"unknown backend {name!r}; choose auto, {', '.join(BACKEND_NAMES)}")


__all__ = [
    "BACKEND_NAMES",
    "Backend",
    "BackendUnavailable",
    "PoseOutputs",
    "available_backends",
    "create_backend",
    "default_cache_dir",
    "onnx_for_model",
    "read_onnx_metadata",
]
