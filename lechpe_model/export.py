"""Checkpoint -> ONNX with the checkpoint metadata embedded.

The graph is ``LECHPENet.forward``::

    input  "image"        (N, 3, S, S) float32, preprocess_crops output
    output "angles"       (N, 3) degrees (yaw, pitch, roll)
           "uncertainty"  (N, 3) degrees
           "assignment"   (N, K) soft cluster assignment
           "log_error"    (N, 3) the error head's log |error| (only models with
                          an error head: ``ModelMetadata.error_head``)

N is a dynamic axis ("batch") unless ``dynamic_batch=False``. The metadata
JSON of the checkpoint is stored in the model's ``metadata_props`` under
``lechpe_metadata`` (read it back with ``backends.read_onnx_metadata``), and
the sha256 of the source checkpoint under ``lechpe_source_sha256``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from pathlib import Path

from lechpe_model.checkpoint import METADATA_KEY, load_checkpoint

LOG = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAMES = ("angles", "uncertainty", "assignment")
#: The optional fourth output (``network.LECHPENet.error_head``).
ERROR_OUTPUT_NAME = "log_error"
SOURCE_HASH_KEY = "lechpe_source_sha256"
DEFAULT_OPSET = 17


def graph_output_names(meta) -> tuple[str, ...]:
    """The exported graph's outputs for a model with this metadata, in order."""
    if getattr(meta, "error_head", False):
        return (*OUTPUT_NAMES, ERROR_OUTPUT_NAME)
    return OUTPUT_NAMES


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_onnx(
    checkpoint_path: str | os.PathLike,
    onnx_path: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
) -> Path:
    """Export a ``.safetensors`` checkpoint to ONNX and check the result.

    Args:
        checkpoint_path: checkpoint written by ``checkpoint.save_checkpoint``.
        onnx_path: destination file (written atomically: temp file + rename).
        opset: ONNX opset version.
        dynamic_batch: make the batch axis dynamic (needed for multi-face batches
            and TensorRT optimisation profiles).

    Returns:
        ``onnx_path`` as a Path.

    Raises:
        CheckpointError: invalid checkpoint. onnx.checker.ValidationError: the
        exported graph fails ``onnx.checker.check_model``.
    """
    import onnx
    import torch

    model, meta = load_checkpoint(checkpoint_path, device="cpu")
    model.eval()
    onnx_path = Path(onnx_path)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    size = int(meta.input_size)
    dummy = torch.zeros(2 if dynamic_batch else 1, 3, size, size)
    output_names = graph_output_names(meta)
    dynamic_axes = (
        {name: {0: "batch"} for name in (INPUT_NAME, *output_names)} if dynamic_batch else None
    )
    fd, tmp = tempfile.mkstemp(prefix=f".{onnx_path.name}.", suffix=".tmp", dir=onnx_path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript exporter (dynamo=False) needs no onnxscript and
            # gives a plain graph TensorRT's parser handles.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (dummy,),
                tmp,
                input_names=[INPUT_NAME],
                output_names=list(output_names),
                opset_version=int(opset),
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
                dynamo=False,
            )
        proto = onnx.load(tmp)
        del proto.metadata_props[:]
        for key, value in (
            (METADATA_KEY, meta.to_json()),
            (SOURCE_HASH_KEY, file_sha256(checkpoint_path)),
        ):
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.producer_name = "lechpe_model.export"
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, onnx_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    LOG.info("exported %s -> %s (opset %d)", checkpoint_path, onnx_path, opset)
    return onnx_path
