"""ONNX Runtime backend (CPU; CUDA execution provider when installed and wanted)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from lechpe_model.backends import (
    Backend,
    BackendUnavailable,
    _onnx_properties,
    default_cache_dir,
    onnx_for_model,
    read_onnx_metadata,
)
from lechpe_model.export import file_sha256, graph_output_names

LOG = logging.getLogger(__name__)

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
PRECISIONS = ("fp32", "int8")


def int8_onnx_for(
    onnx_path: Path, calibration_dir: str | Path | None = None, cache_dir: str | Path | None = None
) -> Path:
    """The INT8 model for an fp32 ONNX file (see ``OnnxRuntimeBackend(onnx_precision="int8")``).

    Raises:
        BackendUnavailable: no INT8 model exists and no calibration data was given.
    """
    from lechpe_model.export import SOURCE_HASH_KEY
    from lechpe_model.quantization import (
        CALIBRATION_HASH_KEY,
        PRECISION_KEY,
        calibration_tensors,
        default_int8_path,
        quantize_onnx_int8,
        tensors_sha256,
    )

    props = _onnx_properties(onnx_path)
    if props.get(PRECISION_KEY) == "int8":
        return onnx_path
    sibling = default_int8_path(onnx_path)
    if sibling.is_file():
        sibling_props = _onnx_properties(sibling)
        if sibling_props.get(PRECISION_KEY) == "int8" and sibling_props.get(
            SOURCE_HASH_KEY
        ) == props.get(SOURCE_HASH_KEY):
            return sibling
        LOG.warning("%s was not quantised from %s; ignoring it", sibling, onnx_path)
    if calibration_dir is None:
        raise BackendUnavailable(
            f"onnxruntime: precision 'int8' needs an INT8 model: none at {sibling}; run "
            f"`lechpe-export --int8 --calibration-dir DIR` or give calibration_dir "
            "(a folder of face images, or a .npy of calibration tensors)"
        )
    metadata = read_onnx_metadata(onnx_path)
    tensors = calibration_tensors(
        calibration_dir, int(metadata.input_size), metadata.mean, metadata.std
    )
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    source_sha = props.get(SOURCE_HASH_KEY) or file_sha256(onnx_path)
    target = (
        folder
        / "onnx"
        / f"{onnx_path.stem}-{source_sha[:12]}-{tensors_sha256(tensors)[:12]}.int8.onnx"
    )
    if target.is_file() and _onnx_properties(target).get(CALIBRATION_HASH_KEY) == tensors_sha256(
        tensors
    ):
        return target
    LOG.info(
        "quantising %s to INT8 with %d calibration crops -> %s", onnx_path, len(tensors), target
    )
    return quantize_onnx_int8(onnx_path, target, tensors)


def select_providers(available: list[str], device: str = "auto") -> list[str]:
    """Execution providers for ``device`` given ORT's available providers.

    ``"auto"``: CUDA first when present, then CPU. ``"cpu"``: CPU only.
    ``"cuda"``/``"cuda:N"``: CUDA (then CPU for unsupported nodes); raises
    :class:`BackendUnavailable` when the CUDA provider is not installed.
    """
    device = (device or "auto").lower()
    if device == "cpu":
        return [CPU_PROVIDER]
    if device.startswith("cuda"):
        if CUDA_PROVIDER not in available:
            raise BackendUnavailable(
                f"onnxruntime: device {device!r} needs the CUDA execution provider, but this "
                f"onnxruntime offers {available}; install onnxruntime-gpu or use device='cpu'"
            )
        return [CUDA_PROVIDER, CPU_PROVIDER]
    if device != "auto":
        raise ValueError(f"onnxruntime: unknown device {device!r} (auto, cpu, cuda[:N])")
    return [CUDA_PROVIDER, CPU_PROVIDER] if CUDA_PROVIDER in available else [CPU_PROVIDER]


class OnnxRuntimeBackend(Backend):
    """An exported ONNX model run by ``onnxruntime.InferenceSession``.

    Args:
        model_path: ``.onnx`` from ``lechpe-export``, or a ``.safetensors``
            checkpoint that is exported once into ``cache_dir`` (see
            ``backends.onnx_for_model``; needs torch + onnx on this machine).
        device: ``"auto"`` (CUDA provider if present, else CPU), ``"cpu"``, ``"cuda[:N]"``.
        intra_op_threads: threads inside one operator (``None``: ORT's default,
            one per physical core).
        cache_dir: where checkpoint exports are cached.
        allow_spinning: let idle intra-op threads busy-wait for the next run
            (ORT's default). Off by default: on a small shared CPU the spinning
            threads took the cores the face detector and other ROS nodes need.
        onnx_precision: ``"fp32"`` (default) or ``"int8"``: the statically quantised
            model (``lechpe_model.quantization``). For ``"int8"`` the backend uses
            ``model_path`` itself when it is already INT8, else ``<model>.int8.onnx``
            beside the ONNX when it was quantised from the same checkpoint, else
            quantises once into ``cache_dir`` with ``calibration_dir`` (a folder
            of images, see ``quantization.calibration_crops``, or a ``.npy`` of
            calibration tensors).
    """

    name = "onnxruntime"

    def __init__(
        self,
        model_path: str | Path,
        device: str = "auto",
        intra_op_threads: int | None = None,
        cache_dir: str | Path | None = None,
        allow_spinning: bool = False,
        onnx_precision: str = "fp32",
        calibration_dir: str | Path | None = None,
        **other,
    ) -> None:
        try:
            import onnxruntime as ort
        except Exception as exc:
            raise BackendUnavailable(
                f"onnxruntime is not installed ({type(exc).__name__}: {exc}); "
                "pip install onnxruntime (or onnxruntime-gpu), or use the torch backend"
            ) from exc
        if other:
            LOG.debug("onnxruntime backend ignores options %s", sorted(other))
        providers = select_providers(ort.get_available_providers(), device)
        # Its own option name: `precision` belongs to TensorRT (fp16 ...) and
        # create_backend("auto", ...) hands every backend the same options.
        precision = (onnx_precision or "fp32").lower()
        if precision not in PRECISIONS:
            raise ValueError(
                f"onnxruntime: onnx_precision must be one of {PRECISIONS}, got {precision!r}"
            )
        self.onnx_path = onnx_for_model(model_path, cache_dir)
        if precision == "int8":
            self.onnx_path = int8_onnx_for(self.onnx_path, calibration_dir, cache_dir)
        self.precision = precision
        self.metadata = read_onnx_metadata(self.onnx_path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if intra_op_threads:
            options.intra_op_num_threads = int(intra_op_threads)
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if allow_spinning else "0"
        )
        provider_options = None
        if providers[0] == CUDA_PROVIDER and ":" in device:
            provider_options = [{"device_id": int(device.split(":")[1])}, {}]
        self.session = ort.InferenceSession(
            str(self.onnx_path),
            sess_options=options,
            providers=providers,
            provider_options=provider_options,
        )
        used = self.session.get_providers()
        self.device = "cuda" if used and used[0] == CUDA_PROVIDER else "cpu"
        self.providers = used
        self._input = self.session.get_inputs()[0].name
        self._outputs = list(graph_output_names(self.metadata))
        have = {o.name for o in self.session.get_outputs()}
        missing = [n for n in self._outputs if n not in have]
        if missing:
            raise ValueError(
                f"{self.onnx_path}: the graph lacks the outputs {missing} its metadata calls "
                f"for (it has {sorted(have)}); export it again from its checkpoint "
                f"(lechpe-export)"
            )
        batch_dim = self.session.get_inputs()[0].shape[0]
        self.max_batch = batch_dim if isinstance(batch_dim, int) else None

    def _infer(self, batch: np.ndarray):
        return tuple(self.session.run(self._outputs, {self._input: batch}))
