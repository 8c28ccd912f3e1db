"""Turn an uploaded photo of any format and mode into an upright RGB frame of the target size.

Example::

    >>> prepared = prepare_image(Path("cat.jpg"), ImageSettings())
    >>> prepared.image.size, prepared.orientation, prepared.aspect_ratio
    ((1024, 576), 'landscape', '16:9')

Everything here is synchronous and CPU-bound; async callers run it with ``asyncio.to_thread``.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageFilter, ImageOps, UnidentifiedImageError

from generator.config import ImageSettings
from generator.errors import InvalidImage

log = logging.getLogger(__name__)

#: A photo whose long side is within this factor of its short side is treated as square.
SQUARE_TOLERANCE = 1.05

_EMPTY = "That file is empty. Please send the photo again."
_DAMAGED = "That photo seems damaged or incomplete. Please send it again."
_NOT_FOUND = "I couldn't find that photo file."

# Magic numbers at offset 0, longest first where one is a prefix of another.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"BM", "bmp"),
)
# ISO-BMFF brands (bytes 8-12 after "ftyp" at 4) of still-image containers.
_FTYP_BRANDS = {
    b"avif": "avif",
    b"avis": "avif",
    b"heic": "heic",
    b"heix": "heic",
    b"heim": "heic",
    b"heis": "heic",
    b"hevc": "heic",
    b"mif1": "heic",
    b"msf1": "heic",
}


@dataclass(frozen=True)
class PreparedImage:
    """A photo made ready for a backend.

    Attributes:
        image: RGB, exactly the configured target size.
        orientation: ``"landscape"``, ``"portrait"`` or ``"square"`` (of the source photo).
        aspect_ratio: what Veo is asked for, ``"16:9"`` or ``"9:16"``; squares get ``"16:9"``.
        source_size: (width, height) of the photo after its EXIF rotation.
    """

    image: Image.Image
    orientation: str
    aspect_ratio: str
    source_size: tuple[int, int]

    def jpeg_bytes(self, quality: int = 95) -> bytes:
        """The image as a baseline JPEG, the form Veo is sent."""
        buffer = io.BytesIO()
        self.image.save(buffer, format="JPEG", quality=quality, optimize=True)
        return buffer.getvalue()


def sniff_image(data: bytes) -> str | None:
    """Name the image format from the first bytes (``"jpeg"``, ``"png"``, ...), or ``None``.

    A cheap check on a file's head (16 bytes suffice) before accepting or decoding it; it
    says what the file claims to be, not that it decodes.
    """
    for magic, name in _SIGNATURES:
        if data.startswith(magic):
            return name
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if len(data) >= 12 and data[4:8] == b"ftyp":
        return _FTYP_BRANDS.get(data[8:12])
    return None


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says, read without decoding a pixel."""

    format: str  # Pillow's name: "JPEG", "PNG", "WEBP"...
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def read_header(data: bytes, settings: ImageSettings) -> ImageHeader:
    """The format and size of an image file, or ``InvalidImage`` saying why it is refused.

    Cheap whatever the image's size: Pillow's ``Image.open`` parses the header and leaves the
    pixels undecoded, so a small PNG declaring 50 megapixels costs its file size, not the
    bitmap's 150 MB. Refuses what ``load_image`` would refuse before its decode (not an image,
    no pixels, over ``max_pixels``).

    Example::

        >>> read_header(Path("cat.jpg").read_bytes(), ImageSettings())
        ImageHeader(format='JPEG', width=4032, height=3024)
    """
    with _open(data, settings) as image:
        return ImageHeader(image.format or "", *image.size)


