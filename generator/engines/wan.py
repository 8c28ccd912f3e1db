"""Local image-to-video with Wan 2.2 TI2V-5B via diffusers' WanImageToVideoPipeline.

Example::

    >>> engine = build_engine(Backend.WAN, settings)  # generator.engines.catalog
    >>> frames = engine.generate(photo, Request(image=path, duration=4, seed=1))
    >>> len(frames.frames), frames.fps
    (97, 24)

Every Wan-specific knob lives here: the frame rule (``4k + 1`` frames: the Wan 2.2 VAE packs 4
frames into one latent after the first), the size rule (sides divisible by 32: 16x spatial
compression times the transformer's 2x2 patches, the photo's aspect within
``[wan] width x height`` pixels), 50 steps with classifier-free guidance 5, the prompt and
the negative prompt. The 5B model has no image encoder: the photo is VAE-encoded and replaces
the first latent frame, whose timestep is zero (``expand_timesteps``), as diffusers' Wan 2.2
5B image-to-video path does. Weights are placed by ``generator.engines.wan_speed``.

torch and diffusers are imported when a model loads, not with this module, so
:func:`wan_spec` can describe the engine to the bot without them.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from generator.clip import CancelFn, ProgressFn
from generator.config import WanSettings
from generator.engines import EngineSpec, Frames
from generator.engines.device import device_type, frames_to_uint8, step_end_callback
from generator.engines.pairing import Pairing, PeerLost, joined, leading
from generator.engines.pipeline import PipelineEngine
from generator.errors import BackendUnavailable
from generator.options import Backend, Profile, Request

if TYPE_CHECKING:
    import PIL.Image

log = logging.getLogger(__name__)

#: Frame counts are ``FRAME_STEP * k + 1``: the Wan 2.2 VAE's temporal compression.
FRAME_STEP = 4
#: Width and height are multiples of this: 16x VAE compression times 2x2 patches.
SIZE_MULTIPLE = 32
#: Tokens of prompt the UMT5 encoder reads (the pipeline's own default).
MAX_SEQUENCE_LENGTH = 512
#: The title people see.
TITLE = "Wan 2.2"


def _frames(seconds: float, fps: int) -> int:
    return FRAME_STEP * max(1, round((seconds * fps - 1) / FRAME_STEP)) + 1


def wan_spec(settings: WanSettings) -> EngineSpec:
    """What Wan 2.2 makes under ``settings``: ``4k+1`` frames at ``fps``, about
    ``min_seconds`` to ``max_seconds`` long, ``width x height`` pixels in the photo's aspect."""
    return EngineSpec(
        backend=Backend.WAN,
        title=TITLE,
        fps=settings.fps,
        frame_step=FRAME_STEP,
        default_frames=_frames(settings.default_seconds, settings.fps),
        min_frames=_frames(settings.min_seconds, settings.fps),
        max_frames=_frames(settings.max_seconds, settings.fps),
        size=(settings.width, settings.height),
        min_vram_gib=settings.min_vram_gib,
        steps=settings.steps,
        keep_aspect=True,
        size_multiple=SIZE_MULTIPLE,
        # Guidance 1 runs one pass a step; the first-block cache decides on one process what
        # both passes of a step skip, which a peer running the other pass cannot see.
        splits_guidance=settings.guidance_scale > 1 and not settings.first_block_cache,
    )


