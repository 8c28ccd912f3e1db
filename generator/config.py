"""Typed generator settings and a strict loader that names the key it rejects.

Each TOML table maps onto one frozen dataclass; unknown keys and values of the wrong type or
outside their range raise ``ConfigError`` naming the key (``svd.steps: must be 1-200, got 0``).
Limits are declared next to each field: ``number(25, 1, 200)`` (a range), ``choice("crop",
"crop", "pad")`` (a set), ``path(None, "file")`` (what a path must be), ``url("")``;
:func:`load_section` checks them, and the bot's own sections reuse it. Rules between fields
(sizes, guidance min <= max) stay in ``validate`` functions.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from generator.options import Profile

T = TypeVar("T")


log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid; the message names the key."""


@dataclass(frozen=True)
class Range:
    """Inclusive bounds of a number; ``above`` is an exclusive lower bound (``> 0``)."""

    lo: float | None = None
    hi: float | None = None
    above: float | None = None

    def problem(self, value: float) -> str | None:
        if self.above is not None and not value > self.above:
            return f"must be more than {self.above:g}, got {value!r}"
        if self.lo is not None and self.hi is not None and not self.lo <= value <= self.hi:
            return f"must be {self.lo:g}-{self.hi:g}, got {value!r}"
        if self.lo is not None and value < self.lo:
            return f"must be at least {self.lo:g}, got {value!r}"
        if self.hi is not None and value > self.hi:
            return f"must be at most {self.hi:g}, got {value!r}"
        return None


def number(default: Any, lo: float | None = None, hi: float | None = None, *, above=None) -> Any:
    """A numeric setting with its range (``lo``..``hi`` inclusive, or more than ``above``)."""
    return field(default=default, metadata={"range": Range(lo, hi, above)})


def numbers(lo: float | None = None, hi: float | None = None) -> Any:
    """A set of numbers (ids), each within ``lo``..``hi``; empty by default."""
    return field(default_factory=frozenset, metadata={"range": Range(lo, hi)})


def choice(default: str, *choices: str) -> Any:
    """A string setting that must be one of ``choices``."""
    return field(default=default, metadata={"choices": choices})


def path(default: Path | None, kind: str) -> Any:
    """A path setting: ``kind`` "dir" (a folder or not there yet) or "file" (not a folder)."""
    return field(default=default, metadata={"path": kind})


def url(default: str = "") -> Any:
    """A URL setting: "" (the default service) or an http(s):// address."""
    return field(default=default, metadata={"url": True})


def text(default: str) -> Any:
    """A string setting that may be anything but empty."""
    return field(default=default, metadata={"nonempty": True})


def _limit_problem(value: Any, meta: typing.Mapping[str, Any]) -> str | None:
    """What is wrong with ``value`` under a field's declared limits, if anything."""
    if "range" in meta:
        for item in value if isinstance(value, frozenset) else (value,):
            problem = meta["range"].problem(item)
            if problem is not None:
                return problem
    if "choices" in meta and value not in meta["choices"]:
        return f"must be one of {', '.join(meta['choices'])}, got {value!r}"
    if meta.get("nonempty") and not value.strip():
        return "must not be empty"
    if meta.get("url") and value and not value.startswith(("http://", "https://")):
        return f"must be an http:// or https:// address, got {value!r}"
    kind = meta.get("path")
    if kind == "dir" and value is not None and value.exists() and not value.is_dir():
        return f"{value} is a file, not a folder"
    if kind == "file" and value is not None and value.is_dir():
        return f"{value} is a folder, not a file"
    return None


def check_limits(settings: Any, name: str) -> None:
    """Check every field of dataclass ``settings`` against its declared limits."""
    for f in dataclasses.fields(settings):
        problem = _limit_problem(getattr(settings, f.name), f.metadata)
        if problem is not None:
            raise ConfigError(f"{name}.{f.name}: {problem}")


