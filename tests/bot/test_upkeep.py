"""The data folder stays bounded: the sweep removes what no job needs, and the budget holds.

A real store and real files; ages come from ``os.utime`` against an injected clock.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.config import Settings
from bot.jobs import JobOptions, NewJob, Outcome, Status
from bot.queue import SqlQueue
from bot.store import Card, Store
from bot.upkeep import MB, Upkeep, folder_bytes, job_id_of

NOW = 1_780_000_000.0
DAY = 86400.0


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store.open(tmp_path / "data" / "bot.sqlite3")
    yield store
    await store.close()


def _file(path: Path, size: int, age_s: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * size)
    os.utime(path, (NOW - age_s, NOW - age_s))
    return path


async def _job(store: Store, photo: Path, key: str, status: Status) -> int:
    job = await SqlQueue(store.db).enqueue(
        NewJob(
            user_id=1,
            chat_id=1,
            photo_message_id=1,
            photo_path=str(photo),
            options=JobOptions(),
            dedupe_key=key,
            status_message_id=None,
            max_attempts=3,
        ),
        now=NOW - 3600,
    )
    if status is not Status.QUEUED:
        await SqlQueue(store.db).claim("gpu0", now=NOW - 3000)
    if status in (Status.DONE, Status.CANCELLED, Status.FAILED):
        await SqlQueue(store.db).finish(job.id, Outcome(status), now=NOW - 2000)
    return job.id


async def test_the_sweep_keeps_what_jobs_need_and_removes_the_rest(
    store: Store, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path / "data", keep_photos_days=30, max_disk_mb=0)
    photos, videos = settings.photos_dir, settings.videos_dir
    recent = _file(photos / "recent.jpg", 1000, 2 * DAY)  # Again still works
    done_id = await _job(store, recent, "d", Status.DONE)
    expired = _file(photos / "expired.jpg", 1000, 31 * DAY)
    await _job(store, expired, "e", Status.DONE)
    leftover = _file(photos / ".x.jpg.abc.part", 1000, 2 * 3600)  # an interrupted intake
    carded = _file(photos / "card.jpg", 1000, 2 * 3600)  # a card waiting for Animate
    await store.save_card(Card(1, 50, 1, 49, str(carded), JobOptions(), created_at=NOW - 7200))
    await store.save_card(Card(1, 60, 1, 59, str(expired), JobOptions(), created_at=NOW - 31 * DAY))
    animated = _file(photos / "animated.jpg", 1000, 3 * DAY)  # its card became a status
    await _job(store, animated, "a", Status.DONE)
    await store.save_card(Card(1, 70, 1, 69, str(animated), JobOptions(), created_at=NOW - 3 * DAY))
    await store.tell_stranger(7, now=NOW - 2 * DAY, every=DAY)
    await store.tell_stranger(8, now=NOW - 3600, every=DAY)
    cancelled_id = await _job(store, recent, "c", Status.CANCELLED)
    late_clip = _file(videos / f"{cancelled_id}.mp4", 5000, 60)  # cancelled after encoding
    late_thumb = _file(videos / f"{cancelled_id}.jpg", 100, 60)
    undelivered = _file(videos / f"{done_id}.mp4", 5000, 10 * DAY)
    running_id = await _job(store, recent, "r", Status.RUNNING)
    being_written = _file(videos / f".{running_id}.tmp1234.mp4", 5000, 30)
    unknown = _file(videos / "99999.mp4", 5000, 2 * 3600)
    # Queued last: each job above was claimed right after it was queued.
    waiting = _file(photos / "waiting.jpg", 1000, 40 * DAY)  # old, but its job still waits
    await _job(store, waiting, "w", Status.QUEUED)

    report = await Upkeep(store, SqlQueue(store.db), settings, clock=lambda: NOW).sweep()

    assert set(report.removed) == {expired, leftover, late_clip, late_thumb, undelivered, unknown}
    for kept in (waiting, recent, carded, animated, being_written):
        assert kept.exists(), kept
    assert await store.get_card(1, 60) is None  # its photo is gone
    assert await store.get_card(1, 70) is None  # its job ended
    assert await store.get_card(1, 50) is not None  # still waiting for Animate
    # Strangers are forgotten a day after they were told, and told again next time.
    assert await store.tell_stranger(7, now=NOW, every=DAY * 10)
    assert not await store.tell_stranger(8, now=NOW, every=DAY)


async def test_a_full_folder_is_swept_under_its_budget(store: Store, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", keep_photos_days=30, max_disk_mb=2)
    finished = []
    for n in range(8):  # 8 x 0.5 MB of finished jobs' photos, all within their retention
        photo = _file(settings.photos_dir / f"done{n}.jpg", MB // 2, (9 - n) * DAY)
        await _job(store, photo, f"d{n}", Status.DONE)
        finished.append(photo)
    waiting = _file(settings.photos_dir / "waiting.jpg", MB // 2, 10 * DAY)
    await _job(store, waiting, "w", Status.QUEUED)
    assert folder_bytes(settings.data_dir) > 4 * MB

    report = await Upkeep(store, SqlQueue(store.db), settings, clock=lambda: NOW).sweep()

    assert folder_bytes(settings.data_dir) <= 2 * MB == settings.max_disk_mb * MB
    assert report.used_bytes == folder_bytes(settings.data_dir)
    assert waiting.exists()  # a waiting job's photo is never the price
    kept = [p for p in finished if p.exists()]
    assert kept and kept == finished[-len(kept) :]  # the oldest went first


async def test_the_sweep_runs_once_per_interval(store: Store, tmp_path: Path) -> None:
    now = [NOW]
    settings = Settings(data_dir=tmp_path / "data")
    upkeep = Upkeep(store, SqlQueue(store.db), settings, clock=lambda: now[0], every_s=3600)

    assert await upkeep.sweep_if_due() is not None
    now[0] += 3599
    assert await upkeep.sweep_if_due() is None
    now[0] += 1
    assert await upkeep.sweep_if_due() is not None


def test_clip_files_name_their_job() -> None:
    assert job_id_of("17.mp4") == 17
    assert job_id_of("17.jpg") == 17
    assert job_id_of(".17.k2j3h4.mp4") == 17
    assert job_id_of(".17.mp4.x.part.jpg") == 17
    assert job_id_of("notes.txt") is None
