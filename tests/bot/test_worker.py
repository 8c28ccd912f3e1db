"""The GPU consumer end to end: a real store, the real PTB bot against the loopback Bot API,
and the tiny SVD model making real clips (in this process, and in a GPU child process)."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import multiprocessing
import os
import signal
import sqlite3
import threading
from pathlib import Path

import imageio.v2 as imageio
import pytest
from telegram import Bot

from bot import texts
from bot.config import DAY_S, GpuSettings, LimitSettings, Settings, WorkerSettings
from bot.consumers import Workers, build_workers
from bot.gpu import InlineRunner, ProcessRunner, WorkerCrashed, WorkerLost
from bot.jobs import Job, JobOptions, NewJob, Outcome, Status
from bot.queue import SqlQueue
from bot.store import Store
from bot.worker import request_for, retry_delay
from generator.config import GeneratorSettings, ImageSettings, VeoCredentials, VeoSettings
from generator.encode import encode_frames
from generator.errors import BudgetExceeded, InvalidImage, RateLimited, TransientError
from generator.image import prepare_image
from generator.options import Backend
from generator.router import Generator
from generator.veo import VeoBackend
from tests.support.fake_botapi import TOKEN, FakeBotApi, FakeUser
from tests.support.images import photo_bytes, write_photo
from tests.support.tiny_svd import tiny_settings

ANN = FakeUser(101, "Ann")
BOB = FakeUser(202, "Bob")
SVD = JobOptions(backend=Backend.SVD)


class Clock:
    """UNIX time that moves 5 s each time it is read: every progress edit is past the throttle."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += 5.0
        return self.now


def generator_settings(tiny_svd_dir: Path) -> GeneratorSettings:
    return GeneratorSettings(
        svd=tiny_settings(tiny_svd_dir),
        image=ImageSettings(landscape_size=(32, 32), portrait_size=(32, 32)),
    )


@pytest.fixture(scope="module")
def generator(tiny_svd_dir: Path) -> Generator:
    """One generator for the module, so the tiny SVD loads once. Veo has a (fake) key so
    budget decisions are really taken; no test lets a request reach Veo."""
    return Generator(generator_settings(tiny_svd_dir), credentials=VeoCredentials(api_key="k"))


@pytest.fixture
async def bot(fake_botapi: FakeBotApi):
    async with Bot(
        TOKEN, base_url=fake_botapi.base_url, base_file_url=fake_botapi.base_file_url
    ) as bot:
        yield bot


@pytest.fixture
async def store(tmp_path: Path):
    store = await Store.open(tmp_path / "bot.sqlite3")
    yield store
    await store.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


class World:
    """The test's hands: queue photos as the front end does, and start workers."""

    def __init__(self, tmp_path, fake, bot, store, clock, tiny_svd_dir) -> None:
        self.tmp_path, self.fake, self.bot, self.store, self.clock = (
            tmp_path,
            fake,
            bot,
            store,
            clock,
        )
        self.tiny_svd_dir = tiny_svd_dir
        self.workers: list[Workers] = []
        self.count = 0

    def settings(self, **limits: float) -> Settings:
        return Settings(
            data_dir=self.tmp_path / "data",
            generator=generator_settings(self.tiny_svd_dir),
            worker=WorkerSettings(progress_edit_interval_s=3.0, shutdown_grace_s=0.0),
            limits=LimitSettings(**limits),
            veo=VeoCredentials(api_key="k"),  # as the module's generator has
            # One clip per GPU: the split over two GPUs has its own tests at the end.
            gpu=GpuSettings(split="off"),
        )

    async def submit(
        self, user: FakeUser, options: JobOptions = SVD, photo: Path | None = None
    ) -> Job:
        """The user sends a photo and presses Animate: a status card and a queued row."""
        self.count += 1
        if photo is None:
            photo = write_photo(self.tmp_path / f"photo-{self.count}.jpg", (48, 32))
        pushed = self.fake.send_photo(user, photo_bytes())
        card = await self.bot.send_message(user.id, "card")
        return await SqlQueue(self.store.db).enqueue(
            NewJob(
                user_id=user.id,
                chat_id=user.id,
                photo_message_id=pushed.message_id,
                photo_path=str(photo),
                options=options,
                dedupe_key=f"tap-{self.count}",
                status_message_id=card.message_id,
            ),
            now=self.clock(),
        )

    async def start_worker(self, runner, settings: Settings | None = None) -> Workers:
        """One consumer over ``runner``, wired as ``bot.__main__`` wires them."""
        return await self.start_workers([runner], settings)

    async def start_workers(
        self, runners, settings: Settings | None = None, queue: SqlQueue | None = None
    ) -> Workers:
        settings = settings or self.settings()
        queue = queue or SqlQueue(self.store.db)
        workers = build_workers(settings, self.store, queue, runners, clock=self.clock)
        workers.cards.bind(self.bot)
        self.workers.append(workers)
        await workers.start()
        return workers

    async def finished(self, job: Job) -> Job:
        """Wait until the job's row is terminal: the worker tells the user right after."""

        async def row() -> Job | None:
            got = await SqlQueue(self.store.db).get(job.id)
            return got if got is not None and not got.active else None

        # The user is told (an edit, a message or a video) after each terminal write, so
        # waiting on the Bot API's record of calls is waiting on the worker's progress.
        for _ in range(50):
            found = await row()
            if found is not None:
                return found
            seen = len(self.fake.calls())
            await self.fake.wait_for(lambda seen=seen: len(self.fake.calls()) > seen)
        raise AssertionError(f"job {job.id} never finished\n{self.fake.dump()}")


