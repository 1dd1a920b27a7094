"""Frame validation and normalisation to 8-bit BGR (what detectors and crops expect).

Accepted inputs and what happens to them (anything else is refused with an
:class:`InvalidImage` naming the problem):

==========================  ===================================================
input                       result
==========================  ===================================================
(H, W, 3) uint8             used as is (BGR)
(H, W) or (H, W, 1)         grayscale -> BGR (three equal channels)
(H, W, 4)                   BGRA -> BGR (alpha dropped)
uint16                      scaled to uint8 (x * 255 / 65535, rounded)
bool                        False -> 0, True -> 255
float32/float64 in [0, 1]   scaled to uint8 (x * 255, rounded); values outside
                            [0, 1] are refused (ambiguous scale: convert to
                            uint8 yourself), NaN/inf are refused
empty, smaller than         refused: no face can be found
``min_side`` px
larger than ``max_side``    refused before any work (default 8192 px a side)
==========================  ===================================================
"""

from __future__ import annotations

import io
import struct
import threading
import zlib
from dataclasses import dataclass

import cv2
import numpy as np

#: Default largest accepted side in pixels.
DEFAULT_MAX_SIDE = 8192
#: Smallest accepted side in pixels (the detectors find no face below ~10 px).
DEFAULT_MIN_SIDE = 8


class InvalidImage(ValueError):
    """A frame that cannot be processed; the message says why."""


def describe(image) -> str:
    """Short description of an array-like for error messages."""
    if isinstance(image, np.ndarray):
        return f"{image.dtype} array of shape {image.shape}"
    return type(image).__name__


def to_bgr8(
    image: np.ndarray,
    max_side: int = DEFAULT_MAX_SIDE,
    min_side: int = DEFAULT_MIN_SIDE,
) -> np.ndarray:
    """Validate a frame and convert it to a contiguous ``(H, W, 3)`` uint8 BGR array.

    Raises:
        InvalidImage: naming the problem (see the module table).
    """
    if not isinstance(image, np.ndarray):
        raise InvalidImage(f"expected a NumPy image array, got {describe(image)}")
    if image.ndim not in (2, 3) or image.size == 0:
        raise InvalidImage(f"empty or malformed image: {describe(image)} (expected (H, W[, C]))")
    height, width = image.shape[:2]
    if max(height, width) > max_side:
        raise InvalidImage(
            f"image of {width}x{height} px exceeds the limit of {max_side} px a side "
            f"(raise max_side or downscale the frames)"
        )
    if min(height, width) < min_side:
        raise InvalidImage(
            f"image of {width}x{height} px is too small (at least {min_side} px a side needed)"
        )
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels not in (1, 3, 4):
        raise InvalidImage(f"unsupported number of channels {channels} ({describe(image)})")
    image = _to_uint8(image)
    if channels == 1:
        return cv2.cvtColor(image.reshape(height, width), cv2.COLOR_GRAY2BGR)
    if channels == 4:
        return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(image)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return np.round(image.astype(np.float32) * np.float32(255.0 / 65535.0)).astype(np.uint8)
    if image.dtype == np.bool_:
        return image.astype(np.uint8) * np.uint8(255)
    if image.dtype in (np.float16, np.float32, np.float64):
        if not np.all(np.isfinite(image)):
            raise InvalidImage(f"image contains NaN or infinite values ({describe(image)})")
        low, high = float(image.min()), float(image.max())
        if low < 0.0 or high > 1.0:
            raise InvalidImage(
                f"float image values span [{low:g}, {high:g}]; float images must lie in "
                f"[0, 1] (convert other scales to uint8 first)"
            )
        return np.round(image.astype(np.float32) * np.float32(255.0)).astype(np.uint8)
    raise InvalidImage(
        f"unsupported pixel type {image.dtype} (use uint8, uint16, bool or float in [0, 1])"
    )


