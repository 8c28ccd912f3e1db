"""Typed generator settings and a strict loader that names the key it rejects.

Each TOML table maps onto one frozen dataclass; unknown keys and values of the wrong type or
outside their range raise ``ConfigError`` naming the key (``svd.steps: expected int, got 'x'``).
The bot's own sections reuse :func:`load_section`.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from generator.options import Profile

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid; the message names the key."""


@dataclass(frozen=True)
class ImageSettings:
    """How photos are prepared. Sizes are (width, height) and must be multiples of 8."""

    landscape_size: tuple[int, int] = (1024, 576)
    portrait_size: tuple[int, int] = (576, 1024)
    square: str = "crop"  # "crop" (centre, to the landscape size) or "pad" (blurred fill)
    max_file_bytes: int = 20 * 1024 * 1024
    # Larger is refused from the header, before decoding. 24 MP takes a 6000x4000 camera
    # photo whole (the engines use at most 1280x704, so crops have plenty of room) and keeps
    # one decode near 24M x 3 bytes x 3 copies = 216 MB; 48-200 MP phone files are refused.
    max_pixels: int = 24_000_000


@dataclass(frozen=True)
class SvdSettings:
    """Local Stable Video Diffusion settings."""

    model: str = "stabilityai/stable-video-diffusion-img2vid-xt"
    variant: str = "fp16"  # weights variant on CUDA; "" for none
    device: str = "auto"  # auto | cuda | mps | cpu
    dtype: str = "auto"  # auto (fp16 on GPU, fp32 on CPU) | float16 | bfloat16 | float32
    profile: Profile = Profile.AUTO
    frames: int = 25
    steps: int = 25
    fps: int = 7
    noise_aug_strength: float = 0.02
    min_guidance_scale: float = 1.0
    max_guidance_scale: float = 3.0
    decode_chunk_size: int = 8  # fast profile; low-vram uses 2
    compile: bool = True  # torch.compile UNet and VAE decoder (CUDA with Triton only)
    cache_dir: str = ""  # inductor cache folder; "" = $TORCHINDUCTOR_CACHE_DIR or torch's
    fp8: bool = False  # opt-in float8 UNet linears (Ada/Hopper + torchao); less exact
    low_vram_threshold_gib: float = 14.0  # auto picks low-vram below this much free VRAM


@dataclass(frozen=True)
class VeoSettings:
    """Google Veo through google-genai: API key (Gemini Developer API) or Vertex AI."""

    model: str = "veo-3.1-generate-preview"
    fast_model: str = "veo-3.1-fast-generate-preview"
    use_vertex: bool = False
    project: str = ""
    location: str = "us-central1"
    resolution: str = "720p"
    negative_prompt: str = "blurry, distorted faces, extra limbs, text, watermark, low quality"
    person_generation: str = "allow_adult"
    poll_interval_s: float = 10.0
    timeout_s: float = 600.0
    max_transient_retries: int = 3
    price_per_second_usd: float = 0.40
    fast_price_per_second_usd: float = 0.15
    base_url: str = ""  # override the API endpoint (tests, proxies)


@dataclass(frozen=True)
class AutoSettings:
    """The auto backend's circuit breaker around Veo."""

    breaker_failures: int = 3  # consecutive transient failures that open it
    breaker_cooldown_s: float = 300.0  # then one probe is let through


@dataclass(frozen=True)
class EncodeSettings:
    """MP4 encoding."""

    crf: int = 18
    preset: str = "medium"
    max_bytes: int = 50 * 1024 * 1024  # Telegram's bot upload limit
    thumbnail_px: int = 320


@dataclass(frozen=True)
class GeneratorSettings:
    """Everything the generator needs, one section per TOML table."""

    image: ImageSettings = field(default_factory=ImageSettings)
    svd: SvdSettings = field(default_factory=SvdSettings)
    veo: VeoSettings = field(default_factory=VeoSettings)
    auto: AutoSettings = field(default_factory=AutoSettings)
    encode: EncodeSettings = field(default_factory=EncodeSettings)


@dataclass(frozen=True)
class VeoCredentials:
    """How to reach Veo. ``api_key`` comes from the environment only; never logged."""

    api_key: str | None = None
    use_vertex: bool = False
    project: str | None = None
    location: str | None = None

    @property
    def configured(self) -> bool:
        return bool(self.api_key) or (self.use_vertex and bool(self.project))

    def __repr__(self) -> str:  # keep the key out of logs and tracebacks
        return (
            f"VeoCredentials(api_key={'***' if self.api_key else None}, "
            f"use_vertex={self.use_vertex}, project={self.project!r})"
        )


