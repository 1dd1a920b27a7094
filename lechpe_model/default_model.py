"""The default model embedded in the package (``lechpe_model/assets``)."""

from __future__ import annotations

from pathlib import Path

#: File name of the embedded default model.
DEFAULT_MODEL_NAME = "default_model.safetensors"


class DefaultModelMissing(FileNotFoundError):
    """The embedded default model is not installed."""


def default_model_path() -> Path:
    """Path of ``lechpe_model/assets/default_model.safetensors``.

    Raises:
        DefaultModelMissing: when the file is not there (e.g. a source checkout
            before the trained model was added), saying how to get a model.
    """
    path = Path(__file__).resolve().parent / "assets" / DEFAULT_MODEL_NAME
    if not path.is_file():
        raise DefaultModelMissing(
            f"the default model {path} is not installed; pass a model explicitly "
            "(--model PATH: a .safetensors checkpoint from lechpe-train or an .onnx from "
            "lechpe-export)"
        )
    return path