@dataclass(frozen=True)
class ImageSettings:
    """How photos are prepared. Sizes are (width, height) and must be multiples of 8."""

    landscape_size: tuple[int, int] = (1024, 576)
    portrait_size: tuple[int, int] = (576, 1024)
    # "crop" (centre, to the landscape size) or "pad" (blurred fill)
    square: str = choice("crop", "crop", "pad")
    max_file_bytes: int = number(20 * 1024 * 1024, 1)
    # Larger is refused from the header, before decoding. 24 MP takes a 6000x4000 camera
    # photo whole (the engines use at most 1280x704, so crops have plenty of room) and keeps
    # one decode near 24M x 3 bytes x 3 copies = 216 MB; 48-200 MP phone files are refused.
    max_pixels: int = number(24_000_000, 1)


@dataclass(frozen=True)
class SvdSettings:
    """Local Stable Video Diffusion settings."""

    model: str = text("stabilityai/stable-video-diffusion-img2vid-xt")  # hub id or folder
    variant: str = "fp16"  # weights variant on CUDA; "" for none
    device: str = "auto"  # auto | cuda | cuda:N | mps | cpu (checked in validate_generator)
    # auto (fp16 on GPU, fp32 on CPU) | float16 | bfloat16 | float32
    dtype: str = choice("auto", "auto", "float16", "bfloat16", "float32")
    profile: Profile = Profile.AUTO
    frames: int = number(25, 2, 200)
    steps: int = number(25, 1, 200)
    fps: int = number(7, 1, 60)
    noise_aug_strength: float = number(0.02, 0.0, 10.0)
    min_guidance_scale: float = number(1.0, 0.0, 50.0)
    max_guidance_scale: float = number(3.0, 0.0, 50.0)
    decode_chunk_size: int = number(8, 1, 200)  # fast profile; low-vram uses 2
    compile: bool = True  # torch.compile UNet and VAE decoder (CUDA with Triton only)
    cache_dir: str = ""  # inductor cache folder; "" = $TORCHINDUCTOR_CACHE_DIR or torch's
    fp8: bool = False  # opt-in float8 UNet linears (Ada/Hopper + torchao); less exact
    # auto picks low-vram below this much free VRAM
    low_vram_threshold_gib: float = number(14.0, 0.0, 1024.0)


#: What LTX-Video is told not to show, unless ``ltx.negative_prompt`` says otherwise.
LTX_NEGATIVE_PROMPT = (
    "worst quality, inconsistent motion, blurry, jittery, distorted, watermark, text"
)

#: LTX-Video 0.9.8 distilled's timesteps (diffusers' LTX docs for the distilled checkpoints).
LTX_DISTILLED_TIMESTEPS: tuple[float, ...] = (
    1000.0,
    993.0,
    987.0,
    981.0,
    975.0,
    909.0,
    725.0,
    0.03,
)


