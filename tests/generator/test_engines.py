"""The engine contract, run once for every local engine on its tiny random-weight model (CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from generator.clip import Progress
from generator.config import (
    GeneratorSettings,
    ImageSettings,
    LtxSettings,
    SvdSettings,
    WanSettings,
)
from generator.engines import Engine
from generator.engines.catalog import LOCAL_BACKENDS, build_engine
from generator.errors import Cancelled, InvalidRequest
from generator.options import Backend, Request

PHOTO = Path("photo.jpg")  # engines get the prepared image; the path is only for the request


@pytest.fixture
def settings(
    tiny_svd_settings: SvdSettings, tiny_ltx: LtxSettings, tiny_wan: WanSettings
) -> GeneratorSettings:
    return GeneratorSettings(
        image=ImageSettings(landscape_size=(64, 32), portrait_size=(32, 64)),
        svd=tiny_svd_settings,
        ltx=tiny_ltx,
        wan=tiny_wan,
    )


@pytest.fixture(params=LOCAL_BACKENDS, ids=str)
def engine(request: pytest.FixtureRequest, settings: GeneratorSettings) -> Engine:
    return build_engine(request.param, settings)


def photo_for(engine: Engine, source: tuple[int, int] = (96, 64)) -> PIL.Image.Image:
    """A gradient at the size the engine asks for a ``source``-sized photo."""
    width, height = engine.spec.size_for(*source)
    x = np.linspace(0, 255, width, dtype=np.uint8)
    y = np.linspace(0, 255, height, dtype=np.uint8)
    pixels = np.stack(np.broadcast_arrays(x[None, :], y[:, None], 255 - x[None, :]), axis=-1)
    return PIL.Image.fromarray(np.ascontiguousarray(pixels), "RGB")


def arrays(frames: list[PIL.Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(f, dtype=np.int16) for f in frames])


def test_a_clip_has_the_promised_frames_fps_and_size(engine: Engine) -> None:
    photo = photo_for(engine)
    plan = engine.check(Request(image=PHOTO))
    events: list[Progress] = []

    assert not engine.loaded
    result = engine.generate(photo, Request(image=PHOTO, seed=7), progress=events.append)

    assert engine.loaded
    assert (len(result.frames), result.fps, result.seed) == (plan.frames, plan.fps, 7)
    assert {np.asarray(f).shape for f in result.frames} == {(photo.height, photo.width, 3)}
    stages = [e.stage for e in events]
    assert stages[0] == "loading" and stages[-1] == "decoding"
    steps = [(e.step, e.total) for e in events if e.stage == "denoising"]
    assert steps == [(k, result.steps) for k in range(1, result.steps + 1)]
    assert {e.backend for e in events} == {engine.backend}


def test_the_same_seed_gives_the_same_clip(engine: Engine) -> None:
    photo = photo_for(engine)
    first = engine.generate(photo, Request(image=PHOTO, seed=11))
    again = engine.generate(photo, Request(image=PHOTO, seed=11))
    other = engine.generate(photo, Request(image=PHOTO, seed=12))

    assert np.array_equal(arrays(first.frames), arrays(again.frames))
    assert not np.array_equal(arrays(first.frames), arrays(other.frames))


def test_cancel_stops_at_the_next_step_and_the_engine_still_works(engine: Engine) -> None:
    photo = photo_for(engine)
    seen: list[int] = []

    with pytest.raises(Cancelled):
        engine.generate(
            photo,
            Request(image=PHOTO, seed=1, steps=3),
            progress=lambda p: seen.append(p.step) if p.stage == "denoising" else None,
            cancel=lambda: True,
        )
    after = engine.generate(photo, Request(image=PHOTO, seed=1))

    assert seen == [1]
    assert len(after.frames) == engine.check(Request(image=PHOTO)).frames


def test_a_length_it_cannot_make_is_refused_before_loading(engine: Engine) -> None:
    with pytest.raises(InvalidRequest, match=engine.spec.title) as info:
        engine.generate(photo_for(engine), Request(image=PHOTO, duration=30))

    assert not engine.loaded
    assert engine.spec.title in info.value.user_text


def test_unload_gives_the_model_back(engine: Engine) -> None:
    engine.load()
    engine.unload()

    assert not engine.loaded
    assert engine.resident_bytes() == 0


def test_ltx_lengths_follow_8k_plus_1_at_24_fps() -> None:
    spec = build_engine(Backend.LTX, GeneratorSettings(ltx=LtxSettings())).spec

    assert spec.plan(None).describe() == "121 frames at 24 fps = 5.04 s"
    assert spec.plan(4).describe() == "97 frames at 24 fps = 4.04 s"
    assert spec.plan(2).frames == 49 and spec.plan(10).frames == 241
    with pytest.raises(InvalidRequest, match=r"2\.0 to 10\.0 s"):
        spec.plan(1)
    assert spec.size_for(4032, 3024) == (736, 544)  # a 4:3 phone photo, ~768x512 area
    assert spec.size_for(3024, 4032) == (544, 736)  # the same photo upright
    assert all(side % 32 == 0 for side in spec.size_for(1920, 1080))


def test_wan_lengths_follow_4k_plus_1_at_24_fps_in_720p_area() -> None:
    spec = build_engine(Backend.WAN, GeneratorSettings(wan=WanSettings())).spec

    assert spec.plan(None).describe() == "121 frames at 24 fps = 5.04 s"
    assert spec.plan(3).describe() == "73 frames at 24 fps = 3.04 s"
    assert spec.plan(2).frames == 49
    with pytest.raises(InvalidRequest, match=r"2\.0 to 5\.0 s"):
        spec.plan(8)
    assert spec.size_for(1920, 1080) == (1280, 704)  # 16:9 fills the 1280x704 area
    assert spec.size_for(4032, 3024) == (1088, 832)  # a 4:3 phone photo, ~1280x704 area
    assert spec.size_for(3024, 4032) == (832, 1088)  # the same photo upright
