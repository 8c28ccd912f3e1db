"""Veo's prompt says what moves for each kind of photo, how much, and the user's cleaned extras."""

from __future__ import annotations

from pathlib import Path

import pytest

from generator.options import MOTION_BANDS, Intensity, PhotoType, Request
from generator.prompt import NEGATIVE_PROMPT, build_ltx_prompt, build_prompt, sanitize_element


def test_portrait_prompt_is_exactly_the_documented_text() -> None:
    assert build_prompt(PhotoType.PORTRAIT, "gentle", ["a red balloon"]) == (
        "Animate this photo as a realistic, smoothly moving video. "
        "The person breathes naturally, blinks and turns their head slightly. "
        "The motion is gentle and calm. "
        "Keep every person's identity and face unchanged, and keep the original framing. "
        "Also show: a red balloon."
    )


def test_same_request_gives_the_same_prompt_every_time() -> None:
    request = Request(image=Path("x.jpg"), photo_type=PhotoType.PET, intensity=Intensity.DRAMATIC)
    prompts = {
        build_prompt(request.photo_type, request.motion_words(), ("snow",)) for _ in range(5)
    }
    assert len(prompts) == 1


@pytest.mark.parametrize(
    ("photo_type", "words"),
    [
        (PhotoType.PORTRAIT, "blinks"),
        (PhotoType.GROUP, "interact naturally"),
        (PhotoType.LANDSCAPE, "slow camera drift"),
        (PhotoType.PET, "tail"),
        (PhotoType.FORMAL, "minimal motion"),
    ],
)
def test_each_photo_type_says_what_moves_and_keeps_faces(photo_type: PhotoType, words: str) -> None:
    prompt = build_prompt(photo_type, "moderate", ())
    assert words in prompt
    assert "identity and face unchanged" in prompt


def test_every_motion_band_changes_the_wording() -> None:
    prompts = {build_prompt(PhotoType.LANDSCAPE, band.name, ()) for band in MOTION_BANDS}
    assert len(prompts) == len(MOTION_BANDS)
    assert "very subtle" in build_prompt(PhotoType.LANDSCAPE, "very subtle", ())
    assert "dramatic" in build_prompt(PhotoType.LANDSCAPE, "dramatic", ())


def test_intensity_from_the_request_reaches_the_prompt() -> None:
    subtle = Request(image=Path("x.jpg"), intensity=Intensity.SUBTLE)
    assert "gentle and calm" in build_prompt(subtle.photo_type, subtle.motion_words(), ())


def test_custom_elements_are_sanitised_and_all_included() -> None:
    prompt = build_prompt(
        PhotoType.LANDSCAPE,
        "gentle",
        ["  snow\tfalling \n", "a\x00 red\x1b[31m   kite", "   ", "\u200bbirds"],
    )
    assert prompt.endswith("Also show: snow falling, a red[31m kite, birds.")
    assert "\x00" not in prompt and "\x1b" not in prompt and "\u200b" not in prompt


def test_no_custom_elements_means_no_also_show_sentence() -> None:
    assert "Also show" not in build_prompt(PhotoType.GROUP, "active", ["", " \n "])


def test_sanitize_element_keeps_ordinary_text_including_accents_and_emoji() -> None:
    assert sanitize_element("  crème brûlée 🐈  ") == "crème brûlée 🐈"


def test_unknown_motion_band_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown motion band 'wild'"):
        build_prompt(PhotoType.PET, "wild", ())


def test_negative_prompt_default_comes_from_settings() -> None:
    assert "distorted faces" in NEGATIVE_PROMPT


def test_ltx_prompt_describes_the_footage_and_shares_the_scene_with_veo():
    ltx = build_ltx_prompt(PhotoType.PET, "gentle", ["a red ball\x07", "  snow  falling "])
    veo = build_prompt(PhotoType.PET, "gentle", [])

    assert ltx == build_ltx_prompt(PhotoType.PET, "gentle", ["a red ball\x07", "  snow  falling "])
    assert ltx.startswith("The animal's fur and ears stir")  # the footage, not "animate this"
    assert ltx.split(". ")[0] in veo  # the same scene sentence as Veo's
    assert "A red ball, snow falling are in the scene." in ltx  # extras sanitised
    assert "\x07" not in ltx and "Animate this photo" not in ltx
    assert build_ltx_prompt(PhotoType.PET, "dramatic") != build_ltx_prompt(PhotoType.PET, "gentle")
    with pytest.raises(ValueError, match="unknown motion band"):
        build_ltx_prompt(PhotoType.PET, "wild")
