"""INT8 post-training static quantisation of an exported model (ONNX Runtime, CPU).

::

    tensors = calibration_tensors("/tmp/synth_calib", metadata)   # (N, 3, S, S) float32
    save_calibration_tensors("calib.npy", tensors)                 # shared with TensorRT
    quantize_onnx_int8("model.onnx", "model.int8.onnx", tensors)

Calibration data
----------------
The calibration set is a folder of images made into network inputs with the
project's own preprocessing (``lechpe_model.preprocessing``), so the ranges
are those of the crops the deployed network sees:

* a folder with an ``index.csv`` holding ``name,...,x1,y1,x2,y2`` (what
  ``lechpe-synth images`` writes): every image is cropped around its face box
  with ``expand_box(box, TEST_MARGIN)`` + ``crop_face``;
* any other folder: every image (jpg/png/bmp) is taken as a face crop.

The preprocessed batch is stored as one ``.npy`` file (float32, NCHW,
"calibration tensors"). The same file feeds ONNX Runtime here and
TensorRT's entropy calibrator (``TensorRTBackend(calibration_dir=...)``
accepts the ``.npy`` as well as a folder), so both runtimes calibrate on the
same inputs.

Quantisation
------------
``onnxruntime.quantization.quantize_static`` with the settings ORT
recommends for x86 CPUs with VNNI: QDQ format, signed int8 activations and
weights (symmetric activations), per-channel weights, MinMax calibration.
The first convolution (sees raw normalised pixels) and the three
angle heads + clustering tail (the outputs are sensitive: an angle is an
expectation over 66 bins) can be kept in float with ``keep_float``; see
docs/BENCHMARKS.md for what each choice measured.

The checkpoint metadata (``lechpe_metadata``) and source hash are carried
into the INT8 file, plus ``lechpe_precision = int8`` and the calibration
tensors' sha256.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from lechpe_model import preprocessing as pp

LOG = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
PRECISION_KEY = "lechpe_precision"
CALIBRATION_HASH_KEY = "lechpe_calibration_sha256"
#: Default number of calibration crops (ORT's MinMax converges with a few hundred).
DEFAULT_CALIBRATION_COUNT = 256


class CalibrationError(ValueError):
    """The calibration data cannot be used (what is wrong is in the message)."""


# ------------------------------------------------------------------ calibration set


def _read_index(folder: Path) -> list[tuple[Path, np.ndarray]]:
    """(image path, face box) rows of a ``lechpe-synth`` style ``index.csv``."""
    rows = []
    with open(folder / "index.csv", newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        needed = {"name", "x1", "y1", "x2", "y2"}
        if not needed <= set(reader.fieldnames or ()):
            raise CalibrationError(
                f"{folder / 'index.csv'}: needs columns {sorted(needed)}, has {reader.fieldnames}"
            )
        for row in reader:
            name = row["name"]
            image = folder / name
            if not image.suffix:
                image = next(
                    (
                        folder / f"{name}{s}"
                        for s in IMAGE_SUFFIXES
                        if (folder / f"{name}{s}").is_file()
                    ),
                    image,
                )
            box = np.array([float(row[k]) for k in ("x1", "y1", "x2", "y2")], np.float32)
            rows.append((image, box))
    return rows


def calibration_crops(
    source: str | os.PathLike, limit: int | None = DEFAULT_CALIBRATION_COUNT
) -> list[np.ndarray]:
    """uint8 BGR face crops of a calibration folder (see the module doc), sorted by name.

    Unreadable images are skipped with a warning and counted.

    Raises:
        CalibrationError: no folder, or no usable image in it.
    """
    folder = Path(source)
    if not folder.is_dir():
        raise CalibrationError(f"calibration folder not found: {folder}")
    crops, skipped = [], 0
    if (folder / "index.csv").is_file():
        items = sorted(_read_index(folder), key=lambda r: r[0].name)
    else:
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        items = [(p, None) for p in files]
    for path, box in items:
        if limit is not None and len(crops) >= limit:
            break
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            LOG.warning("calibration: cannot read %s, skipped", path)
            skipped += 1
            continue
        if box is not None:
            image = pp.crop_face(image, pp.expand_box(box, pp.TEST_MARGIN, square=True))
        crops.append(image)
    if skipped:
        LOG.warning("calibration: %d unreadable image(s) skipped", skipped)
    if not crops:
        raise CalibrationError(
            f"no usable image ({', '.join(IMAGE_SUFFIXES)}) in calibration folder {folder}"
        )
    return crops


def calibration_tensors(
    source: str | os.PathLike,
    input_size: int = pp.INPUT_SIZE,
    mean: Sequence[float] = pp.IMAGENET_MEAN,
    std: Sequence[float] = pp.IMAGENET_STD,
    limit: int | None = DEFAULT_CALIBRATION_COUNT,
) -> np.ndarray:
    """Network inputs ``(N, 3, S, S)`` float32 for calibration.

    ``source`` is a calibration folder (see the module doc) or a ``.npy``
    written by :func:`save_calibration_tensors` (returned as loaded, checked).
    """
    path = Path(source)
    if path.suffix.lower() == ".npy":
        return load_calibration_tensors(path, input_size)
    return pp.preprocess_crops(calibration_crops(path, limit), input_size, mean, std)


def save_calibration_tensors(path: str | os.PathLike, tensors: np.ndarray) -> Path:
    """Write calibration tensors as ``.npy`` (atomically). Returns the path."""
    path = Path(path)
    tensors = np.ascontiguousarray(tensors, dtype=np.float32)
    _check_tensors(tensors, None, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npy", dir=path.parent)
    os.close(fd)
    try:
        np.save(tmp, tensors, allow_pickle=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_calibration_tensors(path: str | os.PathLike, input_size: int | None = None) -> np.ndarray:
    """Read a ``.npy`` of calibration tensors (no pickles) and check its shape."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"calibration tensors file not found: {path}")
    tensors = np.load(path, allow_pickle=False)
    _check_tensors(tensors, input_size, path)
    return tensors


