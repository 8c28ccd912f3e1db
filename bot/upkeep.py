"""Keeps the data folder bounded: a periodic sweep of what no job needs, and the disk budget.

Example::

    upkeep = Upkeep(store, queue, settings, clock=time.time)
    report = await upkeep.sweep_if_due()  # the worker's loop calls this between jobs
    if await upkeep.disk.over_budget():  # intake asks before it downloads a photo
        ...

What the sweep removes (``plan_removals``, a pure function over a listing and the database's
references):

- clips (``videos/``) of jobs that ended, and clips no job names once they are an hour old
  (a late cancel or an undeliverable clip used to stay forever);
- photos no waiting or running job needs, once older than ``keep_photos_days``, and photos
  nothing refers to at all (an interrupted intake) once an hour old;
- then, while the folder is over ``max_disk_mb``, the oldest photos no waiting or running
  job needs (their Again buttons say "expired");
- card rows older than the photo retention, whose photo is gone, or whose jobs all ended;
- strangers told more than a day ago (they hear it again next time anyway).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from bot.config import Settings
from bot.jobs import JobQueue
from bot.limits import STRANGER_REMINDER_S
from bot.store import Store

log = logging.getLogger(__name__)

#: How often the sweep runs (a folder scan and two queries; no hurry).
SWEEP_EVERY_S = 3600.0
#: A file nothing refers to may be one being written right now: leave it this long.
ORPHAN_GRACE_S = 3600.0
#: How long intake trusts one measurement of the folder (a walk of every file).
DISK_RECHECK_S = 60.0
MB = 1024 * 1024

# "17.mp4", "17.jpg", ".17.abc123.mp4" (encoder temp files): the job id comes first.
_JOB_FILE = re.compile(r"\.?(\d+)\.")


@dataclass(frozen=True)
class FileRefs:
    """What the jobs and cards tables point at in the data folder, for the sweep.

    ``active_*`` belong to queued, running or sending jobs and must stay; ``known_photos``
    is every photo a job or a card names (the rest are leftovers of an interrupted intake).
    """

    active_photos: frozenset[str]
    active_job_ids: frozenset[int]
    ended_job_ids: frozenset[int]
    known_photos: frozenset[str]


@dataclass(frozen=True)
class StoredFile:
    """One file in the data folder, as listed."""

    path: Path
    size: int
    mtime: float


@dataclass(frozen=True)
class SweepReport:
    """What one sweep did; ``used_bytes`` is the folder's size afterwards."""

    removed: tuple[Path, ...]
    freed_bytes: int
    cards_removed: int
    used_bytes: int


def job_id_of(name: str) -> int | None:
    """The job id a clip file belongs to (``17.mp4``, ``17.jpg``, ``.17.x1y2.mp4``)."""
    match = _JOB_FILE.match(name)
    return int(match.group(1)) if match else None


def plan_removals(
    photos: Iterable[StoredFile],
    videos: Iterable[StoredFile],
    refs: FileRefs,
    *,
    now: float,
    keep_photos_s: float,
    budget_bytes: int,
    other_bytes: int,
) -> list[StoredFile]:
    """The files to delete, by the rules in the module docstring.

    Args:
        photos, videos: the listings of ``photos/`` and ``videos/``.
        refs: what the database points at (active jobs' photos and ids, every known photo).
        now: UNIX time.
        keep_photos_s: photo retention; 0 keeps photos until the budget needs the room.
        budget_bytes: the most the data folder may use; 0 is no budget.
        other_bytes: the rest of the folder (database, compile cache), never swept.
    """
    remove: list[StoredFile] = []
    kept: list[StoredFile] = []
    for video in videos:
        job_id = job_id_of(video.path.name)
        if job_id in refs.active_job_ids:
            kept.append(video)
        elif job_id in refs.ended_job_ids or now - video.mtime > ORPHAN_GRACE_S:
            remove.append(video)
        else:
            kept.append(video)
    spare: list[StoredFile] = []  # photos that may go if the budget needs the room
    for photo in photos:
        name = str(photo.path)
        age = now - photo.mtime
        if name in refs.active_photos:
            kept.append(photo)
        elif (keep_photos_s > 0 and age > keep_photos_s) or (
            name not in refs.known_photos and age > ORPHAN_GRACE_S
        ):
            remove.append(photo)
        else:
            kept.append(photo)
            spare.append(photo)
    if budget_bytes > 0:
        used = other_bytes + sum(f.size for f in kept)
        for photo in sorted(spare, key=lambda f: f.mtime):
            if used <= budget_bytes:
                break
            remove.append(photo)
            used -= photo.size
    return remove


def list_files(folder: Path) -> list[StoredFile]:
    """Regular files directly in ``folder`` (none if it does not exist). Blocking."""
    files = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    for entry in entries:
        try:
            if entry.is_file(follow_symlinks=False):
                stat = entry.stat(follow_symlinks=False)
                files.append(StoredFile(Path(entry.path), stat.st_size, stat.st_mtime))
        except FileNotFoundError:
            continue  # removed while we looked
    return files


