"""Fine-tune BlazeFace full range on lechpe-synth's occluded scenes (``lechpe-train-detector``).

Why: the shipped BlazeFace full range finds 71 % of clean and 40 % of occluded
rendered faces (docs/BENCHMARKS.md, detector benchmark). It was trained on
unoccluded photos; LEC-HPE is for faces behind hands, masks and sunglasses.

What: full frames rendered like the detector benchmark's
(:func:`training.detector_bench.render_frame`: 1-3 people, faces 40-300 px,
half of the face frames with one occluder per face, every occluder type, 0-60 %
of the face box; ``--free-fraction`` of the frames (default a quarter)
face-free: textures, photos, heads from behind), but with the people drawn from lechpe-synth *identities* (training ids
0-799 by default; the benchmark can be run on held-out ids 900-999).

Targets, per face, in the detector's 192 x 192 letterboxed input:

* box: the square whose deployed crop (``expand_box(box, 0.15, shift_y=0.11)``,
  the constants :class:`~lechpe_model.detection.BlazeFaceDetector` uses for
  ``blazeface_full``) is exactly the pose network's training crop
  (``expand_box(68-landmark box, 0.25)``); the detector is taught to give the
  crop the network was trained on;
* keypoints (BlazeFace's six): the eye centres, nose tip (landmark 30), mouth
  centre (62/66) and the jaw's top points (0/16) for the ear tragions;
* anchors (one per 4 px cell): positive within ``POSITIVE_RADIUS`` of the
  crop side from the box centre (at least the nearest anchor, as BlazeFace
  fires on 1-4 anchors near a face's centre), ignored in a wider zone and on
  faces under ``MIN_FACE_PX``, negative elsewhere.

Loss: sigmoid focal loss on the scores (normalised by the positives) plus
smooth L1 on box and keypoints in units of the box side. Starts from the
shipped weights (:class:`training.blazeface_torch.OnnxBlazeFace`); the result is
the same ONNX graph with new weights (:func:`~training.blazeface_torch.write_onnx_weights`).

    python -m training.detector_train --out runs/detector --frames 6000 --steps 3000
    python -m training.detector_train --out /tmp/det --frames 64 --steps 4 --device cpu   # smoke
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lechpe_model import preprocessing as pp
from lechpe_model.detection.blazeface import (
    ASSETS,
    BLAZEFACE_CROP,
    BLAZEFACE_MODELS,
    letterbox,
    ssd_anchor_centres,
)
from lechpe_model.detection.combined import box_from_crop
from training.detector_bench import Frame, match_crops, render_frame
from training.detector_boxes import DetectorBoxSampler

VARIANT = "blazeface_full"
INPUT = BLAZEFACE_MODELS[VARIANT][1]
#: positive anchors: within this fraction of the crop side of the box centre (x and y)
POSITIVE_RADIUS = 0.08
#: anchors closer than this (fraction of the crop side) but not positive are ignored
IGNORE_RADIUS = 0.3
#: faces narrower than this (68-landmark box, input px) are neither positive nor negative
MIN_FACE_PX = 5.0
DEFAULT_BOX_STATS = (
    Path(__file__).resolve().parent.parent / "docs/results/blazeface_full_box_stats_val.json"
)
TRAIN_IDENTITIES = range(0, 800)
VAL_IDENTITIES = range(800, 900)
#: BlazeFace keypoint order (the person's right/left) as 68-landmark index groups
KEYPOINT_LANDMARKS = (
    tuple(range(36, 42)),  # right eye
    tuple(range(42, 48)),  # left eye
    (30,),  # nose tip
    (62, 66),  # mouth centre
    (0,),  # right ear tragion (top of the jaw line)
    (16,),  # left ear tragion
)
#: frames are kept with this longest side (the 192 px input of a 40 % zoom needs ~480)
STORED_SIDE = 480


def target_box(landmarks: np.ndarray) -> np.ndarray:
    """Square box whose deployed crop is the training crop of these 68 landmarks.

    ``expand_box(box, m, shift_y=s)`` with the detector's ``(m, s)`` gives
    ``expand_box(box_from_landmarks(landmarks), TEST_MARGIN)``.
    """
    margin, shift = BLAZEFACE_CROP[VARIANT]
    crop = pp.expand_box(pp.box_from_landmarks(landmarks), pp.TEST_MARGIN)
    side = (crop[2] - crop[0]) / (1.0 + 2.0 * margin)
    cx = 0.5 * (crop[0] + crop[2])
    cy = 0.5 * (crop[1] + crop[3]) - shift * side
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], np.float32)


def keypoints_from_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """BlazeFace's six keypoints ``(6, 2)`` from 68 landmarks."""
    return np.stack([landmarks[list(group), :2].mean(axis=0) for group in KEYPOINT_LANDMARKS])