@dataclass(frozen=True)
class LtxSettings:
    """Local LTX-Video settings (``LTXConditionPipeline``, a distilled checkpoint)."""

    enabled: bool = True  # offer it in chat and in auto's chain
    model: str = "Lightricks/LTX-Video-0.9.8-13B-distilled"  # hub id or local folder
    # A single-file transformer that replaces the folder's (the 2B distilled one by default,
    # which fits 12 GB cards); "" uses the folder's own transformer (the 13B).
    transformer: str = (
        "https://huggingface.co/Lightricks/LTX-Video/blob/main/ltxv-2b-0.9.8-distilled.safetensors"
    )
    device: str = "auto"  # auto | cuda | mps | cpu
    dtype: str = "auto"  # auto (bfloat16 on GPU, float32 on CPU) | float16 | bfloat16 | float32
    profile: Profile = Profile.AUTO
    width: int = number(
        768, 32, 4096
    )  # with height: the pixel area a clip gets; the photo's aspect is kept
    height: int = number(512, 32, 4096)
    fps: int = number(24, 1, 60)
    default_seconds: float = number(5.0, above=0)
    min_seconds: float = number(2.0, above=0)
    max_seconds: float = number(10.0, above=0)
    steps: int = number(
        8, 1, 200
    )  # used when timesteps is empty, or --steps differs from len(timesteps)
    timesteps: tuple[float, ...] = LTX_DISTILLED_TIMESTEPS
    guidance_scale: float = number(
        1.0, 1.0, 20.0
    )  # distilled checkpoints: 1 (no classifier-free guidance)
    decode_timestep: float = number(0.05, 0.0, 1.0)
    decode_noise_scale: float = number(0.025, 0.0, 1.0)
    image_cond_noise_scale: float = number(0.0, 0.0, 1.0)
    negative_prompt: str = LTX_NEGATIVE_PROMPT
    low_vram_threshold_gib: float = number(
        20.0, 0.0, 4096.0
    )  # auto picks low-vram below this much free VRAM
    min_vram_gib: float = number(
        6.0, 0.0, 4096.0
    )  # auto's chain skips LTX on cards smaller than this


#: What Wan 2.2 is told not to show, unless ``wan.negative_prompt`` says otherwise: the
#: English rendering of the negative prompt Wan's own examples use.
WAN_NEGATIVE_PROMPT = (
    "bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, "
    "images, static, overall gray, worst quality, low quality, JPEG compression residue, ugly, "
    "incomplete, extra fingers, poorly drawn hands, poorly drawn faces, deformed, disfigured, "
    "misshapen limbs, fused fingers, still picture, messy background, three legs, many people "
    "in the background, walking backwards"
)


@dataclass(frozen=True)
class WanSettings:
    """Local Wan 2.2 TI2V-5B settings (``WanImageToVideoPipeline``, image at frame 0)."""

    enabled: bool = False  # opt-in: a 32 GB download and minutes per clip
    model: str = "Wan-AI/Wan2.2-TI2V-5B-Diffusers"  # hub id or local folder
    device: str = "auto"  # auto | cuda | mps | cpu
    # auto (bfloat16 on GPU, float32 on CPU) | float16 | bfloat16 | float32
    dtype: str = choice("auto", "auto", "float16", "bfloat16", "float32")
    # The VAE: auto (as dtype: bf16 on GPU, measured close to fp32) | float32 as the model
    # card decodes | bfloat16 | float16
    vae_dtype: str = choice("auto", "auto", "float16", "bfloat16", "float32")
    profile: Profile = Profile.AUTO
    # With height: the pixel area a clip gets; the photo's aspect is kept.
    width: int = number(1280, 32, 4096)
    height: int = number(704, 32, 4096)
    fps: int = number(24, 1, 60)
    default_seconds: float = number(5.0, above=0)
    min_seconds: float = number(2.0, above=0)
    max_seconds: float = number(5.0, above=0)  # 121 frames, the length it was trained on
    steps: int = number(50, 1, 200)
    guidance_scale: float = number(5.0, 1.0, 20.0)
    negative_prompt: str = WAN_NEGATIVE_PROMPT
    # auto picks low-vram below this much free VRAM; auto's chain skips Wan on smaller cards.
    low_vram_threshold_gib: float = number(48.0, 0.0, 4096.0)
    min_vram_gib: float = number(10.0, 0.0, 4096.0)
    # Opt-in, changes the clip: skip the other blocks of a pass when the first block's output
    # moved less than this since the last step (diffusers' first-block cache); 0 is off.
    first_block_cache: float = number(0.0, 0.0, 1.0)
    guidance_batch: bool = False  # low-vram: both guidance passes in one call


@dataclass(frozen=True)
class EnginesSettings:
    """How many local engines one GPU keeps loaded."""

    residency: str = "auto"  # auto | one | all
    keep_warm_gib: float = number(
        40.0, 0.0, 4096.0
    )  # auto keeps several engines loaded on cards this large


