"""Budget periods and the Veo allowance that crosses into the GPU process."""

import pytest

from bot.limits import day_start, month_start, veo_allowance


def test_budget_allowance_takes_the_tighter_limit():
    assert veo_allowance(
        user_daily_usd=2.0, month_usd=30.0, user_spent_today=1.6, spent_this_month=5.0
    ) == pytest.approx(0.4)
    assert (
        veo_allowance(
            user_daily_usd=2.0, month_usd=30.0, user_spent_today=0.0, spent_this_month=29.5
        )
        == 0.5
    )
    assert veo_allowance(
        user_daily_usd=2.0, month_usd=0, user_spent_today=3.0, spent_this_month=0
    ) == (0.0)
    assert (
        veo_allowance(user_daily_usd=0, month_usd=0, user_spent_today=9, spent_this_month=9) is None
    )


def test_budget_periods_start_at_utc_midnight_and_the_first():
    now = 1_800_000_000.0  # 2027-01-15 08:00 UTC
    assert day_start(now) == 1_799_971_200.0
    assert month_start(now) == 1_798_761_600.0
