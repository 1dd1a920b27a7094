"""``lechpe-synth``: synthetic head-pose data with exact labels.

Subcommands::

    lechpe-synth images OUT --count N --seed S --size 224 [--workers 2] [--occluded-replica DIR]
    lechpe-synth sequence OUT --frames N --seed S --size 640x480 --fps 30
    lechpe-synth contact-sheet DIR OUT.png [--count 24 --columns 6]
    lechpe-synth identities OUT.png [--count 48 --first 0 --identity-seed 0]
    lechpe-synth signs OUT.png
    lechpe-synth bench [--count 200 --size 224 --workers 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def parse_size(text: str) -> tuple[int, int]:
    """``"224"`` -> (224, 224); ``"640x480"`` -> (640, 480) (width x height)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 32 or max(parts) > 4096:
        raise argparse.ArgumentTypeError(
            f"size must be N or WxH with 32 <= N <= 4096, got {text!r}"
        )
    return parts[0], parts[1]


def write_occluded(src_dir: Path, dst_dir: Path, seed: int) -> None:
    """Occluded replica of ``src_dir`` through ``training.occlusion`` (imported lazily)."""
    try:
        from training.occlusion import write_occluded_replica
    except ImportError as exc:
        raise SystemExit(
            "--occluded-replica needs training.occlusion.write_occluded_replica "
            f"(the occlusion generator), which could not be imported: {exc}"
        ) from exc
    write_occluded_replica(str(src_dir), str(dst_dir), seed=seed)


def parse_identity_range(text: str) -> tuple[int, int]:
    """``"100:200"`` -> (100, 200): identities 100 .. 199."""
    try:
        start, stop = (int(p) for p in text.split(":"))
    except ValueError:
        start, stop = -1, -1
    if start < 0 or stop <= start:
        raise argparse.ArgumentTypeError(
            f"identity range must be START:STOP with 0 <= START < STOP, got {text!r}"
        )
    return start, stop


def identity_range_of(args) -> tuple[int, int] | None:
    """The identity range chosen by ``--identity-range`` / ``--identities`` (None = legacy)."""
    if getattr(args, "identity_range", None) is not None:
        return args.identity_range
    n = getattr(args, "identities", DEFAULT_IDENTITIES)
    if n < 0:
        raise SystemExit(f"lechpe-synth: --identities must be >= 0, got {n}")
    return (0, n) if n > 0 else None


#: Identities rendered by default (ids 0 .. 999); ``--identities 0`` = the legacy
#: single-astronaut renderer.
DEFAULT_IDENTITIES = 1000


def parse_float_range(text: str) -> tuple[float, float]:
    """``"300:1500"`` -> (300.0, 1500.0)."""
    try:
        lo, hi = (float(p) for p in text.split(":"))
    except ValueError:
        lo, hi = 1.0, 0.0
    if not 0 <= lo <= hi:
        raise argparse.ArgumentTypeError(
            f"range must be MIN:MAX with 0 <= MIN <= MAX, got {text!r}"
        )
    return lo, hi


#: Probability options of the robot-camera variation: CLI flag -> SceneConfig field.
EFFECT_OPTIONS = {
    "shadow-prob": "shadow_prob",
    "defocus-prob": "defocus_prob",
    "motion-blur-prob": "motion_blur_prob",
    "low-res-prob": "low_res_prob",
    "grey-prob": "grey_prob",
    "ir-prob": "ir_prob",
    "low-jpeg-prob": "low_jpeg_prob",
    "clutter-prob": "clutter_prob",
    "second-head-prob": "second_head_prob",
}


def _variation_kwargs(args) -> dict:
    """SceneConfig fields of the robot-camera variation from the CLI flags."""
    if getattr(args, "no_variation", False):
        off = {field: 0.0 for field in EFFECT_OPTIONS.values()}
        return {"camera_model": "fixed", "lights": (1, 1), "specular": (0.0, 0.0), **off}
    kwargs = {
        "camera_model": args.camera,
        "focal_px": args.focal_range,
        "distance_cm": args.distance_range,
        "lights": (int(args.lights[0]), int(args.lights[1])),
    }
    for flag, field in EFFECT_OPTIONS.items():
        kwargs[field] = getattr(args, flag.replace("-", "_"))
    return kwargs


def _scene_config(args):
    from training.synth.scene import PoseDistribution, SceneConfig

    width, height = args.size
    return SceneConfig(
        **_variation_kwargs(args),
        width=width,
        height=height,
        head=not args.no_head,
        poses=PoseDistribution(kind=args.poses),
        identities=identity_range_of(args),
        identity_seed=args.identity_seed,
        identity_texture=args.identity_texture,
        expression_prob=args.expressions,
        accessories=not args.no_accessories,
        label_frame=args.label_frame,
    )


