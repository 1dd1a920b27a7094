"""Scene sampling: poses, identities (texture variants), lighting, placement, backgrounds.

Everything random takes a ``numpy.random.Generator`` so one seed fixes one image.
Nothing here downloads: backgrounds are the non-face photos that ship inside
scikit-image and scikit-learn, plus procedural gradients and noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np

from lechpe_model.conventions import camera_to_ray_euler, ray_to_camera_euler
from training.synth.mesh import astronaut_photo, load_face_mesh
from training.synth.renderer import Appearance, Camera

#: Photos inside scikit-image (and scikit-learn's sample images) without faces.
SKIMAGE_BACKGROUNDS = (
    "brick",
    "coffee",
    "chelsea",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "page",
    "rocket",
    "horse",
    "text",
    "retina",
    "cell",
    "logo",
    "colorwheel",
    "chessboard",
)

#: The subset of scikit-image's photos whose documentation states CC0 / public domain /
#: "no known copyright restrictions" (identities mode uses only these; scikit-learn's
#: china/flower are CC BY 2.0 and moon/page/logo state no licence).
CC0_BACKGROUNDS = (
    "brick",
    "coffee",
    "chelsea",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "rocket",
    "horse",
    "text",
    "retina",
    "cell",
    "clock",
)

#: Skin tones (RGB) spanning light to dark, used to shift the astronaut's skin.
SKIN_TONES = np.array(
    [
        (236, 198, 170),
        (224, 172, 140),
        (198, 134, 100),
        (170, 112, 80),
        (141, 85, 60),
        (110, 66, 45),
        (80, 50, 35),
        (230, 185, 150),
    ],
    dtype=np.float32,
)

#: Hair colours (RGB) for the head ellipsoid.
HAIR_COLOURS = np.array(
    [(30, 25, 22), (60, 42, 30), (100, 70, 45), (160, 120, 70), (200, 170, 110), (120, 120, 120)],
    dtype=np.float32,
)


@dataclass(frozen=True)
class PoseDistribution:
    """Distribution of (yaw, pitch, roll) in degrees; every draw is clipped to +-limit.

    The default resembles 300W-LP's spread: yaw spread over the whole +-90 range
    (face profiling fills the profiles) with a frontal bump, pitch and roll mostly
    within +-30 with tails.

    Attributes:
        kind: ``"300wlp"`` (mixture above) or ``"uniform"`` (uniform in the ranges).
        yaw_range, pitch_range, roll_range: half-ranges (deg) for ``"uniform"`` and for
            the uniform part of ``"300wlp"`` yaw.
        pitch_std, roll_std, yaw_frontal_std: standard deviations (deg) of the normal parts.
        frontal_fraction: share of ``"300wlp"`` yaw drawn from the frontal normal.
        limit: hard clip (deg); 99 is the bin range of the model.
    """

    kind: str = "300wlp"
    yaw_range: float = 90.0
    pitch_range: float = 40.0
    roll_range: float = 35.0
    pitch_std: float = 14.0
    roll_std: float = 10.0
    yaw_frontal_std: float = 25.0
    frontal_fraction: float = 0.35
    limit: float = 99.0

    def sample(self, rng: np.random.Generator) -> tuple[float, float, float]:
        """One (yaw, pitch, roll) in degrees."""
        if self.kind == "uniform":
            yaw = rng.uniform(-self.yaw_range, self.yaw_range)
            pitch = rng.uniform(-self.pitch_range, self.pitch_range)
            roll = rng.uniform(-self.roll_range, self.roll_range)
        elif self.kind == "300wlp":
            if rng.random() < self.frontal_fraction:
                yaw = rng.normal(0.0, self.yaw_frontal_std)
            else:
                yaw = rng.uniform(-self.yaw_range, self.yaw_range)
            pitch = rng.normal(0.0, self.pitch_std)
            roll = rng.normal(0.0, self.roll_std)
        else:
            raise ValueError(f"unknown pose distribution {self.kind!r} (use '300wlp' or 'uniform')")
        lim = self.limit
        return (
            float(np.clip(yaw, -lim, lim)),
            float(np.clip(pitch, -lim, lim)),
            float(np.clip(roll, -lim, lim)),
        )


@dataclass(frozen=True)
class SceneConfig:
    """Knobs of the image sampler (sizes in pixels, angles in degrees).

    Attributes:
        width, height: output size.
        hfov_deg: horizontal field of view of the pinhole camera.
        face_fraction: range of the face width (temple to temple) as a fraction of
            the image width.
        center_jitter: maximum offset of the face centre from the image centre, as a
            fraction of the image size.
        jpeg_quality: range of JPEG qualities (the artefacts of the final encode).
        noise_std: range of the std of additive Gaussian sensor noise (0..255 scale).
        head: draw the skull/hair ellipsoid and neck behind the face.
        shape_jitter: face-shape variation: the head model is scaled by
            ``1 + U(-shape_jitter, shape_jitter)`` independently along its width,
            height and depth (0 = the canonical shape).
        poses: the pose distribution.
        identities: ``(start, stop)``: render identities ``start .. stop - 1``
            (:mod:`training.synth.identity`; image ``i`` of a dataset shows identity
            ``start + i % (stop - start)``); ``None`` = the single astronaut texture
            with per-image texture jitter (the renderer's original behaviour).
        identity_seed: seed of the identity generator (identity ``k`` is a function
            of ``(identity_seed, k)`` only).
        identity_texture: base textures of the identities: ``"mix"`` (astronaut
            photo, mirrored or not, and procedural), ``"photo"`` or ``"procedural"``
            (:func:`training.synth.identity.identity_params`).
        expression_prob: share of images (identities only) with an expression (eyes
            closed, mouth open, smile).
        accessories: draw the identities' glasses.

    The variation of a robot's camera (identities only; see docs/SYNTHETIC_DATA.md):

    Attributes:
        camera_model: ``"robot"``: a focal length from ``focal_px`` (pixels of a
            ``focal_reference_width``-wide camera) and a head anywhere within
            ``off_centre`` of that camera's half-frame, at ``distance_cm``, the output
            being the crop around the head (principal point off the crop centre, so
            perspective is that of an off-axis head); ``"fixed"``: ``hfov_deg`` and
            the face near the optical axis (the original placement).
        lights: range of the number of coloured lights (the first is the key light).
        specular: range of the specular strength.
        shadow_prob: share of images where the key light casts shadows.
        defocus_prob, motion_blur_prob, low_res_prob, grey_prob, ir_prob,
        low_jpeg_prob, clutter_prob, second_head_prob: shares of images with
            defocus, motion blur, low resolution, a grey (monochrome) or near-infrared
            look, JPEG quality 25-60, clutter shapes over the background, another
            person's head partly in view behind.
        label_frame: what ``Pose_Para`` / ``angles_deg`` / ``index.csv`` hold:
            ``"camera"``: the head rotation in the camera frame, exact for the pinhole
            (``cv2.solvePnP`` on ``pt2d`` and ``cam_K`` returns it); ``"ray"``: the
            rotation relative to the viewing ray to the head, what a crop centred on
            the face shows (equal for an on-axis head; a crop network can only learn
            this one when heads are far off-axis); ``"auto"`` (default): ``"ray"``
            for identities with ``camera_model="robot"``, ``"camera"`` otherwise (the
            original renderer, whose heads stay within ~3.5 degrees of the axis).
            Both are always in the ``.mat`` (``angles_camera_deg``,
            ``angles_ray_deg``).
    """

    width: int = 224
    height: int = 224
    hfov_deg: float = 30.0
    face_fraction: tuple[float, float] = (0.38, 0.6)
    center_jitter: float = 0.08
    jpeg_quality: tuple[int, int] = (60, 95)
    noise_std: tuple[float, float] = (0.0, 4.0)
    head: bool = True
    shape_jitter: float = 0.08
    poses: PoseDistribution = field(default_factory=PoseDistribution)
    identities: tuple[int, int] | None = None
    identity_seed: int = 0
    identity_texture: str = "mix"
    expression_prob: float = 0.4
    accessories: bool = True
    camera_model: str = "robot"
    focal_px: tuple[float, float] = (300.0, 1500.0)
    focal_reference_width: int = 640
    off_centre: float = 0.9
    distance_cm: tuple[float, float] = (40.0, 250.0)
    lights: tuple[int, int] = (1, 3)
    specular: tuple[float, float] = (0.0, 0.35)
    shadow_prob: float = 0.6
    defocus_prob: float = 0.12
    motion_blur_prob: float = 0.12
    low_res_prob: float = 0.15
    grey_prob: float = 0.05
    ir_prob: float = 0.05
    low_jpeg_prob: float = 0.15
    clutter_prob: float = 0.35
    second_head_prob: float = 0.15
    label_frame: str = "auto"

    def __post_init__(self) -> None:
        if self.identities is not None:
            start, stop = (int(v) for v in self.identities)
            if start < 0 or stop <= start:
                raise ValueError(
                    f"identity range must satisfy 0 <= start < stop, got {start}:{stop}"
                )
            object.__setattr__(self, "identities", (start, stop))
        if self.camera_model not in ("robot", "fixed"):
            raise ValueError(f"camera_model must be 'robot' or 'fixed', got {self.camera_model!r}")
        if not 0 < self.focal_px[0] <= self.focal_px[1]:
            raise ValueError(f"focal_px must be 0 < min <= max, got {self.focal_px}")
        if not 0 < self.distance_cm[0] <= self.distance_cm[1]:
            raise ValueError(f"distance_cm must be 0 < min <= max, got {self.distance_cm}")
        if self.label_frame not in ("camera", "ray", "auto"):
            raise ValueError(
                f"label_frame must be 'camera', 'ray' or 'auto', got {self.label_frame!r}"
            )

    @property
    def resolved_label_frame(self) -> str:
        """``label_frame`` with ``"auto"`` resolved (see the class docstring)."""
        if self.label_frame != "auto":
            return self.label_frame
        robot = self.identities is not None and self.camera_model == "robot"
        return "ray" if robot else "camera"
        if not 1 <= self.lights[0] <= self.lights[1]:
            raise ValueError(f"lights must be 1 <= min <= max, got {self.lights}")

    def identity_of(self, index: int) -> int:
        """Identity id of image ``index`` (-1 without identities)."""
        if self.identities is None:
            return -1
        start, stop = self.identities
        return start + int(index) % (stop - start)

    def camera(self) -> Camera:
        return Camera.from_fov(self.width, self.height, self.hfov_deg)


@lru_cache(maxsize=2)
def _background_photos(cc0_only: bool = False) -> tuple[np.ndarray, ...]:
    """Non-face RGB photos shipped with scikit-image / scikit-learn (cached)."""
    from skimage import data

    photos = []
    for name in CC0_BACKGROUNDS if cc0_only else SKIMAGE_BACKGROUNDS:
        try:
            img = getattr(data, name)()
        except Exception:
            continue
        img = np.asarray(img)
        if img.dtype != np.uint8:
            img = cv2.normalize(img.astype(np.float32), None, 0, 255, cv2.NORM_MINMAX).astype(
                np.uint8
            )
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        photos.append(np.ascontiguousarray(img[..., :3]))
    try:
        if cc0_only:
            raise ImportError("CC0 only")
        from sklearn.datasets import load_sample_images

        photos.extend(np.ascontiguousarray(im) for im in load_sample_images().images)
    except Exception:
        pass
    if not photos:
        raise RuntimeError("no background photos found in scikit-image / scikit-learn")
    return tuple(photos)


@lru_cache(maxsize=8)
def _photos_for_size(side: int, cc0_only: bool = False) -> tuple[np.ndarray, ...]:
    """The background photos shrunk so their short side is at most ``side`` (speed)."""
    out = []
    for photo in _background_photos(cc0_only):
        scale = side / min(photo.shape[:2])
        if scale < 1:
            photo = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        out.append(np.ascontiguousarray(photo))
    return tuple(out)


def random_background(
    rng: np.random.Generator, width: int, height: int, cc0_only: bool = False
) -> np.ndarray:
    """An RGB uint8 ``(height, width, 3)`` background: photo crop, gradient or noise.

    ``cc0_only`` draws photos only from :data:`CC0_BACKGROUNDS`.
    """
    kind = rng.choice(4, p=[0.55, 0.15, 0.15, 0.15])
    if kind == 0:  # crop of a photo, randomly scaled, flipped and blurred
        photos = _photos_for_size(2 * max(width, height), cc0_only)
        photo = photos[int(rng.integers(len(photos)))]
        ph, pw = photo.shape[:2]
        frac = rng.uniform(0.3, 1.0)
        ch = max(8, int(ph * frac))
        cw = max(8, min(pw, int(ch * width / height)))
        y0 = int(rng.integers(0, ph - ch + 1))
        x0 = int(rng.integers(0, pw - cw + 1))
        crop = photo[y0 : y0 + ch, x0 : x0 + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        img = cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA)
        if rng.random() < 0.5:
            sigma = rng.uniform(0.5, 3.0)
            img = cv2.GaussianBlur(img, (0, 0), sigma)
        return np.ascontiguousarray(img)
    if kind == 1:  # linear colour gradient
        c0, c1 = rng.uniform(0, 255, size=(2, 3))
        angle = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        proj = xx * math.cos(angle) + yy * math.sin(angle)
        s = (proj - proj.min()) / max(float(np.ptp(proj)), 1e-6)
        img = c0[None, None, :] * (1 - s[..., None]) + c1[None, None, :] * s[..., None]
        return np.clip(img, 0, 255).astype(np.uint8)
    if kind == 2:  # smooth coloured noise (blobs)
        small = rng.uniform(0, 255, size=(int(rng.integers(3, 12)), int(rng.integers(3, 12)), 3))
        img = cv2.resize(small.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
        return np.clip(img, 0, 255).astype(np.uint8)
    # flat colour with fine noise
    base = rng.uniform(0, 255, size=3)
    img = base[None, None, :] + rng.normal(0, rng.uniform(2, 25), size=(height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class TextureBase:
    """The astronaut face texture cropped to the face (cheaper to recolour)."""

    rgb: np.ndarray  # (h, w, 3) uint8
    tex_xy: np.ndarray  # (V, 2) float32 in the crop
    skin_mask: np.ndarray  # (h, w) float32, 1 on the face region


@lru_cache(maxsize=2)
def texture_base(mirrored: bool = False) -> TextureBase:
    """Astronaut texture, optionally mirrored (photo and UVs mirrored consistently).

    Mirroring flips the photo left-right and gives vertex ``i`` the mirrored texture
    position of its mirror vertex, so the *texture* is mirrored while the geometry
    and therefore every label stays the same.
    """
    mesh = load_face_mesh()
    photo = astronaut_photo()
    tex_xy = mesh.tex_xy.astype(np.float64)
    if mirrored:
        photo = np.ascontiguousarray(photo[:, ::-1])
        w = photo.shape[1]
        tex_xy = tex_xy[mesh.mirror].copy()
        tex_xy[:, 0] = (w - 1) - tex_xy[:, 0]
    margin = 6
    x0 = max(int(tex_xy[:, 0].min()) - margin, 0)
    y0 = max(int(tex_xy[:, 1].min()) - margin, 0)
    x1 = min(int(tex_xy[:, 0].max()) + margin + 1, photo.shape[1])
    y1 = min(int(tex_xy[:, 1].max()) + margin + 1, photo.shape[0])
    crop = np.ascontiguousarray(photo[y0:y1, x0:x1])
    local = (tex_xy - [x0, y0]).astype(np.float32)
    # Skin mask: the face polygon minus eyes, brows and lips (their colour is kept).
    mask = np.zeros(crop.shape[:2], np.uint8)
    hull = cv2.convexHull(local.astype(np.int32))
    cv2.fillConvexPoly(mask, hull, 1)
    lm = local[mesh.landmarks68].astype(np.int32)
    for part in (slice(17, 22), slice(22, 27), slice(36, 42), slice(42, 48), slice(48, 60)):
        cv2.fillConvexPoly(mask, cv2.convexHull(lm[part]), 0)
    crop = _repair_face_outline(crop, mask, local, lm)
    skin = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 2.0)
    for array in (crop, local, skin):
        array.setflags(write=False)
    return TextureBase(crop, local, skin)


def _repair_face_outline(
    rgb: np.ndarray, skin_mask: np.ndarray, tex_xy: np.ndarray, lm: np.ndarray
) -> np.ndarray:
    """Replace the texels along the face outline (below the brows) by inpainted skin.

    The photo is frontal, so the sides of the mesh (cheeks toward the ears) map onto a
    sliver of texels at the face outline, which partly shows the grey backdrop and
    hair; rendered at a yaw, that sliver is stretched into pale streaks. The outer
    band (6 px of the ~100 px face) below the brows, and any clearly non-skin texel
    (Mahalanobis distance in CIELAB > 3) in a 12 px band, are inpainted from the skin
    next to them (OpenCV Telea). Above the brows the hair fringe is kept.
    """
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float64)
    inner = cv2.erode(skin_mask, np.ones((19, 19), np.uint8))
    samples = lab[inner > 0]
    mean = samples.mean(axis=0)
    cov_inv = np.linalg.inv(np.cov(samples.T) + np.eye(3))
    diff = lab - mean
    dist = np.sqrt(np.einsum("hwi,ij,hwj->hw", diff, cov_inv, diff))
    hull = np.zeros_like(skin_mask)
    cv2.fillConvexPoly(hull, cv2.convexHull(tex_xy.astype(np.int32)), 1)
    hull = np.maximum(hull, skin_mask)
    outer6 = (hull > 0) & (cv2.erode(hull, np.ones((13, 13), np.uint8)) == 0)
    outer12 = (hull > 0) & (cv2.erode(hull, np.ones((25, 25), np.uint8)) == 0)
    below_brows = np.arange(rgb.shape[0])[:, None] > lm[17:27, 1].max()
    repair = (below_brows & (outer6 | (outer12 & (dist > 3.0)))).astype(np.uint8)
    # Everything outside the face hull below the brows is also filled, so bilinear
    # sampling at the very edge does not pick up the backdrop.
    repair |= ((hull == 0) & below_brows).astype(np.uint8)
    if not repair.any():
        return rgb
    return cv2.inpaint(np.ascontiguousarray(rgb), repair, 5, cv2.INPAINT_TELEA)


def random_texture(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
    """A new identity-like texture: mirroring, skin-tone shift and colour jitter.

    The skin-tone shift keeps the astronaut's shading (L channel detail) and moves
    the skin's mean colour toward a sampled tone in CIELAB, so darker and lighter
    skins keep the photo's real features.

    Returns:
        ``(rgb uint8, tex_xy float32 (V, 2), info dict)``.
    """
    mirrored = bool(rng.random() < 0.5)
    base = texture_base(mirrored)
    info = {"mirrored": mirrored, "skin_tone": -1}
    img = base.rgb.astype(np.float32) / 255.0
    if rng.random() < 0.7:
        tone_index = int(rng.integers(len(SKIN_TONES)))
        info["skin_tone"] = tone_index
        lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB)
        target = cv2.cvtColor(SKIN_TONES[tone_index][None, None, :] / 255.0, cv2.COLOR_RGB2LAB)[
            0, 0
        ]
        skin = base.skin_mask
        weight = skin / max(float(skin.sum()), 1.0)
        mean = np.einsum("hw,hwc->c", weight, lab)
        strength = rng.uniform(0.6, 1.0)
        shift = (target - mean) * strength
        lab = lab + skin[..., None] * shift[None, None, :]
        lab[..., 0] = np.clip(lab[..., 0], 0, 100)
        img = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    # Colour / illumination jitter: per-channel gain, brightness, contrast, gamma.
    gain = rng.uniform(0.85, 1.15, size=3).astype(np.float32)
    contrast = rng.uniform(0.8, 1.2)
    gamma = rng.uniform(0.8, 1.25)
    img = np.clip(img * gain, 0, 1)
    img = np.clip((img - 0.5) * contrast + 0.5, 0, 1) ** gamma
    rgb = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return rgb, base.tex_xy, info


def random_appearance(rng: np.random.Generator) -> tuple[Appearance, dict]:
    """Texture + Lambertian light + head colours for one image."""
    texture, tex_xy, info = random_texture(rng)
    # Light from the front hemisphere (3DDFA camera frame: z toward the viewer).
    az = rng.uniform(-70, 70)
    el = rng.uniform(-40, 60)
    light = np.array(
        [
            math.sin(math.radians(az)) * math.cos(math.radians(el)),
            math.sin(math.radians(el)),
            math.cos(math.radians(az)) * math.cos(math.radians(el)),
        ]
    )
    ambient = rng.uniform(0.3, 0.65)
    diffuse = rng.uniform(0.35, 0.8)
    # Skin colour of the head ellipsoid's lower part: the texture's mean skin.
    skin = texture_base(info["mirrored"]).skin_mask
    skin_rgb = tuple(
        float(v) for v in np.einsum("hw,hwc->c", skin / skin.sum(), texture.astype(np.float32))
    )
    hair = HAIR_COLOURS[int(rng.integers(len(HAIR_COLOURS)))] * rng.uniform(0.8, 1.2)
    app = Appearance(
        texture=texture,
        tex_xy=tex_xy,
        light_dir=light,
        ambient=float(ambient),
        diffuse=float(diffuse),
        hair_rgb=tuple(float(v) for v in np.clip(hair, 0, 255)),
        skin_rgb=skin_rgb,
    )
    info.update({"light_azimuth": float(az), "light_elevation": float(el)})
    return app, info


def placement(
    rng: np.random.Generator, camera: Camera, face_width_cm: float, config: SceneConfig
) -> np.ndarray:
    """Position ``t`` (cm, optical frame) of the head origin from size/centre jitter."""
    frac = rng.uniform(*config.face_fraction)
    depth = camera.fx * face_width_cm / (frac * camera.width)
    du = rng.uniform(-config.center_jitter, config.center_jitter) * camera.width
    dv = rng.uniform(-config.center_jitter, config.center_jitter) * camera.height
    return np.array([du * depth / camera.fx, dv * depth / camera.fy, depth])


@dataclass
class SynthSample:
    """One rendered, labelled image (before JPEG encoding).

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB.
        angles: ``(3,)`` degrees (yaw, pitch, roll), the exact label.
        landmarks: ``(68, 2)`` projected iBUG-68-like points (pixels).
        box: ``(4,)`` x1, y1, x2, y2 of the projected face mesh (pixels).
        shape_scale: ``(3,)`` scale of the head model along x, y, z (face shape).
        t_cm: ``(3,)`` head-model origin in the optical frame (cm).
        camera: the pinhole camera.
        jpeg_quality: JPEG quality to encode with.
        info: texture/lighting details for the manifest.
    """

    image: np.ndarray
    angles: np.ndarray
    landmarks: np.ndarray
    box: np.ndarray
    t_cm: np.ndarray
    camera: Camera
    jpeg_quality: int
    info: dict
    shape_scale: np.ndarray = field(default_factory=lambda: np.ones(3))
    identity: int = -1
    landmarks_3d: np.ndarray | None = None  # (68, 3) model frame (cm), as rendered
    label_frame: str = "camera"  # what the written label is: "camera" or "ray"


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of image ``index`` of a dataset with ``seed`` (order-independent)."""
    return np.random.default_rng([int(seed), int(index)])


def render_sample(
    rng: np.random.Generator,
    config: SceneConfig,
    angles: tuple[float, float, float] | None = None,
    background: np.ndarray | None = None,
    identity: int | None = None,
) -> SynthSample:
    """Draw a pose (unless ``angles`` is given), identity, light, placement; render.

    With ``config.identities`` the image shows identity ``identity`` (drawn from the
    range with ``rng`` when ``None``); otherwise the astronaut texture with jitter.
    The drawn or given pose is the label: with ``label_frame`` ``"ray"`` the head is
    rendered at the camera-frame rotation that shows that pose from its position
    (``SynthSample.angles`` is always the camera-frame pose).
    """
    from training.synth.renderer import build_head_model, composite, render_head

    if config.identities is not None:
        if identity is None:
            start, stop = config.identities
            identity = int(rng.integers(start, stop))
        return _render_identity_sample(rng, config, int(identity), angles, background)

    camera = config.camera()
    model = build_head_model(config.head)
    yaw, pitch, roll = config.poses.sample(rng) if angles is None else angles
    appearance, info = random_appearance(rng)
    j = config.shape_jitter
    shape_scale = 1.0 + rng.uniform(-j, j, size=3) if j > 0 else np.ones(3)
    info["shape_scale"] = [float(v) for v in shape_scale]
    t = placement(rng, camera, model.face.width_cm * shape_scale[0], config)
    if background is None:
        background = random_background(rng, camera.width, camera.height)
    result = render_head(model, appearance, yaw, pitch, roll, t, camera, shape_scale)
    image = composite(result, background)
    noise = rng.uniform(*config.noise_std) if rng.random() < 0.5 else 0.0
    if noise > 0:
        image = np.clip(
            image.astype(np.float32) + noise * rng.standard_normal(image.shape, dtype=np.float32),
            0,
            255,
        ).astype(np.uint8)
    quality = int(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1))
    return SynthSample(
        image=image,
        angles=np.array([yaw, pitch, roll]),
        landmarks=result.landmarks,
        box=result.face_box,
        t_cm=t,
        camera=camera,
        jpeg_quality=quality,
        info=info,
        shape_scale=shape_scale,
        label_frame=config.resolved_label_frame,
    )


