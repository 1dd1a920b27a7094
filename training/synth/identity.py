"""Synthetic identities: face shape, skin, hair, facial hair, makeup, glasses, expressions.

An identity is a deterministic function of ``(identity_seed, identity_id)``: every draw
comes from ``numpy.random.default_rng([identity_seed, identity_id, IDENTITY_STREAM])``,
so identity 17 looks the same in every image, every run and every worker, and two
folders rendered with disjoint id ranges share no person.

What an identity fixes (see docs/SYNTHETIC_DATA.md, "Identities"):

* **Shape**: bounded, anatomically placed deformations of the MediaPipe mesh (jaw
  width, face length, nose length/width, cheeks, brow ridge, chin, eye spacing,
  forehead, lips) plus a smooth low-frequency random field, and a global
  width/height/depth scale. Vertices move; the 68 points are mesh vertices, so they
  move with the mesh and the labels stay exact.
* **Skin**: a base texture (scikit-image's public-domain astronaut photo, mirrored or
  not, or a procedurally generated face texture written here) moved to a skin tone
  drawn uniformly over a light-to-dark ramp, with an undertone.
* **Brows, lips, makeup, facial hair** painted in texture space (UV) at the mesh's
  landmark positions.
* **Hair and headwear**: colours of the skull ellipsoid's vertices (hairline, bald,
  buzz, long; cap, beanie, headscarf) and of the forehead texels.
* **Glasses**: a 3D frame (rims, bridge, temples) in the head-model frame, drawn after
  the head with a per-point depth test against the head's depth buffer.

Per image (not per identity): an expression (eyes closed, mouth open, smile) as
vertex displacements around the landmarks (:func:`expression_vertices`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from training.synth.mesh import load_face_mesh

IDENTITY_VERSION = "lechpe-identity-1"
#: Third seed word of every identity generator (separates it from the image streams).
IDENTITY_STREAM = 0x1D3

#: MediaPipe vertex rings used by expressions and UV painting.
INNER_LIP_UPPER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
INNER_LIP_LOWER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
OUTER_LIP_UPPER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
OUTER_LIP_LOWER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
#: Upper lid -> lower lid partner, outer to inner (image-left eye, then image-right).
UPPER_LID = (246, 161, 160, 159, 158, 157, 173, 466, 388, 387, 386, 385, 384, 398)
LOWER_LID = (7, 163, 144, 145, 153, 154, 155, 249, 390, 373, 374, 380, 381, 382)
LID_CREASE = (247, 30, 29, 27, 28, 56, 190, 467, 260, 259, 257, 258, 286, 414)

#: Skin-tone ramp (RGB, light to dark), interpolated in CIELAB by a tone in [0, 1].
SKIN_TONE_RAMP = np.array(
    [
        (250, 220, 196),
        (238, 196, 168),
        (224, 172, 140),
        (200, 140, 105),
        (172, 114, 82),
        (141, 88, 62),
        (110, 68, 47),
        (82, 52, 37),
        (58, 38, 28),
    ],
    dtype=np.float32,
)

HAIR_PALETTE = np.array(
    [
        (22, 18, 16),  # black
        (48, 34, 26),  # dark brown
        (90, 62, 40),  # brown
        (140, 70, 35),  # auburn / red
        (190, 155, 95),  # blond
        (225, 205, 160),  # light blond
        (130, 128, 125),  # grey
        (215, 212, 205),  # white
    ],
    dtype=np.float32,
)
HAIR_PROBS = np.array([0.28, 0.24, 0.16, 0.06, 0.08, 0.04, 0.08, 0.06])

#: Frame colours: black, dark brown, tortoise, grey metal, gold, silver, navy, red.
GLASSES_PALETTE = np.array(
    [(15, 15, 15), (50, 32, 22), (110, 70, 35), (90, 90, 95), (180, 150, 80), (185, 185, 190),
     (30, 35, 80), (150, 30, 35)],
    dtype=np.float32,
)  # fmt: skip

FACIAL_HAIR = ("none", "stubble", "moustache", "beard", "goatee")
HAIR_STYLES = ("short", "long", "buzz", "bald")
HEADWEAR = ("none", "cap", "beanie", "headscarf")
GLASSES = ("none", "thin", "thick", "sunglasses")
TEXTURES = ("astronaut", "astronaut_mirrored", "procedural")

#: Named shape deformations: amplitude (cm) at parameter 1 (parameters lie in [-1, 1]).
SHAPE_AMPLITUDES_CM = {
    "jaw_width": 0.7,
    "face_length": 0.8,
    "nose_length": 0.45,
    "nose_width": 0.3,
    "cheeks": 0.4,
    "brow_ridge": 0.35,
    "chin": 0.5,
    "eye_spacing": 0.3,
    "forehead": 0.4,
    "lips": 0.2,
}
#: Largest displacement of the low-frequency random field (cm).
FIELD_AMPLITUDE_CM = 0.25


def _tone_lab(tone: float, undertone: float) -> np.ndarray:
    """CIELAB (OpenCV float scale: L 0..100) of the ramp at ``tone`` in [0, 1]."""
    ramp = cv2.cvtColor(SKIN_TONE_RAMP[None] / 255.0, cv2.COLOR_RGB2LAB)[0]
    pos = float(np.clip(tone, 0, 1)) * (len(ramp) - 1)
    i = min(int(pos), len(ramp) - 2)
    lab = ramp[i] * (1 - (pos - i)) + ramp[i + 1] * (pos - i)
    # Undertone: redder (+a) or more yellow (+b).
    return lab + np.array([0.0, 4.0 * undertone, -5.0 * undertone], np.float32)


def _pick(rng: np.random.Generator, names: tuple[str, ...], probs) -> str:
    return names[int(rng.choice(len(names), p=np.asarray(probs, float)))]


#: ``texture`` choice of :func:`identity_params`: the drawn mix, or one kind only.
TEXTURE_CHOICES = ("mix", "photo", "procedural")


def identity_params(identity_seed: int, identity_id: int, texture: str = "mix") -> dict:
    """All random choices of one identity (JSON-friendly; pure function of the ids).

    ``texture``: ``"mix"`` keeps the drawn base texture (30 % astronaut, 30 %
    mirrored astronaut, 40 % procedural); ``"photo"`` maps a procedural draw to the
    astronaut (mirrored or not by the id's parity), ``"procedural"`` uses the
    procedural texture for everyone. Every other parameter is unchanged.
    """
    if identity_id < 0:
        raise ValueError(f"identity id must be >= 0, got {identity_id}")
    if texture not in TEXTURE_CHOICES:
        raise ValueError(f"texture must be one of {TEXTURE_CHOICES}, got {texture!r}")
    rng = np.random.default_rng([int(identity_seed), int(identity_id), IDENTITY_STREAM])
    shape = {
        k: float(np.clip(rng.normal(0.0, 0.5), -1.0, 1.0)) for k in SHAPE_AMPLITUDES_CM
    }  # fmt: skip
    drawn = _pick(rng, TEXTURES, [0.3, 0.3, 0.4])
    if texture == "procedural":
        drawn = "procedural"
    elif texture == "photo" and drawn == "procedural":
        drawn = ("astronaut", "astronaut_mirrored")[int(identity_id) % 2]
    hair_rgb = HAIR_PALETTE[int(rng.choice(len(HAIR_PALETTE), p=HAIR_PROBS))]
    hair_rgb = np.clip(hair_rgb * rng.uniform(0.85, 1.15), 0, 255)
    facial_hair = _pick(rng, FACIAL_HAIR, [0.62, 0.14, 0.07, 0.11, 0.06])
    makeup = bool(rng.random() < 0.25)
    eyeshadow = rng.uniform([40, 30, 40], [160, 120, 170])
    return {
        "identity": int(identity_id),
        "identity_seed": int(identity_seed),
        "version": IDENTITY_VERSION,
        "shape": shape,
        "field_seed": int(rng.integers(2**31)),
        "shape_scale": [float(v) for v in 1.0 + rng.uniform(-0.06, 0.06, size=3)],
        "texture": drawn,
        "skin_tone": float(rng.uniform(0.0, 1.0)),
        "skin_undertone": float(rng.uniform(-1.0, 1.0)),
        "skin_detail_seed": int(rng.integers(2**31)),
        "eye_rgb": [
            float(v)
            for v in rng.choice(
                [(70, 45, 25), (40, 28, 20), (70, 100, 130), (80, 100, 60), (110, 85, 50)]
            )
        ],  # fmt: skip
        "brow_darkness": float(rng.uniform(0.2, 0.9)),
        "brow_thickness": float(rng.uniform(0.6, 1.6)),
        "lip_rgb": [float(v) for v in rng.uniform([120, 45, 50], [200, 110, 115])],
        "lip_strength": float(rng.uniform(0.2, 0.6)),
        "facial_hair": facial_hair,
        "facial_hair_density": float(rng.uniform(0.35, 0.95)),
        "makeup": makeup,
        "eyeshadow_rgb": [float(v) for v in eyeshadow],
        "eyeshadow_strength": float(rng.uniform(0.2, 0.55)) if makeup else 0.0,
        "blush_strength": float(rng.uniform(0.1, 0.35)) if makeup else 0.0,
        "lipstick": float(rng.uniform(0.3, 0.7)) if makeup else 0.0,
        "hair_rgb": [float(v) for v in hair_rgb],
        "hair_style": _pick(rng, HAIR_STYLES, [0.45, 0.25, 0.18, 0.12]),
        "hairline_cm": float(rng.uniform(-1.0, 1.5)),
        "headwear": _pick(rng, HEADWEAR, [0.85, 0.06, 0.06, 0.03]),
        "headwear_rgb": [float(v) for v in rng.uniform(20, 235, size=3)],
        "glasses": _pick(rng, GLASSES, [0.7, 0.12, 0.12, 0.06]),
        "glasses_rgb": [
            float(v)
            for v in GLASSES_PALETTE[int(rng.integers(len(GLASSES_PALETTE)))]
            * rng.uniform(0.8, 1.2)
        ],  # fmt: skip
        "glasses_size": float(rng.uniform(0.9, 1.12)),
    }


# ---------------------------------------------------------------- shape


def _rbf(points: np.ndarray, centre: np.ndarray, sigma: float) -> np.ndarray:
    d2 = np.sum((points - centre) ** 2, axis=1)
    return np.exp(-d2 / (2.0 * sigma * sigma))


def _sym_rbf(points: np.ndarray, centre: np.ndarray, sigma: float) -> np.ndarray:
    """RBF at ``centre`` and at its mirror image (x -> -x)."""
    mirrored = centre * np.array([-1.0, 1.0, 1.0])
    return _rbf(points, centre, sigma) + _rbf(points, mirrored, sigma)


def shape_displacement(params: dict) -> np.ndarray:
    """``(468, 3)`` displacement (cm) of the face mesh for an identity's shape."""
    mesh = load_face_mesh()
    v = mesh.vertices
    x, y = v[:, 0], v[:, 1]
    s = params["shape"]
    a = SHAPE_AMPLITUDES_CM
    d = np.zeros_like(v)
    side = np.sign(x)
    # Jaw width: lower face widens, more at the sides and the lower it is.
    low = np.clip((-2.5 - y) / 4.0, 0.0, 1.0)
    d[:, 0] += s["jaw_width"] * a["jaw_width"] * low * (np.abs(x) / 7.7) * side
    # Face length: below the nose the face stretches down (chin moves most).
    d[:, 1] -= s["face_length"] * a["face_length"] * np.clip((-1.5 - y) / 7.9, 0.0, 1.0)
    # Nose: length = protrusion + droop around the tip; width around the nostrils.
    tip = v[4]
    w_tip = _rbf(v, tip, 1.3)
    d[:, 2] += s["nose_length"] * a["nose_length"] * w_tip
    d[:, 1] -= 0.5 * s["nose_length"] * a["nose_length"] * w_tip
    w_base = _rbf(v, v[2], 1.2)
    d[:, 0] += s["nose_width"] * a["nose_width"] * np.clip(x / 1.6, -1, 1) * w_base
    # Cheeks: fuller (out and forward) or hollower.
    w_cheek = _sym_rbf(v, v[205], 1.8)
    d[:, 0] += s["cheeks"] * a["cheeks"] * side * w_cheek
    d[:, 2] += 0.6 * s["cheeks"] * a["cheeks"] * w_cheek
    # Brow ridge: forward.
    w_brow = _sym_rbf(v, v[105], 1.6)
    d[:, 2] += s["brow_ridge"] * a["brow_ridge"] * w_brow
    # Chin: forward and down.
    w_chin = _rbf(v, v[152], 1.8)
    d[:, 2] += s["chin"] * a["chin"] * w_chin
    d[:, 1] -= 0.5 * s["chin"] * a["chin"] * w_chin
    # Eye spacing: each eye region moves sideways.
    w_eye = _sym_rbf(v, (v[33] + v[133]) / 2, 1.5)
    d[:, 0] += s["eye_spacing"] * a["eye_spacing"] * side * w_eye
    # Forehead: slope (top forward/back).
    d[:, 2] += s["forehead"] * a["forehead"] * np.clip((y - 3.5) / 4.5, 0.0, 1.0)
    # Lips: fuller lips protrude.
    w_lips = _rbf(v, (v[13] + v[14]) / 2, 1.1)
    d[:, 2] += s["lips"] * a["lips"] * w_lips
    # Smooth low-frequency field, mostly symmetric.
    rng = np.random.default_rng(params["field_seed"])
    for _ in range(6):
        centre = v[int(rng.integers(len(v)))]
        sigma = rng.uniform(2.0, 4.0)
        vec = rng.normal(0, 1, 3)
        vec *= FIELD_AMPLITUDE_CM / max(np.linalg.norm(vec), 1e-9) * rng.uniform(0.3, 1.0)
        d += _rbf(v, centre, sigma)[:, None] * vec
        mirror_c = centre * np.array([-1.0, 1.0, 1.0])
        d += _rbf(v, mirror_c, sigma)[:, None] * (vec * np.array([-1.0, 1.0, 1.0]))
    return d


# ---------------------------------------------------------------- expressions


@lru_cache(maxsize=1)
def cavity_triangles() -> np.ndarray:
    """Face triangles inside the inner lip contour (drawn as the mouth when open)."""
    mesh = load_face_mesh()
    ring = set(INNER_LIP_UPPER) | set(INNER_LIP_LOWER)
    inside = np.array([all(int(i) in ring for i in t) for t in mesh.triangles])
    return np.flatnonzero(inside)


def expression_displacement(
    vertices: np.ndarray, eyes_closed: float, mouth_open_cm: float, smile: float
) -> np.ndarray:
    """``(V, 3)`` displacement for an expression on (already shaped) face vertices.

    Args:
        eyes_closed: 0 (open) .. 1 (closed): upper lids move onto the lower lids.
        mouth_open_cm: jaw drop at the lips (cm, 0 = closed): the lower face rotates
            about an axis near the jaw joints.
        smile: 0 .. 1: mouth corners move up and out, cheeks rise.
    """
    v = vertices
    d = np.zeros_like(v)
    if eyes_closed > 0:
        up, lo = np.asarray(UPPER_LID), np.asarray(LOWER_LID)
        # Keep 10 % of the gap so no triangle flips.
        move = 0.9 * eyes_closed * (v[lo] - v[up])
        d[up] += move
        d[np.asarray(LID_CREASE)] += 0.4 * move
    if mouth_open_cm > 0:
        x, y = v[:, 0], v[:, 1]
        yc = 0.5 * (v[13, 1] + v[14, 1])
        half = 0.25 + 0.5 * np.maximum(np.abs(x) - 1.8, 0.0)
        weight = np.clip((yc + half - y) / (2 * half), 0.0, 1.0)
        pivot = np.array([0.0, -1.5, -5.0])
        lip = v[14] - pivot
        angle = mouth_open_cm / max(math.hypot(lip[1], lip[2]), 1e-6)
        c, s = math.cos(angle), math.sin(angle)
        # Rotation about x that moves the chin down and back.
        rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
        rel = v - pivot
        d += weight[:, None] * (rel @ rot.T - rel)
    if smile > 0:
        for corner in (61, 291):
            w = _rbf(v, v[corner], 0.9)
            out = np.sign(v[corner, 0])
            d += (smile * w)[:, None] * np.array([0.25 * out, 0.35, -0.1])
        w_cheek = _sym_rbf(v, v[205], 1.5)
        d[:, 1] += 0.2 * smile * w_cheek
    return d


def sample_expression(rng: np.random.Generator, probability: float) -> dict:
    """An expression for one image: neutral with ``1 - probability``."""
    expr = {"eyes_closed": 0.0, "mouth_open_cm": 0.0, "smile": 0.0}
    if probability <= 0 or rng.random() >= probability:
        return expr
    kind = int(rng.integers(4))
    if kind in (0, 3):
        expr["eyes_closed"] = float(rng.uniform(0.5, 1.0))
    if kind in (1, 3):
        expr["mouth_open_cm"] = float(rng.uniform(0.3, 1.6))
    if kind == 2 or rng.random() < 0.3:
        expr["smile"] = float(rng.uniform(0.4, 1.0))
    return expr


def expression_name(expr: dict) -> str:
    parts = [k for k, key in (("eyes_closed", "eyes_closed"), ("mouth_open", "mouth_open_cm"),
                              ("smile", "smile")) if expr.get(key, 0) > 0]  # fmt: skip
    return "+".join(parts) if parts else "neutral"


# ---------------------------------------------------------------- textures


@dataclass(frozen=True)
class Identity:
    """A built identity (cached per worker): geometry, texture and head colours."""

    params: dict
    face_vertices: np.ndarray  # (468, 3) cm, shaped, before shape_scale
    shape_scale: np.ndarray  # (3,)
    texture: np.ndarray  # (h, w, 3) uint8
    tex_xy: np.ndarray  # (468, 2) float32
    skin_rgb: tuple[float, float, float]
    hair_rgb: tuple[float, float, float]
    head_rgb: np.ndarray | None  # (V_head, 3) float32 colours of skull + neck vertices


def _poly(mask: np.ndarray, points: np.ndarray, value: float = 1.0) -> None:
    cv2.fillPoly(mask, [np.round(points).astype(np.int32)], value)


def _blend(img: np.ndarray, mask: np.ndarray, colour, strength: float) -> np.ndarray:
    a = np.clip(mask * strength, 0, 1)[..., None]
    return img * (1 - a) + np.asarray(colour, np.float32)[None, None] / 255.0 * a


@lru_cache(maxsize=2)
def _hair_mask_astronaut(mirrored: bool) -> np.ndarray:
    """Dark non-skin texels above the brows of the astronaut texture (her fringe)."""
    from training.synth.scene import texture_base

    base = texture_base(mirrored)
    lab = cv2.cvtColor(base.rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    lm = base.tex_xy[load_face_mesh().landmarks68]
    above = np.arange(base.rgb.shape[0])[:, None] < lm[17:27, 1].min() - 1
    dark = lab[..., 0] < 0.8 * np.median(lab[base.skin_mask > 0.5, 0])
    mask = (above & dark).astype(np.float32)
    return cv2.GaussianBlur(mask, (0, 0), 1.0)


def _procedural_face(params: dict, shape: tuple[int, int], tex_xy: np.ndarray) -> np.ndarray:
    """A face texture drawn from scratch (float RGB 0..1) at the astronaut crop's UVs."""
    rng = np.random.default_rng(params["skin_detail_seed"])
    h, w = shape
    lab = _tone_lab(params["skin_tone"], params["skin_undertone"])
    skin = cv2.cvtColor(lab[None, None].astype(np.float32), cv2.COLOR_LAB2RGB)[0, 0]
    blotch = cv2.resize(rng.normal(0, 1, (6, 6)).astype(np.float32), (w, h), cv2.INTER_CUBIC)
    pores = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 0.7)
    img = skin[None, None] * (1 + 0.05 * blotch[..., None] + 0.03 * pores[..., None])
    # Slightly redder cheeks/nose, as real skin.
    lm = tex_xy[load_face_mesh().landmarks68]
    red = np.zeros((h, w), np.float32)
    for c in (lm[31], lm[35], lm[2], lm[14], lm[30]):
        cv2.circle(red, (int(c[0]), int(c[1])), max(2, w // 12), 1.0, -1)
    red = cv2.GaussianBlur(red, (0, 0), w / 25)
    img = img * (1 - 0.08 * red[..., None]) + 0.08 * red[..., None] * np.array([0.85, 0.35, 0.35])
    # Eyes: sclera, iris, pupil, lid line.
    for sl in (slice(36, 42), slice(42, 48)):
        eye = lm[sl]
        m = np.zeros((h, w), np.float32)
        _poly(m, eye)
        img = _blend(img, m, (225, 220, 212), 1.0)
        c = eye.mean(axis=0)
        r = max(1.5, 0.2 * np.ptp(eye[:, 0]))
        iris = np.zeros((h, w), np.float32)
        cv2.circle(iris, (int(round(c[0])), int(round(c[1]))), int(round(r)), 1.0, -1)
        img = _blend(img, iris * m, params["eye_rgb"], 1.0)
        pupil = np.zeros((h, w), np.float32)
        cv2.circle(pupil, (int(round(c[0])), int(round(c[1]))), max(1, int(r / 2)), 1.0, -1)
        img = _blend(img, pupil * m, (10, 10, 10), 1.0)
        line = np.zeros((h, w), np.float32)
        cv2.polylines(line, [np.round(eye).astype(np.int32)], True, 1.0, 1)
        img = _blend(img, cv2.GaussianBlur(line, (3, 3), 0.6), (40, 25, 20), 0.7)
    # Nostrils.
    nost = np.zeros((h, w), np.float32)
    for c in (lm[31] * 0.6 + lm[33] * 0.4, lm[35] * 0.6 + lm[33] * 0.4):
        cv2.ellipse(nost, (int(c[0]), int(c[1])), (max(1, w // 40), 1), 0, 0, 360, 1.0, -1)
    img = _blend(img, cv2.GaussianBlur(nost, (3, 3), 0.7), (50, 30, 25), 0.7)
    # Lips (base colour; makeup/lip tint are added later like on the photo).
    lips = np.zeros((h, w), np.float32)
    _poly(lips, lm[48:60])
    lip_rgb = skin * 255 * np.array([0.85, 0.6, 0.6])
    img = _blend(img, cv2.GaussianBlur(lips, (3, 3), 0.6), lip_rgb, 0.8)
    line = np.zeros((h, w), np.float32)
    cv2.polylines(line, [np.round(lm[60:68]).astype(np.int32)], True, 1.0, 1)
    img = _blend(img, line, (70, 30, 30), 0.6)
    # Brows (thin base, painted further by the shared brow pass).
    brows = np.zeros((h, w), np.float32)
    for sl in (slice(17, 22), slice(22, 27)):
        cv2.polylines(brows, [np.round(lm[sl]).astype(np.int32)], False, 1.0, 2)
    img = _blend(img, cv2.GaussianBlur(brows, (3, 3), 0.8), params["hair_rgb"], 0.6)
    return np.clip(img, 0, 1).astype(np.float32)


def _shift_to_tone(img: np.ndarray, skin_mask: np.ndarray, params: dict) -> np.ndarray:
    """Move the skin's mean CIELAB colour to the identity's tone (detail is kept)."""
    lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB)
    weight = skin_mask / max(float(skin_mask.sum()), 1.0)
    mean = np.einsum("hw,hwc->c", weight, lab)
    shift = _tone_lab(params["skin_tone"], params["skin_undertone"]) - mean
    lab = lab + skin_mask[..., None] * shift[None, None, :]
    lab[..., 0] = np.clip(lab[..., 0], 0, 100)
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def _hair_noise(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Short vertical strokes (hair-like), values 0..1."""
    h, w = shape
    noise = rng.random((h, w)).astype(np.float32)
    return cv2.blur(noise, (1, 3))


def _paint_face_details(img: np.ndarray, params: dict, tex_xy: np.ndarray) -> np.ndarray:
    """Brows, lips, makeup, facial hair and the forehead hair/headwear, in UV."""
    rng = np.random.default_rng(params["skin_detail_seed"] + 1)
    h, w = img.shape[:2]
    lm = tex_xy[load_face_mesh().landmarks68]
    hair = np.asarray(params["hair_rgb"], np.float32)
    # Brows: thickened brow strokes blended toward a dark hair colour.
    brows = np.zeros((h, w), np.float32)
    thick = max(1, int(round(2 * params["brow_thickness"])))
    for sl in (slice(17, 22), slice(22, 27)):
        cv2.polylines(brows, [np.round(lm[sl]).astype(np.int32)], False, 1.0, thick)
    brow_rgb = np.minimum(hair, 90) * 0.8
    img = _blend(img, cv2.GaussianBlur(brows, (0, 0), 0.8), brow_rgb, params["brow_darkness"])
    # Lips: tint; lipstick is a stronger tint.
    lips = np.zeros((h, w), np.float32)
    _poly(lips, lm[48:60])
    lips = cv2.GaussianBlur(lips, (0, 0), 0.7)
    img = _blend(img, lips, params["lip_rgb"], params["lip_strength"] * 0.5)
    if params["makeup"]:
        img = _blend(img, lips, (170, 30, 60), params["lipstick"])
        shadow = np.zeros((h, w), np.float32)
        for eye, brow in ((slice(36, 42), slice(17, 22)), (slice(42, 48), slice(22, 27))):
            lid = lm[eye][lm[eye][:, 1] <= lm[eye][:, 1].mean() + 0.5]
            poly = np.vstack([lid[np.argsort(lid[:, 0])], lm[brow][::-1] * 0.4 + 0.6 * lid.mean(0)])
            _poly(shadow, poly)
        img = _blend(img, cv2.GaussianBlur(shadow, (0, 0), 1.5), params["eyeshadow_rgb"],
                     params["eyeshadow_strength"])  # fmt: skip
        blush = np.zeros((h, w), np.float32)
        for c in (0.5 * (lm[2] + lm[31]), 0.5 * (lm[14] + lm[35])):
            cv2.circle(blush, (int(c[0]), int(c[1])), max(2, w // 10), 1.0, -1)
        img = _blend(img, cv2.GaussianBlur(blush, (0, 0), w / 20), (200, 80, 90),
                     params["blush_strength"])  # fmt: skip
    # Facial hair: regions under the nose / around the mouth / on the jaw.
    kind = params["facial_hair"]
    if kind != "none":
        region = np.zeros((h, w), np.float32)
        nose_y = lm[31:36, 1].max()
        if kind in ("moustache", "beard", "stubble"):
            top = np.array([lm[31] + [-2, 1], lm[35] + [2, 1]])
            poly = np.vstack([top, lm[54] + [2, 0], lm[52:49:-1] - [0, 1], lm[48] + [-2, 0]])
            _poly(region, poly)
        if kind in ("beard", "stubble"):
            jaw = lm[2:15]
            poly = np.vstack([jaw, [[jaw[-1, 0], nose_y], [jaw[0, 0], nose_y]]])
            _poly(region, poly)
        if kind == "goatee":
            chin = lm[6:11]
            poly = np.vstack([lm[48] + [-1, 0], lm[54] + [1, 0], chin[-1], chin[0]])
            _poly(region, poly)
        cut = np.zeros((h, w), np.float32)
        _poly(cut, lm[48:60])
        region = region * (1 - cut)  # never over the lips
        region = cv2.GaussianBlur(region, (0, 0), 1.0)
        density = params["facial_hair_density"] * (0.45 if kind == "stubble" else 1.0)
        strokes = _hair_noise(rng, (h, w))
        alpha = region * np.clip((strokes - (1 - density)) * 3.0 + density * 0.5, 0, 1)
        beard_rgb = hair * (0.5 if kind == "stubble" else 1.0)
        img = _blend(img, alpha, beard_rgb, 0.95)
    # Forehead: hair fringe in the identity's colour, skin if bald, or headwear.
    top = lm[17:27, 1].min()
    rows = np.arange(h, dtype=np.float32)[:, None]
    hairline = top - (3.0 + 2.0 * params["hairline_cm"]) * h / 60.0
    band = np.clip((hairline - rows) / 2.0, 0, 1) * np.ones((1, w), np.float32)
    if params["headwear"] != "none":
        edge = top - 0.4 * (top - 0) * (0.6 if params["headwear"] == "cap" else 1.0)
        cover = np.clip((edge - rows) / 1.5, 0, 1) * np.ones((1, w), np.float32)
        img = _blend(img, cover, params["headwear_rgb"], 1.0)
    elif params["hair_style"] not in ("bald",):
        strokes = _hair_noise(rng, (h, w))
        tex = hair[None, None] / 255.0 * (0.8 + 0.4 * strokes[..., None])
        a = np.clip(band * (0.85 if params["hair_style"] != "buzz" else 0.6), 0, 1)[..., None]
        img = img * (1 - a) + tex * a
    return np.clip(img, 0, 1)


def _head_colours(params: dict, skin_rgb: np.ndarray) -> np.ndarray:
    """Per-vertex base colours (RGB 0..255) of the skull ellipsoid and neck."""
    from training.synth.renderer import HEAD_CENTER_CM, build_head_model

    model = build_head_model(True, ears=True)
    nf = model.n_face_vertices
    verts = model.vertices[nf:]
    n_ear = model.n_ear_vertices
    n_head = len(verts) - model.n_neck_vertices - n_ear
    rel_y = verts[:n_head, 1] - HEAD_CENTER_CM[1]
    rel_z = verts[:n_head, 2] - HEAD_CENTER_CM[2]
    style = params["hair_style"]
    line = params["hairline_cm"]
    if style == "long":
        hair_w = np.clip(0.8 + 0.3 * (rel_y + 6.0) + 0.3 * np.maximum(-rel_z, 0.0), 0, 1)
    elif style == "bald":
        # Horseshoe at the back and sides, low.
        ring = np.exp(-((rel_y + 1.5) ** 2) / 6.0) * np.clip(-rel_z / 4.0, 0, 1)
        hair_w = np.clip(ring, 0, 1)
    else:
        hair_w = np.clip(0.5 + 0.3 * (rel_y + 2.0 - line) + 0.3 * np.maximum(-rel_z, 0.0), 0, 1)
        if style == "buzz":
            hair_w *= 0.7
    hair = np.asarray(params["hair_rgb"], np.float32)
    colours = hair_w[:, None] * hair + (1 - hair_w[:, None]) * skin_rgb
    wear = params["headwear"]
    if wear != "none":
        level = {"cap": 3.5, "beanie": 2.0, "headscarf": -4.0}[wear]
        cover = np.clip((rel_y - level) / 0.8, 0, 1)
        if wear == "headscarf":
            cover = np.maximum(cover, np.clip(-rel_z / 3.0, 0, 1) * (rel_y > -7))
        colour = np.asarray(params["headwear_rgb"], np.float32)
        if wear == "beanie":  # knit ribs
            ribs = 0.85 + 0.15 * np.cos(np.arctan2(verts[:n_head, 0], rel_z) * 18)
            colour = colour[None] * ribs[:, None]
        colours = colours * (1 - cover[:, None]) + colour * cover[:, None]
    ear = np.asarray(skin_rgb, np.float32) * np.array([1.0, 0.93, 0.93], np.float32)
    if wear == "headscarf":
        ear = np.asarray(params["headwear_rgb"], np.float32)
    elif style == "long":  # hair falls over the ears
        ear = hair
    ears = np.repeat(np.asarray(ear, np.float32)[None], n_ear, axis=0)
    neck = np.repeat(np.asarray(skin_rgb, np.float32)[None], model.n_neck_vertices, axis=0)
    if style == "long" and wear == "none":  # hair falls on the back of the neck
        nz = verts[n_head + n_ear :, 2]
        ny = verts[n_head + n_ear :, 1]
        back = np.clip(-(nz + 3.5) / 3.0, 0, 1) * np.clip((ny + 25) / 10, 0, 1)
        neck = neck * (1 - back[:, None]) + hair * back[:, None]
    return np.concatenate([colours, ears, neck]).astype(np.float32)


@lru_cache(maxsize=1100)
def build_identity(identity_seed: int, identity_id: int, texture: str = "mix") -> Identity:
    """Geometry, texture and head colours of one identity (cached per process)."""
    from training.synth.scene import texture_base

    params = identity_params(identity_seed, identity_id, texture)
    mesh = load_face_mesh()
    vertices = mesh.vertices + shape_displacement(params)
    mirrored = params["texture"] == "astronaut_mirrored"
    base = texture_base(mirrored)
    if params["texture"] == "procedural":
        img = _procedural_face(params, base.rgb.shape[:2], base.tex_xy)
    else:
        img = base.rgb.astype(np.float32) / 255.0
        # Recolour the astronaut's fringe to the identity's hair colour.
        hm = _hair_mask_astronaut(mirrored)
        lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB)
        hair_lab = cv2.cvtColor(
            np.asarray(params["hair_rgb"], np.float32)[None, None] / 255.0, cv2.COLOR_RGB2LAB
        )[0, 0]
        mean = np.einsum("hw,hwc->c", hm / max(float(hm.sum()), 1.0), lab)
        lab = lab + hm[..., None] * (hair_lab - mean)[None, None]
        lab[..., 0] = np.clip(lab[..., 0], 0, 100)
        img = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
        img = _shift_to_tone(img, base.skin_mask, params)
    img = _paint_face_details(np.clip(img, 0, 1), params, base.tex_xy)
    texture = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    skin = base.skin_mask
    skin_rgb = np.einsum("hw,hwc->c", skin / skin.sum(), texture.astype(np.float32))
    head_rgb = _head_colours(params, skin_rgb)
    for array in (vertices, texture, head_rgb):
        array.setflags(write=False)
    return Identity(
        params=params,
        face_vertices=vertices,
        shape_scale=np.asarray(params["shape_scale"], np.float64),
        texture=texture,
        tex_xy=base.tex_xy,
        skin_rgb=tuple(float(c) for c in skin_rgb),
        hair_rgb=tuple(float(c) for c in params["hair_rgb"]),
        head_rgb=head_rgb,
    )


# ---------------------------------------------------------------- glasses


def glasses_polylines(params: dict, face_vertices: np.ndarray) -> list[np.ndarray]:
    """3D polylines (model frame, cm) of the glasses frame: two rims, bridge, temples."""
    if params["glasses"] == "none":
        return []
    v = face_vertices
    size = params["glasses_size"]
    lines = []
    front_z = max(v[168, 2], v[105, 2], v[334, 2]) + 0.4
    rims = []
    for outer, inner in ((33, 133), (263, 362)):
        c = 0.5 * (v[outer] + v[inner])
        rx, ry = 2.2 * size, 1.6 * size
        if params["glasses"] == "sunglasses":
            ry *= 1.1
        t = np.linspace(0, 2 * np.pi, 40)
        z = front_z - 0.25 * ((np.cos(t) * np.sign(c[0])) > 0.5)
        rim = np.stack([c[0] + rx * np.cos(t), c[1] + 0.1 + ry * np.sin(t), z], axis=1)
        rims.append(rim)
        lines.append(rim)
    # Bridge: the inner rim points, over the nose.
    a = rims[0][np.argmax(rims[0][:, 0])]
    b = rims[1][np.argmin(rims[1][:, 0])]
    mid = 0.5 * (a + b) + [0, 0.2, 0.1]
    lines.append(np.stack([a, mid, b]))
    # Temples: from the outer rim edges past the temples (just outside the face and
    # skull, so the depth test shows the near one) back to above the ears.
    for rim, temple in ((rims[0], v[127]), (rims[1], v[356])):
        start = rim[np.argmax(np.abs(rim[:, 0]))]
        side = np.sign(temple[0])
        hinge = np.array([temple[0] + side * 0.35, start[1], start[2] - 1.0])
        side_x = side * (abs(temple[0]) + 0.6)
        mid = np.array([side_x, start[1] + 0.1, temple[2]])
        end = np.array([side_x * 1.02, start[1] + 0.2, temple[2] - 6.0])
        path = np.vstack([start, hinge, mid, end])
        dense = [np.linspace(path[i], path[i + 1], 6, endpoint=False) for i in range(3)]
        lines.append(np.vstack([*dense, end]))
    return lines


def glasses_lenses(params: dict, face_vertices: np.ndarray) -> list[np.ndarray]:
    """The rim polygons (lens outlines), for tinted lenses."""
    return glasses_polylines(params, face_vertices)[:2]