def cmd_images(args) -> int:
    from training.synth.dataset_writer import write_dataset

    config = _scene_config(args)
    index = write_dataset(args.out, args.count, seed=args.seed, config=config, workers=args.workers)
    print(f"wrote {args.count} images + labels to {args.out} (index: {index})")
    if args.occluded_replica:
        write_occluded(Path(args.out), Path(args.occluded_replica), seed=args.seed)
        print(f"wrote the occluded replica to {args.occluded_replica}")
    return 0


def cmd_sequence(args) -> int:
    from training.synth.sequence import SequenceConfig, write_sequence

    width, height = args.size
    config = SequenceConfig(
        frames=args.frames,
        width=width,
        height=height,
        fps=args.fps,
        amplitude=(args.yaw_amplitude, args.pitch_amplitude, args.roll_amplitude),
        head=not args.no_head,
    )
    gt = write_sequence(args.out, config, seed=args.seed)
    print(f"wrote {args.frames} frames to {args.out} (ground truth: {gt})")
    return 0


def cmd_contact_sheet(args) -> int:
    from training.synth.contact_sheet import make_contact_sheet

    out = make_contact_sheet(args.folder, args.out, count=args.count, columns=args.columns)
    print(f"wrote {out}")
    return 0


def cmd_identities(args) -> int:
    from training.synth.contact_sheet import make_identity_sheet

    out = make_identity_sheet(
        args.out,
        count=args.count,
        columns=args.columns,
        size=args.size,
        identity_seed=args.identity_seed,
        first=args.first,
    )
    print(f"wrote {out}")
    return 0


def cmd_signs(args) -> int:
    from training.synth.contact_sheet import make_sign_figure

    print(f"wrote {make_sign_figure(args.out, degrees=args.degrees)}")
    return 0


def run_bench(
    count: int,
    size: tuple[int, int],
    workers: int,
    seed: int = 0,
    identities: tuple[int, int] | None = None,
) -> dict:
    """Images per second at ``size``.

    * render only, one process: wall clock and CPU time (``time.process_time``; on a
      shared machine CPU time is the fairer measure of the code's own cost), with the
      identities already built (steady state; building one costs ~10 ms, once per
      process);
    * the whole ``images`` path (render, JPEG, ``.mat``, manifest) with ``workers``
      processes, wall clock.
    """
    import os

    import numpy as np

    from training.synth.dataset_writer import write_dataset
    from training.synth.scene import SceneConfig, render_sample, sample_rng

    config = SceneConfig(width=size[0], height=size[1], identities=identities)
    render_sample(sample_rng(seed, 0), config, identity=config.identity_of(0))  # warm caches
    if identities is not None:
        # Identities are built once per process and reused (a training set shows each
        # one many times): build them before timing, so this is the steady-state rate.
        from training.synth.identity import build_identity

        for i in range(count):
            build_identity(config.identity_seed, config.identity_of(i), config.identity_texture)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for i in range(count):
        render_sample(sample_rng(seed, i), config, identity=config.identity_of(i))
    render_wall = time.perf_counter() - wall0
    render_cpu = time.process_time() - cpu0
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        write_dataset(tmp, count, seed=seed, config=config, workers=workers, progress=False)
        write_s = time.perf_counter() - start
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {
        "size": f"{size[0]}x{size[1]}",
        "identities": list(identities) if identities else None,
        "count": count,
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(load, 2),
        "render_only_1proc_img_per_s": round(count / render_wall, 1),
        "render_only_cpu_ms_per_img": round(1000 * render_cpu / count, 2),
        "write_dataset_workers": workers,
        "write_dataset_img_per_s": round(count / write_s, 1),
        "numpy": np.__version__,
    }


def cmd_bench(args) -> int:
    result = run_bench(args.count, args.size, args.workers, args.seed, identity_range_of(args))
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