def _light_direction(rng: np.random.Generator) -> tuple[np.ndarray, float, float]:
    az = rng.uniform(-70, 70)
    el = rng.uniform(-40, 60)
    light = np.array(
        [
            math.sin(math.radians(az)) * math.cos(math.radians(el)),
            math.sin(math.radians(el)),
            math.cos(math.radians(az)) * math.cos(math.radians(el)),
        ]
    )
    return light, float(az), float(el)


def draw_glasses(
    image: np.ndarray, render, params: dict, face_vertices: np.ndarray, camera: Camera
) -> np.ndarray:
    """Draw an identity's glasses over ``image``, depth-tested against the head.

    The frame is a set of 3D polylines in the head-model frame (``face_vertices``
    already scaled); each sample point is projected with the render's pose and kept
    only where it is nearer than the head surface at its pixel (or off the head), so
    temples disappear behind the head and a far rim behind the nose.
    """
    from training.synth.identity import glasses_polylines
    from training.synth.renderer import project

    lines = glasses_polylines(params, face_vertices)
    if not lines:
        return image
    out = image.copy()
    h, w = image.shape[:2]
    colour = tuple(float(c) for c in params["glasses_rgb"])
    thick_cm = {"thin": 0.12, "thick": 0.35, "sunglasses": 0.3}[params["glasses"]]
    for k, line in enumerate(lines):
        uv, depth = project(line, render.rotation, render.t, camera)
        cols = np.clip(np.round(uv[:, 0]).astype(int), 0, w - 1)
        rows = np.clip(np.round(uv[:, 1]).astype(int), 0, h - 1)
        inside = (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
        visible = ~inside | (depth <= render.depth[rows, cols] + 0.3)
        if k < 2 and params["glasses"] == "sunglasses" or k < 2 and params["glasses"] == "thick":
            # Lens: tinted (sunglasses) or a faint reflection, where it is in front.
            mask = np.zeros((h, w), np.uint8)
            cv2.fillPoly(mask, [np.round(uv).astype(np.int32)], 1)
            lens_depth = float(depth.mean())
            mask &= (render.depth > lens_depth - 0.5).astype(np.uint8)
            a = 0.75 if params["glasses"] == "sunglasses" else 0.08
            tint = (20.0, 22.0, 25.0) if params["glasses"] == "sunglasses" else (235, 240, 245)
            m = mask.astype(bool)
            out[m] = np.clip(out[m] * (1 - a) + np.asarray(tint) * a, 0, 255).astype(np.uint8)
        px = max(1, int(round(camera.fx * thick_cm / float(np.median(depth)))))
        for i in range(len(line) - 1):
            if visible[i] and visible[i + 1]:
                p0 = (int(round(uv[i, 0] * 4)), int(round(uv[i, 1] * 4)))
                p1 = (int(round(uv[i + 1, 0] * 4)), int(round(uv[i + 1, 1] * 4)))
                cv2.line(out, p0, p1, colour, px, cv2.LINE_AA, shift=2)
    return out


def robot_camera(
    rng: np.random.Generator, config: SceneConfig, face_width_cm: float
) -> tuple[Camera, np.ndarray, dict]:
    """Camera of the output crop and head position for ``camera_model="robot"``.

    A focal length ``f`` (pixels of a ``focal_reference_width``-wide, 4:3 camera) is
    drawn log-uniformly from ``focal_px``, the head's image position anywhere within
    ``off_centre`` of that camera's half-frame, its distance log-uniformly from
    ``distance_cm``: the head origin lies on the viewing ray through that position.
    The output image is the crop around the head resampled so the face takes
    ``face_fraction`` of its width: the crop's focal length is ``fraction * width *
    distance / face_width`` and its principal point lies off the crop centre by the
    head's offset in the full frame, so the perspective (and the exact label, the
    rotation in the camera frame) is that of an off-axis head.
    """
    f = math.exp(rng.uniform(math.log(config.focal_px[0]), math.log(config.focal_px[1])))
    ref_w = float(config.focal_reference_width)
    ref_h = 0.75 * ref_w
    dx = rng.uniform(-1, 1) * config.off_centre * ref_w / 2
    dy = rng.uniform(-1, 1) * config.off_centre * ref_h / 2
    lo, hi = config.distance_cm
    z = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    frac = rng.uniform(*config.face_fraction)
    fx = frac * config.width * z / face_width_cm
    ju = rng.uniform(-config.center_jitter, config.center_jitter) * config.width
    jv = rng.uniform(-config.center_jitter, config.center_jitter) * config.height
    cx = (config.width - 1) / 2.0 + ju - fx * dx / f
    cy = (config.height - 1) / 2.0 + jv - fx * dy / f
    camera = Camera(fx, fx, cx, cy, config.width, config.height)
    t = z * np.array([dx / f, dy / f, 1.0])
    off_axis = math.degrees(math.atan(math.hypot(dx, dy) / f))
    return camera, t, {"focal_px": float(f), "off_axis_deg": off_axis, "distance_cm": z}


def sample_lights(rng: np.random.Generator, config: SceneConfig) -> dict:
    """Several coloured lights, a tinted ambient term, specular strength, shadows."""
    n = int(rng.integers(config.lights[0], config.lights[1] + 1))
    lights = []
    for k in range(n):
        direction, _, _ = _light_direction(rng)
        if k == 0:  # key light: near white, warm to cool
            temp = rng.uniform(-1, 1)
            colour = np.array([1 + 0.15 * temp, 1.0, 1 - 0.15 * temp]) * rng.uniform(0.45, 0.9)
        else:  # fill / rim lights: any hue, weaker; may come from behind
            if rng.random() < 0.3:
                direction = direction * np.array([1.0, 1.0, -1.0])
            colour = rng.uniform(0.2, 1.0, size=3)
            colour = colour / colour.max() * rng.uniform(0.1, 0.4)
        lights.append((direction, colour))
    ambient = rng.uniform(0.15, 0.5) * rng.uniform(0.85, 1.15, size=3)
    return {
        "lights": tuple(lights),
        "ambient_rgb": tuple(float(v) for v in ambient),
        "specular": float(rng.uniform(*config.specular)),
        "shininess": float(rng.uniform(8, 40)),
        "shadows": bool(rng.random() < config.shadow_prob),
    }


def _second_head(
    rng: np.random.Generator,
    config: SceneConfig,
    camera: Camera,
    main_t: np.ndarray,
    background: np.ndarray,
    identity: int,
) -> tuple[np.ndarray, int]:
    """Composite another identity's head, partly in view, behind the main head."""
    from training.synth.identity import build_identity
    from training.synth.renderer import build_head_model, composite, render_head

    start, stop = config.identities
    other = start + int(rng.integers(stop - start))
    if other == identity and stop - start > 1:
        other = start + (other - start + 1) % (stop - start)
    ident = build_identity(config.identity_seed, other, config.identity_texture)
    yaw, pitch, roll = config.poses.sample(rng)
    side = -1 if rng.random() < 0.5 else 1
    u = camera.width * (0.5 + side * rng.uniform(0.45, 0.7))
    v = camera.height * rng.uniform(0.2, 0.8)
    z = float(main_t[2]) * rng.uniform(1.15, 1.8)
    t = z * np.array([(u - camera.cx) / camera.fx, (v - camera.cy) / camera.fy, 1.0])
    light = sample_lights(rng, config)
    app = Appearance(
        texture=ident.texture,
        tex_xy=ident.tex_xy,
        light_dir=np.array([0.0, 0.0, 1.0]),
        head_rgb=ident.head_rgb if config.head else None,
        skin_rgb=ident.skin_rgb,
        hair_rgb=ident.hair_rgb,
        **light,
    )
    model = build_head_model(config.head, ears=True)
    try:
        result = render_head(
            model, app, yaw, pitch, roll, t, camera, ident.shape_scale,
            face_vertices=ident.face_vertices,
        )  # fmt: skip
    except ValueError:  # behind the camera for an extreme draw: no second head
        return background, -1
    return composite(result, background), other


# The ray-relative pose is a package convention (the node undoes it with the pixel
# ray); it lives in lechpe_model.conventions, re-exported here for the renderer.
ray_relative_angles = camera_to_ray_euler
camera_angles_from_ray = ray_to_camera_euler


def identity_appearance(rng: np.random.Generator, config: SceneConfig, identity: int):
    """Identity ``identity`` with a drawn expression and lights, ready for ``render_head``.

    Returns ``(identity, expression dict, face vertices (V, 3) with the expression,
    light dict, Appearance)``; ``render_head`` takes the vertices as ``face_vertices``
    and ``identity.shape_scale`` as ``shape_scale``.
    """
    from training.synth.identity import build_identity, expression_displacement, sample_expression

    ident = build_identity(config.identity_seed, identity, config.identity_texture)
    expr = sample_expression(rng, config.expression_prob)
    face = ident.face_vertices + expression_displacement(ident.face_vertices, **expr)
    light = sample_lights(rng, config)
    app = Appearance(
        texture=ident.texture,
        tex_xy=ident.tex_xy,
        light_dir=np.array([0.0, 0.0, 1.0]),
        hair_rgb=ident.hair_rgb,
        skin_rgb=ident.skin_rgb,
        head_rgb=ident.head_rgb if config.head else None,
        **light,
    )
    return ident, expr, face, light, app


def _render_identity_sample(
    rng: np.random.Generator,
    config: SceneConfig,
    identity: int,
    angles: tuple[float, float, float] | None,
    background: np.ndarray | None,
) -> SynthSample:
    """One image of identity ``identity`` (see :mod:`training.synth.identity`)."""
    from training.synth import degrade
    from training.synth.identity import (
        cavity_triangles,
        expression_name,
    )
    from training.synth.renderer import build_head_model, composite, render_head

    model = build_head_model(config.head, ears=True)
    yaw, pitch, roll = config.poses.sample(rng) if angles is None else angles
    ident, expr, face, light, app = identity_appearance(rng, config, identity)
    scale = ident.shape_scale
    face_width = float(np.ptp(face[:, 0])) * scale[0]
    if config.camera_model == "robot":
        camera, t, cam_info = robot_camera(rng, config, face_width)
    else:
        camera = config.camera()
        t = placement(rng, camera, face_width, config)
        off_axis = math.degrees(math.atan(math.hypot(t[0], t[1]) / t[2]))
        cam_info = {"focal_px": camera.fx, "off_axis_deg": off_axis, "distance_cm": float(t[2])}
    if config.resolved_label_frame == "ray":
        # The drawn (or given) pose is the label, i.e. what the crop shows; the head is
        # rendered at the camera-frame rotation that shows it from this position.
        yaw, pitch, roll = camera_angles_from_ray(np.array([yaw, pitch, roll]), t)
    effects = []
    if background is None:
        background = random_background(rng, camera.width, camera.height, cc0_only=True)
        if rng.random() < config.clutter_prob:
            background = degrade.add_clutter(background, rng)
            effects.append("clutter")
    second = -1
    if rng.random() < config.second_head_prob:
        background, second = _second_head(rng, config, camera, t, background, identity)
        if second >= 0:
            effects.append("second_head")
    cavity = cavity_triangles() if expr["mouth_open_cm"] > 0 else None
    result = render_head(
        model, app, yaw, pitch, roll, t, camera, scale, face_vertices=face, cavity_triangles=cavity
    )
    image = composite(result, background)
    if config.accessories:
        image = draw_glasses(image, result, ident.params, face * scale, camera)
    # Optics and sensor, in the order light meets them.
    if rng.random() < config.defocus_prob:
        image = degrade.defocus(image, rng.uniform(0.6, 2.0) * camera.width / 224)
        effects.append("defocus")
    if rng.random() < config.motion_blur_prob:
        image = degrade.motion_blur(
            image, rng.uniform(3, 9) * camera.width / 224, rng.uniform(0, 180)
        )
        effects.append("motion_blur")
    if rng.random() < config.low_res_prob:
        image = degrade.low_resolution(image, rng.uniform(1.8, 4.0))
        effects.append("low_res")
    mono = rng.random()
    if mono < config.grey_prob:
        image = degrade.to_grey(image)
        effects.append("grey")
    elif mono < config.grey_prob + config.ir_prob:
        image = degrade.to_infrared(image, rng)
        effects.append("ir")
    noise = rng.uniform(*config.noise_std) if rng.random() < 0.5 else 0.0
    if noise > 0:
        image = degrade.sensor_noise(image, noise, rng)
    if rng.random() < config.low_jpeg_prob:
        quality = int(rng.integers(25, 61))
        effects.append("low_jpeg")
    else:
        quality = int(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1))
    info = {
        "identity": identity,
        "mirrored": ident.params["texture"] == "astronaut_mirrored",
        "skin_tone": round(ident.params["skin_tone"], 4),
        "texture": ident.params["texture"],
        "expression": expression_name(expr),
        "glasses": ident.params["glasses"] if config.accessories else "none",
        "lights": len(light["lights"]),
        "shadows": light["shadows"],
        "effects": "+".join(effects) if effects else "none",
        "second_head": second,
        "shape_scale": [float(v) for v in scale],
        **cam_info,
        **expr,
    }
    mesh_lm = model.face.landmarks68
    return SynthSample(
        image=image,
        angles=np.array([yaw, pitch, roll]),
        landmarks=result.landmarks,
        box=result.face_box,
        t_cm=t,
        camera=camera,
        jpeg_quality=quality,
        info=info,
        shape_scale=np.asarray(scale, np.float64),
        identity=identity,
        landmarks_3d=face[mesh_lm] * scale,
        label_frame=config.resolved_label_frame,
    )
