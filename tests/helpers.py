"""Test data that several test modules build (plain functions, for use in parametrize too)."""

import io
import struct
import zlib

from PIL import Image


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    """The bytes of `image` saved as `fmt`."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def bomb_png() -> bytes:
    """A valid 1x1 PNG whose header claims 40000 x 40000 pixels."""
    data = bytearray(encode(Image.new("RGB", (1, 1))))
    ihdr = bytearray(data[12:29])  # b'IHDR' + 13 bytes of fields
    ihdr[4:12] = struct.pack(">II", 40000, 40000)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)