def _check_tensors(tensors: np.ndarray, input_size: int | None, where: Path) -> None:
    shape = tensors.shape
    if (
        tensors.dtype != np.float32
        or tensors.ndim != 4
        or shape[0] < 1
        or shape[1] != 3
        or shape[2] != shape[3]
        or (input_size is not None and shape[2] != int(input_size))
    ):
        want = f"(N, 3, {input_size or 'S'}, {input_size or 'S'}) float32 with N >= 1"
        raise CalibrationError(
            f"{where}: calibration tensors must be {want}, got {shape} {tensors.dtype}"
        )


def tensors_sha256(tensors: np.ndarray) -> str:
    """Hex sha256 of the tensors' bytes (shape-sensitive)."""
    digest = hashlib.sha256(str(tensors.shape).encode())
    digest.update(np.ascontiguousarray(tensors, np.float32).tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------- quantising


def default_int8_path(onnx_path: str | os.PathLike) -> Path:
    """``model.onnx`` -> ``model.int8.onnx`` (beside it)."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(onnx_path.stem + ".int8.onnx")


def _nodes_to_keep_float(model, keep_float: Sequence[str]) -> list[str]:
    """Node names for the ``keep_float`` groups: ``"first"`` (the first Conv),
    ``"tail"`` (every node after the last Conv: pooling, heads, softmax, clustering)."""
    nodes = list(model.graph.node)
    conv_idx = [i for i, n in enumerate(nodes) if n.op_type == "Conv"]
    names = []
    if "first" in keep_float and conv_idx:
        names.append(nodes[conv_idx[0]].name)
    if "tail" in keep_float and conv_idx:
        names.extend(n.name for n in nodes[conv_idx[-1] + 1 :])
    unknown = set(keep_float) - {"first", "tail"}
    if unknown:
        raise ValueError(f"keep_float: unknown group(s) {sorted(unknown)} (first, tail)")
    return [n for n in names if n]


def quantize_onnx_int8(
    fp32_onnx: str | os.PathLike,
    int8_onnx: str | os.PathLike,
    tensors: np.ndarray,
    quant_format: str = "qdq",
    per_channel: bool = True,
    reduce_range: bool = False,
    keep_float: Sequence[str] = ("first", "tail"),
    activations: str = "uint8",
    calibrate_method: str = "minmax",
    batch_size: int = 16,
) -> Path:
    """Statically quantise an exported model to INT8 for ONNX Runtime's CPU provider.

    Args:
        fp32_onnx: model from ``export.export_onnx`` (carries ``lechpe_metadata``).
        int8_onnx: destination (written atomically).
        tensors: calibration inputs ``(N, 3, S, S)`` float32 (:func:`calibration_tensors`).
        quant_format: ``"qdq"`` (QuantizeLinear/DequantizeLinear pairs; ORT fuses
            them into integer kernels) or ``"qoperator"`` (QLinearConv ... nodes).
        per_channel: one weight scale per output channel (needed for MobileNet's
            depthwise convolutions to keep accuracy).
        reduce_range: 7-bit weights (for CPUs without VNNI, where 8-bit
            multiply-adds can saturate); not needed with VNNI.
        keep_float: node groups left in float32: ``"first"`` (first Conv),
            ``"tail"`` (everything after the last Conv).
        activations: ``"int8-symmetric"`` (ORT's advice for VNNI: signed, zero
            point 0) or ``"uint8"`` (asymmetric unsigned, for CPUs without VNNI).
        calibrate_method: ``"minmax"``, ``"entropy"`` or ``"percentile"``.
        batch_size: calibration batch size.

    Returns:
        ``int8_onnx`` as a Path.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from lechpe_model.export import INPUT_NAME

    fp32_onnx, int8_onnx = Path(fp32_onnx), Path(int8_onnx)
    formats = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}
    if quant_format.lower() not in formats:
        raise ValueError(f"quant_format must be one of {sorted(formats)}, got {quant_format!r}")
    if activations not in ("int8-symmetric", "uint8"):
        raise ValueError(f"activations must be 'int8-symmetric' or 'uint8', got {activations!r}")
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if calibrate_method not in methods:
        raise ValueError(
            f"calibrate_method must be one of {sorted(methods)}, got {calibrate_method!r}"
        )
    tensors = np.ascontiguousarray(tensors, dtype=np.float32)
    _check_tensors(tensors, None, Path("<calibration tensors>"))
    source = onnx.load(str(fp32_onnx))
    props = {p.key: p.value for p in source.metadata_props}

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._starts = iter(range(0, len(tensors), batch_size))

        def get_next(self):
            start = next(self._starts, None)
            if start is None:
                return None
            return {INPUT_NAME: tensors[start : start + batch_size]}

    int8_onnx.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lechpe_quant_", dir=int8_onnx.parent) as work:
        prepared = Path(work) / "prepared.onnx"
        # ORT's recommended pre-processing: symbolic shape inference + graph
        # optimisation (folds BatchNorm into Conv) so quantisation sees fused nodes.
        quant_pre_process(str(fp32_onnx), str(prepared), skip_symbolic_shape=False)
        prepared_model = onnx.load(str(prepared))
        exclude = _nodes_to_keep_float(prepared_model, keep_float)
        out_tmp = Path(work) / "int8.onnx"
        quantize_static(
            str(prepared),
            str(out_tmp),
            Reader(),
            quant_format=formats[quant_format.lower()],
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=QuantType.QInt8
            if activations == "int8-symmetric"
            else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
            calibrate_method=methods[calibrate_method],
            extra_options={
                "ActivationSymmetric": activations == "int8-symmetric",
                "WeightSymmetric": True,
            },
        )
        model = onnx.load(str(out_tmp))
        props.update(
            {
                PRECISION_KEY: "int8",
                CALIBRATION_HASH_KEY: tensors_sha256(tensors),
                "lechpe_int8_settings": (
                    f"format={quant_format.lower()} per_channel={per_channel} "
                    f"reduce_range={reduce_range} activations={activations} "
                    f"calibration={calibrate_method} keep_float={','.join(keep_float) or '-'} "
                    f"calibration_count={len(tensors)}"
                ),
            }
        )
        del model.metadata_props[:]
        for key, value in props.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        model.producer_name = "lechpe_model.quantization"
        final_tmp = Path(work) / "final.onnx"
        onnx.save(model, str(final_tmp))
        os.chmod(final_tmp, 0o644)
        os.replace(final_tmp, int8_onnx)
    LOG.info("quantised %s -> %s (%s)", fp32_onnx, int8_onnx, props["lechpe_int8_settings"])
    return int8_onnx