def _open(data: bytes, settings: ImageSettings) -> Image.Image:
    """``Image.open`` with its header checked: pixels declared, within ``max_pixels``."""
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise InvalidImage("not a recognised image format") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_many_pixels(settings.max_pixels) from exc
    except Exception as exc:  # a header so broken Pillow fails while parsing it
        raise InvalidImage(f"unreadable image header: {exc}", user_text=_DAMAGED) from exc

    # Checked before decoding: a tiny file can declare billions of pixels. Pillow's own
    # global limit stays untouched (other threads rely on it); this limit is per call.
    width, height = image.size
    if width * height > settings.max_pixels:
        image.close()
        raise _too_many_pixels(settings.max_pixels)
    if width == 0 or height == 0:
        image.close()
        raise InvalidImage("image has no pixels", user_text=_DAMAGED)
    return image


def load_image(source: Path | bytes, settings: ImageSettings) -> Image.Image:
    """Decode a photo into an upright RGB image, or raise ``InvalidImage`` saying why.

    Args:
        source: the file's path or its bytes.
        settings: ``max_file_bytes`` and ``max_pixels`` bound what is accepted.

    The EXIF orientation is applied; transparency is flattened onto white; animated images
    give their first frame; 16-bit and floating-point images are scaled to 8 bits.
    """
    data = _read(source, settings.max_file_bytes)
    image = _open(data, settings)
    try:
        image.seek(0)  # animated GIF/APNG/WebP: the first frame is the photo
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_many_pixels(settings.max_pixels) from exc
    except Exception as exc:  # decoders raise OSError, SyntaxError, EOFError, zlib.error...
        raise InvalidImage(f"image data is damaged: {exc}", user_text=_DAMAGED) from exc

    image = _upright(image)
    return _to_rgb(image)


def prepare_image(
    source: Path | bytes,
    settings: ImageSettings,
    *,
    size: Callable[[int, int], tuple[int, int]] | None = None,
) -> PreparedImage:
    """Load a photo and fit it to the target size for its orientation.

    Args:
        source: the file's path or its bytes.
        settings: ``landscape_size`` / ``portrait_size`` are the outputs; ``square`` says what
            a square photo becomes: ``"crop"`` (centre crop to the landscape size) or
            ``"pad"`` (the whole photo, inside the landscape size, over a blurred copy).
        size: the engine's own choice of output size for an upright ``(width, height)``
            photo (LTX-Video keeps the photo's aspect); overrides the two settings sizes.

    Landscape and portrait photos are scaled to cover the target and centre-cropped, so the
    subject stays in the middle.
    """
    # 1. Decode and validate
    image = load_image(source, settings)
    width, height = image.size

    # 2. Classify
    if max(width, height) <= SQUARE_TOLERANCE * min(width, height):
        orientation = "square"
    elif width > height:
        orientation = "landscape"
    else:
        orientation = "portrait"

    # 3. Fit to the target
    if size is not None:
        target = size(width, height)
        divisor = math.gcd(*target)
        aspect = f"{target[0] // divisor}:{target[1] // divisor}"
    elif orientation == "portrait":
        target, aspect = settings.portrait_size, "9:16"
    else:
        target, aspect = settings.landscape_size, "16:9"
    if orientation == "square" and settings.square == "pad":
        fitted = _pad_over_blur(image, target)
    else:
        fitted = _cover(image, target)
    return PreparedImage(
        image=fitted, orientation=orientation, aspect_ratio=aspect, source_size=(width, height)
    )


