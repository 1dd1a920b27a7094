"""Vectorised z-buffer rasteriser for the synthetic head (NumPy + OpenCV).

Why this design: drawing the ~2500 triangles (face 898, skull, neck) one by one from
Python (``cv2.fillConvexPoly`` per triangle, painter's algorithm) costs tens of
milliseconds per image. Here all triangles are rasterised at once: every triangle is
expanded into its pixel rows and each row into the exact span of pixel centres it
covers (work proportional to the covered area), perspective-correct barycentric
weights are computed for all fragments in NumPy, a z-buffer (``np.minimum.at``) keeps
the nearest fragment per pixel, and the texture is sampled at the face fragments with one ``cv2.remap``.

Geometry conventions (see ``lechpe_model.conventions``): the head model (x right,
y up, z toward the viewer, centimetres) is rotated by
``R = euler_to_matrix(yaw, pitch, roll)`` into the 3DDFA camera frame and then taken
into the OpenCV/ROS optical frame (x right, y down, z forward) by
``MODEL_TO_OPTICAL = diag(1, -1, -1)``; ``t`` (cm) places the model origin in the
optical frame, and a pinhole :class:`Camera` projects it. Pixel centres are at
integer coordinates (OpenCV convention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from lechpe_model.conventions import MODEL_TO_OPTICAL, euler_to_matrix
from training.synth.mesh import FaceMesh, load_face_mesh

#: The face is drawn this much (cm) nearer than the head ellipsoid behind it, so
#: the ellipsoid never pokes through the cheeks.
FACE_DEPTH_BIAS_CM = 1.5

#: Skull/hair ellipsoid behind the face mesh (cm, model frame): its front stays behind
#: the eyes and cheeks, its bottom above the chin.
HEAD_CENTER_CM = (0.0, 2.5, -5.0)
HEAD_RADII_CM = (7.9, 9.6, 8.5)

#: Neck: elliptic cylinder (cm) along y from NECK_TOP to NECK_BOTTOM.
NECK_TOP_CM = -5.0
NECK_BOTTOM_CM = -60.0
NECK_RADII_CM = (4.9, 4.6)
NECK_AXIS_XZ_CM = (0.0, -3.5)
NECK_PIVOT_CM = (0.0, -10.0, -3.5)
NECK_FOLLOW = 0.35

#: Ears (``build_head_model(ears=True)``): flattened ellipsoids at the skull's sides,
#: turned forward by EAR_TURN_DEG (cm, model frame; the image-right ear at +x).
EAR_CENTER_CM = (8.0, 0.2, -4.3)
EAR_RADII_CM = (0.55, 3.0, 1.7)
EAR_TURN_DEG = 20.0


@dataclass(frozen=True)
class Camera:
    """Pinhole intrinsics in pixels and the image size."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @classmethod
    def from_fov(cls, width: int, height: int, hfov_deg: float) -> Camera:
        """Square pixels, principal point at the image centre, horizontal FOV in degrees."""
        f = 0.5 * width / math.tan(math.radians(hfov_deg) / 2.0)
        return cls(f, f, (width - 1) / 2.0, (height - 1) / 2.0, int(width), int(height))

    @property
    def matrix(self) -> np.ndarray:
        """``(3, 3)`` intrinsic matrix K."""
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1.0]])


def optical_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """``(3, 3)`` rotation from head-model coordinates to the optical frame (degrees in)."""
    return MODEL_TO_OPTICAL @ euler_to_matrix(yaw, pitch, roll)


def project(points: np.ndarray, rotation: np.ndarray, t: np.ndarray, camera: Camera):
    """Project model points.

    Args:
        points: ``(N, 3)`` model coordinates, cm.
        rotation: ``(3, 3)`` model -> optical rotation (:func:`optical_rotation`).
        t: ``(3,)`` position of the model origin in the optical frame, cm (z > 0).

    Returns:
        ``(uv, depth)``: ``(N, 2)`` pixel coordinates and ``(N,)`` optical z in cm.
    """
    cam = points @ rotation.T + np.asarray(t, dtype=np.float64)
    depth = cam[:, 2]
    if np.any(depth <= 1e-6):
        raise ValueError("part of the head is behind the camera; increase the distance")
    uv = np.empty((len(points), 2))
    uv[:, 0] = camera.fx * cam[:, 0] / depth + camera.cx
    uv[:, 1] = camera.fy * cam[:, 1] / depth + camera.cy
    return uv, depth


