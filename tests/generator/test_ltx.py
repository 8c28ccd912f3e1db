"""LTX-Video's own behaviour on the tiny random-weight pipeline (CPU): what the contract test
in test_engines.py does not cover."""

from __future__ import annotations

from pathlib import Path

import PIL.Image
import pytest
import torch

from generator.config import GeneratorSettings, ImageSettings, LtxSettings, VeoCredentials
from generator.encode import probe_video
from generator.engines.catalog import build_engine
from generator.errors import BackendUnavailable, OutOfMemory
from generator.image import prepare_image
from generator.options import Backend, Request
from generator.router import Generator

PHOTO = Path("photo.jpg")


def engine_for(settings: LtxSettings):
    return build_engine(Backend.LTX, GeneratorSettings(ltx=settings))


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB)"),
    ],
)
def test_out_of_memory_becomes_ours_and_the_next_clip_works(tiny_ltx, error) -> None:
    engine = engine_for(tiny_ltx)
    engine.load()
    photo = PIL.Image.new("RGB", (64, 32), (90, 140, 200))

    def out_of_memory(*_args: object) -> None:
        raise error

    hook = engine.pipeline.transformer.register_forward_pre_hook(out_of_memory)
    with pytest.raises(OutOfMemory) as caught:
        engine.generate(photo, Request(image=PHOTO, seed=0))
    hook.remove()
    after = engine.generate(photo, Request(image=PHOTO, seed=0))

    assert caught.value.user_text == OutOfMemory.user_text
    assert caught.value.__cause__ is error
    assert len(after.frames) == 9


def test_a_missing_model_folder_says_which_key_to_set(tiny_ltx, tmp_path) -> None:
    engine = engine_for(LtxSettings(**{**tiny_ltx.__dict__, "model": str(tmp_path / "gone")}))

    with pytest.raises(BackendUnavailable, match=r"ltx\.model is the folder .*gone") as caught:
        engine.load()

    assert "engine is down" in caught.value.user_text
    assert not engine.loaded


async def test_a_sideways_phone_photo_becomes_an_upright_clip_in_its_aspect(
    tiny_ltx, exif_rotated_jpeg, tmp_path
) -> None:
    settings = GeneratorSettings(image=ImageSettings(), ltx=tiny_ltx)
    gen = Generator(settings, credentials=VeoCredentials())
    prepared = prepare_image(
        exif_rotated_jpeg, settings.image, size=gen.specs[Backend.LTX].size_for
    )

    clip = await gen.generate(
        Request(image=exif_rotated_jpeg, backend=Backend.LTX, seed=2), tmp_path / "up.mp4"
    )

    probe = probe_video(clip.path)
    assert (probe.width, probe.height) == (32, 64)  # upright 2:3, sides divisible by 32
    assert prepared.image.size == (32, 64) and prepared.aspect_ratio == "1:2"
    assert prepared.image.getpixel((2, 2))[0] > 200  # the red corner is top left again
