"""sensor_msgs Image / CompressedImage <-> BGR ``uint8`` NumPy arrays.

The node works on ``(H, W, 3)`` BGR ``uint8`` frames, the layout the detector
and the preprocessing expect. On a ROS 2 robot ``cv_bridge`` is installed and
used for the pixel conversion; where it is missing (or is the broken ROS 1
copy from PyPI) an equivalent NumPy/OpenCV conversion is used. Both paths run
behind the same validation, so a malformed message gives the same
:class:`ImageConversionError` either way.

Encodings (names of ``sensor_msgs/image_encodings.hpp``):

* 8 bit: ``bgr8``, ``rgb8``, ``bgra8``, ``rgba8``, ``mono8`` (and the OpenCV
  aliases ``8UC1``, ``8UC3`` (read as BGR), ``8UC4`` (read as BGRA));
* 16 bit: ``bgr16``, ``rgb16``, ``bgra16``, ``rgba16``, ``mono16`` (scaled
  by 1/256 with rounding, as cv_bridge does; ``is_bigendian`` honoured);
* packed YUV 4:2:2: ``yuv422`` and ``uyvy`` are **UYVY** byte order
  (U0 Y0 V0 Y1); ``yuv422_yuy2`` and ``yuyv`` are **YUYV** (Y0 U0 Y1 V0).
  Decoded with OpenCV's BT.601 ``COLOR_YUV2BGR_UYVY`` / ``_YUY2``.

Compressed images: PNG, JPEG, GIF, BMP, WebP, TIFF and PNM, sized from their
header before decoding (anything that cannot be sized is refused);
``compressedDepth`` (depth PNG with a header) is rejected.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import cv2
import numpy as np
from sensor_msgs.msg import CompressedImage, Image

from lechpe_model.image_checks import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_SIDE,
    DEFAULT_MIN_SIDE,
    InvalidImage,
    decode_image_bytes,
)

_LOG = logging.getLogger(__name__)


class ImageConversionError(ValueError):
    """A message that cannot be turned into a frame; the text names the problem."""


@dataclass(frozen=True)
class _EncodingInfo:
    channels: int
    bytes_per_channel: int
    #: cv2.cvtColor code to BGR, or None when the data already is BGR.
    to_bgr: int | None
    #: True for packed 4:2:2 formats (2 bytes per pixel, even width).
    packed_yuv: bool = False


_ENCODINGS: dict[str, _EncodingInfo] = {
    "bgr8": _EncodingInfo(3, 1, None),
    "rgb8": _EncodingInfo(3, 1, cv2.COLOR_RGB2BGR),
    "bgra8": _EncodingInfo(4, 1, cv2.COLOR_BGRA2BGR),
    "rgba8": _EncodingInfo(4, 1, cv2.COLOR_RGBA2BGR),
    "mono8": _EncodingInfo(1, 1, cv2.COLOR_GRAY2BGR),
    "8UC1": _EncodingInfo(1, 1, cv2.COLOR_GRAY2BGR),
    "8UC3": _EncodingInfo(3, 1, None),
    "8UC4": _EncodingInfo(4, 1, cv2.COLOR_BGRA2BGR),
    "bgr16": _EncodingInfo(3, 2, None),
    "rgb16": _EncodingInfo(3, 2, cv2.COLOR_RGB2BGR),
    "bgra16": _EncodingInfo(4, 2, cv2.COLOR_BGRA2BGR),
    "rgba16": _EncodingInfo(4, 2, cv2.COLOR_RGBA2BGR),
    "mono16": _EncodingInfo(1, 2, cv2.COLOR_GRAY2BGR),
    # ROS "yuv422" is UYVY (see image_encodings.hpp); "yuv422_yuy2" is YUYV.
    "yuv422": _EncodingInfo(2, 1, cv2.COLOR_YUV2BGR_UYVY, packed_yuv=True),
    "uyvy": _EncodingInfo(2, 1, cv2.COLOR_YUV2BGR_UYVY, packed_yuv=True),
    "yuv422_yuy2": _EncodingInfo(2, 1, cv2.COLOR_YUV2BGR_YUY2, packed_yuv=True),
    "yuyv": _EncodingInfo(2, 1, cv2.COLOR_YUV2BGR_YUY2, packed_yuv=True),
}

#: Encodings :func:`image_to_bgr` accepts.
SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_ENCODINGS)

#: Largest side accepted (the pipeline's limit), a guard against absurd headers.
MAX_SIDE = DEFAULT_MAX_SIDE
#: Smallest side accepted (the pipeline's limit: no face fits in fewer pixels).
MIN_SIDE = DEFAULT_MIN_SIDE
#: Largest decoded size of a compressed image, in pixels.
MAX_PIXELS = DEFAULT_MAX_PIXELS


def validate_image(msg: Image) -> _EncodingInfo:
    """Check encoding, size, step and data length of ``msg``.

    Raises:
        ImageConversionError: naming the inconsistent field and its value.
    """
    info = _ENCODINGS.get(msg.encoding)
    if info is None:
        raise ImageConversionError(
            f"unsupported image encoding {msg.encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}"
        )
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageConversionError(f"zero-size image ({width}x{height})")
    if height > MAX_SIDE or width > MAX_SIDE:
        raise ImageConversionError(f"image too large ({width}x{height}, limit {MAX_SIDE} per side)")
    if info.packed_yuv and width % 2:
        raise ImageConversionError(f"{msg.encoding} needs an even width, got {width}")
    row_bytes = width * info.channels * info.bytes_per_channel
    if step < row_bytes:
        raise ImageConversionError(
            f"step {step} is smaller than width*bytes_per_pixel = {width}*"
            f"{info.channels * info.bytes_per_channel} = {row_bytes} for {msg.encoding}"
        )
    if info.bytes_per_channel > 1 and step % info.bytes_per_channel:
        raise ImageConversionError(f"step {step} is not a multiple of 2 for 16-bit {msg.encoding}")
    expected = step * height
    actual = len(msg.data)
    if actual != expected:
        kind = "truncated" if actual < expected else "longer than the header says"
        raise ImageConversionError(
            f"image data has {actual} bytes but step*height = {step}*{height} = {expected} ({kind})"
        )
    return info


def _pixels(msg: Image, info: _EncodingInfo) -> np.ndarray:
    """View of the pixel rows without row padding, shape (H, W, C) (C=2 for packed YUV)."""
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    raw = np.frombuffer(msg.data, dtype=np.uint8).reshape(height, step)
    rows = raw[:, : width * info.channels * info.bytes_per_channel]
    if info.bytes_per_channel == 1:
        return rows.reshape(height, width, info.channels)
    dtype = np.dtype(">u2" if msg.is_bigendian else "<u2")
    return np.ascontiguousarray(rows).view(dtype).reshape(height, width, info.channels)


def _numpy_to_bgr(msg: Image, info: _EncodingInfo) -> np.ndarray:
    pixels = _pixels(msg, info)
    if info.bytes_per_channel == 2:
        # cv_bridge scales 16 -> 8 bit by 1/256 with rounding (cv::Mat::convertTo).
        pixels = cv2.convertScaleAbs(pixels.astype(np.uint16), alpha=1.0 / 256.0)
        pixels = pixels.reshape(int(msg.height), int(msg.width), info.channels)
    if info.to_bgr is None:
        return np.ascontiguousarray(pixels)
    if info.channels == 1:
        pixels = pixels[:, :, 0]
    return cv2.cvtColor(np.ascontiguousarray(pixels), info.to_bgr)


class _CvBridgeAdapter:
    """cv_bridge when it imports and converts a probe image like the NumPy path."""

    def __init__(self) -> None:
        self.bridge = None
        self.reason = "not tried"
        if os.environ.get("LECHPE_DISABLE_CV_BRIDGE", "") not in ("", "0"):
            self.reason = "disabled by LECHPE_DISABLE_CV_BRIDGE"
            return
        try:
            from cv_bridge import CvBridge  # ROS 2 robots; not installable everywhere

            bridge = CvBridge()
            probe = np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 4, 3)
            msg = bridge.cv2_to_imgmsg(probe, encoding="rgb8")
            back = bridge.imgmsg_to_cv2(msg, desired_encoding="bgr8")
            if not np.array_equal(back, probe[:, :, ::-1]):
                raise RuntimeError("probe conversion differs from the reference")
        except Exception as exc:  # ImportError, or the ROS 1 wheel failing on NumPy 2
            self.reason = f"{type(exc).__name__}: {exc}"
            return
        self.bridge = bridge
        self.reason = "ok"

    def to_bgr(self, msg: Image) -> np.ndarray:
        try:
            return np.asarray(self.bridge.imgmsg_to_cv2(msg, desired_encoding="bgr8"))
        except Exception as exc:  # CvBridgeError and friends
            raise ImageConversionError(
                f"cv_bridge could not convert {msg.encoding}: {exc}"
            ) from exc


_BRIDGE: _CvBridgeAdapter | None = None


def _bridge() -> _CvBridgeAdapter:
    global _BRIDGE
    if _BRIDGE is None:
        _BRIDGE = _CvBridgeAdapter()
        _LOG.debug("cv_bridge: %s", _BRIDGE.reason)
    return _BRIDGE


def converter_name() -> str:
    """``"cv_bridge"`` or ``"numpy"``: which conversion :func:`image_to_bgr` uses."""
    return "cv_bridge" if _bridge().bridge is not None else "numpy"


def image_to_bgr(msg: Image, use_cv_bridge: bool = True) -> np.ndarray:
    """Convert a ``sensor_msgs/Image`` to a BGR frame.

    Args:
        msg: the message; any encoding of :data:`SUPPORTED_ENCODINGS`.
        use_cv_bridge: use cv_bridge when it is available and works.

    Returns:
        ``(H, W, 3)`` ``uint8`` BGR array (a copy or a view of ``msg.data``).

    Raises:
        ImageConversionError: unknown encoding, zero size, step smaller than a
            row, data length different from ``step * height``.
    """
    info = validate_image(msg)
    if use_cv_bridge and _bridge().bridge is not None:
        return _bridge().to_bgr(msg)
    return _numpy_to_bgr(msg, info)


def compressed_to_bgr(msg: CompressedImage) -> np.ndarray:
    """Decode a ``sensor_msgs/CompressedImage`` (JPEG, PNG, ...) to BGR ``uint8``.

    The size the header declares is checked before any decoding (a 300-byte
    file declaring 40000x40000 px is refused in microseconds, without
    allocating), and decoders print nothing (see
    :func:`lechpe_model.image_checks.decode_image_bytes`).

    Raises:
        ImageConversionError: empty data, a depth format, an unrecognised or
            corrupt header, a declared size above the limits, or bytes that
            cannot be decoded.
    """
    fmt = str(msg.format)
    if "compresseddepth" in fmt.lower():
        raise ImageConversionError(f"compressed depth images are not supported (format {fmt!r})")
    if len(msg.data) == 0:
        raise ImageConversionError("compressed image has no data")
    try:
        return decode_image_bytes(bytes(msg.data), max_side=MAX_SIDE, max_pixels=MAX_PIXELS)
    except InvalidImage as exc:
        raise ImageConversionError(f"compressed image (format {fmt!r}): {exc}") from exc


def message_to_bgr(msg) -> np.ndarray:
    """``Image`` or ``CompressedImage`` -> BGR, refusing frames the pipeline cannot use.

    Frames smaller than :data:`MIN_SIDE` or larger than :data:`MAX_SIDE` a
    side are refused here (the node counts them *rejected*), with the same
    limits the pipeline applies.

    Raises:
        ImageConversionError: naming the problem.
    """
    if isinstance(msg, CompressedImage):
        bgr = compressed_to_bgr(msg)
        height, width = bgr.shape[:2]
    else:
        height, width = int(msg.height), int(msg.width)
    if min(height, width) < MIN_SIDE and min(height, width) > 0:
        raise ImageConversionError(
            f"image too small ({width}x{height}, at least {MIN_SIDE} px a side)"
        )
    if isinstance(msg, CompressedImage):
        return bgr
    return image_to_bgr(msg)


def bgr_to_image(bgr: np.ndarray, header=None, encoding: str = "bgr8") -> Image:
    """Build a ``sensor_msgs/Image`` from a BGR ``uint8`` frame.

    Args:
        bgr: ``(H, W, 3)`` uint8 BGR.
        header: ``std_msgs/Header`` to copy (stamp, frame_id), or None.
        encoding: ``bgr8``, ``rgb8`` or ``mono8`` (the data is converted).
    """
    bgr = np.asarray(bgr)
    if bgr.dtype != np.uint8 or bgr.ndim != 3 or bgr.shape[2] != 3:
        raise ImageConversionError(f"expected (H, W, 3) uint8 BGR, got {bgr.shape} {bgr.dtype}")
    if encoding == "bgr8":
        pixels = bgr
    elif encoding == "rgb8":
        pixels = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    elif encoding == "mono8":
        pixels = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    else:
        raise ImageConversionError(f"bgr_to_image cannot write encoding {encoding!r}")
    pixels = np.ascontiguousarray(pixels)
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(pixels.shape[0]), int(pixels.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(pixels.strides[0])
    msg.data = pixels.tobytes()
    return msg


def bgr_to_compressed(
    bgr: np.ndarray, header=None, fmt: str = "jpeg", quality: int = 90
) -> CompressedImage:
    """Encode a BGR frame as ``sensor_msgs/CompressedImage`` (``jpeg`` or ``png``)."""
    ext = {"jpeg": ".jpg", "jpg": ".jpg", "png": ".png"}.get(fmt)
    if ext is None:
        raise ImageConversionError(f"cannot encode compressed format {fmt!r} (jpeg or png)")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if ext == ".jpg" else []
    ok, encoded = cv2.imencode(ext, np.asarray(bgr), params)
    if not ok:
        raise ImageConversionError(f"OpenCV could not encode the frame as {fmt}")
    msg = CompressedImage()
    if header is not None:
        msg.header = header
    msg.format = "jpeg" if ext == ".jpg" else "png"
    msg.data = encoded.tobytes()
    return msg
