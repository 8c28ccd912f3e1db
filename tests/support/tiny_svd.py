"""A tiny Stable Video Diffusion pipeline with random weights, saved to disk like a real model.

Tests load it through ``SvdBackend.load`` (the same ``from_pretrained`` path as the real
SVD-XT weights), so everything but the model's size and quality is exercised on CPU.
Configs follow diffusers' own SVD fast tests, shrunk further so a 32x32 clip of 2 frames
in 2 steps takes well under a second.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import (
    AutoencoderKLTemporalDecoder,
    EulerDiscreteScheduler,
    StableVideoDiffusionPipeline,
    UNetSpatioTemporalConditionModel,
)
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from generator.config import SvdSettings
from generator.options import Profile

#: Width of the CLIP image embedding; the UNet's cross-attention must match it.
EMBED_DIM = 32
#: Size of each of the three added time ids (fps, motion bucket, noise strength).
TIME_EMBED_DIM = 8


def svd_xt_scheduler() -> EulerDiscreteScheduler:
    """SVD-XT's own scheduler config (scheduler/scheduler_config.json on the hub); the tiny
    pipeline and the full-size benchmark both use it."""
    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        interpolation_type="linear",
        num_train_timesteps=1000,
        prediction_type="v_prediction",
        sigma_max=700.0,
        sigma_min=0.002,
        steps_offset=1,
        timestep_spacing="leading",
        timestep_type="continuous",
        trained_betas=None,
        use_karras_sigmas=True,
    )


def build_tiny_svd(path: Path) -> Path:
    """Build a random-weight SVD pipeline from tiny configs, save it under ``path`` and return it.

    Deterministic: the same weights every time (torch is seeded before each component).
    """
    torch.manual_seed(0)
    unet = UNetSpatioTemporalConditionModel(
        sample_size=4,
        in_channels=8,  # 4 noisy latent channels + 4 image latent channels, as in SVD
        out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=EMBED_DIM,
        num_attention_heads=(2, 4),
        addition_time_embed_dim=TIME_EMBED_DIM,
        # The pipeline passes [fps, motion_bucket, noise_aug_strength]: three ids.
        projection_class_embeddings_input_dim=3 * TIME_EMBED_DIM,
        num_frames=4,
    )
    scheduler = svd_xt_scheduler()
    torch.manual_seed(0)
    vae = AutoencoderKLTemporalDecoder(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
    )
    torch.manual_seed(0)
    # The pipeline always resizes the photo to 224x224 for CLIP, so the encoder must take 224;
    # 32-pixel patches keep it to 49 tokens.
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            projection_dim=EMBED_DIM,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            image_size=224,
            patch_size=32,
        )
    )
    feature_extractor = CLIPImageProcessor(crop_size=224, size=224)
    pipe = StableVideoDiffusionPipeline(
        vae=vae,
        image_encoder=image_encoder,
        unet=unet,
        scheduler=scheduler,
        feature_extractor=feature_extractor,
    )
    path.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(path)
    return path


def tiny_settings(model_dir: Path, **overrides: object) -> SvdSettings:
    """SvdSettings for the tiny pipeline on CPU: 2 frames, 2 steps, fast profile."""
    values: dict[str, object] = dict(
        model=str(model_dir),
        device="cpu",
        dtype="float32",
        variant="",
        frames=2,
        steps=2,
        fps=7,
        profile=Profile.FAST,
        decode_chunk_size=2,
    )
    values.update(overrides)
    return SvdSettings(**values)  # type: ignore[arg-type]


def tiny_config_toml(model_dir: Path, *, frames: int, steps: int, fps: int = 7) -> str:
    """The ``[image]`` and ``[svd]`` tables of a config file that runs the tiny pipeline on
    CPU at 64x32 (landscape) / 32x64 (portrait), for tests that start real processes."""
    return f"""
[image]
landscape_size = [64, 32]
portrait_size = [32, 64]

[svd]
model = "{model_dir}"
device = "cpu"
dtype = "float32"
variant = ""
frames = {frames}
steps = {steps}
fps = {fps}
"""


@pytest.fixture(scope="session")
def tiny_svd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny SVD pipeline folder, built once per test run.

    Also pins torch to one thread: on a shared CI box, tiny convolutions spread over busy
    cores spend their time waiting on each other (measured: 3 s per clip vs 0.1 s).
    """
    torch.set_num_threads(1)
    return build_tiny_svd(tmp_path_factory.mktemp("tiny-svd"))


@pytest.fixture
def tiny_svd_settings(tiny_svd_dir: Path) -> SvdSettings:
    """SvdSettings pointing at the tiny pipeline: CPU, float32, 2 frames, 2 steps, 7 fps."""
    return tiny_settings(tiny_svd_dir)
