"""Image / CompressedImage -> BGR conversion: every encoding, round trips, malformed messages."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from lechpe_ros import image_conversion as ic
from lechpe_ros.image_conversion import (
    ImageConversionError,
    bgr_to_compressed,
    bgr_to_image,
    compressed_to_bgr,
    image_to_bgr,
)

RNG = np.random.default_rng(7)
BGR = RNG.integers(0, 256, size=(5, 6, 3), dtype=np.uint8)


def _msg(pixels: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False) -> Image:
    """Pack ``pixels`` (H, W, C) row by row with ``pad`` garbage bytes after each row."""
    pixels = np.ascontiguousarray(pixels)
    height, width = pixels.shape[:2]
    if pixels.dtype == np.uint16:
        pixels = pixels.astype(">u2" if bigendian else "<u2")
    rows = pixels.reshape(height, -1).view(np.uint8)
    padding = RNG.integers(0, 256, size=(height, pad), dtype=np.uint8)
    data = np.concatenate([rows, padding], axis=1)
    msg = Image()
    msg.height, msg.width, msg.encoding = height, width, encoding
    msg.is_bigendian = int(bigendian)
    msg.step = data.shape[1]
    msg.data = data.tobytes()
    return msg


# (encoding, packed pixels made from BGR, expected BGR)
def _cases():
    gray = cv2.cvtColor(BGR, cv2.COLOR_BGR2GRAY)
    gray3 = np.repeat(gray[:, :, None], 3, axis=2)
    alpha = RNG.integers(0, 256, size=BGR.shape[:2] + (1,), dtype=np.uint8)
    return [
        ("bgr8", BGR, BGR),
        ("8UC3", BGR, BGR),
        ("rgb8", BGR[:, :, ::-1], BGR),
        ("bgra8", np.concatenate([BGR, alpha], axis=2), BGR),
        ("8UC4", np.concatenate([BGR, alpha], axis=2), BGR),
        ("rgba8", np.concatenate([BGR[:, :, ::-1], alpha], axis=2), BGR),
        ("mono8", gray[:, :, None], gray3),
        ("8UC1", gray[:, :, None], gray3),
    ]


@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize("case", _cases(), ids=lambda c: c[0])
def test_8bit_encodings(case, pad):
    encoding, pixels, expected = case
    out = image_to_bgr(_msg(pixels, encoding, pad=pad))
    assert out.dtype == np.uint8 and out.shape == BGR.shape
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("encoding", ["bgr16", "rgb16", "bgra16", "rgba16", "mono16"])
def test_16bit_encodings_scale_by_1_over_256(encoding, bigendian):
    # value v*256 + low, low < 128 rounds to v; low > 128 rounds to v + 1 (saturating at 255).
    channels = {"bgr16": 3, "rgb16": 3, "bgra16": 4, "rgba16": 4, "mono16": 1}[encoding]
    high = RNG.integers(0, 256, size=(4, 6, channels)).astype(np.uint16)
    low = RNG.integers(0, 256, size=high.shape).astype(np.uint16)
    low[low == 128] = 127  # avoid the exact half (OpenCV rounds half to even)
    words = (high * 256 + low).astype(np.uint16)
    expected8 = np.minimum(high + (low > 128), 255).astype(np.uint8)
    if encoding.startswith("rgb"):
        expected8[:, :, :3] = expected8[:, :, 2::-1]
    expected = expected8[:, :, :3] if channels > 1 else np.repeat(expected8, 3, axis=2)
    out = image_to_bgr(_msg(words, encoding, pad=2, bigendian=bigendian))
    np.testing.assert_array_equal(out, expected)


def _limited_range_bt601(y, u, v):
    """Hand-computed BT.601 limited-range YUV -> BGR (what OpenCV's 4:2:2 decoders use)."""
    c = 1.164 * (y - 16)
    r = c + 1.596 * (v - 128)
    g = c - 0.813 * (v - 128) - 0.391 * (u - 128)
    b = c + 2.018 * (u - 128)
    return np.clip([b, g, r], 0, 255)


@pytest.mark.parametrize("encoding", ["yuv422", "uyvy"])
def test_uyvy_byte_order(encoding):
    # ROS "yuv422" is UYVY: bytes U0 Y0 V0 Y1.
    u, y0, v, y1 = 200, 50, 90, 180
    msg = _msg(np.array([[[u, y0], [v, y1]]], dtype=np.uint8), encoding)
    out = image_to_bgr(msg).astype(float)
    np.testing.assert_allclose(out[0, 0], _limited_range_bt601(y0, u, v), atol=2)
    np.testing.assert_allclose(out[0, 1], _limited_range_bt601(y1, u, v), atol=2)


@pytest.mark.parametrize("encoding", ["yuv422_yuy2", "yuyv"])
def test_yuyv_byte_order(encoding):
    # "yuv422_yuy2" / "yuyv" is YUYV: bytes Y0 U0 Y1 V0.
    y0, u, y1, v = 50, 200, 180, 90
    msg = _msg(np.array([[[y0, u], [y1, v]]], dtype=np.uint8), encoding)
    out = image_to_bgr(msg).astype(float)
    np.testing.assert_allclose(out[0, 0], _limited_range_bt601(y0, u, v), atol=2)
    np.testing.assert_allclose(out[0, 1], _limited_range_bt601(y1, u, v), atol=2)


@pytest.mark.parametrize(
    ("encoding", "code"),
    [("yuv422", cv2.COLOR_YUV2BGR_UYVY), ("yuv422_yuy2", cv2.COLOR_YUV2BGR_YUY2)],
)
def test_yuv422_matches_cvtcolor_with_padding(encoding, code):
    packed = RNG.integers(0, 256, size=(6, 8, 2), dtype=np.uint8)
    out = image_to_bgr(_msg(packed, encoding, pad=4))
    np.testing.assert_array_equal(out, cv2.cvtColor(packed, code))


@pytest.mark.parametrize("encoding", ["bgr8", "rgb8", "mono8"])
def test_bgr_to_image_round_trip(encoding):
    header_stamp = (12, 345)
    msg = bgr_to_image(BGR, encoding=encoding)
    msg.header.stamp.sec, msg.header.stamp.nanosec = header_stamp
    assert msg.step == BGR.shape[1] * (1 if encoding == "mono8" else 3)
    back = image_to_bgr(msg)
    if encoding == "mono8":
        gray = cv2.cvtColor(BGR, cv2.COLOR_BGR2GRAY)
        np.testing.assert_array_equal(back, np.repeat(gray[:, :, None], 3, axis=2))
    else:
        np.testing.assert_array_equal(back, BGR)


def test_round_trip_through_serialization():
    from rclpy.serialization import deserialize_message, serialize_message

    msg = bgr_to_image(BGR)
    msg.header.frame_id = "cam_optical"
    back = deserialize_message(serialize_message(msg), Image)
    assert back.header.frame_id == "cam_optical"
    np.testing.assert_array_equal(image_to_bgr(back), BGR)


def test_compressed_png_round_trip_is_exact_and_jpeg_is_close():
    big = cv2.resize(BGR, (64, 48), interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(compressed_to_bgr(bgr_to_compressed(big, fmt="png")), big)
    smooth = cv2.GaussianBlur(big, (9, 9), 3)
    jpeg = compressed_to_bgr(bgr_to_compressed(smooth, fmt="jpeg", quality=95))
    assert jpeg.shape == smooth.shape
    assert np.abs(jpeg.astype(int) - smooth.astype(int)).mean() < 3.0


def _bad(encoding="bgr8", width=4, height=3, step=None, nbytes=None) -> Image:
    msg = Image()
    msg.encoding, msg.width, msg.height = encoding, width, height
    msg.step = width * 3 if step is None else step
    msg.data = bytes(msg.step * height if nbytes is None else nbytes)
    return msg


@pytest.mark.parametrize(
    ("msg", "text"),
    [
        (_bad(encoding="bayer_rggb42"), "unsupported image encoding 'bayer_rggb42'"),
        (_bad(encoding=""), "unsupported image encoding ''"),
        (_bad(width=0, step=0, nbytes=0), "zero-size image (0x3)"),
        (_bad(height=0, nbytes=0), "zero-size image (4x0)"),
        (_bad(step=11), "step 11 is smaller than width*bytes_per_pixel = 4*3 = 12"),
        (_bad(nbytes=20), "image data has 20 bytes but step*height = 12*3 = 36 (truncated)"),
        (_bad(nbytes=40), "image data has 40 bytes but step*height = 12*3 = 36 (longer"),
        (_bad(encoding="yuv422", width=3, step=6), "yuv422 needs an even width, got 3"),
        (_bad(encoding="mono16", width=3, step=7), "step 7 is not a multiple of 2"),
        (_bad(width=100000, step=300000, nbytes=0), "image too large"),
    ],
)
def test_malformed_images_raise_named_errors(msg, text):
    with pytest.raises(ImageConversionError) as info:
        image_to_bgr(msg)
    assert text in str(info.value)


def test_malformed_compressed_images():
    empty = CompressedImage(format="jpeg")
    with pytest.raises(ImageConversionError, match="no data"):
        compressed_to_bgr(empty)
    garbage = CompressedImage(format="jpeg", data=bytes(range(200)))
    with pytest.raises(ImageConversionError, match="unrecognised image format"):
        compressed_to_bgr(garbage)
    depth = CompressedImage(format="16UC1; compressedDepth png", data=b"\x00" * 20)
    with pytest.raises(ImageConversionError, match="compressed depth"):
        compressed_to_bgr(depth)
    truncated = bgr_to_compressed(np.full((32, 32, 3), 99, np.uint8), fmt="png")
    truncated.data = bytes(truncated.data)[:40]
    with pytest.raises(ImageConversionError, match="could not decode 40 bytes of png"):
        compressed_to_bgr(truncated)


def test_bgr_to_image_rejects_wrong_arrays():
    with pytest.raises(ImageConversionError, match="expected"):
        bgr_to_image(np.zeros((4, 4), np.uint8))
    with pytest.raises(ImageConversionError, match="cannot write encoding"):
        bgr_to_image(BGR, encoding="yuv422")


def test_converter_reports_which_path_it_uses():
    # cv_bridge for ROS 2 is not installable here; where it is, the probe decides.
    name = ic.converter_name()
    assert name in ("cv_bridge", "numpy")
    if name == "numpy":
        assert ic._bridge().reason != "ok"
