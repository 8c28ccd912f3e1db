"""Options: motion bands, intensity choices, and the checks that run before any work."""

from pathlib import Path

import pytest

from generator.errors import InvalidRequest
from generator.options import (
    INTENSITY_MOTION,
    Backend,
    Intensity,
    Request,
    check_request,
    motion_band,
    step_intensity,
)

IMG = Path("photo.jpg")


@pytest.mark.parametrize(
    ("value", "band"),
    [
        (0, "very subtle"),
        (50, "very subtle"),
        (51, "gentle"),
        (100, "gentle"),
        (101, "moderate"),
        (127, "moderate"),
        (150, "moderate"),
        (151, "active"),
        (200, "active"),
        (201, "dramatic"),
        (255, "dramatic"),
    ],
)
def test_motion_bands_match_the_seed(value, band):
    assert motion_band(value).name == band


def test_each_intensity_picks_a_motion_inside_its_own_band():
    assert motion_band(INTENSITY_MOTION[Intensity.SUBTLE]).name == "gentle"
    assert INTENSITY_MOTION[Intensity.MODERATE] == 127
    assert motion_band(INTENSITY_MOTION[Intensity.DRAMATIC]).name == "dramatic"


def test_explicit_motion_overrides_intensity():
    req = Request(image=IMG, intensity=Intensity.SUBTLE, motion=180)
    assert req.motion_bucket() == 180
    assert req.motion_words() == "active"


def test_step_intensity_saturates():
    assert step_intensity(Intensity.SUBTLE, +1) is Intensity.MODERATE
    assert step_intensity(Intensity.DRAMATIC, +1) is Intensity.DRAMATIC
    assert step_intensity(Intensity.SUBTLE, -1) is Intensity.SUBTLE


@pytest.mark.parametrize(
    ("request_kwargs", "fragment"),
    [
        ({"motion": 256}, "--motion must be 0-255"),
        ({"motion": -1}, "--motion must be 0-255"),
        ({"backend": Backend.VEO, "duration": 5}, "4, 6 or 8"),
        ({"backend": Backend.AUTO, "duration": 3}, "4, 6 or 8"),
        ({"backend": Backend.VEO, "veo_resolution": "1080p", "duration": 6}, "1080p"),
        ({"backend": Backend.VEO, "fps": 12}, "SVD only"),
        ({"backend": Backend.SVD, "duration": 8}, "3.6 s"),
        ({"backend": Backend.SVD, "veo_resolution": "1080p"}, "Veo only"),
        ({"backend": Backend.LTX, "veo_resolution": "1080p"}, "Veo only"),
        ({"backend": Backend.LTX, "fps": 12}, "SVD only"),
        ({"fps": 0}, "--fps"),
        ({"steps": 0}, "--steps"),
        ({"device": "tpu"}, "--device"),
        ({"custom_elements": ("x" * 400,)}, "at most 300"),
    ],
)
def test_invalid_combinations_are_refused_with_a_reason(request_kwargs, fragment):
    with pytest.raises(InvalidRequest, match=fragment.replace(".", r"\.")):
        check_request(Request(image=IMG, **request_kwargs), frames=25, default_fps=7)


def test_svd_duration_that_matches_frames_over_fps_is_accepted():
    check_request(Request(image=IMG, backend=Backend.SVD, duration=3.5), frames=25, default_fps=7)
    # 25 frames at 5 fps is 5 s: the user changes --fps to change the length.
    check_request(Request(image=IMG, backend=Backend.SVD, duration=5, fps=5), frames=25)


def test_valid_veo_request_passes():
    check_request(Request(image=IMG, backend=Backend.VEO, duration=8, veo_resolution="1080p"))
    assert Request(image=IMG).veo_duration() == 8


def test_invalid_request_has_a_user_text_without_internals():
    with pytest.raises(InvalidRequest) as info:
        check_request(Request(image=IMG, backend=Backend.VEO, duration=5))
    assert info.value.user_text == "Veo makes clips of 4, 6 or 8 seconds."
