"""PyTorch eager backend (CPU or CUDA) for ``.safetensors`` checkpoints."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from lechpe_model.backends import Backend, BackendUnavailable

LOG = logging.getLogger(__name__)


def resolve_torch_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when a CUDA GPU is visible, else ``"cpu"``."""
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailable(
            f"torch: device {device!r} requested but torch sees no CUDA GPU "
            f"(torch {torch.__version__}); use device='cpu'"
        )
    return str(device)


class TorchBackend(Backend):
    """The network in PyTorch eager mode, ``torch.inference_mode``.

    Args:
        model_path: ``.safetensors`` checkpoint (``checkpoint.save_checkpoint``).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        intra_op_threads: ``torch.set_num_threads`` (process-wide!) when given.
    """

    name = "torch"

    def __init__(
        self,
        model_path: str | Path,
        device: str = "auto",
        intra_op_threads: int | None = None,
        **other,
    ) -> None:
        try:
            import torch
            import torchvision  # noqa: F401  (the encoders come from torchvision)
        except Exception as exc:
            raise BackendUnavailable(
                f"torch backend needs torch and torchvision ({type(exc).__name__}: {exc}); "
                "install them or use the onnxruntime backend with an exported .onnx"
            ) from exc
        from lechpe_model.checkpoint import load_checkpoint

        if Path(model_path).suffix == ".onnx":
            raise BackendUnavailable(
                f"torch backend loads .safetensors checkpoints, not the ONNX file {model_path}"
            )
        if other:
            LOG.debug("torch backend ignores options %s", sorted(other))
        if intra_op_threads:
            torch.set_num_threads(int(intra_op_threads))
        self.device = resolve_torch_device(device)
        self._torch = torch
        self.model, self.metadata = load_checkpoint(model_path, device=self.device)
        self.model.eval()
        self.model_path = Path(model_path)

    def _infer(self, batch: np.ndarray):
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device)
            return tuple(out.float().cpu().numpy() for out in self.model(x))
