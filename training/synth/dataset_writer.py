"""Write synthetic samples in the 300W-LP / AFLW2000 layout.

For every image ``<name>.jpg`` a ``<name>.mat`` (MATLAB 5, ``scipy.io``) with:

* ``Pose_Para`` ``(1, 7)``: [pitch, yaw, roll, tx, ty, tz, scale], angles in
  **radians** (``lechpe_model.conventions.euler_to_pose_para``). ``tx, ty`` are the
  image position of the head-model origin in 3DDFA image coordinates (x right, y
  *up*: ``ty = height - 1 - v``), ``tz = 0`` and ``scale`` is pixels per centimetre at
  the origin's depth (``fx / Z``), i.e. a weak-perspective reading like 3DDFA's.
* ``pt2d`` ``(2, 68)``: x row then y row (pixels, y down) of the 68 iBUG-like points,
  projected exactly with the pinhole camera, whether visible or not.
* ``pt3d_68`` ``(3, 68)``: the same points with their optical depth in cm as third row.
* ``roi`` ``(1, 4)``: the face box x1, y1, x2, y2 (pixels): the bounding box of all
  projected face-mesh vertices (forehead to chin, temple to temple).
* ``cam_K`` ``(3, 3)`` intrinsics, ``cam_t_cm`` ``(1, 3)`` head origin in the optical
  frame (cm), ``angles_deg`` ``(1, 3)`` (yaw, pitch, roll) for convenience,
  ``shape_scale`` ``(1, 3)`` the face-shape scale applied to the mesh along x, y, z
  (the 3D landmarks of this image are ``mesh landmarks * shape_scale``).

Beside the images: ``index.csv`` (one row per image: name, angles in degrees, box,
texture details), ``files.txt`` (names without extension, like Hopenet's file
lists) and ``synth.json`` (configuration, seed, camera, version).

Same seed -> same bytes: each image's generator is seeded from (seed, index), JPEGs
are encoded by OpenCV at a fixed per-image quality, and the MAT header's creation
time stamp is replaced by a fixed text.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import multiprocessing
import sys
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import scipy.io

from lechpe_model.conventions import CONVENTION_VERSION, euler_to_pose_para
from training.synth.scene import (
    SceneConfig,
    SynthSample,
    ray_relative_angles,
    render_sample,
    sample_rng,
)

SYNTH_VERSION = "lechpe-synth-1"
_MAT_HEADER = b"MATLAB 5.0 MAT-file, written by lechpe-synth"

INDEX_COLUMNS = (
    "name",
    "yaw",
    "pitch",
    "roll",
    "x1",
    "y1",
    "x2",
    "y2",
    "mirrored",
    "skin_tone",
    "jpeg_quality",
    "identity",
    "texture",
    "expression",
    "glasses",
    "focal_px",
    "off_axis_deg",
    "effects",
)


def mat_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """MAT-5 file content with a fixed header text (scipy writes the current time)."""
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, arrays, do_compression=False, oned_as="row")
    data = bytearray(buffer.getvalue())
    data[:116] = _MAT_HEADER.ljust(116, b" ")
    return bytes(data)


def encode_jpeg(image_rgb: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of an RGB uint8 image (OpenCV, deterministic for fixed input)."""
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    )
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def sample_label(sample: SynthSample) -> np.ndarray:
    """The written label (yaw, pitch, roll): camera-frame angles, or ray-relative ones
    when the sample was rendered with ``label_frame="ray"``."""
    if sample.label_frame == "ray":
        return ray_relative_angles(sample.angles, sample.t_cm)
    return np.asarray(sample.angles, np.float64)


def sample_mat(sample: SynthSample) -> dict[str, np.ndarray]:
    """The ``.mat`` content of one sample (see the module docstring for the keys)."""
    cam = sample.camera
    yaw, pitch, roll = (float(a) for a in sample.angles)
    label = sample_label(sample)
    depth = float(sample.t_cm[2])
    u0 = cam.fx * sample.t_cm[0] / depth + cam.cx
    v0 = cam.fy * sample.t_cm[1] / depth + cam.cy
    pose_para = euler_to_pose_para(
        *label, translation=(u0, cam.height - 1 - v0, 0.0), scale=cam.fx / depth
    )
    from training.synth.mesh import load_face_mesh
    from training.synth.renderer import optical_rotation

    if sample.landmarks_3d is not None:
        points = np.asarray(sample.landmarks_3d, np.float64)
    else:
        points = load_face_mesh().landmark_points() * sample.shape_scale
    pts3d = points @ optical_rotation(yaw, pitch, roll).T + sample.t_cm
    return {
        "Pose_Para": pose_para.reshape(1, 7).astype(np.float32),
        "pt2d": sample.landmarks.T.astype(np.float32),
        "pt3d_68": np.vstack([sample.landmarks.T, pts3d[:, 2][None, :]]).astype(np.float32),
        "roi": sample.box.reshape(1, 4).astype(np.float32),
        "cam_K": cam.matrix,
        "cam_t_cm": np.asarray(sample.t_cm, np.float64).reshape(1, 3),
        "angles_deg": np.asarray(label, np.float64).reshape(1, 3),
        "angles_camera_deg": np.asarray(sample.angles, np.float64).reshape(1, 3),
        "shape_scale": np.asarray(sample.shape_scale, np.float64).reshape(1, 3),
        "identity": np.array([[int(sample.identity)]], dtype=np.int32),
        "pt3d_model": points.T.astype(np.float64),
        "angles_ray_deg": ray_relative_angles(sample.angles, sample.t_cm).reshape(1, 3),
    }


