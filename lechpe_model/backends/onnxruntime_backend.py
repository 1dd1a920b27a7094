"""ONNX Runtime backend (CPU; CUDA execution provider when installed and wanted)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from lechpe_model.backends import Backend, BackendUnavailable, onnx_for_model, read_onnx_metadata

LOG = logging.getLogger(__name__)

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


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
    """

    name = "onnxruntime"

    def __init__(
        self,
        model_path: str | Path,
        device: str = "auto",
        intra_op_threads: int | None = None,
        cache_dir: str | Path | None = None,
        allow_spinning: bool = False,
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
        self.onnx_path = onnx_for_model(model_path, cache_dir)
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
        self._outputs = ["angles", "uncertainty", "assignment"]
        batch_dim = self.session.get_inputs()[0].shape[0]
        self.max_batch = batch_dim if isinstance(batch_dim, int) else None

    def _infer(self, batch: np.ndarray):
        angles, uncertainty, assignment = self.session.run(self._outputs, {self._input: batch})
        return angles, uncertainty, assignment
