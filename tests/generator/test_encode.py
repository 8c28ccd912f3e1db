"""Frames and downloaded clips become MP4s that Telegram streams: H.264, yuv420p, moov first."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from generator.config import EncodeSettings
from generator.encode import encode_frames, make_thumbnail, normalise_mp4, probe_video
from generator.errors import EncodingFailed

SETTINGS = EncodeSettings(preset="ultrafast")  # CRF 18 as configured; fast on 2 shared cores
COLOURS = [(220, 30, 30), (30, 200, 60), (30, 60, 220), (240, 240, 240)]


def top_level_boxes(path: Path) -> list[str]:
    """The MP4's top-level box types in file order (``ftyp``, ``moov``, ``mdat``, ...)."""
    data = path.read_bytes()
    boxes, offset = [], 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if size == 1:  # 64-bit size follows the type
            size = struct.unpack(">Q", data[offset + 8 : offset + 16])[0]
        boxes.append(kind.decode("latin-1"))
        if size == 0:
            break
        offset += size
    return boxes


def decoded_frames(path: Path) -> list[np.ndarray]:
    """Every frame of ``path`` as RGB arrays, decoded by ffmpeg."""
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = reader.__next__()
    width, height = meta["size"]
    return [np.frombuffer(f, np.uint8).reshape(height, width, 3) for f in reader]


