"""Pandora (real occlusions), per-frame RGB + annotation layout.

Expected layout (any depth of sub-folders, e.g. ``<subject>/<sequence>/RGB/``)::

    ROOT/
      01/base_1_ID01/RGB/frame_000123_RGB.png    # colour frame (.png or .jpg)
      01/base_1_ID01/RGB/frame_000123_pose.txt   # annotation of that frame
      occluded.txt                                # optional list file

* ``<frame>_RGB.<ext>`` is the image; its annotation is ``<frame>_pose.txt``
  (the ``_RGB`` suffix replaced by ``_pose``).
* The annotation's first line holds three numbers ``yaw pitch roll`` in
  **degrees, already in the 300W-LP label convention** (positive yaw = nose
  toward the image's left, positive pitch = looking up, positive roll =
  clockwise).  An optional second line ``x1 y1 x2 y2`` gives the face box in
  pixels; the crop margin is added to it.  Without a box the whole image is the
  face (a pre-cropped head image) and no margin is added.
* The occluded subset (the paper's 9619 images) is selected with a list file:
  one image path per line, relative to ROOT (``#`` starts a comment).  Only
  listed frames are loaded; a listed frame that does not exist is skipped and
  counted.

Converting Pandora's own annotation files into this layout is a one-off
script outside this package (sign conventions differ between releases; check
them with a few frames of known pose before training or evaluating).
"""

from __future__ import annotations

import os

import numpy as np

from training.datasets.base import (
    ANGLE_LIMIT,
    IMAGE_EXTENSIONS,
    PoseDataset,
    PoseSample,
    SkipReport,
    filter_angle_range,
    find_images,
    relative_key,
)


def read_pandora_pose(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``<frame>_pose.txt`` -> ((3,) yaw/pitch/roll degrees, (4,) box or None)."""
    with open(path, encoding="utf-8") as handle:
        rows = [line.split() for line in handle if line.strip()]
    try:
        values = [[float(v) for v in row] for row in rows]
    except ValueError as exc:
        raise ValueError(f"malformed annotation: {exc}") from exc
    if not values or len(values[0]) != 3 or not np.all(np.isfinite(values[0])):
        raise ValueError("malformed annotation: first line must be 'yaw pitch roll' (degrees)")
    box = None
    if len(values) > 1:
        if len(values[1]) != 4 or values[1][2] <= values[1][0] or values[1][3] <= values[1][1]:
            raise ValueError(f"malformed annotation: bad face box line {values[1]}")
        box = np.array(values[1], dtype=np.float32)
    return np.array(values[0], dtype=np.float64), box


def read_list_file(path: str) -> list[str]:
    """Relative image paths, one per line; blank lines and ``#`` comments ignored."""
    with open(path, encoding="utf-8") as handle:
        lines = [line.split("#", 1)[0].strip() for line in handle]
    return [line for line in lines if line]


def annotation_path(image_path: str) -> str:
    stem = os.path.splitext(image_path)[0]
    if stem.endswith("_RGB"):
        stem = stem[: -len("_RGB")]
    return stem + "_pose.txt"


def load_pandora(
    root: str,
    list_file: str | None = None,
    angle_limit: float = ANGLE_LIMIT,
    occluded: bool | None = None,
) -> PoseDataset:
    """Load Pandora frames (all, or those in ``list_file``).

    Args:
        occluded: mark samples as occluded; default True when a list file
            selects the (occluded) subset, False otherwise.
    """
    report = SkipReport(os.path.basename(os.path.normpath(root)) or root)
    if list_file is not None:
        if not os.path.isabs(list_file) and not os.path.isfile(list_file):
            list_file = os.path.join(root, list_file)
        images = [os.path.join(root, rel) for rel in read_list_file(list_file)]
        marked = True if occluded is None else occluded
    else:
        images = [
            p
            for p in find_images(root, IMAGE_EXTENSIONS)
            if os.path.splitext(p)[0].endswith("_RGB")
        ]
        marked = bool(occluded)
    samples: list[PoseSample] = []
    for image_path in images:
        if not os.path.isfile(image_path):
            report.skip(image_path, "missing image: listed frame does not exist")
            continue
        pose_path = annotation_path(image_path)
        if not os.path.isfile(pose_path):
            report.skip(image_path, "missing annotation: no _pose.txt for the frame")
            continue
        try:
            angles, box = read_pandora_pose(pose_path)
        except (OSError, ValueError) as exc:
            report.skip(pose_path, str(exc))
            continue
        key = relative_key(image_path, root)
        samples.append(
            PoseSample(
                key=key,
                angles=angles,
                image_path=image_path,
                box=box,
                occluded=marked,
                # split by subject: the first folder under the root
                group="subject:" + key.split("/")[0] if "/" in key else "",
            )
        )
    samples = filter_angle_range(samples, report, angle_limit)
    return PoseDataset(samples, report, root=root, format="pandora")
