"""Smooth head-motion video with per-frame ground truth (for the node's demo and tests).

Output folder:

* ``frame_000000.jpg`` ... (RGB content, JPEG quality 95, one static background);
* ``ground_truth.csv``: ``frame,yaw,pitch,roll,x1,y1,x2,y2`` (degrees; face box in
  pixels, the bounding box of the projected face mesh) followed by ``x_m,y_m,z_m``,
  the head-model origin in the camera optical frame (metres);
* ``sequence.json``: fps, size, frame count, seed, intrinsics ``fx, fy, cx, cy``,
  ``face_width_m`` (temple-to-temple width of the mesh, so a node can check a
  position estimate), the angle convention and the file names.

Motion: each angle is a sum of three sinusoids with random frequencies (0.03-0.35 Hz)
and phases, bounded by the configured amplitude (default +-60 yaw, +-30 pitch,
+-25 roll; the bound is reached when the sinusoids' peaks align); the head also drifts slowly in x/y and distance. Smooth and
reproducible from the seed. The head keeps the canonical mesh shape (no shape
jitter), so ``face_width_m`` is exact for every frame.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lechpe_model.conventions import ANGLE_NAMES, CONVENTION_VERSION
from training.synth.dataset_writer import SYNTH_VERSION, encode_jpeg
from training.synth.renderer import Camera, build_head_model, composite, render_head
from training.synth.scene import random_appearance, random_background

GT_COLUMNS = ("frame", "yaw", "pitch", "roll", "x1", "y1", "x2", "y2", "x_m", "y_m", "z_m")


@dataclass(frozen=True)
class SequenceConfig:
    """Sequence settings (pixels, degrees, seconds, centimetres)."""

    frames: int = 150
    width: int = 640
    height: int = 480
    fps: float = 30.0
    hfov_deg: float = 60.0
    amplitude: tuple[float, float, float] = (60.0, 30.0, 25.0)  # yaw, pitch, roll
    distance_cm: tuple[float, float] = (55.0, 80.0)
    jpeg_quality: int = 95
    head: bool = True

    def camera(self) -> Camera:
        return Camera.from_fov(self.width, self.height, self.hfov_deg)


def _smooth_signal(rng: np.random.Generator, times: np.ndarray, amplitude: float) -> np.ndarray:
    """Sum of three sinusoids with random frequency/phase, bounded by ``amplitude``."""
    if amplitude == 0:
        return np.zeros_like(times)
    freqs = rng.uniform(0.03, 0.35, size=3)
    phases = rng.uniform(0, 2 * math.pi, size=3)
    weights = rng.uniform(0.3, 1.0, size=3)
    signal = sum(
        w * np.sin(2 * math.pi * f * times + p)
        for w, f, p in zip(weights, freqs, phases, strict=True)
    )
    # Normalise by the largest possible value (not the sampled one), so the speed
    # does not depend on the sequence length and |value| <= amplitude always.
    return signal * (amplitude / float(weights.sum()))


def motion(config: SequenceConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame angles ``(N, 3)`` degrees (yaw, pitch, roll) and positions ``(N, 3)`` cm."""
    rng = np.random.default_rng([int(seed), 1])
    times = np.arange(config.frames) / config.fps
    angles = np.stack([_smooth_signal(rng, times, a) for a in config.amplitude], axis=1)
    near, far = config.distance_cm
    depth = (near + far) / 2 + _smooth_signal(rng, times, (far - near) / 2)
    cam = config.camera()
    # Lateral drift within +-12 % of the image, kept inside the view at that depth.
    du = _smooth_signal(rng, times, 0.12 * config.width)
    dv = _smooth_signal(rng, times, 0.08 * config.height)
    pos = np.stack([du * depth / cam.fx, dv * depth / cam.fy, depth], axis=1)
    return angles, pos


def write_sequence(out_dir: Path | str, config: SequenceConfig, seed: int = 0) -> Path:
    """Render the sequence into ``out_dir``; return the path of ``ground_truth.csv``."""
    if config.frames < 1:
        raise ValueError(f"frames must be >= 1, got {config.frames}")
    if config.fps <= 0:
        raise ValueError(f"fps must be > 0, got {config.fps}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cam = config.camera()
    model = build_head_model(config.head)
    rng = np.random.default_rng([int(seed), 0])
    appearance, info = random_appearance(rng)
    background = random_background(rng, cam.width, cam.height)
    angles, pos = motion(config, seed)
    gt_path = out / "ground_truth.csv"
    from tqdm import tqdm

    with open(gt_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(GT_COLUMNS)
        for i in tqdm(range(config.frames), desc="lechpe-synth sequence", unit="frame"):
            yaw, pitch, roll = angles[i]
            result = render_head(model, appearance, yaw, pitch, roll, pos[i], cam)
            image = composite(result, background)
            (out / f"frame_{i:06d}.jpg").write_bytes(encode_jpeg(image, config.jpeg_quality))
            x1, y1, x2, y2 = result.face_box
            writer.writerow(
                [i, f"{yaw:.6f}", f"{pitch:.6f}", f"{roll:.6f}"]
                + [f"{v:.3f}" for v in (x1, y1, x2, y2)]
                + [f"{v / 100.0:.6f}" for v in pos[i]]
            )
    meta = {
        "version": SYNTH_VERSION,
        "convention": CONVENTION_VERSION,
        "angle_order": list(ANGLE_NAMES),
        "angle_unit": "degree",
        "seed": int(seed),
        "frames": int(config.frames),
        "fps": float(config.fps),
        "width": int(cam.width),
        "height": int(cam.height),
        "fx": cam.fx,
        "fy": cam.fy,
        "cx": cam.cx,
        "cy": cam.cy,
        "face_width_m": model.face.width_cm / 100.0,
        "frame_pattern": "frame_{:06d}.jpg",
        "ground_truth": "ground_truth.csv",
        "position": "x_m, y_m, z_m: head-model origin in the optical frame (x right, y down, z forward)",
        "texture": info,
    }
    (out / "sequence.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return gt_path