def ffmpeg(*args: str) -> None:
    """Make a test video with the bundled ffmpeg."""
    exe = imageio_ffmpeg.get_ffmpeg_exe()
    subprocess.run([exe, "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def solid_frames(size: tuple[int, int]) -> list[Image.Image]:
    return [Image.new("RGB", size, colour) for colour in COLOURS]


def noise_frames(count: int, size: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8) for _ in range(count)]


def test_four_frames_at_7_fps_make_a_streamable_h264_clip(tmp_path: Path) -> None:
    out = tmp_path / "clip.mp4"

    info = encode_frames(solid_frames((32, 32)), 7, out, SETTINGS)

    probe = probe_video(out)
    assert (probe.codec, probe.pix_fmt) == ("h264", "yuv420p")
    assert (probe.frames, probe.fps, probe.width, probe.height) == (4, 7.0, 32, 32)
    assert probe.duration == pytest.approx(4 / 7, abs=0.02)
    assert (info.path, info.frames, info.fps, info.width, info.height) == (out, 4, 7.0, 32, 32)
    assert info.size_bytes == out.stat().st_size
    assert top_level_boxes(out).index("moov") < top_level_boxes(out).index("mdat")


def test_frames_keep_their_colours_and_order(tmp_path: Path) -> None:
    out = tmp_path / "clip.mp4"

    encode_frames(solid_frames((32, 32)), 7, out, SETTINGS)

    frames = decoded_frames(out)
    assert len(frames) == 4
    for frame, colour in zip(frames, COLOURS, strict=True):
        assert np.abs(frame[16, 16].astype(int) - colour).max() <= 12


def test_odd_sized_frames_are_padded_to_even(tmp_path: Path) -> None:
    out = tmp_path / "odd.mp4"

    info = encode_frames(noise_frames(4, (33, 17)), 7, out, SETTINGS)

    probe = probe_video(out)
    assert (probe.width, probe.height) == (34, 18)
    assert (info.width, info.height, probe.frames) == (34, 18, 4)


def test_float_arrays_from_diffusers_are_accepted(tmp_path: Path) -> None:
    frames = [np.full((32, 48, 3), value, dtype=np.float32) for value in (0.0, 0.5, 1.0)]

    info = encode_frames(frames, 7, tmp_path / "float.mp4", SETTINGS)

    decoded = decoded_frames(info.path)
    assert [int(f[16, 24, 1]) for f in decoded] == pytest.approx([0, 128, 255], abs=6)


def test_thumbnail_is_written_beside_the_clip_small_enough_for_telegram(tmp_path: Path) -> None:
    out = tmp_path / "big.mp4"

    info = encode_frames(noise_frames(2, (640, 360)), 7, out, SETTINGS)

    assert info.thumbnail == tmp_path / "big.jpg"
    thumb = Image.open(info.thumbnail)
    assert thumb.format == "JPEG"
    assert max(thumb.size) <= 320 and thumb.size == (320, 180)
    assert info.thumbnail.stat().st_size < 200 * 1024


def test_make_thumbnail_from_a_video_file(tmp_path: Path) -> None:
    info = encode_frames(solid_frames((64, 32)), 7, tmp_path / "clip.mp4", SETTINGS)

    thumb = make_thumbnail(info.path, tmp_path / "cover.jpg", max_px=16)

    image = Image.open(thumb)
    assert image.size == (16, 8)
    red, green, blue = image.convert("RGB").getpixel((8, 4))  # the first frame: red
    assert red > 180 and green < 80 and blue < 80


def test_noisy_clip_over_the_cap_is_re_encoded_under_it(tmp_path: Path) -> None:
    frames = noise_frames(24, (128, 128))
    uncapped = encode_frames(frames, 7, tmp_path / "uncapped.mp4", SETTINGS)
    cap = 40_000
    assert uncapped.size_bytes > 3 * cap  # the cap really bites

    info = encode_frames(
        frames, 7, tmp_path / "capped.mp4", EncodeSettings(max_bytes=cap, preset="ultrafast")
    )

    assert info.size_bytes <= cap
    probe = probe_video(info.path)
    assert (probe.frames, probe.fps, probe.pix_fmt) == (24, 7.0, "yuv420p")
    assert top_level_boxes(info.path).index("moov") < top_level_boxes(info.path).index("mdat")


def test_impossible_cap_fails_and_leaves_no_file_behind(tmp_path: Path) -> None:
    out = tmp_path / "clip.mp4"
    out.write_bytes(b"the previous clip")

    with pytest.raises(EncodingFailed) as caught:
        encode_frames(noise_frames(8, (64, 64)), 7, out, EncodeSettings(max_bytes=2_000))

    assert "too large" in caught.value.user_text
    assert out.read_bytes() == b"the previous clip"  # never a half-written file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]  # no temp leftovers


def test_bad_input_is_rejected_before_ffmpeg_runs(tmp_path: Path) -> None:
    out = tmp_path / "clip.mp4"
    with pytest.raises(ValueError):
        encode_frames([], 7, out, SETTINGS)
    with pytest.raises(ValueError):
        encode_frames(solid_frames((32, 32)), 0, out, SETTINGS)
    with pytest.raises(ValueError):
        encode_frames([*solid_frames((32, 32)), Image.new("RGB", (16, 16))], 7, out, SETTINGS)
    assert not out.exists()


# --- normalise_mp4: Veo's downloads ---------------------------------------------------------


def test_conforming_clip_is_passed_through_with_moov_moved_first(tmp_path: Path) -> None:
    src = tmp_path / "veo.mp4"
    ffmpeg(
        *("-f", "lavfi", "-i", "testsrc=size=64x36:rate=24", "-frames:v", "12"),
        *("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(src)),
    )
    assert top_level_boxes(src).index("moov") > top_level_boxes(src).index("mdat")

    info = normalise_mp4(src, tmp_path / "clip.mp4", SETTINGS)

    assert (info.frames, info.fps, info.width, info.height) == (12, 24.0, 64, 36)
    boxes = top_level_boxes(info.path)
    assert boxes.index("moov") < boxes.index("mdat")
    # Copied, not re-encoded: every decoded frame is identical.
    original, passed = decoded_frames(src), decoded_frames(info.path)
    assert all(np.array_equal(a, b) for a, b in zip(original, passed, strict=True))
    assert info.thumbnail is not None and info.thumbnail.exists()


def test_a_download_can_be_normalised_in_place(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    ffmpeg(
        *("-f", "lavfi", "-i", "testsrc=size=64x36:rate=24", "-frames:v", "6"),
        *("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv444p", str(clip)),
    )

    info = normalise_mp4(clip, clip, SETTINGS)

    assert info.path == clip
    assert (probe_video(clip).pix_fmt, probe_video(clip).frames) == ("yuv420p", 6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.jpg", "clip.mp4"]


@pytest.mark.parametrize(
    ("codec", "pix_fmt", "size"),
    [("libx264", "yuv444p", "33x17"), ("mpeg4", "yuv420p", "64x36")],
)
def test_non_conforming_clip_is_re_encoded(
    tmp_path: Path, codec: str, pix_fmt: str, size: str
) -> None:
    src = tmp_path / "odd.mp4"
    ffmpeg(
        *("-f", "lavfi", "-i", f"testsrc=size={size}:rate=24", "-frames:v", "10"),
        *("-c:v", codec, "-pix_fmt", pix_fmt, str(src)),
    )
    before = probe_video(src)
    assert (before.codec, before.pix_fmt) != ("h264", "yuv420p") or before.width % 2

    info = normalise_mp4(src, tmp_path / "clip.mp4", SETTINGS)

    probe = probe_video(info.path)
    assert (probe.codec, probe.pix_fmt) == ("h264", "yuv420p")
    assert probe.width % 2 == 0 and probe.height % 2 == 0
    assert abs(probe.width - before.width) <= 1 and abs(probe.height - before.height) <= 1
    assert (probe.frames, probe.fps) == (10, 24.0)
    boxes = top_level_boxes(info.path)
    assert boxes.index("moov") < boxes.index("mdat")


def test_sound_is_kept(tmp_path: Path) -> None:
    src = tmp_path / "veo.mp4"
    ffmpeg(
        *("-f", "lavfi", "-i", "testsrc=size=64x36:rate=24", "-f", "lavfi", "-i", "sine"),
        *("-frames:v", "12", "-t", "0.5", "-c:v", "libx264", "-preset", "ultrafast"),
        *("-pix_fmt", "yuv444p", "-c:a", "aac", str(src)),
    )

    info = normalise_mp4(src, tmp_path / "clip.mp4", SETTINGS)

    assert probe_video(info.path).has_audio


def test_oversized_download_is_shrunk_under_the_cap(tmp_path: Path) -> None:
    src = tmp_path / "veo.mp4"
    ffmpeg(
        *("-f", "lavfi", "-i", "testsrc2=size=160x96:rate=24", "-frames:v", "24"),
        *("-vf", "noise=alls=100:allf=t"),
        *("-c:v", "libx264", "-preset", "ultrafast", "-crf", "0", "-pix_fmt", "yuv420p", str(src)),
    )
    cap = src.stat().st_size // 4

    info = normalise_mp4(
        src, tmp_path / "clip.mp4", EncodeSettings(max_bytes=cap, preset="ultrafast")
    )

    assert info.size_bytes <= cap
    assert probe_video(info.path).frames == 24


# --- probing -------------------------------------------------------------------------------


def test_probe_refuses_a_truncated_clip(tmp_path: Path) -> None:
    info = encode_frames(noise_frames(8, (64, 64)), 7, tmp_path / "clip.mp4", SETTINGS)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(info.path.read_bytes()[: info.size_bytes * 2 // 3])

    with pytest.raises(EncodingFailed):
        probe_video(cut)


def test_probe_refuses_files_that_are_not_video(tmp_path: Path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")

    with pytest.raises(EncodingFailed):
        probe_video(text)
    with pytest.raises(EncodingFailed):
        probe_video(tmp_path / "missing.mp4")