def anchor_targets(
    faces: list[np.ndarray],
    anchors: np.ndarray,
    input_size: int = INPUT,
    boxes: list | None = None,
) -> dict[str, np.ndarray]:
    """Per-anchor training targets for the faces' 68 landmarks (input pixels).

    ``boxes``: per face ``(box (4,), keypoints (6, 2))`` to learn instead of
    :func:`target_box` and :func:`keypoints_from_landmarks` (e.g. the shipped
    detector's own box on the clean face, :class:`TeacherBoxes`).

    Returns ``label`` (N,) 1 positive / 0 negative / -1 ignored, ``reg`` (N, 16)
    BlazeFace regressor targets (box centre offset from the anchor, box side twice,
    six keypoint offsets) and ``side`` (N,) the target box side (1 where not positive).
    """
    centres = anchors * input_size
    n = len(anchors)
    label = np.zeros(n, np.float32)
    reg = np.zeros((n, 16), np.float32)
    side_out = np.ones(n, np.float32)
    best = np.full(n, np.inf, np.float32)  # distance to the face an anchor is positive for
    for index, landmarks in enumerate(faces):
        if boxes is not None:
            box, keypoints = boxes[index]
        else:
            box, keypoints = target_box(landmarks), keypoints_from_landmarks(landmarks)
        box = np.asarray(box, np.float32)
        size = box[2:4] - box[0:2]  # width, height (a teacher's box need not be square)
        side = float(size.max())
        crop_side = side * (1.0 + 2.0 * BLAZEFACE_CROP[VARIANT][0])
        centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2], np.float32)
        offset = np.abs(centres - centre)
        # at least the nearest anchor: half the anchor spacing, and a little more
        nearest = 0.5 * input_size / math.sqrt(n) + 0.1
        inside = np.all(offset <= max(IGNORE_RADIUS * crop_side, nearest), axis=1)
        width = float(np.ptp(landmarks[:, 0]))
        if width < MIN_FACE_PX:
            label[inside & (label == 0)] = -1
            continue
        radius = max(POSITIVE_RADIUS * crop_side, nearest)
        positive = np.all(offset <= radius, axis=1)
        distance = np.hypot(offset[:, 0], offset[:, 1])
        take = positive & (distance < best)
        label[inside & (label == 0)] = -1
        label[take] = 1
        best[take] = distance[take]
        reg[take, 0:2] = centre - centres[take]
        reg[take, 2:4] = size
        reg[take, 4:] = (
            np.asarray(keypoints, np.float32)[None] - centres[take][:, None, :]
        ).reshape(-1, 12)
        side_out[take] = side
    return {"label": label, "reg": reg, "side": side_out}


# ------------------------------------------------------------------- data


def _render_one(job) -> Frame:
    from training.synth.renderer import build_head_model

    seed, index, width, height, people, occluded, identities = job
    rng = np.random.default_rng([seed, width, height, index])
    model = build_head_model(True)
    frame = render_frame(rng, width, height, people, occluded, model, identities=identities)
    factor = STORED_SIDE / max(width, height)
    if factor < 1:  # memory: thousands of frames are held for training
        size = (int(round(width * factor)), int(round(height * factor)))
        frame.image = cv2.resize(frame.image, size, interpolation=cv2.INTER_AREA)
        if frame.clean is not None:  # the teacher's view must match the student's pixel for pixel
            frame.clean = cv2.resize(frame.clean, size, interpolation=cv2.INTER_AREA)
        for face in frame.faces:
            face.landmarks = face.landmarks * factor
            face.crop = face.crop * factor
            face.width_px *= factor
    return frame


