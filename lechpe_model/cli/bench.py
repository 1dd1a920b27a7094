"""lechpe-bench: per-stage latency and throughput of the runtime (a benchmark, not a test).

For every available backend and frames holding 1, 4 and 16 faces (640x480,
JPEG-encoded so "decode" is a real ``cv2.imdecode``), it times each stage of
``PoseEstimator.estimate_encoded``: decode, detect, preprocess (frame checks,
crops, resize, normalisation), network (one batch with all faces), postprocess
(decoding outputs into ``FacePose``), and reports p50/p95 in ms and frames
per second. It then states two ratios from the one-face frame:

* ONNX Runtime speed-up over PyTorch eager (network p50, same model, batch 1);
* non-network time / network time (everything but the network, p50 sums).

With ``--int8-calibration DIR`` every model also gets an ``onnxruntime-int8``
row (ONNX Runtime static INT8, ``lechpe_model.quantization``, calibrated on
DIR) and the fp32 / int8 network ratio at each batch size; with
``--int8-eval DIR`` (a ``lechpe-synth images`` folder) the MAE of the fp32
and the INT8 model on its faces is reported too. The "non-network share"
section states everything except the network (detector = the
``lechpe_model.detection`` default, detection on every frame unless
``--detect-every``) as a share of ResNet-50's and of the default model's
network time. ``--arch default`` times the shipped default model.

Results go to stdout and, with ``--output``, into the section of a Markdown
file between ``<!-- lechpe-bench:start -->`` and ``<!-- lechpe-bench:end -->``
(the rest of the file is left alone; the section is appended if absent).

Examples::

    lechpe-bench --arch resnet50,mobilenet_v2 --output docs/BENCHMARKS.md
    lechpe-bench --model model.safetensors --backends onnxruntime --batch-sizes 1
    lechpe-bench --arch default,resnet50 --backends onnxruntime --batch-sizes 1,8 \
        --int8-calibration /tmp/synth_calib --int8-eval /tmp/synth_test
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


INT8_ROW = "onnxruntime-int8"


def int8_section(title: str, rows: list[tuple[str, int, StageStats]]) -> tuple[list[str], dict]:
    """Lines + ratios comparing fp32 and INT8 ONNX Runtime network p50 at each batch size."""
    by_key = {(b, n): st for b, n, st in rows}
    lines, ratios = [], {}
    for backend, n, stats in rows:
        if backend != INT8_ROW or ("onnxruntime", n) not in by_key:
            continue
        fp32, int8 = by_key[("onnxruntime", n)].p("network", 50), stats.p("network", 50)
        if int8 > 0:
            ratios[f"int8_speedup_{n}"] = fp32 / int8
            verdict = "meets" if fp32 / int8 >= 2.0 else "misses"
            lines.append(
                f"- {title}: ONNX Runtime fp32 / INT8 network p50 at {n} face(s) per batch: "
                f"{fp32:.2f} / {int8:.2f} ms = **{fp32 / int8:.2f}x** (target >= 2x: {verdict})"
            )
    return lines, ratios


def interleaved_network_ms(
    backends: list, batch: np.ndarray, rounds: int
) -> tuple[list[float], list[float]]:
    """Network times (ms) of several backends run in turn on the same batch.

    Alternating the backends round by round exposes them to the same CPU load,
    so their ratio holds on a shared machine where load changes between rows.
    Returns (p50 per backend, p50 of each backend's time / the first's, per round).
    """
    for backend in backends:
        backend.infer(batch)
    times = [[] for _ in backends]
    for _ in range(rounds):
        for i, backend in enumerate(backends):
            start = time.perf_counter()
            backend.infer(batch)
            times[i].append(1000 * (time.perf_counter() - start))
    first = np.asarray(times[0])
    return (
        [float(np.median(t)) for t in times],
        [float(np.median(first / np.asarray(t))) for t in times],
    )


def pose_mae(backend, folder: Path, batch: int = 32) -> tuple[np.ndarray, int]:
    """Per-axis MAE (degrees) of a backend on a ``lechpe-synth images`` folder.

    Crops come from the folder's ``index.csv`` boxes with the test margin
    (``quantization.calibration_crops``); faces with any |angle| > 99 are left
    out (the project's rule). Returns ``(mae (3,), faces used)``.
    """
    import csv

    from lechpe_model.preprocessing import preprocess_crops
    from lechpe_model.quantization import calibration_crops

    with open(folder / "index.csv", newline="", encoding="utf-8") as handle:
        rows = sorted(csv.DictReader(handle), key=lambda r: r["name"])
    labels = np.array([[float(r[k]) for k in ("yaw", "pitch", "roll")] for r in rows], np.float32)
    crops = calibration_crops(folder, limit=None)
    if len(crops) != len(labels):
        raise RuntimeError(f"{folder}: {len(labels)} labels but {len(crops)} readable images")
    keep = np.abs(labels).max(axis=1) <= 99.0
    meta = backend.metadata
    preds = []
    for start in range(0, len(crops), batch):
        tensors = preprocess_crops(
            crops[start : start + batch], int(meta.input_size), meta.mean, meta.std
        )
        preds.append(backend.infer(tensors).angles)
    errors = np.abs(np.concatenate(preds) - labels)[keep]
    return errors.mean(axis=0), int(keep.sum())


def non_network_section(all_rows: dict[str, list], detect_every: int) -> tuple[list[str], dict]:
    """Everything except the network (one face, fp32 ONNX Runtime) as a share of the network
    time of ResNet-50 and of the default model, from the rows of this run."""

    def one_face(title: str, backend: str = "onnxruntime"):
        for b, n, stats in all_rows.get(title, []):
            if b == backend and n == 1:
                return stats
        return None

    def other_ms(stats: StageStats) -> float:
        others = [s for s in STAGE_COLUMNS if s != "network"]
        if detect_every > 1:
            return sum(float(np.mean(stats.samples.get(s) or [0.0])) for s in others)
        return sum(stats.p(s, 50) for s in others)

    lines, ratios = [], {}
    targets = {"resnet50": 0.10, "default": 0.50, "mobilenet_v2": 0.50}
    for title in all_rows:
        stats = one_face(title)
        key = title.split(" ")[0]
        if stats is None or key not in targets or stats.p("network", 50) <= 0:
            continue
        other, net = other_ms(stats), stats.p("network", 50)
        ratios[f"non_network_share_{key}"] = other / net
        target = targets[key]
        verdict = "meets" if other / net <= target else "misses"
        detail = ", ".join(f"{s} {stats.p(s, 50):.2f}" for s in STAGE_COLUMNS if s != "network")
        lines.append(
            f"- {title}: everything except the network {other:.2f} ms ({detail}) / network "
            f"{net:.2f} ms = **{100 * other / net:.0f}%** (target <= {100 * target:.0f}%: {verdict})"
        )
    return lines, ratios


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
    from lechpe_model.detection import DEFAULT_DETECTOR

    parser = argparse.ArgumentParser(prog="lechpe-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help=".safetensors checkpoint to time")
    parser.add_argument(
        "--arch",
        default="resnet50,mobilenet_v2",
        help="without --model: random-weight models of these backbones (comma list); "
        "'default' is the shipped default model",
    )
    parser.add_argument(
        "--int8-calibration",
        type=Path,
        help="also time ONNX Runtime INT8 (row onnxruntime-int8), calibrated on this folder "
        "(lechpe-synth images, face crops) or .npy",
    )
    parser.add_argument(
        "--int8-eval",
        type=Path,
        help="lechpe-synth images folder: report the MAE of fp32 and INT8 ONNX Runtime on it "
        "(trained models: --model or --arch default)",
    )
    parser.add_argument("--backends", help="comma list (default: every available backend)")
    parser.add_argument("--batch-sizes", default="1,4,16", help="faces per frame (comma list)")
    parser.add_argument("--repeats", type=int, default=20, help="timed frames per row")
    parser.add_argument("--warmup", type=int, default=3, help="untimed frames per row")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads")
    # The node's default detector, so the non-network share is what a robot pays. BlazeFace
    # full range finds 12 of the 16 small heads of the 16-face frame (a warning says so);
    # --detector yuface finds all 16.
    parser.add_argument(
        "--detector",
        default=DEFAULT_DETECTOR,
        help=f"face detector (default {DEFAULT_DETECTOR}, the node's; yuface, auto, haar, ...)",
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
            if arch == "default":
                from lechpe_model.default_model import default_model_path

                models.append(("default (shipped MobileNetV2 model)", default_model_path()))
                continue
            print(f"lechpe-bench: building random-weight {arch} ...", file=sys.stderr)
            models.append(
                (
                    f"{arch} (random weights)",
                    random_checkpoint(Path(tmp.name) / f"{arch}.safetensors", arch),
                )
            )

    sections, all_ratios, all_rows, maes = [], {}, {}, {}
    for title, path in models:
        rows = []
        names = list(backends)
        if args.int8_calibration and "onnxruntime" in names:
            names.insert(names.index("onnxruntime") + 1, INT8_ROW)
        for name in names:
            options = {}
            if name == INT8_ROW:
                options = {"onnx_precision": "int8", "calibration_dir": args.int8_calibration}
            try:
                backend = create_backend(
                    "onnxruntime" if name == INT8_ROW else name,
                    path,
                    device="auto",
                    intra_op_threads=args.threads,
                    cache_dir=tmp.name,
                    **options,
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
            # Random weights have no accuracy to lose: evaluate trained models only.
            trained = "(random weights)" not in title
            if args.int8_eval and trained and name in ("onnxruntime", INT8_ROW):
                mae, count = pose_mae(backend, args.int8_eval)
                maes[(title, name)] = (mae, count)
            backend.close()
        text, ratios = format_model_section(title, rows, args.detect_every)
        int8_lines, int8_ratios = int8_section(title, rows)
        ratios.update(int8_ratios)
        if args.int8_calibration and "onnxruntime" in backends:
            pair = [
                create_backend(
                    "onnxruntime",
                    path,
                    device="auto",
                    intra_op_threads=args.threads,
                    cache_dir=tmp.name,
                    **extra,
                )
                for extra in (
                    {},
                    {"onnx_precision": "int8", "calibration_dir": args.int8_calibration},
                )
            ]
            size = int(pair[0].metadata.input_size)
            for n in batch_sizes:
                batch = np.random.default_rng(0).standard_normal((n, 3, size, size))
                (fp32_ms, int8_ms), (_, ratio) = interleaved_network_ms(
                    pair, batch.astype(np.float32), args.repeats
                )
                ratios[f"int8_interleaved_speedup_{n}"] = ratio
                verdict = "meets" if ratio >= 2.0 else "misses"
                int8_lines.append(
                    f"- {title}: fp32 and INT8 network run in turn ({args.repeats} rounds, batch "
                    f"{n}): p50 {fp32_ms:.2f} / {int8_ms:.2f} ms, median per-round ratio "
                    f"**{ratio:.2f}x** (target >= 2x: {verdict})"
                )
            for backend in pair:
                backend.close()
        if (title, "onnxruntime") in maes and (title, INT8_ROW) in maes:
            (m32, count), (m8, _) = maes[(title, "onnxruntime")], maes[(title, INT8_ROW)]
            change = float(m8.mean() - m32.mean())
            ratios["int8_mae_change"] = change
            verdict = "meets" if abs(change) <= 0.3 else "misses"
            int8_lines.append(
                f"- {title}: MAE on {count} faces of `{args.int8_eval}` (yaw, pitch, roll; mean): "
                f"fp32 {', '.join(f'{v:.2f}' for v in m32)}; {m32.mean():.2f} deg, INT8 "
                f"{', '.join(f'{v:.2f}' for v in m8)}; {m8.mean():.2f} deg: change "
                f"**{change:+.2f} deg** (target <= 0.3: {verdict})"
            )
        if int8_lines:
            text += "\n" + "\n".join(int8_lines) + "\n"
        sections.append(text)
        all_ratios[title] = ratios
        all_rows[title] = rows
    tmp.cleanup()
    share_lines, _ = non_network_section(all_rows, args.detect_every)
    if share_lines:
        how = "every frame" if args.detect_every == 1 else f"1 frame in {args.detect_every}"
        sections.append(
            "#### Non-network share\n\n"
            f"One face per frame, ONNX Runtime fp32, detector `{detector.name}` (the "
            f"`lechpe_model.detection` default unless --detector) on {how}:\n\n"
            + "\n".join(share_lines)
            + "\n"
        )
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
