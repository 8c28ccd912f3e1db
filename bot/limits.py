"""Per-user and per-bot limits: queue length, daily jobs and the Veo budgets (pure rules).

A limit of 0 is off. Days and months are UTC.
"""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass

from bot import texts
from bot.config import Settings
from bot.jobs import JobOptions, JobQueue
from generator.options import Backend, veo_seconds

DAY = 86400.0
#: A stranger is told the bot is private at most once in this many seconds.
STRANGER_REMINDER_S = DAY


def day_start(now: float) -> float:
    """UNIX time of the UTC midnight at or before ``now`` (daily limits reset then)."""
    return now - now % DAY


def month_start(now: float) -> float:
    """UNIX time of the first of this UTC month (the monthly Veo budget resets then)."""
    t = time.gmtime(now)
    return float(calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0)))


def veo_cost(settings: Settings, options: JobOptions) -> float | None:
    """What Veo would charge for ``options``; ``None`` when Veo is not configured."""
    if not settings.veo.configured:
        return None
    from generator.veo import veo_cost as cost

    return cost(veo_seconds(options.duration), settings.generator.veo.model, settings.generator.veo)


@dataclass(frozen=True)
class Usage:
    """What a user has used, read from the store before a new job."""

    active: int
    today: int
    veo_user_today: float
    veo_month: float


class Refused(Exception):
    """A job may not be queued; ``text`` tells the user why."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def check_quota(settings: Settings, usage: Usage) -> None:
    """``Refused`` when the user's queue or day is full: checked at Animate, and at intake
    before a photo is downloaded. A limit of 0 is off."""
    limits = settings.limits
    if limits.max_queued_per_user and usage.active >= limits.max_queued_per_user:
        raise Refused(texts.too_many_queued(limits.max_queued_per_user))
    if limits.daily_jobs_per_user and usage.today >= limits.daily_jobs_per_user:
        raise Refused(texts.daily_limit(limits.daily_jobs_per_user))


def check_limits(
    settings: Settings, options: JobOptions, usage: Usage, veo_estimate: float | None
) -> tuple[JobOptions, str | None]:
    """The options to queue and a note for the user, or ``Refused`` with the reason.

    Per-user queue and daily limits refuse outright. When a Veo budget (the user's day or
    the bot's month) cannot pay ``veo_estimate``, auto turns into SVD with a note, and an
    explicit Veo request is refused. A limit of 0 is off.
    """
    limits = settings.limits
    check_quota(settings, usage)
    if options.backend.local:  # a local engine picked on the card costs no Veo budget
        return options, None
    if veo_estimate is None:
        if options.backend is Backend.VEO:
            raise Refused(texts.veo_budget_refused(texts.VEO_NOT_CONFIGURED))
        return options, None  # auto without Veo is SVD anyway; nothing to say
    reason = None
    if (
        limits.veo_user_daily_usd
        and usage.veo_user_today + veo_estimate > limits.veo_user_daily_usd
    ):
        reason = texts.VEO_USER_BUDGET
    elif limits.veo_month_usd and usage.veo_month + veo_estimate > limits.veo_month_usd:
        reason = texts.VEO_MONTH_BUDGET
    if reason is None:
        return options, None
    if options.backend is Backend.VEO:
        raise Refused(texts.veo_budget_refused(reason))
    return options.on(Backend.SVD), texts.veo_budget_fallback(reason)


def veo_allowance(
    *, user_daily_usd: float, month_usd: float, user_spent_today: float, spent_this_month: float
) -> float | None:
    """Dollars Veo may still spend on one clip; ``None`` when neither limit is set (0 = off)."""
    left = []
    if user_daily_usd > 0:
        left.append(user_daily_usd - user_spent_today)
    if month_usd > 0:
        left.append(month_usd - spent_this_month)
    return max(0.0, min(left)) if left else None


async def veo_allowance_for(
    queue: JobQueue, settings: Settings, user_id: int, now: float
) -> float | None:
    """``veo_allowance`` for one of ``user_id``'s clips, from what the queue recorded as spent."""
    limits = settings.limits
    return veo_allowance(
        user_daily_usd=limits.veo_user_daily_usd,
        month_usd=limits.veo_month_usd,
        user_spent_today=await queue.veo_spend(since=day_start(now), user_id=user_id),
        spent_this_month=await queue.veo_spend(since=month_start(now)),
    )
