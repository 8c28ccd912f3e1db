"""Generator settings: strict loading that names the offending key."""

import pytest

from generator.config import (
    ConfigError,
    GeneratorSettings,
    VeoSettings,
    load_generator_settings,
    veo_credentials,
)
from generator.options import Profile


def test_empty_tables_give_the_defaults():
    assert load_generator_settings({}) == GeneratorSettings()


def test_values_are_typed():
    s = load_generator_settings(
        {"svd": {"profile": "low-vram", "steps": 10}, "image": {"landscape_size": [64, 32]}}
    )
    assert s.svd.profile is Profile.LOW_VRAM
    assert s.svd.steps == 10
    assert s.image.landscape_size == (64, 32)


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ({"svd": {"stepz": 3}}, "svd.stepz: unknown key"),
        ({"svd": {"steps": "ten"}}, "svd.steps: expected an integer"),
        ({"svd": {"steps": 0}}, "svd.steps: must be 1-200"),
        ({"svd": {"profile": "turbo"}}, "svd.profile: must be one of auto, fast, low-vram"),
        ({"image": {"landscape_size": [100, 50]}}, "image.landscape_size: width and height"),
        ({"veo": {"use_vertex": "yes"}}, "veo.use_vertex: expected true or false"),
        ({"encode": "fast"}, "encode: expected a table"),
    ],
)
def test_bad_values_name_the_key(tables, message):
    with pytest.raises(ConfigError, match=message):
        load_generator_settings(tables)


def test_veo_credentials_come_from_the_environment_and_stay_out_of_repr():
    creds = veo_credentials(VeoSettings(), {"GEMINI_API_KEY": "sekrit-key"})
    assert creds.configured
    assert "sekrit" not in repr(creds)
    assert not veo_credentials(VeoSettings(), {}).configured
    vertex = veo_credentials(VeoSettings(use_vertex=True, project="p"), {})
    assert vertex.configured and vertex.api_key is None


def test_a_retired_key_is_skipped_with_a_warning_not_refused(caplog):
    # An upgrade must not stop a service whose config still sets [veo] resolution.
    with caplog.at_level("WARNING", logger="generator.config"):
        settings = load_generator_settings({"veo": {"resolution": "1080p", "use_vertex": False}})
    assert settings.veo.use_vertex is False
    assert "veo.resolution is no longer read" in caplog.text
    with pytest.raises(ConfigError, match=r"veo\.resolutoin: unknown key"):
        load_generator_settings({"veo": {"resolutoin": "1080p"}})  # a typo is still refused