def _read(source: Path | bytes, max_bytes: int) -> bytes:
    """Return the file's bytes, refusing empty and oversized files before decoding."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    else:
        try:
            with open(source, "rb") as handle:
                # One byte over the limit is enough to know it is too large.
                data = handle.read(max_bytes + 1)
        except FileNotFoundError as exc:
            raise InvalidImage(f"{source}: no such file", user_text=_NOT_FOUND) from exc
        except IsADirectoryError as exc:
            raise InvalidImage(f"{source}: is a directory") from exc
    if not data:
        raise InvalidImage("the file is empty", user_text=_EMPTY)
    if len(data) > max_bytes:
        megabytes = max_bytes / (1024 * 1024)
        raise InvalidImage(
            f"file is over {max_bytes} bytes",
            user_text=f"That file is too large (over {megabytes:.0f} MB). "
            "Please send a smaller photo.",
        )
    return data


def _too_many_pixels(max_pixels: int) -> InvalidImage:
    megapixels = max_pixels / 1_000_000
    return InvalidImage(
        f"image has more than {max_pixels} pixels",
        user_text=f"That image has too many pixels (over {megapixels:g} megapixels). "
        "Please send it as a photo rather than a file (Telegram makes it smaller), "
        "or send a smaller one.",
    )


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a malformed EXIF block leaves the photo as stored."""
    try:
        upright = ImageOps.exif_transpose(image)
    except Exception as exc:  # broken EXIF should not cost the user their photo
        log.warning("ignoring unreadable EXIF orientation: %s", exc)
        return image
    return upright


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit sRGB, flattening transparency onto white."""
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _scale_high_depth(image)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode in ("RGB", "CMYK") and "icc_profile" in image.info:
        converted = _icc_to_srgb(image)
        if converted is not None:
            return converted
    try:
        return image.convert("RGB")
    except ValueError as exc:  # e.g. LAB without a profile: nothing sensible to show
        raise InvalidImage(f"unsupported image mode {mode}") from exc


def _icc_to_srgb(image: Image.Image) -> Image.Image | None:
    """Convert through the embedded ICC profile (CMYK, Display P3 phones); ``None`` if none."""
    icc = image.info.get("icc_profile")
    if not icc:
        return None
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return ImageCms.profileToProfile(
            image, source, ImageCms.createProfile("sRGB"), outputMode="RGB"
        )
    except Exception as exc:  # a bad profile: fall back to Pillow's plain conversion
        log.warning("ignoring unusable ICC profile: %s", exc)
        return None


def _scale_high_depth(image: Image.Image) -> Image.Image:
    """Map 16-bit, 32-bit integer or float greyscale to 8 bits without clipping to white."""
    values = np.asarray(image).astype(np.float64)
    if image.mode.startswith("I;16"):
        top = 65535.0
    elif image.mode == "F" and values.size and 0.0 <= values.min() and values.max() <= 1.0:
        top = 1.0  # floats in 0-1, the usual convention for scientific images
    elif values.size and 0.0 <= values.min() and values.max() <= 255.0:
        top = 255.0  # already 8-bit values stored wide
    elif values.size and 0.0 <= values.min() and values.max() <= 65535.0:
        top = 65535.0  # 16-bit PNGs decoded as "I" by older paths
    else:
        # Arbitrary range (signed, HDR floats): stretch what is there to 0-255.
        low, high = float(np.nanmin(values)), float(np.nanmax(values))
        values = values - low
        top = max(high - low, 1e-12)
    scaled = np.clip(np.nan_to_num(values) * (255.0 / top), 0, 255).round().astype(np.uint8)
    return Image.fromarray(scaled, mode="L").convert("RGB")


def _cover(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Scale to cover ``size`` and crop the centre (LANCZOS)."""
    width, height = image.size
    target_w, target_h = size
    scale = max(target_w / width, target_h / height)
    crop_w, crop_h = target_w / scale, target_h / scale
    left, top = (width - crop_w) / 2, (height - crop_h) / 2
    box = (left, top, left + crop_w, top + crop_h)
    # reducing_gap shrinks big photos in a fast first pass; quality stays LANCZOS-level.
    return image.resize(size, Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)


def _pad_over_blur(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Fit the whole photo inside ``size`` over a blurred, enlarged copy of itself."""
    background = _cover(image, size).filter(ImageFilter.GaussianBlur(radius=max(size) / 40))
    foreground = ImageOps.contain(image, size, method=Image.Resampling.LANCZOS)
    offset = ((size[0] - foreground.width) // 2, (size[1] - foreground.height) // 2)
    background.paste(foreground, offset)
    return background