@pytest.fixture
async def world(tmp_path, fake_botapi, bot, store, clock, tiny_svd_dir):
    world = World(tmp_path, fake_botapi, bot, store, clock, tiny_svd_dir)
    yield world
    for worker in world.workers:
        await worker.stop()


def decode(data: bytes, tmp_path: Path) -> list:
    path = tmp_path / "received.mp4"
    path.write_bytes(data)
    return imageio.mimread(path)


async def test_queued_job_shows_progress_then_a_video_that_decodes(world: World, generator):
    job = await world.submit(ANN)
    await world.start_worker(InlineRunner(generator))

    video = await world.fake.wait_for_video(ANN.id, timeout=60)
    done = await world.finished(job)

    edits = [c.params["text"] for c in world.fake.calls("editMessageText", ok=True)]
    assert any("step 1/2" in text for text in edits), edits
    assert video.reply_to_message_id == job.photo_message_id
    assert video.caption is not None and "Made with Local (SVD)" in video.caption
    assert video.supports_streaming and video.thumbnail is not None
    assert (video.width, video.height) == (32, 32)
    assert [label for row in video.reply_markup["inline_keyboard"] for label in row]
    assert len(decode(video.data, world.tmp_path)) == 2  # two frames, as the tiny SVD makes
    assert done.status is Status.DONE and done.video_file_id == video.file_id
    assert world.fake.message(ANN.id, job.status_message_id).deleted  # progress card removed


async def test_failure_tells_the_user_and_the_row_says_failed(world: World, generator):
    not_a_photo = world.tmp_path / "notes.jpg"
    not_a_photo.write_text("these are my notes, not a photo")
    job = await world.submit(ANN, photo=not_a_photo)
    await world.start_worker(InlineRunner(generator))

    with pytest.raises(InvalidImage) as expected:  # what the generator says of this file
        prepare_image(not_a_photo, generator.settings.image)
    friendly = expected.value.user_text

    done = await world.finished(job)
    shown = await world.fake.wait_for_text(ANN.id, friendly)
    assert shown.message_id == job.status_message_id
    assert shown.content == texts.failed(friendly)
    # The row stores what the user read, not the exception's technical message.
    assert done.status is Status.FAILED and done.error == shown.content
    assert world.fake.videos() == []


class GatedGenerator:
    """The real generator, held after SVD's first step until the test opens the gate."""

    def __init__(self, inner: Generator) -> None:
        self.inner = inner
        self.gate = threading.Event()

    async def generate(self, request, out_path, *, on_progress, should_cancel, **kw):
        def progress(event):
            on_progress(event)
            if event.stage == "denoising" and event.step == 1:
                # On SVD's thread, between step 1 and step 2: a slow step that ends when the
                # test opens the gate or the caller cancels.
                while not self.gate.wait(0.01) and not should_cancel():
                    pass

        return await self.inner.generate(
            request, out_path, on_progress=progress, should_cancel=should_cancel, **kw
        )


async def test_cancelling_the_running_job_stops_it_at_the_next_step(world: World, generator):
    gated = GatedGenerator(generator)
    job = await world.submit(ANN)
    worker = await world.start_worker(InlineRunner(gated))

    await world.fake.wait_for_text(ANN.id, "step 1/2", timeout=60)
    assert [running.id for running in await SqlQueue(world.store.db).running()] == [job.id]
    assert await SqlQueue(world.store.db).cancel(job.id, ANN.id, now=world.clock()) is not None
    assert await worker.cancel(job.id)
    gated.gate.set()

    done = await world.finished(job)
    assert done.status is Status.CANCELLED
    assert (await world.fake.wait_for_text(ANN.id, texts.cancelled())).message_id == (
        job.status_message_id
    )
    assert world.fake.videos() == []


async def test_stop_cancels_a_job_past_the_grace_period_and_requeues_it(world: World, generator):
    job = await world.submit(ANN)
    worker = await world.start_worker(InlineRunner(GatedGenerator(generator)))  # grace: 0 s
    await world.fake.wait_for_text(ANN.id, "step 1/2", timeout=60)

    await worker.stop()

    back = await SqlQueue(world.store.db).get(job.id)
    assert back is not None and back.status is Status.QUEUED  # waits for the next start
    assert await SqlQueue(world.store.db).running() == []
    assert texts.cancelled() not in [m.content for m in world.fake.messages(ANN.id).values()]


