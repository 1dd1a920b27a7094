"""Dataset loaders: 300W-LP/AFLW2000, BIWI (npz + raw), Pandora, CSV.

Use :func:`load_dataset` with ``fmt="auto"`` (detected from the files) or one of
:data:`FORMATS`.  Every loader returns a :class:`PoseDataset` (samples + a
:class:`SkipReport` of what was left out and why).
"""

from __future__ import annotations

import os

from training.datasets.base import (
    ANGLE_LIMIT,
    REASON_OUT_OF_RANGE,
    ImageLoadError,
    PoseDataset,
    PoseSample,
    SkipReport,
    filter_angle_range,
    load_image,
    sample_box,
)
from training.datasets.biwi import load_biwi_npz, load_biwi_raw
from training.datasets.csv_dataset import DEFAULT_CSV_NAME, load_csv
from training.datasets.pandora import load_pandora
from training.datasets.w300lp import load_300wlp

FORMATS = ("auto", "300wlp", "aflw2000", "biwi_npz", "biwi_raw", "pandora", "csv")

__all__ = [
    "ANGLE_LIMIT",
    "FORMATS",
    "REASON_OUT_OF_RANGE",
    "ImageLoadError",
    "PoseDataset",
    "PoseSample",
    "SkipReport",
    "detect_format",
    "filter_angle_range",
    "load_dataset",
    "load_image",
    "sample_box",
]


def detect_format(path: str) -> str:
    """Guess the layout of ``path`` (see each loader's docstring)."""
    if os.path.isfile(path):
        if path.endswith(".npz"):
            return "biwi_npz"
        if path.endswith(".csv"):
            return "csv"
        raise ValueError(f"{path}: cannot tell the dataset format of this file (.npz or .csv)")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"dataset path does not exist: {path}")
    if os.path.isfile(os.path.join(path, DEFAULT_CSV_NAME)):
        return "csv"
    for _dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        names = set(filenames)
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if ext.lower() in (".jpg", ".jpeg", ".png") and stem + ".mat" in names:
                return "300wlp"
            if name.endswith("_rgb.png") and name[: -len("_rgb.png")] + "_pose.txt" in names:
                return "biwi_raw"
            if stem.endswith("_RGB") and stem[: -len("_RGB")] + "_pose.txt" in names:
                return "pandora"
    raise ValueError(
        f"{path}: no known dataset layout found (300W-LP .jpg+.mat, BIWI _rgb.png+_pose.txt, "
        f"Pandora _RGB.png+_pose.txt, labels.csv or a .npz file)"
    )


def load_dataset(
    path: str,
    fmt: str = "auto",
    angle_limit: float = ANGLE_LIMIT,
    occluded: bool = False,
    list_file: str | None = None,
    channel_order: str = "bgr",
) -> PoseDataset:
    """Load any supported dataset.

    Args:
        path: dataset folder or file.
        fmt: one of :data:`FORMATS`.
        angle_limit: samples with any |angle| above it are excluded and counted.
        occluded: mark the samples as occluded (an occluded replica / subset).
        list_file: Pandora only: the list of frames to load (occluded subset).
        channel_order: BIWI ``.npz`` only: channel order of the stored images.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown dataset format {fmt!r}; expected one of {FORMATS}")
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt in ("300wlp", "aflw2000"):
        return load_300wlp(path, angle_limit, occluded=occluded)
    if fmt == "biwi_npz":
        return load_biwi_npz(path, angle_limit, channel_order=channel_order, occluded=occluded)
    if fmt == "biwi_raw":
        return load_biwi_raw(path, angle_limit, occluded=occluded)
    if fmt == "pandora":
        return load_pandora(path, list_file, angle_limit, occluded=occluded or None)
    return load_csv(path, angle_limit, occluded=occluded)
