"""Local image-to-video with Stable Video Diffusion (SVD-XT) via diffusers, kept warm per process.

Example::

    >>> backend = SvdBackend(SvdSettings())
    >>> backend.load()  # once per process; later calls reuse the pipeline
    >>> result = backend.generate(photo, motion_bucket=127, fps=7, seed=42)
    >>> len(result.frames), result.seed
    (25, 42)

Every SVD-specific knob lives here (motion bucket, fps conditioning, noise augmentation,
decode chunking, guidance range, memory profiles). :class:`SvdEngine` puts it behind the
engine interface (``generator.engines.Engine``): the router hands it a ``Request`` and this
module alone turns intensity into a motion bucket.

Memory profiles (what each does is in ``generator.engines.svd_speed``, measured in
bench/RESULTS.md):

* ``FAST``: the whole pipeline on the device, fused QKV projections, cuDNN attention first,
  the exact one-token cross-attention, the VAE encoder kept in fp32; the UNet's blocks and the
  VAE decoder ``torch.compile``-d on a side thread when ``settings.compile`` (CUDA with Triton
  only), clips running eagerly until that is ready (``svd_speed.SvdCompile``); VAE decoding
  ``settings.decode_chunk_size`` frames at once. H100: 12.9 s a clip against stock
  diffusers' 19.0 s; H200: 17.4 s eager against 18.0 s stock.
* ``LOW_VRAM``: classifier-free guidance as two batch-1 UNet passes, the image encoder in CPU
  memory between clips, decode chunk 2; the UNet stays on the GPU, so steps are barely slower.
  H100: 13.2 s at 5.7 GiB peak allocated (the seed's offload + chunking: 23.8 s at 7.6 GiB).
* ``AUTO``: ``LOW_VRAM`` when less than ``settings.low_vram_threshold_gib`` of VRAM is free.

``settings.fp8`` (opt-in, CUDA Ada/Hopper with torchao) quantizes the UNet's linear layers
on top of ``FAST``; measured slower and less exact than fp16 so far, never the default.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import PIL.Image
import torch

from generator import hub
from generator.clip import CancelFn, Progress, ProgressFn
from generator.config import SvdSettings
from generator.engines import Engine, EngineSpec, Frames, choose_profile, svd_speed
from generator.engines.device import (
    device_type,
    frames_to_uint8,
    free_device_memory,
    free_vram,
    is_oom,
    report,
    step_end_callback,
)
from generator.engines.guidance_split import serve_half, split_guidance
from generator.engines.pairing import Pairing, PeerLost, joined, leading
from generator.errors import BackendUnavailable, InvalidRequest, OutOfMemory
from generator.options import Backend, Profile, Request

log = logging.getLogger(__name__)

_GIB = 1024**3
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def resolve_device(setting: str) -> str:
    """Turn ``auto`` into ``cuda``, else ``mps``, else ``cpu``; other values pass through.

    CPU works but is very slow (minutes per clip), so choosing it logs a warning.
    """
    if setting == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    else:
        device = setting
    if device == "cpu":
        log.warning("SVD is running on the CPU: expect minutes per clip")
    return device


def resolve_dtype(setting: str, device: str) -> torch.dtype:
    """Turn ``auto`` into float16 on CUDA/MPS and float32 on CPU; named dtypes pass through."""
    if setting == "auto":
        return torch.float16 if device_type(device) in ("cuda", "mps") else torch.float32
    try:
        return _DTYPES[setting]
    except KeyError:
        raise InvalidRequest(f"unknown dtype {setting!r}; use auto, {', '.join(_DTYPES)}") from None


def reads_onto_device(
    device: str, profile: Profile, free_vram_bytes: int | None, threshold_gib: float
) -> bool:
    """Whether ``from_pretrained`` reads the weights straight into ``device``'s memory.

    Only where every weight ends up there anyway: on ``cuda`` for ``FAST``, or ``AUTO`` that
    resolves to it (``choose_profile``, the same free VRAM). ``LOW_VRAM`` keeps the image
    encoder in CPU memory, and the CPU and MPS load as before. diffusers takes a pipeline's
    device map as ``"cuda"`` only, not ``"cuda:N"``, so those load onto the CPU too.
    """
    if device != "cuda":
        return False
    return choose_profile(profile, free_vram_bytes, threshold_gib) is Profile.FAST


#: What one SVD run made (the engine interface's ``Frames``; the name is kept for callers).
SvdFrames = Frames


def _has_variant_files(folder: Path, variant: str) -> bool:
    return any(f".{variant}." in p.name for p in folder.rglob("*"))


class SvdBackend:
    """One SVD pipeline per process, loaded once and reused across jobs.

    Args:
        settings: the ``[svd]`` settings (model, device, dtype, profile, defaults).
        hf_token: Hugging Face token for the gated SVD-XT weights; defaults to the
            ``HF_TOKEN`` environment variable. Never logged.
        clock: seconds, monotonic; progress ``elapsed`` is measured with it.

    Not thread-safe: run one ``generate`` at a time (the worker owns the GPU).
    """

    def __init__(
        self,
        settings: SvdSettings,
        *,
        hf_token: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._token = (hf_token if hf_token is not None else os.environ.get("HF_TOKEN")) or None
        self._clock = clock
        self._pipe: Any = None
        self._model: str | None = None
        self._device: str | None = None
        self._dtype: torch.dtype | None = None
        self._profile: Profile | None = None  # the profile the pipeline is set up for now
        self._fp8 = False  # fp8 weights cannot be undone: leaving FAST reloads the pipeline
        self._torch_configured = False

    def __repr__(self) -> str:  # the token stays out of logs and tracebacks
        return f"SvdBackend(model={self._model!r}, device={self._device!r}, loaded={self.loaded})"

    @property
    def loaded(self) -> bool:
        """Whether a pipeline is in memory."""
        return self._pipe is not None

    @property
    def pipeline(self) -> Any:
        """The loaded diffusers ``StableVideoDiffusionPipeline`` (``None`` before ``load``)."""
        return self._pipe

    def load(
        self, model: str | None = None, device: str | None = None, *, profile: Profile | None = None
    ) -> None:
        """Load the pipeline unless the same model is already loaded for the same device.

        Args:
            model: hub id or local folder; defaults to ``settings.model``.
            device: ``cuda``, ``mps``, ``cpu`` or ``auto``; defaults to ``settings.device``.
            profile: the profile it will be placed for (default ``settings.profile``): on
                CUDA, the fast one has the weights read straight into GPU memory
                (``reads_onto_device``); the others load onto the CPU.

        Raises:
            BackendUnavailable: the device is missing, the folder is missing, the hub
                cannot be reached, or the gated default needs ``HF_TOKEN``.
        """
        if self._is_loaded_for(model, device):
            return
        model = model or self.settings.model
        device = resolve_device(device or self.settings.device)
        if self._pipe is not None and (model, device) == (self._model, self._device):
            return
        kind = device_type(device)
        if (kind == "cuda" and not torch.cuda.is_available()) or (
            kind == "mps" and not torch.backends.mps.is_available()
        ):
            raise BackendUnavailable(
                f"SVD device {device} is not available in this torch build or machine",
                user_text="The local video engine's GPU is not available.",
            )
        self.unload()
        s = self.settings
        dtype = resolve_dtype(s.dtype, device)
        straight = reads_onto_device(
            device, profile or s.profile, free_vram(device), s.low_vram_threshold_gib
        )
        where = f"straight into {device} memory" if straight else f"for {device}"
        log.info("Loading SVD model %s %s (%s)", model, where, dtype)
        pipe = self._from_pretrained(model, device, dtype, straight=straight)
        # We report progress ourselves; diffusers' tqdm bar would only clutter the logs.
        pipe.set_progress_bar_config(disable=True)
        self._pipe, self._model, self._device, self._dtype = pipe, model, device, dtype
        self._profile = None  # on the CPU (or the GPU, read straight there) until placed

    def adopt(self, pipe: Any, *, model: str, device: str) -> None:
        """Use a pipeline built elsewhere as if ``load(model, device)`` had made it.

        For benchmarks of random-weight pipelines built from configs: they then run through
        the same profile and ``generate`` code as real weights.
        """
        self.unload()
        pipe.set_progress_bar_config(disable=True)
        self._pipe, self._model, self._device = pipe, model, resolve_device(device)
        self._dtype = pipe.unet.dtype
        self._profile = None

    def unload(self) -> None:
        """Drop the pipeline and give its memory back."""
        if self._pipe is None:
            return
        self._pipe = None
        self._model = self._device = self._dtype = self._profile = None
        self._fp8 = False
        free_device_memory()

    def _from_pretrained(
        self, model: str, device: str, dtype: torch.dtype, *, straight: bool = False
    ) -> Any:
        """``StableVideoDiffusionPipeline.from_pretrained`` with our errors at the edge.

        ``straight``: read the weights from the files into ``device``'s memory (diffusers'
        pipeline ``device_map``, through accelerate) instead of into CPU memory, from which
        placing the profile would copy all 4 GB again.
        """
        from diffusers import StableVideoDiffusionPipeline
        from diffusers.utils import is_accelerate_available

        local = hub.looks_local(model)
        # fp16 weight files halve the download; only worth it on CUDA, and only if present.
        variant = self.settings.variant or None
        if device_type(device) != "cuda":
            variant = None
        elif variant and local and not _has_variant_files(Path(model).expanduser(), variant):
            variant = None
        kwargs: dict[str, Any] = {"dtype": dtype, "token": self._token}
        if straight and is_accelerate_available():  # a dependency; diffusers needs it for this
            kwargs["device_map"] = device_type(device)
        with hub.loading(model, key="svd.model"):  # one ModelUnavailable, with the ways out
            try:
                return StableVideoDiffusionPipeline.from_pretrained(
                    model, variant=variant, **kwargs
                )
            except ValueError as exc:
                if variant is None or "variant" not in str(exc):
                    raise
                log.info("No %s weights for %s; loading the default ones", variant, model)
                return StableVideoDiffusionPipeline.from_pretrained(model, **kwargs)

    def generate(
        self,
        image: PIL.Image.Image,
        *,
        motion_bucket: int,
        fps: int,
        steps: int | None = None,
        frames: int | None = None,
        seed: int | None = None,
        profile: Profile | None = None,
        model: str | None = None,
        device: str | None = None,
        on_progress: ProgressFn | None = None,
        should_cancel: CancelFn | None = None,
        pairing: Pairing | None = None,
    ) -> SvdFrames:
        """Animate ``image`` into ``frames`` frames of the same size.

        Args:
            image: the prepared photo; width and height must be multiples of 8
                (SVD-XT was trained at 1024x576 and 576x1024).
            motion_bucket: 0-255; the higher, the more motion (SVD's default is 127).
            fps: the clip's frame rate; SVD is also conditioned on it (as ``fps - 1``,
                which diffusers does internally), so it changes the motion's pace.
            steps: denoising steps (default ``settings.steps``); more is slower and cleaner.
            frames: frames to make, at least 2 (default ``settings.frames``, 25 for SVD-XT).
            seed: makes the clip reproducible; ``None`` picks one, returned in the result.
            profile: memory profile (default ``settings.profile``).
            model, device: override the settings; the pipeline reloads if they change.
            on_progress: told "loading", then "denoising" step 1..n of n, then "decoding".
            should_cancel: polled after each step; ``True`` stops with ``Cancelled``.
            pairing: the leader's side of a clip shared with a peer serving ``serve_peer``:
                each step's guidance batch is split in two (``guidance_split``).

        Returns:
            ``SvdFrames`` with the frames, the fps, the seed used, the profile and steps.

        Raises:
            InvalidRequest: bad arguments (nothing was run).
            BackendUnavailable: the model cannot be loaded.
            OutOfMemory: the GPU ran out; retrying with ``profile=Profile.LOW_VRAM`` may work.
            Cancelled: ``should_cancel`` said so; the pipeline stays usable.
            PeerLost: the peer of ``pairing`` could not be reached; the same call without
                ``pairing`` makes the clip alone.
        """
        s = self.settings
        steps = s.steps if steps is None else steps
        frames = s.frames if frames is None else frames

        # 1. Check inputs before any loading or GPU work.
        self.check_inputs(image, motion_bucket=motion_bucket, fps=fps, steps=steps, frames=frames)

        # 2. Load (once per process) and place the pipeline for the chosen profile.
        chosen = self._placed(profile, model, device, on_progress)
        decode_chunk = (
            s.decode_chunk_size if chosen is Profile.FAST else svd_speed.LOW_VRAM_DECODE_CHUNK
        )

        # 3. Seed: a CPU generator gives the same noise for a seed on every device.
        seed = secrets.randbits(63) if seed is None else seed
        generator = torch.Generator(device="cpu").manual_seed(seed)

        # 4. Denoise and decode; progress and cancel ride on callback_on_step_end.
        log.info(
            "SVD: %dx%d, %d frames, %d steps, motion %d, fps %d, seed %d, profile %s",
            *image.size,
            frames,
            steps,
            motion_bucket,
            fps,
            seed,
            chosen,
        )
        output = self._run(
            image.convert("RGB"),
            frames=frames,
            steps=steps,
            motion_bucket=motion_bucket,
            fps=fps,
            generator=generator,
            decode_chunk=decode_chunk,
            on_progress=on_progress,
            should_cancel=should_cancel,
            pairing=pairing,
        )
        return SvdFrames(frames=output, fps=fps, seed=seed, profile=chosen, steps=steps)

    def serve_peer(
        self,
        pairing: Pairing,
        *,
        profile: Profile | None = None,
        model: str | None = None,
        device: str | None = None,
    ) -> int:
        """Be the peer of a leader's clip: load and place the pipeline as ``generate`` would
        for the same arguments, then run the second half of each guidance batch until the
        leader stops; returns the UNet calls served.

        Raises:
            BackendUnavailable: the model cannot be loaded.
            OutOfMemory: placing the weights ran out of memory.
            PeerLost: the leader did not join, or stopped answering.
        """
        if pairing.leads:
            raise ValueError("serve_peer needs the peer's pairing (rank 1)")
        self._placed(profile, model, device, None)
        unet = self._pipe.unet
        job = svd_speed.compile_job(self._pipe)
        with joined(pairing, unet):
            try:
                # A compile beside the clip pauses until it ends, as for the leader's clips.
                with job.serving() if job else contextlib.nullcontext():
                    served = serve_half(unet)
            except Exception as exc:
                if is_oom(exc):
                    self._raise_failed(exc, self._profile)
                raise PeerLost(f"the leader stopped answering: {exc}") from exc
        log.info("SVD: served %d guidance halves for the leader on port %d", served, pairing.port)
        return served

    def _placed(
        self,
        profile: Profile | None,
        model: str | None,
        device: str | None,
        on_progress: ProgressFn | None,
    ) -> Profile:
        """Load (once per process) and place the pipeline for the chosen profile."""
        s = self.settings
        if not self._is_loaded_for(model, device):
            started = self._clock()
            report(on_progress, Progress("loading", backend=Backend.SVD))
            self.load(model, device, profile=profile)
            log.info("SVD model loaded in %.1f s", self._clock() - started)
        if self._device is None:
            raise RuntimeError("broken invariant: self._device is not None")
        chosen = choose_profile(profile or s.profile, self._free_vram(), s.low_vram_threshold_gib)
        try:
            self._apply_profile(chosen)
        except Exception as exc:
            # Moving the weights onto the card is the first thing that can run out of memory.
            self._profile = None  # half placed: set it up again next time
            self._raise_failed(exc, chosen)
        return chosen

    @staticmethod
    def check_inputs(
        image: PIL.Image.Image, *, motion_bucket: int, fps: int, steps: int, frames: int
    ) -> None:
        """Raise ``InvalidRequest`` with a short reason if SVD cannot run these arguments."""
        width, height = image.size
        if width % 8 or height % 8:
            raise InvalidRequest(
                f"image width and height must be multiples of 8, not {width}x{height}"
            )
        if frames < 2:
            raise InvalidRequest(f"frames must be at least 2, got {frames}")
        if steps < 1:
            raise InvalidRequest(f"steps must be at least 1, got {steps}")
        if fps < 1:
            raise InvalidRequest(f"fps must be at least 1, got {fps}")
        if not 0 <= motion_bucket <= 255:
            raise InvalidRequest(f"motion bucket must be 0-255, got {motion_bucket}")

    def prepare(self, width: int, height: int) -> bool:
        """Place a freshly loaded pipeline for its profile and start compiling clips of
        ``width`` x ``height`` (and the other orientation) on a side thread, before any clip
        asks; return whether a compile started. Nothing happens without ``settings.compile``,
        off CUDA, or once the pipeline is placed.
        The compile pauses while clips run (``SvdCompile``), so it uses the time between them;
        it waits up to ``svd_speed.LOAD_GRACE_S`` for a first clip (a restarted worker's queued
        job), which then runs alone.
        """
        if self._pipe is None or self._device is None or not self.settings.compile:
            return False
        if self._profile is not None:
            return False  # placed already (the router loads before every job): leave it
        if not svd_speed.compile_available(self._device):
            return False
        s = self.settings
        chosen = choose_profile(s.profile, self._free_vram(), s.low_vram_threshold_gib)
        self._apply_profile(chosen)
        chunk = s.decode_chunk_size if chosen is Profile.FAST else svd_speed.LOW_VRAM_DECODE_CHUNK
        svd_speed.before_clip(
            self._pipe,
            height=height,
            width=width,
            frames=s.frames,
            decode_chunk=chunk,
            guidance=s.max_guidance_scale > 1,
            grace_s=svd_speed.LOAD_GRACE_S,
        )
        job = svd_speed.compile_job(self._pipe)
        return job is not None and job.busy

    def _is_loaded_for(self, model: str | None, device: str | None) -> bool:
        if self._pipe is None:
            return False
        wanted_model = model or self.settings.model
        wanted_device = device or self.settings.device
        # "auto" resolves to whatever is loaded now: nothing to reload.
        return wanted_model == self._model and wanted_device in ("auto", self._device)

    def _free_vram(self) -> int | None:
        """Bytes this process could use on the CUDA device, or ``None`` off CUDA."""
        if self._device is None:
            raise RuntimeError("broken invariant: self._device is not None")
        return free_vram(self._device)

    def _apply_profile(self, profile: Profile) -> None:
        """Place the pipeline for ``profile`` (``svd_speed`` undoes the other profile first)."""
        if profile is self._profile:
            return
        if not self._torch_configured:
            # Before the first compile: a fixed cache folder lets restarts skip compiling.
            cache = Path(self.settings.cache_dir).expanduser() if self.settings.cache_dir else None
            svd_speed.configure_torch(cache)
            self._torch_configured = True
        if self._fp8:
            # fp8 weights cannot be turned back into fp16 ones: start from the files again.
            model, device = self._model, self._device
            self.unload()
            self.load(model, device, profile=profile)
        pipe, device = self._pipe, self._device
        if device is None:
            raise RuntimeError("broken invariant: device is not None")
        applied = svd_speed.apply_profile(
            pipe, profile, device=device, compile=self.settings.compile
        )
        if profile is Profile.FAST and self.settings.fp8:
            try:
                applied = svd_speed.apply_fp8(pipe, device=device)
                self._fp8 = True
            except BackendUnavailable as exc:
                log.warning("svd.fp8 is set but %s; running fp16", exc)
        log.info(
            "SVD profile %s on %s: %s%s",
            profile,
            device,
            ", ".join(applied.steps),
            f" (skipped: {'; '.join(applied.skipped)})" if applied.skipped else "",
        )
        self._profile = profile
        free_device_memory()

    def _run(
        self,
        image: PIL.Image.Image,
        *,
        frames: int,
        steps: int,
        motion_bucket: int,
        fps: int,
        generator: torch.Generator,
        decode_chunk: int,
        on_progress: ProgressFn | None,
        should_cancel: CancelFn | None,
        pairing: Pairing | None = None,
    ) -> list[np.ndarray]:
        """Call the pipeline once (its guidance batches shared with ``pairing``'s peer),
        translating out-of-memory at this edge.

        A compiled module that fails to compile falls back to eager inside its own forward
        (``svd_speed.compile_module``), so compile problems never reach the user.
        """
        pipe, s = self._pipe, self.settings
        call = dict(
            image=image,
            width=image.width,
            height=image.height,
            num_frames=frames,
            num_inference_steps=steps,
            min_guidance_scale=s.min_guidance_scale,
            max_guidance_scale=s.max_guidance_scale,
            fps=fps,
            motion_bucket_id=motion_bucket,
            noise_aug_strength=s.noise_aug_strength,
            decode_chunk_size=decode_chunk,
            generator=generator,
            # Frames as a GPU tensor, made uint8 there: the same bytes as stock's PIL frames
            # without the float copy to the CPU and 25 PIL images to unpack again.
            output_type="pt",
        )
        job = svd_speed.compile_job(pipe)
        shared = leading(pairing, pipe.unet, split_guidance) if pairing else None
        try:
            # A compile beside the clip pauses until it ends (it slowed clips by 20-110%).
            with job.serving() if job else contextlib.nullcontext():
                # Compiled blocks once ready for this shape; until then eager. Asked inside
                # serving(), so a compile this clip starts begins only when the clip ends.
                compiled = svd_speed.before_clip(
                    pipe,
                    height=image.height,
                    width=image.width,
                    frames=frames,
                    decode_chunk=decode_chunk,
                    guidance=s.max_guidance_scale > 1,
                )
                call["callback_on_step_end"] = step_end_callback(
                    steps=steps,
                    backend=Backend.SVD,
                    progress=on_progress,
                    cancel=should_cancel,
                    clock=self._clock,
                    warming=not compiled and job is not None,
                )
                with torch.inference_mode(), shared or contextlib.nullcontext():
                    return list(frames_to_uint8(pipe(**call).frames[0]))
        except Exception as exc:
            self._raise_failed(exc, self._profile)

    def _raise_failed(self, exc: Exception, profile: Profile | None) -> NoReturn:
        """Recover from a failed run, then raise: out-of-memory as ours, the rest as is."""
        self._recover()
        if is_oom(exc):
            raise OutOfMemory(f"{self._device} ran out of memory in profile {profile}") from exc
        raise exc

    def _recover(self) -> None:
        """Leave the pipeline ready for the next call after a run stopped half way."""
        pipe = self._pipe
        # Stock diffusers upcasts an fp16 VAE to fp32 around encoding; an exception in between
        # would leave the decoder fp32 and break the next decode with a dtype mismatch. (Our
        # profiles keep only the encoder in fp32, on purpose: svd_speed.fp32_vae_encoder.)
        decoder = pipe.vae.decoder
        if self._dtype is not None and next(decoder.parameters()).dtype != self._dtype:
            decoder.to(dtype=self._dtype)
        pipe.maybe_free_model_hooks()  # offload hooks back to their start state
        free_device_memory()


class SvdEngine(Engine):
    """SVD-XT behind the engine interface: a ``Request`` in, ``Frames`` out.

    Args:
        settings: the ``[svd]`` settings.
        spec: what it makes (``generator.engines.catalog.svd_spec``).
        backend_kwargs: passed to :class:`SvdBackend` (``hf_token``, ``clock``).
    """

    backend = Backend.SVD

    def __init__(self, settings: SvdSettings, *, spec: EngineSpec, **backend_kwargs: Any) -> None:
        self.settings = settings
        self.spec = spec
        self.svd = SvdBackend(settings, **backend_kwargs)

    def __repr__(self) -> str:
        return f"SvdEngine({self.svd!r})"

    @property
    def loaded(self) -> bool:
        return self.svd.loaded

    def load(self, model: str | None = None, device: str | None = None) -> None:
        """Load, then start compiling the usual clip size behind the jobs (CUDA only)."""
        self.svd.load(model, device)
        width, height = self.spec.size
        self.svd.prepare(width, height)

    def unload(self) -> None:
        self.svd.unload()

    def generate(
        self,
        photo: PIL.Image.Image,
        request: Request,
        progress: ProgressFn | None = None,
        cancel: CancelFn | None = None,
        pairing: Pairing | None = None,
    ) -> Frames:
        """Animate ``photo`` with the motion bucket ``request``'s intensity (or motion) picks;
        with a ``pairing``, each step's guidance batch is shared with its peer."""
        self.refuse_pairing(pairing)  # guidance 1 has no second pass to share
        plan = self.check(request)  # a length SVD cannot make is refused before loading
        return self.svd.generate(
            photo,
            frames=plan.frames,
            motion_bucket=request.motion_bucket(),
            fps=request.fps or self.settings.fps,
            steps=request.steps,
            seed=request.seed,
            profile=request.profile,
            model=request.model,
            device=request.device,
            on_progress=progress,
            should_cancel=cancel,
            pairing=pairing,
        )

    def serve_peer(self, request: Request, pairing: Pairing) -> int:
        """Serve half of each guidance batch of the leader's clip for ``request``."""
        self.refuse_pairing(pairing)
        return self.svd.serve_peer(
            pairing, profile=request.profile, model=request.model, device=request.device
        )

    def resident_bytes(self) -> int:
        pipe = self.svd.pipeline
        if pipe is None:
            return 0
        return sum(
            p.numel() * p.element_size()
            for module in (pipe.unet, pipe.vae, pipe.image_encoder)
            for p in module.parameters()
            if p.device.type == "cuda"
        )
