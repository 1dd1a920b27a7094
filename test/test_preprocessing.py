"""The shared preprocessing: box geometry, padded crops, normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from lechpe_model import preprocessing as pp


def test_constants_are_imagenet_and_224():
    assert pp.INPUT_SIZE == 224
    assert pp.IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert pp.IMAGENET_STD == (0.229, 0.224, 0.225)
    low, high = pp.TRAIN_MARGIN_RANGE
    assert low <= pp.TEST_MARGIN <= high


def test_box_from_landmarks_is_tight_and_ignores_non_finite():
    pts = np.array([[10, 20], [30, 5], [25, 40], [np.nan, 100.0]], dtype=np.float32)
    np.testing.assert_array_equal(pp.box_from_landmarks(pts), [10, 5, 30, 40])
    pts3 = np.array([[1, 2, 9], [3, 4, -9]], dtype=np.float32)
    np.testing.assert_array_equal(pp.box_from_landmarks(pts3), [1, 2, 3, 4])
    with pytest.raises(ValueError, match="no finite landmark"):
        pp.box_from_landmarks(np.full((3, 2), np.inf))
    with pytest.raises(ValueError, match="shape"):
        pp.box_from_landmarks(np.zeros(4))


def test_expand_box_square_and_margin():
    # 100 wide, 50 high, centre (150, 75): square side 100, +25 % each side -> 150.
    out = pp.expand_box(np.array([100, 50, 200, 100]), 0.25)
    np.testing.assert_allclose(out, [75, 0, 225, 150])
    rect = pp.expand_box(np.array([100, 50, 200, 100]), 0.1, square=False)
    np.testing.assert_allclose(rect, [90, 45, 210, 105])
    clipped = pp.expand_box(np.array([0, 0, 40, 40]), 0.5, image_shape=(30, 100, 3))
    np.testing.assert_allclose(clipped, [0, 0, 60, 30])
    shifted = pp.expand_box(np.array([0, 0, 40, 40]), 0.0, shift_y=0.25)
    np.testing.assert_allclose(shifted, [0, 10, 40, 50])


def test_crop_face_inside_equals_slice():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)
    crop = pp.crop_face(img, np.array([10.4, 5.6, 30.5, 20.2]))
    # round(10.4)=10, round(5.6)=6, round(30.5)=30 (banker's), round(20.2)=20
    np.testing.assert_array_equal(crop, img[6:20, 10:30])


def test_crop_face_pads_outside_and_keeps_geometry():
    img = np.zeros((20, 20, 3), dtype=np.uint8)
    img[0, 0] = (1, 2, 3)
    img[19, 19] = (7, 8, 9)
    crop = pp.crop_face(img, np.array([-5, -3, 25, 27]), pad_value=0)
    assert crop.shape == (30, 30, 3)
    # pixel (x, y) of the image lands at (x + 5, y + 3) of the crop
    np.testing.assert_array_equal(crop[3, 5], (1, 2, 3))
    np.testing.assert_array_equal(crop[22, 24], (7, 8, 9))
    assert crop[:3].max() == 0 and crop[:, :5].max() == 0 and crop[23:].max() == 0
    # entirely outside: all padding, still the requested size
    far = pp.crop_face(img, np.array([100, 100, 110, 104]), pad_value=9)
    assert far.shape == (4, 10, 3) and np.all(far == 9)
    with pytest.raises(ValueError, match="not finite"):
        pp.crop_face(img, np.array([0, 0, np.nan, 4]))


def test_preprocess_crops_matches_hand_computation_and_channel_order():
    crop = np.zeros((10, 12, 3), dtype=np.uint8)
    crop[..., 0] = 30  # B
    crop[..., 1] = 120  # G
    crop[..., 2] = 250  # R
    out = pp.preprocess_crops([crop], input_size=8)
    assert out.shape == (1, 3, 8, 8) and out.dtype == np.float32
    for channel, value in enumerate((250, 120, 30)):  # RGB order
        expected = (value / 255 - pp.IMAGENET_MEAN[channel]) / pp.IMAGENET_STD[channel]
        np.testing.assert_allclose(out[0, channel], expected, rtol=1e-6, atol=1e-6)


def test_preprocess_crops_matches_torchvision():
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision.transforms.v2.functional")
    import cv2

    rng = np.random.default_rng(1)
    crops = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((37, 41), (224, 224))]
    out = pp.preprocess_crops(crops)
    for i, crop in enumerate(crops):
        rgb = cv2.resize(crop, (224, 224), interpolation=cv2.INTER_LINEAR)[:, :, ::-1].copy()
        ref = tv.normalize(
            torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0,
            list(pp.IMAGENET_MEAN),
            list(pp.IMAGENET_STD),
        )
        np.testing.assert_allclose(out[i], ref.numpy(), atol=1e-6)


def test_preprocess_crops_empty_and_bad_input():
    empty = pp.preprocess_crops([], input_size=16)
    assert empty.shape == (0, 3, 16, 16) and empty.dtype == np.float32
    good = np.zeros((4, 4, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="crop 1"):
        pp.preprocess_crops([good, np.zeros((4, 4), dtype=np.uint8)])
    with pytest.raises(ValueError, match="crop 0.*float32"):
        pp.preprocess_crops([good.astype(np.float32)])
    with pytest.raises(ValueError, match="crop 0"):
        pp.preprocess_crops([np.zeros((0, 4, 3), dtype=np.uint8)])


def test_preprocess_face_is_the_composition():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (80, 90, 3), dtype=np.uint8)
    box = np.array([20, 10, 60, 70], dtype=np.float32)
    one = pp.preprocess_face(img, box)
    crop_box = pp.expand_box(box, pp.TEST_MARGIN)
    ref = pp.preprocess_crops([pp.crop_face(img, crop_box)])
    np.testing.assert_array_equal(one, ref)
    assert one.shape == (1, 3, 224, 224)