@dataclass(frozen=True)
class VeoSettings:
    """Google Veo through google-genai: API key (Gemini Developer API) or Vertex AI."""

    model: str = text("veo-3.1-generate-preview")
    fast_model: str = text("veo-3.1-fast-generate-preview")
    use_vertex: bool = False
    project: str = ""
    location: str = "us-central1"
    negative_prompt: str = "blurry, distorted faces, extra limbs, text, watermark, low quality"
    person_generation: str = choice("allow_adult", "allow_adult", "allow_all", "dont_allow")
    poll_interval_s: float = number(10.0, 0.0, 3600.0, above=0.0)
    timeout_s: float = number(600.0, 0.0, 86400.0, above=0.0)
    max_transient_retries: int = number(3, 0, 100)
    price_per_second_usd: float = number(0.40, 0.0, 100.0)
    fast_price_per_second_usd: float = number(0.15, 0.0, 100.0)
    base_url: str = url()  # override the API endpoint (tests, proxies)


@dataclass(frozen=True)
class AutoSettings:
    """The auto backend: which engines it tries, and its circuit breaker around Veo."""

    # Tried in order; Veo only when configured, a local engine only when enabled and the
    # card is large enough for it. The last local engine is the fallback when none fits.
    chain: tuple[str, ...] = ("veo", "ltx", "wan", "svd")
    breaker_failures: int = number(3, 1, 1000)  # consecutive transient failures that open it
    breaker_cooldown_s: float = number(300.0, 0.0, 86400.0)  # then one probe is let through


X264_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
    "placebo",
)


@dataclass(frozen=True)
class EncodeSettings:
    """MP4 encoding."""

    crf: int = number(18, 0, 51)
    preset: str = choice("medium", *X264_PRESETS)
    max_bytes: int = number(50 * 1024 * 1024, 100_000)  # Telegram's bot upload limit
    thumbnail_px: int = number(320, 16, 320)  # Telegram shows thumbnails up to 320 px


@dataclass(frozen=True)
class GeneratorSettings:
    """Everything the generator needs, one section per TOML table."""

    image: ImageSettings = field(default_factory=ImageSettings)
    svd: SvdSettings = field(default_factory=SvdSettings)
    ltx: LtxSettings = field(default_factory=LtxSettings)
    wan: WanSettings = field(default_factory=WanSettings)
    engines: EnginesSettings = field(default_factory=EnginesSettings)
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
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[float, ...]: any length
            if not isinstance(value, list | tuple):
                raise ConfigError(f"{key}: expected a list, got {value!r}")
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
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


#: Keys older configs may hold that nothing reads any more: warned about and skipped, where an
#: unknown key is refused (a typo must not be ignored; a retired key must not stop a service).
RETIRED_KEYS = {
    "veo.resolution": (
        "one resolution cannot hold for the bot's 4, 6 and 8 s clips (Veo's 1080p takes 8 s "
        "only); the command line has --resolution per run"
    ),
}


def load_section(cls: type[T], data: Any, name: str) -> T:
    """Build dataclass ``cls`` from the TOML table ``data``, rejecting unknown keys."""
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in [k for k in data if f"{name}.{k}" in RETIRED_KEYS]:
        # An upgrade must not stop a running service over a key it no longer reads.
        log.warning(
            "%s.%s is no longer read: %s; remove it", name, key, RETIRED_KEYS[f"{name}.{key}"]
        )
        data = {k: v for k, v in data.items() if k != key}
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
    check_limits(result, name)
    validate = getattr(result, "validate", None)
    if validate is not None:
        validate(name)
    return result