async def test_waiting_cards_show_their_place_and_move_up_at_milestones(world: World, generator):
    gated = GatedGenerator(generator)
    first = await world.submit(ANN)
    second = await world.submit(BOB)
    third = await world.submit(ANN)
    await world.start_worker(InlineRunner(gated))

    await world.fake.wait_for_text(ANN.id, "step 1/2", timeout=60)  # first one is running
    second_card = world.fake.message(BOB.id, second.status_message_id)
    third_card = world.fake.message(ANN.id, third.status_message_id)
    assert second_card.content.startswith("⏳ You're next")
    assert "number 2" in third_card.content
    assert [label for label, _ in second_card.buttons[0]] == [texts.CANCEL_BUTTON]
    gated.gate.set()
    await world.finished(first)


async def test_pause_survives_a_restart_and_resume_runs_the_queue(world: World, generator):
    before = await world.start_worker(InlineRunner(generator))
    await before.pause()
    await before.stop()
    job = await world.submit(ANN)

    after = await world.start_worker(InlineRunner(generator))
    assert all(worker.paused for worker in after.workers)
    await after.resume()

    await world.fake.wait_for_video(ANN.id, timeout=60)
    assert (await world.finished(job)).status is Status.DONE


async def test_job_left_running_by_a_dead_worker_is_delivered_once(world: World, generator):
    job = await world.submit(ANN)
    claimed = await SqlQueue(world.store.db).claim("gpu0", now=world.clock())
    assert claimed is not None and claimed.status is Status.RUNNING  # then that worker died

    await world.start_worker(InlineRunner(generator))
    await world.fake.wait_for_video(ANN.id, timeout=60)
    done = await world.finished(job)

    assert done.status is Status.DONE and done.attempts == 2
    assert len(world.fake.videos(ANN.id)) == 1


async def test_job_stuck_in_sending_is_redelivered_once(world: World, generator, tmp_path):
    import numpy as np

    job = await world.submit(ANN)
    await SqlQueue(world.store.db).claim("crashed-gpu", now=world.clock())
    frames = [np.full((32, 32, 3), 40 * i, dtype=np.uint8) for i in range(3)]
    video_path = tmp_path / "data" / "videos" / f"{job.id}.mp4"
    video_path.parent.mkdir(parents=True)
    info = encode_frames(frames, 7, video_path, generator.settings.encode)
    made = info.path.read_bytes()
    await SqlQueue(world.store.db).mark_sending(
        job.id,
        Outcome(
            Status.SENDING,
            used_backend=Backend.SVD,
            video_path=str(info.path),
            video_width=info.width,
            video_height=info.height,
            video_duration=info.duration,
        ),
        now=world.clock(),
    )  # ... and then the bot died before the upload finished

    await world.start_worker(InlineRunner(generator))
    video = await world.fake.wait_for_video(ANN.id)
    done = await world.finished(job)

    assert done.status is Status.DONE and done.video_file_id == video.file_id
    assert video.data == made
    assert len(world.fake.videos()) == 1
    assert done.attempts == 1  # delivered, not made again


async def test_user_who_blocked_the_bot_does_not_stop_the_next_users_clip(world: World, generator):
    world.fake.fail_next("sendVideo", status=403, chat_id=ANN.id)
    blocked = await world.submit(ANN)
    other = await world.submit(BOB)
    await world.start_worker(InlineRunner(generator))

    await world.fake.wait_for_video(BOB.id, timeout=120)
    assert (await world.finished(other)).status is Status.DONE
    gone = await world.finished(blocked)
    assert gone.status is Status.FAILED and gone.error == texts.failed(texts.delivery_failed())
    assert world.fake.videos(ANN.id) == []


async def test_rate_limited_edits_are_survived(world: World, generator):
    world.fake.fail_next("editMessageText", status=429, retry_after=1, count=3)
    job = await world.submit(ANN)
    await world.start_worker(InlineRunner(generator))

    await world.fake.wait_for_video(ANN.id, timeout=60)
    assert (await world.finished(job)).status is Status.DONE
    assert len(world.fake.calls("editMessageText", ok=False)) == 3


async def test_veo_refused_beyond_the_users_daily_budget(world: World, generator):
    # An 8 s Veo clip costs $3.20 at the default price; Ann may spend $1 a day.
    veo_only = await world.submit(ANN, JobOptions(backend=Backend.VEO))
    auto = await world.submit(BOB, JobOptions(backend=Backend.AUTO))
    await world.start_worker(InlineRunner(generator), world.settings(veo_user_daily_usd=1.0))

    refused = await world.finished(veo_only)
    told = await world.fake.wait_for_text(ANN.id, BudgetExceeded.user_text)
    assert refused.status is Status.FAILED and refused.error == told.content
    video = await world.fake.wait_for_video(BOB.id, timeout=60)  # auto: made locally instead
    assert "Veo budget is used up" in (video.caption or "")
    assert (await world.finished(auto)).used_backend is Backend.SVD


