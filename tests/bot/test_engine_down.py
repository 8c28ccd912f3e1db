"""A local engine whose model cannot load is down: the operator gets one ERROR line that says
what to fix, the user a sentence that says so, and no advice to try other options."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from bot.gpu import InlineRunner
from bot.jobs import Status
from generator.config import VeoCredentials
from generator.router import Generator
from tests.bot.test_worker import ANN, World, bot, clock, store, world  # noqa: F401 (fixtures)


async def test_a_model_that_cannot_load_says_the_engine_is_down(
    world: World,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = world.settings()
    svd = dataclasses.replace(settings.generator.svd, model=str(tmp_path / "no-weights-here"))
    generator_settings = dataclasses.replace(settings.generator, svd=svd)
    settings = dataclasses.replace(settings, generator=generator_settings)
    generator = Generator(generator_settings, credentials=VeoCredentials())
    job = await world.submit(ANN)

    with caplog.at_level(logging.INFO, logger="bot.worker"):
        await world.start_worker(InlineRunner(generator), settings)
        done = await world.finished(job)

    shown = await world.fake.wait_for_text(ANN.id, "engine is down")
    assert "other options" not in shown.content
    assert shown.content == done.error  # the row says what the user read
    assert "engine is down" in shown.content
    assert done.status is Status.FAILED
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "svd.model" in errors[0] and "no-weights-here" in errors[0]
