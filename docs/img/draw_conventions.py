"""Draw docs/img/conventions.png: what each positive angle does to a face in the image.

The schematic head (a unit sphere with eyes, nose and mouth) is rotated with
the package's own ``lechpe_model.conventions.euler_to_matrix`` and projected
orthographically (image u = x, v = -y), so the picture shows what the code
does, not what someone believes it does.

Run from the repository root::

    .venv/bin/python docs/img/draw_conventions.py            # writes docs/img/conventions.png
    .venv/bin/python docs/img/draw_conventions.py out.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lechpe_model.conventions import euler_to_matrix

ANGLE = 30.0
PANELS = [
    ((0.0, 0.0, 0.0), "all angles 0 (frontal)", "the person looks into the camera"),
    (
        (ANGLE, 0.0, 0.0),
        f"yaw = +{ANGLE:.0f}°",
        "nose turns to the image's LEFT\n(person turns to their own right)",
    ),
    ((0.0, ANGLE, 0.0), f"pitch = +{ANGLE:.0f}°", "nose goes UP\n(person looks up)"),
    (
        (0.0, 0.0, ANGLE),
        f"roll = +{ANGLE:.0f}°",
        "face turns CLOCKWISE\n(top of head to the image's right)",
    ),
]
# Head axes as published in ROS (REP-103 body axes): x forward, y left, z up,
# given in the head-model frame (x image-right = person's left, y up, z out of the face).
AXES = [
    ("x fwd", (0, 0, 1), "tab:red"),
    ("y left", (1, 0, 0), "tab:green"),
    ("z up", (0, 1, 0), "tab:blue"),
]


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _face_features() -> dict[str, np.ndarray]:
    """3D polylines on the unit-sphere head (model frame: x right, y up, z toward viewer)."""
    t = np.linspace(0, 2 * np.pi, 40)
    eye = 0.09 * np.stack([np.cos(t), 0.6 * np.sin(t), np.zeros_like(t)], axis=1)
    s = np.linspace(-0.3, 0.3, 20)
    return {
        "left eye": _unit(eye + [0.33, 0.28, 0.9]),  # person's left = image right when frontal
        "right eye": _unit(eye + [-0.33, 0.28, 0.9]),
        "mouth": _unit(np.stack([s, -0.45 + 0.6 * s**2, np.full_like(s, 0.85)], axis=1)),
        "nose": np.array([[0.0, 0.1, 1.0], [0.0, -0.12, 1.3], [0.0, -0.2, 1.0]]),
        "brows": _unit(np.array([[0.18, 0.45, 0.9], [0.48, 0.47, 0.8]])),
        "brows2": _unit(np.array([[-0.18, 0.45, 0.9], [-0.48, 0.47, 0.8]])),
    }


def _project(matrix: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image u (right), v (down) and depth toward the viewer of model points."""
    cam = points @ matrix.T
    return cam[:, 0], -cam[:, 1], cam[:, 2]


def _draw_head(ax, yaw: float, pitch: float, roll: float, ghost: bool = False) -> None:
    matrix = euler_to_matrix(yaw, pitch, roll)
    style = (
        {"color": "0.75", "lw": 1.0, "ls": "--"}
        if ghost
        else {"color": "black", "lw": 1.8, "zorder": 3}
    )
    for points in _face_features().values():
        u, v, depth = _project(matrix, points)
        visible = depth > -0.05  # hide features on the far side of the head
        u, v = np.where(visible, u, np.nan), np.where(visible, v, np.nan)
        ax.plot(u, v, **style)
    if ghost:
        return
    for name, direction, color in AXES:
        u, v, depth = _project(matrix, np.array([[0, 0, 0], direction], dtype=float) * 1.45)
        if np.hypot(u[1], v[1]) < 0.35:  # axis (nearly) along the line of sight
            marker = "o" if depth[1] > 0 else "X"  # toward the viewer / away from the viewer
            ax.plot(u[1], v[1], marker=marker, color=color, ms=9, mfc="none", mew=2, zorder=1)
            ax.text(u[1] - 0.12, v[1] + 0.22, name, color=color, ha="right", fontsize=8)
            continue
        ax.annotate(
            "",
            xy=(u[1], v[1]),
            xytext=(u[0], v[0]),
            arrowprops={"arrowstyle": "-|>", "color": color, "lw": 2, "alpha": 0.7},
            zorder=1,
        )
        ax.text(u[1] * 1.12, v[1] * 1.12, name, color=color, ha="center", va="center", fontsize=8)


def draw(path: str | Path) -> Path:
    """Render the figure to ``path`` (PNG) and return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.0 * len(PANELS), 4.9))
    circle = np.linspace(0, 2 * np.pi, 200)
    for ax, (angles, title, words) in zip(axes, PANELS, strict=True):
        ax.plot(np.cos(circle), np.sin(circle), color="0.4", lw=1.5)  # head outline
        if any(angles):
            _draw_head(ax, 0.0, 0.0, 0.0, ghost=True)
        _draw_head(ax, *angles)
        ax.set_title(f"{title}\n{words}", fontsize=10)
        ax.set_xlim(-1.9, 1.9)
        ax.set_ylim(1.9, -1.9)  # image rows grow downwards
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("image u → right,  v ↓ down", fontsize=8)
    fig.suptitle(
        "LEC-HPE angle signs as seen in the camera image (300W-LP / AFLW2000 label convention, "
        "R = (Rz(roll) Ry(yaw) Rx(pitch))ᵀ)\n"
        "arrows: published head frame in REP-103 body axes (red x forward, green y left, blue z up); "
        "circle: axis toward the viewer; dashed grey: the frontal face. Drawn with lechpe_model.conventions.euler_to_matrix.",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("conventions.png")
    print(draw(out))
