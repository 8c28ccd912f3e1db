"""Shared fixtures: each support module registers its own (tiny SVD, fake Veo, fake Bot API)."""

pytest_plugins = [
    "tests.support.images",
    "tests.support.tiny_svd",
    "tests.support.tiny_ltx",
    "tests.support.tiny_wan",
    "tests.support.fake_veo",
    "tests.support.fake_botapi",
    "tests.support.postgres",
]
