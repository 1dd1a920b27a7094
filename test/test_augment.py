"""Augmentation, the training crop pipeline and the batch sampler."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from training_fixtures import write_300wlp

from lechpe_model.conventions import euler_to_matrix, matrix_to_euler, mirror_matrix
from lechpe_model.preprocessing import TEST_MARGIN, crop_face, expand_box, preprocess_crops
from training.augment import AugmentConfig, augment_crop, blur, down_up_sample, flip
from training.datasets import load_dataset
from training.torch_data import EpochBatchSampler, FaceCropDataset


def _crop(seed=0, shape=(60, 50, 3)):
    return np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)


def test_flip_mirrors_pixels_and_negates_yaw_and_roll():
    crop = _crop()
    angles = np.array([30.0, -12.0, 8.0])
    out, new = flip(crop, angles)
    np.testing.assert_array_equal(out, crop[:, ::-1])
    np.testing.assert_allclose(new, [-30.0, -12.0, -8.0])
    # Geometric check: the mirrored rotation has exactly these angles.
    np.testing.assert_allclose(
        matrix_to_euler(mirror_matrix(euler_to_matrix(*angles))), new, atol=1e-9
    )
    back, again = flip(out, new)
    np.testing.assert_array_equal(back, crop)
    np.testing.assert_allclose(again, angles)


def test_blur_and_resample_keep_shape_and_lose_detail():
    crop = _crop()
    blurred = blur(crop, 1.5)
    np.testing.assert_array_equal(blurred, cv2.GaussianBlur(crop, (0, 0), 1.5))
    resampled = down_up_sample(crop, 0.25)
    assert resampled.shape == crop.shape and resampled.dtype == np.uint8

    # Both remove high frequencies: neighbouring pixels become more alike.
    def roughness(img):
        return np.abs(np.diff(img.astype(float), axis=1)).mean()

    assert roughness(blurred) < 0.5 * roughness(crop)
    assert roughness(resampled) < 0.5 * roughness(crop)


def test_augment_probabilities_and_determinism():
    crop, angles = _crop(1), np.array([10.0, 5.0, -3.0])
    off = AugmentConfig(flip_prob=0, blur_prob=0, resample_prob=0)
    out, new = augment_crop(crop, angles, np.random.default_rng(0), off)
    np.testing.assert_array_equal(out, crop)
    np.testing.assert_array_equal(new, angles)
    flip_only = AugmentConfig(flip_prob=1, blur_prob=0, resample_prob=0)
    out, new = augment_crop(crop, angles, np.random.default_rng(0), flip_only)
    np.testing.assert_array_equal(out, crop[:, ::-1])
    np.testing.assert_allclose(new, [-10.0, 5.0, 3.0])
    full = AugmentConfig(flip_prob=0.5, blur_prob=0.5, resample_prob=0.5)
    a = augment_crop(crop, angles, np.random.default_rng(9), full)
    b = augment_crop(crop, angles, np.random.default_rng(9), full)
    np.testing.assert_array_equal(a[0], b[0])
    flips = sum(
        augment_crop(crop, angles, np.random.default_rng(s), full)[1][0] < 0 for s in range(200)
    )
    assert 70 < flips < 130


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    root = tmp_path_factory.mktemp("aug_data")
    write_300wlp(str(root), 6, seed=0, size=96)
    return load_dataset(str(root)).samples


def test_eval_item_is_the_shared_preprocessing(samples):
    ds = FaceCropDataset(samples, input_size=48, train=False)
    for i in (0, 3):
        s = samples[i]
        image = cv2.imread(s.image_path)
        expected = preprocess_crops([crop_face(image, expand_box(s.box, TEST_MARGIN))], 48)[0]
        item = ds[i]
        np.testing.assert_array_equal(item["image"].numpy(), expected)
        np.testing.assert_allclose(item["angles"].numpy(), s.angles, atol=1e-5)
        assert item["valid"] and item["index"] == i


def test_train_items_depend_on_seed_epoch_and_index_only(samples):
    ds = FaceCropDataset(samples, input_size=48, train=True, augment=AugmentConfig(), seed=5)
    first = ds[2]["image"].numpy()
    ds[4]  # another item in between changes nothing
    np.testing.assert_array_equal(ds[2]["image"].numpy(), first)
    ds.set_epoch(1)
    assert not np.array_equal(ds[2]["image"].numpy(), first)
    again = FaceCropDataset(samples, input_size=48, train=True, augment=AugmentConfig(), seed=5)
    np.testing.assert_array_equal(again[2]["image"].numpy(), first)


def test_epoch_batch_sampler_ranks_and_resume():
    one = EpochBatchSampler(20, 8, seed=3)
    ranks = [EpochBatchSampler(20, 8, seed=3, rank=r, world_size=2) for r in range(2)]
    for s in [one, *ranks]:
        s.set_epoch(4)
    batches = list(one)
    assert len(batches) == 2 and all(len(b) == 8 for b in batches)  # 20 // 8, last partial dropped
    per_rank = [list(s) for s in ranks]
    for j, batch in enumerate(batches):
        assert per_rank[0][j] + per_rank[1][j] == batch
    one.set_start(1)
    assert list(one) == batches[1:]
    other = EpochBatchSampler(20, 8, seed=3)
    other.set_epoch(5)
    assert list(other) != batches
    with pytest.raises(ValueError, match="not divisible"):
        EpochBatchSampler(20, 7, world_size=2)


# --------------------------------------------------------------------------- rotation


def _project(angles, points, centre, scale):
    """Orthographic image of model points (x right, y up) around ``centre`` (u, v), y down."""
    from lechpe_model.conventions import euler_to_matrix

    xyz = points @ euler_to_matrix(*angles).T
    return np.stack([centre[0] + scale * xyz[:, 0], centre[1] - scale * xyz[:, 1]], axis=1)


def _apply(affine, uv):
    return uv @ affine[:, :2].T + affine[:, 2]


@pytest.mark.parametrize(
    "angles, theta",
    [((50.0, -20.0, 5.0), 30.0), ((-70.0, 15.0, -10.0), -25.0), ((20.0, 30.0, 0.0), 12.5)],
)
def test_rotation_then_mirror_labels_match_the_projected_head(angles, theta):
    """Landmarks moved by the crop's pixel affine (then mirrored) are the projection of
    the head posed with the transformed label: the exact composition, not roll + theta."""
    from lechpe_model.conventions import mirror_euler, rotate_in_image_plane
    from lechpe_model.preprocessing import rotation_affine

    points = np.random.default_rng(4).normal(size=(40, 3))
    centre, scale = np.array([103.0, 97.0]), 20.0
    uv = _project(angles, points, centre, scale)
    box = expand_box(np.r_[uv.min(0), uv.max(0)], 0.25)
    affine = rotation_affine(box, theta)
    moved = _apply(affine, uv)
    label = rotate_in_image_plane(np.array(angles), theta)
    expected = _project(label, points, _apply(affine, centre[None])[0], scale)
    np.testing.assert_allclose(moved, expected, atol=1e-9)
    assert not np.allclose(label, np.array(angles) + [0, 0, theta], atol=0.5)
    # Then the flip of the rotated crop: u -> W - 1 - u, label mirror_euler; the
    # mirrored picture shows the mirror-image head (model x negated).
    width = int(round(box[2])) - int(round(box[0]))
    mirrored = moved * [-1, 1] + [width - 1, 0]
    centre_m = _apply(affine, centre[None])[0] * [-1, 1] + [width - 1, 0]
    np.testing.assert_allclose(
        mirrored, _project(mirror_euler(label), points * [-1, 1, 1], centre_m, scale), atol=1e-9
    )


def test_rotated_crop_moves_pixels_by_the_affine():
    from lechpe_model.preprocessing import rotated_crop, rotation_affine

    image = np.zeros((160, 200, 3), np.uint8)
    spots = np.array([[90.0, 60.0], [130.0, 95.0], [70.0, 110.0]])
    yy, xx = np.mgrid[0:160, 0:200]
    for x, y in spots:
        image[..., 1] = np.maximum(
            image[..., 1], (250 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 8.0)).astype(np.uint8)
        )
    box = np.array([50.0, 30.0, 150.0, 130.0])
    for theta in (25.0, -40.0):
        crop = rotated_crop(image, box, theta).astype(float)[..., 1]
        assert crop.shape == (100, 100)
        expected = _apply(rotation_affine(box, theta), spots)
        cy, cx = np.mgrid[0:100, 0:100]
        for ex, ey in expected:
            near = (cx - ex) ** 2 + (cy - ey) ** 2 < 36
            w = crop * near
            found = np.array([(w * cx).sum(), (w * cy).sum()]) / w.sum()
            np.testing.assert_allclose(found, [ex, ey], atol=0.3)
    # theta = 0 is exactly crop_face, including padding outside the frame.
    off = np.array([-20.0, 100.0, 80.0, 200.0])
    np.testing.assert_array_equal(rotated_crop(image, off, 0.0), crop_face(image, off))
    np.testing.assert_array_equal(rotated_crop(image, off, 1e-9)[:, :20], 0)


def test_rotation_draws_over_the_angle_limit_are_redrawn_and_counted():
    from training.augment import ROTATION_REDRAWS, draw_rotation

    cfg = AugmentConfig(rotate_prob=1.0, rotate_max_deg=30.0)
    angles = np.array([0.0, 0.0, 90.0])  # frontal: a rotation adds to roll exactly
    counts = []
    for seed in range(60):
        theta, new, rejected = draw_rotation(angles, np.random.default_rng(seed), cfg, 99.0)
        replay = np.random.default_rng(seed)
        replay.random()
        thetas = replay.uniform(-30, 30, ROTATION_REDRAWS + 1)
        ok = [i for i, t in enumerate(thetas) if 90 + t <= 99]
        assert rejected == (ok[0] if ok else len(thetas))
        assert theta == (thetas[ok[0]] if ok else 0.0)
        np.testing.assert_allclose(new, [0, 0, 90 + theta], atol=1e-9)
        assert np.all(np.abs(new) <= 99)
        counts.append(rejected)
    assert sum(counts) > 20  # most draws of a roll-90 face are rejected at least once
    theta, new, rejected = draw_rotation(angles, np.random.default_rng(0), AugmentConfig(), 99.0)
    assert (theta, rejected) == (0.0, 0) and np.array_equal(new, angles)  # rotate_prob 0


def test_train_item_is_the_rotated_crop_with_the_exact_label(samples):
    from lechpe_model.conventions import mirror_euler, rotate_in_image_plane
    from lechpe_model.preprocessing import rotated_crop

    for flip_prob in (0.0, 1.0):
        aug = AugmentConfig(flip_prob=flip_prob, blur_prob=0, resample_prob=0, rotate_prob=1.0)
        ds = FaceCropDataset(samples, input_size=48, train=True, augment=aug, seed=2)
        for i in range(len(samples)):
            item, s = ds[i], samples[i]
            assert item["rotation"] != 0.0 and item["rotation_rejected"] == 0
            crop = rotated_crop(
                cv2.imread(s.image_path), expand_box(s.box, item["margin"]), item["rotation"]
            )
            label = rotate_in_image_plane(s.angles, item["rotation"])
            if flip_prob:
                crop, label = crop[:, ::-1], mirror_euler(label)
            expected = preprocess_crops([np.ascontiguousarray(crop)], 48)[0]
            np.testing.assert_array_equal(item["image"].numpy(), expected)
            np.testing.assert_allclose(item["angles"].numpy(), label, atol=1e-4)
