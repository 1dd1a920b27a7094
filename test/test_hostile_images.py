"""Encoded images sized from their headers before decoding (issue 13, items 1, 2 and 7).

The independent computation for the header readers is the encoder that wrote
the file (OpenCV, Pillow): the declared size must equal the encoded frame's.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from hostile_images import gif_garbage, jpeg_declaring, png_declaring

from lechpe_model.image_checks import (
    DEFAULT_MAX_PIXELS,
    InvalidImage,
    check_declared_size,
    declared_size,
    decode_image_bytes,
)

REPO = Path(__file__).resolve().parent.parent
RNG = np.random.default_rng(3)
FRAME = cv2.GaussianBlur(RNG.integers(0, 256, (37, 53, 3), dtype=np.uint8), (5, 5), 1)


@pytest.mark.parametrize(
    ("ext", "fmt"),
    [
        (".png", "png"),
        (".jpg", "jpeg"),
        (".bmp", "bmp"),
        (".tiff", "tiff"),
        (".webp", "webp"),
        (".ppm", "pnm"),
        (".pgm", "pnm"),
    ],
)
def test_declared_size_matches_the_encoder(ext, fmt):
    image = FRAME[:, :, 0] if ext == ".pgm" else FRAME
    ok, data = cv2.imencode(ext, image)
    assert ok
    size = declared_size(data.tobytes())
    assert (size.format, size.width, size.height) == (fmt, 53, 37)
    decoded = decode_image_bytes(data.tobytes())
    reference = cv2.imdecode(data, cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(decoded, reference)


@pytest.mark.parametrize("kind", ["rgb", "gray", "gray16", "rgba"])
@pytest.mark.parametrize("unchanged", [False, True])
def test_png_decoding_equals_opencv(kind, unchanged):
    # PNG/JPEG/GIF go through Pillow (quiet decoders); OpenCV is the reference.
    rng = np.random.default_rng(1)
    image = {
        "rgb": FRAME,
        "gray": FRAME[:, :, 0],
        "gray16": rng.integers(0, 65536, (30, 41), dtype=np.uint16),
        "rgba": rng.integers(0, 256, (30, 41, 4), dtype=np.uint8),
    }[kind]
    data = cv2.imencode(".png", image)[1]
    decoded = decode_image_bytes(data.tobytes(), unchanged=unchanged)
    reference = cv2.imdecode(data, cv2.IMREAD_UNCHANGED if unchanged else cv2.IMREAD_COLOR)
    assert decoded.dtype == reference.dtype
    np.testing.assert_array_equal(decoded, reference)


@pytest.mark.parametrize("mode", ["lossless", "lossy"])
def test_webp_and_gif_sizes_from_pillow(mode):
    from PIL import Image as PILImage

    pil = PILImage.fromarray(FRAME[:, :, ::-1])
    for fmt, kwargs in (("WEBP", {"lossless": mode == "lossless"}), ("GIF", {})):
        buffer = io.BytesIO()
        pil.save(buffer, format=fmt, **kwargs)
        size = declared_size(buffer.getvalue())
        assert (size.width, size.height) == (53, 37), fmt
        assert decode_image_bytes(buffer.getvalue()).shape == (37, 53, 3)


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (png_declaring(40000, 40000), "png header declares 40000x40000 px, above the limit of"),
        (jpeg_declaring(30000, 30000), "jpeg header declares 30000x30000 px, above the limit"),
        (png_declaring(8000, 8000), f"above the limit of {DEFAULT_MAX_PIXELS} px"),
        (gif_garbage(), "GIF"),
        (png_declaring(0, 10), "declares an empty image (0x10)"),
        (bytes(range(200)), "unrecognised image format (first bytes 0001020304050607)"),
        (b"\x89PNG\r\n\x1a\n" + bytes(40), "PNG without an IHDR"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "JPEG without a frame header"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 " + bytes(20), "VP8 frame without its start code"),
    ],
)
def test_hostile_headers_are_refused_before_decoding(data, text):
    with pytest.raises(InvalidImage) as info:
        decode_image_bytes(data)
    assert text in str(info.value)


def test_the_issue_files_are_tiny():
    assert len(png_declaring(40000, 40000)) < 400 and len(jpeg_declaring(30000, 30000)) == 629


def test_png_header_crc_catches_garbage():
    data = bytearray(png_declaring(64, 64))
    data[20] ^= 0x01  # a bit of the declared height
    with pytest.raises(InvalidImage, match="IHDR has a wrong CRC"):
        check_declared_size(bytes(data))


_CHATTER_SCRIPT = r"""
import cv2, numpy as np
from hostile_images import gif_garbage, png_declaring
from lechpe_model.image_checks import InvalidImage, decode_image_bytes
rng = np.random.default_rng(0)
frame = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
jpg = cv2.imencode(".jpg", frame)[1].tobytes()
png = cv2.imencode(".png", frame)[1].tobytes()
bad = [jpg[: len(jpg) // 2], jpg[: len(jpg) // 2] + b"\xff\xd9", png[: len(png) // 2],
       gif_garbage(), png_declaring(64, 64)]
for data in bad:
    try:
        decode_image_bytes(data)
    except InvalidImage:
        pass
print("done")
"""


def test_decoders_print_nothing_for_damaged_images():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "test")])
    result = subprocess.run(
        [sys.executable, "-c", _CHATTER_SCRIPT],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "done\n"
    assert result.stderr == ""  # no libjpeg/libpng/OpenCV lines


# ----------------------------------------------------------------------------- ROS conversion
rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2 Jazzy wheels) is not installed")

from sensor_msgs.msg import CompressedImage, Image  # noqa: E402

from lechpe_ros.image_conversion import (  # noqa: E402
    ImageConversionError,
    compressed_to_bgr,
    message_to_bgr,
)


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (png_declaring(40000, 40000), "declares 40000x40000 px"),
        (gif_garbage(), "compressed image (format 'gif')"),
        (jpeg_declaring(30000, 30000), "declares 30000x30000 px"),
    ],
)
def test_hostile_compressed_images_raise_conversion_errors(data, text):
    # Before: cv2.error escaped compressed_to_bgr and killed the node's worker.
    msg = CompressedImage(format="gif" if data.startswith(b"GIF") else "png", data=data)
    with pytest.raises(ImageConversionError) as info:
        compressed_to_bgr(msg)
    assert text in str(info.value)


def _image(width: int, height: int) -> Image:
    msg = Image(encoding="bgr8", width=width, height=height, step=3 * width)
    msg.data = bytes(3 * width * height)
    return msg


@pytest.mark.parametrize(
    ("msg", "text"),
    [
        (_image(1, 1), "image too small (1x1, at least 8 px a side)"),
        (_image(8200, 8), "image too large (8200x8, limit 8192 per side)"),
        (
            CompressedImage(format="png", data=cv2.imencode(".png", FRAME[:4, :4])[1].tobytes()),
            "image too small (4x4",
        ),
    ],
)
def test_frames_outside_the_pipeline_limits_are_conversion_errors(msg, text):
    # The node counts ImageConversionError as `rejected` (before: `failed` in the pipeline).
    with pytest.raises(ImageConversionError) as info:
        message_to_bgr(msg)
    assert text in str(info.value)


def test_message_to_bgr_converts_good_frames():
    np.testing.assert_array_equal(message_to_bgr(_image(16, 9)), np.zeros((9, 16, 3), np.uint8))
    png = CompressedImage(format="png", data=cv2.imencode(".png", FRAME)[1].tobytes())
    np.testing.assert_array_equal(message_to_bgr(png), FRAME)
