"""Seeded synthetic occlusions: an occluded replica of a dataset, in the same layout.

``lechpe-occlude SRC DST --seed 0 --coverage 0.2 0.5 [--occluders DIR]`` copies
every file of SRC to DST and replaces each face image by an occluded copy; the
annotations are copied byte for byte, so the replica loads with the same
loader and the same sample keys (the trainer's train/validation split follows
the keys, so a face is never in training in one form and in validation in
the other).

Occluders (one per image, type drawn uniformly from the enabled ones):

* procedural: ``sunglasses`` (two dark lenses and a bridge over the eyes),
  ``mask`` (a surgical-mask-like shape over nose, mouth and chin),
  ``hand`` (a skin-toned palm with fingers), ``scarf`` (a wavy striped band
  from the chin up), ``cap`` (a brim coming down from the forehead),
  ``polygon`` (a random polygon with a noise/stripe texture);
* ``image``: user RGBA images (real occluders, as the predecessor work LSR
  pasted), scaled and placed at random, blended with their alpha channel.

Coverage: for each image a target ``c ~ U(coverage)`` is drawn; the occluder's
size is found by bisection so that the occluded fraction of the **face box**
(the tight landmark box for 300W-LP/AFLW2000, the annotated box otherwise, or
the whole image for pre-cropped faces) is as close to ``c`` as the shape
allows.  The measured fraction (pixels with occluder alpha >= 0.5) is written
to the manifest ``occlusion_manifest.csv`` (one row per image) next to
``occlusion_manifest.json`` (parameters and counts).

Determinism: each image uses its own generator seeded by
``(seed, crc32(sample key))``, so the output does not depend on order or on
which other files exist; images are encoded with fixed parameters, the
``.npz`` replica is written with fixed zip timestamps, and the manifests hold
no time stamps: the same seed gives the same bytes.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import shutil
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from training.datasets import ImageLoadError, load_dataset, load_image, sample_box

LOG = logging.getLogger("training.occlusion")

PROCEDURAL_TYPES = ("sunglasses", "mask", "hand", "scarf", "cap", "polygon")
MANIFEST_CSV = "occlusion_manifest.csv"
MANIFEST_JSON = "occlusion_manifest.json"
JPEG_QUALITY = 95
#: The occluder may extend this fraction of the face box beyond it (what a crop sees).
CANVAS_MARGIN = 0.25
_BISECTION_STEPS = 14
_SKIN_TONES_BGR = ((160, 190, 230), (120, 160, 210), (90, 130, 180), (60, 90, 140), (45, 65, 100))


@dataclass
class OcclusionResult:
    """What was painted on one face."""

    occluder: str
    coverage: float  #: occluded fraction of the face box, in [0, 1]
    target: float  #: the drawn target coverage


# --------------------------------------------------------------------------- shapes
# Each shape draws an 8-bit alpha mask on a canvas of (h, w) pixels in which
# the face box spans [x0, x0 + bw) x [y0, y0 + bh); ``s`` in [0, 1] is the
# size parameter the bisection adjusts; ``p`` holds the random parameters
# drawn once per image.


def _pt(box, u, v):
    x0, y0, bw, bh = box
    return (int(round(x0 + u * bw)), int(round(y0 + v * bh)))


def _sunglasses(mask, box, p, s):
    x0, y0, bw, bh = box
    ax, ay = max(1, int(bw * (0.06 + 0.3 * s))), max(1, int(bh * (0.03 + 0.2 * s)))
    for u in (0.5 - p["eye_dx"], 0.5 + p["eye_dx"]):
        cv2.ellipse(
            mask, _pt(box, u, p["eye_v"]), (ax, ay), p["tilt"], 0, 360, 255, -1, cv2.LINE_AA
        )
    thickness = max(1, int(bh * 0.03 * (0.5 + s)))
    cv2.line(
        mask,
        _pt(box, 0.5 - p["eye_dx"], p["eye_v"]),
        _pt(box, 0.5 + p["eye_dx"], p["eye_v"]),
        255,
        thickness,
        cv2.LINE_AA,
    )


def _surgical_mask(mask, box, p, s):
    top = 1.0 - (0.15 + 0.85 * s)
    pts = [
        (0.02 + p["skew"], top),
        (0.98 + p["skew"], top + 0.03),
        (0.92, 0.95),
        (0.5, 1.12),
        (0.08, 0.95),
    ]
    poly = np.array([_pt(box, u, v) for u, v in pts], np.int32)
    cv2.fillPoly(mask, [poly], 255, cv2.LINE_AA)


def _hand(mask, box, p, s):
    x0, y0, bw, bh = box
    cu, cv_ = p["center"]
    radius = 0.05 + 0.55 * s
    c = _pt(box, cu, cv_)
    axes = (max(1, int(bw * radius * 0.8)), max(1, int(bh * radius)))
    cv2.ellipse(mask, c, axes, p["angle"], 0, 360, 255, -1, cv2.LINE_AA)
    for k in range(4):
        theta = np.radians(p["angle"] - 90 + (k - 1.5) * 18)
        length = radius * (1.5 + 0.1 * k)
        tip = (cu + np.cos(theta) * length * 0.8, cv_ + np.sin(theta) * length)
        cv2.line(mask, c, _pt(box, *tip), 255, max(1, int(bw * radius * 0.35)), cv2.LINE_AA)


def _scarf(mask, box, p, s):
    top = 1.05 - (0.1 + 1.0 * s)
    us = np.linspace(-0.2, 1.2, 24)
    wave = top + p["wave_amp"] * np.sin(2 * np.pi * (p["wave_freq"] * us + p["wave_phase"]))
    pts = [(u, v) for u, v in zip(us, wave, strict=True)] + [(1.2, 1.3), (-0.2, 1.3)]
    poly = np.array([_pt(box, u, v) for u, v in pts], np.int32)
    cv2.fillPoly(mask, [poly], 255, cv2.LINE_AA)


def _cap(mask, box, p, s):
    bottom = -0.2 + 1.0 * s
    c = _pt(box, 0.5 + p["skew"], bottom - 0.1)
    x0, y0, bw, bh = box
    cv2.ellipse(mask, c, (max(1, int(bw * 0.75)), max(1, int(bh * 0.12))), 0, 0, 360, 255, -1)
    cv2.rectangle(mask, _pt(box, -0.3, -0.5), _pt(box, 1.3, bottom - 0.1), 255, -1)


def _polygon(mask, box, p, s):
    cu, cv_ = p["center"]
    radius = 0.03 + 1.4 * s  # large enough to reach the coverage from an off-centre start
    pts = [
        (cu + np.cos(a) * r * radius, cv_ + np.sin(a) * r * radius)
        for a, r in zip(p["angles"], p["radii"], strict=True)
    ]
    poly = np.array([_pt(box, u, v) for u, v in pts], np.int32)
    cv2.fillPoly(mask, [poly], 255, cv2.LINE_AA)


def _draw_params(kind: str, rng: np.random.Generator) -> dict:
    if kind == "sunglasses":
        return {
            "eye_v": rng.uniform(0.2, 0.32),
            "eye_dx": rng.uniform(0.18, 0.24),
            "tilt": rng.uniform(-8, 8),
        }
    if kind == "mask":
        return {"skew": rng.uniform(-0.05, 0.05)}
    if kind == "hand":
        return {
            "center": (rng.uniform(0.2, 0.8), rng.uniform(0.3, 0.9)),
            "angle": rng.uniform(-40, 40),
        }
    if kind == "scarf":
        return {
            "wave_amp": rng.uniform(0.01, 0.05),
            "wave_freq": rng.uniform(0.5, 2.0),
            "wave_phase": rng.uniform(0, 1),
        }
    if kind == "cap":
        return {"skew": rng.uniform(-0.1, 0.1)}
    if kind == "polygon":
        n = int(rng.integers(5, 10))
        return {
            "center": (rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8)),
            # Spread around the centre (jittered): the polygon contains its centre,
            # so scaling it up grows the coverage monotonically (bisection).
            "angles": (np.arange(n) + rng.uniform(-0.35, 0.35, n)) * (2 * np.pi / n)
            + rng.uniform(0, 2 * np.pi),
            "radii": rng.uniform(0.5, 1.0, n),
        }
    raise ValueError(f"unknown occluder type {kind!r}")


_SHAPES: dict[str, Callable] = {
    "sunglasses": _sunglasses,
    "mask": _surgical_mask,
    "hand": _hand,
    "scarf": _scarf,
    "cap": _cap,
    "polygon": _polygon,
}


# --------------------------------------------------------------------------- textures


def _texture(kind: str, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """``(h, w, 3)`` uint8 BGR appearance of an occluder."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    noise = rng.normal(0, 1, (h, w, 1)).astype(np.float32)
    if kind == "sunglasses":
        base = np.array(rng.uniform(10, 50, 3), np.float32)
        shade = base + 25 * (1 - yy / max(h, 1))[..., None] + 4 * noise
    elif kind == "mask":
        palette = ((235, 220, 200), (240, 240, 240), (60, 60, 60), (200, 170, 120))
        base = np.array(palette[int(rng.integers(len(palette)))], np.float32)
        pleats = 18 * (np.sin(yy / max(h, 1) * 2 * np.pi * rng.uniform(6, 12)) > 0.6)
        shade = base - pleats[..., None] + 3 * noise
    elif kind == "hand":
        base = np.array(_SKIN_TONES_BGR[int(rng.integers(len(_SKIN_TONES_BGR)))], np.float32)
        shade = base * (0.85 + 0.15 * (xx / max(w, 1)))[..., None] + 5 * noise
    elif kind == "scarf":
        colours = rng.uniform(20, 235, (2, 3)).astype(np.float32)
        period = rng.uniform(6, 20)
        stripe = (np.sin((xx + yy * rng.uniform(-1, 1)) / period * np.pi) > 0)[..., None]
        shade = np.where(stripe, colours[0], colours[1]) + 8 * noise
    elif kind == "cap":
        base = np.array(rng.uniform(20, 220, 3), np.float32)
        shade = base * (0.7 + 0.3 * (1 - yy / max(h, 1)))[..., None] + 4 * noise
    else:  # polygon: blocky noise or stripes in random colours
        colours = rng.uniform(0, 255, (2, 3)).astype(np.float32)
        if rng.random() < 0.5:
            cells = rng.random((max(1, h // 8 + 1), max(1, w // 8 + 1), 1)).astype(np.float32)
            t = cv2.resize(cells, (w, h), interpolation=cv2.INTER_NEAREST).reshape(h, w, 1)
        else:
            t = (np.sin(xx / rng.uniform(3, 12)) > 0).astype(np.float32)[..., None]
        shade = colours[0] * t + colours[1] * (1 - t) + 10 * noise
    return np.clip(shade, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- occluding


def load_occluder_images(folder: str) -> list[np.ndarray]:
    """RGBA occluders (``*.png`` with alpha) from a folder, as BGRA uint8, sorted by name."""
    images = []
    for name in sorted(os.listdir(folder)):
        if not name.lower().endswith(".png"):
            continue
        path = os.path.join(folder, name)
        img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if img is None or img.ndim != 3 or img.shape[2] != 4:
            LOG.warning("occluder %s skipped: not an RGBA PNG", path)
            continue
        images.append(img)
    if not images:
        raise ValueError(f"no RGBA PNG occluder found in {folder}")
    return images


def _paste_mask(canvas_shape, box, occluder: np.ndarray, p: dict, s: float):
    """Alpha and colour of an RGBA occluder scaled by ``s`` and placed at ``p['center']``."""
    h, w = canvas_shape
    x0, y0, bw, bh = box
    target_w = max(2, int(round(bw * (0.05 + 1.2 * s))))
    scale = target_w / occluder.shape[1]
    target_h = max(2, int(round(occluder.shape[0] * scale)))
    resized = cv2.resize(occluder, (target_w, target_h), interpolation=cv2.INTER_AREA)
    cx, cy = _pt(box, *p["center"])
    ox, oy = cx - target_w // 2, cy - target_h // 2
    alpha = np.zeros((h, w), np.uint8)
    colour = np.zeros((h, w, 3), np.uint8)
    sx1, sy1 = max(0, -ox), max(0, -oy)
    dx1, dy1 = max(0, ox), max(0, oy)
    dx2, dy2 = min(w, ox + target_w), min(h, oy + target_h)
    if dx2 > dx1 and dy2 > dy1:
        src = resized[sy1 : sy1 + dy2 - dy1, sx1 : sx1 + dx2 - dx1]
        alpha[dy1:dy2, dx1:dx2] = src[..., 3]
        colour[dy1:dy2, dx1:dx2] = src[..., :3]
    return alpha, colour


def occlude_face(
    image: np.ndarray,
    box: np.ndarray,
    rng: np.random.Generator,
    coverage: Sequence[float] = (0.2, 0.5),
    types: Sequence[str] = PROCEDURAL_TYPES,
    occluder_images: Sequence[np.ndarray] = (),
) -> tuple[np.ndarray, OcclusionResult]:
    """Paint one occluder on the face in ``box`` of a BGR image (a new array is returned).

    Args:
        image: ``(H, W, 3)`` uint8 BGR.
        box: ``(4,)`` face box ``(x1, y1, x2, y2)`` pixels.
        rng: the per-image generator (all randomness comes from it).
        coverage: ``(low, high)`` target fraction of the face box to cover.
        types: procedural occluder types to draw from.
        occluder_images: BGRA occluders; when given, ``"image"`` joins the types.
    """
    low, high = float(coverage[0]), float(coverage[1])
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"coverage must satisfy 0 <= low <= high <= 1, got {coverage}")
    kinds = list(types) + (["image"] if len(occluder_images) else [])
    kind = kinds[int(rng.integers(len(kinds)))]
    target = float(rng.uniform(low, high))
    height, width = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    bw, bh = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    # Canvas: the face box plus CANVAS_MARGIN on each side, clipped to the image.
    cx1 = int(max(0, np.floor(x1 - CANVAS_MARGIN * bw)))
    cy1 = int(max(0, np.floor(y1 - CANVAS_MARGIN * bh)))
    cx2 = int(min(width, np.ceil(x2 + CANVAS_MARGIN * bw)))
    cy2 = int(min(height, np.ceil(y2 + CANVAS_MARGIN * bh)))
    ch, cw = max(cy2 - cy1, 1), max(cx2 - cx1, 1)
    local_box = (x1 - cx1, y1 - cy1, bw, bh)
    fx1, fy1 = int(np.clip(round(x1) - cx1, 0, cw)), int(np.clip(round(y1) - cy1, 0, ch))
    fx2, fy2 = int(np.clip(round(x2) - cx1, 0, cw)), int(np.clip(round(y2) - cy1, 0, ch))
    face_area = max((fx2 - fx1) * (fy2 - fy1), 1)

    if kind == "image":
        occluder = occluder_images[int(rng.integers(len(occluder_images)))]
        params = {"center": (rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.85))}

        def render(s):
            return _paste_mask((ch, cw), local_box, occluder, params, s)

    else:
        params = _draw_params(kind, rng)
        texture = _texture(kind, (ch, cw), rng)

        def render(s):
            alpha = np.zeros((ch, cw), np.uint8)
            _SHAPES[kind](alpha, local_box, params, s)
            return alpha, texture

    def covered(alpha):
        return float(np.count_nonzero(alpha[fy1:fy2, fx1:fx2] >= 128)) / face_area

    lo, hi = 0.0, 1.0
    best = None
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        alpha, colour = render(mid)
        c = covered(alpha)
        if best is None or abs(c - target) < abs(best[2] - target):
            best = (alpha, colour, c)
        if c < target:
            lo = mid
        else:
            hi = mid
    alpha, colour, achieved = best
    out = image.copy()
    region = out[cy1:cy2, cx1:cx2].astype(np.float32)
    a = (alpha.astype(np.float32) / 255.0)[..., None]
    out[cy1:cy2, cx1:cx2] = np.clip(region * (1 - a) + colour.astype(np.float32) * a + 0.5, 0, 255)
    return out, OcclusionResult(kind, achieved, target)


def _image_rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(key.encode("utf-8"))])


