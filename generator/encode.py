"""Write frames (SVD) or a downloaded clip (Veo) as an H.264/yuv420p MP4 that Telegram streams.

Every file is written under a temporary name in the destination folder and moved into place
with ``os.replace``, so ``out_path`` is either absent or complete. The ffmpeg binary is the
one shipped in the imageio-ffmpeg wheel.

Example::

    >>> info = encode_frames(frames, fps=7, out_path=Path("clip.mp4"), settings=EncodeSettings())
    >>> info.frames, info.thumbnail
    (25, PosixPath('clip.jpg'))

Everything here is synchronous and runs ffmpeg; async callers use ``asyncio.to_thread``.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image

from generator.clip import VideoInfo
from generator.config import EncodeSettings
from generator.errors import EncodingFailed

log = logging.getLogger(__name__)

#: Most seconds one ffmpeg run may take before it is treated as hung.
FFMPEG_TIMEOUT_S = 600.0
#: A JPEG thumbnail Telegram accepts must be under this many bytes.
THUMBNAIL_MAX_BYTES = 200 * 1024
#: Audio bitrate when a clip with sound (Veo) has to be re-encoded to fit the cap.
SHRINK_AUDIO_BPS = 64_000
# Size fitting: how many re-encodes, and the share of the byte budget the first one aims at.
_SHRINK_TRIES = 2
_SHRINK_MARGIN = 0.85
_TOO_LARGE = "The clip was made but is too large to send."
# Bytes the MP4 container needs besides the streams: a fixed part plus an index per frame.
_CONTAINER_BYTES = 4096
_CONTAINER_BYTES_PER_FRAME = 32
# Tag what we write as BT.709, limited range, so players don't guess the colours.
_COLOUR_ARGS = ("-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709")
_TO_YUV = "scale=out_color_matrix=bt709:out_range=tv,format=yuv420p"

Frame = Image.Image | np.ndarray


@dataclass(frozen=True)
class VideoProbe:
    """What decoding a video file with ffmpeg found (first video stream).

    ``fps`` is the stream's average frame rate, ``frames`` the number actually decoded,
    ``duration`` the container's duration in seconds (``frames / fps`` if it has none).
    """

    width: int
    height: int
    fps: float
    frames: int
    duration: float
    codec: str
    pix_fmt: str
    has_audio: bool = False
    size_bytes: int = 0


def encode_frames(
    frames: Sequence[Frame], fps: float, out_path: Path, settings: EncodeSettings
) -> VideoInfo:
    """Encode frames as an MP4 at ``out_path`` and write its thumbnail next to it.

    Args:
        frames: PIL images (any mode) or arrays ``HxW``, ``HxWx3`` or ``HxWx4``, either
            ``uint8`` or floats in 0-1 (what diffusers returns); all the same size.
        fps: playback frame rate, e.g. 7 for SVD.
        out_path: where the ``.mp4`` goes; the thumbnail is ``<stem>.jpg`` beside it.
        settings: ``crf`` and ``preset`` for quality, ``max_bytes`` as the size cap,
            ``thumbnail_px`` for the thumbnail's longest side.

    Odd widths or heights are padded by one repeated edge pixel (yuv420p needs even sizes).
    If the file exceeds ``max_bytes`` it is re-encoded to fit, else ``EncodingFailed``.
    """
    # 1. Check inputs
    if not frames:
        raise ValueError("no frames to encode")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    arrays = [_rgb_array(frame) for frame in frames]
    height, width = arrays[0].shape[:2]
    if any(a.shape != arrays[0].shape for a in arrays):
        raise ValueError("all frames must have the same size")

    # 2. Encode at the configured quality into a temporary file beside out_path
    out_path = Path(out_path)
    rate = Fraction(fps).limit_denominator(1001)
    even_w, even_h = width + width % 2, height + height % 2
    with _TempFiles(out_path) as temps:
        first = temps.new()
        command = [
            *("-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{even_w}x{even_h}"),
            *("-framerate", str(rate), "-i", "-"),
            *("-c:v", "libx264", "-preset", settings.preset, "-crf", str(settings.crf)),
            *("-vf", _TO_YUV, *_COLOUR_ARGS, "-movflags", "+faststart", "-f", "mp4", str(first)),
        ]
        _run_ffmpeg(command, stdin_frames=(_pad_even(a) for a in arrays))

        # 3. Fit the size cap, move into place, thumbnail
        final = _fit_size(first, first, settings, temps)
        return _publish(final, out_path, settings, thumbnail_source=arrays[0])


def normalise_mp4(src: Path, out_path: Path, settings: EncodeSettings) -> VideoInfo:
    """Make a downloaded MP4 (Veo's) streamable: H.264, yuv420p, even size, ``+faststart``.

    A file that already conforms and fits ``max_bytes`` is remuxed without re-encoding
    (same frames, moov atom moved to the front); anything else is re-encoded with the
    configured CRF, cropping an odd last row or column. Sound is kept. The thumbnail is
    written next to ``out_path`` as ``<stem>.jpg``.
    """
    src, out_path = Path(src), Path(out_path)
    probe = probe_video(src)
    with _TempFiles(out_path) as temps:
        first = temps.new()
        conforming = (
            probe.codec == "h264"
            and probe.pix_fmt == "yuv420p"
            and probe.width % 2 == 0
            and probe.height % 2 == 0
        )
        streams = ("-map", "0:v:0", "-map", "0:a?")
        if conforming and probe.size_bytes <= settings.max_bytes:
            _run_ffmpeg(
                ["-i", str(src), *streams, "-c", "copy", "-movflags", "+faststart", str(first)]
            )
        else:
            crop = "crop=trunc(iw/2)*2:trunc(ih/2)*2,setsar=1"
            _run_ffmpeg(
                [
                    *("-i", str(src), *streams, "-vf", f"{crop},{_TO_YUV}", *_COLOUR_ARGS),
                    *("-c:v", "libx264", "-preset", settings.preset, "-crf", str(settings.crf)),
                    *("-c:a", "aac", "-movflags", "+faststart", "-f", "mp4", str(first)),
                ]
            )
        # Shrinking starts again from the source: one generation of loss, not two.
        final = _fit_size(first, src, settings, temps)
        return _publish(final, out_path, settings, thumbnail_source=final)


def probe_video(path: Path) -> VideoProbe:
    """Decode every frame of ``path``'s first video stream and describe it.

    Raises ``EncodingFailed`` if ffmpeg cannot open the file, it has no video stream, or
    any frame fails to decode (a truncated or damaged file).
    """
    path = Path(path)
    if not path.is_file():
        raise EncodingFailed(f"{path}: no such file")
    command = [
        *("-loglevel", "repeat+level+info", "-i", str(path)),
        *("-map", "0:v:0", "-f", "null", "-progress", "pipe:1", "-nostats", "-"),
    ]
    result = _run_ffmpeg(command, check=False, with_level_prefix=True)
    log_lines = result.stderr.splitlines()
    errors = [line for line in log_lines if "[error]" in line or "[fatal]" in line]
    if result.returncode != 0 or errors:
        detail = "; ".join(errors[-3:]) or f"ffmpeg exited with {result.returncode}"
        raise EncodingFailed(f"{path.name} does not decode cleanly: {detail}")

    # The input's description comes before "Stream mapping:"; the output's after it.
    header = result.stderr.split("Stream mapping:")[0]
    video = re.search(r"Stream #0:\d+\S*: Video: (\w+)[^,]*, (\w+)", header)
    size = re.search(r"Stream #0:\d+\S*: Video: .*?, (\d+)x(\d+)", header)
    if video is None or size is None:
        raise EncodingFailed(f"{path.name}: ffmpeg reported no video stream")
    video_line = header[video.start() :].splitlines()[0]
    rate = re.search(r", ([\d.]+)(k?) fps", video_line) or re.search(
        r", ([\d.]+)(k?) tbr", video_line
    )
    fps = float(rate.group(1)) * (1000 if rate.group(2) else 1) if rate else 0.0
    progress = result.stdout.decode("ascii", "replace")
    counted = re.findall(r"^frame=(\d+)$", progress, flags=re.MULTILINE)
    frames = int(counted[-1]) if counted else 0
    if frames == 0:
        raise EncodingFailed(f"{path.name}: no frames decoded")
    stamp = re.search(r"Duration: (\d+):(\d+):([\d.]+)", header)
    if stamp:
        duration = int(stamp.group(1)) * 3600 + int(stamp.group(2)) * 60 + float(stamp.group(3))
    else:
        duration = frames / fps if fps else 0.0
    return VideoProbe(
        width=int(size.group(1)),
        height=int(size.group(2)),
        fps=fps,
        frames=frames,
        duration=duration,
        codec=video.group(1),
        pix_fmt=video.group(2),
        has_audio=re.search(r"Stream #0:\d+\S*: Audio:", header) is not None,
        size_bytes=path.stat().st_size,
    )


def make_thumbnail(video_or_frame: Path | Frame, out_path: Path, max_px: int = 320) -> Path:
    """Write a JPEG of a video's first frame (or of a frame) no larger than ``max_px``.

    The result is at most ``max_px`` on its longest side and under 200 kB, as Telegram
    requires of a video's thumbnail. Returns ``out_path``.
    """
    if isinstance(video_or_frame, str | os.PathLike):
        image = _first_frame(Path(video_or_frame))
    else:
        image = Image.fromarray(_rgb_array(video_or_frame))
    image = image.convert("RGB")
    image.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
    for quality in (85, 70, 50, 30):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality, optimize=True)
        if buffer.tell() < THUMBNAIL_MAX_BYTES:
            break
    out_path = Path(out_path)
    with _TempFiles(out_path, suffix=".part.jpg") as temps:
        part = temps.new()
        part.write_bytes(buffer.getvalue())
        os.replace(part, out_path)
    return out_path


# --- helpers -------------------------------------------------------------------------------


@dataclass
class _FfmpegResult:
    returncode: int
    stdout: bytes
    stderr: str


def _run_ffmpeg(
    args: list[str],
    *,
    stdin_frames: object = None,
    check: bool = True,
    with_level_prefix: bool = False,
) -> _FfmpegResult:
    """Run the bundled ffmpeg; with ``check``, a failure raises ``EncodingFailed``.

    ``stdin_frames`` is an iterable of arrays written to ffmpeg's stdin one at a time, so a
    long clip is never held twice in memory.
    """
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-y"]
    if stdin_frames is None:
        command.append("-nostdin")
    if not with_level_prefix:
        command += ["-loglevel", "error"]
    command += args
    # stderr goes to a file: a pipe nobody reads while we write frames could fill and block.
    with tempfile.TemporaryFile() as stderr_file:
        try:
            # Writing frames, ffmpeg's stdout is unused (it writes the file): nothing to drain.
            process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE if stdin_frames is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdin_frames is None else subprocess.DEVNULL,
                stderr=stderr_file,
            )
        except OSError as exc:
            raise EncodingFailed(f"cannot start ffmpeg: {exc}") from exc
        try:
            stdout = b""
            if stdin_frames is not None:
                if process.stdin is None:
                    raise RuntimeError("broken invariant: process.stdin is not None")
                try:
                    for frame in stdin_frames:  # type: ignore[attr-defined]
                        process.stdin.write(np.ascontiguousarray(frame).tobytes())
                    process.stdin.close()
                except BrokenPipeError:
                    pass  # ffmpeg quit early; its log below says why
                process.wait(timeout=FFMPEG_TIMEOUT_S)
            else:
                stdout, _ = process.communicate(timeout=FFMPEG_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            process.kill()
            process.wait()
            raise EncodingFailed(f"ffmpeg took longer than {FFMPEG_TIMEOUT_S:.0f} s") from exc
        except BaseException:
            process.kill()
            process.wait()
            raise
        stderr_file.seek(0)
        stderr = stderr_file.read().decode("utf-8", "replace")
    result = _FfmpegResult(process.returncode, stdout, stderr)
    if check and result.returncode != 0:
        tail = " | ".join(stderr.strip().splitlines()[-3:])
        raise EncodingFailed(f"ffmpeg exited with {result.returncode}: {tail}")
    return result


def _fit_size(candidate: Path, source: Path, settings: EncodeSettings, temps: _TempFiles) -> Path:
    """Return ``candidate`` if it is within ``max_bytes``, else a re-encode that is.

    The first try aims at the bitrate the byte budget allows over the clip's duration, with a
    margin. Short clips make x264's rate control overshoot, so the second (last) try scales
    that bitrate by how far the first one missed and, when it missed by more than 10%, also
    lowers the resolution so fewer pixels share the bits.
    """
    size = candidate.stat().st_size
    if size <= settings.max_bytes:
        return candidate
    probe = probe_video(source)
    duration = probe.duration or probe.frames / (probe.fps or 1.0)
    if duration <= 0:
        raise EncodingFailed(f"cannot fit {size} bytes under the cap: unknown duration")
    log.info("%s is %d bytes, over the %d cap; re-encoding", source.name, size, settings.max_bytes)
    width, height = probe.width - probe.width % 2, probe.height - probe.height % 2
    overhead = _CONTAINER_BYTES + _CONTAINER_BYTES_PER_FRAME * probe.frames
    audio_bytes = SHRINK_AUDIO_BPS * duration / 8 if probe.has_audio else 0
    video_bytes = settings.max_bytes * _SHRINK_MARGIN - overhead - audio_bytes
    if video_bytes <= 0:
        raise EncodingFailed(
            f"a {settings.max_bytes}-byte cap leaves no room for {probe.frames} frames",
            user_text=_TOO_LARGE,
        )
    bitrate = video_bytes * 8 / duration
    for attempt in range(_SHRINK_TRIES):
        if attempt > 0:
            missed_by = max(size - overhead - audio_bytes, 1) / video_bytes
            bitrate /= missed_by
            if missed_by > 1.1:
                factor = min(0.9, max(0.25, math.sqrt(1 / missed_by)))
                width = max(16, int(width * factor) // 2 * 2)
                height = max(16, int(height * factor) // 2 * 2)
        rate = str(max(int(bitrate), 1000))
        # A VBV buffer of half the clip (at most 1 s) keeps the start from spending the total.
        buffer = str(max(int(bitrate * min(duration, 2.0) / 2), 1000))
        attempt_path = temps.new()
        _run_ffmpeg(
            [
                *("-i", str(source), "-map", "0:v:0", "-map", "0:a?"),
                *("-vf", f"scale={width}:{height}:flags=lanczos,setsar=1,{_TO_YUV}"),
                *_COLOUR_ARGS,
                *("-c:v", "libx264", "-preset", settings.preset, "-b:v", rate),
                *("-maxrate", rate, "-bufsize", buffer),
                *("-c:a", "aac", "-b:a", str(SHRINK_AUDIO_BPS)),
                *("-movflags", "+faststart", "-f", "mp4", str(attempt_path)),
            ]
        )
        size = attempt_path.stat().st_size
        log.info("try %d at %s bit/s, %dx%d: %d bytes", attempt + 1, rate, width, height, size)
        if size <= settings.max_bytes:
            return attempt_path
    raise EncodingFailed(
        f"cannot fit the clip under {settings.max_bytes} bytes (best try: {size} bytes)",
        user_text=_TOO_LARGE,
    )


def _publish(
    final: Path, out_path: Path, settings: EncodeSettings, *, thumbnail_source: Path | Frame
) -> VideoInfo:
    """Check the finished temp file decodes, move it to ``out_path``, write its thumbnail."""
    probe = probe_video(final)
    os.replace(final, out_path)
    thumbnail = make_thumbnail(
        out_path if isinstance(thumbnail_source, Path) else thumbnail_source,
        out_path.with_suffix(".jpg"),
        max_px=settings.thumbnail_px,
    )
    return VideoInfo(
        path=out_path,
        width=probe.width,
        height=probe.height,
        fps=probe.fps,
        frames=probe.frames,
        duration=probe.duration,
        size_bytes=out_path.stat().st_size,
        thumbnail=thumbnail,
    )


class _TempFiles:
    """Temporary names beside a destination; whatever was not moved into place is removed."""

    def __init__(self, destination: Path, suffix: str = ".part.mp4") -> None:
        self._folder = destination.parent
        self._prefix = f".{destination.stem}."
        self._suffix = suffix
        self._paths: list[Path] = []

    def new(self) -> Path:
        fd, name = tempfile.mkstemp(prefix=self._prefix, suffix=self._suffix, dir=self._folder)
        os.close(fd)
        self._paths.append(Path(name))
        return self._paths[-1]

    def __enter__(self) -> _TempFiles:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for path in self._paths:
            path.unlink(missing_ok=True)  # already moved into place, or a leftover


def _rgb_array(frame: Frame) -> np.ndarray:
    """A frame as ``HxWx3`` uint8 RGB."""
    if isinstance(frame, Image.Image):
        if frame.mode in ("RGBA", "LA", "P", "PA"):
            # Transparent pixels show as white, as they do in prepared photos.
            rgba = frame.convert("RGBA")
            frame = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
        return np.asarray(frame.convert("RGB"))
    array = np.asarray(frame)
    if array.dtype.kind == "f":
        array = (np.clip(np.nan_to_num(array), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    elif array.dtype == np.uint16:
        array = (array // 257).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, uint16 or float arrays, got {array.dtype}")
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"frame arrays must be HxW, HxWx3 or HxWx4, got {array.shape}")
    return array[:, :, :3]


def _pad_even(array: np.ndarray) -> np.ndarray:
    """Repeat the last row/column where the size is odd; yuv420p halves both sides."""
    height, width = array.shape[:2]
    if height % 2 == 0 and width % 2 == 0:
        return array
    return np.pad(array, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")


def _first_frame(video: Path) -> Image.Image:
    """Decode a video's first frame with ffmpeg."""
    command = ["-i", str(video), "-map", "0:v:0", "-frames:v", "1"]
    result = _run_ffmpeg([*command, "-f", "image2pipe", "-c:v", "png", "pipe:1"])
    return Image.open(io.BytesIO(result.stdout))
