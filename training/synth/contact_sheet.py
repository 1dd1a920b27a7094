"""Contact sheet: a grid of images with their labels drawn, for looking at the data.

Works on any folder in the 300W-LP/AFLW2000 layout (``<name>.jpg`` + ``<name>.mat``
with ``Pose_Para`` and ``pt2d``) and on a ``lechpe-synth sequence`` folder
(``frame_*.jpg`` + ``ground_truth.csv``).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import cv2
import numpy as np

from lechpe_model.conventions import pose_para_to_euler


def _labels_from_mat(path: Path) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    import scipy.io

    mat = scipy.io.loadmat(path)
    angles = pose_para_to_euler(mat["Pose_Para"])
    pts = np.asarray(mat["pt2d"], np.float64).T if "pt2d" in mat else None
    box = np.asarray(mat["roi"], np.float64).reshape(-1)[:4] if "roi" in mat else None
    return angles, pts, box


def collect_items(folder: Path, count: int, seed: int = 0) -> list[dict]:
    """Up to ``count`` labelled items from ``folder`` (a seeded sample when there are more)."""
    folder = Path(folder)
    items: list[dict] = []
    gt = folder / "ground_truth.csv"
    if gt.exists():
        with open(gt, encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                image = folder / f"frame_{int(row['frame']):06d}.jpg"
                if image.exists():
                    items.append(
                        {
                            "image": image,
                            "angles": np.array([float(row[k]) for k in ("yaw", "pitch", "roll")]),
                            "box": np.array([float(row[k]) for k in ("x1", "y1", "x2", "y2")]),
                            "points": None,
                        }
                    )
    else:
        for image in sorted(folder.glob("*.jpg")):
            mat = image.with_suffix(".mat")
            if not mat.exists():
                continue
            angles, pts, box = _labels_from_mat(mat)
            items.append({"image": image, "angles": angles, "box": box, "points": pts})
    if not items:
        raise FileNotFoundError(
            f"{folder}: no labelled images (.jpg + .mat pairs, or frame_*.jpg + ground_truth.csv)"
        )
    if len(items) > count:
        if gt.exists():  # evenly spaced frames keep the motion readable
            pick = np.linspace(0, len(items) - 1, count).round().astype(int)
        else:
            pick = np.sort(np.random.default_rng(seed).choice(len(items), count, replace=False))
        items = [items[i] for i in pick]
    return items


def draw_item(item: dict) -> np.ndarray:
    """RGB image with its box (green) and 68 points (cyan, nose tip red)."""
    bgr = cv2.imread(str(item["image"]), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{item['image']}: not a readable image")
    scale = max(1, round(256 / max(bgr.shape[:2])))
    if scale > 1:
        bgr = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    if item["box"] is not None:
        x1, y1, x2, y2 = (np.asarray(item["box"]) * scale).round().astype(int)
        cv2.rectangle(bgr, (x1, y1), (x2, y2), (0, 200, 0), 1, cv2.LINE_AA)
    if item["points"] is not None:
        for i, (x, y) in enumerate(np.asarray(item["points"]) * scale):
            colour = (0, 0, 255) if i == 30 else (255, 255, 0)
            cv2.circle(bgr, (round(x), round(y)), 1, colour, -1, cv2.LINE_AA)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def make_contact_sheet(
    folder: Path | str, out_png: Path | str, count: int = 24, columns: int = 6, seed: int = 0
) -> Path:
    """Save a PNG grid of ``count`` images of ``folder`` titled with yaw/pitch/roll."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = collect_items(Path(folder), count, seed)
    columns = max(1, min(columns, len(items)))
    rows = math.ceil(len(items) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.45 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, item in zip(axes.ravel(), items, strict=False):
        ax.imshow(draw_item(item))
        yaw, pitch, roll = item["angles"]
        ax.set_title(f"y {yaw:+.0f}  p {pitch:+.0f}  r {roll:+.0f}", fontsize=8)
    fig.suptitle(f"{Path(folder).name}: yaw / pitch / roll (deg), box, 68 points", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def make_sign_figure(out_png: Path | str, size: int = 256, degrees: float = 25.0) -> Path:
    """Picture of the angle signs: renders at 0 and at +yaw, +pitch, +roll (and minus).

    Each render marks the nose tip (red dot) and, as a white cross, where the nose tip
    is in the frontal render; the roll panels draw the eye line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from training.synth.mesh import IBUG68_VERTICES, NOSE_TIP, astronaut_photo
    from training.synth.renderer import Appearance, Camera, build_head_model, composite, render_head

    camera = Camera.from_fov(size, size, 30.0)
    model = build_head_model(True)
    appearance = Appearance(astronaut_photo(), model.face.tex_xy, np.array([0.2, 0.3, 0.93]))
    t = np.array([0.0, 1.5, camera.fx * model.face.width_cm / (0.45 * size)])
    background = np.full((size, size, 3), 235, np.uint8)

    def shot(yaw, pitch, roll):
        result = render_head(model, appearance, yaw, pitch, roll, t, camera)
        return composite(result, background), result

    _, front = shot(0, 0, 0)
    nose0 = front.vertices_uv[NOSE_TIP]
    panels = [("all 0 (frontal)", (0, 0, 0))]
    for name, axis in (("yaw", 0), ("pitch", 1), ("roll", 2)):
        for sign in (1, -1):
            angles = [0.0, 0.0, 0.0]
            angles[axis] = sign * degrees
            panels.append((f"{name} {sign * degrees:+.0f}", tuple(angles)))
    words = {
        "yaw +": "nose to image LEFT",
        "yaw -": "nose to image right",
        "pitch +": "nose UP (looks up)",
        "pitch -": "nose down",
        "roll +": "CLOCKWISE",
        "roll -": "counter-clockwise",
    }
    fig, axes = plt.subplots(1, len(panels), figsize=(2.3 * len(panels), 2.8))
    for ax, (title, angles) in zip(axes, panels, strict=True):
        image, result = shot(*angles)
        ax.imshow(image)
        nose = result.vertices_uv[NOSE_TIP]
        ax.plot(*nose0, "wx", markersize=8, mew=2)
        ax.plot(*nose, "o", color="red", markersize=4)
        if angles[2] != 0:
            eyes = result.vertices_uv[IBUG68_VERTICES]
            left, right = eyes[36:42].mean(axis=0), eyes[42:48].mean(axis=0)
            ax.plot([left[0], right[0]], [left[1], right[1]], "-", color="yellow", lw=2)
        key = next((k for k in words if title.startswith(k)), None)
        ax.set_title(title + ("\n" + words[key] if key else "\n(x: frontal nose)"), fontsize=8)
        ax.axis("off")
    fig.suptitle(
        "lechpe-synth renders in the 300W-LP/AFLW2000 label convention (degrees)", fontsize=9
    )
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def make_identity_sheet(
    out_png: Path | str,
    count: int = 48,
    columns: int = 8,
    size: int = 128,
    identity_seed: int = 0,
    first: int = 0,
    seed: int = 0,
) -> Path:
    """PNG grid of identities ``first .. first + count - 1``, one render each.

    Each tile: a moderate pose (|yaw| <= 35), the identity's expression draw, one or
    two lights, a plain background (no camera effects), and the identity id written in
    the corner.
    """
    from training.synth.scene import PoseDistribution, SceneConfig, render_sample, sample_rng

    config = SceneConfig(
        width=size,
        height=size,
        identities=(first, first + count),
        identity_seed=identity_seed,
        face_fraction=(0.5, 0.55),
        center_jitter=0.03,
        noise_std=(0.0, 0.0),
        poses=PoseDistribution(kind="uniform", yaw_range=35, pitch_range=12, roll_range=8),
        # The people, not the camera: no blur, grey, clutter or second heads here.
        camera_model="fixed",
        lights=(1, 2),
        defocus_prob=0.0,
        motion_blur_prob=0.0,
        low_res_prob=0.0,
        grey_prob=0.0,
        ir_prob=0.0,
        clutter_prob=0.0,
        second_head_prob=0.0,
    )
    tiles = []
    for k in range(count):
        rng = sample_rng(seed, k)
        background = np.full((size, size, 3), 200 + 10 * (k % 2), np.uint8)
        sample = render_sample(rng, config, background=background, identity=first + k)
        tile = sample.image.copy()
        cv2.putText(tile, str(first + k), (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
        tiles.append(tile)
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    sheet = np.full((rows * size, columns * size, 3), 255, np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        sheet[r * size : (r + 1) * size, c * size : (c + 1) * size] = tile
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    return out