def render_training_frames(
    count: int,
    seed: int,
    identities=TRAIN_IDENTITIES,
    sizes=((640, 480), (1280, 720)),
    free_fraction: float = 0.2,
    workers: int = 1,
    progress: bool = True,
) -> list[Frame]:
    """``count`` frames (each a function of ``(seed, index)``; any worker count gives the same)."""
    from tqdm import tqdm

    jobs = []
    for i in range(count):
        rng = np.random.default_rng([seed, 7919, i])
        width, height = sizes[int(rng.integers(len(sizes)))]
        people = 0 if rng.random() < free_fraction else int(rng.integers(1, 4))
        jobs.append((seed, i, width, height, people, bool(rng.random() < 0.5), tuple(identities)))
    bar = tqdm(total=count, desc="rendering frames", unit="frame", disable=not progress)
    frames = []
    if workers <= 1:
        for job in jobs:
            frames.append(_render_one(job))
            bar.update()
    else:
        with get_context("fork").Pool(workers) as pool:
            for frame in pool.imap(_render_one, jobs, chunksize=4):
                frames.append(frame)
                bar.update()
    bar.close()
    return frames


@dataclass
class View:
    """One augmented training view of a frame (see :func:`augment_view`)."""

    rgb: np.ndarray  #: input_size x input_size RGB uint8, what the student sees
    faces: list[np.ndarray]  #: 68 landmarks per face, view pixels
    yaws: list[float]  #: per face, sign flipped by a mirror
    clean_rgb: np.ndarray  #: the same view before occluders and photometric changes


def augment_view(
    frame: Frame,
    rng: np.random.Generator,
    input_size: int = INPUT,
    zoom_prob: float = 0.5,
    mirror_prob: float = 0.5,
    photometric: bool = True,
    rotate_prob: float = 0.0,
    rotate_max_deg: float = 45.0,
) -> View:
    """A random view of ``frame`` letterboxed to ``input_size``.

    Half the views zoom into a random window (40-100 % of the frame), half are
    mirrored, ``rotate_prob`` of them turn in the image plane (up to
    ``rotate_max_deg`` either way, about the picture's centre; the landmarks turn
    with it and the target box is the upright box around them, as the pose
    network's crop of a tilted head is); brightness, contrast, grey, blur, noise
    and JPEG vary. The frame's clean image (before the occluders) gets the same
    geometry and no photometric change (``View.clean_rgb``, for a teacher).
    """
    images = [frame.image, frame.clean if frame.clean is not None else frame.image]
    kept = [f for f in frame.faces if f.landmarks is not None]
    faces = [f.landmarks.astype(np.float32) for f in kept]
    yaws = [float(f.yaw) for f in kept]
    h, w = images[0].shape[:2]
    if rng.random() < zoom_prob:
        scale = rng.uniform(0.4, 1.0)
        cw, ch = int(w * scale), int(h * scale)
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        images = [im[y0 : y0 + ch, x0 : x0 + cw] for im in images]
        faces = [lm - np.array([x0, y0], np.float32) for lm in faces]
        h, w = ch, cw
    squares = []
    for im in images:
        square, factor = letterbox(np.ascontiguousarray(im), input_size)
        squares.append(square)
    faces = [lm * factor for lm in faces]
    new_w = min(int(round(w * factor)), input_size)
    new_h = min(int(round(h * factor)), input_size)
    # faces whose centre left the window are cut: they stay, the loss ignores tiny ones
    if rng.random() < mirror_prob:
        # letterbox pads right: mirror the content, keep the padding on the right
        squares = [
            np.concatenate(
                [sq[:, ::-1][:, input_size - new_w :], sq[:, ::-1][:, : input_size - new_w]], 1
            )
            for sq in squares
        ]
        flipped = []
        for lm in faces:
            out = lm.copy()
            out[:, 0] = new_w - lm[:, 0]
            flipped.append(out[_MIRROR_68])
        faces = flipped
        yaws = [-y for y in yaws]
    if rotate_prob and rng.random() < rotate_prob:
        angle = float(rng.uniform(-rotate_max_deg, rotate_max_deg))
        matrix = cv2.getRotationMatrix2D((new_w / 2.0, new_h / 2.0), angle, 1.0)
        squares = [
            cv2.warpAffine(
                sq, matrix, (input_size, input_size), flags=cv2.INTER_LINEAR, borderValue=0
            )
            for sq in squares
        ]
        faces = [(lm @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32) for lm in faces]
    square, clean = squares
    clean_rgb = cv2.cvtColor(clean, cv2.COLOR_BGR2RGB)
    if not photometric:
        return View(cv2.cvtColor(square, cv2.COLOR_BGR2RGB), faces, yaws, clean_rgb)
    img = square.astype(np.float32)
    img = (img - 127.5) * rng.uniform(0.7, 1.3) + 127.5 + rng.uniform(-30, 30)
    if rng.random() < 0.1:
        img = np.repeat(img.mean(axis=2, keepdims=True), 3, axis=2)
    if rng.random() < 0.2:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.5))
    if rng.random() < 0.3:
        img = img + rng.normal(0, rng.uniform(2, 8), img.shape)
    out = np.clip(img, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 90))])
        out = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return View(cv2.cvtColor(out, cv2.COLOR_BGR2RGB), faces, yaws, clean_rgb)