# ----------------------------------------------------------------------------- encoded images
#: Largest decoded frame accepted from an encoded (compressed) image: 32 Mpx,
#: 96 MB as BGR, so a lying header cannot make a decoder allocate more.
DEFAULT_MAX_PIXELS = 32_000_000

#: Formats whose size :func:`declared_size` reads from the header.
SIZED_FORMATS = ("png", "jpeg", "gif", "bmp", "webp", "tiff", "pnm")


@dataclass(frozen=True)
class DeclaredSize:
    """What an encoded image's header says: format and size in pixels."""

    format: str
    width: int
    height: int


def _u16be(data: bytes, at: int) -> int:
    return struct.unpack_from(">H", data, at)[0]


def _png_size(data: bytes) -> tuple[int, int]:
    # IHDR must be the first chunk; its CRC tells garbage behind the signature.
    if len(data) < 33 or data[12:16] != b"IHDR" or struct.unpack_from(">I", data, 8)[0] != 13:
        raise InvalidImage("PNG without an IHDR header chunk")
    if zlib.crc32(data[12:29]) != struct.unpack_from(">I", data, 29)[0]:
        raise InvalidImage("PNG header chunk IHDR has a wrong CRC (corrupt data)")
    return struct.unpack_from(">II", data, 16)


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(data: bytes) -> tuple[int, int]:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise InvalidImage(f"JPEG marker expected at byte {pos} (corrupt data)")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            break
        length = _u16be(data, pos + 2)
        if length < 2:
            raise InvalidImage(f"JPEG segment of length {length} at byte {pos} (corrupt data)")
        if marker in _JPEG_SOF:
            if pos + 9 > len(data):
                break
            height, width = _u16be(data, pos + 5), _u16be(data, pos + 7)
            if height == 0:  # size given later in a DNL marker: cannot size it up front
                raise InvalidImage("JPEG whose height is defined later (DNL) is not supported")
            return width, height
        pos += 2 + length
    raise InvalidImage("JPEG without a frame header (truncated or corrupt data)")


def _gif_size(data: bytes) -> tuple[int, int]:
    if len(data) < 13:
        raise InvalidImage("GIF shorter than its header (truncated)")
    width, height = struct.unpack_from("<HH", data, 6)
    pos = 13
    if data[10] & 0x80:  # global colour table
        pos += 3 * (2 << (data[10] & 0x07))
    # Decoders may grow the canvas to the first frame: include its extent.
    while pos < len(data):
        block = data[pos]
        if block == 0x2C:  # image descriptor
            if pos + 9 > len(data):
                break
            left, top, w, h = struct.unpack_from("<HHHH", data, pos + 1)
            return max(width, left + w), max(height, top + h)
        if block != 0x21 or pos + 2 > len(data):  # only extensions may come before a frame
            break
        pos += 2
        while pos < len(data) and data[pos]:  # data sub-blocks
            pos += 1 + data[pos]
        pos += 1
    raise InvalidImage("GIF without an image (truncated or corrupt data)")


def _bmp_size(data: bytes) -> tuple[int, int]:
    if len(data) < 26:
        raise InvalidImage("BMP shorter than its header (truncated)")
    header_size = struct.unpack_from("<I", data, 14)[0]
    if header_size == 12:
        return struct.unpack_from("<HH", data, 18)
    if header_size < 40:
        raise InvalidImage(f"BMP with an unknown header size {header_size}")
    width, height = struct.unpack_from("<ii", data, 18)
    return abs(width), abs(height)  # negative height: top-down rows


