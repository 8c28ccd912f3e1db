"""Local image-to-video with LTX-Video (a distilled checkpoint) via diffusers' LTXConditionPipeline.

Example::

    >>> engine = build_engine(Backend.LTX, settings)  # generator.engines.catalog
    >>> frames = engine.generate(photo, Request(image=path, duration=4, seed=1))
    >>> len(frames.frames), frames.fps
    (97, 24)

Every LTX-specific knob lives here: the frame rule (``8k + 1`` frames: the VAE packs 8 frames
into one latent after the first), the size rule (sides divisible by 32, the photo's aspect
within ``[ltx] width x height`` pixels), the distilled timesteps, guidance 1, the decode
timestep and noise, the frame-rate conditioning, and the prompt. The photo conditions frame 0
(``LTXVideoCondition``). Weights are placed by ``generator.engines.ltx_speed.apply_profile``.

torch and diffusers are imported when a model loads, not with this module, so
:func:`ltx_spec` can describe the engine to the bot without them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from generator import hub
from generator.clip import CancelFn, ProgressFn
from generator.config import LtxSettings
from generator.engines import EngineSpec, Frames
from generator.engines.device import device_type, frames_to_uint8, step_end_callback
from generator.engines.pipeline import PipelineEngine
from generator.errors import BackendUnavailable
from generator.options import Backend, Profile, Request

if TYPE_CHECKING:
    import PIL.Image

    from generator.engines.pairing import Pairing

log = logging.getLogger(__name__)

#: Frame counts are ``FRAME_STEP * k + 1``: the VAE's temporal compression.
FRAME_STEP = 8
#: Width and height are multiples of this: the VAE's spatial compression (32 for LTX-Video).
SIZE_MULTIPLE = 32
#: The title people see.
TITLE = "LTX-Video"

_GIB = 1024**3


def _frames(seconds: float, fps: int) -> int:
    return FRAME_STEP * max(1, round((seconds * fps - 1) / FRAME_STEP)) + 1


def ltx_spec(settings: LtxSettings) -> EngineSpec:
    """What LTX-Video makes under ``settings``: ``8k+1`` frames at ``fps``, about
    ``min_seconds`` to ``max_seconds`` long, ``width x height`` pixels in the photo's aspect."""
    steps = len(settings.timesteps) or settings.steps
    return EngineSpec(
        backend=Backend.LTX,
        title=TITLE,
        fps=settings.fps,
        frame_step=FRAME_STEP,
        default_frames=_frames(settings.default_seconds, settings.fps),
        min_frames=_frames(settings.min_seconds, settings.fps),
        max_frames=_frames(settings.max_seconds, settings.fps),
        size=(settings.width, settings.height),
        min_vram_gib=settings.min_vram_gib,
        steps=steps,
        keep_aspect=True,
        size_multiple=SIZE_MULTIPLE,
    )


def _repo_of(single_file: str) -> str:
    """``owner/name`` of a Hugging Face file URL (for the licence link), else the path itself.

    >>> _repo_of("https://huggingface.co/Lightricks/LTX-Video/blob/main/ltxv-2b.safetensors")
    'Lightricks/LTX-Video'
    """
    prefix = "https://huggingface.co/"
    if single_file.startswith(prefix):
        return "/".join(single_file[len(prefix) :].split("/")[:2])
    return single_file