def write_sample(out_dir: Path, name: str, sample: SynthSample) -> dict:
    """Write ``<name>.jpg`` + ``<name>.mat``; return the manifest row."""
    (out_dir / f"{name}.jpg").write_bytes(encode_jpeg(sample.image, sample.jpeg_quality))
    (out_dir / f"{name}.mat").write_bytes(mat_bytes(sample_mat(sample)))
    yaw, pitch, roll = sample_label(sample)
    x1, y1, x2, y2 = sample.box
    return {
        "name": name,
        "yaw": f"{yaw:.6f}",
        "pitch": f"{pitch:.6f}",
        "roll": f"{roll:.6f}",
        "x1": f"{x1:.3f}",
        "y1": f"{y1:.3f}",
        "x2": f"{x2:.3f}",
        "y2": f"{y2:.3f}",
        "mirrored": int(sample.info.get("mirrored", False)),
        "skin_tone": sample.info.get("skin_tone", -1),
        "jpeg_quality": sample.jpeg_quality,
        "identity": int(sample.identity),
        "texture": sample.info.get(
            "texture", "astronaut_mirrored" if sample.info.get("mirrored") else "astronaut"
        ),
        "expression": sample.info.get("expression", "neutral"),
        "glasses": sample.info.get("glasses", "none"),
        "focal_px": f"{sample.info.get('focal_px', sample.camera.fx):.1f}",
        "off_axis_deg": f"{sample.info.get('off_axis_deg', 0.0):.2f}",
        "effects": sample.info.get("effects", "none"),
    }


def image_name(index: int) -> str:
    return f"synth_{index:06d}"


def _worker_init() -> None:
    # One OpenCV thread per worker process: the processes already use the cores.
    cv2.setNumThreads(1)


def _render_and_write(job: tuple[str, int, int, SceneConfig]) -> dict:
    out_dir, seed, index, config = job
    name = image_name(index)
    try:
        sample = render_sample(sample_rng(seed, index), config, identity=config.identity_of(index))
        return write_sample(Path(out_dir), name, sample)
    except (ValueError, OSError, cv2.error, RuntimeError) as exc:
        # One bad item must not end a long run: it is skipped, counted and named.
        return {"name": name, "error": f"{type(exc).__name__}: {exc}"}


def write_dataset(
    out_dir: Path | str,
    count: int,
    seed: int = 0,
    config: SceneConfig | None = None,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Render ``count`` labelled images into ``out_dir`` (300W-LP layout).

    Returns the path of ``index.csv``. ``workers`` > 1 renders in ``spawn``-started
    processes (call it under ``if __name__ == "__main__":`` in a script); the bytes do
    not depend on it.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    config = config or SceneConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), int(seed), i, config) for i in range(count)]
    rows: Iterable[dict]
    if workers > 1:
        # "spawn": forking a parent that already runs OpenCV/BLAS threads can deadlock
        # the children on a copied lock.
        pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
        )
        rows = pool.map(_render_and_write, jobs, chunksize=16)
    else:
        pool = None
        rows = map(_render_and_write, jobs)
    if progress:
        from tqdm import tqdm

        rows = tqdm(rows, total=count, desc="lechpe-synth images", unit="img")
    try:
        results = list(rows)
    finally:
        if pool is not None:
            pool.shutdown()
    failed = [r for r in results if "error" in r]
    rows = [r for r in results if "error" not in r]
    if failed:
        print(
            f"lechpe-synth: skipped {len(failed)} of {count} images; first: "
            f"{failed[0]['name']}: {failed[0]['error']}",
            file=sys.stderr,
        )
    if not rows:
        raise RuntimeError(f"no image could be rendered ({failed[0]['error']})")
    index_path = out / "index.csv"
    with open(index_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=INDEX_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    (out / "files.txt").write_text("".join(f"{r['name']}\n" for r in rows), encoding="utf-8")
    cam = config.camera()
    meta = {
        "version": SYNTH_VERSION,
        "convention": CONVENTION_VERSION,
        "seed": int(seed),
        "count": len(rows),
        "skipped": [f"{r['name']}: {r['error']}" for r in failed],
        "layout": "300W-LP/AFLW2000: <name>.jpg + <name>.mat (Pose_Para radians, pt2d 2x68, roi)",
        "camera": {"fx": cam.fx, "fy": cam.fy, "cx": cam.cx, "cy": cam.cy},
        "config": dataclasses.asdict(config),
    }
    if config.identities is not None:
        from training.synth.identity import IDENTITY_VERSION, identity_params

        used = sorted({config.identity_of(i) for i in range(count)})
        meta["identities"] = {
            "version": IDENTITY_VERSION,
            "identity_seed": int(config.identity_seed),
            "range": list(config.identities),
            "used": len(used),
            "params_file": "identities.json",
            "note": "identity k is a pure function of (identity_seed, k); "
            "identities.json lists the parameters of the identities used",
        }
        params = {
            str(k): identity_params(config.identity_seed, k, config.identity_texture) for k in used
        }
        (out / "identities.json").write_text(json.dumps(params) + "\n", encoding="utf-8")
    (out / "synth.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return index_path
