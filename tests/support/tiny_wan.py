"""A tiny Wan 2.2 TI2V-5B-shaped pipeline with random weights, saved to disk like the real one.

Tests load it through ``WanEngine.load`` (the same ``WanImageToVideoPipeline.from_pretrained``
path as the real checkpoint), so everything but the model's size and quality runs on CPU.
Like ``Wan-AI/Wan2.2-TI2V-5B-Diffusers`` it is saved as a text-to-video ``WanPipeline`` with
``expand_timesteps`` and no image encoder, and the engine loads it as image-to-video. Shapes
follow diffusers' own Wan 2.2 5B image-to-video tests: the 48-channel Wan 2.2 VAE (2x2 patches,
residual blocks, 16x spatial and 4x temporal compression, so the real frame and size rules
hold), a transformer with 48 channels in and out, a small UMT5 encoder, and a tokenizer built
here with ``tokenizers`` so nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import (
    AutoencoderKLWan,
    UniPCMultistepScheduler,
    WanPipeline,
    WanTransformer3DModel,
)
from transformers import UMT5Config, UMT5EncoderModel

from generator.config import WanSettings
from generator.options import Profile

# The text embedding's width (TEXT_DIM) is the shared tiny encoder's; the transformer's text
# projection must match it.
from tests.support.tiny_ltx import TEXT_DIM, TINY_TEXT_ENCODER, build_tokenizer

#: Latent channels of the Wan 2.2 VAE (Wan 2.1's has 16).
Z_DIM = 48


def build_tiny_wan(path: Path) -> Path:
    """Build a random-weight Wan 2.2 5B-shaped pipeline from tiny configs, save it under
    ``path``. Deterministic: torch is seeded before each component."""
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=Z_DIM,  # 5B image-to-video: the photo replaces latent frame 0, no concat
        out_channels=Z_DIM,
        text_dim=TEXT_DIM,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=3,
        z_dim=Z_DIM,
        in_channels=12,  # 3 colours x the 2x2 patch
        out_channels=12,
        is_residual=True,
        patch_size=2,
        latents_mean=[0.0] * Z_DIM,
        latents_std=[1.0] * Z_DIM,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        scale_factor_spatial=16,
        scale_factor_temporal=4,
        temperal_downsample=[False, True, True],
    )
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), **TINY_TEXT_ENCODER))
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0
        ),
        transformer=transformer,
        expand_timesteps=True,
    )
    path.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(path)
    return path


def tiny_wan_settings(model_dir: Path, **overrides: object) -> WanSettings:
    """WanSettings for the tiny pipeline on CPU: 8 fps, 1 s default (9 frames), 2 steps with
    guidance, 64x32 pixels of area, fast profile, enabled."""
    values: dict[str, object] = dict(
        enabled=True,
        model=str(model_dir),
        device="cpu",
        dtype="float32",
        vae_dtype="float32",
        profile=Profile.FAST,
        width=64,
        height=32,
        fps=8,
        default_seconds=1.0,
        min_seconds=1.0,
        max_seconds=2.0,
        steps=2,
    )
    values.update(overrides)
    return WanSettings(**values)  # type: ignore[arg-type]


def tiny_wan_toml(model_dir: Path) -> str:
    """The ``[wan]`` table of a config file that runs the tiny pipeline on CPU."""
    return f"""
[wan]
enabled = true
model = "{model_dir}"
device = "cpu"
dtype = "float32"
vae_dtype = "float32"
width = 64
height = 32
fps = 8
default_seconds = 1.0
min_seconds = 1.0
max_seconds = 2.0
steps = 2
"""


@pytest.fixture(scope="session")
def tiny_wan_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny Wan 2.2 pipeline folder, built once per test run."""
    torch.set_num_threads(1)
    return build_tiny_wan(tmp_path_factory.mktemp("tiny-wan"))


@pytest.fixture
def tiny_wan(tiny_wan_dir: Path) -> WanSettings:
    """WanSettings pointing at the tiny pipeline (see :func:`tiny_wan_settings`)."""
    return tiny_wan_settings(tiny_wan_dir)
