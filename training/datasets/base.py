"""Common sample record, skip-and-count reporting and the angle-range filter.

Every loader turns a dataset on disk into a list of :class:`PoseSample` plus a
:class:`SkipReport`.  A loader never raises for one bad item: a missing file,
an unreadable annotation or an out-of-range pose is logged with its path and
the reason, counted, and the item is left out.  Images are decoded lazily (by
:func:`load_image`), so an unreadable image is found - and counted - when the
training data pipeline first touches it (see ``training.torch_data``).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field

import cv2
import numpy as np

from lechpe_model.bins import in_range

LOG = logging.getLogger("training.datasets")

#: Samples with any |angle| above this (degrees) are excluded (66 bins of 3 deg).
ANGLE_LIMIT = 99.0

#: Reason recorded for samples dropped by :func:`filter_angle_range`.
REASON_OUT_OF_RANGE = "pose out of range"

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass
class PoseSample:
    """One face with its pose label.

    Attributes:
        key: identifier unique in its dataset and *equal for the same face in an
            occluded replica* (the path relative to the dataset root, plus
            ``#index`` for array datasets); used for splits and manifests.
        angles: ``(3,)`` float64 degrees (yaw, pitch, roll) in the package's
            label convention (``lechpe_model.conventions``).
        image_path: image file, or the ``.npz`` file for array datasets.
        array_index: row in the ``.npz`` image array (array datasets only).
        box: ``(4,)`` float32 face box ``(x1, y1, x2, y2)`` pixels that the
            crop margin is applied to (a landmark box for 300W-LP/AFLW2000),
            or None when the image is already a face crop (the whole image).
        landmarks: ``(N, 2)`` float32 pixel landmarks when the dataset has them.
        occluded: True for images of an occluded set (synthetic replica or a
            real occluded subset such as Pandora's).
        channel_order: ``"bgr"`` (OpenCV decoding, the default) or ``"rgb"``
            for array datasets stored in RGB order.
        group: what must not be split between training and validation/test
            (a source photo, a subject, an identity; see each loader).  Empty
            means the sample is its own group (:attr:`split_group`).
    """

    key: str
    angles: np.ndarray
    image_path: str
    array_index: int | None = None
    box: np.ndarray | None = None
    landmarks: np.ndarray | None = None
    occluded: bool = False
    channel_order: str = "bgr"
    group: str = ""

    @property
    def split_group(self) -> str:
        """The group the train/validation split keeps together (the key when none)."""
        return self.group or self.key


@dataclass
class SkipReport:
    """Items a loader left out, with the reason of each (for the log and tests)."""

    name: str = "dataset"
    items: list[tuple[str, str]] = field(default_factory=list)

    def skip(self, path: str, reason: str) -> None:
        """Record (and log) one skipped item."""
        self.items.append((str(path), reason))
        LOG.warning("%s: skipped %s: %s", self.name, path, reason)

    @property
    def count(self) -> int:
        return len(self.items)

    def counts(self) -> Counter:
        """Number of skipped items per reason category (text before the first ':')."""
        return Counter(reason.split(":")[0] for _, reason in self.items)

    def summary(self) -> str:
        if not self.items:
            return f"{self.name}: nothing skipped"
        parts = ", ".join(f"{n} {reason}" for reason, n in sorted(self.counts().items()))
        return f"{self.name}: skipped {self.count} item(s) ({parts})"


@dataclass
class PoseDataset:
    """A loaded dataset: samples that passed every check, and what was skipped."""

    samples: list[PoseSample]
    report: SkipReport
    root: str = ""
    format: str = ""

    def __len__(self) -> int:
        return len(self.samples)

    def angles(self) -> np.ndarray:
        """``(N, 3)`` degrees of all samples."""
        if not self.samples:
            return np.zeros((0, 3))
        return np.stack([s.angles for s in self.samples])


def filter_angle_range(
    samples: list[PoseSample], report: SkipReport, limit: float = ANGLE_LIMIT
) -> list[PoseSample]:
    """Drop samples with any ``|angle| > limit`` degrees; each is counted in ``report``.

    (The paper drops 31 of AFLW2000's 2000 images this way.)
    """
    kept = []
    dropped = 0
    for sample in samples:
        if bool(in_range(sample.angles, limit)):
            kept.append(sample)
        else:
            dropped += 1
            report.items.append(
                (
                    sample.key,
                    f"{REASON_OUT_OF_RANGE}: |angle| > {limit:g} deg "
                    f"(yaw, pitch, roll = {np.round(sample.angles, 2).tolist()})",
                )
            )
    if dropped:
        LOG.info(
            "%s: excluded %d of %d samples with |angle| > %g deg",
            report.name,
            dropped,
            len(samples),
            limit,
        )
    return kept


class ImageLoadError(RuntimeError):
    """An image file is missing, unreadable or not a colour image."""


_NPZ_CACHE: dict[str, np.ndarray] = {}


def _npz_images(path: str) -> np.ndarray:
    # One memory copy per process: the .npz arrays of the BIWI layout are small
    # (64 x 64 crops) and re-opening the zip for every item is slow.
    if path not in _NPZ_CACHE:
        with np.load(path) as data:
            _NPZ_CACHE[path] = np.asarray(data["image"])
    return _NPZ_CACHE[path]


def load_image(sample: PoseSample) -> np.ndarray:
    """Decode a sample's image as ``(H, W, 3)`` uint8 **BGR**.

    Raises:
        ImageLoadError: naming the path and the reason.
    """
    if sample.array_index is not None:
        try:
            image = _npz_images(sample.image_path)[sample.array_index]
        except (OSError, KeyError, IndexError, ValueError) as exc:
            raise ImageLoadError(f"{sample.key}: cannot read array image: {exc}") from exc
        image = np.asarray(image)
        if image.dtype != np.uint8:
            image = np.clip(image, 0, 255).astype(np.uint8)
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if sample.channel_order == "rgb":
            image = image[:, :, ::-1]
        return np.ascontiguousarray(image)
    if not os.path.isfile(sample.image_path):
        raise ImageLoadError(f"{sample.image_path}: image file missing")
    image = cv2.imread(sample.image_path, cv2.IMREAD_COLOR)
    if image is None:
        raise ImageLoadError(f"{sample.image_path}: image unreadable (not a decodable image)")
    return image


def sample_box(sample: PoseSample, image_shape) -> np.ndarray:
    """The face box the crop margin applies to: the sample's box or the whole image."""
    if sample.box is not None:
        return np.asarray(sample.box, dtype=np.float32)
    height, width = image_shape[:2]
    return np.array([0.0, 0.0, float(width), float(height)], dtype=np.float32)


def relative_key(path: str, root: str) -> str:
    """Path relative to the dataset root with '/' separators (the sample key)."""
    return os.path.relpath(path, root).replace(os.sep, "/")


def find_images(root: str, extensions=IMAGE_EXTENSIONS) -> list[str]:
    """All image files under ``root`` (recursive), sorted for a stable order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            if name.lower().endswith(extensions):
                found.append(os.path.join(dirpath, name))
    return sorted(found)