@dataclass
class Fragments:
    """Result of rasterisation: one visible fragment per covered pixel.

    Attributes:
        pixel: ``(F,)`` flat pixel indices (row * width + col).
        triangle: ``(F,)`` triangle index.
        bary: ``(F, 3)`` float32 perspective-correct barycentric weights.
    """

    pixel: np.ndarray
    triangle: np.ndarray
    bary: np.ndarray


def _expand(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For counts ``[2, 3]`` -> owners ``[0, 0, 1, 1, 1]`` and offsets ``[0, 1, 0, 1, 2]``."""
    owner = np.repeat(np.arange(counts.size), counts)
    start = np.cumsum(counts) - counts
    offset = np.arange(owner.size, dtype=np.int64) - start[owner]
    return owner, offset


def rasterize(
    uv: np.ndarray, depth: np.ndarray, triangles: np.ndarray, width: int, height: int
) -> Fragments:
    """Z-buffered rasterisation of all triangles at once with back-face culling.

    Vectorised scanline: every triangle is expanded into its pixel rows, each row into
    the exact span of columns inside the triangle, so the work is proportional to the
    covered area; the depth test then keeps the nearest fragment per pixel.

    Args:
        uv: ``(V, 2)`` pixel positions of the vertices.
        depth: ``(V,)`` optical depth (smaller = nearer), > 0.
        triangles: ``(T, 3)`` vertex indices, counter-clockwise seen from the front
            in the model frame (clockwise in the y-down image).
        width, height: image size in pixels.
    """
    empty = Fragments(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3), np.float32))
    p = uv[triangles]  # (T, 3, 2)
    x0, y0 = p[:, 0, 0], p[:, 0, 1]
    x1, y1 = p[:, 1, 0], p[:, 1, 1]
    x2, y2 = p[:, 2, 0], p[:, 2, 1]
    # Twice the signed area in image coordinates; front faces are negative because the
    # image y axis points down while the model's points up.
    area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
    xmin = np.ceil(np.minimum(np.minimum(x0, x1), x2))
    xmax = np.floor(np.maximum(np.maximum(x0, x1), x2))
    ymin = np.maximum(np.ceil(np.minimum(np.minimum(y0, y1), y2)), 0)
    ymax = np.minimum(np.floor(np.maximum(np.maximum(y0, y1), y2)), height - 1)
    keep = (area < -1e-9) & (ymax >= ymin) & (xmax >= 0) & (xmin <= width - 1) & (xmax >= xmin)
    tri = np.flatnonzero(keep)
    if tri.size == 0:
        return empty
    # Screen-space barycentric weights are affine: l_i(x, y) = a_i x + b_i y + c_i.
    inv = 1.0 / area[tri]
    X0, Y0, X1, Y1, X2, Y2 = (v[tri] for v in (x0, y0, x1, y1, x2, y2))
    coef = [
        ((Y1 - Y2) * inv, (X2 - X1) * inv, (X1 * Y2 - X2 * Y1) * inv),
        ((Y2 - Y0) * inv, (X0 - X2) * inv, (X2 * Y0 - X0 * Y2) * inv),
        ((Y0 - Y1) * inv, (X1 - X0) * inv, (X0 * Y1 - X1 * Y0) * inv),
    ]
    # Rows of every triangle.
    rows = (ymax[tri] - ymin[tri] + 1).astype(np.int64)
    owner, offset = _expand(rows)
    y = ymin[tri][owner] + offset
    eps = 1e-7
    lo = np.full(y.size, -np.inf)
    hi = np.full(y.size, np.inf)
    flat_ok = np.ones(y.size, dtype=bool)
    for a_i, b_i, c_i in coef:
        ra = a_i[owner]
        level = b_i[owner] * y + c_i[owner]  # l_i = ra * x + level >= 0
        with np.errstate(divide="ignore", invalid="ignore"):
            bound = -level / ra
        lo = np.where(ra > 0, np.maximum(lo, bound), lo)
        hi = np.where(ra < 0, np.minimum(hi, bound), hi)
        flat_ok &= (ra != 0) | (level >= -eps)
    xs = np.maximum(np.ceil(lo - eps), 0)
    xe = np.minimum(np.floor(hi + eps), width - 1)
    span = np.where(flat_ok & (xe >= xs), xe - xs + 1, 0).astype(np.int64)
    if span.sum() == 0:
        return empty
    row_owner, col = _expand(span)
    px = xs[row_owner] + col
    py = y[row_owner]
    t_local = owner[row_owner]
    t = tri[t_local]
    tv = triangles[t]
    # Perspective-correct weights: interpolate 1/z linearly in screen space.
    w = [
        (a_i[t_local] * px + b_i[t_local] * py + c_i[t_local]) / depth[tv[:, i]]
        for i, (a_i, b_i, c_i) in enumerate(coef)
    ]
    inv_depth = w[0] + w[1] + w[2]
    pixel = py.astype(np.int64) * width + px.astype(np.int64)
    # Depth test: z-buffer by an unbuffered minimum per pixel (much faster than a sort);
    # exact ties (shared edges at equal depth) go to the lowest triangle index.
    z = 1.0 / inv_depth
    zbuf = np.full(width * height, np.inf)
    np.minimum.at(zbuf, pixel, z)
    cand = np.flatnonzero(z == zbuf[pixel])
    tbuf = np.full(width * height, np.iinfo(np.int64).max)
    np.minimum.at(tbuf, pixel[cand], t[cand])
    win = cand[t[cand] == tbuf[pixel[cand]]]
    zw = z[win]
    bary = np.stack([w[0][win] * zw, w[1][win] * zw, w[2][win] * zw], axis=1)
    return Fragments(pixel[win], t[win], bary.astype(np.float32))


def vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals ``(V, 3)`` (outward for CCW triangles)."""
    a, b, c = (vertices[triangles[:, i]] for i in range(3))
    face_n = np.cross(b - a, c - a)
    normals = np.zeros_like(vertices)
    for i in range(3):
        np.add.at(normals, triangles[:, i], face_n)
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)


