"""The rule that lends an idle GPU to a clip: split only when nobody waits for that GPU."""

from __future__ import annotations

from bot.split import ConsumerState, SplitMode, choose_peer, split_engine
from generator.config import GeneratorSettings
from generator.engines.catalog import engine_specs
from generator.options import Backend

SPECS = engine_specs(GeneratorSettings())

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


def test_svd_and_wan_share_guidance_passes_and_ltx_does_not():
    def engine(backend: Backend) -> Backend | None:
        return split_engine(backend, veo_configured=False, auto_local=None, specs=SPECS)

    assert engine(Backend.SVD) is Backend.SVD
    assert engine(Backend.WAN) is Backend.WAN
    assert engine(Backend.LTX) is None
    assert engine(Backend.VEO) is None


def test_auto_splits_only_the_local_engine_it_will_use_without_veo():
    def auto(veo: bool, local: Backend) -> Backend | None:
        return split_engine(Backend.AUTO, veo_configured=veo, auto_local=local, specs=SPECS)

    assert auto(False, Backend.WAN) is Backend.WAN
    assert auto(False, Backend.LTX) is None
    assert auto(True, Backend.WAN) is None  # Veo may make the clip: no GPU to share


def test_svd_with_guidance_1_has_no_second_pass_to_share():
    from generator.config import SvdSettings

    specs = engine_specs(GeneratorSettings(svd=SvdSettings(max_guidance_scale=1.0)))
    assert split_engine(Backend.SVD, veo_configured=False, auto_local=None, specs=specs) is None


def test_wan_with_its_first_block_cache_is_not_split():
    from generator.config import WanSettings

    specs = engine_specs(GeneratorSettings(wan=WanSettings(first_block_cache=0.1)))
    assert split_engine(Backend.WAN, veo_configured=False, auto_local=None, specs=specs) is None