def _variation_args(p: argparse.ArgumentParser) -> None:
    """Options of the robot-camera variation (identities only)."""
    from training.synth.scene import SceneConfig

    d = SceneConfig()
    g = p.add_argument_group("camera variation (identities only)")
    g.add_argument(
        "--camera",
        choices=("robot", "fixed"),
        default=d.camera_model,
        help="robot: focal range, off-axis heads, distances (default); fixed: 30 deg FOV, "
        "centred heads",
    )
    g.add_argument(
        "--focal-range",
        type=parse_float_range,
        default=d.focal_px,
        metavar="MIN:MAX",
        help="focal length (px of a 640-px-wide camera), default 300:1500",
    )
    g.add_argument(
        "--distance-range",
        type=parse_float_range,
        default=d.distance_cm,
        metavar="MIN:MAX",
        help="head distance (cm), default 40:250",
    )
    g.add_argument(
        "--lights",
        type=parse_float_range,
        default=d.lights,
        metavar="MIN:MAX",
        help="number of coloured lights, default 1:3",
    )
    for flag, field in EFFECT_OPTIONS.items():
        g.add_argument(
            f"--{flag}",
            type=float,
            default=getattr(d, field),
            metavar="P",
            help=f"share of images (default {getattr(d, field)})",
        )
    g.add_argument(
        "--no-variation",
        action="store_true",
        help="no camera variation: fixed camera, one white light, no effects",
    )


def _identity_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--identities",
        type=int,
        default=DEFAULT_IDENTITIES,
        metavar="N",
        help=f"render identities 0..N-1 (default {DEFAULT_IDENTITIES}); 0 = the legacy "
        "single astronaut texture",
    )
    p.add_argument(
        "--identity-range",
        type=parse_identity_range,
        default=None,
        metavar="START:STOP",
        help="render identities START..STOP-1 (overrides --identities); use disjoint "
        "ranges for train/val/test",
    )
    p.add_argument("--identity-seed", type=int, default=0, help="seed of the identity generator")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lechpe-synth",
        description="Render synthetic head images with exact pose labels (300W-LP layout).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("images", help="labelled images in the 300W-LP/AFLW2000 layout")
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=parse_size, default=(224, 224), help="N or WxH (default 224)")
    p.add_argument("--workers", type=int, default=1, help="render processes")
    p.add_argument(
        "--poses", choices=("300wlp", "uniform"), default="300wlp", help="pose distribution"
    )
    p.add_argument("--no-head", action="store_true", help="face mesh only, no skull/hair")
    _identity_args(p)
    p.add_argument(
        "--expressions",
        type=float,
        default=0.4,
        metavar="P",
        help="share of images with an expression (eyes closed, mouth open, smile)",
    )
    p.add_argument("--no-accessories", action="store_true", help="no glasses")
    p.add_argument(
        "--identity-texture",
        choices=("mix", "photo", "procedural"),
        default="mix",
        help="base face textures: astronaut photo + procedural (default), or one kind",
    )
    p.add_argument(
        "--label-frame",
        choices=("auto", "camera", "ray"),
        default="auto",
        help="label written to Pose_Para/index.csv: rotation in the camera frame (exact "
        "for cam_K + pt2d) or relative to the viewing ray (what a centred crop shows); "
        "auto (default) = ray with --camera robot, camera otherwise",
    )
    _variation_args(p)
    p.add_argument(
        "--occluded-replica",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write an occluded replica there (training.occlusion)",
    )
    p.set_defaults(func=cmd_images)

    p = sub.add_parser("sequence", help="smooth head-motion frames + ground_truth.csv")
    p.add_argument("out", type=Path)
    p.add_argument("--frames", type=int, default=150)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=parse_size, default=(640, 480), help="WxH (default 640x480)")
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--yaw-amplitude", type=float, default=60.0)
    p.add_argument("--pitch-amplitude", type=float, default=30.0)
    p.add_argument("--roll-amplitude", type=float, default=25.0)
    p.add_argument("--no-head", action="store_true")
    p.set_defaults(func=cmd_sequence)

    p = sub.add_parser("contact-sheet", help="PNG grid of labelled images from a folder")
    p.add_argument("folder", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--count", type=int, default=24)
    p.add_argument("--columns", type=int, default=6)
    p.set_defaults(func=cmd_contact_sheet)

    p = sub.add_parser("identities", help="PNG grid of identities (one render each)")
    p.add_argument("out", type=Path)
    p.add_argument("--count", type=int, default=48)
    p.add_argument("--columns", type=int, default=8)
    p.add_argument("--size", type=int, default=128, help="tile side in pixels")
    p.add_argument("--first", type=int, default=0, help="first identity id")
    p.add_argument("--identity-seed", type=int, default=0)
    p.set_defaults(func=cmd_identities)

    p = sub.add_parser("signs", help="PNG showing which way +yaw/+pitch/+roll turn a render")
    p.add_argument("out", type=Path)
    p.add_argument("--degrees", type=float, default=25.0)
    p.set_defaults(func=cmd_signs)

    p = sub.add_parser("bench", help="images per second")
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--size", type=parse_size, default=(224, 224))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    _identity_args(p)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("count", "frames"):
        if getattr(args, name, 1) < 1:
            print(f"lechpe-synth: --{name} must be >= 1", file=sys.stderr)
            return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