def ellipsoid_mesh(
    center: tuple[float, float, float],
    radii: tuple[float, float, float],
    n_lat: int = 16,
    n_lon: int = 28,
) -> tuple[np.ndarray, np.ndarray]:
    """UV-sphere ellipsoid: vertices ``(V, 3)`` and CCW-outward triangles ``(T, 3)``."""
    theta = np.linspace(0.0, np.pi, n_lat + 1)  # from +y (top) to -y
    phi = np.linspace(0.0, 2 * np.pi, n_lon, endpoint=False)
    st, ct = np.sin(theta)[:, None], np.cos(theta)[:, None]
    x = st * np.sin(phi)[None, :]
    y = np.broadcast_to(ct, x.shape)
    z = st * np.cos(phi)[None, :]
    grid = np.stack([x, y, z], axis=-1).reshape(-1, 3) * np.asarray(radii) + np.asarray(center)
    tris = []
    for i in range(n_lat):
        for j in range(n_lon):
            a = i * n_lon + j
            b = i * n_lon + (j + 1) % n_lon
            c = (i + 1) * n_lon + j
            d = (i + 1) * n_lon + (j + 1) % n_lon
            tris.append((a, c, b))
            tris.append((b, c, d))
    tris = np.asarray(tris, dtype=np.int64)
    verts = grid
    # Orient every triangle outward (the parametrisation's winding is checked numerically).
    a, b, c = verts[tris[:, 0]], verts[tris[:, 1]], verts[tris[:, 2]]
    n = np.cross(b - a, c - a)
    outward = np.einsum("ij,ij->i", n, (a + b + c) / 3 - np.asarray(center)) >= 0
    tris[~outward] = tris[~outward][:, [0, 2, 1]]
    # Drop the degenerate triangles at the poles.
    a, b, c = verts[tris[:, 0]], verts[tris[:, 1]], verts[tris[:, 2]]
    good = np.linalg.norm(np.cross(b - a, c - a), axis=1) > 1e-9
    return verts, tris[good]


