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
