"""Command line: ``animate-photo IMAGE [options]`` (also ``python -m generator``).

Exit codes: 0 clip written (its path is printed last), 2 bad input or options,
3 backend unavailable (no credentials, no model, budget), 4 generation failed,
130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import logging
import os
import shlex
import signal
import sys
import threading
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from tqdm import tqdm

from generator.clip import Progress, ProgressFn
from generator.config import ConfigError, GeneratorSettings, load_generator_settings
from generator.errors import (
    BackendUnavailable,
    Cancelled,
    GeneratorError,
    InvalidImage,
    InvalidRequest,
    TransientError,
)
from generator.options import (
    VEO_DEFAULT_SECONDS,
    Backend,
    Intensity,
    PhotoType,
    Profile,
    Request,
)

if TYPE_CHECKING:
    from generator.clip import Clip
    from generator.router import Generator

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 3
EXIT_FAILED = 4
EXIT_INTERRUPTED = 130

#: Seconds an engine gets after Ctrl-C to stop at its next step before the process leaves
#: anyway (a model still loading, or a GPU slower per step than this, cannot be waited for).
STOP_GRACE_S = 2.0

#: Tables of a shared config file that only the bot reads; the CLI accepts and ignores them.
#: ``bot.config.BOT_TABLES`` is the source (a test keeps the two equal; generator/ may not
#: import bot/).
BOT_TABLES = ("telegram", "access", "limits", "worker", "gpu", "data", "database", "service")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="animate-photo",
        usage="%(prog)s IMAGE [options]",
        description="Turn a photo into a short animated clip (Veo 3.1 in the cloud, or "
        "LTX-Video, Wan 2.2 or Stable Video Diffusion on this machine's GPU).",
    )
    # Optional here only so that `--custom-elements a b photo.jpg` works: see parse_args.
    p.add_argument(
        "image",
        type=Path,
        nargs="?",
        metavar="IMAGE",
        help="the photo (JPEG, PNG, WebP, ...); may also come last, after --custom-elements",
    )
    p.add_argument(
        "--backend",
        choices=[b.value for b in Backend],
        default="auto",
        help="auto follows [auto] chain: Veo when configured, else the best local engine "
        "that fits the card (LTX-Video, then Wan 2.2, then SVD); ltx, wan and svd run on "
        "this machine "
        "(default: auto)",
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
        help=f"seconds; Veo: 4, 6 or 8 (default {VEO_DEFAULT_SECONDS}); "
        "LTX-Video: about 2 to 10 (default 5, 8k+1 frames at 24 fps); "
        "Wan 2.2: about 2 to 5 (default 5, 4k+1 frames at 24 fps); "
        "SVD makes frames/fps seconds. The exact length is "
        "printed before any work",
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
        action="extend",
        default=[],
        metavar="TEXT",
        help="extra things to show or animate, for Veo's prompt (one or more; the flag may repeat)",
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
        "--resume",
        default=None,
        metavar="OPERATION",
        help="wait for a Veo operation submitted earlier (its name is printed when a Veo run "
        "is interrupted or times out) and write its clip, without paying again",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML file with generator tables ([svd], [veo], [image], ...)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    return p


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv``; the photo may come first or last (``--custom-elements a b photo.jpg``).

    ``--custom-elements`` takes one or more words, so in the documented order it also takes
    the photo; the rule is simple: without a photo before the options, the last of those
    words is the photo.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.image is None:
        if not args.custom_elements:
            parser.error("the photo (IMAGE) is missing")
        args.image = Path(args.custom_elements.pop())
    if args.resume is not None and args.backend not in (Backend.AUTO.value, Backend.VEO.value):
        parser.error("--resume picks up a Veo operation: leave out --backend or say veo")
    return args


def load_settings(path: Path | None) -> GeneratorSettings:
    """Generator settings from a TOML file's generator tables (the bot's tables are skipped).

    Raises ``ConfigError`` starting with the file's name: for a file that cannot be read, a
    TOML syntax error (with its line and column), a table or key nobody reads, a bad value.
    """
    if path is None:
        return GeneratorSettings()
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    tables = [f.name for f in dataclasses.fields(GeneratorSettings)]
    unknown = sorted(set(data) - set(tables) - set(BOT_TABLES))
    if unknown:
        name = unknown[0]
        what = "unknown table" if isinstance(data[name], dict) else "unknown key outside a table"
        known = ", ".join(tables + list(BOT_TABLES))
        raise ConfigError(f"{path}: {name}: {what} (known tables: {known})")
    try:
        return load_generator_settings({k: v for k, v in data.items() if k in tables})
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


class ProgressPrinter:
    """Plain progress lines, one per change, for logs and pipes (when stderr is no terminal)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
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
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        pass


