"""torch Dataset and batch sampler over :class:`training.datasets.PoseSample` records.

Per item: decode -> face box (+ random margin in training, the fixed test
margin otherwise; no margin for pre-cropped images without a box) ->
``crop_face`` -> augmentation on the uint8 crop (training) ->
``preprocess_crops`` (the ONE preprocessing shared with inference).

Reproducibility: the randomness of item ``i`` in epoch ``e`` comes from a
generator seeded with ``(seed, e, i)``, and :class:`EpochBatchSampler`'s order
is a function of ``(seed, e)`` only; a resumed run (any number of data-loader
workers) therefore sees exactly the batches of an uninterrupted one.

An unreadable image does not stop a run: the item comes back with
``valid = False`` and the error text; the trainer drops it from the batch,
logs the path and reason once and counts it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from lechpe_model.preprocessing import (
    INPUT_SIZE,
    TEST_MARGIN,
    TRAIN_MARGIN_RANGE,
    crop_face,
    expand_box,
    preprocess_crops,
    rotated_crop,
)
from training.augment import NO_AUGMENT, AugmentConfig, augment_crop, draw_rotation
from training.datasets import ANGLE_LIMIT, ImageLoadError, PoseSample, load_image


def face_crop(sample: PoseSample, image: np.ndarray, margin: float) -> np.ndarray:
    """uint8 BGR crop of the sample's face: its box expanded by ``margin`` (square).

    Samples without a box (pre-cropped faces) return the whole image.
    """
    if sample.box is None:
        return image
    return crop_face(image, expand_box(sample.box, margin, square=True))


class FaceCropDataset(Dataset):
    """Face crops ready for the network.

    Args:
        samples: the records.
        input_size: network input side S.
        train: random margin + augmentation when True; fixed test margin otherwise.
        augment: augmentation settings (ignored when ``train`` is False).
        margin_range: training margin range (fraction of the box per side).
        test_margin: fixed margin for evaluation.
        seed: base seed of the per-item generators.
        angle_limit: a rotated pose with an |angle| above it is drawn again
            (``training.augment.draw_rotation``).
        box_jitter: optional ``f(sample, rng) -> (4,) box`` replacing the
            sample's box in training (e.g. detector-like boxes drawn from
            measured statistics, ``training.detector_boxes``); the margin is
            then added to that box.

    Items are dicts: ``image`` (3, S, S) float32, ``angles`` (3,) float32 degrees
    (after rotation and flipping), ``index`` int, ``valid`` bool, ``occluded``
    bool, ``error`` str ("" when valid), ``margin`` float (the crop margin
    used), ``rotation`` float (clockwise degrees, 0 when none) and
    ``rotation_rejected`` int (rotation draws rejected for the angle limit).
    """

    def __init__(
        self,
        samples: Sequence[PoseSample],
        input_size: int = INPUT_SIZE,
        train: bool = False,
        augment: AugmentConfig = NO_AUGMENT,
        margin_range: tuple[float, float] = TRAIN_MARGIN_RANGE,
        test_margin: float = TEST_MARGIN,
        seed: int = 0,
        angle_limit: float = ANGLE_LIMIT,
        box_jitter=None,
    ) -> None:
        self.samples = list(samples)
        self.input_size = int(input_size)
        self.train = bool(train)
        self.augment = augment if train else NO_AUGMENT
        self.margin_range = (float(margin_range[0]), float(margin_range[1]))
        self.test_margin = float(test_margin)
        self.seed = int(seed)
        self.angle_limit = float(angle_limit)
        self.box_jitter = box_jitter
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        angles = np.asarray(sample.angles, dtype=np.float64)
        margin, theta, rejected = 0.0, 0.0, 0
        try:
            image = load_image(sample)
            if self.train:
                margin = rng.uniform(*self.margin_range)
                theta, angles, rejected = draw_rotation(angles, rng, self.augment, self.angle_limit)
                box = sample.box
                if box is not None and self.box_jitter is not None:
                    box = self.box_jitter(sample, rng)
                if box is None:  # pre-cropped: the whole image, no margin
                    h, w = image.shape[:2]
                    margin, crop_box = 0.0, np.array([0, 0, w, h], np.float32)
                else:
                    crop_box = expand_box(box, margin, square=True)
                crop = rotated_crop(image, crop_box, theta)
                crop, angles = augment_crop(crop, angles, rng, self.augment)
            else:
                margin = self.test_margin if sample.box is not None else 0.0
                crop = face_crop(sample, image, self.test_margin)
            tensor = preprocess_crops([crop], self.input_size)[0]
            error = ""
        except (ImageLoadError, ValueError, OSError) as exc:
            tensor = np.zeros((3, self.input_size, self.input_size), np.float32)
            error = f"{sample.key}: {exc}"
        return {
            "margin": float(margin),
            "rotation": float(theta),
            "rotation_rejected": int(rejected),
            "image": torch.from_numpy(np.ascontiguousarray(tensor)),
            "angles": torch.as_tensor(angles, dtype=torch.float32),
            "index": int(index),
            "valid": not error,
            "occluded": bool(sample.occluded),
            "error": error,
        }


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of a seeded per-epoch permutation, split across DDP ranks.

    Global batch ``j`` is ``perm[j*B:(j+1)*B]`` with ``perm = randperm(n)``
    seeded by ``seed + epoch``; rank ``r`` of ``W`` gets the slice
    ``[r*B/W, (r+1)*B/W)`` of it.  One process with batch B and W processes
    with B/W each therefore see the same global batches.  Incomplete last
    batches are dropped (``drop_last``) so every rank takes the same number of
    equal-size steps.  :meth:`set_start` skips batches already done in a
    resumed epoch.
    """

    def __init__(
        self,
        num_samples: int,
        global_batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        if global_batch_size % world_size:
            raise ValueError(
                f"batch size {global_batch_size} is not divisible by the {world_size} processes"
            )
        self.num_samples = int(num_samples)
        self.global_batch_size = int(global_batch_size)
        self.local_batch_size = self.global_batch_size // world_size
        self.seed, self.rank, self.world_size, self.shuffle = int(seed), rank, world_size, shuffle
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_start(self, batch_index: int) -> None:
        self.start = int(batch_index)

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // self.global_batch_size

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start)

    def __iter__(self):
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            perm = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            perm = list(range(self.num_samples))
        lo = self.rank * self.local_batch_size
        for j in range(self.start, self.batches_per_epoch):
            batch = perm[j * self.global_batch_size : (j + 1) * self.global_batch_size]
            yield batch[lo : lo + self.local_batch_size]


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + W, ...`` in order (evaluation / latent extraction)."""

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, num_samples, world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)


def collate(items: list[dict]) -> dict:
    """Stack the tensors; keep indices, flags and errors as tensors / lists."""
    return {
        "image": torch.stack([it["image"] for it in items]),
        "angles": torch.stack([it["angles"] for it in items]),
        "index": torch.as_tensor([it["index"] for it in items], dtype=torch.long),
        "valid": torch.as_tensor([it["valid"] for it in items], dtype=torch.bool),
        "occluded": torch.as_tensor([it["occluded"] for it in items], dtype=torch.bool),
        "error": [it["error"] for it in items],
        "rotation_rejected": torch.as_tensor(
            [it.get("rotation_rejected", 0) for it in items], dtype=torch.long
        ),
    }
