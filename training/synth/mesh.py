"""The face mesh the renderer draws: MediaPipe canonical face model + astronaut texture.

Geometry (``training/assets/mediapipe_canonical_face_model.obj``): 468 vertices in
centimetres in the head-model frame of the label convention (x to the image's right
for a frontal face, i.e. the person's left; y up; z toward the viewer; nose tip at
z ~ 7.6), 898 triangles wound counter-clockwise when seen from the front.

Texture: ``training/assets/astronaut_face_mesh_landmarks.npy`` holds, for every
vertex, the pixel (x, y) where MediaPipe Face Mesh found that vertex on scikit-image's
``astronaut`` photo (512x512 RGB), so those pixels are per-vertex texture coordinates.

68 landmark-like points: :data:`IBUG68_VERTICES` picks, for each iBUG-68 point (the
300W/AFLW2000 ``pt2d`` semantics), the MediaPipe vertex that sits closest to it:

====== ======== ===============================================================
iBUG   count    MediaPipe vertices
====== ======== ===============================================================
0-16   17       face outline from the image-left temple at eye height (vertex
                127, person's right) over the chin (8 = vertex 152) to the
                image-right temple (356), at equal arc length along the mesh
                boundary
17-21  5        image-left brow (person's right), outer to inner
22-26  5        image-right brow, inner to outer
27-30  4        nose bridge from between the eyes (168) down to the tip (4)
31-35  5        nostril base, image-left to image-right, 33 = subnasale (2)
36-41  6        image-left eye: outer corner (33), upper lid, inner corner
                (133), lower lid
42-47  6        image-right eye: inner corner (362), upper lid, outer corner
                (263), lower lid
48-59  12       outer lip contour from the image-left corner (61) clockwise
60-67  8        inner lip contour from the image-left corner (78)
====== ======== ===============================================================

The MediaPipe mesh ends at the face outline and has no vertices on the jaw below the
ears, so the upper jaw points (1-3, 13-15) run down the side of the face rather than
along the mandible; all other points are on their anatomical places. Because every point is a mesh vertex, its projection in a
render is exact (it is projected whether or not it is visible, like 300W-LP's
``pt2d``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets"
OBJ_PATH = ASSET_DIR / "mediapipe_canonical_face_model.obj"
LANDMARKS_PATH = ASSET_DIR / "astronaut_face_mesh_landmarks.npy"

#: iBUG-68 point i -> MediaPipe canonical-mesh vertex index (see module docstring).
IBUG68_VERTICES = np.array(
    [
        # jaw line 0-16
        127, 234, 93, 132, 58, 136, 150, 176, 152, 400, 379, 365, 288, 361, 323, 454, 356,
        # brows 17-21, 22-26
        71, 63, 105, 66, 107, 336, 296, 334, 293, 301,
        # nose bridge 27-30, nostrils 31-35
        168, 197, 5, 4, 75, 97, 2, 326, 305,
        # eyes 36-41, 42-47
        33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
        # outer lip 48-59, inner lip 60-67
        61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,
        78, 82, 13, 312, 308, 317, 14, 87,
    ],
    dtype=np.int64,
)  # fmt: skip

#: Handy single vertices.
NOSE_TIP = 4
CHIN = 152


@dataclass(frozen=True)
class FaceMesh:
    """Face geometry and its texture mapping.

    Attributes:
        vertices: ``(V, 3)`` float64, centimetres, head-model frame.
        triangles: ``(T, 3)`` int64 vertex indices, counter-clockwise from the front.
        tex_xy: ``(V, 2)`` float32 pixel coordinates (x, y) into the astronaut photo.
        mirror: ``(V,)`` int64, the vertex mirrored about the x = 0 plane.
        landmarks68: ``(68,)`` int64 vertex indices of the iBUG-68 points.
    """

    vertices: np.ndarray
    triangles: np.ndarray
    tex_xy: np.ndarray
    mirror: np.ndarray
    landmarks68: np.ndarray

    @property
    def width_cm(self) -> float:
        """Width of the mesh along x (temple to temple), centimetres."""
        return float(np.ptp(self.vertices[:, 0]))

    def landmark_points(self) -> np.ndarray:
        """``(68, 3)`` model coordinates (cm) of the iBUG-68 points."""
        return self.vertices[self.landmarks68]


def load_obj(path: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """Read vertices ``(V, 3)`` and 0-based triangles ``(T, 3)`` of a triangle OBJ file."""
    vertices, triangles = [], []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "v":
                vertices.append([float(p) for p in parts[1:4]])
            elif parts[0] == "f":
                if len(parts) != 4:
                    raise ValueError(f"{path}: only triangles are supported, got {line!r}")
                triangles.append([int(p.split("/")[0]) - 1 for p in parts[1:4]])
    if not vertices or not triangles:
        raise ValueError(f"{path}: no vertices or faces found")
    return np.asarray(vertices, dtype=np.float64), np.asarray(triangles, dtype=np.int64)


def mirror_indices(vertices: np.ndarray, tol: float = 1e-3) -> np.ndarray:
    """Index of each vertex's mirror image about x = 0 (the canonical mesh is symmetric)."""
    mirrored = vertices * np.array([-1.0, 1.0, 1.0])
    dist = np.linalg.norm(vertices[None, :, :] - mirrored[:, None, :], axis=-1)
    index = np.argmin(dist, axis=1)
    worst = dist[np.arange(len(vertices)), index].max()
    if worst > tol:
        raise ValueError(f"mesh is not mirror-symmetric (worst pair {worst:.4f} cm apart)")
    return index


@lru_cache(maxsize=1)
def load_face_mesh() -> FaceMesh:
    """The packaged canonical face mesh with astronaut texture coordinates (cached)."""
    vertices, triangles = load_obj(OBJ_PATH)
    tex = np.load(LANDMARKS_PATH).astype(np.float32)
    if tex.shape != (len(vertices), 3):
        raise ValueError(f"{LANDMARKS_PATH}: expected ({len(vertices)}, 3), got {tex.shape}")
    for array in (vertices, triangles, tex):
        array.setflags(write=False)
    return FaceMesh(
        vertices=vertices,
        triangles=triangles,
        tex_xy=tex[:, :2].copy(),
        mirror=mirror_indices(vertices),
        landmarks68=IBUG68_VERTICES,
    )


@lru_cache(maxsize=1)
def astronaut_photo() -> np.ndarray:
    """scikit-image's public-domain ``astronaut`` photo, ``(512, 512, 3)`` uint8 RGB."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut())