def neck_mesh(n_ring: int = 24, n_rows: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """Open elliptic cylinder (the neck): vertices ``(V, 3)``, outward triangles."""
    phi = np.linspace(0.0, 2 * np.pi, n_ring, endpoint=False)
    ys = np.linspace(NECK_TOP_CM, NECK_BOTTOM_CM, n_rows)
    rx, rz = NECK_RADII_CM
    cx, cz = NECK_AXIS_XZ_CM
    verts = np.array(
        [(cx + rx * np.sin(a), y, cz + rz * np.cos(a)) for y in ys for a in phi], dtype=np.float64
    )
    tris = []
    for i in range(n_rows - 1):
        for j in range(n_ring):
            a = i * n_ring + j
            b = i * n_ring + (j + 1) % n_ring
            c = (i + 1) * n_ring + j
            d = (i + 1) * n_ring + (j + 1) % n_ring
            tris += [(a, c, b), (b, c, d)]
    tris = np.asarray(tris, dtype=np.int64)
    a, b, c = verts[tris[:, 0]], verts[tris[:, 1]], verts[tris[:, 2]]
    radial = (a + b + c) / 3 - np.array([cx, 0.0, cz])
    radial[:, 1] = 0
    outward = np.einsum("ij,ij->i", np.cross(b - a, c - a), radial) >= 0
    tris[~outward] = tris[~outward][:, [0, 2, 1]]
    return verts, tris


@dataclass(frozen=True)
class HeadModel:
    """Face mesh, optional skull/hair ellipsoid and neck, as one triangle soup.

    Vertex/triangle order: face (textured), skull, neck. Non-face vertices carry a
    hair weight (1 = hair colour, 0 = skin colour) and a brightness factor.
    The neck turns with only :data:`NECK_FOLLOW` of the head rotation, about a pivot
    at :data:`NECK_PIVOT_CM`, like a real neck under a turning head.
    """

    face: FaceMesh
    vertices: np.ndarray
    triangles: np.ndarray
    normals: np.ndarray
    n_face_vertices: int
    n_face_triangles: int
    n_neck_vertices: int
    hair_weight: np.ndarray  # (V - V_face,)
    brightness: np.ndarray  # (V - V_face,)
    n_neck_triangles: int = 0
    n_ear_vertices: int = 0  # ears sit between the skull and the neck


@lru_cache(maxsize=2)
def build_head_model(with_head: bool = True, ears: bool = False) -> HeadModel:
    """The renderable head: face mesh, and (``with_head``) a skull/hair ellipsoid + neck.

    The ellipsoid (:data:`HEAD_CENTER_CM`, :data:`HEAD_RADII_CM`) stands in for the
    skull and hair the face-only mesh lacks, so profiles look like heads; it is hidden
    behind the face in frontal views. The neck is an elliptic cylinder below it.
    ``ears`` (with ``with_head``; used by identities) adds two flattened ellipsoids at
    the skull's sides (:data:`EAR_CENTER_CM`).
    """
    face = load_face_mesh()
    parts_v, parts_t = [face.vertices], [face.triangles]
    normals = [vertex_normals(face.vertices, face.triangles)]
    hair = np.zeros(0)
    bright = np.zeros(0)
    n_neck = 0
    if with_head:
        offset = len(face.vertices)
        hv, ht = ellipsoid_mesh(HEAD_CENTER_CM, HEAD_RADII_CM, n_lat=20, n_lon=36)
        nv, nt = neck_mesh()
        n_neck = len(nv)
        # Hair above the ears and at the back; skin low at the sides (ears, jaw).
        rel_y = hv[:, 1] - HEAD_CENTER_CM[1]
        rel_z = hv[:, 2] - HEAD_CENTER_CM[2]
        head_hair = np.clip(0.5 + 0.3 * (rel_y + 2.0) + 0.3 * np.maximum(-rel_z, 0.0), 0, 1)
        # Fixed strand-like brightness variation (not part of any sample's randomness).
        noise = np.random.default_rng(12345).uniform(0.75, 1.2, size=len(hv))
        ear_v, ear_t = _ear_meshes() if ears else (np.zeros((0, 3)), np.zeros((0, 3), np.int64))
        n_ear = len(ear_v)
        parts_v += [hv, ear_v, nv]
        parts_t += [ht + offset, ear_t + offset + len(hv), nt + offset + len(hv) + n_ear]
        normals += [vertex_normals(hv, ht), vertex_normals(ear_v, ear_t), vertex_normals(nv, nt)]
        hair = np.concatenate([head_hair, np.zeros(n_ear), np.zeros(n_neck)])
        bright = np.concatenate([noise, np.full(n_ear, 0.9), np.full(n_neck, 0.8)])
    return HeadModel(
        face=face,
        vertices=np.concatenate(parts_v),
        triangles=np.concatenate(parts_t),
        normals=np.concatenate(normals),
        n_face_vertices=len(face.vertices),
        n_face_triangles=len(face.triangles),
        n_neck_vertices=n_neck,
        hair_weight=hair.astype(np.float32),
        brightness=bright.astype(np.float32),
        n_neck_triangles=len(nt) if with_head else 0,
        n_ear_vertices=n_ear if with_head else 0,
    )


def _ear_meshes() -> tuple[np.ndarray, np.ndarray]:
    """Both ears: vertices and outward triangles (left ear first, then right)."""
    verts, tris = [], []
    for side in (-1.0, 1.0):
        v, t = ellipsoid_mesh((0.0, 0.0, 0.0), EAR_RADII_CM, n_lat=8, n_lon=12)
        a = math.radians(EAR_TURN_DEG) * side  # turn the ear's flat side forward
        rot = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
        centre = np.array(EAR_CENTER_CM) * np.array([side, 1.0, 1.0])
        tris.append(t + sum(len(x) for x in verts))
        verts.append(v @ rot.T + centre)
    return np.concatenate(verts), np.concatenate(tris)


@dataclass(frozen=True)
class Appearance:
    """How the head looks: texture, lighting and head colours.

    Attributes:
        texture: ``(H, W, 3)`` uint8 RGB texture image.
        tex_xy: ``(V_face, 2)`` float32 pixel coordinates of the face vertices in it.
        light_dir: ``(3,)`` unit vector toward the light in the 3DDFA camera frame
            (x right, y up, z toward the viewer).
        ambient, diffuse: Lambertian shading ``ambient + diffuse * max(n.l, 0)``.
        hair_rgb, skin_rgb: ``(3,)`` float colours (0..255) of the head ellipsoid.
    """

    texture: np.ndarray
    tex_xy: np.ndarray
    light_dir: np.ndarray
    ambient: float = 0.45
    diffuse: float = 0.65
    hair_rgb: tuple[float, float, float] = (60.0, 45.0, 35.0)
    skin_rgb: tuple[float, float, float] = (200.0, 150.0, 125.0)
    #: Optional ``(V_head, 3)`` base colours of the skull + neck vertices (identities:
    #: hairline, headwear); overrides ``hair_rgb``/``skin_rgb`` mixing when given.
    head_rgb: np.ndarray | None = None
    #: Optional several coloured lights: ``((direction (3,), rgb (3,)), ...)`` with
    #: directions toward the light in the 3DDFA camera frame and rgb gains (1 = white
    #: at full strength). When given, shading is RGB: ``ambient_rgb + sum rgb *
    #: max(n.l, 0) * visible`` plus Blinn-Phong specular highlights, and the first
    #: light casts shadows when ``shadows`` is set; ``light_dir``/``ambient``/
    #: ``diffuse`` are then unused.
    lights: tuple | None = None
    ambient_rgb: tuple[float, float, float] = (0.4, 0.4, 0.4)
    specular: float = 0.0
    shininess: float = 20.0
    shadows: bool = False


@dataclass
class RenderResult:
    """A rendered head before compositing.

    Attributes:
        rgb: ``(H, W, 3)`` float32 colours 0..255 (0 where nothing was drawn).
        alpha: ``(H, W)`` float32 coverage 0..1.
        face_mask: ``(H, W)`` bool, pixels covered by the face mesh.
        landmarks: ``(68, 2)`` float64 projected iBUG-68 points (pixels).
        face_box: ``(4,)`` float64 x1, y1, x2, y2 of all projected face vertices.
        vertices_uv: ``(V_face, 2)`` projected face vertices.
        depth: ``(H, W)`` float32 optical depth (cm) of the drawn surface, inf elsewhere
            (accessories such as glasses are depth-tested against it).
        rotation, t: the model -> optical rotation and the translation used.
    """

    rgb: np.ndarray
    alpha: np.ndarray
    face_mask: np.ndarray
    landmarks: np.ndarray
    face_box: np.ndarray
    vertices_uv: np.ndarray
    depth: np.ndarray | None = None
    rotation: np.ndarray | None = None
    t: np.ndarray | None = None


def shadow_visibility(
    points: np.ndarray,
    triangles: np.ndarray,
    light_dir: np.ndarray,
    resolution: int = 128,
    bias_cm: float = 0.4,
) -> np.ndarray:
    """Per-vertex visibility (1 lit, 0 in shadow) from a directional light.

    A shadow map: the vertices are projected orthographically along the light,
    rasterised with the same z-buffer as the camera image, and a vertex is in shadow
    when something lies more than ``bias_cm`` nearer the light at its map pixel (the
    nose darkens the cheek, the brow ridge the eyes). Resolution is per vertex, so the
    shadow edge is as sharp as the mesh (a cast-shadow approximation).

    Args:
        points: ``(V, 3)`` vertex positions in the optical frame (cm).
        light_dir: ``(3,)`` unit vector toward the light, optical frame.
    """
    w = -np.asarray(light_dir, np.float64)
    w /= np.linalg.norm(w)
    helper = np.array([0.0, 1.0, 0.0]) if abs(w[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
    e1 = np.cross(helper, w)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(w, e1)
    q = np.stack([points @ e1, points @ e2, points @ w], axis=1)
    lo = q[:, :2].min(axis=0)
    span = max(float((q[:, :2].max(axis=0) - lo).max()), 1e-6)
    scale = (resolution - 1) / span
    uv = (q[:, :2] - lo) * scale
    depth = q[:, 2] - q[:, 2].min() + 10.0
    frags = rasterize(uv, depth, triangles, resolution, resolution)
    zmap = np.full(resolution * resolution, np.inf)
    zmap[frags.pixel] = (depth[triangles[frags.triangle]] * frags.bary).sum(axis=1)
    pix = np.clip(np.round(uv).astype(np.int64), 0, resolution - 1)
    nearest = zmap[pix[:, 1] * resolution + pix[:, 0]]
    return (depth <= nearest + bias_cm).astype(np.float32)


def render_head(
    model: HeadModel,
    appearance: Appearance,
    yaw: float,
    pitch: float,
    roll: float,
    t: np.ndarray,
    camera: Camera,
    shape_scale: np.ndarray | None = None,
    face_vertices: np.ndarray | None = None,
    cavity_triangles: np.ndarray | None = None,
) -> RenderResult:
    """Render the head at a pose (degrees) and position ``t`` (cm, optical frame).

    ``shape_scale`` ``(3,)`` scales the whole head model along its x (width), y
    (height) and z (depth) axes before the rotation: a different face shape with the
    same pose label (the landmarks are projected from the scaled mesh).
    ``face_vertices`` ``(V_face, 3)`` replaces the face mesh's vertices (an identity's
    shape and expression; normals are recomputed); ``cavity_triangles`` (face triangle
    indices) are drawn as an open mouth (dark, teeth toward the upper lip) instead of
    textured.
    """
    rot_label = euler_to_matrix(yaw, pitch, roll)
    rot = MODEL_TO_OPTICAL @ rot_label
    nf = model.n_face_vertices
    nn = model.n_neck_vertices
    vertices, normals = model.vertices, model.normals
    if face_vertices is not None:
        fv = np.asarray(face_vertices, dtype=np.float64)
        if fv.shape != (nf, 3):
            raise ValueError(f"face_vertices must have shape ({nf}, 3), got {fv.shape}")
        vertices = np.concatenate([fv, vertices[nf:]])
        normals = np.concatenate(
            [vertex_normals(fv, model.triangles[: model.n_face_triangles]), normals[nf:]]
        )
    if shape_scale is not None:
        scale = np.asarray(shape_scale, dtype=np.float64).reshape(3)
        if np.any(scale <= 0):
            raise ValueError(f"shape_scale must be positive, got {scale.tolist()}")
        vertices = vertices * scale
        # Normals transform with the inverse scale (inverse transpose of diag(scale)).
        normals = normals / scale
        normals = normals / np.linalg.norm(normals, axis=1, keepdims=True)
    normals_cam = normals @ rot_label.T
    if nn:
        # The neck follows the head only partly: rotate it by a fraction of the pose
        # about its pivot, then carry the pivot with the head.
        k = NECK_FOLLOW
        pivot = np.asarray(NECK_PIVOT_CM)
        neck_label = euler_to_matrix(k * yaw, k * pitch, k * roll)
        neck_rot = MODEL_TO_OPTICAL @ neck_label
        verts = vertices[:-nn]
        uv_h, depth_h = project(verts, rot, t, camera)
        neck_pts = (vertices[-nn:] - pivot) @ neck_rot.T + pivot @ rot.T
        cam_xyz = neck_pts + np.asarray(t, dtype=np.float64)
        depth_n = cam_xyz[:, 2]
        if np.any(depth_n <= 1e-6):
            raise ValueError("part of the neck is behind the camera; increase the distance")
        uv_n = np.stack(
            [
                camera.fx * cam_xyz[:, 0] / depth_n + camera.cx,
                camera.fy * cam_xyz[:, 1] / depth_n + camera.cy,
            ],
            axis=1,
        )
        uv = np.concatenate([uv_h, uv_n])
        depth = np.concatenate([depth_h, depth_n])
        normals_cam[-nn:] = normals[-nn:] @ neck_label.T
        cam_points = np.concatenate([verts @ rot.T + np.asarray(t, np.float64), cam_xyz])
    else:
        uv, depth = project(vertices, rot, t, camera)
        cam_points = vertices @ rot.T + np.asarray(t, np.float64)
    biased = depth.copy()
    biased[:nf] -= FACE_DEPTH_BIAS_CM
    biased = np.maximum(biased, 1e-3)
    frags = rasterize(uv, biased, model.triangles, camera.width, camera.height)
    h, w = camera.height, camera.width
    rgb = np.zeros((h * w, 3), np.float32)
    alpha = np.zeros(h * w, np.float32)
    face_mask = np.zeros(h * w, bool)

    # One per-vertex attribute table, interpolated once: face vertices carry
    # (texture x, texture y, RGB shade, RGB additive highlight), head/neck vertices
    # (-, -, shaded RGB colour, RGB additive highlight).
    attr = np.zeros((len(model.vertices), 8), np.float32)
    attr[:nf, :2] = appearance.tex_xy
    if appearance.lights is not None:
        shade, highlight = _light_vertices(appearance, normals_cam, cam_points, model)
    else:
        # Lambertian shading per vertex (normals in the 3DDFA camera frame).
        light = np.asarray(appearance.light_dir, dtype=np.float64)
        shade1 = appearance.ambient + appearance.diffuse * np.maximum(normals_cam @ light, 0.0)
        shade = np.repeat(shade1.astype(np.float32)[:, None], 3, axis=1)
        highlight = None
    attr[:nf, 2:5] = shade[:nf]
    if highlight is not None:
        attr[:, 5:8] = highlight
    if len(model.vertices) > nf:
        if appearance.head_rgb is not None:
            head_rgb = np.asarray(appearance.head_rgb, np.float32) * model.brightness[:, None]
        else:
            hair_w = model.hair_weight[:, None]
            hair_rgb = np.asarray(appearance.hair_rgb, np.float32)
            skin_rgb = np.asarray(appearance.skin_rgb, np.float32)
            head_rgb = (hair_w * hair_rgb + (1 - hair_w) * skin_rgb) * model.brightness[:, None]
        attr[nf:, 2:5] = head_rgb * shade[nf:]
    tri_verts = model.triangles[frags.triangle]  # (F, 3)
    bary = frags.bary
    values = (
        attr[tri_verts[:, 0]] * bary[:, :1]
        + attr[tri_verts[:, 1]] * bary[:, 1:2]
        + attr[tri_verts[:, 2]] * bary[:, 2:3]
    )
    is_face = frags.triangle < model.n_face_triangles
    frag_shade = values[:, 2:5]  # face fragments: interpolated RGB shading
    colours = values[:, 2:5].copy()  # head fragments already hold their colour
    if is_face.any():
        face_values = values[is_face]
        # Sample the texture only at the face fragments: a (rows, 1024) map for cv2.remap
        # (OpenCV limits map sides to 32767).
        n = face_values.shape[0]
        cols = 1024
        padded = np.zeros((-(-n // cols) * cols, 2), np.float32)
        padded[:n] = face_values[:, :2]
        padded = padded.reshape(-1, cols, 2)
        sampled = cv2.remap(
            appearance.texture,
            padded[..., 0],
            padded[..., 1],
            interpolation=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        ).reshape(-1, 3)
        colours[is_face] = sampled[:n] * face_values[:, 2:5]
        face_mask[frags.pixel[is_face]] = True
        if cavity_triangles is not None and len(cavity_triangles):
            in_cavity = np.isin(frags.triangle, cavity_triangles)
            if in_cavity.any():
                from training.synth.identity import INNER_LIP_UPPER

                # Teeth show just below the upper lip (corners excluded), dark inside.
                upper = np.isin(tri_verts[in_cavity], INNER_LIP_UPPER[1:-1])
                upper_w = (bary[in_cavity] * upper).sum(axis=1, keepdims=True)
                teeth = np.clip((upper_w - 0.8) * 6.0, 0, 1)
                mouth = (1 - teeth) * np.array([40, 16, 18], np.float32) + teeth * np.array(
                    [200, 190, 172], np.float32
                )
                colours[in_cavity] = mouth * frag_shade[in_cavity]
    if highlight is not None:
        colours = colours + values[:, 5:8]
    rgb[frags.pixel] = colours
    alpha[frags.pixel] = 1.0
    # True (unbiased) depth of the visible surface, for depth-tested accessories.
    zbuf = np.full(h * w, np.inf, np.float32)
    zbuf[frags.pixel] = (depth[tri_verts] * bary).sum(axis=1)

    face_uv = uv[:nf]
    return RenderResult(
        rgb=rgb.reshape(h, w, 3),
        alpha=alpha.reshape(h, w),
        face_mask=face_mask.reshape(h, w),
        landmarks=face_uv[model.face.landmarks68].copy(),
        face_box=np.array(
            [face_uv[:, 0].min(), face_uv[:, 1].min(), face_uv[:, 0].max(), face_uv[:, 1].max()]
        ),
        vertices_uv=face_uv,
        depth=zbuf.reshape(h, w),
        rotation=rot,
        t=np.asarray(t, dtype=np.float64),
    )


def _light_vertices(
    appearance: Appearance, normals_cam: np.ndarray, cam_points: np.ndarray, model: HeadModel
) -> tuple[np.ndarray, np.ndarray]:
    """RGB shade ``(V, 3)`` and additive highlight ``(V, 3)`` (0..255) for several lights.

    Diffuse: ``ambient_rgb + sum_l rgb_l * max(n.l, 0) * visible_l``; specular:
    Blinn-Phong ``specular * rgb_l * max(n.h, 0) ** shininess`` (half vector toward
    the camera), half as strong on the skull/neck (hair is less shiny). The first
    light casts shadows (:func:`shadow_visibility`) when ``appearance.shadows``.
    """
    n = normals_cam.astype(np.float64)
    shade = np.tile(np.asarray(appearance.ambient_rgb, np.float64), (len(n), 1))
    highlight = np.zeros_like(shade)
    # View direction toward the camera, in the 3DDFA camera frame.
    view = -cam_points / np.maximum(np.linalg.norm(cam_points, axis=1, keepdims=True), 1e-9)
    view = view @ MODEL_TO_OPTICAL.T
    spec_scale = np.ones(len(n))
    spec_scale[model.n_face_vertices :] = 0.5
    for k, (direction, colour) in enumerate(appearance.lights):
        ldir = np.asarray(direction, np.float64)
        ldir = ldir / np.linalg.norm(ldir)
        colour = np.asarray(colour, np.float64)
        ndotl = np.maximum(n @ ldir, 0.0)
        visible = np.ones(len(n))
        if k == 0 and appearance.shadows:
            # Face + skull cast shadows (the neck only receives them).
            n_tri = len(model.triangles) - model.n_neck_triangles
            visible = shadow_visibility(
                cam_points, model.triangles[:n_tri], MODEL_TO_OPTICAL @ ldir
            ).astype(np.float64)
        shade += (ndotl * visible)[:, None] * colour[None]
        if appearance.specular > 0:
            half = view + ldir
            half /= np.maximum(np.linalg.norm(half, axis=1, keepdims=True), 1e-9)
            spec = np.maximum(np.einsum("ij,ij->i", n, half), 0.0) ** appearance.shininess
            spec *= (ndotl > 0) * visible * spec_scale * appearance.specular * 255.0
            highlight += spec[:, None] * colour[None]
    return shade.astype(np.float32), highlight.astype(np.float32)


def composite(render: RenderResult, background: np.ndarray, feather: float = 0.7) -> np.ndarray:
    """Blend a render over an RGB uint8 background.

    ``feather`` (px, Gaussian sigma) anti-aliases the outline: pixels just inside the
    silhouette get partial coverage ``min(alpha, blur(alpha))``, so no colour has to be
    invented outside the head.
    """
    alpha = render.alpha
    if feather > 0:
        alpha = np.minimum(alpha, cv2.GaussianBlur(alpha, (3, 3), feather) * 1.25)
    bg = background.astype(np.float32)
    out = bg + alpha[..., None] * (render.rgb - bg)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