def _webp_size(data: bytes) -> tuple[int, int]:
    if len(data) < 30:
        raise InvalidImage("WebP shorter than its header (truncated)")
    chunk = data[12:16]
    if chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise InvalidImage("WebP VP8 frame without its start code (corrupt data)")
        return _u16le(data, 26) & 0x3FFF, _u16le(data, 28) & 0x3FFF
    if chunk == b"VP8L":
        if data[20] != 0x2F:
            raise InvalidImage("WebP lossless frame without its signature (corrupt data)")
        bits = struct.unpack_from("<I", data, 21)[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    raise InvalidImage(f"WebP with an unknown first chunk {chunk!r}")


def _u16le(data: bytes, at: int) -> int:
    return struct.unpack_from("<H", data, at)[0]


def _tiff_size(data: bytes) -> tuple[int, int]:
    order = "<" if data[:2] == b"II" else ">"
    offset = struct.unpack_from(order + "I", data, 4)[0]
    if offset + 2 > len(data):
        raise InvalidImage("TIFF directory offset beyond the data (truncated or corrupt)")
    count = struct.unpack_from(order + "H", data, offset)[0]
    size: dict[int, int] = {}
    for i in range(count):
        at = offset + 2 + 12 * i
        if at + 12 > len(data):
            break
        tag, kind = struct.unpack_from(order + "HH", data, at)
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT or LONG
            fmt = {3: "H", 4: "I"}.get(kind)
            if fmt is None:
                raise InvalidImage(f"TIFF size tag {tag} of unsupported type {kind}")
            size[tag] = struct.unpack_from(order + fmt, data, at + 8)[0]
    if 256 not in size or 257 not in size:
        raise InvalidImage("TIFF without ImageWidth/ImageLength (truncated or corrupt)")
    return size[256], size[257]


def _pnm_size(data: bytes) -> tuple[int, int]:
    # "P5 <width> <height> ..." with whitespace and # comments between fields.
    fields: list[int] = []
    pos = 2
    while len(fields) < 2 and pos < min(len(data), 1024):
        byte = data[pos : pos + 1]
        if byte == b"#":
            end = data.find(b"\n", pos)
            pos = len(data) if end < 0 else end + 1
        elif byte.isspace():
            pos += 1
        else:
            end = pos
            while end < len(data) and data[end : end + 1].isdigit():
                end += 1
            if end == pos:
                raise InvalidImage("PNM header with a non-numeric size field")
            fields.append(int(data[pos:end]))
            pos = end
    if len(fields) < 2:
        raise InvalidImage("PNM header without width and height (truncated)")
    return fields[0], fields[1]


def declared_size(data: bytes) -> DeclaredSize:
    """Format and size an encoded image declares, read from its header only (no decoding).

    Raises:
        InvalidImage: an unrecognised format (anything that cannot be sized
            safely before decoding is refused) or a corrupt/truncated header.
    """
    data = bytes(data)
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n"):
            fmt, size = "png", _png_size(data)
        elif data.startswith(b"\xff\xd8"):
            fmt, size = "jpeg", _jpeg_size(data)
        elif data[:6] in (b"GIF87a", b"GIF89a"):
            fmt, size = "gif", _gif_size(data)
        elif data.startswith(b"BM"):
            fmt, size = "bmp", _bmp_size(data)
        elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            fmt, size = "webp", _webp_size(data)
        elif data[:4] in (b"II*\x00", b"MM\x00*"):
            fmt, size = "tiff", _tiff_size(data)
        elif len(data) > 2 and data[0:1] == b"P" and data[1:2] in b"123456":
            fmt, size = "pnm", _pnm_size(data)
        else:
            raise InvalidImage(
                f"unrecognised image format (first bytes {data[:8].hex()}); "
                f"supported: {', '.join(SIZED_FORMATS)}"
            )
    except struct.error as exc:
        raise InvalidImage(f"image header is truncated ({len(data)} bytes)") from exc
    return DeclaredSize(fmt, int(size[0]), int(size[1]))


def check_declared_size(
    data: bytes,
    max_side: int = DEFAULT_MAX_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> DeclaredSize:
    """:func:`declared_size`, refusing sizes a decoder must not be asked to allocate.

    Raises:
        InvalidImage: unsized/corrupt header, zero size, a side above ``max_side``
            or more than ``max_pixels`` pixels (names the declared size).
    """
    size = declared_size(data)
    width, height = size.width, size.height
    if width <= 0 or height <= 0:
        raise InvalidImage(f"{size.format} header declares an empty image ({width}x{height})")
    if max(width, height) > max_side:
        raise InvalidImage(
            f"{size.format} header declares {width}x{height} px, above the limit of "
            f"{max_side} px a side (refused before decoding)"
        )
    if width * height > max_pixels:
        raise InvalidImage(
            f"{size.format} header declares {width}x{height} = {width * height} px, above the "
            f"limit of {max_pixels} px (refused before decoding)"
        )
    return size


_DECODE_LOCK = threading.Lock()


def decode_image_bytes(
    data: bytes,
    unchanged: bool = False,
    max_side: int = DEFAULT_MAX_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode an encoded image after checking its declared size; decoders stay quiet.

    Args:
        data: the file's bytes.
        unchanged: keep bit depth, alpha and gray as stored (``IMREAD_UNCHANGED``);
            otherwise 8-bit BGR.
        max_side, max_pixels: limits checked on the header before any decoding.

    Returns:
        The decoded array (``(H, W, 3)`` uint8 BGR unless ``unchanged``).

    Raises:
        InvalidImage: naming the format and the problem (unsized, too large,
            corrupt, or a decoded size different from the declared one).
    """
    size = check_declared_size(data, max_side=max_side, max_pixels=max_pixels)
    flags = cv2.IMREAD_UNCHANGED if unchanged else cv2.IMREAD_COLOR
    buffer = np.frombuffer(data, dtype=np.uint8)
    image = None
    error = ""
    with _DECODE_LOCK:  # OpenCV's log level is process-wide: silence it only around decoding
        previous = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        try:
            image = _decode_with_pillow(data, size.format, unchanged)
            if image is None:
                image = cv2.imdecode(buffer, flags)
        except (cv2.error, OSError, ValueError, SyntaxError) as exc:
            error = f": {type(exc).__name__}: {str(exc).strip().splitlines()[-1][:200]}"
        finally:
            cv2.utils.logging.setLogLevel(previous)
    if image is None or image.size == 0:
        raise InvalidImage(
            f"could not decode {len(data)} bytes of {size.format} "
            f"({size.width}x{size.height} declared){error}"
        )
    if image.shape[0] > size.height or image.shape[1] > size.width:
        raise InvalidImage(
            f"{size.format} decoded to {image.shape[1]}x{image.shape[0]} px, larger than its "
            f"header's {size.width}x{size.height}"
        )
    return image


def _decode_with_pillow(data: bytes, fmt: str, unchanged: bool) -> np.ndarray | None:
    """JPEG, PNG and GIF through Pillow when it is installed: its decoders print nothing.

    OpenCV's libjpeg and libpng print "Corrupt JPEG data ..." / "libpng error
    ..." to stderr for every damaged frame. Returns None (OpenCV decodes
    then) without Pillow, for other formats, and for 16-bit colour PNGs read
    ``unchanged`` (Pillow keeps 8 bits of those).
    """
    if fmt not in ("jpeg", "png", "gif"):
        return None
    if fmt == "png" and unchanged and data[24] == 16 and data[25] in (2, 6):
        return None
    try:
        from PIL import Image as PILImage
    except ImportError:
        return None
    with PILImage.open(io.BytesIO(data)) as pil:
        pil.load()
        mode = pil.mode
        if mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit gray
            gray16 = np.asarray(pil).astype(np.uint16)
            if unchanged:
                return gray16
            return cv2.cvtColor((gray16 >> 8).astype(np.uint8), cv2.COLOR_GRAY2BGR)
        if mode == "L" or mode == "1":
            gray = np.asarray(pil.convert("L"))
            return gray.copy() if unchanged else cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
        has_alpha = "A" in mode or "transparency" in pil.info
        if unchanged and has_alpha:
            rgba = np.asarray(pil.convert("RGBA"))
            return cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA)
        rgb = np.asarray(pil.convert("RGB"))
    return np.ascontiguousarray(rgb[:, :, ::-1])