class ProgressBar:
    """A tqdm bar per stage on a terminal: steps with their rate and the time left; stages
    without steps (loading, Veo polling) show the time spent."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.bar: tqdm | None = None
        self.key: tuple[str, int] | None = None

    def __call__(self, p: Progress) -> None:
        key = (p.stage, p.total)
        if key != self.key:
            self.close()
            self.key = key
            if p.total:
                self.bar = tqdm(total=p.total, desc=p.stage, unit="step", file=self.stream)
            else:
                self.bar = tqdm(desc=p.stage, bar_format="{desc}: {elapsed}", file=self.stream)
        if self.bar is None:
            return
        if p.total:
            self.bar.update(p.step - self.bar.n)
        else:
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            self.key = None


def request_from_args(args: argparse.Namespace) -> Request:
    return Request(
        image=args.image,
        # A resumed operation is Veo's, whatever --backend said: its rules apply.
        backend=Backend.VEO if args.resume else Backend(args.backend),
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


def resume_command(argv: Sequence[str], operation: str, output: Path | None = None) -> str:
    """The command line that resumes ``operation``: this run's, with ``--resume`` (and
    ``--output``, when given) set, ready to paste into a shell."""
    prog = ["python", "-m", "generator"] if Path(sys.argv[0]).name == "__main__.py" else []
    kept: list[str] = []
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word == "--resume":
            skip = True
        elif not word.startswith("--resume="):
            kept.append(word)
    extra = ["--resume", operation] + (["--output", str(output)] if output else [])
    # Options after a bare "--" would be read as the photo: put ours before it.
    at = kept.index("--") if "--" in kept else len(kept)
    words = (prog or ["animate-photo"]) + kept[:at] + extra + kept[at:]
    return shlex.join(words)


class _Interrupted(Exception):
    """Ctrl-C stopped the run."""


class Run:
    """One generation driven from the terminal: Ctrl-C, and the Veo operation it submitted.

    The first Ctrl-C asks the engine to stop at its next step (the generator's cancel
    callback) and stops waiting for Veo; if the engine has not reached a step within
    ``STOP_GRACE_S`` the process leaves anyway. A second Ctrl-C leaves at once.
    """

    def __init__(self, argv: Sequence[str], err: TextIO, *, operation: str | None) -> None:
        self.argv = list(argv)
        self.err = err
        self.stop = threading.Event()
        self._timer: threading.Timer | None = None
        #: The Veo operation this run waits on: the one resumed, or the one it submitted.
        self.operation = operation

    async def generate(
        self,
        generator: Generator,
        request: Request,
        output: Path,
        printer: ProgressFn | None,
        resume: str | None,
    ) -> Clip:
        task = asyncio.current_task()
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, self._interrupt, task)

        async def remember(name: str) -> None:
            self.operation = name

        try:
            return await generator.generate(
                request,
                output,
                on_progress=printer,
                should_cancel=self._should_cancel,
                on_veo_operation=remember,
                resume_veo_operation=resume,
            )
        except asyncio.CancelledError:
            if self.stop.is_set():
                raise _Interrupted from None
            raise

    def _should_cancel(self) -> bool:
        """The engine's cancel callback, polled at each step (from the engine's thread)."""
        if not self.stop.is_set():
            return False
        # The engine has seen the stop and unwinds now: no forced exit from here on.
        self.finished()
        return True

    def _interrupt(self, task: asyncio.Task) -> None:
        if self.stop.is_set():
            self._leave()
        # Armed before the stop is visible, so the engine's acknowledgement always disarms it.
        self._timer = threading.Timer(STOP_GRACE_S, self._give_up)
        self._timer.daemon = True
        self._timer.start()
        self.stop.set()
        # Stop waiting now: a Veo poll sleeps for seconds; the engine thread sees ``stop``
        # at its next step and asyncio.run waits for it before returning.
        task.cancel()

    def _give_up(self) -> None:
        self.err.write(f"\nanimate-photo: the engine did not stop within {STOP_GRACE_S:g} s")
        self._leave()

    def _leave(self) -> None:
        self.report_interrupted()
        os._exit(EXIT_INTERRUPTED)

    def finished(self) -> None:
        """The engine has stopped (or is stopping by itself): no forced exit any more."""
        if self._timer is not None:
            self._timer.cancel()

    def report_interrupted(self) -> None:
        self.err.write("\nanimate-photo: interrupted\n")
        if self.operation:
            self.err.write(
                f"animate-photo: Veo operation {self.operation} is still running and is "
                f"billed; get its clip with:\n  {resume_command(self.argv, self.operation)}\n"
            )
        self.err.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit code.

    Meant to be the last thing the process does: it freezes the garbage collector on the
    way out, because the interpreter's final collections walk every object torch and
    diffusers made (seconds on a busy machine, after the clip is already written).
    """
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    finally:
        gc.freeze()


