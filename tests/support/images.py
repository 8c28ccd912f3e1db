"""Test photos of every kind a user might send, written as real files (registered as fixtures).

Plain functions (``photo_bytes``, ``write_photo``) serve tests that need a photo without a
fixture, e.g. a bot test uploading one through the fake Bot API.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

#: Colours the fixtures paint, so tests can find them again after rotation and resizing.
RED = (220, 30, 30)
BLUE = (30, 60, 220)
GREEN = (30, 200, 60)
GREY = (128, 128, 128)

#: EXIF tag number of Orientation.
EXIF_ORIENTATION = 0x0112


def scene(size: tuple[int, int], *, corner: tuple[int, int, int] = RED) -> Image.Image:
    """A grey RGB picture with its top-left quarter painted ``corner``: easy to locate."""
    image = Image.new("RGB", size, GREY)
    image.paste(corner, (0, 0, size[0] // 2, size[1] // 2))
    return image


def photo_bytes(size: tuple[int, int] = (96, 64), fmt: str = "JPEG") -> bytes:
    """An ordinary photo (``scene``) encoded as ``fmt``."""
    buffer = io.BytesIO()
    scene(size).save(buffer, format=fmt, quality=95)
    return buffer.getvalue()


def write_photo(path: Path, size: tuple[int, int] = (96, 64), fmt: str = "JPEG") -> Path:
    """Write ``photo_bytes`` to ``path`` and return it."""
    path.write_bytes(photo_bytes(size, fmt))
    return path


def bomb_png_bytes(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid 1-bit PNG of ``width``x``height`` black pixels: a few kB declaring 400 MP.

    Built chunk by chunk so the test never holds the decoded image in memory.
    """

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


@pytest.fixture
def landscape_jpeg(tmp_path: Path) -> Path:
    """A 96x64 landscape JPEG, red top-left quarter."""
    return write_photo(tmp_path / "landscape.jpg", (96, 64))


@pytest.fixture
def portrait_png(tmp_path: Path) -> Path:
    """A 64x96 portrait PNG, red top-left quarter."""
    return write_photo(tmp_path / "portrait.png", (64, 96), fmt="PNG")


@pytest.fixture
def exif_rotated_jpeg(tmp_path: Path) -> Path:
    """A phone photo stored sideways with EXIF orientation 6 ("rotate 90° clockwise").

    Upright it is 64x96 portrait with a red top-left quarter; the pixels on disk are that
    picture turned 90° anticlockwise (96x64 landscape, red at the bottom left).
    """
    stored = scene((64, 96)).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    path = tmp_path / "sideways.jpg"
    stored.save(path, format="JPEG", quality=95, exif=exif)
    return path


@pytest.fixture
def rgba_png(tmp_path: Path) -> Path:
    """A 96x64 PNG, fully transparent except an opaque blue centre."""
    image = Image.new("RGBA", (96, 64), (0, 0, 0, 0))
    image.paste((*BLUE, 255), (32, 16, 64, 48))
    path = tmp_path / "transparent.png"
    image.save(path)
    return path


@pytest.fixture
def animated_gif(tmp_path: Path) -> Path:
    """A two-frame 96x64 animated GIF: red, then blue."""
    frames = [Image.new("RGB", (96, 64), RED), Image.new("RGB", (96, 64), BLUE)]
    paletted = [frame.convert("P", palette=Image.Palette.ADAPTIVE) for frame in frames]
    path = tmp_path / "animated.gif"
    paletted[0].save(path, save_all=True, append_images=paletted[1:], duration=100, loop=0)
    return path


@pytest.fixture
def cmyk_jpeg(tmp_path: Path) -> Path:
    """A 96x64 CMYK JPEG of pure red ink (magenta + yellow), no colour profile."""
    path = tmp_path / "print.jpg"
    Image.new("CMYK", (96, 64), (0, 255, 255, 0)).save(path, format="JPEG", quality=95)
    return path


@pytest.fixture
def gray16_png(tmp_path: Path) -> Path:
    """A 96x64 16-bit greyscale PNG: a left-to-right ramp over the full 0-65535 range."""
    ramp = np.linspace(0, 65535, 96).round().astype(np.uint16)
    path = tmp_path / "scan16.png"
    Image.fromarray(np.tile(ramp, (64, 1))).save(path)
    return path


@pytest.fixture
def square_jpeg(tmp_path: Path) -> Path:
    """A 64x64 JPEG, red top-left quarter."""
    return write_photo(tmp_path / "square.jpg", (64, 64))


@pytest.fixture
def truncated_jpeg(tmp_path: Path) -> Path:
    """A real JPEG cut off halfway, as an interrupted upload leaves it."""
    rng = np.random.default_rng(1)
    noisy = Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    noisy.save(buffer, format="JPEG", quality=95)
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: buffer.tell() // 2])
    return path


@pytest.fixture
def text_as_jpg(tmp_path: Path) -> Path:
    """A text file named like a photo."""
    path = tmp_path / "notes.jpg"
    path.write_text("Shopping list: eggs, milk, bread.\n")
    return path


@pytest.fixture
def empty_jpg(tmp_path: Path) -> Path:
    """A zero-byte file named like a photo."""
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    return path


@pytest.fixture
def bomb_png(tmp_path: Path) -> Path:
    """A decompression bomb: a small PNG declaring 20000x20000 pixels."""
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png_bytes())
    return path
