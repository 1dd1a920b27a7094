"""lechpe-bench: per-stage latency and throughput of the runtime (a benchmark, not a test).

For every available backend and frames holding 1, 4 and 16 faces (640x480,
JPEG-encoded so "decode" is a real ``cv2.imdecode``), it times each stage of
``PoseEstimator.estimate_encoded``: decode, detect, preprocess (frame checks,
crops, resize, normalisation), network (one batch with all faces), postprocess
(decoding outputs into ``FacePose``), and reports p50/p95 in ms and frames
per second. It then states two ratios from the one-face frame:

* ONNX Runtime speed-up over PyTorch eager (network p50, same model, batch 1);
* non-network time / network time (everything but the network, p50 sums).

Results go to stdout and, with ``--output``, into the section of a Markdown
file between ``<!-- lechpe-bench:start -->`` and ``<!-- lechpe-bench:end -->``
(the rest of the file is left alone; the section is appended if absent).

Examples::

    lechpe-bench --arch resnet50,mobilenet_v2 --output docs/BENCHMARKS.md
    lechpe-bench --model model.safetensors --backends onnxruntime --batch-sizes 1
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SECTION_START = "<!-- lechpe-bench:start -->"
SECTION_END = "<!-- lechpe-bench:end -->"
FRAME_W, FRAME_H = 640, 480
STAGE_COLUMNS = ("decode", "detect", "preprocess", "network", "postprocess")
LOAD_NOTE = (
    "A load average above the number of cores means other processes shared the CPU: "
    "every time is then inflated, PyTorch's OpenMP threads most of all (which inflates "
    "the ONNX Runtime speed-up); compare runs made at similar load."
)


def random_checkpoint(
    path: str | Path, backbone: str = "resnet18", num_clusters: int = 4, seed: int = 0
) -> Path:
    """Save a random-weight model whose outputs vary with the input (tests, benchmarks).

    A freshly initialised network gives ~0 degrees for every input, which makes
    backend comparisons trivially pass. Here the angle heads are re-drawn so
    their logits vary by a few units across random images (weights scaled by
    the spread of the latent, biases centring the mean latent) and the
    centroids are set to latents of random images, so q varies too.
    Deterministic for a given seed.
    """
    import torch

    from lechpe_model.checkpoint import save_checkpoint
    from lechpe_model.network import LECHPENet

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = LECHPENet(backbone, num_clusters=num_clusters).eval()
    with torch.no_grad():
        size = 224
        latent = model.encode(torch.randn(8, 3, size, size, generator=generator))
        mean, spread = latent.mean(0), latent.std(0).norm().clamp_min(1e-12)
        for head in model.heads.values():
            weight = torch.randn(head.weight.shape, generator=generator) * (3.0 / spread)
            head.weight.copy_(weight)
            head.bias.copy_(-weight @ mean)
        model.set_centroids(latent[:num_clusters].clone())
    save_checkpoint(path, model, training_config={"random_weights": True, "seed": seed})
    return Path(path)


# ------------------------------------------------------------------ test frames


def astronaut_bgr() -> np.ndarray:
    """scikit-image's astronaut photo (public domain), BGR."""
    import cv2
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