def _mirror_68() -> np.ndarray:
    """Index map of the 68-landmark scheme under a horizontal flip."""
    pairs = [(i, 16 - i) for i in range(17)]
    pairs += [(17 + i, 26 - i) for i in range(5)]
    pairs += [(27, 27), (28, 28), (29, 29), (30, 30), (31, 35), (32, 34), (33, 33)]
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]
    pairs += [(48, 54), (49, 53), (50, 52), (51, 51), (55, 59), (56, 58), (57, 57)]
    pairs += [(60, 64), (61, 63), (62, 62), (65, 67), (66, 66)]
    index = np.arange(68)
    for a, b in pairs:
        index[a], index[b] = b, a
    return index


_MIRROR_68 = _mirror_68()


class TeacherBoxes:
    """The shipped full range's own box for each face, found on the clean view.

    With these targets (``--targets teacher``) the student learns to give an
    occluded face the box the shipped detector gives its clean copy: occlusion
    robustness without moving the box convention, which the shipped detector
    learnt on real photos. A face the teacher misses on the clean view (small,
    turned away) gets the box its statistics predict from the landmarks (mean
    offset and size of full range's crops by |yaw| range,
    ``docs/results/blazeface_full_box_stats_val.json``) and the landmarks'
    keypoints. The detector is made in each worker process on first use.
    """

    def __init__(self, stats_path: str | Path | None = None, threshold: float = 0.3) -> None:
        self.boxes = DetectorBoxSampler.from_json(str(stats_path or DEFAULT_BOX_STATS))
        self.threshold = threshold
        self._detector = None

    def mapped_box(self, landmarks: np.ndarray, yaw: float) -> np.ndarray:
        """Full range's expected box for a face (its statistics' mean crop, inverted)."""
        mean = self.boxes.mean_box(pp.box_from_landmarks(landmarks), yaw)
        return box_from_crop(pp.expand_box(mean, pp.TEST_MARGIN), *BLAZEFACE_CROP[VARIANT])

    def __call__(self, view: View) -> list[tuple[np.ndarray, np.ndarray]]:
        from lechpe_model.detection import create_detector

        if self._detector is None:
            self._detector = create_detector(VARIANT, score_threshold=self.threshold)
        margin, shift = BLAZEFACE_CROP[VARIANT]
        found = self._detector.detect(cv2.cvtColor(view.clean_rgb, cv2.COLOR_RGB2BGR))
        crops = [pp.expand_box(d.box, margin, shift_y=shift) for d in found]
        truths = [pp.expand_box(pp.box_from_landmarks(lm), pp.TEST_MARGIN) for lm in view.faces]
        match = match_crops(crops, truths)
        out = []
        for j, (landmarks, yaw) in enumerate(zip(view.faces, view.yaws, strict=True)):
            if j in match:
                d = found[match[j][1]]
                out.append((np.asarray(d.box, np.float32), np.asarray(d.landmarks, np.float32)))
            else:
                out.append((self.mapped_box(landmarks, yaw), keypoints_from_landmarks(landmarks)))
        return out