def _encode(image: np.ndarray, ext: str) -> bytes:
    ext = ext.lower()
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if ext in (".jpg", ".jpeg") else []
    ok, data = cv2.imencode(ext, image, params)
    if not ok:
        raise ValueError(f"cannot encode image as {ext}")
    return data.tobytes()


def _write_npz_deterministic(path: str, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` layout with fixed zip timestamps (np.savez stamps the current time)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, buf.getvalue())


def write_occluded_replica(
    src_dir: str,
    dst_dir: str,
    seed: int = 0,
    coverage: Sequence[float] = (0.2, 0.5),
    occluder_dir: str | None = None,
    fmt: str = "auto",
    types: Sequence[str] = PROCEDURAL_TYPES,
    list_file: str | None = None,
    progress: bool = False,
) -> str:
    """Write an occluded replica of the dataset at ``src_dir`` into ``dst_dir``.

    Args:
        src_dir: dataset folder (or ``.npz`` file for BIWI's preprocessed layout).
        dst_dir: output folder (created; for an ``.npz`` source, the replica is
            ``dst_dir/<same name>.npz``).
        seed: the seed; same seed -> same bytes.
        coverage: ``(low, high)`` occluded fraction of the face box.
        occluder_dir: folder of RGBA PNG occluders to use besides the procedural ones.
        fmt: dataset format (``training.datasets.FORMATS``).
        types: procedural occluder types to use.
        list_file: Pandora only: frames to load.

    Returns:
        Path of the manifest CSV (``dst_dir/occlusion_manifest.csv``).
    """
    for kind in types:
        if kind not in _SHAPES:
            raise ValueError(f"unknown occluder type {kind!r}; choose from {PROCEDURAL_TYPES}")
    occluders = load_occluder_images(occluder_dir) if occluder_dir else []
    dataset = load_dataset(src_dir, fmt, angle_limit=float("inf"), list_file=list_file)
    os.makedirs(dst_dir, exist_ok=True)
    rows: list[list] = []
    counts: Counter = Counter()
    failures: list[tuple[str, str]] = []

    def occlude(sample, image):
        box = sample_box(sample, image.shape)
        out, result = occlude_face(
            image, box, _image_rng(seed, sample.key), coverage, types, occluders
        )
        counts[result.occluder] += 1
        rows.append(
            [sample.key, result.occluder, f"{result.coverage:.4f}", f"{result.target:.4f}"]
            + [f"{v:.1f}" for v in box]
        )
        return out

    iterator = dataset.samples
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="occluding", unit="img")

    if dataset.format == "biwi_npz":
        with np.load(src_dir) as data:
            arrays = {name: np.asarray(data[name]) for name in data.files}
        images = arrays["image"].copy()
        for sample in iterator:
            image = load_image(sample)
            out = occlude(sample, image)
            images[sample.array_index] = out[:, :, ::-1] if sample.channel_order == "rgb" else out
        arrays["image"] = images
        _write_npz_deterministic(os.path.join(dst_dir, os.path.basename(src_dir)), arrays)
    else:
        root = os.path.abspath(src_dir if os.path.isdir(src_dir) else os.path.dirname(src_dir))
        done: set[str] = set()
        for sample in iterator:
            src = os.path.abspath(sample.image_path)
            if os.path.commonpath([src, root]) != root:
                failures.append((sample.key, "image outside the dataset folder"))
                continue
            rel = os.path.relpath(src, root)
            try:
                out = occlude(sample, load_image(sample))
            except ImageLoadError as exc:
                failures.append((sample.key, str(exc)))
                continue
            dst = os.path.join(dst_dir, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            with open(dst, "wb") as handle:
                handle.write(_encode(out, os.path.splitext(src)[1]))
            done.add(rel)
        # Everything else (annotations, lists, calibration, unused images) byte for byte.
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                rel = os.path.relpath(os.path.join(dirpath, name), root)
                if rel in done or name in (MANIFEST_CSV, MANIFEST_JSON):
                    continue
                dst = os.path.join(dst_dir, rel)
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                shutil.copyfile(os.path.join(dirpath, name), dst)
    for key, reason in failures:
        LOG.warning("occlusion: skipped %s: %s", key, reason)

    rows.sort(key=lambda r: r[0])
    manifest = os.path.join(dst_dir, MANIFEST_CSV)
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["key", "occluder", "coverage", "target", "x1", "y1", "x2", "y2"])
        writer.writerows(rows)
    fractions = [float(r[2]) for r in rows]
    summary = {
        "source_format": dataset.format,
        "seed": int(seed),
        "coverage_range": [float(coverage[0]), float(coverage[1])],
        "types": list(types) + (["image"] if occluders else []),
        "user_occluders": len(occluders),
        "images_occluded": len(rows),
        "images_skipped": len(failures) + dataset.report.count,
        "per_type": dict(sorted(counts.items())),
        "coverage_mean": round(float(np.mean(fractions)), 4) if fractions else None,
        "coverage_min": round(float(np.min(fractions)), 4) if fractions else None,
        "coverage_max": round(float(np.max(fractions)), 4) if fractions else None,
        "coverage_definition": "occluded fraction (alpha >= 0.5) of the face box",
    }
    with open(os.path.join(dst_dir, MANIFEST_JSON), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2, sort_keys=True)
        handle.write("\n")
    LOG.info(
        "occluded %d images into %s (mean coverage %s)",
        len(rows),
        dst_dir,
        summary["coverage_mean"],
    )
    return manifest


def read_manifest(path: str) -> dict[str, dict]:
    """Manifest CSV -> {key: {"occluder": str, "coverage": float}}."""
    with open(path, newline="", encoding="utf-8") as handle:
        return {
            row["key"]: {"occluder": row["occluder"], "coverage": float(row["coverage"])}
            for row in csv.DictReader(handle)
        }


def main(argv: Sequence[str] | None = None) -> int:
    """``lechpe-occlude SRC DST --seed S --coverage LOW HIGH [--occluders DIR]``."""
    parser = argparse.ArgumentParser(
        prog="lechpe-occlude", description="Write a seeded occluded replica of a head-pose dataset."
    )
    parser.add_argument("src", help="dataset folder (or BIWI .npz)")
    parser.add_argument("dst", help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--coverage",
        type=float,
        nargs=2,
        default=(0.2, 0.5),
        metavar=("LOW", "HIGH"),
        help="occluded fraction of the face box, drawn uniformly per image (default 0.2 0.5)",
    )
    parser.add_argument("--occluders", default=None, help="folder of RGBA PNG occluder images")
    parser.add_argument("--format", default="auto", help="dataset format (default: detect)")
    parser.add_argument(
        "--types", nargs="+", default=list(PROCEDURAL_TYPES), help="procedural occluder types"
    )
    parser.add_argument("--list-file", default=None, help="Pandora: list of frames to use")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    manifest = write_occluded_replica(
        args.src,
        args.dst,
        seed=args.seed,
        coverage=tuple(args.coverage),
        occluder_dir=args.occluders,
        fmt=args.format,
        types=args.types,
        list_file=args.list_file,
        progress=not args.no_progress,
    )
    print(f"manifest: {manifest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