def make_frame(num_faces: int) -> np.ndarray:
    """640x480 BGR frame: the astronaut photo (1 face) or a grid of her head (N faces)."""
    import cv2

    photo = astronaut_bgr()
    frame = np.full((FRAME_H, FRAME_W, 3), 110, np.uint8)
    if num_faces == 1:
        frame[:, 80:560] = cv2.resize(photo, (480, 480), interpolation=cv2.INTER_AREA)
        return frame
    cols = int(np.ceil(np.sqrt(num_faces * FRAME_W / FRAME_H)))
    rows = int(np.ceil(num_faces / cols))
    tile = min(FRAME_W // cols, FRAME_H // rows)
    head = cv2.resize(photo[20:230, 120:330], (tile, tile), interpolation=cv2.INTER_AREA)
    for i in range(num_faces):
        r, c = divmod(i, cols)
        frame[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] = head
    return frame


def encode_jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
    import cv2

    ok, data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return data.tobytes()


# ---------------------------------------------------------------------- timing


@dataclass
class StageStats:
    """Per-stage samples (ms) of repeated frames."""

    samples: dict[str, list[float]] = field(default_factory=dict)
    wall_s: float = 0.0
    frames: int = 0
    faces: list[int] = field(default_factory=list)

    def p(self, stage: str, q: float) -> float:
        values = self.samples.get(stage, [])
        return float(np.percentile(values, q)) if values else 0.0

    def total(self) -> list[float]:
        stages = list(self.samples.values())
        return [sum(v) for v in zip(*stages, strict=True)] if stages else []

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0


def time_frames(estimator, jpeg: bytes, repeats: int, warmup: int = 2) -> StageStats:
    """Run ``estimate_encoded`` ``repeats`` times after ``warmup`` runs."""
    for _ in range(warmup):
        estimator.estimate_encoded(jpeg)
    stats = StageStats(samples={s: [] for s in STAGE_COLUMNS})
    start = time.perf_counter()
    for _ in range(repeats):
        result = estimator.estimate_encoded(jpeg)
        if result.error:
            raise RuntimeError(f"benchmark frame failed: {result.error}")
        for stage in STAGE_COLUMNS:
            stats.samples[stage].append(result.timings_ms.get(stage, 0.0))
        stats.faces.append(len(result.faces))
    stats.wall_s = time.perf_counter() - start
    stats.frames = repeats
    return stats


# --------------------------------------------------------------------- machine


def describe_machine() -> str:
    """One paragraph: CPU, cores, memory, OS, Python and runtime versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            kb = int(handle.readline().split()[1])
            mem = f", {kb / 1024**2:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    versions = []
    for module in ("torch", "onnxruntime", "cv2", "numpy", "tensorrt"):
        try:
            mod = __import__(module)
            versions.append(f"{'opencv' if module == 'cv2' else module} {mod.__version__}")
        except Exception:
            continue
    gpu = ""
    try:
        from lechpe_model.backends.tensorrt_backend import gpu_identity

        ident = gpu_identity()
        gpu = f", GPU {ident[0]} (sm {ident[1]})" if ident else ", no GPU"
    except Exception:
        pass
    try:
        load = f", 1-min load average {os.getloadavg()[0]:.1f} at the end of the run"
    except OSError:
        load = ""
    return (
        f"{cpu}, {os.cpu_count()} logical cores{mem}{gpu}{load}; {platform.system()} "
        f"{platform.release()} {platform.machine()}, Python {platform.python_version()}; "
        + ", ".join(versions)
    )


# ---------------------------------------------------------------------- report


def format_model_section(
    title: str, rows: list[tuple[str, int, StageStats]], detect_every: int = 1
) -> tuple[str, dict]:
    """Markdown table of one model and the ratios derived from it.

    With ``detect_every`` > 1 the detector runs on one frame in N, so the
    non-network share uses the per-frame *mean* of each stage (the amortised
    cost); the p50 of the detect column would hide the frames that detect.
    """
    lines = [
        f"#### {title}",
        "",
        "| backend | faces/frame | " + " | ".join(STAGE_COLUMNS) + " | total | frames/s |",
        "|---|---:|" + "---:|" * (len(STAGE_COLUMNS) + 2),
    ]
    by_key = {}
    for backend, faces, stats in rows:
        by_key[(backend, faces)] = stats
        cells = [f"{stats.p(s, 50):.2f} / {stats.p(s, 95):.2f}" for s in STAGE_COLUMNS]
        total = stats.total()
        total_cell = f"{np.percentile(total, 50):.1f} / {np.percentile(total, 95):.1f}"
        lines.append(
            f"| {backend} | {faces} | " + " | ".join(cells) + f" | {total_cell} | {stats.fps:.1f} |"
        )
    lines.append("")
    lines.append("Cells: p50 / p95 in ms per frame (all faces of a frame in one network batch).")
    ratios: dict[str, float] = {}
    torch1, ort1 = by_key.get(("torch", 1)), by_key.get(("onnxruntime", 1))
    if torch1 and ort1 and ort1.p("network", 50) > 0:
        ratios["ort_speedup_b1"] = torch1.p("network", 50) / ort1.p("network", 50)
    for backend in ("onnxruntime", "torch", "tensorrt"):
        stats = by_key.get((backend, 1))
        if stats and stats.p("network", 50) > 0:
            others = [s for s in STAGE_COLUMNS if s != "network"]
            if detect_every > 1:
                other = sum(float(np.mean(stats.samples.get(s) or [0.0])) for s in others)
            else:
                other = sum(stats.p(s, 50) for s in others)
            ratios[f"non_network_{backend}"] = other / stats.p("network", 50)
    lines.append("")
    if "ort_speedup_b1" in ratios:
        verdict = "meets" if ratios["ort_speedup_b1"] >= 1.3 else "misses"
        lines.append(
            f"- ONNX Runtime vs PyTorch eager, network p50 at batch 1: "
            f"**{ratios['ort_speedup_b1']:.2f}x** (target >= 1.3x: {verdict})"
        )
    for backend in ("onnxruntime", "torch", "tensorrt"):
        key = f"non_network_{backend}"
        if key in ratios:
            verdict = "meets" if ratios[key] <= 0.15 else "misses"
            how = (
                f" (detector on 1 frame in {detect_every}, stage means)" if detect_every > 1 else ""
            )
            lines.append(
                f"- {backend}: everything except the network / network, one face{how}: "
                f"**{100 * ratios[key]:.0f}%** (target <= 15%: {verdict})"
            )
    return "\n".join(lines) + "\n", ratios


def write_section(path: Path, body: str, machine: str) -> None:
    """Replace (or append) the delimited lechpe-bench section of a Markdown file."""
    section = f"{SECTION_START}\n{body.rstrip()}\n{SECTION_END}\n"
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        if SECTION_START in text and SECTION_END in text:
            head, rest = text.split(SECTION_START, 1)
            _, tail = rest.split(SECTION_END, 1)
            text = head + section.rstrip("\n") + tail
        else:
            text = text.rstrip("\n") + "\n\n" + section
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = f"# Benchmarks\n\n## Machine\n\n{machine}\n\n" + section
    path.write_text(text, encoding="utf-8")


# ------------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lechpe-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help=".safetensors checkpoint to time")
    parser.add_argument(
        "--arch",
        default="resnet50,mobilenet_v2",
        help="without --model: random-weight models of these backbones (comma list)",
    )
    parser.add_argument("--backends", help="comma list (default: every available backend)")
    parser.add_argument("--batch-sizes", default="1,4,16", help="faces per frame (comma list)")
    parser.add_argument("--repeats", type=int, default=20, help="timed frames per row")
    parser.add_argument("--warmup", type=int, default=3, help="untimed frames per row")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads")
    # yuface: its frames hold up to 16 small faces that BlazeFace (192 px input) does not all find
    parser.add_argument(
        "--detector", default="yuface", help="face detector (yuface, auto, haar, ...)"
    )
    parser.add_argument(
        "--detect-side",
        type=int,
        help="longest side frames are scaled to for detection (default: the detector's)",
    )
    parser.add_argument(
        "--detect-every",
        type=int,
        default=1,
        help="run the detector on 1 frame in N and reuse its boxes (PoseEstimator detect_every)",
    )
    parser.add_argument(
        "--output", type=Path, help="Markdown file whose lechpe-bench section to rewrite"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from lechpe_model.backends import available_backends, create_backend
    from lechpe_model.detection import create_detector
    from lechpe_model.pipeline import PoseEstimator

    backends = args.backends.split(",") if args.backends else available_backends()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    detector = create_detector(args.detector, max_input_side=args.detect_side)
    detect_side = detector.max_input_side
    frames = {n: encode_jpeg(make_frame(n)) for n in batch_sizes}

    tmp = tempfile.TemporaryDirectory(prefix="lechpe_bench_")
    if args.model:
        models = [(f"{args.model.name}", args.model)]
    else:
        models = []
        for arch in args.arch.split(","):
            print(f"lechpe-bench: building random-weight {arch} ...", file=sys.stderr)
            models.append(
                (
                    f"{arch} (random weights)",
                    random_checkpoint(Path(tmp.name) / f"{arch}.safetensors", arch),
                )
            )

    sections, all_ratios = [], {}
    for title, path in models:
        rows = []
        for name in backends:
            try:
                backend = create_backend(
                    name, path, device="auto", intra_op_threads=args.threads, cache_dir=tmp.name
                )
            except Exception as exc:
                print(f"lechpe-bench: skipping backend {name}: {exc}", file=sys.stderr)
                continue
            estimator = PoseEstimator(
                detector, backend, max_faces=max(batch_sizes), detect_every=args.detect_every
            )
            for n in batch_sizes:
                stats = time_frames(estimator, frames[n], args.repeats, args.warmup)
                if min(stats.faces) != n:
                    print(
                        f"lechpe-bench: warning: {name} frame with {n} faces gave "
                        f"{min(stats.faces)}-{max(stats.faces)} faces",
                        file=sys.stderr,
                    )
                rows.append((name, n, stats))
                print(
                    f"{title} {name} faces={n}: network p50 {stats.p('network', 50):.1f} ms, "
                    f"detect p50 {stats.p('detect', 50):.1f} ms, {stats.fps:.1f} frames/s",
                    file=sys.stderr,
                )
            backend.close()
        text, ratios = format_model_section(title, rows, args.detect_every)
        sections.append(text)
        all_ratios[title] = ratios
    tmp.cleanup()
    machine = describe_machine()  # after the run: the load average covers it

    command = "lechpe-bench " + " ".join(argv if argv is not None else sys.argv[1:])
    body = "\n".join(
        [
            "## Inference runtime (lechpe-bench)",
            "",
            f"Measured {_dt.datetime.now(_dt.UTC).strftime('%Y-%m-%d %H:%M UTC')} with "
            f"`{command.strip()}` on: {machine}.",
            "",
            f"Frame: 640x480 JPEG (quality 90) holding 1, 4 or 16 faces made from "
            f"scikit-image's astronaut photo; detector `{detector.name}` on the frame scaled "
            f"to {detect_side} px (longest side)"
            + (f", on 1 frame in {args.detect_every}" if args.detect_every > 1 else "")
            + f"; {args.threads} intra-op threads; "
            f"{args.repeats} timed frames after {args.warmup} warm-up frames per row.",
            "",
            LOAD_NOTE,
            "",
            *sections,
        ]
    )
    print(body)
    if args.output:
        write_section(args.output, body, machine)
        print(f"lechpe-bench: wrote section of {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