class DetectorTrainingSet(Dataset):
    """Augmented views of rendered frames with their anchor targets (seeded per item)."""

    def __init__(
        self,
        frames: list[Frame],
        seed: int,
        views_per_epoch: int | None = None,
        rotate_prob: float = 0.0,
        rotate_max_deg: float = 45.0,
        teacher: TeacherBoxes | None = None,
    ) -> None:
        self.frames = frames
        self.teacher = teacher
        self.rotate = {"rotate_prob": rotate_prob, "rotate_max_deg": rotate_max_deg}
        self.seed = seed
        self.length = views_per_epoch or len(frames)
        self.anchors = ssd_anchor_centres(INPUT, BLAZEFACE_MODELS[VARIANT][2], False)
        self.epoch = 0

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        frame = self.frames[int(rng.integers(len(self.frames)))]
        view = augment_view(frame, rng, **self.rotate)
        boxes = self.teacher(view) if self.teacher is not None else None
        targets = anchor_targets(view.faces, self.anchors, boxes=boxes)
        x = torch.from_numpy(view.rgb.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1.0)
        return x, {k: torch.from_numpy(v) for k, v in targets.items()}


def detection_loss(regressors, logits, targets, keypoint_weight: float = 0.3):
    """Focal loss on the scores + smooth L1 on box and keypoints (units of the box side)."""
    from torchvision.ops import sigmoid_focal_loss

    label = targets["label"]
    valid = label >= 0
    positives = label > 0
    n_pos = positives.sum().clamp(min=1).float()
    logits = logits.squeeze(-1)
    cls = sigmoid_focal_loss(logits[valid], label[valid], alpha=0.25, reduction="sum") / n_pos
    side = targets["side"][positives][:, None]
    diff = (regressors[positives] - targets["reg"][positives]) / side
    box = torch.nn.functional.smooth_l1_loss(diff[:, :4], torch.zeros_like(diff[:, :4]), beta=0.05)
    keypoints = torch.nn.functional.smooth_l1_loss(
        diff[:, 4:], torch.zeros_like(diff[:, 4:]), beta=0.05
    )
    if not bool(positives.any()):
        box = keypoints = regressors.sum() * 0.0
    total = cls + box + keypoint_weight * keypoints
    parts = {"cls": float(cls.detach()), "box": float(box.detach())}
    parts["keypoints"] = float(keypoints.detach())
    return total, parts


# ------------------------------------------------------------------ train


