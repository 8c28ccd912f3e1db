"""A tiny LTX-Video pipeline with random weights, saved to disk like a real model.

Tests load it through ``LtxEngine.load`` (the same ``LTXConditionPipeline.from_pretrained``
path as the real checkpoint), so everything but the model's size and quality runs on CPU.
Shapes follow diffusers' own LTX condition tests, with three 2x scalings in the VAE so the
tiny model keeps the real frame rule (8k+1 frames); the T5 tokenizer is a small Unigram
vocabulary built here with ``tokenizers``, so nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import (
    AutoencoderKLLTXVideo,
    FlowMatchEulerDiscreteScheduler,
    LTXConditionPipeline,
    LTXVideoTransformer3DModel,
)
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import T5Config, T5EncoderModel, T5TokenizerFast

from generator.config import LtxSettings
from generator.options import Profile

#: Width of the text embedding; the transformer's caption projection must match it.
TEXT_DIM = 32

# Words of the prompts the engine writes, so real prompt text reaches the encoder as tokens.
_WORDS = (
    "the a an of and with in is are to person people animal fur ears tail breathes calmly "
    "motion gentle moderate subtle dramatic active camera clouds water light scene footage "
    "realistic smooth natural lighting same framing first frame"
).split()


#: The tiny T5-family text encoder both LTX-Video (T5) and Wan (UMT5) tests use.
TINY_TEXT_ENCODER = dict(
    d_model=TEXT_DIM,
    d_kv=8,
    d_ff=37,
    num_layers=1,
    num_heads=4,
    relative_attention_num_buckets=8,
    pad_token_id=0,
    eos_token_id=1,
)


def build_tokenizer() -> T5TokenizerFast:
    """A T5 tokenizer over a small Unigram vocabulary (whole words, then single letters)."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + word, -1.0) for word in _WORDS]
    pieces += [(ch, -5.0) for ch in "abcdefghijklmnopqrstuvwxyz.,'\u2581"]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581")
    tokenizer.decoder = decoders.Metaspace(replacement="\u2581")
    return T5TokenizerFast(tokenizer_object=tokenizer, extra_ids=0)


def build_tiny_ltx(path: Path) -> Path:
    """Build a random-weight LTX-Video pipeline from tiny configs, save it under ``path``.

    Deterministic: torch is seeded before each component.
    """
    torch.manual_seed(0)
    transformer = LTXVideoTransformer3DModel(
        in_channels=8,
        out_channels=8,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=4,
        attention_head_dim=8,
        cross_attention_dim=32,
        num_layers=1,
        caption_channels=TEXT_DIM,
    )
    torch.manual_seed(0)
    vae = AutoencoderKLLTXVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=8,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        # Three 2x steps in space and time: 8x, as the real VAE's temporal compression.
        spatio_temporal_scaling=(True, True, True, False),
        decoder_spatio_temporal_scaling=(True, True, True, False),
        decoder_inject_noise=(False, False, False, False, False),
        upsample_residual=(False, False, False, False),
        upsample_factor=(1, 1, 1, 1),
        timestep_conditioning=True,  # as the distilled checkpoints: decode_timestep is used
        patch_size=1,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    )
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    text_encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), **TINY_TEXT_ENCODER))
    pipe = LTXConditionPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
    path.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(path)
    return path


def tiny_ltx_settings(model_dir: Path, **overrides: object) -> LtxSettings:
    """LtxSettings for the tiny pipeline on CPU: 8 fps, 1 s default (9 frames), 2 steps,
    64x32 pixels of area, fast profile, no single-file transformer."""
    values: dict[str, object] = dict(
        model=str(model_dir),
        transformer="",
        device="cpu",
        dtype="float32",
        profile=Profile.FAST,
        width=64,
        height=32,
        fps=8,
        default_seconds=1.0,
        min_seconds=1.0,
        max_seconds=2.0,
        steps=2,
        timesteps=(),
    )
    values.update(overrides)
    return LtxSettings(**values)  # type: ignore[arg-type]


def tiny_ltx_toml(model_dir: Path) -> str:
    """The ``[ltx]`` table of a config file that runs the tiny pipeline on CPU."""
    return f"""
[ltx]
model = "{model_dir}"
transformer = ""
device = "cpu"
dtype = "float32"
width = 64
height = 32
fps = 8
default_seconds = 1.0
min_seconds = 1.0
max_seconds = 2.0
steps = 2
timesteps = []
"""


@pytest.fixture(scope="session")
def tiny_ltx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny LTX-Video pipeline folder, built once per test run."""
    torch.set_num_threads(1)
    return build_tiny_ltx(tmp_path_factory.mktemp("tiny-ltx"))


@pytest.fixture
def tiny_ltx(tiny_ltx_dir: Path) -> LtxSettings:
    """LtxSettings pointing at the tiny pipeline (see :func:`tiny_ltx_settings`)."""
    return tiny_ltx_settings(tiny_ltx_dir)
