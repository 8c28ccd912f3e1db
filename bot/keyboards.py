"""Typed callback payloads and the inline keyboards built from them.

Each payload is a frozen dataclass with a ``PREFIX``; ``pack()`` writes ``prefix:field:field``
and refuses anything over Telegram's 64-byte limit, ``unpack()`` raises ``ValueError`` on a
payload of another layout. A new layout gets a new prefix, so old buttons fail to unpack
and take the "expired" path instead of doing the wrong thing (model: aiogram's CallbackData).

Example::

    >>> ResultAction(job_id=7, action=ResultChoice.MORE).pack()
    'r1:7:more'
    >>> ResultAction.unpack('r1:7:more').action
    <ResultChoice.MORE: 'more'>
"""

from __future__ import annotations

import dataclasses
import enum
import re
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from telegram import InlineKeyboardButton, InlineKeyboardMarkup

from bot import texts
from bot.jobs import JobOptions
from generator.options import VEO_DURATIONS, Backend, Intensity, PhotoType, veo_seconds

#: Telegram rejects callback_data longer than this many bytes (UTF-8).
MAX_CALLBACK_BYTES = 64
SEPARATOR = ":"
#: Integer fields are row ids: positive and within SQLite's signed 64 bits, so a forged
#: 23-digit id is refused here instead of overflowing the database driver later.
MAX_ID = 2**63 - 1
# ASCII digits only: int() also takes "+7", " 7", "7_0" and non-ASCII digits.
_DIGITS = re.compile(r"[0-9]{1,19}")


def parse_id(raw: str) -> int:
    """A row id from callback data: 1 to ``MAX_ID`` in plain ASCII digits; else ``ValueError``."""
    if not _DIGITS.fullmatch(raw):
        raise ValueError(f"not an id: {raw[:24]!r}")
    value = int(raw)
    if not 1 <= value <= MAX_ID:
        raise ValueError(f"id out of range: {raw[:24]!r}")
    return value


class Payload:
    """Base of the typed callback payloads: ``PREFIX`` plus str/int fields."""

    PREFIX: ClassVar[str] = ""

    def pack(self) -> str:
        """``PREFIX:field:...``; ``ValueError`` if a value holds the separator or it is too long."""
        parts = [self.PREFIX]
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = str(getattr(self, f.name))
            if SEPARATOR in value:
                raise ValueError(f"{f.name} may not contain {SEPARATOR!r}: {value!r}")
            parts.append(value)
        packed = SEPARATOR.join(parts)
        if len(packed.encode()) > MAX_CALLBACK_BYTES:
            raise ValueError(f"callback data is over {MAX_CALLBACK_BYTES} bytes: {packed!r}")
        return packed

    @classmethod
    def unpack(cls, data: str) -> Self:
        """Parse ``data`` packed by this class; ``ValueError`` for anything else."""
        if not isinstance(data, str):
            raise ValueError(f"expected a string, got {type(data).__name__}")
        if len(data.encode(errors="replace")) > MAX_CALLBACK_BYTES:
            raise ValueError(f"callback data is over {MAX_CALLBACK_BYTES} bytes")
        prefix, *values = data.split(SEPARATOR)
        if prefix != cls.PREFIX:
            raise ValueError(f"prefix {prefix!r} is not {cls.PREFIX!r}")
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        if len(values) != len(fields):
            raise ValueError(f"{cls.__name__} takes {len(fields)} values, got {len(values)}")
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        for f, raw in zip(fields, values, strict=True):
            hint = hints[f.name]
            if hint is int:
                kwargs[f.name] = parse_id(raw)
            elif isinstance(hint, type) and issubclass(hint, enum.Enum):
                kwargs[f.name] = hint(raw)  # ValueError for a value it does not have
            else:
                kwargs[f.name] = raw
        return cls(**kwargs)

    @classmethod
    def matches(cls, data: object) -> bool:
        """``CallbackQueryHandler`` pattern: whether ``data`` unpacks as this class."""
        try:
            cls.unpack(data)  # type: ignore[arg-type]
        except (ValueError, TypeError):
            return False
        return True


class CardField(enum.StrEnum):
    """Which row of the settings card a button sets (short: callback data is small)."""

    INTENSITY = "i"
    BACKEND = "b"
    PHOTO_TYPE = "t"
    DURATION = "d"


class ResultChoice(enum.StrEnum):
    """The buttons under a delivered video."""

    AGAIN = "again"  # the same options again (a new seed)
    MORE = "more"  # more motion
    LESS = "less"  # less motion
    OTHER = "other"  # another engine


@dataclass(frozen=True)
class CardOption(Payload):
    """A choice on a settings card: ``field`` says which row; ``value`` its value."""

    # c2: the engine row lists every offered engine (c1 knew only Auto, SVD and Veo).
    PREFIX: ClassVar[str] = "c2"
    field: CardField
    value: str

    def __post_init__(self) -> None:
        # Check both here so unpack() refuses a payload that names no real option.
        object.__setattr__(self, "field", CardField(self.field))
        CARD_FIELDS[self.field](self.value)

    def apply(self, options: JobOptions) -> JobOptions:
        """The card's options with this choice made."""
        name = _FIELD_NAMES[self.field]
        return dataclasses.replace(options, **{name: CARD_FIELDS[self.field](self.value)})


@dataclass(frozen=True)
class Animate(Payload):
    """The settings card's Animate button (the card is found by the pressed message)."""

    PREFIX: ClassVar[str] = "a1"


@dataclass(frozen=True)
class CancelCard(Payload):
    """The settings card's Cancel button: drop the card without making anything."""

    PREFIX: ClassVar[str] = "x1"