def _main(argv: list[str]) -> int:
    args = parse_args(argv)
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
        plan = generator.check(request)
        if not args.image.is_file():
            raise InvalidImage(f"{args.image}: no such file")
        if not args.quiet:
            print(f"animate-photo: {plan.text}", file=sys.stderr)
    except (ConfigError, InvalidRequest, InvalidImage) as exc:
        print(f"animate-photo: {exc}", file=err)
        return EXIT_BAD_INPUT
    except BackendUnavailable as exc:
        print(f"animate-photo: {exc}", file=err)
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED

    output = args.output or default_output_path(args.image)
    printer: ProgressPrinter | ProgressBar | None = None
    if not args.quiet:
        printer = ProgressBar(err) if err.isatty() else ProgressPrinter(err)
    run = Run(argv, err, operation=args.resume)
    started = time.monotonic()
    try:
        try:
            clip = asyncio.run(run.generate(generator, request, output, printer, args.resume))
        finally:
            run.finished()
            if printer:
                printer.close()
    except (_Interrupted, Cancelled, KeyboardInterrupt):
        run.report_interrupted()
        return EXIT_INTERRUPTED
    except (InvalidRequest, InvalidImage) as exc:
        print(f"animate-photo: {exc}", file=err)
        return EXIT_BAD_INPUT
    except BackendUnavailable as exc:
        print(f"animate-photo: {exc}", file=err)
        return EXIT_UNAVAILABLE
    except GeneratorError as exc:
        # A sentence for the person; which call failed and how goes to the log line above it.
        logging.getLogger("generator.cli").warning("%s", exc)
        print(f"animate-photo: {exc.user_text}", file=err)
        if run.operation and isinstance(exc, TransientError):
            # Veo may still finish it, and it is paid for: say how to fetch it.
            print(
                f"animate-photo: Veo operation {run.operation} may still finish and is "
                f"billed; try again later with:\n  {resume_command(argv, run.operation)}",
                file=err,
            )
        return EXIT_FAILED
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
    if run.operation and clip.backend is not Backend.VEO:
        # auto fell back after submitting: that Veo clip is paid for and may still arrive.
        veo_output = output.with_name(output.stem + "-veo.mp4")
        print(
            f"animate-photo: Veo operation {run.operation} was submitted (and is billed) but "
            f"did not deliver; if it was only slow, get its clip with:\n"
            f"  {resume_command(argv, run.operation, veo_output)}",
            file=err,
        )
    print(clip.path)
    return EXIT_OK
