"""Command line: ``animate-photo IMAGE [options]`` (also ``python -m generator``).

Exit codes: 0 clip written (its path is printed last), 2 bad input or options,
3 backend unavailable (no credentials, no model, budget), 4 generation failed,
130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path

from generator.clip import Progress
from generator.config import ConfigError, GeneratorSettings, load_generator_settings
from generator.errors import (
    BackendUnavailable,
    Cancelled,
    GeneratorError,
    InvalidImage,
    InvalidRequest,
)
from generator.options import Backend, Intensity, PhotoType, Profile, Request

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 3
EXIT_FAILED = 4
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="animate-photo",
        description="Turn a photo into a short animated clip (Veo 3.1 in the cloud or "
        "Stable Video Diffusion on this machine's GPU).",
    )
    p.add_argument("image", type=Path, help="the photo (JPEG, PNG, WebP, ...)")
    p.add_argument(
        "--backend",
        choices=[b.value for b in Backend],
        default="auto",
        help="auto tries Veo, then falls back to local SVD (default: auto)",
    )
    p.add_argument(
        "--photo-type",
        choices=[t.value for t in PhotoType],
        default="portrait",
        help="what is in the photo; shapes Veo's prompt (default: portrait)",
    )
    p.add_argument(
        "--intensity",
        choices=[i.value for i in Intensity],
        default="moderate",
        help="how much moves (default: moderate)",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds; Veo: 4, 6 or 8 (default 8). SVD makes frames/fps seconds",
    )
    p.add_argument(
        "--output",
        "-o",
        type=Path,
        default=None,
        help="output MP4 (default: the image's name with .mp4)",
    )
    p.add_argument(
        "--custom-elements",
        nargs="+",
        default=[],
        metavar="TEXT",
        help="extra things to show or animate, for Veo's prompt",
    )
    p.add_argument("--fps", type=int, default=None, help="SVD frame rate (default 7)")
    p.add_argument(
        "--motion",
        type=int,
        default=None,
        metavar="0-255",
        help="SVD motion bucket: 0-50 very subtle, 51-100 gentle, 101-150 moderate "
        "(127), 151-200 active, 201-255 dramatic; overrides --intensity",
    )
    p.add_argument("--seed", type=int, default=None, help="for a reproducible clip")
    p.add_argument("--steps", type=int, default=None, help="SVD denoising steps (default 25)")
    p.add_argument(
        "--model", default=None, help="SVD hub id or local folder, or a Veo model name (veo-...)"
    )
    p.add_argument("--device", default=None, help="cuda, mps or cpu (SVD)")
    p.add_argument(
        "--profile",
        choices=[p_.value for p_ in Profile],
        default=None,
        help="SVD memory profile: fast, low-vram (fits 12 GB cards) or auto",
    )
    p.add_argument(
        "--resolution",
        choices=["720p", "1080p"],
        default="720p",
        help="Veo resolution (1080p needs --duration 8)",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML file with generator tables ([svd], [veo], [image], ...)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    return p


def load_settings(path: Path | None) -> GeneratorSettings:
    """Generator settings from a TOML file's generator tables (others are the bot's)."""
    if path is None:
        return GeneratorSettings()
    with path.open("rb") as f:
        data = tomllib.load(f)
    return load_generator_settings(data)


class ProgressPrinter:
    """A one-line progress bar on a terminal; plain lines otherwise."""

    def __init__(self, stream, *, tty: bool) -> None:
        self.stream = stream
        self.tty = tty
        self.last = ""

    def __call__(self, p: Progress) -> None:
        if p.total:
            done = int(20 * p.step / p.total)
            text = f"{p.stage:<10} [{'#' * done}{'.' * (20 - done)}] {p.step}/{p.total}"
        else:
            text = f"{p.stage:<10} {p.elapsed:5.0f} s"
        if text == self.last:
            return
        self.last = text
        if self.tty:
            self.stream.write("\r" + text.ljust(50))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self.last:
            self.stream.write("\n")
            self.stream.flush()


def request_from_args(args: argparse.Namespace) -> Request:
    return Request(
        image=args.image,
        backend=Backend(args.backend),
        photo_type=PhotoType(args.photo_type),
        intensity=Intensity(args.intensity),
        duration=args.duration,
        fps=args.fps,
        motion=args.motion,
        custom_elements=tuple(args.custom_elements),
        seed=args.seed,
        steps=args.steps,
        model=args.model,
        device=args.device,
        profile=Profile(args.profile) if args.profile else None,
        veo_resolution=args.resolution,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    err = sys.stderr
    try:
        settings = load_settings(args.config)
        request = request_from_args(args)
        from generator.router import Generator, default_output_path

        generator = Generator(settings)
        generator.check(request)
        if not args.image.is_file():
            raise InvalidImage(f"{args.image}: no such file")
    except (ConfigError, OSError, tomllib.TOMLDecodeError) as exc:
        print(f"animate-photo: {exc}", file=err)
        return EXIT_BAD_INPUT
    except (InvalidRequest, InvalidImage) as exc:
        print(f"animate-photo: {exc}", file=err)
        return EXIT_BAD_INPUT

    output = args.output or default_output_path(args.image)
    printer = ProgressPrinter(err, tty=err.isatty()) if not args.quiet else None
    started = time.monotonic()
    try:
        clip = asyncio.run(generator.generate(request, output, on_progress=printer))
    except KeyboardInterrupt:
        print("\nanimate-photo: interrupted", file=err)
        return EXIT_INTERRUPTED
    except (InvalidRequest, InvalidImage) as exc:
        print(f"animate-photo: {exc}", file=err)
        return EXIT_BAD_INPUT
    except BackendUnavailable as exc:
        print(f"animate-photo: {exc}", file=err)
        return EXIT_UNAVAILABLE
    except Cancelled:
        return EXIT_INTERRUPTED
    except GeneratorError as exc:
        # A sentence for the person; which call failed and how goes to the log line above it.
        logging.getLogger("generator.cli").warning("%s", exc)
        print(f"animate-photo: {exc.user_text}", file=err)
        return EXIT_FAILED
    finally:
        if printer:
            printer.close()
    v = clip.video
    summary = (
        f"{clip.backend} made {v.width}x{v.height}, {v.frames} frames at {v.fps:g} fps "
        f"({v.duration:.1f} s, {v.size_bytes / 1e6:.1f} MB) in {time.monotonic() - started:.1f} s"
    )
    if clip.fallback_reason:
        summary += f"; {clip.fallback_reason}"
    if clip.cost_usd:
        summary += f"; Veo cost ${clip.cost_usd:.2f}"
    if clip.seed is not None:
        summary += f"; seed {clip.seed}"
    if not args.quiet:
        print(summary, file=err)
    print(clip.path)
    return EXIT_OK