def folder_bytes(folder: Path) -> int:
    """Bytes of every regular file under ``folder``, recursively. Blocking."""
    total = 0
    for root, _dirs, names in os.walk(folder):
        for name in names:
            try:
                stat = os.lstat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            total += stat.st_size
    return total


def remove_files(files: Iterable[StoredFile]) -> list[StoredFile]:
    """Delete files that may already be gone; the ones that went. Blocking."""
    gone = []
    for file in files:
        try:
            file.path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("could not remove %s: %s", file.path, exc)
            continue
        gone.append(file)
    return gone


class DiskMeter:
    """How much the data folder uses, measured at most every ``DISK_RECHECK_S``.

    Intake asks ``over_budget()`` before each download; between measurements, ``add()``
    counts what intake saved, so a burst of photos cannot run far past the budget.
    """

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.folder = settings.data_dir
        self.budget_bytes = settings.max_disk_mb * MB
        self.clock = clock
        self._used: int | None = None
        self._measured_at = 0.0
        self._warned = False

    async def used_bytes(self) -> int:
        now = self.clock()
        if self._used is None or now - self._measured_at >= DISK_RECHECK_S:
            self._used = await asyncio.to_thread(folder_bytes, self.folder)
            self._measured_at = now
        return self._used

    def add(self, size: int) -> None:
        if self._used is not None:
            self._used += size

    def measured(self, used: int) -> None:
        """A fresh total (the sweep just listed everything)."""
        self._used, self._measured_at = used, self.clock()

    async def over_budget(self) -> bool:
        """Whether the folder is at or over ``max_disk_mb`` (never, when it is 0).

        The first refusal after room was available logs one operator WARNING.
        """
        if self.budget_bytes <= 0:
            return False
        used = await self.used_bytes()
        full = used >= self.budget_bytes
        if full and not self._warned:
            log.warning(
                "data folder %s uses %.0f MB of its %d MB budget (data.max_disk_mb): new photos "
                "are refused until the sweep or an operator frees room",
                self.folder,
                used / MB,
                self.budget_bytes // MB,
            )
        self._warned = full
        return full


class Upkeep:
    """The periodic sweep over the data folder and the cards table.

    Args:
        store: the open store (cards and strangers).
        queue: the job queue (its jobs' files stay while they are active).
        settings: data folder, ``keep_photos_days`` and ``max_disk_mb``.
        clock: UNIX seconds; injected so tests age files and decide when a sweep is due.
        every_s: least seconds between two sweeps from ``sweep_if_due``.
    """

    def __init__(
        self,
        store: Store,
        queue: JobQueue,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        every_s: float = SWEEP_EVERY_S,
    ) -> None:
        self.store = store
        self.queue = queue
        self.settings = settings
        self.clock = clock
        self.every_s = every_s
        self.disk = DiskMeter(settings, clock)
        self._swept_at: float | None = None

    async def sweep_if_due(self) -> SweepReport | None:
        """Sweep when ``every_s`` has passed since the last sweep (or none ran yet)."""
        now = self.clock()
        if self._swept_at is not None and now - self._swept_at < self.every_s:
            return None
        return await self.sweep()

    async def sweep(self) -> SweepReport:
        """Remove what no job needs, then old card rows; log one line when anything went."""
        now = self.clock()
        self._swept_at = now
        settings = self.settings
        jobs = await self.queue.files()
        card_photos = await self.store.card_photos()
        refs = FileRefs(
            active_photos=jobs.active_photos,
            active_job_ids=jobs.active_job_ids,
            ended_job_ids=jobs.ended_job_ids,
            known_photos=jobs.photos | card_photos,
        )
        photos = await asyncio.to_thread(list_files, settings.photos_dir)
        videos = await asyncio.to_thread(list_files, settings.videos_dir)
        total = await asyncio.to_thread(folder_bytes, settings.data_dir)
        swept = sum(f.size for f in photos) + sum(f.size for f in videos)
        keep_s = settings.keep_photos_days * 86400.0
        plan = plan_removals(
            photos,
            videos,
            refs,
            now=now,
            keep_photos_s=keep_s,
            budget_bytes=settings.max_disk_mb * MB,
            other_bytes=max(total - swept, 0),
        )
        gone = await asyncio.to_thread(remove_files, plan)
        freed = sum(f.size for f in gone)
        gone_photos = {str(f.path) for f in gone if f.path.parent == settings.photos_dir}
        # A card whose photo's jobs all ended became a status message long ago.
        ended = (jobs.photos - jobs.active_photos) & card_photos
        cards = await self.store.prune_cards(
            created_before=now - keep_s if keep_s > 0 else None,
            photo_paths=sorted(gone_photos | ended),
        )
        await self.store.prune_strangers(told_before=now - STRANGER_REMINDER_S)
        used = max(total - freed, 0)
        self.disk.measured(used)
        if gone or cards:
            log.info(
                "sweep: removed %d files (%.1f MB) and %d cards; data folder at %.1f MB",
                len(gone),
                freed / MB,
                cards,
                used / MB,
            )
        return SweepReport(tuple(f.path for f in gone), freed, cards, used)
