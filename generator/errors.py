"""Errors the generator raises, each with a sentence a person can read.

The tree (catch a branch or a leaf)::

    GeneratorError                   base; ``user_text`` is safe to show a user
    ├── InvalidRequest               options that cannot work together (before any work)
    ├── InvalidImage                 not an image, truncated, too large, decompression bomb
    ├── BackendUnavailable           backend cannot be used now: no credentials, no model,
    │   │                            circuit breaker open, budget refused
    │   ├── BudgetExceeded           the caller's budget check said no to Veo
    │   └── ModelUnavailable         a local engine's model cannot be loaded (not downloaded,
    │                                gated, folder missing): the engine is down until fixed
    ├── TransientError               worth retrying later: network, timeouts, 5xx
    │   └── RateLimited              429 / quota exhausted
    ├── GenerationFailed             the backend ran and produced no clip
    │   ├── OutOfMemory              CUDA / MPS out of memory (caller may retry in low-vram)
    │   ├── ContentFiltered          Veo's safety filter removed the video (reasons kept)
    │   └── EncodingFailed           ffmpeg could not write or shrink the MP4
    └── Cancelled                    the caller asked to stop (SVD: at the next step)

Library errors (``google.genai.errors``, ``torch.OutOfMemoryError``, Pillow's) are
translated once, where they are caught, with ``raise Ours(...) from exc``.
Users never see ``str(exc)``: show ``exc.user_text``.
"""

from __future__ import annotations


class GeneratorError(Exception):
    """Base of every error the generator raises on purpose."""

    user_text = "Something went wrong while making the clip."

    def __init__(self, message: str = "", *, user_text: str | None = None) -> None:
        super().__init__(message or self.user_text)
        if user_text is not None:
            self.user_text = user_text


class InvalidRequest(GeneratorError, ValueError):
    """The options cannot work together; nothing was started."""

    user_text = "Those options don't work together."


class InvalidImage(GeneratorError):
    """The input is not a usable image."""

    # Also the bot's answer to a file that is not an image at all (bot.texts.not_an_image).
    user_text = "That file isn't a photo I can read. Please send a JPEG, PNG or WebP image."


class BackendUnavailable(GeneratorError):
    """The backend cannot be used right now (credentials, model, breaker)."""

    user_text = "That video engine isn't available right now."


class BudgetExceeded(BackendUnavailable):
    """The caller's budget check refused a paid (Veo) generation."""

    user_text = "The Veo budget is used up for now."


class ModelUnavailable(BackendUnavailable):
    """A local engine's model cannot be loaded; the message says what is missing and how to
    fix it (``generator.hub``). Nothing the user chooses helps until the operator acts."""

    user_text = (
        "The local video engine is down: its model can't be loaded. The bot's operator "
        "has to fix that first."
    )


class TransientError(GeneratorError):
    """A temporary failure: network, timeout, server error. Retrying later may work."""

    user_text = "The video service had a temporary problem."


class RateLimited(TransientError):
    """The backend refused because of rate limits or quota (HTTP 429)."""

    user_text = "The video service is busy (rate limit). Try again in a few minutes."


class GenerationFailed(GeneratorError):
    """The backend ran but produced no clip."""

    user_text = "The clip could not be made."


class OutOfMemory(GenerationFailed):
    """The GPU ran out of memory; a low-vram retry may succeed."""

    user_text = "The GPU ran out of memory while making the clip."


class ContentFiltered(GenerationFailed):
    """The backend's safety filter removed the result."""

    user_text = "The video service's safety filter declined this photo."

    def __init__(self, message: str = "", *, reasons: tuple[str, ...] = (), **kw) -> None:
        super().__init__(message, **kw)
        self.reasons = tuple(reasons)


class EncodingFailed(GenerationFailed):
    """Frames could not be written as a valid MP4 within the size cap."""

    user_text = "The clip was made but could not be encoded as a video."


class Cancelled(GeneratorError):
    """The caller asked to stop. ``cost_usd`` is what was billed all the same (a Veo
    operation already submitted cannot be stopped); 0 for local engines."""

    user_text = "Cancelled."

    def __init__(self, message: str = "", *, cost_usd: float = 0.0, **kw) -> None:
        super().__init__(message, **kw)
        self.cost_usd = cost_usd