class LtxEngine(PipelineEngine):
    """One LTX-Video pipeline per process, loaded once and reused across clips.

    Args:
        settings: the ``[ltx]`` settings (model, device, profile, size, steps, prompts).
        spec: what it makes (:func:`ltx_spec`).
        hf_token: Hugging Face token; defaults to ``HF_TOKEN``. Never logged.
        clock: seconds, monotonic; progress ``elapsed`` is measured with it.
    """

    backend = Backend.LTX
    cpu_wait = "minutes"

    def __init__(
        self,
        settings: LtxSettings,
        *,
        spec: EngineSpec | None = None,
        hf_token: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(settings, spec=spec or ltx_spec(settings), hf_token=hf_token, clock=clock)

    # --- loading ---

    def _dtype(self, device: str) -> Any:
        import torch

        names = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
        if self.settings.dtype != "auto":
            return names[self.settings.dtype]
        # bf16 is what LTX-Video was trained in; CPU kernels for it are slow or missing.
        return torch.float32 if device_type(device) == "cpu" else torch.bfloat16

    def load(self, model: str | None = None, device: str | None = None) -> None:
        """Load the pipeline unless the same model is already loaded for the same device.

        Raises:
            BackendUnavailable: the device or folder is missing, the hub cannot be reached,
                or the checkpoint is gated and no ``HF_TOKEN`` is set.
        """
        import torch

        if self._is_loaded_for(model, device):
            return
        model = model or self.settings.model
        device = self._resolve_device(device or self.settings.device)
        kind = device_type(device)
        if (kind == "cuda" and not torch.cuda.is_available()) or (
            kind == "mps" and not torch.backends.mps.is_available()
        ):
            raise BackendUnavailable(
                f"LTX-Video device {device} is not available in this torch build or machine",
                user_text="The LTX-Video engine's GPU is not available.",
            )
        self.unload()
        dtype = self._dtype(device)
        log.info("Loading LTX-Video model %s on %s (%s)", model, device, dtype)
        pipe = self._from_pretrained(model, dtype, own_transformer=model != self.settings.model)
        pipe.set_progress_bar_config(disable=True)  # we report progress ourselves
        self._pipe, self._model, self._device, self._profile = pipe, model, device, None

    def _from_pretrained(self, model: str, dtype: Any, *, own_transformer: bool) -> Any:
        """``LTXConditionPipeline.from_pretrained`` with our errors at the edge
        (``generator.hub``: what is missing, and the two ways out).

        ``[ltx] transformer`` (a single file) replaces the folder's transformer, unless a
        request named another model: that folder is used whole.
        """
        from diffusers import LTXConditionPipeline, LTXVideoTransformer3DModel

        kwargs: dict[str, Any] = {"dtype": dtype, "token": self._token}
        source = str(Path(model).expanduser()) if hub.looks_local(model) else model
        with hub.loading(model, key="ltx.model"):  # a missing folder is refused first
            single = self.settings.transformer
            if single and not own_transformer:
                try:
                    kwargs["transformer"] = LTXVideoTransformer3DModel.from_single_file(
                        single, dtype=dtype, token=self._token
                    )
                except (OSError, ValueError) as exc:
                    raise hub.model_unavailable(exc, _repo_of(single), "ltx.transformer") from exc
            return LTXConditionPipeline.from_pretrained(source, **kwargs)

    # --- generating ---

    def generate(
        self,
        photo: PIL.Image.Image,
        request: Request,
        progress: ProgressFn | None = None,
        cancel: CancelFn | None = None,
        pairing: Pairing | None = None,
    ) -> Frames:
        """Animate ``photo`` (frame 0 of the clip) into the frames ``request`` asks for.

        Args:
            photo: the prepared photo, sides multiples of 32 (``spec.size_for`` chose them).
            request: duration (maps to ``8k+1`` frames at ``[ltx] fps``), photo type,
                intensity and custom elements (the prompt), seed, steps, model, device, profile.
            progress: told "loading", then "denoising" step 1..n of n, then "decoding".
            cancel: polled after each step; ``True`` stops with ``Cancelled``.
            pairing: refused (``InvalidRequest``): the distilled model runs one pass a step.

        Returns:
            ``Frames``: the frames, the fps, the seed used, the profile and the step count.

        Raises:
            InvalidRequest: the length or size cannot be made (nothing was run).
            BackendUnavailable: the model cannot be loaded.
            OutOfMemory: the GPU ran out; the low-vram profile may work.
            Cancelled: ``cancel`` said so; the pipeline stays usable.
        """
        s = self.settings
        # 1. Check inputs before any loading or GPU work.
        self.refuse_pairing(pairing)
        plan = self.check(request)
        width, height = photo.size
        self._check_photo(photo)
        timesteps: list[float] | None = list(s.timesteps) or None
        steps = request.steps or (len(timesteps) if timesteps else s.steps)
        if timesteps and steps != len(timesteps):
            timesteps = None  # another step count: the pipeline's own schedule for it

        # 2. Load (once per process) and place the weights for the chosen profile.
        chosen = self._prepare(request, progress)

        # 3. Prompt and seed.
        prompt, seed, generator = self._prompt_and_seed(request)
        log.info(
            "LTX-Video: %dx%d, %s, %d steps, seed %d, profile %s",
            width,
            height,
            plan.describe(),
            steps,
            seed,
            chosen,
        )

        # 4. Denoise and decode; progress and cancel ride on callback_on_step_end.
        frames = self._run(
            photo.convert("RGB"),
            prompt=prompt,
            frames=plan.frames,
            fps=plan.fps,
            steps=steps,
            timesteps=timesteps,
            generator=generator,
            progress=progress,
            cancel=cancel,
        )
        return Frames(frames=frames, fps=plan.fps, seed=seed, profile=chosen, steps=steps)

    def _place(self, profile: Profile) -> None:
        from generator.engines import ltx_speed

        ltx_speed.apply_profile(self._pipe, profile, device=self._device)

    def _run(
        self,
        photo: PIL.Image.Image,
        *,
        prompt: str,
        frames: int,
        fps: int,
        steps: int,
        timesteps: list[float] | None,
        generator: Any,
        progress: ProgressFn | None,
        cancel: CancelFn | None,
    ) -> list[Any]:
        """Call the pipeline once, translating out-of-memory at this edge.

        ``ltx_speed`` supplies the prompt embeddings (cached per prompt, so the T5 encoder
        runs only for a new one), compiled blocks once ready for this shape, and the frames
        as ``uint8`` made on the device (the stock float-numpy path costs about 0.5 s).
        """
        import torch
        from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition

        from generator.engines import ltx_speed

        pipe, s = self._pipe, self.settings
        on_step_end = step_end_callback(
            steps=steps, backend=Backend.LTX, progress=progress, cancel=cancel, clock=self._clock
        )

        call: dict[str, Any] = dict(
            conditions=[LTXVideoCondition(image=photo, frame_index=0)],
            width=photo.width,
            height=photo.height,
            num_frames=frames,
            frame_rate=fps,
            guidance_scale=s.guidance_scale,
            decode_timestep=s.decode_timestep,
            decode_noise_scale=s.decode_noise_scale,
            image_cond_noise_scale=s.image_cond_noise_scale,
            generator=generator,
            callback_on_step_end=on_step_end,
            output_type="pt",
        )
        if timesteps:
            call["timesteps"] = timesteps
        else:
            call["num_inference_steps"] = steps
        try:
            with torch.inference_mode():
                ltx_speed.before_clip(
                    pipe, height=photo.height, width=photo.width, num_frames=frames
                )
                call |= ltx_speed.prompt_kwargs(
                    pipe, prompt, s.negative_prompt, guidance_scale=s.guidance_scale
                )
                video = pipe(**call).frames[0]
                return list(frames_to_uint8(video))
        except Exception as exc:
            self._raise_failed(exc, self._profile)
