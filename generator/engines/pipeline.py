"""What the LTX-Video and Wan engines share: one diffusers pipeline per process, its device,
whether it is loaded for a request, placing it for a memory profile, the prompt and seed of a
clip, its memory, unloading, and leaving it usable after a failure."""

from __future__ import annotations

import abc
import logging
import os
import secrets
import time
from collections.abc import Callable
from typing import Any, NoReturn

from generator.clip import Progress, ProgressFn
from generator.engines import Engine, EngineSpec, choose_profile
from generator.engines.device import (
    free_device_memory,
    free_vram,
    is_oom,
    report,
)
from generator.errors import InvalidRequest, OutOfMemory
from generator.options import Profile, Request
from generator.prompt import build_ltx_prompt

log = logging.getLogger(__name__)


class PipelineEngine(Engine):
    """A local engine around one diffusers pipeline with a transformer, a VAE and a text
    encoder, loaded once and reused across clips.

    Args:
        settings: the engine's config table (``model``, ``device``, ...).
        spec: what it makes.
        hf_token: Hugging Face token; defaults to ``HF_TOKEN``. Never logged.
        clock: seconds, monotonic; progress ``elapsed`` is measured with it.
    """

    #: How slow a clip is on the CPU, for the warning when ``auto`` finds no GPU.
    cpu_wait: str = "minutes"

    def __init__(
        self,
        settings: Any,
        *,
        spec: EngineSpec,
        hf_token: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.spec = spec
        self._token = (hf_token if hf_token is not None else os.environ.get("HF_TOKEN")) or None
        self._clock = clock
        self._pipe: Any = None
        self._model: str | None = None
        self._device: str | None = None
        self._profile: Profile | None = None

    def __repr__(self) -> str:  # the token stays out of logs and tracebacks
        name = type(self).__name__
        return f"{name}(model={self._model!r}, device={self._device!r}, loaded={self.loaded})"

    @property
    def loaded(self) -> bool:
        return self._pipe is not None

    @property
    def pipeline(self) -> Any:
        """The loaded diffusers pipeline (``None`` before ``load``)."""
        return self._pipe

    def _resolve_device(self, setting: str) -> str:
        import torch

        if setting != "auto":
            return setting
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        log.warning("%s is running on the CPU: expect %s per clip", self.spec.title, self.cpu_wait)
        return "cpu"

    def _is_loaded_for(self, model: str | None, device: str | None) -> bool:
        if self._pipe is None:
            return False
        wanted_device = device or self.settings.device
        return (model or self.settings.model) == self._model and wanted_device in (
            "auto",
            self._device,
        )

    def unload(self) -> None:
        if self._pipe is None:
            return
        self._pipe = None
        self._model = self._device = self._profile = None
        free_device_memory()

    def resident_bytes(self) -> int:
        if self._pipe is None:
            return 0
        pipe = self._pipe
        return sum(
            p.numel() * p.element_size()
            for module in (pipe.transformer, pipe.vae, pipe.text_encoder)
            for p in module.parameters()
            if p.device.type == "cuda"
        )

    def _free_vram(self) -> int | None:
        """Free CUDA memory plus what our pipeline already holds; ``None`` off CUDA."""
        return None if self._device is None else free_vram(self._device)

    # --- what each clip does first ---

    def _check_photo(self, photo: Any) -> None:
        """The photo's sides must be multiples of what the model takes (``spec.size_for``
        chose them); nothing has run yet."""
        width, height, multiple = photo.width, photo.height, self.spec.size_multiple
        if width % multiple or height % multiple:
            raise InvalidRequest(
                f"{self.spec.title} needs sides divisible by {multiple}, not {width}x{height}"
            )

    def _prepare(self, request: Request, progress: ProgressFn | None) -> Profile:
        """Load (once per process) and place the weights for the chosen profile."""
        s = self.settings
        if not self._is_loaded_for(request.model, request.device):
            started = self._clock()
            report(progress, Progress("loading", backend=self.spec.backend))
            self.load(request.model, request.device)
            log.info("%s model loaded in %.1f s", self.spec.title, self._clock() - started)
        chosen = choose_profile(
            request.profile or s.profile, self._free_vram(), s.low_vram_threshold_gib
        )
        try:
            self._apply_profile(chosen)
        except Exception as exc:
            self._profile = None
            self._raise_failed(exc, chosen)
        return chosen

    def _prompt_and_seed(self, request: Request) -> tuple[str, int, Any]:
        """The clip's prompt (the shared builder's descriptive text: LTX-Video and Wan both
        follow prompts that describe the footage), its seed, and a CPU generator seeded with
        it (the same noise for a seed on every device)."""
        import torch

        prompt = build_ltx_prompt(
            request.photo_type, request.motion_words(), request.custom_elements
        )
        seed = secrets.randbits(63) if request.seed is None else request.seed
        return prompt, seed, torch.Generator(device="cpu").manual_seed(seed)

    def _apply_profile(self, profile: Profile) -> None:
        """Place the weights for ``profile``; leaving a placed profile reloads the files
        (offload hooks are not undone in place)."""
        if profile is self._profile:
            return
        if self._profile is not None:
            model, device = self._model, self._device
            self.unload()
            self.load(model, device)
        if self._device is None:
            raise RuntimeError(f"place the {self.spec.title} pipeline after loading it")
        self._place(profile)
        log.info("%s profile %s on %s", self.spec.title, profile, self._device)
        self._profile = profile

    @abc.abstractmethod
    def _place(self, profile: Profile) -> None:
        """Put the loaded pipeline's weights where ``profile`` wants them (the engine's own
        speed module)."""

    def _raise_failed(self, exc: Exception, profile: Profile | None) -> NoReturn:
        """Leave the pipeline ready for the next call, then raise: out-of-memory as ours."""
        if self._pipe is not None:
            self._pipe.maybe_free_model_hooks()
        free_device_memory()
        if is_oom(exc):
            raise OutOfMemory(f"{self._device} ran out of memory in profile {profile}") from exc
        raise exc
