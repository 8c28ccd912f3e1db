"""Callback payloads round-trip, fit Telegram's 64 bytes, and old or forged ones are refused."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest

from bot import texts
from bot.jobs import JobOptions
from bot.keyboards import (
    ALL_PAYLOADS,
    MAX_CALLBACK_BYTES,
    Animate,
    CancelCard,
    CardOption,
    EngineButton,
    HistoryResend,
    JobCancel,
    Payload,
    ResultAction,
    is_known,
    result_keyboard,
    settings_keyboard,
    status_keyboard,
)
from generator.options import Backend, Intensity, PhotoType

EXAMPLES = [
    CardOption("i", "dramatic"),
    CardOption("b", "veo"),
    CardOption("t", "pet"),
    CardOption("d", "6"),
    CardOption("d", "default"),
    Animate(),
    CancelCard(),
    JobCancel(2**62),
    ResultAction(2**62, "other"),
    HistoryResend(2**62),
]


@pytest.mark.parametrize("payload", EXAMPLES, ids=repr)
def test_payloads_round_trip_within_64_bytes(payload: object) -> None:
    packed = payload.pack()  # type: ignore[attr-defined]
    assert len(packed.encode()) <= MAX_CALLBACK_BYTES
    assert type(payload).unpack(packed) == payload  # type: ignore[attr-defined]
    assert [cls for cls in ALL_PAYLOADS if cls.matches(packed)] == [type(payload)]


def test_prefixes_are_unique() -> None:
    prefixes = [cls.PREFIX for cls in ALL_PAYLOADS]
    assert len(set(prefixes)) == len(prefixes)


@pytest.mark.parametrize(
    "data",
    [
        "c0:i:subtle",  # an older layout of the card
        "c2:i:wild",  # not an intensity
        "c2:z:subtle",  # no such field
        "c2:d:5",  # Veo makes 4, 6 or 8 s
        "c2:i",  # too few values
        "j1:abc",  # not a job id
        "j1:1:2",  # too many values
        "r1:1:explode",  # no such result action
        "",
        "x1:extra",
    ],
)
def test_stale_or_forged_payloads_are_refused(data: str) -> None:
    assert not is_known(data)
    for cls in ALL_PAYLOADS:
        with pytest.raises(ValueError):
            cls.unpack(data)


@dataclass(frozen=True)
class Note(Payload):
    PREFIX: ClassVar[str] = "t9"
    text: str


def test_pack_refuses_overlong_values_and_the_separator() -> None:
    assert Note.unpack(Note("hi").pack()) == Note("hi")
    with pytest.raises(ValueError, match="64 bytes"):
        Note("x" * 62).pack()
    with pytest.raises(ValueError, match="64 bytes"):
        HistoryResend(10**70).pack()
    with pytest.raises(ValueError, match="may not contain"):
        Note("a:b").pack()


def test_card_option_applies_to_the_options() -> None:
    options = JobOptions()
    options = CardOption("i", "subtle").apply(options)
    options = CardOption("b", "svd").apply(options)
    options = CardOption("t", "landscape").apply(options)
    assert options == JobOptions(
        backend=Backend.SVD, intensity=Intensity.SUBTLE, photo_type=PhotoType.LANDSCAPE
    )
    assert CardOption("d", "4").apply(options).duration == 4


def _labels(markup: object) -> list[str]:
    return [b.text for row in markup.inline_keyboard for b in row]  # type: ignore[attr-defined]


def test_settings_keyboard_ticks_choices_and_prices_veo() -> None:
    options = JobOptions(intensity=Intensity.SUBTLE, photo_type=PhotoType.PET, duration=4)
    labels = _labels(settings_keyboard(options, veo_cost_usd=1.6))

    assert "✓ Subtle" in labels and "Moderate" in labels
    assert "✓ Pet" in labels and "✓ Auto" in labels
    assert "Veo ~$1.60" in labels and "✓ 4 s" in labels
    assert sum(label.startswith("✓") for label in labels) == 4


def test_settings_keyboard_without_veo_or_for_svd_has_no_durations() -> None:
    no_veo = _labels(settings_keyboard(JobOptions(), veo_cost_usd=None))
    assert not any("Veo" in label or label.endswith(" s") for label in no_veo)
    svd = _labels(settings_keyboard(JobOptions(backend=Backend.SVD), veo_cost_usd=3.2))
    assert "✓ SVD" in svd and not any(label.endswith(" s") for label in svd)


def test_status_and_result_keyboards_carry_the_job() -> None:
    (cancel,) = [b for row in status_keyboard(7).inline_keyboard for b in row]
    assert JobCancel.unpack(cancel.callback_data) == JobCancel(7)
    actions = [
        ResultAction.unpack(b.callback_data).action
        for row in result_keyboard(7).inline_keyboard
        for b in row
    ]
    assert actions == ["again", "more", "less", "other"]


@pytest.mark.parametrize(
    "data",
    [
        "j1:" + "9" * 23,  # past SQLite's 64 bits: used to overflow the driver
        "j1:9223372036854775808",  # 2**63
        "j1:0",
        "j1:-5",
        "j1:+5",
        "j1: 5",
        "j1:5_0",
        "j1:\u0665",  # an Arabic-Indic five: int() takes it
        "r1:" + "1" * 60 + ":more",  # over 64 bytes
        "c2:d:\uff18",  # a full-width 8
    ],
)
def test_forged_numbers_are_refused(data: str) -> None:
    assert not is_known(data)


def test_the_largest_id_still_unpacks() -> None:
    assert JobCancel.unpack(f"j1:{2**63 - 1}") == JobCancel(2**63 - 1)


def test_card_buttons_from_before_the_engine_row_read_as_expired() -> None:
    assert not is_known("c1:b:svd")  # an old card: the "expired" path, not a wrong choice
    assert CardOption.unpack("c2:b:ltx") == CardOption("b", "ltx")


def test_the_engine_row_offers_the_given_engines_with_what_they_make() -> None:
    engines = [
        EngineButton(Backend.LTX, texts.engine_button(Backend.LTX, 5.04, 24, 42.0)),
        EngineButton(Backend.SVD, texts.engine_button(Backend.SVD, 3.57, 7, None)),
    ]
    labels = _labels(
        settings_keyboard(JobOptions(backend=Backend.LTX), veo_cost_usd=None, engines=engines)
    )

    assert labels[3:6] == ["Auto", "✓ LTX 5s 24fps ~42 s", "SVD 3.6s 7fps"]
    assert not any(label.endswith(" s") and "fps" not in label for label in labels)
