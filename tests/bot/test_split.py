"""The rule that lends an idle GPU to a clip: split only when nobody waits for that GPU."""

from __future__ import annotations

from bot.split import ConsumerState, SplitMode, choose_peer

IDLE = ConsumerState(running=False, paused=False, engine_ready=True)
BUSY = ConsumerState(running=True, paused=False, engine_ready=True)
PAUSED = ConsumerState(running=False, paused=True, engine_ready=True)
STARTING = ConsumerState(running=False, paused=False, engine_ready=False)
INLINE = ConsumerState(running=False, paused=False, engine_ready=True, can_pair=False)


def test_an_idle_gpu_and_an_empty_queue_split_the_clip():
    assert choose_peer(SplitMode.AUTO, engine_splits=True, others=[IDLE], waiting=0) == 0


def test_the_first_idle_gpu_is_borrowed():
    others = [BUSY, PAUSED, IDLE, IDLE]
    assert choose_peer(SplitMode.AUTO, engine_splits=True, others=others, waiting=0) == 2


def test_a_waiting_job_keeps_the_idle_gpu_for_itself():
    assert choose_peer(SplitMode.AUTO, engine_splits=True, others=[IDLE], waiting=1) is None


def test_a_busy_paused_or_starting_gpu_is_not_borrowed():
    for other in (BUSY, PAUSED, STARTING, INLINE):
        assert choose_peer(SplitMode.AUTO, engine_splits=True, others=[other], waiting=0) is None


def test_an_engine_without_guidance_passes_runs_on_one_gpu():
    assert choose_peer(SplitMode.AUTO, engine_splits=False, others=[IDLE], waiting=0) is None


def test_split_off_runs_every_clip_on_one_gpu():
    assert choose_peer(SplitMode.OFF, engine_splits=True, others=[IDLE], waiting=0) is None


def test_a_single_gpu_has_nobody_to_borrow():
    assert choose_peer(SplitMode.AUTO, engine_splits=True, others=[], waiting=0) is None
