"""A photo of any kind becomes an upright RGB frame of the right size, or a clear refusal."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from generator.config import ImageSettings
from generator.errors import InvalidImage
from generator.image import load_image, prepare_image, read_header, sniff_image
from tests.support.images import BLUE, GREY, RED, bomb_png_bytes, photo_bytes

# Small targets keep the tests fast; the code is the same at 1024x576.
SETTINGS = ImageSettings(landscape_size=(64, 32), portrait_size=(32, 64))


def colour_at(image: Image.Image, xy: tuple[int, int]) -> tuple[int, int, int]:
    return image.convert("RGB").getpixel(xy)  # type: ignore[return-value]


def near(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 30) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def test_landscape_photo_fills_landscape_size_keeping_its_content_in_place(
    landscape_jpeg: Path,
) -> None:
    prepared = prepare_image(landscape_jpeg, SETTINGS)

    assert prepared.image.mode == "RGB"
    assert prepared.image.size == (64, 32)
    assert (prepared.orientation, prepared.aspect_ratio) == ("landscape", "16:9")
    assert prepared.source_size == (96, 64)
    assert near(colour_at(prepared.image, (8, 4)), RED)
    assert near(colour_at(prepared.image, (56, 28)), GREY)


def test_portrait_photo_gets_portrait_size_and_9_16(portrait_png: Path) -> None:
    prepared = prepare_image(portrait_png, SETTINGS)

    assert prepared.image.size == (32, 64)
    assert (prepared.orientation, prepared.aspect_ratio) == ("portrait", "9:16")


def test_sideways_phone_photo_is_turned_upright_by_its_exif(exif_rotated_jpeg: Path) -> None:
    on_disk = Image.open(exif_rotated_jpeg)
    assert on_disk.size == (96, 64)  # stored landscape, red at the bottom left

    prepared = prepare_image(exif_rotated_jpeg, SETTINGS)

    assert prepared.orientation == "portrait"
    assert prepared.source_size == (64, 96)
    assert prepared.image.size == (32, 64)
    # Upright, the red quarter is top left again.
    assert near(colour_at(prepared.image, (4, 8)), RED)
    assert near(colour_at(prepared.image, (28, 8)), GREY)
    assert near(colour_at(prepared.image, (4, 56)), GREY)


def test_transparent_png_is_flattened_onto_white(rgba_png: Path) -> None:
    prepared = prepare_image(rgba_png, SETTINGS)

    assert prepared.image.mode == "RGB"
    assert near(colour_at(prepared.image, (1, 1)), (255, 255, 255), tolerance=2)
    assert near(colour_at(prepared.image, (32, 16)), BLUE)


def test_animated_gif_uses_its_first_frame(animated_gif: Path) -> None:
    prepared = prepare_image(animated_gif, SETTINGS)

    assert near(colour_at(prepared.image, (32, 16)), RED)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_animated_png_and_webp_use_their_first_frame(fmt: str) -> None:
    frames = [Image.new("RGB", (96, 64), RED), Image.new("RGB", (96, 64), BLUE)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format=fmt, save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(io.BytesIO(buffer.getvalue())).n_frames == 2

    prepared = prepare_image(buffer.getvalue(), SETTINGS)

    assert near(colour_at(prepared.image, (32, 16)), RED)


def test_cmyk_jpeg_keeps_its_colour(cmyk_jpeg: Path) -> None:
    prepared = prepare_image(cmyk_jpeg, SETTINGS)

    assert prepared.image.mode == "RGB"
    red, green, blue = colour_at(prepared.image, (32, 16))
    assert red > 200 and green < 60 and blue < 60


def test_16_bit_greyscale_keeps_its_tones(gray16_png: Path) -> None:
    assert Image.open(gray16_png).mode.startswith("I;16")

    prepared = prepare_image(gray16_png, SETTINGS)

    row = np.asarray(prepared.image)[16, :, 0]
    assert row[0] < 20 and row[-1] > 235  # black to white, not clipped to one end
    assert len(np.unique(row)) > 30  # a ramp, not a few bands
    assert np.all(np.diff(row.astype(int)) >= 0)


def _two_tone(mode: str) -> Image.Image:
    """A 96x64 image in ``mode``: left half dark, right half bright."""
    if mode in ("1", "L"):
        values = np.full((64, 96), 20, dtype=np.uint8)
        values[:, 48:] = 230
        return Image.fromarray(values).convert(mode, dither=Image.Dither.NONE)
    dtype, dark, bright = {
        "I;16": (np.uint16, 20 * 257, 230 * 257),
        "I": (np.int32, 20 * 257, 230 * 257),  # 16-bit values held as 32-bit integers
        "F": (np.float32, 0.08, 0.9),  # floats in 0-1
    }[mode]
    values = np.full((64, 96), dark, dtype=dtype)
    values[:, 48:] = bright
    return Image.fromarray(values)


@pytest.mark.parametrize("mode", ["1", "L", "I", "F", "I;16"])
def test_every_greyscale_mode_comes_out_dark_left_bright_right(mode: str) -> None:
    image = _two_tone(mode)
    assert image.mode == mode
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF")

    prepared = prepare_image(buffer.getvalue(), SETTINGS)

    left, right = colour_at(prepared.image, (4, 16)), colour_at(prepared.image, (60, 16))
    assert max(left) < 60 < 200 < min(right)


def test_palette_image_with_transparency_is_flattened_onto_white() -> None:
    image = Image.new("P", (96, 64), 0)
    image.putpalette([0, 0, 0, *BLUE] + [0] * 762)
    image.paste(1, (32, 16, 64, 48))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=0)

    prepared = prepare_image(buffer.getvalue(), SETTINGS)

    assert near(colour_at(prepared.image, (1, 1)), (255, 255, 255), tolerance=2)
    assert near(colour_at(prepared.image, (32, 16)), BLUE)


def test_greyscale_with_alpha_is_flattened_onto_white() -> None:
    image = Image.new("LA", (96, 64), (0, 0))
    image.paste((40, 255), (32, 16, 64, 48))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")

    prepared = prepare_image(buffer.getvalue(), SETTINGS)

    assert near(colour_at(prepared.image, (1, 1)), (255, 255, 255), tolerance=2)
    assert near(colour_at(prepared.image, (32, 16)), (40, 40, 40))


def test_square_photo_crop_fills_the_landscape_frame_from_its_centre(square_jpeg: Path) -> None:
    prepared = prepare_image(square_jpeg, SETTINGS)

    assert prepared.image.size == (64, 32)
    assert (prepared.orientation, prepared.aspect_ratio) == ("square", "16:9")
    # Source rows 16-48 survive: the red quarter's lower half is the output's top-left.
    assert near(colour_at(prepared.image, (8, 4)), RED)
    assert near(colour_at(prepared.image, (56, 28)), GREY)


def test_square_photo_pad_shows_all_of_it_over_a_blurred_copy(square_jpeg: Path) -> None:
    settings = ImageSettings(landscape_size=(64, 32), portrait_size=(32, 64), square="pad")

    prepared = prepare_image(square_jpeg, settings)

    assert prepared.image.size == (64, 32)
    assert (prepared.orientation, prepared.aspect_ratio) == ("square", "16:9")
    # The whole photo, 32x32, sits centred: red quarter at x 16-32, y 0-16.
    assert near(colour_at(prepared.image, (18, 2)), RED)
    assert near(colour_at(prepared.image, (44, 28)), GREY)
    # The sides are the blurred photo, not flat bars: red bleeds into the grey.
    left_bar = np.asarray(prepared.image)[:, :14, 0].astype(int)
    assert left_bar[2].mean() > left_bar[29].mean() + 20


def test_nearly_square_counts_as_square() -> None:
    prepared = prepare_image(photo_bytes((100, 97)), SETTINGS)

    assert prepared.orientation == "square"


def test_path_and_bytes_give_the_same_image(landscape_jpeg: Path) -> None:
    from_path = prepare_image(landscape_jpeg, SETTINGS)
    from_bytes = prepare_image(landscape_jpeg.read_bytes(), SETTINGS)

    assert from_path.image.tobytes() == from_bytes.image.tobytes()


def test_jpeg_bytes_is_the_prepared_image_as_jpeg(landscape_jpeg: Path) -> None:
    prepared = prepare_image(landscape_jpeg, SETTINGS)

    sent = Image.open(io.BytesIO(prepared.jpeg_bytes()))

    assert sent.format == "JPEG"
    assert sent.size == (64, 32)
    assert near(colour_at(sent, (8, 4)), RED)


def test_load_image_returns_full_size_rgb(exif_rotated_jpeg: Path) -> None:
    image = load_image(exif_rotated_jpeg, SETTINGS)

    assert (image.mode, image.size) == ("RGB", (64, 96))


# --- refusals: each says what is wrong in words a person understands ------------------------


def refusal(source: Path | bytes, settings: ImageSettings = SETTINGS) -> str:
    with pytest.raises(InvalidImage) as caught:
        prepare_image(source, settings)
    return caught.value.user_text


def test_truncated_upload_is_called_damaged(truncated_jpeg: Path) -> None:
    assert "damaged" in refusal(truncated_jpeg)


def test_text_file_named_jpg_is_not_an_image(text_as_jpg: Path) -> None:
    assert "isn't a photo" in refusal(text_as_jpg)


def test_empty_file_is_called_empty(empty_jpg: Path) -> None:
    assert "empty" in refusal(empty_jpg)
    assert "empty" in refusal(b"")


def test_decompression_bomb_is_refused_without_decoding(bomb_png: Path) -> None:
    assert "too many pixels" in refusal(bomb_png)
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # Pillow's global limit left alone


def test_image_over_the_configured_pixel_limit_is_refused(landscape_jpeg: Path) -> None:
    settings = ImageSettings(landscape_size=(64, 32), portrait_size=(32, 64), max_pixels=5_000)

    text = refusal(landscape_jpeg, settings)  # 96x64 = 6144 pixels

    assert "too many pixels" in text
    assert prepare_image(photo_bytes((64, 64)), settings).image.size == (64, 32)  # 4096: fine


def test_file_over_the_byte_limit_is_too_large(landscape_jpeg: Path) -> None:
    size = landscape_jpeg.stat().st_size
    settings = ImageSettings(
        landscape_size=(64, 32), portrait_size=(32, 64), max_file_bytes=size - 1
    )

    assert "too large" in refusal(landscape_jpeg, settings)
    assert "too large" in refusal(landscape_jpeg.read_bytes(), settings)
    loose = ImageSettings(landscape_size=(64, 32), portrait_size=(32, 64), max_file_bytes=size)
    assert prepare_image(landscape_jpeg, loose).image.size == (64, 32)


def test_missing_file_is_refused_kindly(tmp_path: Path) -> None:
    assert "couldn't find" in refusal(tmp_path / "gone.jpg")


def test_each_refusal_has_its_own_text(
    truncated_jpeg: Path, text_as_jpg: Path, empty_jpg: Path, bomb_png: Path, landscape_jpeg: Path
) -> None:
    tiny = ImageSettings(landscape_size=(64, 32), portrait_size=(32, 64), max_file_bytes=10)
    texts = {
        refusal(truncated_jpeg),
        refusal(text_as_jpg),
        refusal(empty_jpg),
        refusal(bomb_png),
        refusal(landscape_jpeg, tiny),
    }

    assert len(texts) == 5
    assert all("Error" not in t and "tmp" not in t for t in texts)  # no exception or path text


# --- sniffing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "name"),
    [
        ("JPEG", "jpeg"),
        ("PNG", "png"),
        ("GIF", "gif"),
        ("WEBP", "webp"),
        ("BMP", "bmp"),
        ("TIFF", "tiff"),
    ],
)
def test_sniff_names_real_image_formats(fmt: str, name: str) -> None:
    assert sniff_image(photo_bytes((16, 16), fmt)[:16]) == name


def test_sniff_recognises_phone_formats_by_their_brand() -> None:
    assert sniff_image(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00") == "heic"
    assert sniff_image(b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00") == "avif"
    assert sniff_image(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00") is None  # an MP4 video


@pytest.mark.parametrize(
    "data", [b"", b"Shopping list", b"%PDF-1.7\n", b"PK\x03\x04zip", b"RIFF\x00\x00\x00\x00WAVE"]
)
def test_sniff_says_none_for_things_that_are_not_images(data: bytes) -> None:
    assert sniff_image(data) is None


def test_the_header_says_the_size_without_decoding() -> None:
    data = photo_bytes((96, 64))
    bitmaps = Image.core.get_stats()["new_count"]

    header = read_header(data, ImageSettings())

    assert (header.format, header.width, header.height, header.pixels) == ("JPEG", 96, 64, 6144)
    assert Image.core.get_stats()["new_count"] == bitmaps  # no bitmap was made


def test_the_default_pixel_limit_refuses_a_48_megapixel_file_from_its_header() -> None:
    big = bomb_png_bytes(8000, 6000)  # a phone's full-resolution 48 MP, as a few kB
    bitmaps = Image.core.get_stats()["new_count"]

    with pytest.raises(InvalidImage) as refused:
        read_header(big, ImageSettings())

    assert "too many pixels" in refused.value.user_text
    assert Image.core.get_stats()["new_count"] == bitmaps
    # A 24 MP camera photo (6000x4000) still passes, with room over the largest engine
    # input (1280x704) for any crop.
    assert read_header(bomb_png_bytes(6000, 4000), ImageSettings()).pixels == 24_000_000
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # Pillow's own guard stays
