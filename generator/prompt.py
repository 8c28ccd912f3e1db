"""The text prompts Veo and LTX-Video get: what moves for this kind of photo, how much, and the
user's extras.

Both engines share the scene and motion sentences and the sanitised extras; they differ in
framing. Veo is told to animate "this photo" and to keep faces; LTX-Video follows prompts
written as a description of the footage itself (its model card), so its prompt describes the
video, and it gets a negative prompt from ``[ltx] negative_prompt``.

Example::

    >>> build_prompt(PhotoType.PET, "gentle", ["a red ball"])  # doctest: +ELLIPSIS
    'Animate this photo as a realistic, smoothly moving video. ... Also show: a red ball.'
    >>> build_ltx_prompt(PhotoType.PET, "gentle", ["a red ball"])  # doctest: +ELLIPSIS
    "The animal's fur and ears stir, ... A red ball is in the scene. ..."
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from generator.config import VeoSettings
from generator.options import MOTION_BANDS, PhotoType

#: What Veo is told not to show, unless ``veo.negative_prompt`` says otherwise.
NEGATIVE_PROMPT: str = VeoSettings().negative_prompt

_OPENING = "Animate this photo as a realistic, smoothly moving video."

# What moves naturally in each kind of photo; Veo invents less when told what to animate.
_SCENE: dict[PhotoType, str] = {
    PhotoType.PORTRAIT: "The person breathes naturally, blinks and turns their head slightly.",
    PhotoType.GROUP: "The people interact naturally with each other, with small natural gestures.",
    PhotoType.LANDSCAPE: (
        "Clouds drift, water ripples and foliage sways in the wind, with a slow camera drift."
    ),
    PhotoType.PET: "The animal's fur and ears stir, its tail moves and it breathes calmly.",
    PhotoType.FORMAL: "The scene stays dignified, with minimal motion and gentle, soft light.",
}

# One sentence per motion band (options.MOTION_BANDS), mildest first.
_INTENSITY: dict[str, str] = {
    "very subtle": "All motion is very subtle, almost still.",
    "gentle": "The motion is gentle and calm.",
    "moderate": "The motion is moderate and natural.",
    "active": "The motion is active and lively.",
    "dramatic": "The motion is dramatic and dynamic, with a moving camera.",
}
if set(_INTENSITY) != {band.name for band in MOTION_BANDS}:
    raise RuntimeError("every motion band needs its words in _INTENSITY")

# Veo's most noticed failure on personal photos is a face that drifts into someone else's.
_KEEP_IDENTITY = "Keep every person's identity and face unchanged, and keep the original framing."


def sanitize_element(text: str) -> str:
    """Return ``text`` stripped, with control characters removed and whitespace collapsed."""
    kept = "".join(
        ch for ch in text if ch.isspace() or not unicodedata.category(ch).startswith("C")
    )
    return " ".join(kept.split())


def _extras(custom_elements: Sequence[str]) -> list[str]:
    return [clean for clean in map(sanitize_element, custom_elements) if clean]


def _check_band(motion_band_name: str) -> None:
    if motion_band_name not in _INTENSITY:
        known = ", ".join(_INTENSITY)
        raise ValueError(f"unknown motion band {motion_band_name!r} (known: {known})")


def build_prompt(
    photo_type: PhotoType, motion_band_name: str, custom_elements: Sequence[str] = ()
) -> str:
    """Build Veo's prompt; the same arguments always give the same text.

    Args:
        photo_type: what is in the photo; picks the sentence about what moves naturally.
        motion_band_name: a band name from ``options.MOTION_BANDS`` (``Request.motion_words()``),
            e.g. ``"gentle"``; picks how strongly things move.
        custom_elements: the user's extra words ("snow falling"); each is sanitised
            (see :func:`sanitize_element`) and empty ones are dropped.

    Raises:
        ValueError: ``motion_band_name`` is not a known band.
    """
    _check_band(motion_band_name)
    sentences = [_OPENING, _SCENE[photo_type], _INTENSITY[motion_band_name], _KEEP_IDENTITY]
    extras = _extras(custom_elements)
    if extras:
        sentences.append("Also show: " + ", ".join(extras).rstrip(".") + ".")
    return " ".join(sentences)


# LTX-Video's closing sentence: what the footage looks like, in the model card's style.
_LTX_FOOTAGE = (
    "The footage is realistic and smooth, with natural lighting and the same framing as "
    "the first frame."
)


def build_ltx_prompt(
    photo_type: PhotoType, motion_band_name: str, custom_elements: Sequence[str] = ()
) -> str:
    """Build LTX-Video's prompt; the same arguments always give the same text.

    Same arguments as :func:`build_prompt`; the extras become one sentence about what is
    in the scene, and the prompt ends by describing the footage.
    """
    _check_band(motion_band_name)
    sentences = [_SCENE[photo_type], _INTENSITY[motion_band_name]]
    extras = _extras(custom_elements)
    if extras:
        joined = ", ".join(extras).rstrip(".")
        sentences.append(
            joined[0].upper()
            + joined[1:]
            + (" are" if len(extras) > 1 else " is")
            + " in the scene."
        )
    sentences.append(_LTX_FOOTAGE)
    return " ".join(sentences)
