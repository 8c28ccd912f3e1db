"""Every sentence and button label the bot shows a user, as plain functions of their facts."""

from __future__ import annotations

import unicodedata

from bot.jobs import GIVE_UP_TEXT, Job, JobOptions, Stats, Status
from generator.clip import Stage
from generator.errors import InvalidImage
from generator.options import Backend, Intensity, PhotoType, motion_band, veo_seconds

# --- user text echoed back ---

#: Explicit bidi controls (embeddings, overrides, isolates, marks): in an echo they can make
#: the bot's own sentence read backwards or hide a part of it.
#: Zero-width spaces and the byte-order mark go too; emoji joiners (U+200D) and tags stay.
_INVISIBLE = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200b\u2060\ufeff"
)


def clean_text(text: str) -> str:
    """``text`` safe to echo: control characters (NUL, BEL, ESC...) and bidi controls removed,
    line breaks and tabs made spaces, runs of spaces collapsed. Emoji joiners stay.

    >>> clean_text("snow\u202e falling\x07\nslowly")
    'snow falling slowly'
    """
    kept = []
    for char in text:
        if char in _INVISIBLE:
            continue
        category = unicodedata.category(char)
        if char.isspace() or category in ("Zl", "Zp"):
            kept.append(" ")
        elif category not in ("Cc", "Cs"):
            kept.append(char)
    return " ".join("".join(kept).split())


# --- buttons ---

TICK = "✓ "
ANIMATE_BUTTON = "🎬 Animate"
CANCEL_BUTTON = "✖ Cancel"
INTENSITY_LABELS = {
    Intensity.SUBTLE: "Subtle",
    Intensity.MODERATE: "Moderate",
    Intensity.DRAMATIC: "Dramatic",
}
PHOTO_TYPE_LABELS = {
    PhotoType.PORTRAIT: "Portrait",
    PhotoType.GROUP: "Group",
    PhotoType.LANDSCAPE: "Landscape",
    PhotoType.PET: "Pet",
    PhotoType.FORMAL: "Formal",
}
BACKEND_NAMES = {
    Backend.AUTO: "Auto",
    Backend.VEO: "Veo",
    Backend.SVD: "Local (SVD)",
    Backend.LTX: "Local (LTX-Video)",
    Backend.WAN: "Local (Wan 2.2)",
}
#: Short engine names for buttons.
ENGINE_SHORT = {Backend.SVD: "SVD", Backend.LTX: "LTX", Backend.WAN: "Wan"}
#: Engine names in sentences.
ENGINE_LONG = {Backend.SVD: "SVD", Backend.LTX: "LTX-Video", Backend.WAN: "Wan 2.2"}
RESULT_LABELS = {
    "again": "🔁 Again",
    "more": "➕ More motion",
    "less": "➖ Less motion",
    "other": "🔀 Other engine",
}


def ticked(label: str, chosen: bool) -> str:
    """A button label with a tick when it is the current choice."""
    return TICK + label if chosen else label


def money(usd: float) -> str:
    """``$3.20``."""
    return f"${usd:.2f}"


def backend_label(backend: Backend, veo_cost_usd: float | None = None) -> str:
    """Backend button label; Veo shows what it would cost ("Veo ~$3.20")."""
    if backend is Backend.VEO and veo_cost_usd is not None:
        return f"Veo ~{money(veo_cost_usd)}"
    return ENGINE_SHORT.get(backend) or BACKEND_NAMES[backend]


def engine_button(backend: Backend, seconds: float, fps: int, wait_s: float | None) -> str:
    """A local engine's button: what it makes and the typical wait ("LTX 5s 24fps ~40 s").

    The frame rate says how smooth the clip is (24 fps plays smoothly, 7 fps visibly steps).
    """
    label = f"{ENGINE_SHORT[backend]} {seconds:.1f}s {fps}fps".replace(".0s", "s")
    return f"{label} ~{human_seconds(wait_s)}" if wait_s is not None else label


