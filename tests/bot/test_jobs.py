"""The job's pure decisions: when a run that ended without a clip may be followed by another,
and which length an engine is asked for."""

from __future__ import annotations

import dataclasses

from bot.jobs import Charge, Job, JobOptions, Status, can_retry
from bot.worker import request_for
from generator.options import Backend

RUNNING = Job(1, 7, 7, 10, "p.jpg", JobOptions(), Status.RUNNING, "k", max_attempts=3)


def test_a_jobs_own_failures_are_capped_by_max_attempts():
    assert can_retry(dataclasses.replace(RUNNING, failures=1), Charge.FAILURE, max_crashes=10)
    # The third failure of three allowed tries is the last.
    assert not can_retry(dataclasses.replace(RUNNING, failures=2), Charge.FAILURE, max_crashes=10)


def test_crashes_have_their_own_higher_cap_and_ignore_attempts():
    many_runs = dataclasses.replace(RUNNING, attempts=9, failures=2, crashes=8)
    assert can_retry(many_runs, Charge.CRASH, max_crashes=10)
    assert not can_retry(dataclasses.replace(many_runs, crashes=9), Charge.CRASH, max_crashes=10)


def test_a_run_nobody_is_to_blame_for_is_always_retried():
    worn = dataclasses.replace(RUNNING, attempts=50, failures=2, crashes=9)
    assert can_retry(worn, Charge.NONE, max_crashes=10)


def test_a_local_engine_gets_no_veo_duration_and_veo_keeps_it():
    four_seconds = JobOptions(backend=Backend.VEO, duration=4)
    assert four_seconds.engine_duration == 4
    assert four_seconds.on(Backend.AUTO).engine_duration == 4  # Auto may still use Veo
    on_svd = four_seconds.on(Backend.SVD)
    assert (on_svd.backend, on_svd.duration) == (Backend.SVD, None)
    # A card switched to a local engine keeps the choice for a later switch back to Veo,
    # but the engine is never asked for it.
    switched = dataclasses.replace(four_seconds, backend=Backend.LTX)
    assert switched.engine_duration is None
    assert request_for(dataclasses.replace(RUNNING, options=switched)).duration is None
    assert request_for(dataclasses.replace(RUNNING, options=four_seconds)).duration == 4