def _check(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {message}")


def validate_generator(settings: GeneratorSettings) -> None:
    """Rules that a field's own limits cannot express."""
    for key in ("landscape_size", "portrait_size"):
        w, h = getattr(settings.image, key)
        _check(
            w > 0 and h > 0 and w % 8 == 0 and h % 8 == 0,
            f"image.{key}",
            f"width and height must be positive multiples of 8, got {w}x{h}",
        )
    _check(
        settings.svd.device in ("auto", "cuda", "mps", "cpu")
        or re.fullmatch(r"cuda:\d+", settings.svd.device) is not None,
        "svd.device",
        f"must be auto, cuda, cuda:N, mps or cpu, got {settings.svd.device!r}",
    )
    _check(
        settings.svd.min_guidance_scale <= settings.svd.max_guidance_scale,
        "svd.max_guidance_scale",
        "must be at least min_guidance_scale",
    )
    ltx = settings.ltx
    for key in ("width", "height"):
        _check(getattr(ltx, key) >= 32, f"ltx.{key}", "must be at least 32")
    _check(1 <= ltx.fps <= 60, "ltx.fps", "must be 1-60")
    _check(1 <= ltx.steps <= 200, "ltx.steps", "must be 1-200")
    _check(
        0 < ltx.min_seconds <= ltx.default_seconds <= ltx.max_seconds,
        "ltx.default_seconds",
        "must lie between ltx.min_seconds and ltx.max_seconds, all positive",
    )
    _check(
        ltx.device in ("auto", "cuda", "mps", "cpu") or ltx.device.startswith("cuda:"),
        "ltx.device",
        "must be auto, cuda, mps or cpu",
    )
    _check(
        ltx.dtype in ("auto", "float16", "bfloat16", "float32"),
        "ltx.dtype",
        "must be auto, float16, bfloat16 or float32",
    )
    _check(ltx.guidance_scale >= 1.0, "ltx.guidance_scale", "must be at least 1")
    _check(0 <= ltx.decode_timestep <= 1, "ltx.decode_timestep", "must be 0-1")
    _check(0 <= ltx.decode_noise_scale <= 1, "ltx.decode_noise_scale", "must be 0-1")
    _check(0 <= ltx.image_cond_noise_scale <= 1, "ltx.image_cond_noise_scale", "must be 0-1")
    _check(all(0 <= t <= 1000 for t in ltx.timesteps), "ltx.timesteps", "each must be 0-1000")
    wan = settings.wan
    _check(
        wan.min_seconds <= wan.default_seconds <= wan.max_seconds,
        "wan.default_seconds",
        "must lie between wan.min_seconds and wan.max_seconds",
    )
    _check(
        wan.device in ("auto", "cuda", "mps", "cpu")
        or re.fullmatch(r"cuda:\d+", wan.device) is not None,
        "wan.device",
        f"must be auto, cuda, cuda:N, mps or cpu, got {wan.device!r}",
    )
    _check(
        settings.engines.residency in ("auto", "one", "all"),
        "engines.residency",
        "must be auto, one or all",
    )
    known = {"veo", "svd", "ltx", "wan"}
    _check(
        bool(settings.auto.chain) and set(settings.auto.chain) <= known,
        "auto.chain",
        "must list some of veo, ltx, wan, svd",
    )


def load_generator_settings(tables: dict[str, Any]) -> GeneratorSettings:
    """Build settings from the generator's TOML tables (``image``, ``svd``, ``veo``, ...)."""
    settings = GeneratorSettings(
        image=load_section(ImageSettings, tables.get("image"), "image"),
        svd=load_section(SvdSettings, tables.get("svd"), "svd"),
        ltx=load_section(LtxSettings, tables.get("ltx"), "ltx"),
        wan=load_section(WanSettings, tables.get("wan"), "wan"),
        engines=load_section(EnginesSettings, tables.get("engines"), "engines"),
        veo=load_section(VeoSettings, tables.get("veo"), "veo"),
        auto=load_section(AutoSettings, tables.get("auto"), "auto"),
        encode=load_section(EncodeSettings, tables.get("encode"), "encode"),
    )
    validate_generator(settings)
    return settings