def veo_credentials(
    settings: VeoSettings, env: typing.Mapping[str, str] | None = None
) -> VeoCredentials:
    """Read Veo credentials: ``GEMINI_API_KEY`` / ``GOOGLE_API_KEY``, or Vertex project/location."""
    env = os.environ if env is None else env
    key = env.get("GEMINI_API_KEY") or env.get("GOOGLE_API_KEY") or None
    vertex = settings.use_vertex or env.get("GOOGLE_GENAI_USE_VERTEXAI", "").lower() in (
        "1",
        "true",
    )
    project = settings.project or env.get("GOOGLE_CLOUD_PROJECT") or None
    location = settings.location or env.get("GOOGLE_CLOUD_LOCATION") or None
    return VeoCredentials(
        api_key=None if vertex else key, use_vertex=vertex, project=project, location=location
    )


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a dataclass field annotation; return it converted."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _coerce(value, args[0], key)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        try:
            return annotation(value)
        except ValueError:
            allowed = ", ".join(m.value for m in annotation)
            raise ConfigError(f"{key}: must be one of {allowed}, got {value!r}") from None
    if origin is tuple:
        args = typing.get_args(annotation)
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(
            _coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if origin in (list, frozenset):
        (arg,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        items = [_coerce(v, arg, f"{key}[{i}]") for i, v in enumerate(value)]
        return frozenset(items) if origin is frozenset else items
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if annotation is Path:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a path string, got {value!r}")
        return Path(value).expanduser()
    raise ConfigError(f"{key}: unsupported setting type {annotation!r}")  # a bug of ours


def load_section(cls: type[T], data: Any, name: str) -> T:
    """Build dataclass ``cls`` from the TOML table ``data``, rejecting unknown keys."""
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]}: unknown key (known: {', '.join(sorted(fields))})")
    values = {}
    for key, value in data.items():
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            values[key] = load_section(annotation, value, f"{name}.{key}")
        else:
            values[key] = _coerce(value, annotation, f"{name}.{key}")
    result = cls(**values)
    validate = getattr(result, "validate", None)
    if validate is not None:
        validate(name)
    return result


def _check(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {message}")


def validate_generator(settings: GeneratorSettings) -> None:
    """Range checks that a type alone cannot express."""
    for key in ("landscape_size", "portrait_size"):
        w, h = getattr(settings.image, key)
        _check(
            w > 0 and h > 0 and w % 8 == 0 and h % 8 == 0,
            f"image.{key}",
            f"width and height must be positive multiples of 8, got {w}x{h}",
        )
    _check(settings.image.square in ("crop", "pad"), "image.square", "must be crop or pad")
    _check(settings.svd.frames >= 2, "svd.frames", "must be at least 2")
    _check(1 <= settings.svd.steps <= 200, "svd.steps", "must be 1-200")
    _check(1 <= settings.svd.fps <= 60, "svd.fps", "must be 1-60")
    _check(
        settings.svd.device in ("auto", "cuda", "mps", "cpu")
        or settings.svd.device.startswith("cuda:"),
        "svd.device",
        "must be auto, cuda, mps or cpu",
    )
    _check(
        settings.svd.dtype in ("auto", "float16", "bfloat16", "float32"),
        "svd.dtype",
        "must be auto, float16, bfloat16 or float32",
    )
    _check(settings.svd.decode_chunk_size >= 1, "svd.decode_chunk_size", "must be at least 1")
    _check(settings.veo.resolution in ("720p", "1080p"), "veo.resolution", "must be 720p or 1080p")
    _check(settings.veo.poll_interval_s > 0, "veo.poll_interval_s", "must be positive")
    _check(settings.veo.timeout_s > 0, "veo.timeout_s", "must be positive")
    _check(settings.veo.price_per_second_usd >= 0, "veo.price_per_second_usd", "must be >= 0")
    _check(settings.auto.breaker_failures >= 1, "auto.breaker_failures", "must be at least 1")
    _check(0 <= settings.encode.crf <= 51, "encode.crf", "must be 0-51")
    _check(settings.encode.max_bytes >= 100_000, "encode.max_bytes", "must be at least 100000")


def load_generator_settings(tables: dict[str, Any]) -> GeneratorSettings:
    """Build settings from the generator's TOML tables (``image``, ``svd``, ``veo``, ...)."""
    settings = GeneratorSettings(
        image=load_section(ImageSettings, tables.get("image"), "image"),
        svd=load_section(SvdSettings, tables.get("svd"), "svd"),
        veo=load_section(VeoSettings, tables.get("veo"), "veo"),
        auto=load_section(AutoSettings, tables.get("auto"), "auto"),
        encode=load_section(EncodeSettings, tables.get("encode"), "encode"),
    )
    validate_generator(settings)
    return settings
