"""Auto backend rules and the circuit breaker, without clocks or networks."""

from pathlib import Path

import pytest

from generator.errors import (
    BackendUnavailable,
    BudgetExceeded,
    ContentFiltered,
    RateLimited,
    TransientError,
)
from generator.options import Backend, Request
from generator.router import (
    BreakerState,
    CircuitBreaker,
    Health,
    choose_backend,
    fallback_reason,
)

OK = Health(veo_configured=True, breaker_allows=True, budget_ok=True)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def req(backend: Backend) -> Request:
    return Request(image=Path("p.jpg"), backend=backend)


def test_auto_uses_veo_when_everything_is_fine():
    assert choose_backend(req(Backend.AUTO), OK).backend is Backend.VEO


@pytest.mark.parametrize(
    ("health", "words"),
    [
        (Health(False, True, True), "not configured"),
        (Health(True, True, False), "budget"),
        (Health(True, False, True), "failing"),
    ],
)
def test_auto_falls_back_to_svd_and_says_why(health, words):
    choice = choose_backend(req(Backend.AUTO), health)
    assert choice.backend is Backend.SVD
    assert words in choice.reason


def test_explicit_veo_is_refused_with_a_reason_instead_of_silently_using_svd():
    with pytest.raises(BackendUnavailable, match="credentials"):
        choose_backend(req(Backend.VEO), Health(False, True, True))
    with pytest.raises(BudgetExceeded):
        choose_backend(req(Backend.VEO), Health(True, True, False))
    with pytest.raises(BackendUnavailable):
        choose_backend(req(Backend.VEO), Health(True, False, True))


def test_svd_is_always_svd():
    assert choose_backend(req(Backend.SVD), Health(False, False, False)).backend is Backend.SVD


def test_fallback_reasons_are_sentences_for_people():
    assert "safety filter" in fallback_reason(ContentFiltered())
    assert "rate limit" in fallback_reason(RateLimited())
    assert "temporary" in fallback_reason(TransientError())


def test_breaker_opens_after_n_failures_then_lets_one_probe_through_after_cooldown():
    clock = Clock()
    breaker = CircuitBreaker(failures=3, cooldown=300, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()

    clock.now += 299
    assert not breaker.allow()
    clock.now += 2
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one at a time
    breaker.record_failure()  # probe failed: another full cool-down
    assert breaker.state is BreakerState.OPEN
    clock.now += 301
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow() and breaker.allow()


def test_success_resets_the_failure_count():
    breaker = CircuitBreaker(failures=2, cooldown=60, clock=Clock())
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED


# --- which local engine auto uses, and how many stay loaded ---

GIB = 1024**3


def test_auto_uses_the_first_engine_in_the_chain_that_fits_the_card(tmp_path):
    from generator.config import AutoSettings, GeneratorSettings, LtxSettings
    from generator.engines.catalog import auto_local

    default = GeneratorSettings()
    svd_first = GeneratorSettings(auto=AutoSettings(chain=("veo", "svd", "ltx")))
    ltx_off = GeneratorSettings(ltx=LtxSettings(enabled=False))
    ltx_missing = GeneratorSettings(ltx=LtxSettings(model=str(tmp_path / "nowhere")))

    assert auto_local(default, 12 * GIB) is Backend.LTX  # a 12 GB card: LTX-Video
    assert auto_local(default, 4 * GIB) is Backend.SVD  # nothing fits: the last in the chain
    assert auto_local(default, None) is Backend.SVD  # no CUDA card
    assert auto_local(svd_first, 80 * GIB) is Backend.SVD
    assert auto_local(ltx_off, 80 * GIB) is Backend.SVD
    assert auto_local(ltx_missing, 80 * GIB) is Backend.SVD


def test_auto_knows_wan_once_an_operator_enables_it():
    from generator.config import AutoSettings, GeneratorSettings, LtxSettings, WanSettings
    from generator.engines.catalog import auto_local

    wan_on = WanSettings(enabled=True)
    only_wan = GeneratorSettings(ltx=LtxSettings(enabled=False), wan=wan_on)
    wan_first = GeneratorSettings(wan=wan_on, auto=AutoSettings(chain=("veo", "wan", "ltx")))

    assert auto_local(GeneratorSettings(), 141 * GIB) is Backend.LTX  # Wan is off by default
    assert auto_local(only_wan, 24 * GIB) is Backend.WAN
    assert auto_local(only_wan, 8 * GIB) is Backend.SVD  # below Wan's 10 GiB: SVD still fits
    assert auto_local(wan_first, 141 * GIB) is Backend.WAN
    assert auto_local(wan_first, 8 * GIB) is Backend.LTX  # Wan does not fit; LTX-Video does


def test_a_large_card_keeps_several_engines_warm_and_a_small_one_swaps():
    from generator.engines import Residency, keeps_several

    assert keeps_several(Residency.AUTO, 141 * GIB, 40.0)
    assert not keeps_several(Residency.AUTO, 12 * GIB, 40.0)
    assert not keeps_several(Residency.AUTO, None, 40.0)
    assert not keeps_several(Residency.ONE, 141 * GIB, 40.0)
    assert keeps_several(Residency.ALL, 12 * GIB, 40.0)