def train(args) -> dict:
    from tqdm import tqdm

    from training.blazeface_torch import OnnxBlazeFace, write_onnx_weights

    torch.manual_seed(args.seed)
    device = torch.device(
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    frames = render_training_frames(
        args.frames,
        args.seed,
        free_fraction=args.free_fraction,
        workers=args.workers,
        progress=not args.no_progress,
    )
    render_s = time.monotonic() - start
    source = Path(args.init) if args.init else ASSETS / BLAZEFACE_MODELS[VARIANT][0]
    net = OnnxBlazeFace(source).to(device)
    dataset = DetectorTrainingSet(
        frames,
        args.seed,
        views_per_epoch=args.batch_size * 200,
        rotate_prob=args.rotate_prob,
        rotate_max_deg=args.rotate_max_deg,
        teacher=TeacherBoxes() if args.targets == "teacher" else None,
    )
    loader_kwargs = dict(batch_size=args.batch_size, shuffle=False, drop_last=True)
    if args.loader_workers > 0:
        loader_kwargs.update(
            num_workers=args.loader_workers,
            persistent_workers=False,
            multiprocessing_context=get_context("fork"),
        )
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    train_start = time.monotonic()

    def set_lr() -> float:
        # warm-up then cosine over the run's progress: steps done, or the time limit's
        # share used when that comes first (so a time-limited run still anneals)
        progress = step / args.steps
        if args.time_limit:
            progress = max(progress, (time.monotonic() - train_start) / args.time_limit)
        warm = min(1.0, (step + 1) / max(1, int(0.03 * args.steps)))
        lr = args.lr * warm * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    log = []
    step = 0
    bar = tqdm(total=args.steps, desc="fine-tuning", unit="step", disable=args.no_progress)
    stopped = "steps"
    while step < args.steps:
        for x, targets in DataLoader(dataset, **loader_kwargs):
            x = x.to(device, non_blocking=True)
            targets = {k: v.to(device, non_blocking=True) for k, v in targets.items()}
            lr = set_lr()
            regressors, logits = net(x)
            loss, parts = detection_loss(regressors, logits, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            optimizer.step()
            step += 1
            bar.update()
            if step % 25 == 0 or step == args.steps:
                log.append({"step": step, "loss": float(loss.detach()), **parts, "lr": lr})
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
                if args.no_progress and step % 250 == 0:  # a log file still shows progress
                    elapsed = time.monotonic() - train_start
                    print(f"step {step}: {json.dumps(log[-1])} ({elapsed:.0f} s)", flush=True)
            if step % args.save_every == 0:
                write_onnx_weights(net, source, out / "blazeface_full_occluded.onnx")
            if step >= args.steps:
                break
            if args.time_limit and time.monotonic() - train_start > args.time_limit:
                stopped = "time limit"
                break
        dataset.epoch += 1
        if stopped == "time limit":
            break
    bar.close()
    net.cpu()
    path = write_onnx_weights(net, source, out / "blazeface_full_occluded.onnx")
    record = {
        "steps": step,
        "stopped": stopped,
        "frames": args.frames,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "targets": args.targets,
        "rotate_prob": args.rotate_prob,
        "rotate_max_deg": args.rotate_max_deg,
        "free_fraction": args.free_fraction,
        "lr": args.lr,
        "device": str(device),
        "render_s": round(render_s, 1),
        "train_s": round(time.monotonic() - start - render_s, 1),
        "init": str(source),
        "log": log,
    }
    (out / "train_record.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    if log:
        _plot_loss(log, out / "detector_loss.png")
    if args.eval_frames:
        del frames, dataset
        record["eval"] = evaluate_on_identities(path, args.eval_frames, args.seed + 1, args.workers)
        (out / "train_record.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    print(f"wrote {path} ({step} steps, {record['train_s']} s training)")
    return record


def evaluate_on_identities(
    model_path: Path, count: int, seed: int, workers: int = 1, identities=VAL_IDENTITIES
) -> dict:
    """Recall and false faces of the shipped and the fine-tuned detector on frames of
    ``identities`` (default: the validation ids 800-899), scored as the detector benchmark
    scores (:func:`training.detector_bench.evaluate`)."""
    from lechpe_model.detection import create_detector
    from training.detector_bench import evaluate

    frames = render_training_frames(count, seed, identities=identities, workers=workers)
    results = {}
    for threshold in (0.5, 0.3):
        for label, path in (("shipped", None), ("fine-tuned", model_path)):
            detector = create_detector(VARIANT, score_threshold=threshold, model_path=path)
            r = evaluate(detector, frames)
            results[f"{label} {threshold}"] = {
                "clean": r["clean"],
                "occluded 20-50 %": r["occluded 20-50 %"],
                "free frames with a false face %": r["free frames with a false face %"],
                "mean crop IoU": r["mean crop IoU"],
            }
            print(f"{label} {threshold}: " + json.dumps(results[f"{label} {threshold}"]))
    return {"frames": count, "seed": seed, "identities": [identities[0], identities[-1]], **results}


def _plot_loss(log: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in log]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in ("loss", "cls", "box", "keypoints"):
        ax.plot(steps, [r[key] for r in log], label=key)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.legend()
    ax.set_title("BlazeFace fine-tuning on lechpe-synth occluded scenes")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lechpe-train-detector", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", required=True, help="output folder (ONNX, record, loss plot)")
    parser.add_argument("--frames", type=int, default=6000, help="rendered training frames")
    parser.add_argument("--steps", type=int, default=3000, help="optimiser steps")
    parser.add_argument(
        "--free-fraction", type=float, default=0.25, help="share of face-free frames"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--rotate-prob", type=float, default=0.5, help="share of views turned in the image plane"
    )
    parser.add_argument("--rotate-max-deg", type=float, default=45.0, help="largest turn")
    parser.add_argument(
        "--targets",
        choices=("landmarks", "teacher"),
        default="landmarks",
        help="boxes to learn: the training crop of the landmarks (the shipped file), or "
        "the shipped full range's own box on the clean copy of each face (TeacherBoxes)",
    )
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--workers", type=int, default=1, help="rendering processes")
    parser.add_argument("--loader-workers", type=int, default=0, help="DataLoader processes")
    parser.add_argument("--init", help="ONNX to start from (default: the shipped full range)")
    parser.add_argument("--save-every", type=int, default=500, help="write the ONNX every N steps")
    parser.add_argument("--time-limit", type=float, help="stop training after this many seconds")
    parser.add_argument(
        "--eval-frames",
        type=int,
        default=0,
        help="afterwards, compare with the shipped detector on this many frames of the "
        "validation identities 800-899",
    )
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    train(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
