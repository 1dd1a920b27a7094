"""A plain CSV layout for users' own data.

``labels.csv`` (any name; a folder argument means ``<folder>/labels.csv``)::

    image,yaw,pitch,roll,x1,y1,x2,y2
    faces/0001.jpg,12.5,-3.0,1.2,40,52,180,210
    faces/0002.jpg,-30.0,8.0,0.0,,,,

* header row required; columns ``image,yaw,pitch,roll`` mandatory, the box
  columns ``x1,y1,x2,y2`` optional (per row: all four or none);
* image paths relative to the CSV file's folder (absolute paths work too);
* angles in **degrees** in the package's label convention (see
  docs/CONVENTIONS.md);
* with a box, the crop margin is added to it (a tight face box, like the
  landmark box of 300W-LP); without one the whole image is the face crop;
* optional column ``group`` (or ``identity``, or ``subject``): what the
  train/validation split keeps together (a person, a source photo); without
  one every image is its own group.
"""

from __future__ import annotations

import csv
import os

import numpy as np

from training.datasets.base import (
    ANGLE_LIMIT,
    PoseDataset,
    PoseSample,
    SkipReport,
    filter_angle_range,
    relative_key,
)

REQUIRED_COLUMNS = ("image", "yaw", "pitch", "roll")
BOX_COLUMNS = ("x1", "y1", "x2", "y2")
#: Columns that name a row's split group, first found wins.
GROUP_COLUMNS = ("group", "identity", "subject")
DEFAULT_CSV_NAME = "labels.csv"


def load_csv(path: str, angle_limit: float = ANGLE_LIMIT, occluded: bool = False) -> PoseDataset:
    """Load a CSV dataset (a file, or a folder containing ``labels.csv``)."""
    if os.path.isdir(path):
        path = os.path.join(path, DEFAULT_CSV_NAME)
    root = os.path.dirname(os.path.abspath(path))
    report = SkipReport(os.path.basename(path))
    samples: list[PoseSample] = []
    try:
        handle = open(path, newline="", encoding="utf-8")
    except OSError as exc:
        report.skip(path, f"unreadable dataset file: {exc}")
        return PoseDataset([], report, root=root, format="csv")
    with handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            report.skip(path, f"malformed dataset: missing column(s) {missing} in header {columns}")
            return PoseDataset([], report, root=root, format="csv")
        group_column = next((c for c in GROUP_COLUMNS if c in columns), None)
        for line_no, row in enumerate(reader, start=2):
            where = f"{path}:{line_no}"
            try:
                angles = np.array([float(row[c]) for c in ("yaw", "pitch", "roll")])
                if not np.all(np.isfinite(angles)):
                    raise ValueError("non-finite angle")
                box_values = [(row.get(c) or "").strip() for c in BOX_COLUMNS]
                box = None
                if any(box_values):
                    box = np.array([float(v) for v in box_values], dtype=np.float32)
                    if box[2] <= box[0] or box[3] <= box[1]:
                        raise ValueError(f"box {box.tolist()} has x2 <= x1 or y2 <= y1")
            except (TypeError, ValueError) as exc:
                report.skip(where, f"malformed annotation: {exc}")
                continue
            image = (row["image"] or "").strip()
            image_path = image if os.path.isabs(image) else os.path.join(root, image)
            if not os.path.isfile(image_path):
                report.skip(where, f"missing image: {image_path}")
                continue
            samples.append(
                PoseSample(
                    key=relative_key(image_path, root),
                    angles=angles,
                    image_path=image_path,
                    box=box,
                    occluded=occluded,
                    group=(row.get(group_column) or "").strip() if group_column else "",
                )
            )
    samples = filter_angle_range(samples, report, angle_limit)
    return PoseDataset(samples, report, root=root, format="csv")
