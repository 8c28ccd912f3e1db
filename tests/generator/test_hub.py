"""A model that cannot be loaded is one sentence: what is missing and the two ways out."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import httpx2
import pytest
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

from generator.config import SvdSettings
from generator.engines.svd import SvdBackend
from generator.errors import BackendUnavailable, ModelUnavailable
from generator.hub import loading

MODEL = "animate-bot-tests/no-such-model"


def hub_error(cls: type[Exception], status: int) -> Exception:
    response = httpx2.Response(status, request=httpx2.Request("GET", f"https://hf.co/{MODEL}"))
    return cls(f"{status} Client Error for url https://hf.co/{MODEL}", response=response)


def assert_actionable(message: str, key: str) -> None:
    assert key in message
    assert "HF_TOKEN" in message and "licence" in message and "local folder" in message
    assert "\n" not in message and "Traceback" not in message
    assert len(message) < 400  # one readable line, not a wall of library text


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (hub_error(GatedRepoError, 403), "is gated on Hugging Face"),
        (hub_error(RepositoryNotFoundError, 401), "is not on Hugging Face"),
        (OSError("Cannot load model x: the model is not fully cached locally"), "not downloaded"),
        (OSError("unexpected EOF in model.safetensors"), "could not be loaded (unexpected EOF"),
    ],
)
def test_each_load_failure_says_what_is_missing_and_the_ways_out(
    error: Exception, says: str
) -> None:
    with pytest.raises(ModelUnavailable) as caught, loading(MODEL, key="ltx.model"):
        raise error

    assert says in str(caught.value)
    assert_actionable(str(caught.value), "ltx.model")
    assert caught.value.__cause__ is error  # the detail stays for DEBUG logs


def test_an_unreachable_hub_is_said_plainly_when_svd_loads(tmp_path: Path, monkeypatch) -> None:
    # No network here (and none in CI): the real from_pretrained fails as on a first offline run.
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    svd = SvdBackend(SvdSettings(model=MODEL, device="cpu", compile=False), hf_token="")

    with pytest.raises(ModelUnavailable) as caught:
        svd.load()

    message = str(caught.value)
    assert message.startswith(MODEL)
    assert "cannot be reached" in message or "is not on Hugging Face" in message
    assert_actionable(message, "svd.model")
    assert isinstance(caught.value, BackendUnavailable)  # callers that catch the branch still do


def test_a_missing_local_folder_names_the_key_and_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "weights"
    svd = SvdBackend(dataclasses.replace(SvdSettings(), model=str(folder), device="cpu"))

    with pytest.raises(ModelUnavailable) as caught:
        svd.load()

    assert str(caught.value).startswith(f"svd.model is the folder {folder}, which does not exist")
    assert "HF_TOKEN" in str(caught.value)
