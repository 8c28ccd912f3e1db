"""What the LTX-Video and Wan engines share: one diffusers pipeline per process, its device,
whether it is loaded for a request, its memory, and unloading."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from generator.engines import Engine, EngineSpec
from generator.engines.device import device_type, free_device_memory
from generator.options import Profile

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
        import torch

        if self._device is None or device_type(self._device) != "cuda":
            return None
        free, _total = torch.cuda.mem_get_info(self._device)
        # Memory our own pipeline already holds is ours to use, not "taken".
        return free + torch.cuda.memory_reserved(self._device)