def gated_child_generator(marker: str, settings: GeneratorSettings):
    """Runs in the GPU process: the real generator, hung after step 1 while ``marker``
    exists (the test then kills the process); later runs go through."""
    from generator.router import Generator

    inner = Generator(settings, credentials=VeoCredentials())

    class Hang:
        settings = inner.settings

        async def generate(self, request, out_path, *, on_progress, **kw):
            def progress(event):
                # The marker goes before the step is reported: the test kills on that report,
                # and the next process must not find the marker and hang as well.
                hang = event.step == 1 and os.path.exists(marker)
                if hang:
                    os.unlink(marker)
                on_progress(event)
                if hang:
                    threading.Event().wait()  # a hung GPU: only a kill ends this

            return await inner.generate(request, out_path, on_progress=progress, **kw)

    return Hang()


async def test_gpu_process_killed_mid_job_requeues_and_the_next_run_delivers(world: World):
    marker = world.tmp_path / "hang-once"
    marker.touch()
    settings = world.settings()
    runner = ProcessRunner(
        settings.generator,
        generator_factory=functools.partial(gated_child_generator, str(marker)),
    )
    job = await world.submit(ANN)
    await world.start_worker(runner, settings)

    await world.fake.wait_for_text(ANN.id, "step 1/2", timeout=120)
    first = runner.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)

    video = await world.fake.wait_for_video(ANN.id, timeout=120)
    done = await world.finished(job)
    assert done.status is Status.DONE and done.attempts == 2
    assert runner.pid not in (None, first)
    assert len(decode(video.data, world.tmp_path)) == 2


def plain_child_generator(settings: GeneratorSettings):
    """Runs in the GPU process: the real generator with the tiny model, no Veo."""
    from generator.router import Generator

    return Generator(settings, credentials=VeoCredentials())


async def test_a_gpu_process_that_dies_before_taking_a_job_costs_the_job_nothing(world: World):
    settings = world.settings()
    runner = ProcessRunner(settings.generator, generator_factory=plain_child_generator)
    await runner.ready()
    dying = runner.pid
    assert dying is not None
    # Stopped, it passes every liveness check but never takes the job: like a process that
    # was killed a moment ago and has not finished dying when the job is handed to it.
    os.kill(dying, signal.SIGSTOP)
    await asyncio.to_thread(os.waitid, os.P_PID, dying, os.WSTOPPED | os.WNOWAIT)
    first = await world.submit(ANN)
    worker = await world.start_worker(runner, settings)
    # The chat action starts once the job's run is handed to the GPU process.
    await world.fake.wait_for_call("sendChatAction", timeout=60, chat_id=ANN.id)
    os.kill(dying, signal.SIGKILL)

    await world.fake.wait_for_video(ANN.id, timeout=120)
    done = await world.finished(first)
    # Two runs, neither the photo's fault nor a crash under it: nothing counted against it.
    assert (done.status, done.attempts, done.failures, done.crashes) == (Status.DONE, 2, 0, 0)

    # Now the GPU process dies while nobody uses it; the next job gets a fresh one.
    idle = runner.pid
    assert idle not in (None, dying)
    os.kill(idle, signal.SIGKILL)
    # We are its parent: block until it has exited (without reaping it, which is the runner's).
    await asyncio.to_thread(os.waitid, os.P_PID, idle, os.WEXITED | os.WNOWAIT)
    second = await world.submit(BOB)
    worker.wake()

    video = await world.fake.wait_for_video(BOB.id, timeout=120)
    done = await world.finished(second)
    assert (done.status, done.attempts, done.failures, done.crashes) == (Status.DONE, 1, 0, 0)
    assert runner.pid not in (None, dying, idle)
    assert len(decode(video.data, world.tmp_path)) == 2


def broken_child_generator(marker: str, settings: GeneratorSettings):
    """Runs in the GPU process: cannot start while ``marker`` exists (a broken driver, say)."""
    if os.path.exists(marker):
        raise RuntimeError("no CUDA driver")
    return plain_child_generator(settings)


