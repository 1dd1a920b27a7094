"""Face-detector benchmark on rendered full frames (``lechpe-detbench``).

Frames (640x480 and 1280x720 by default) are rendered with lechpe-synth
(``training.synth``): 1-3 people, faces 40-300 px wide, half of the face frames
with one occluder per face (every type of ``training.occlusion``, 0-60 % of the
face box covered), plus face-free frames (texture and photo backgrounds, and
heads seen from behind). Every detector configuration runs on the same frames.

A detection *finds* a face when the pose network's crop made from it (the
detector's calibrated ``expand_box(box, crop_margin, shift_y=crop_shift_y)``)
overlaps the training crop of that face (``expand_box(68-landmark box,
TEST_MARGIN)``) with IoU >= ``MATCH_IOU``; one detection finds at most one face
(greedy, best IoU first). Reported: recall by occluder type, coverage bin and
face-size bin, false faces per face-free frame and the share of face-free
frames with any, mean crop IoU of the found faces, and the median detection
time per frame (ms, this process, one thread). A PNG plots recall per occluder
type and per face size.

``--tracking`` measures tracking through occlusion instead: rendered sequences
where an occluder moves across a moving head (frames answered and angle MAE,
tracker on and off).

    python -m training.detector_bench --output docs/BENCHMARKS.md --plot out/detbench.png
    python -m training.detector_bench --quick
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from lechpe_model import preprocessing as pp
from lechpe_model.detection import create_detector
from training.occlusion import PROCEDURAL_TYPES, occlude_face
from training.synth.renderer import build_head_model, composite, render_head
from training.synth.scene import (
    SceneConfig,
    identity_appearance,
    random_appearance,
    random_background,
)

#: crop IoU at which a detection counts as finding a face
MATCH_IOU = 0.4
COVERAGE_BINS = ((0.0, 0.2), (0.2, 0.35), (0.35, 0.5), (0.5, 0.61))
#: face-size bins (width of the 68-landmark box, px; narrower than the 40-300 px
#: temple-to-temple width the heads are placed with when they turn)
SIZE_BINS = ((0, 70), (70, 120), (120, 200), (200, 100000))


def size_label(lo: int, hi: int) -> str:
    return f"< {hi} px" if lo == 0 else (f">= {lo} px" if hi >= 100000 else f"{lo}-{hi} px")


SECTION_START = "<!-- lechpe-detbench:start -->"
SECTION_END = "<!-- lechpe-detbench:end -->"
TRACK_START = "<!-- lechpe-detbench-tracking:start -->"
TRACK_END = "<!-- lechpe-detbench-tracking:end -->"
#: (label, create_detector name, options)
DEFAULT_CONFIGS = (
    ("yuface 0.5", "yuface", {"score_threshold": 0.5}),
    ("yuface 0.3", "yuface", {"score_threshold": 0.3}),
    ("haar", "haar", {}),
    ("blazeface 0.5", "blazeface", {"score_threshold": 0.5}),
    ("blazeface 0.3", "blazeface", {"score_threshold": 0.3}),
    ("blazeface_full 0.5", "blazeface_full", {"score_threshold": 0.5}),
    ("blazeface_full 0.4", "blazeface_full", {"score_threshold": 0.4}),
    ("blazeface_full 0.3", "blazeface_full", {"score_threshold": 0.3}),
    ("blazeface_full+yuface 0.5", "blazeface_full+yuface", {"score_threshold": 0.5}),
    ("blazeface_full+blazeface 0.5", "blazeface_full+blazeface", {"score_threshold": 0.5}),
    ("blazeface_occluded 0.5", "blazeface_occluded", {"score_threshold": 0.5}),
    (
        "blazeface_full+blazeface_occluded 0.5",
        "blazeface_full+blazeface_occluded",
        {"score_threshold": 0.5},
    ),
    ("blazeface_occluded 0.4", "blazeface_occluded", {"score_threshold": 0.4}),
    ("blazeface_occluded 0.3", "blazeface_occluded", {"score_threshold": 0.3}),
)
#: ``--identities``: lechpe-synth identity ranges (the pose network's split)
IDENTITY_SETS = {"train": range(0, 800), "val": range(800, 900), "test": range(900, 1000)}


@dataclass
class TrueFace:
    crop: np.ndarray  #: training crop box (x1, y1, x2, y2)
    width_px: float  #: 68-landmark box width
    occluder: str  #: "none" or the occluder type
    coverage: float
    landmarks: np.ndarray | None = None  #: (68, 2) pixels
    yaw: float = 0.0  #: degrees (camera frame)


@dataclass
class Frame:
    image: np.ndarray  #: BGR
    faces: list[TrueFace] = field(default_factory=list)
    kind: str = "faces"  #: faces | texture | photo | back of head
    clean: np.ndarray | None = None  #: BGR before the occluders (occluded frames)


def match_crops(crops, truths, min_iou: float = MATCH_IOU) -> dict[int, tuple[float, int]]:
    """Greedy one-to-one matching, best IoU first: ``{truth index: (IoU, crop index)}``
    for the pairs with IoU >= ``min_iou``."""
    pairs = sorted(
        ((pp.box_iou(c, t), i, j) for i, c in enumerate(crops) for j, t in enumerate(truths)),
        reverse=True,
    )
    used, matched = set(), {}
    for value, i, j in pairs:
        if value < min_iou or i in used or j in matched:
            continue
        used.add(i)
        matched[j] = (value, i)
    return matched


def _place_heads(rng, camera, count: int, face_cm: float) -> list[tuple[float, np.ndarray]]:
    """Non-overlapping head positions: (face width px, t cm), far first."""
    placed: list[tuple[float, float, float]] = []
    out = []
    max_px = min(300.0, 0.55 * camera.height)
    for _ in range(count):
        for _attempt in range(30):
            width_px = float(math.exp(rng.uniform(math.log(40), math.log(max_px))))
            u = rng.uniform(0.6 * width_px, camera.width - 0.6 * width_px)
            v = rng.uniform(0.8 * width_px, camera.height - 0.8 * width_px)
            if all(abs(u - pu) > 0.65 * (width_px + pw) for pu, _, pw in placed):
                break
        else:
            continue
        placed.append((u, v, width_px))
        depth = camera.fx * face_cm / width_px
        t = np.array(
            [(u - camera.cx) * depth / camera.fx, (v - camera.cy) * depth / camera.fy, depth]
        )
        out.append((width_px, t))
    return sorted(out, key=lambda item: -item[1][2])


def _head(rng, identities, config):
    """``render_head`` appearance and keyword arguments of one person.

    Without ``identities``: the astronaut-photo variations of
    :func:`random_appearance` (the benchmark's original faces); with them: one of
    these lechpe-synth identities, with its face shape, texture, an expression
    and several lights.
    """
    if identities is None:
        appearance, _ = random_appearance(rng)
        return appearance, {}
    identity = int(identities[int(rng.integers(len(identities)))])
    ident, _, face, _, appearance = identity_appearance(rng, config, identity)
    return appearance, {"shape_scale": ident.shape_scale, "face_vertices": face}


def render_frame(
    rng: np.random.Generator,
    width: int,
    height: int,
    people: int,
    occluded: bool,
    model,
    identities=None,
) -> Frame:
    """One frame with ``people`` heads (0: a face-free frame, maybe heads from behind).

    ``identities``: draw each person from these lechpe-synth identity ids instead of
    the astronaut-photo variations (see :func:`_head`).
    """
    from training.synth.renderer import Camera

    config = SceneConfig()
    if identities is not None:  # identity heads have ears (their head colours include them)
        model = build_head_model(config.head, ears=True)
    camera = Camera.from_fov(width, height, 60.0)
    image = random_background(rng, width, height)
    frame = Frame(image=image)
    if people == 0:
        kind = ("texture", "photo", "back of head")[int(rng.integers(3))]
        frame.kind = kind
        if kind == "photo":  # random_background draws photos most often; force one
            for _ in range(10):
                candidate = random_background(rng, width, height)
                if candidate.std() > 40:
                    frame.image = candidate
                    break
        if kind == "back of head":
            for _width_px, t in _place_heads(rng, camera, int(rng.integers(1, 4)), 14.0):
                appearance, extra = _head(rng, identities, config)
                yaw = float(rng.uniform(150, 210)) * (1 if rng.random() < 0.5 else -1)
                result = render_head(
                    model, appearance, yaw, rng.normal(0, 10), 0.0, t, camera, **extra
                )
                frame.image = composite(result, frame.image)
        frame.image = cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR)
        return frame
    rendered = []
    for _width_px, t in _place_heads(rng, camera, people, model.face.width_cm):
        appearance, extra = _head(rng, identities, config)
        yaw, pitch, roll = rng.uniform(-60, 60), rng.normal(0, 12), rng.normal(0, 8)
        result = render_head(model, appearance, yaw, pitch, roll, t, camera, **extra)
        image = composite(result, image)
        rendered.append((result, float(yaw)))
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if occluded:
        frame.clean = bgr.copy()
    for result, yaw in rendered:
        lm_box = pp.box_from_landmarks(result.landmarks)
        occluder, coverage = "none", 0.0
        if occluded:
            bgr, info = occlude_face(bgr, lm_box, rng, coverage=(0.0, 0.6), types=PROCEDURAL_TYPES)
            occluder, coverage = info.occluder, info.coverage
        frame.faces.append(
            TrueFace(
                crop=pp.expand_box(lm_box, pp.TEST_MARGIN),
                width_px=float(lm_box[2] - lm_box[0]),
                occluder=occluder,
                coverage=float(coverage),
                landmarks=np.asarray(result.landmarks, np.float32)[:, :2],
                yaw=yaw,
            )
        )
    # faces that are more than half hidden by a nearer head are not counted
    frame.faces = [f for f in frame.faces if f.width_px >= 20]
    frame.image = bgr
    return frame


def render_frames(
    sizes, face_frames: int, free_frames: int, seed: int, identities=None
) -> list[Frame]:
    from tqdm import tqdm

    model = build_head_model(True)
    frames = []
    jobs = [(w, h, i, i < face_frames) for w, h in sizes for i in range(face_frames + free_frames)]
    for w, h, i, with_faces in tqdm(jobs, desc="rendering frames", unit="frame"):
        rng = np.random.default_rng([seed, w, h, i])
        people = int(rng.integers(1, 4)) if with_faces else 0
        frames.append(
            render_frame(
                rng, w, h, people, occluded=bool(i % 2), model=model, identities=identities
            )
        )
    return frames


def evaluate(detector, frames: list[Frame]) -> dict:
    """Detect on every frame; match detections to faces; aggregate."""
    ious: list[float] = []
    times: list[float] = []
    cpu_times: list[float] = []  # CPU time of this thread: less inflated by a busy machine
    false_counts: list[int] = []
    margins: list[float] = []
    shifts: list[float] = []
    records = []
    for frame in frames:
        start, cpu_start = time.perf_counter(), time.thread_time()
        detections = detector.detect(frame.image)
        times.append((time.perf_counter() - start) * 1e3)
        cpu_times.append((time.thread_time() - cpu_start) * 1e3)
        crops = [
            pp.expand_box(d.box, detector.crop_margin, shift_y=detector.crop_shift_y)
            for d in detections
        ]
        if frame.kind != "faces":
            false_counts.append(len(detections))
            continue
        matched = match_crops(crops, [face.crop for face in frame.faces])
        for j, face in enumerate(frame.faces):
            hit = j in matched
            if hit:
                ious.append(matched[j][0])
                box = detections[matched[j][1]].box
                side = max(box[2] - box[0], box[3] - box[1])
                true_side = face.crop[2] - face.crop[0]
                margins.append((true_side / side - 1.0) / 2.0)
                shifts.append(
                    ((face.crop[1] + face.crop[3]) - (box[1] + box[3])) / 2.0 / (box[3] - box[1])
                )
            records.append((face, hit))

    def recall(selected) -> tuple[float, int]:
        hits = [hit for face, hit in records if selected(face)]
        return (100.0 * sum(hits) / len(hits) if hits else float("nan"), len(hits))

    result = {
        "clean": recall(lambda f: f.occluder == "none"),
        "occluded 20-50 %": recall(lambda f: f.occluder != "none" and 0.2 <= f.coverage <= 0.5),
        "occluded all": recall(lambda f: f.occluder != "none"),
        "by occluder": {k: recall(lambda f, k=k: f.occluder == k) for k in PROCEDURAL_TYPES},
        "by coverage": {
            f"{lo:.0%}-{min(hi, 0.6):.0%}": recall(
                lambda f, lo=lo, hi=hi: f.occluder != "none" and lo <= f.coverage < hi
            )
            for lo, hi in COVERAGE_BINS
        },
        "by size": {
            size_label(lo, hi): recall(lambda f, lo=lo, hi=hi: lo <= f.width_px < hi)
            for lo, hi in SIZE_BINS
        },
        "false per free frame": float(np.mean(false_counts)) if false_counts else float("nan"),
        "free frames with a false face %": 100.0 * float(np.mean([c > 0 for c in false_counts]))
        if false_counts
        else float("nan"),
        "mean crop IoU": float(np.mean(ious)) if ious else float("nan"),
        "ms median": statistics.median(times),
        "cpu ms median": statistics.median(cpu_times),
        # the crop margin / centre shift that would make the found faces' crops
        # match the training crops (median over found faces)
        "fitted crop": (
            float(np.median(margins)) if margins else float("nan"),
            float(np.median(shifts)) if shifts else float("nan"),
        ),
    }
    return result


def run(configs, frames_by_size: dict[str, list[Frame]]) -> dict:
    results = {}
    for label, name, options in configs:
        try:
            detector = create_detector(name, **options)
        except Exception as exc:  # a detector not installed here is reported, not fatal
            print(f"skipping {label}: {exc}", file=sys.stderr)
            continue
        results[label] = {
            size: evaluate(detector, frames) for size, frames in frames_by_size.items()
        }
    return results


def _pct(value) -> str:
    number = value[0] if isinstance(value, tuple) else value
    return "–" if number != number else f"{number:.0f}"


def markdown(results: dict, command: str, counts: dict) -> str:
    sizes = list(next(iter(results.values())).keys()) if results else []
    lines = [
        SECTION_START,
        "",
        f"Command: `{command}`",
        "",
        "Faces per size: "
        + ", ".join(
            f"{size}: {n['faces']} faces ({n['occluded']} occluded), {n['free']} face-free frames"
            for size, n in counts.items()
        )
        + ". Recall in % (found / faces); `false/frame` = false faces per face-free frame; "
        "`free %` = face-free frames with any false face; IoU = mean crop IoU of found faces; "
        "ms = median wall time of one detection per frame, CPU ms = median CPU time of the "
        "detecting thread (one thread; closer to the time on an idle core when the shared "
        "2-core machine is busy).",
        "",
    ]
    for size in sizes:
        lines += [
            f"**{size}**",
            "",
            "| detector | clean | occl. 20-50 % | occl. all | "
            + " | ".join(PROCEDURAL_TYPES)
            + " | "
            + " | ".join(size_label(lo, hi) for lo, hi in SIZE_BINS)
            + " | false/frame | free % | IoU | ms | CPU ms |",
            "|---" * (9 + len(PROCEDURAL_TYPES) + len(SIZE_BINS)) + "|",
        ]
        for label, by_size in results.items():
            r = by_size[size]
            lines.append(
                f"| {label} | {_pct(r['clean'])} | {_pct(r['occluded 20-50 %'])} | "
                f"{_pct(r['occluded all'])} | "
                + " | ".join(_pct(r["by occluder"][k]) for k in PROCEDURAL_TYPES)
                + " | "
                + " | ".join(_pct(v) for v in r["by size"].values())
                + f" | {r['false per free frame']:.2f} | {r['free frames with a false face %']:.0f} | "
                f"{r['mean crop IoU']:.2f} | {r['ms median']:.1f} | {r['cpu ms median']:.1f} |"
            )
        lines.append("")
        cov_keys = list(next(iter(results.values()))[size]["by coverage"].keys())
        lines += [
            f"Recall (%) of occluded faces by coverage of the face box, {size}:",
            "",
            "| detector | " + " | ".join(cov_keys) + " | crop margin / shift fitted |",
            "|---" * (2 + len(cov_keys)) + "|",
        ]
        for label, by_size in results.items():
            fit = by_size[size]["fitted crop"]
            lines.append(
                f"| {label} | "
                + " | ".join(_pct(v) for v in by_size[size]["by coverage"].values())
                + f" | {fit[0]:.2f} / {fit[1]:.2f} |"
            )
        lines.append("")
    lines.append(SECTION_END)
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if SECTION_START in text and SECTION_END in text:
        head, rest = text.split(SECTION_START, 1)
        tail = rest.split(SECTION_END, 1)[1]
        text = head + section + tail
    else:
        text = text.rstrip() + "\n\n## Face detectors (`lechpe-detbench`)\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(next(iter(results.values())).keys())
    fig, axes = plt.subplots(len(sizes), 2, figsize=(14, 4.2 * len(sizes)), squeeze=False)
    for row, size in enumerate(sizes):
        for col, (key, labels) in enumerate(
            (("by occluder", ["none"] + list(PROCEDURAL_TYPES)), ("by size", None))
        ):
            ax = axes[row][col]
            groups = labels or list(next(iter(results.values()))[size][key].keys())
            width = 0.8 / max(len(results), 1)
            colours = plt.get_cmap("tab20").colors  # one colour per configuration (up to 20)
            for k, (label, by_size) in enumerate(results.items()):
                r = by_size[size]
                values = [r["clean"][0] if g == "none" else r[key][g][0] for g in groups]
                ax.bar(
                    np.arange(len(groups)) + k * width,
                    values,
                    width,
                    label=label,
                    color=colours[k % len(colours)],
                )
            ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, groups)
            ax.set_ylim(0, 100)
            ax.set_ylabel("recall %")
            ax.set_title(f"{size}: recall {key.replace('by ', 'by ')}")
            ax.axhline(95, color="k", lw=0.5, ls="--")
    axes[0][0].legend(fontsize=7, ncol=2, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ------------------------------------------------------------------ tracking mode
#: occluders that move across the head in the tracking sequences (drawn per frame)
MOVING_OCCLUDERS = ("hand", "object")


def occluder_path_frame(
    image: np.ndarray, face_box: np.ndarray, progress: float, kind: str, colour
) -> np.ndarray:
    """Draw an occluder at ``progress`` (0..1) of its path across the face, left to right.

    The occluder (an ellipse for a hand, a rectangle for an object) is 0.9 x the
    face box and moves from fully left of the face to fully right of it, so in the
    middle of its path it covers most of the face.
    """
    x1, y1, x2, y2 = (float(v) for v in face_box)
    w, h = x2 - x1, y2 - y1
    cx = x1 - 0.5 * w + progress * 2.0 * w
    cy = (y1 + y2) / 2.0 + 0.1 * h
    out = image.copy()
    half_w, half_h = 0.45 * w, 0.45 * h
    if kind == "hand":
        cv2.ellipse(out, (int(cx), int(cy)), (int(half_w), int(half_h)), 20.0, 0, 360, colour, -1)
    else:
        cv2.rectangle(
            out,
            (int(cx - half_w), int(cy - half_h)),
            (int(cx + half_w), int(cy + half_h)),
            colour,
            -1,
        )
    return out


def render_occluded_sequence(seed: int, frames: int, width: int = 640, height: int = 480):
    """A moving head (training.synth.sequence motion) with an occluder crossing it.

    Returns BGR frames, true angles ``(N, 3)``, true face boxes ``(N, 4)`` and a
    per-frame flag of whether the occluder overlaps the face.
    """
    from training.synth.sequence import SequenceConfig, motion

    config = SequenceConfig(frames=frames, width=width, height=height)
    camera = config.camera()
    model = build_head_model(config.head)
    rng = np.random.default_rng([int(seed), 0])
    appearance, _ = random_appearance(rng)
    background = random_background(rng, width, height)
    angles, positions = motion(config, seed)
    kind = MOVING_OCCLUDERS[seed % len(MOVING_OCCLUDERS)]
    colour = (
        tuple(int(v) for v in rng.choice([(120, 160, 210), (90, 130, 180), (60, 90, 140)]))
        if kind == "hand"
        else tuple(int(v) for v in rng.integers(0, 256, 3))
    )
    start, end = int(0.25 * frames), int(0.75 * frames)
    images, boxes, occluded = [], [], []
    for i in range(frames):
        result = render_head(model, appearance, *angles[i], positions[i], camera)
        bgr = cv2.cvtColor(composite(result, background), cv2.COLOR_RGB2BGR)
        progress = (i - start) / max(end - start, 1)
        if 0.0 <= progress <= 1.0:
            bgr = occluder_path_frame(bgr, result.face_box, progress, kind, colour)
        images.append(bgr)
        boxes.append(np.asarray(result.face_box, np.float32))
        occluded.append(0.2 <= progress <= 0.8)
    return images, angles, np.stack(boxes), np.array(occluded)


def tracking_run(estimator, images, angles, boxes) -> dict:
    """Frames answered (a reported face whose box centre lies in the true face box) and MAE."""
    answered, errors, tracked, times = [], [], 0, []
    for image, truth, box in zip(images, angles, boxes, strict=True):
        result = estimator.estimate(image, stream="seq")
        times.append(result.timings_ms.get("detect", 0.0))  # detection + tracking
        hit = None
        for face in result.faces:
            cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
            if box[0] <= cx <= box[2] and box[1] <= cy <= box[3]:
                hit = face
                break
        answered.append(hit is not None)
        if hit is not None:
            errors.append(np.abs(hit.angles - truth))
            tracked += int(hit.tracked)
    return {
        "answered": np.array(answered),
        "errors": np.array(errors).reshape(-1, 3),
        "tracked": tracked,
        "detect_ms": times,
    }


def tracking_main(args) -> int:
    from tqdm import tqdm

    from lechpe_model.backends import create_backend
    from lechpe_model.default_model import default_model_path
    from lechpe_model.pipeline import PoseEstimator

    if args.quick:
        args.sequences, args.frames = 1, 16
    model = args.model or default_model_path()
    backend = create_backend("onnxruntime", model, device="cpu")
    detector = create_detector(args.detector or None)
    settings = {
        "tracker off (track_max_misses 0)": 0,
        f"tracker on (track_max_misses {args.max_misses})": args.max_misses,
    }
    totals = {
        label: {"answered": [], "occluded": [], "errors": [], "occ_errors": [], "ms": []}
        for label in settings
    }
    for seq in tqdm(range(args.sequences), desc="tracking sequences", unit="seq"):
        images, angles, boxes, occluded = render_occluded_sequence(
            args.seed * 1000 + seq, args.frames
        )
        for label, misses in settings.items():
            estimator = PoseEstimator(detector, backend, track_max_misses=misses)
            run_result = tracking_run(estimator, images, angles, boxes)
            t = totals[label]
            t["answered"].extend(run_result["answered"].tolist())
            t["occluded"].extend(occluded.tolist())
            t["errors"].extend(run_result["errors"].tolist())
            # errors of the answered frames that are occluded
            occ_idx = np.flatnonzero(occluded & run_result["answered"])
            answered_idx = np.flatnonzero(run_result["answered"])
            position = {k: n for n, k in enumerate(answered_idx)}
            t["occ_errors"].extend(run_result["errors"][[position[k] for k in occ_idx]].tolist())
            t["ms"].extend(run_result["detect_ms"])
    lines = [
        TRACK_START,
        "",
        f"Command: `python -m training.detector_bench {' '.join(sys.argv[1:])}`".strip(),
        "",
        f"{args.sequences} rendered sequences x {args.frames} frames (640x480, 30 fps, head "
        "motion of training.synth.sequence), an occluder (skin-coloured ellipse = hand, or a "
        "rectangle = object, 0.9 x the face box) crossing the face from frame 25 % to 75 %; "
        f"detector {detector.name}, default model, ONNX Runtime CPU. A frame is answered when "
        "a reported face's box centre lies in the true face box. MAE: mean absolute angle "
        "error (yaw, pitch, roll averaged) of the answered frames.",
        "",
        "| tracker | frames answered | occluded frames answered | MAE (deg) | MAE occluded frames (deg) | detect + track ms (median) |",
        "|---|---|---|---|---|---|",
    ]
    summary = {}
    for label, t in totals.items():
        answered = np.array(t["answered"], bool)
        occ = np.array(t["occluded"], bool)
        errors = np.array(t["errors"]).reshape(-1, 3)
        occ_errors = np.array(t["occ_errors"]).reshape(-1, 3)
        row = {
            "answered %": 100.0 * answered.mean(),
            "occluded answered %": 100.0 * answered[occ].mean() if occ.any() else float("nan"),
            "MAE": float(errors.mean()) if errors.size else float("nan"),
            "MAE occluded": float(occ_errors.mean()) if occ_errors.size else float("nan"),
            "ms": statistics.median(t["ms"]),
        }
        summary[label] = row
        lines.append(
            f"| {label} | {row['answered %']:.1f} % | {row['occluded answered %']:.1f} % | "
            f"{row['MAE']:.1f} | {row['MAE occluded']:.1f} | {row['ms']:.1f} |"
        )
    lines += ["", TRACK_END]
    section = "\n".join(lines)
    print(section)
    if args.output:
        text = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if TRACK_START in text and TRACK_END in text:
            head, rest = text.split(TRACK_START, 1)
            text = head + section + rest.split(TRACK_END, 1)[1]
        else:
            text = (
                text.rstrip()
                + "\n\n## Tracking through occlusion (`lechpe-detbench --tracking`)\n\n"
                + section
                + "\n"
            )
        args.output.write_text(text, encoding="utf-8")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lechpe-detbench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes", default="640x480,1280x720", help="frame sizes WxH, comma-separated"
    )
    parser.add_argument("--face-frames", type=int, default=80, help="frames with faces per size")
    parser.add_argument("--free-frames", type=int, default=60, help="face-free frames per size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--identities",
        choices=sorted(IDENTITY_SETS),
        help="people drawn from these lechpe-synth identities (test: 900-999, never trained "
        "on by the pose network or blazeface_occluded) instead of the astronaut-photo faces",
    )
    parser.add_argument(
        "--detectors",
        help="comma-separated labels of the default configurations to run (default: all)",
    )
    parser.add_argument(
        "--output", type=Path, help="markdown file whose detbench section to rewrite"
    )
    parser.add_argument("--json", type=Path, help="write all numbers as JSON")
    parser.add_argument("--plot", type=Path, help="PNG of recall per occluder type and face size")
    parser.add_argument("--quick", action="store_true", help="tiny run (tests)")
    parser.add_argument("--tracking", action="store_true", help="tracking-through-occlusion mode")
    parser.add_argument("--model", type=Path, help="pose model for --tracking (default: embedded)")
    parser.add_argument("--sequences", type=int, default=6, help="--tracking: sequences")
    parser.add_argument("--frames", type=int, default=60, help="--tracking: frames per sequence")
    parser.add_argument(
        "--max-misses", type=int, default=15, help="--tracking: track_max_misses (node default)"
    )
    parser.add_argument("--detector", help="--tracking: detector name (default: the default)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.tracking:
        return tracking_main(args)
    if args.quick:
        args.sizes, args.face_frames, args.free_frames = "320x240", 4, 3
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")]
    configs = DEFAULT_CONFIGS
    if args.detectors:
        wanted = [w.strip() for w in args.detectors.split(",")]
        unknown = [w for w in wanted if w not in {c[0] for c in DEFAULT_CONFIGS}]
        if unknown:
            print(
                f"unknown detector configuration(s) {unknown}; choose from "
                f"{[c[0] for c in DEFAULT_CONFIGS]}",
                file=sys.stderr,
            )
            return 2
        configs = [c for c in DEFAULT_CONFIGS if c[0] in wanted]
    frames_by_size = {}
    counts = {}
    for w, h in sizes:
        identities = IDENTITY_SETS[args.identities] if args.identities else None
        frames = render_frames(
            [(w, h)], args.face_frames, args.free_frames, args.seed, identities=identities
        )
        key = f"{w}x{h}"
        frames_by_size[key] = frames
        faces = [f for fr in frames for f in fr.faces]
        counts[key] = {
            "faces": len(faces),
            "occluded": sum(f.occluder != "none" for f in faces),
            "free": sum(fr.kind != "faces" for fr in frames),
        }
    results = run(configs, frames_by_size)
    command = "python -m training.detector_bench " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    section = markdown(results, command.strip(), counts)
    print(section)
    if args.output:
        write_section(args.output, section)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"counts": counts, "results": results}, indent=1, default=list)
        )
    if args.plot and results:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
