"""Why a model could not be loaded, said once: what is missing and the two ways out.

``from_pretrained`` fails in many shapes (huggingface_hub's ``GatedRepoError``,
``RepositoryNotFoundError``, an offline machine wrapped by diffusers in an ``OSError``, a
local folder that is not there); engines load through :func:`loading` and get one
``ModelUnavailable`` whose message an operator can act on.

Example::

    >>> with loading("stabilityai/stable-video-diffusion-img2vid-xt", key="svd.model"):
    ...     pipe = StableVideoDiffusionPipeline.from_pretrained(model)
    ModelUnavailable: stabilityai/stable-video-diffusion-img2vid-xt is not downloaded and
    Hugging Face cannot be reached. Either accept its licence on https://huggingface.co/...
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from generator.errors import ModelUnavailable

# Names of exceptions (anywhere in the cause chain) that mean "the hub cannot be reached";
# by name, because huggingface_hub, httpx and requests each bring their own classes.
_OFFLINE = frozenset(
    {
        "ConnectError",
        "ConnectionError",
        "ConnectTimeout",
        "OfflineModeIsEnabled",
        "LocalEntryNotFoundError",
        "gaierror",
        "ReadTimeout",
        "TimeoutException",
    }
)
_MAX_DETAIL = 160


def looks_local(model: str) -> bool:
    """Whether ``model`` names a folder rather than a Hugging Face id (``owner/name``)."""
    return (
        model.startswith(("/", ".", "~"))
        or model.count("/") != 1
        or Path(model).expanduser().exists()
    )


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 20:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _problem(exc: BaseException, model: str) -> str:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    chain = _chain(exc)
    names = {cls.__name__ for e in chain for cls in type(e).__mro__}
    text = " ".join(str(e) for e in chain)
    if any(isinstance(e, GatedRepoError) for e in chain):
        return f"{model} is gated on Hugging Face and this machine may not download it"
    if any(isinstance(e, RepositoryNotFoundError) for e in chain):
        return f"{model} is not on Hugging Face, or is private or gated and needs HF_TOKEN"
    if names & _OFFLINE or "not fully cached locally" in text:
        return f"{model} is not downloaded and Hugging Face cannot be reached"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if len(first) > _MAX_DETAIL:
        first = first[: _MAX_DETAIL - 3] + "..."
    return f"{model} could not be loaded ({first})"


def model_unavailable(exc: BaseException, model: str, key: str) -> ModelUnavailable:
    """The ``ModelUnavailable`` for a failed load of ``model``, set by config key ``key``."""
    problem = _problem(exc, model)
    ways_out = (
        f"Either accept its licence on https://huggingface.co/{model} and set HF_TOKEN, "
        f"or set {key} to a local folder with the weights"
    )
    return ModelUnavailable(f"{problem}. {ways_out}")


def missing_folder(model: str, key: str) -> ModelUnavailable:
    """The ``ModelUnavailable`` for a local model folder that does not exist."""
    return ModelUnavailable(
        f"{key} is the folder {model}, which does not exist. Either copy the weights there, "
        f"or set {key} to a Hugging Face id (a gated one needs its licence accepted and HF_TOKEN)"
    )


@contextmanager
def loading(model: str, *, key: str) -> Iterator[None]:
    """Translate whatever a ``from_pretrained`` of ``model`` raises into ``ModelUnavailable``.

    ``key`` is the config key that names the model (``svd.model``, ``ltx.model``), so the
    message says what to change. A missing local folder is refused before any loading.
    """
    if looks_local(model) and not Path(model).expanduser().is_dir():
        raise missing_folder(model, key)
    try:
        yield
    except (OSError, ValueError) as exc:
        raise model_unavailable(exc, model, key) from exc