class LogSeen(logging.Handler):
    """Sets ``event`` (on the test's loop) when a record containing ``text`` is logged."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.event = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self._loop.call_soon_threadsafe(self.event.set)


async def test_no_job_is_claimed_while_the_gpu_process_cannot_start(world: World):
    marker = world.tmp_path / "broken-driver"
    marker.touch()
    settings = world.settings()
    runner = ProcessRunner(
        settings.generator,
        generator_factory=functools.partial(broken_child_generator, str(marker)),
    )
    seen = LogSeen("the GPU process cannot start")
    logging.getLogger("bot.worker").addHandler(seen)
    try:
        job = await world.submit(ANN)
        worker = await world.start_worker(runner, settings)
        await asyncio.wait_for(seen.event.wait(), 60)
    finally:
        logging.getLogger("bot.worker").removeHandler(seen)
    waiting = await SqlQueue(world.store.db).get(job.id)
    # The photo is not handed to an engine that is not there: it waits, uncharged.
    assert waiting is not None and (waiting.status, waiting.attempts) == (Status.QUEUED, 0)

    marker.unlink()  # the operator fixes the driver
    worker.wake()  # (the worker would look again by itself within IDLE_SWEEP_S)
    await world.fake.wait_for_video(ANN.id, timeout=120)
    done = await world.finished(job)
    assert (done.status, done.attempts, done.failures, done.crashes) == (Status.DONE, 1, 0, 0)


async def test_the_row_says_done_before_any_other_telegram_call_after_the_upload(
    world: World, generator
):
    job = await world.submit(ANN)
    rows_seen_after_upload: list[tuple[str, str, int | None]] = []

    def on_call(method: str, params: dict) -> None:
        # The "uploading" chat action runs on its own timer and may be in flight while the
        # upload is answered; every other call comes from the worker's next steps.
        if method == "sendChatAction" or not world.fake.videos(ANN.id):
            return
        with sqlite3.connect(world.tmp_path / "bot.sqlite3") as db:
            status, message_id = db.execute(
                "SELECT status, video_message_id FROM jobs WHERE id = ?", (job.id,)
            ).fetchone()
        rows_seen_after_upload.append((method, status, message_id))

    world.fake.on_call = on_call
    await world.start_worker(InlineRunner(generator))
    video = await world.fake.wait_for_video(ANN.id, timeout=60)
    await world.finished(job)
    await world.fake.wait_for(lambda: world.fake.message(ANN.id, job.status_message_id).deleted)

    # A kill after the upload but before this row said done is the one way a clip could be
    # sent twice: the worker records it before it makes any other call.
    assert rows_seen_after_upload, "the worker made no call after the upload"
    assert rows_seen_after_upload[0] == ("deleteMessage", "done", video.message_id)
    assert {row[1:] for row in rows_seen_after_upload} == {("done", video.message_id)}


async def test_veo_job_interrupted_by_a_crash_resumes_its_operation_without_paying_twice(
    world: World, tiny_svd_dir, fake_veo
):
    async def no_wait(seconds: float) -> None:
        return None

    veo_settings = VeoSettings(base_url=fake_veo.base_url, poll_interval_s=1)
    key = VeoCredentials(api_key="k")
    fake_veo.script(pending_polls=2)
    settings = GeneratorSettings(
        svd=tiny_settings(tiny_svd_dir),
        image=ImageSettings(landscape_size=(32, 32), portrait_size=(32, 32)),
        veo=veo_settings,
    )
    # The first life: the job was claimed, Veo was paid for, then the bot died.
    job = await world.submit(ANN, JobOptions(backend=Backend.VEO, duration=4))
    veo = VeoBackend(veo_settings, key, sleep=no_wait)
    prepared = prepare_image(Path(job.photo_path), settings.image)
    operation = await veo.submit(prepared, request_for(job))
    claimed = await SqlQueue(world.store.db).claim("gpu0", now=world.clock())
    assert claimed is not None and claimed.id == job.id
    await SqlQueue(world.store.db).set_veo_operation(job.id, operation)

    # The second life: a new worker resumes polling that operation.
    generator = Generator(
        settings, credentials=key, veo=VeoBackend(veo_settings, key, sleep=no_wait)
    )
    await world.start_worker(InlineRunner(generator), world.settings(veo_user_daily_usd=10.0))
    video = await world.fake.wait_for_video(ANN.id, timeout=60)
    done = await world.finished(job)

    assert len(fake_veo.submits) == 1  # only the first life's submission
    assert done.status is Status.DONE and done.used_backend is Backend.VEO
    assert done.cost_usd == pytest.approx(4 * 0.40)
    assert "Veo" in video.caption


async def test_one_users_three_jobs_do_not_make_another_user_wait_behind_them(
    world: World, generator
):
    a1 = await world.submit(ANN)
    a2 = await world.submit(ANN)
    a3 = await world.submit(ANN)
    b1 = await world.submit(BOB)
    await world.start_worker(InlineRunner(generator))

    await world.fake.wait_for(lambda: len(world.fake.videos()) == 4, timeout=120)
    order = [v.reply_to_message_id for v in world.fake.videos()]
    assert order == [
        a1.photo_message_id,
        b1.photo_message_id,
        a2.photo_message_id,
        a3.photo_message_id,
    ]


async def test_delivered_clips_and_old_unneeded_photos_leave_the_disk(world: World, generator):
    settings = world.settings()
    photos = settings.photos_dir
    photos.mkdir(parents=True)
    month_ago = world.clock.now - 31 * 86400
    forgotten = write_photo(photos / "forgotten.jpg")
    waiting = write_photo(photos / "waiting.jpg")
    fresh = write_photo(photos / "fresh.jpg")
    for path in (forgotten, waiting):
        os.utime(path, (month_ago, month_ago))
    os.utime(fresh, (world.clock.now, world.clock.now))
    job = await world.submit(ANN, photo=waiting)  # old, but its job has not run yet

    await world.start_worker(InlineRunner(generator), settings)
    await world.fake.wait_for_video(ANN.id, timeout=60)
    done = await world.finished(job)

    assert done.status is Status.DONE
    assert done.video_path is not None
    clip = Path(done.video_path)
    left = {p.name for p in photos.iterdir()}
    assert left == {"waiting.jpg", "fresh.jpg"}
    assert {p.name for p in clip.parent.iterdir()} == set()  # the clip and its thumbnail


def test_retry_backs_off_for_services_but_not_for_a_crashed_gpu_process():
    job = Job(1, ANN.id, ANN.id, 1, "p.jpg", SVD, Status.RUNNING, "k", attempts=3, crashes=2)
    later = dataclasses.replace(job, failures=1)
    assert retry_delay(job, WorkerCrashed()) == 0
    assert retry_delay(job, WorkerLost()) == 0
    assert retry_delay(job, TransientError()) == 60  # crashes before it do not lengthen the wait
    assert retry_delay(later, TransientError()) == 120
    assert retry_delay(later, RateLimited()) == 240
    assert retry_delay(dataclasses.replace(job, failures=8), TransientError()) == 600


class WarmingGenerator:
    """The real generator, as an engine reports a clip on its not-yet-compiled path (the
    tiny SVD on the CPU compiles nothing, so this marks its progress the way a GPU's would)."""

    def __init__(self, inner: Generator) -> None:
        self.inner = inner

    async def generate(self, request, out_path, *, on_progress, **kw):
        def progress(event):
            if event.stage == "denoising":
                event = dataclasses.replace(event, warming=True, remaining_s=75.0)
            on_progress(event)

        return await self.inner.generate(request, out_path, on_progress=progress, **kw)


async def test_a_clip_on_the_slower_first_path_says_so_on_its_card(world: World, generator):
    job = await world.submit(ANN)
    await world.start_worker(InlineRunner(WarmingGenerator(generator)))

    card = await world.fake.wait_for_text(ANN.id, "First clip after an update: slower", timeout=60)
    assert "about 1 min 15 s left" in card.content
    assert (await world.finished(job)).status is Status.DONE


# --- several consumers: one GPU process per device ------------------------------------------


def rendezvous_child_generator(
    meeting, met, hang_marker: str | None, seen_dir: str, settings: GeneratorSettings
):
    """Runs in a GPU process: the real generator with the tiny model. Its first step waits
    at ``meeting`` (a two-party barrier shared by both GPU processes) until the other
    process is at its first step too, so two jobs are known to run at the same time; a
    broken barrier (four minutes alone) fails the job. It notes the device it was given in
    ``seen_dir``, and hangs after the meeting while ``hang_marker`` exists."""
    inner = plain_child_generator(settings)
    device = os.environ.get("CUDA_VISIBLE_DEVICES", "none")

    class Rendezvous:
        async def generate(self, request, out_path, *, on_progress, **kw):
            def progress(event):
                on_progress(event)
                if event.stage == "denoising" and event.step == 1 and not met.is_set():
                    Path(seen_dir, f"device-{device}").touch()
                    # Gone before the meeting, so no later process can find it and hang.
                    hang = hang_marker is not None and os.path.exists(hang_marker)
                    if hang:
                        os.unlink(hang_marker)
                    meeting.wait()
                    met.set()  # one meeting only: a respawned process does not wait again
                    if hang:
                        threading.Event().wait()  # a hung GPU: only a kill ends this

            return await inner.generate(request, out_path, on_progress=progress, **kw)

    return Rendezvous()


def two_consumers_settings(world: World) -> Settings:
    """Settings for two consumers sharing the test's :class:`Clock`, which moves 5 s a read.

    With two consumers busy, 24 reads can pass between one consumer's real-time heartbeats,
    and the other would then take its running job back as stale (``stale_after_s`` is 120 s
    of that clock): these tests are about sharing the work, not about stale heartbeats."""
    settings = world.settings()
    return dataclasses.replace(
        settings, worker=dataclasses.replace(settings.worker, stale_after_s=DAY_S)
    )


def meeting_runners(world: World, settings: Settings, *, hang_first: bool = False):
    """Two GPU processes on devices "0" and "1" whose first steps meet (see above)."""
    ctx = multiprocessing.get_context("spawn")
    # Generous: on a loaded 2-core machine one GPU process can start a minute after the other.
    meeting, met = ctx.Barrier(2, timeout=240), ctx.Event()
    marker = world.tmp_path / "hang-once"
    if hang_first:
        marker.touch()
    return [
        ProcessRunner(
            settings.generator,
            generator_factory=functools.partial(
                rendezvous_child_generator,
                meeting,
                met,
                str(marker) if hang_first and device == "0" else None,
                str(world.tmp_path),
            ),
            device=device,
        )
        for device in ("0", "1")
    ]


async def test_two_consumers_run_two_users_jobs_at_once_and_stay_fair(world: World):
    settings = two_consumers_settings(world)
    ann_first = await world.submit(ANN)
    ann_second = await world.submit(ANN)
    bob = await world.submit(BOB)
    await world.start_workers(meeting_runners(world, settings), settings)

    await world.fake.wait_for(lambda: len(world.fake.videos()) == 3, timeout=400)
    done = [await world.finished(job) for job in (ann_first, bob, ann_second)]

    # Both first steps met at the barrier: Ann's first and Bob's ran at the same time, on
    # two GPU processes that were each given their own device.
    assert [job.status for job in done] == [Status.DONE] * 3
    assert {done[0].worker_id, done[1].worker_id} == {"gpu0", "gpu1"}
    assert sorted(p.name for p in world.tmp_path.glob("device-*")) == ["device-0", "device-1"]
    # Fair: Bob's only job went before Ann's second, though it was queued after it.
    assert done[1].started_at is not None and done[2].started_at is not None
    assert done[1].started_at < done[2].started_at
    assert len(world.fake.videos(ANN.id)) == 2 and len(world.fake.videos(BOB.id)) == 1


async def test_killing_one_consumers_gpu_process_loses_nothing(world: World):
    settings = two_consumers_settings(world)
    runners = meeting_runners(world, settings, hang_first=True)
    ann, bob = await world.submit(ANN), await world.submit(BOB)
    workers = await world.start_workers(runners, settings)
    queue = SqlQueue(world.store.db)

    # The two jobs meet; then the device-0 process hangs and device 1 delivers its job.
    await world.fake.wait_for(lambda: len(world.fake.videos()) == 1, timeout=180)
    (hung,) = await queue.running()
    assert hung.worker_id == "gpu0"
    dead = runners[0].pid
    assert dead is not None
    os.kill(dead, signal.SIGKILL)

    # The killed process's job comes back and is made again, not charged to the photo;
    # the other consumer kept serving meanwhile (its job was delivered before the kill).
    await world.fake.wait_for(lambda: len(world.fake.videos()) == 2, timeout=180)
    redone = await world.finished(hung)
    assert (redone.status, redone.failures, redone.crashes) == (Status.DONE, 0, 1)
    assert redone.attempts == 2
    other = await world.finished(bob if hung.id == ann.id else ann)
    assert (other.status, other.attempts) == (Status.DONE, 1)
    assert len(world.fake.videos(ANN.id)) == 1 and len(world.fake.videos(BOB.id)) == 1
    # And both consumers still serve: a new job is delivered too.
    late = await world.submit(BOB)
    workers.wake()
    await world.fake.wait_for_video(BOB.id, count=2, timeout=120)
    assert (await world.finished(late)).status is Status.DONE


async def test_cancel_reaches_whichever_consumer_runs_the_job(world: World, generator):
    gated = GatedGenerator(generator)
    job = await world.submit(ANN)
    # Two consumers; only one job, so the module's one generator never runs twice at once.
    workers = await world.start_workers([InlineRunner(gated), InlineRunner(gated)])

    await world.fake.wait_for_text(ANN.id, "step 1/2", timeout=60)
    (running,) = await SqlQueue(world.store.db).running()
    assert await SqlQueue(world.store.db).cancel(job.id, ANN.id, now=world.clock()) is not None
    assert await workers.cancel(job.id)  # found on gpu0 or gpu1, whichever claimed it
    gated.gate.set()

    done = await world.finished(job)
    assert done.status is Status.CANCELLED and done.worker_id == running.worker_id
    assert await workers.cancel(job.id + 1) is False  # a job no consumer runs


async def test_pause_and_resume_act_on_every_consumer(world: World, generator):
    # Two consumers over one generator: only one job is ever queued, so it never runs twice.
    workers = await world.start_workers([InlineRunner(generator), InlineRunner(generator)])
    await workers.pause()
    assert [worker.paused for worker in workers.workers] == [True, True]
    assert await world.store.get_flag("paused") == "1"
    job = await world.submit(ANN)

    await workers.resume()

    assert [worker.paused for worker in workers.workers] == [False, False]
    await world.fake.wait_for_video(ANN.id, timeout=60)
    assert (await world.finished(job)).status is Status.DONE


class ListeningQueue(SqlQueue):
    """The real queue, saying when a consumer starts waiting for news of jobs."""

    def __init__(self, db) -> None:
        super().__init__(db)
        self.listening = asyncio.Event()

    async def wait_for_jobs(self, timeout: float) -> bool:  # noqa: ASYNC109
        self.listening.set()
        return await super().wait_for_jobs(timeout)


async def test_an_idle_consumer_hears_of_a_job_queued_without_a_wake(world: World, generator):
    queue = ListeningQueue(world.store.db)
    await world.start_workers([InlineRunner(generator)], queue=queue)
    await queue.listening.wait()  # idle: it found nothing and waits
    # Nobody calls wake(): the queue's own news (db.notify after the enqueue commits; on
    # PostgreSQL that is NOTIFY, heard on every host) starts the job, long before the
    # consumer would look again by itself (IDLE_SWEEP_S, 30 s).
    job = await world.submit(ANN)

    await world.fake.wait_for_video(ANN.id, timeout=20)
    assert (await world.finished(job)).status is Status.DONE


# --- one clip on two GPUs: an idle consumer serves the clip's second guidance passes ---------


class PeerStandsBy(SqlQueue):
    """The real queue, but gpu1 never claims (it stands by as the peer), and once ``armed``
    gpu0 claims only after gpu1 has looked and found nothing: gpu1 is then idle."""

    def __init__(self, db) -> None:
        super().__init__(db)
        self.armed = False
        self.peer_looked = asyncio.Event()

    async def claim(self, worker_id: str, *, now: float) -> Job | None:
        if worker_id == "gpu1":
            if self.armed:
                self.peer_looked.set()
            return None
        if not self.armed:
            return None
        await self.peer_looked.wait()
        return await super().claim(worker_id, now=now)


def dying_peer_generator(settings: GeneratorSettings):
    """Runs in a GPU process: the real generator, whose process dies when asked to serve as
    a peer (before it joins the leader)."""
    inner = plain_child_generator(settings)

    class DyingPeer:
        async def generate(self, request, out_path, **kw):
            return await inner.generate(request, out_path, **kw)

        async def serve_peer(self, request, pairing):
            os._exit(3)

    return DyingPeer()


async def split_world(world: World, factory, *, timeout_s: float) -> tuple[Workers, Job]:
    """Two GPU processes, gpu1 idle, and one SVD job queued for gpu0 with split on."""
    settings = dataclasses.replace(
        two_consumers_settings(world), gpu=GpuSettings(split="auto", split_timeout_s=timeout_s)
    )
    runners = [
        ProcessRunner(settings.generator, generator_factory=factory, device=None) for _ in "01"
    ]
    queue = PeerStandsBy(world.store.db)
    workers = await world.start_workers(runners, settings, queue=queue)
    queue.armed = True
    job = await world.submit(ANN)
    workers.wake()
    return workers, job


async def test_one_job_on_two_idle_gpus_is_made_on_both_and_delivered(world: World, caplog):
    caplog.set_level(logging.INFO, logger="bot.worker")
    workers, job = await split_world(world, plain_child_generator, timeout_s=120)

    video = await world.fake.wait_for_video(ANN.id, timeout=180)
    done = await world.finished(job)

    assert (done.status, done.attempts, done.failures, done.crashes) == (Status.DONE, 1, 0, 0)
    assert done.worker_id == "gpu0"
    assert len(decode(video.data, world.tmp_path)) == 2
    # gpu1 ran half of both steps' guidance batch, and went back to the queue after.
    assert "gpu1 served 2 guidance passes" in caplog.text
    assert not workers.workers[1].lent


async def test_a_peer_that_dies_costs_the_job_nothing_it_is_made_on_one_gpu(world: World, caplog):
    caplog.set_level(logging.INFO, logger="bot.worker")
    workers, job = await split_world(world, dying_peer_generator, timeout_s=5)

    video = await world.fake.wait_for_video(ANN.id, timeout=180)
    done = await world.finished(job)

    # The leader waited for its peer, then made the clip alone: one attempt, nothing charged.
    assert (done.status, done.attempts, done.failures, done.crashes) == (Status.DONE, 1, 0, 0)
    assert len(decode(video.data, world.tmp_path)) == 2
    assert "gpu1 could not serve as a peer: WorkerCrashed" in caplog.text
    assert not workers.workers[1].lent


def cancel_gated_child_generator(settings: GeneratorSettings):
    """Runs in a GPU process: the real generator, whose step 1 holds until its owner
    cancels (``should_cancel`` is the child's cancel flag, a ``threading.Event``)."""
    inner = plain_child_generator(settings)

    class HeldAtStep1:
        async def generate(self, request, out_path, *, on_progress, should_cancel, **kw):
            def progress(event):
                on_progress(event)
                if event.stage == "denoising" and event.step == 1:
                    should_cancel.__self__.wait(120)

            return await inner.generate(
                request, out_path, on_progress=progress, should_cancel=should_cancel, **kw
            )

        async def serve_peer(self, request, pairing):
            return await inner.serve_peer(request, pairing)

    return HeldAtStep1()


async def test_a_shared_clip_cancelled_by_its_owner_gives_the_peer_back(world: World, caplog):
    caplog.set_level(logging.INFO, logger="bot.worker")
    workers, job = await split_world(world, cancel_gated_child_generator, timeout_s=120)

    await world.fake.wait_for_text(ANN.id, "step 1/2", timeout=180)
    assert await SqlQueue(world.store.db).cancel(job.id, ANN.id, now=world.clock()) is not None
    assert await workers.cancel(job.id)
    done = await world.finished(job)

    assert done.status is Status.CANCELLED
    assert "gpu1 served 1 guidance passes" in caplog.text  # stopped with its leader
    assert not workers.workers[1].lent
