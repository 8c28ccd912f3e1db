"""The job's pure decisions: when a run that ended without a clip may be followed by another."""

from __future__ import annotations

import dataclasses

from bot.jobs import Charge, Job, JobOptions, Status, can_retry

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