def duration_label(seconds: int) -> str:
    return f"{seconds} s"


def human_seconds(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


# --- the settings card ---


def settings_card(
    options: JobOptions,
    *,
    veo_available: bool,
    svd_seconds: float,
    note: str | None = None,
    local: Backend = Backend.SVD,
) -> str:
    """The text above the settings card's buttons.

    ``local`` is the local engine that will make the clip (the chosen one, or the one Auto
    uses on this machine) and ``svd_seconds`` the length it makes.
    """
    lines = ["How should I animate this photo?", ""]
    lines.append(f"Motion: {INTENSITY_LABELS[options.intensity]}")
    lines.append(f"Photo: {PHOTO_TYPE_LABELS[options.photo_type]}")
    if options.backend.local or not veo_available:
        name = ENGINE_LONG.get(local, "SVD")
        lines.append(f"Engine: local ({name}), a clip of about {svd_seconds:.1f} s")
    else:
        engine = "Veo" if options.backend is Backend.VEO else "Auto (Veo, else local)"
        lines.append(f"Engine: {engine}, {veo_seconds(options.duration)} s")
    if options.custom_elements:
        lines.append(f"Extra: {clean_text(' '.join(options.custom_elements))}")
    if note:
        lines += ["", note]
    lines += ["", "Pick your options, then press Animate."]
    return "\n".join(lines)


def card_dismissed() -> str:
    return "OK, I won't animate this one. Send another photo any time."


# --- queue and progress ---


def queue_card(position: int, eta_s: float | None) -> str:
    """A queued job's status message."""
    if position <= 1:
        where = "You're next in the queue."
    else:
        where = f"You're number {position} in the queue."
    eta = f" Estimated wait: about {human_seconds(eta_s)}." if eta_s is not None else ""
    return f"⏳ {where}{eta}\nI'll send the clip here when it's ready."


STAGE_TEXTS = {
    Stage.LOADING: "Loading the model…",
    Stage.DENOISING: "Animating…",
    Stage.DECODING: "Decoding frames…",
    Stage.SUBMITTED: "Sent to Veo…",
    Stage.POLLING: "Veo is making your clip…",
    Stage.DOWNLOADING: "Downloading the clip…",
    Stage.ENCODING: "Encoding the video…",
}


def progress_bar(step: int, total: int, width: int = 10) -> str:
    """``▰▰▰▱▱▱▱▱▱▱``: ``step`` of ``total`` as ``width`` segments."""
    filled = 0 if total <= 0 else min(width, int(width * step / total + 0.5))
    return "▰" * filled + "▱" * (width - filled)


def progress_card(
    stage: Stage,
    step: int,
    total: int,
    elapsed: float,
    backend: str,
    *,
    warming: bool = False,
    remaining_s: float | None = None,
) -> str:
    """A running job's status message: SVD shows its steps, Veo the time it has taken.

    ``warming``: the clip runs on the slower path used until the engine's compiled one is
    ready; the card says so, with the clip's own estimate of the time left.
    """
    head = f"🎬 {STAGE_TEXTS.get(stage, 'Working…')}"
    if warming:
        left = f", about {human_seconds(remaining_s)} left" if remaining_s is not None else ""
        head += f"\nFirst clip after an update: slower{left}."
    if total > 0:
        return f"{head}\n{progress_bar(step, total)} step {step}/{total}"
    engine = "Veo" if str(backend) == Backend.VEO else "local engine"
    return f"{head}\n{engine}, {human_seconds(elapsed)} so far"


def video_caption(job: Job, clip_seconds_taken: float) -> str:
    """The caption under a delivered clip: engine, fallback, motion, time, cost."""
    used = job.used_backend or job.options.backend
    parts = [f"Made with {BACKEND_NAMES.get(used, str(used))}"]
    if job.options.motion is not None:
        parts.append(f"motion: {motion_band(job.options.motion).name}")
    else:
        parts.append(f"motion: {INTENSITY_LABELS[job.options.intensity].lower()}")
    parts.append(f"took {human_seconds(clip_seconds_taken)}")
    if job.cost_usd:
        parts.append(f"Veo cost {money(job.cost_usd)}")
    caption = " · ".join(parts)
    if job.fallback_reason:
        caption += f"\n{job.fallback_reason}"
    return caption


def failed(user_text: str) -> str:
    return f"😞 {user_text}\nYou can try again with other options."


def engine_down(user_text: str) -> str:
    """A clip failed because its engine cannot work at all: other options would not help."""
    return f"😞 {user_text}"


def given_up() -> str:
    return GIVE_UP_TEXT


def expired() -> str:
    return "⌛ This waited too long in the queue and was dropped. Please send the photo again."


def cancelled() -> str:
    return "✖ Cancelled."


def cancel_requested() -> str:
    return "✖ Stopping… the clip will be dropped at the next step."


# --- photos and documents ---


def not_an_image() -> str:
    return InvalidImage.user_text


def too_large(limit_bytes: int) -> str:
    return f"That file is too large. Please send an image under {limit_bytes // (1024 * 1024)} MB."


def download_failed() -> str:
    return "I couldn't download that photo from Telegram. Please send it again."


#: What a message that is not a photo is called in the answer, by its kind.
MESSAGE_KINDS = {
    "sticker": "a sticker",
    "video": "a video",
    "animation": "a GIF",
    "video_note": "a video message",
    "voice": "a voice message",
    "audio": "an audio file",
    "location": "a location",
    "venue": "a place",
    "contact": "a contact",
    "poll": "a poll",
    "dice": "a dice",
    "game": "a game",
    "story": "a story",
    "paid_media": "paid media",
}


def not_a_photo(kind: str | None) -> str:
    """The answer to any message that is not a photo, a picture file or a command."""
    what = MESSAGE_KINDS.get(kind or "", "that")
    return (
        f"I can't animate {what}. Please send me a photo (or an image file) and I'll turn "
        "it into a short clip. /help says more."
    )


def busy_decoding() -> str:
    return "I'm still reading your last photos. Please send this one again in a moment."


def disk_full() -> str:
    return (
        "Sorry, I'm out of storage space right now, so I can't take new photos. "
        "Please try again later."
    )


# --- access and buttons ---


def not_allowed(user_id: int) -> str:
    return (
        "Sorry, this is a private bot. If you know its owner, send them your id "
        f"{user_id} and ask to be added."
    )


def not_allowed_alert() -> str:
    return "Sorry, this bot is private."


def stale_button() -> str:
    return "This button has expired. Send the photo again to start over."


def not_yours() -> str:
    return "That's someone else's photo; only they can use these buttons."


# --- limits ---


def too_many_queued(limit: int) -> str:
    return f"You already have {limit} clips waiting. Please wait for one to finish."


def daily_limit(limit: int) -> str:
    return f"You've made {limit} clips today, the daily limit. Please come back tomorrow."


def veo_budget_refused(reason: str) -> str:
    return f"{reason} Choose Auto or SVD instead."


def veo_budget_fallback(reason: str) -> str:
    return f"{reason} This clip will be made with the local engine."


VEO_USER_BUDGET = "You've used today's Veo budget."
VEO_MONTH_BUDGET = "This month's Veo budget is used up."
VEO_NOT_CONFIGURED = "Veo isn't set up on this bot."


# --- commands ---


def start(name: str | None = None) -> str:
    hello = f"Hi {name}! " if name else "Hi! "
    return (
        f"{hello}I turn a photo into a short animated clip.\n\n"
        "1. Send me a photo (or an image file for full quality).\n"
        "2. Pick how much it should move and what's in it.\n"
        "3. Press Animate, and I'll send the clip when it's ready.\n\n"
        'A caption on the photo adds details ("snow falling"). See /help for more.'
    )


def help_text() -> str:
    return (
        "Send a photo, pick options, press Animate.\n\n"
        "/queue – where your clips are in the queue\n"
        "/cancel – cancel your latest clip\n"
        "/history – your last clips (resend a video)\n"
        "/settings – your default options\n\n"
        "Under each clip: Again, More or Less motion, or the other engine."
    )


def settings_summary(options: JobOptions) -> str:
    lines = [
        "Your defaults (the last options you used):",
        f"Motion: {INTENSITY_LABELS[options.intensity]}",
        f"Photo: {PHOTO_TYPE_LABELS[options.photo_type]}",
        f"Engine: {BACKEND_NAMES[options.backend]}",
    ]
    if options.duration:
        lines.append(f"Veo length: {options.duration} s")
    lines.append("They change each time you press Animate.")
    return "\n".join(lines)


STATUS_WORDS = {
    Status.QUEUED: "waiting",
    Status.RUNNING: "running",
    Status.SENDING: "sending",
    Status.DONE: "done",
    Status.FAILED: "failed",
    Status.CANCELLED: "cancelled",
    Status.EXPIRED: "expired",
}


def history_line(job: Job, when: str) -> str:
    used = job.used_backend or job.options.backend
    return f"#{job.id} {when} – {STATUS_WORDS[job.status]}, {BACKEND_NAMES.get(used, str(used))}"


def history(lines: list[str]) -> str:
    if not lines:
        return "You haven't animated anything yet. Send me a photo!"
    return "Your last clips:\n" + "\n".join(lines)


def resend_label(job_id: int) -> str:
    return f"▶ Send #{job_id} again"


def video_gone() -> str:
    return "That video isn't available any more."


def queue_overview(lines: list[str], running: list[str], paused: bool) -> str:
    """/queue: what runs now (one entry per busy GPU consumer) and the user's waiting jobs."""
    out = []
    if paused:
        out.append("⏸ The queue is paused by the admin.")
    out.append(f"Now running: {'; '.join(running)}" if running else "Nothing is running now.")
    out += lines or ["You have no clips waiting."]
    return "\n".join(out)


def nothing_to_cancel() -> str:
    return "You have nothing to cancel."


def not_admin() -> str:
    return "That command is for the bot's admins."


def usage(command: str, args: str) -> str:
    return f"Usage: /{command} {args}"


def access_changed(user_id: int, allowed: bool) -> str:
    return f"User {user_id} is now {'allowed' if allowed else 'denied'}."


def paused() -> str:
    return "⏸ Paused: jobs stay queued until /resume."


def resumed() -> str:
    return "▶ Resumed."


def caption_too_long(limit: int) -> str:
    return f"Please keep the caption under {limit} characters; it describes extra details."


def stats(stats: Stats, *, paused: bool, consumers: int = 1) -> str:
    """/stats for admins, from ``bot.jobs.Stats``; ``consumers`` GPU consumers serve the queue."""
    by_status = ", ".join(f"{k} {v}" for k, v in sorted(stats.by_status.items())) or "none"
    by_backend = ", ".join(f"{k} {v}" for k, v in sorted(stats.by_backend.items())) or "none"
    medians = ", ".join(f"{k} {human_seconds(v)}" for k, v in sorted(stats.median_seconds.items()))
    lines = [
        f"Jobs: {stats.total} ({by_status})",
        f"Engines: {by_backend}",
        f"Median run time: {medians or 'no data yet'}",
        f"Veo spend: {money(stats.veo_spend_today)} today, {money(stats.veo_spend_month)} "
        "this month",
        f"Failure rate this month: {stats.failure_rate:.0%}",
        ("Queue: paused" if paused else "Queue: running")
        + f", {consumers} GPU consumer{'s' if consumers != 1 else ''}",
    ]
    return "\n".join(lines)


def internal_error() -> str:
    return "Sorry, something went wrong on my side. Please try again."


# --- worker and delivery ---


def delivery_failed() -> str:
    return "The clip was made but Telegram wouldn't take it."