@dataclass(frozen=True)
class JobCancel(Payload):
    """Cancel a queued or running job from its status message."""

    PREFIX: ClassVar[str] = "j1"
    job_id: int


@dataclass(frozen=True)
class ResultAction(Payload):
    """A button under a delivered video: make another clip from the same photo."""

    PREFIX: ClassVar[str] = "r1"
    job_id: int
    action: ResultChoice

    def __post_init__(self) -> None:
        object.__setattr__(self, "action", ResultChoice(self.action))


@dataclass(frozen=True)
class HistoryResend(Payload):
    """A /history button: send a finished video again."""

    PREFIX: ClassVar[str] = "h1"
    job_id: int


def _duration(value: str) -> int | None:
    if value == "default":
        return None
    seconds = int(value) if value.isascii() and value.isdigit() else -1
    if seconds not in VEO_DURATIONS:
        raise ValueError(f"duration {seconds} is not one of {VEO_DURATIONS}")
    return seconds


#: How each card row's value string is parsed.
CARD_FIELDS: dict[CardField, Any] = {
    CardField.INTENSITY: Intensity,
    CardField.BACKEND: Backend,
    CardField.PHOTO_TYPE: PhotoType,
    CardField.DURATION: _duration,
}
_FIELD_NAMES = {
    CardField.INTENSITY: "intensity",
    CardField.BACKEND: "backend",
    CardField.PHOTO_TYPE: "photo_type",
    CardField.DURATION: "duration",
}

ALL_PAYLOADS: tuple[type[Payload], ...] = (
    CardOption,
    Animate,
    CancelCard,
    JobCancel,
    ResultAction,
    HistoryResend,
)


def is_known(data: object) -> bool:
    """Whether ``data`` is any current payload; everything else is a stale button."""
    return any(cls.matches(data) for cls in ALL_PAYLOADS)


def _button(text: str, payload: Payload, chosen: bool = False) -> InlineKeyboardButton:
    return InlineKeyboardButton(texts.ticked(text, chosen), callback_data=payload.pack())


@dataclass(frozen=True)
class EngineButton:
    """A local engine offered on the settings card, and its label (what it makes, the wait)."""

    backend: Backend
    label: str


def settings_keyboard(
    options: JobOptions,
    *,
    veo_cost_usd: float | None = None,
    engines: Sequence[EngineButton] = (EngineButton(Backend.SVD, "SVD"),),
) -> InlineKeyboardMarkup:
    """The settings card's buttons, the current choices ticked.

    ``veo_cost_usd`` is Veo's estimate for these options; ``None`` means Veo is not
    configured, so neither the Veo button nor the duration row (Veo-only) appears.
    ``engines`` are the local engines this bot offers (configured and loadable), in order.
    """
    veo = veo_cost_usd is not None
    engine_row = [
        _button(
            texts.backend_label(Backend.AUTO),
            CardOption(CardField.BACKEND, Backend.AUTO.value),
            options.backend is Backend.AUTO,
        )
    ]
    engine_row += [
        _button(
            e.label, CardOption(CardField.BACKEND, e.backend.value), options.backend is e.backend
        )
        for e in engines
    ]
    if veo:
        engine_row.append(
            _button(
                texts.backend_label(Backend.VEO, veo_cost_usd),
                CardOption(CardField.BACKEND, Backend.VEO.value),
                options.backend is Backend.VEO,
            )
        )
    rows = [
        [
            _button(
                texts.INTENSITY_LABELS[i],
                CardOption(CardField.INTENSITY, i.value),
                options.intensity is i,
            )
            for i in Intensity
        ],
        engine_row,
    ]
    types_ = list(PhotoType)
    type_buttons = [
        _button(
            texts.PHOTO_TYPE_LABELS[t],
            CardOption(CardField.PHOTO_TYPE, t.value),
            options.photo_type is t,
        )
        for t in types_
    ]
    rows += [type_buttons[:3], type_buttons[3:]]
    # Local engines make their own length, so the row only appears where Veo may make it.
    if veo and not options.backend.local:
        chosen = veo_seconds(options.duration)
        rows.append(
            [
                _button(
                    texts.duration_label(s), CardOption(CardField.DURATION, str(s)), chosen == s
                )
                for s in VEO_DURATIONS
            ]
        )
    rows.append(
        [
            InlineKeyboardButton(texts.ANIMATE_BUTTON, callback_data=Animate().pack()),
            InlineKeyboardButton(texts.CANCEL_BUTTON, callback_data=CancelCard().pack()),
        ]
    )
    return InlineKeyboardMarkup(rows)


def status_keyboard(job_id: int) -> InlineKeyboardMarkup:
    """Under a queued or running job's status message: one Cancel button."""
    return InlineKeyboardMarkup(
        [[InlineKeyboardButton(texts.CANCEL_BUTTON, callback_data=JobCancel(job_id).pack())]]
    )


def result_keyboard(job_id: int) -> InlineKeyboardMarkup:
    """Under a delivered video: Again / More motion / Less motion / Other backend."""
    buttons = [
        InlineKeyboardButton(texts.RESULT_LABELS[a], callback_data=ResultAction(job_id, a).pack())
        for a in ResultChoice
    ]
    return InlineKeyboardMarkup([buttons[:3], buttons[3:]])


def history_keyboard(job_ids: list[tuple[int, str]]) -> InlineKeyboardMarkup | None:
    """One "resend" button per finished video in /history: ``(job_id, label)`` pairs."""
    if not job_ids:
        return None
    return InlineKeyboardMarkup(
        [
            [InlineKeyboardButton(label, callback_data=HistoryResend(job_id).pack())]
            for job_id, label in job_ids
        ]
    )
