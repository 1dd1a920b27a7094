"""Hostile encoded images for tests: tiny files whose headers declare huge frames.

Built by hand from the format specifications (PNG chunks with their CRCs, a
baseline JPEG frame header) so the bytes are exactly what a hostile camera or
file could send.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int, payload: int = 200) -> bytes:
    """A well-formed PNG (valid CRCs) whose IHDR declares ``width`` x ``height`` RGB."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * payload)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def jpeg_declaring(width: int, height: int) -> bytes:
    """SOI, a baseline SOF0 frame header declaring ``width`` x ``height`` (3 components),
    and 600 bytes of junk scan data: a 629-byte file like the one in issue 13."""
    sof = struct.pack(">BHHB", 8, height, width, 3) + bytes([1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1])
    segment = b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof
    body = b"\xff\xd8" + segment + b"\xff\xda" + struct.pack(">H", 12) + bytes(10)
    return body + bytes(629 - len(body) - 2) + b"\xff\xd9"


def gif_garbage(n: int = 300, seed: int = 0) -> bytes:
    """Random bytes behind a GIF signature."""
    rng = np.random.default_rng(seed)
    return b"GIF89a" + rng.integers(0, 256, n, dtype=np.uint8).tobytes()