class WanEngine(PipelineEngine):
    """One Wan 2.2 TI2V-5B pipeline per process, loaded once and reused across clips.

    Args:
        settings: the ``[wan]`` settings (model, device, profile, area, steps, prompts).
        spec: what it makes (:func:`wan_spec`).
        hf_token: Hugging Face token; defaults to ``HF_TOKEN``. Never logged.
        clock: seconds, monotonic; progress ``elapsed`` is measured with it.
    """

    backend = Backend.WAN
    cpu_wait = "hours"

    def __init__(
        self,
        settings: WanSettings,
        *,
        spec: EngineSpec | None = None,
        hf_token: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(settings, spec=spec or wan_spec(settings), hf_token=hf_token, clock=clock)

    # --- loading ---

    def _dtypes(self, device: str) -> tuple[Any, Any]:
        """The transformer/text encoder dtype and the VAE's."""
        import torch

        names = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
        if device_type(device) == "cpu":
            # CPU kernels for half types are slow or missing; CPU runs are tests and tryouts.
            base = names.get(self.settings.dtype, torch.float32)
            return (torch.float32, torch.float32) if self.settings.dtype == "auto" else (base, base)
        # bf16 is what Wan 2.2 was trained in.
        base = torch.bfloat16 if self.settings.dtype == "auto" else names[self.settings.dtype]
        vae = base if self.settings.vae_dtype == "auto" else names[self.settings.vae_dtype]
        return base, vae

    def load(self, model: str | None = None, device: str | None = None) -> None:
        """Load the pipeline unless the same model is already loaded for the same device.

        Raises:
            BackendUnavailable: the device is missing; ``ModelUnavailable`` (a subclass) when
                the folder is missing or the model cannot be downloaded.
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
                f"Wan 2.2 device {device} is not available in this torch build or machine",
                user_text="The Wan 2.2 engine's GPU is not available.",
            )
        self.unload()
        dtype, vae_dtype = self._dtypes(device)
        log.info("Loading Wan 2.2 model %s on %s (%s, VAE %s)", model, device, dtype, vae_dtype)
        pipe = self._from_pretrained(model, dtype, vae_dtype)
        pipe.set_progress_bar_config(disable=True)  # we report progress ourselves
        self._pipe, self._model, self._device, self._profile = pipe, model, device, None

    def _from_pretrained(self, model: str, dtype: Any, vae_dtype: Any) -> Any:
        """``WanImageToVideoPipeline.from_pretrained`` with our errors at the edge.

        The TI2V-5B folder's ``model_index.json`` names the text-to-video ``WanPipeline``.
        Calling ``from_pretrained`` on ``WanImageToVideoPipeline`` itself (not on
        ``DiffusionPipeline``) makes diffusers build that class from the folder's components;
        the image encoder and processor it does not have are optional and stay ``None``, and
        ``expand_timesteps=True`` is passed explicitly so the photo conditions the first
        latent frame (diffusers' Wan 2.2 5B image-to-video path) whatever the folder says.
        The VAE loads on its own in ``vae_dtype`` (``[wan] vae_dtype``: bf16 on a GPU by
        default; fp32 as the model card loads it when asked).
        """
        from diffusers import AutoencoderKLWan, WanImageToVideoPipeline

        from generator import hub

        source = str(Path(model).expanduser()) if hub.looks_local(model) else model
        with hub.loading(model, key="wan.model"):  # one ModelUnavailable, with the ways out
            vae = AutoencoderKLWan.from_pretrained(
                source, subfolder="vae", dtype=vae_dtype, token=self._token
            )
            return WanImageToVideoPipeline.from_pretrained(
                source,
                vae=vae,
                image_encoder=None,
                image_processor=None,
                expand_timesteps=True,
                dtype=dtype,
                token=self._token,
            )

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
            request: duration (maps to ``4k+1`` frames at ``[wan] fps``), photo type,
                intensity and custom elements (the prompt), seed, steps, model, device, profile.
            progress: told "loading", then "denoising" step 1..n of n, then "decoding".
            cancel: polled after each step; ``True`` stops with ``Cancelled``.
            pairing: the leader's side of a clip shared with a peer serving ``serve_peer``
                for the same request: the peer makes each step's unconditional pass while
                this process makes the conditional one (``guidance_split.pair_guidance``).

        Returns:
            ``Frames``: the frames, the fps, the seed used, the profile and the step count.

        Raises:
            InvalidRequest: the length or size cannot be made (nothing was run).
            BackendUnavailable: the model cannot be loaded.
            OutOfMemory: the GPU ran out; the low-vram profile may work.
            Cancelled: ``cancel`` said so; the pipeline stays usable.
            PeerLost: the peer of ``pairing`` could not be reached; the same call without
                ``pairing`` makes the clip alone.
        """
        s = self.settings
        # 1. Check inputs before any loading or GPU work.
        self.refuse_pairing(pairing)  # guidance 1 has no second pass to share
        plan = self.check(request)
        width, height = photo.size
        self._check_photo(photo)
        steps = request.steps or s.steps

        # 2. Load (once per process) and place the weights for the chosen profile.
        chosen = self._prepare(request, progress)

        # 3. Prompt and seed.
        prompt, seed, generator = self._prompt_and_seed(request)
        log.info(
            "Wan 2.2: %dx%d, %s, %d steps, seed %d, profile %s",
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
            steps=steps,
            generator=generator,
            progress=progress,
            cancel=cancel,
            pairing=pairing,
        )
        return Frames(frames=frames, fps=plan.fps, seed=seed, profile=chosen, steps=steps)

    def serve_peer(self, request: Request, pairing: Pairing) -> int:
        """Be the peer of a leader's clip for ``request``: load and place the weights as
        ``generate`` would, then make each step's unconditional pass until the leader stops;
        returns the passes made.

        Raises:
            BackendUnavailable: the model cannot be loaded.
            OutOfMemory: placing the weights ran out of memory.
            PeerLost: the leader did not join, or stopped answering.
        """
        import torch

        from generator.engines.device import is_oom
        from generator.engines.guidance_split import serve_half

        self.refuse_pairing(pairing)
        if pairing.leads:
            raise ValueError("serve_peer needs the peer's pairing (rank 1)")
        self._prepare(request, None)
        transformer = self._pipe.transformer
        with joined(pairing, transformer):
            try:
                with torch.inference_mode():
                    served = serve_half(transformer)
            except Exception as exc:
                if is_oom(exc):
                    self._raise_failed(exc, self._profile)
                raise PeerLost(f"the leader stopped answering: {exc}") from exc
        log.info("Wan 2.2: made %d unconditional passes for the leader", served)
        return served

    def _place(self, profile: Profile) -> None:
        from generator.engines import wan_speed

        wan_speed.apply_profile(
            self._pipe,
            profile,
            device=self._device,
            first_block_cache=self.settings.first_block_cache,
        )

    def _run(
        self,
        photo: PIL.Image.Image,
        *,
        prompt: str,
        frames: int,
        steps: int,
        generator: Any,
        progress: ProgressFn | None,
        cancel: CancelFn | None,
        pairing: Pairing | None = None,
    ) -> list[Any]:
        """Call the pipeline once (its unconditional passes made by ``pairing``'s peer),
        translating out-of-memory at this edge.

        ``wan_speed`` picks compiled or eager blocks for this clip's shape (in ``fast`` a
        clip never waits for the compiler; in ``low-vram`` one may wait for the compile of
        a shape that the clip before it was the first of), supplies the prompt embeddings
        (cached per prompt, so the UMT5-XXL encoder runs only for a new one) and the frames
        as ``uint8`` made on the device.
        """
        import torch

        from generator.engines import wan_speed
        from generator.engines.guidance_split import pair_guidance

        pipe, s = self._pipe, self.settings
        on_step_end = step_end_callback(
            steps=steps, backend=Backend.WAN, progress=progress, cancel=cancel, clock=self._clock
        )

        try:
            with torch.inference_mode():
                wan_speed.before_clip(
                    pipe, height=photo.height, width=photo.width, num_frames=frames
                )
                embeds = wan_speed.prompt_kwargs(
                    pipe,
                    prompt,
                    s.negative_prompt,
                    guidance_scale=s.guidance_scale,
                    max_sequence_length=MAX_SEQUENCE_LENGTH,
                )
                # low-vram streams the weights from CPU memory once per call: opt-in, one a step.
                batched = (
                    s.guidance_batch
                    and self._profile is Profile.LOW_VRAM
                    and "negative_prompt_embeds" in embeds
                    and pairing is None  # the peer makes the second pass instead
                )
                if pairing is not None:
                    # The very tensor the pipeline passes tells the two calls of a step apart.
                    negative = embeds["negative_prompt_embeds"]
                    sharing = leading(
                        pairing, pipe.transformer, lambda m: pair_guidance(m, negative)
                    )
                elif batched:
                    sharing = wan_speed.GuidanceBatch(
                        pipe.transformer, embeds["prompt_embeds"], embeds["negative_prompt_embeds"]
                    )
                else:
                    sharing = contextlib.nullcontext()
                with sharing:
                    video = pipe(
                        image=photo,
                        width=photo.width,
                        height=photo.height,
                        num_frames=frames,
                        num_inference_steps=steps,
                        guidance_scale=s.guidance_scale,
                        generator=generator,
                        callback_on_step_end=on_step_end,
                        output_type="pt",
                        **embeds,
                    ).frames[0]
                return list(frames_to_uint8(video))
        except Exception as exc:
            self._raise_failed(exc, self._profile)
        finally:
            wan_speed.after_clip(pipe)  # low-vram: a new shape compiles now, while idle
