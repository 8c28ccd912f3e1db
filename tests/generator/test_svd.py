"""The SVD backend end to end on the tiny random-weight pipeline, on CPU."""

from __future__ import annotations

import gc
import logging
import threading
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from generator.clip import Progress
from generator.config import SvdSettings
from generator.engines import svd, svd_speed
from generator.engines.svd import (
    SvdBackend,
    choose_profile,
    reads_onto_device,
    resolve_device,
    resolve_dtype,
)
from generator.errors import BackendUnavailable, Cancelled, InvalidRequest, OutOfMemory
from generator.options import Backend, Profile
from tests.support.graphs import saveable_eager
from tests.support.tiny_svd import tiny_settings

GIB = 1024**3


def photo(width: int = 32, height: int = 32) -> PIL.Image.Image:
    """A colour gradient, so the photo's content reaches the encoders."""
    x = np.linspace(0, 255, width, dtype=np.uint8)
    y = np.linspace(0, 255, height, dtype=np.uint8)
    pixels = np.stack(np.broadcast_arrays(x[None, :], y[:, None], 255 - x[None, :]), axis=-1)
    return PIL.Image.fromarray(np.ascontiguousarray(pixels), "RGB")


def as_array(frames: list[PIL.Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(f, dtype=np.int16) for f in frames])


@pytest.fixture
def backend(tiny_svd_settings: SvdSettings) -> SvdBackend:
    return SvdBackend(tiny_svd_settings, hf_token=None)


def test_clip_has_the_asked_frames_at_the_photo_size(backend: SvdBackend) -> None:
    result = backend.generate(photo(64, 32), motion_bucket=127, fps=7, frames=3, seed=1)

    assert len(result.frames) == 3
    assert {(f.shape, str(f.dtype)) for f in result.frames} == {((32, 64, 3), "uint8")}
    assert (result.fps, result.seed, result.steps) == (7, 1, 2)
    assert result.profile is Profile.FAST


def test_frames_made_on_the_device_are_the_bytes_of_stock_diffusers_pil_frames() -> None:
    from diffusers.video_processor import VideoProcessor

    from generator.engines.device import frames_to_uint8

    # What SVD's decoder hands the pipeline: (batch, channels, frames, height, width) in [-1, 1],
    # a little beyond, and values on each rounding edge (x.5 / 255).
    decoded = torch.rand(1, 3, 4, 16, 24, generator=torch.Generator().manual_seed(0)) * 2.2 - 1.1
    decoded[0, 0, 0, 0, :8] = torch.arange(8) * 2 / 255 - 1 + 1 / 255
    processor = VideoProcessor(vae_scale_factor=8)

    ours = frames_to_uint8(processor.postprocess_video(decoded, output_type="pt")[0])
    stock = processor.postprocess_video(decoded, output_type="pil")[0]

    assert np.array_equal(ours, np.stack([np.asarray(f) for f in stock]))


def test_progress_reports_loading_each_step_then_decoding(
    tiny_svd_settings: SvdSettings,
) -> None:
    ticks = iter(range(1000))
    backend = SvdBackend(tiny_svd_settings, clock=lambda: float(next(ticks)))
    events: list[Progress] = []

    backend.generate(photo(), motion_bucket=80, fps=7, steps=3, seed=0, on_progress=events.append)

    assert [e.stage for e in events] == [
        "loading",
        "denoising",
        "denoising",
        "denoising",
        "decoding",
    ]
    steps = [e for e in events if e.stage == "denoising"]
    assert [(e.step, e.total) for e in steps] == [(1, 3), (2, 3), (3, 3)]
    assert all(e.backend is Backend.SVD for e in events)
    assert steps[0].elapsed < steps[1].elapsed < steps[2].elapsed


def test_second_clip_reuses_the_loaded_model(backend: SvdBackend) -> None:
    backend.generate(photo(), motion_bucket=127, fps=7, seed=0)
    pipe = backend.pipeline
    events: list[Progress] = []

    backend.generate(photo(), motion_bucket=127, fps=7, seed=0, on_progress=events.append)
    backend.load()

    assert backend.pipeline is pipe
    assert "loading" not in [e.stage for e in events]


def test_another_model_folder_reloads(
    backend: SvdBackend, tiny_svd_dir: Path, tmp_path: Path
) -> None:
    backend.load()
    first = backend.pipeline
    other = tmp_path / "copy"
    other.symlink_to(tiny_svd_dir, target_is_directory=True)

    result = backend.generate(photo(), motion_bucket=127, fps=7, seed=0, model=str(other))

    assert backend.pipeline is not first
    assert len(result.frames) == 2


def test_cancel_at_step_one_stops_and_the_next_clip_still_works(backend: SvdBackend) -> None:
    steps_seen: list[int] = []

    with pytest.raises(Cancelled):
        backend.generate(
            photo(),
            motion_bucket=127,
            fps=7,
            steps=4,
            seed=5,
            on_progress=lambda p: steps_seen.append(p.step) if p.stage == "denoising" else None,
            should_cancel=lambda: True,
        )
    after_cancel = backend.generate(photo(), motion_bucket=127, fps=7, seed=5)
    fresh = SvdBackend(backend.settings).generate(photo(), motion_bucket=127, fps=7, seed=5)

    assert steps_seen == [1]
    assert np.array_equal(as_array(after_cancel.frames), as_array(fresh.frames))


def test_same_seed_same_clip_other_seed_other_clip(backend: SvdBackend) -> None:
    a = backend.generate(photo(), motion_bucket=127, fps=7, seed=42)
    b = backend.generate(photo(), motion_bucket=127, fps=7, seed=42)
    c = backend.generate(photo(), motion_bucket=127, fps=7, seed=43)

    assert np.array_equal(as_array(a.frames), as_array(b.frames))
    assert not np.array_equal(as_array(a.frames), as_array(c.frames))


def test_without_a_seed_one_is_picked_and_reproduces_the_clip(backend: SvdBackend) -> None:
    first = backend.generate(photo(), motion_bucket=127, fps=7)
    again = backend.generate(photo(), motion_bucket=127, fps=7, seed=first.seed)

    assert 0 <= first.seed < 2**63
    assert np.array_equal(as_array(first.frames), as_array(again.frames))


def test_motion_and_fps_condition_the_clip(backend: SvdBackend) -> None:
    base = as_array(backend.generate(photo(), motion_bucket=127, fps=7, seed=3).frames)
    more_motion = as_array(backend.generate(photo(), motion_bucket=255, fps=7, seed=3).frames)
    other_fps = backend.generate(photo(), motion_bucket=127, fps=12, seed=3)

    assert not np.array_equal(base, more_motion)
    assert not np.array_equal(base, as_array(other_fps.frames))
    assert other_fps.fps == 12


@pytest.mark.parametrize(
    ("requested", "free", "expected"),
    [
        (Profile.AUTO, 24 * GIB, Profile.FAST),
        (Profile.AUTO, 18 * GIB, Profile.FAST),  # exactly the threshold is enough
        (Profile.AUTO, 18 * GIB - 1, Profile.LOW_VRAM),
        (Profile.AUTO, 11 * GIB, Profile.LOW_VRAM),
        (Profile.AUTO, None, Profile.FAST),  # CPU / MPS: nothing to measure
        (Profile.FAST, 2 * GIB, Profile.FAST),  # an explicit choice is kept
        (Profile.LOW_VRAM, 80 * GIB, Profile.LOW_VRAM),
        (Profile.LOW_VRAM, None, Profile.LOW_VRAM),
    ],
)
def test_choose_profile(requested: Profile, free: int | None, expected: Profile) -> None:
    assert choose_profile(requested, free, threshold_gib=18.0) is expected


@pytest.mark.parametrize(
    ("device", "profile", "free", "expected"),
    [
        ("cuda", Profile.FAST, 2 * GIB, True),  # every weight ends up on the GPU
        ("cuda", Profile.AUTO, 24 * GIB, True),  # auto resolves to fast
        ("cuda", Profile.AUTO, 11 * GIB, False),  # ... or to low-vram: encoder in CPU memory
        ("cuda", Profile.LOW_VRAM, 80 * GIB, False),
        ("cuda:1", Profile.FAST, 80 * GIB, False),  # diffusers maps a pipeline to "cuda" only
        ("mps", Profile.FAST, None, False),
        ("cpu", Profile.FAST, None, False),  # the CPU loads as it always did
    ],
)
def test_weights_are_read_straight_onto_the_gpu_only_for_the_fast_profile(
    device: str, profile: Profile, free: int | None, expected: bool
) -> None:
    assert reads_onto_device(device, profile, free, threshold_gib=18.0) is expected


def test_weights_read_straight_onto_the_device_make_the_same_clip(
    tiny_svd_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    usual = SvdBackend(tiny_settings(tiny_svd_dir))
    expected = usual.generate(photo(), motion_bucket=127, fps=7, seed=4, profile=Profile.FAST)
    usual_low = usual.generate(photo(), motion_bucket=127, fps=7, seed=4, profile=Profile.LOW_VRAM)
    # The CUDA decision, taken on the CPU: diffusers' device_map="cpu" is the same path.
    monkeypatch.setattr(svd, "reads_onto_device", lambda *args: True)
    straight = SvdBackend(tiny_settings(tiny_svd_dir))

    fast = straight.generate(photo(), motion_bucket=127, fps=7, seed=4, profile=Profile.FAST)
    low = straight.generate(photo(), motion_bucket=127, fps=7, seed=4, profile=Profile.LOW_VRAM)

    assert usual.pipeline.hf_device_map is None  # tests (and any CPU) load as before
    assert straight.pipeline.hf_device_map == "cpu"  # read through the device map
    assert np.array_equal(as_array(fast.frames), as_array(expected.frames))
    assert np.array_equal(as_array(low.frames), as_array(usual_low.frames))


@pytest.mark.parametrize(
    ("setting", "device", "expected"),
    [
        ("auto", "cuda", torch.float16),
        ("auto", "cuda:1", torch.float16),
        ("auto", "mps", torch.float16),
        ("auto", "cpu", torch.float32),
        ("bfloat16", "cuda", torch.bfloat16),
        ("float32", "cuda", torch.float32),
    ],
)
def test_resolve_dtype(setting: str, device: str, expected: torch.dtype) -> None:
    assert resolve_dtype(setting, device) is expected


def test_cpu_device_works_but_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="generator.engines.svd"):
        assert resolve_device("cpu") == "cpu"
        assert resolve_device("cuda:1") == "cuda:1"
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "CPU" in caplog.records[0].getMessage()


def _accelerators(monkeypatch: pytest.MonkeyPatch, *, cuda: bool, mps: bool) -> None:
    """Pretend this machine has (or lacks) CUDA and MPS, whatever it really has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"),
    [(True, False, "cuda"), (False, True, "mps"), (True, True, "cuda"), (False, False, "cpu")],
)
def test_auto_device_prefers_cuda_then_mps_then_cpu(
    monkeypatch: pytest.MonkeyPatch, cuda: bool, mps: bool, expected: str
) -> None:
    _accelerators(monkeypatch, cuda=cuda, mps=mps)
    assert resolve_device("auto") == expected


def _chunk_sizes(backend: SvdBackend) -> set[int | None]:
    unet = backend.pipeline.unet
    return {m._chunk_size for m in unet.modules() if hasattr(m, "set_chunk_feed_forward")}


def test_low_vram_splits_guidance_and_switching_back_restores_the_stock_unet(
    tiny_svd_dir: Path,
) -> None:
    # Decode chunk 2 in both profiles, so both must make the very same clip.
    backend = SvdBackend(tiny_settings(tiny_svd_dir, frames=4))
    backend.load()
    stock_unet = backend.pipeline.unet

    low = backend.generate(photo(), motion_bucket=127, fps=7, seed=9, profile=Profile.LOW_VRAM)
    split = isinstance(backend.pipeline.unet, svd_speed.CfgSplitUNet)
    fast = backend.generate(photo(), motion_bucket=127, fps=7, seed=9, profile=Profile.FAST)

    assert low.profile is Profile.LOW_VRAM and fast.profile is Profile.FAST
    assert len(low.frames) == 4
    assert split
    assert backend.pipeline.unet is stock_unet
    assert np.allclose(as_array(low.frames), as_array(fast.frames), atol=1)


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB)"),
    ],
)
def test_out_of_memory_becomes_ours_and_the_pipeline_recovers(
    backend: SvdBackend, error: Exception
) -> None:
    backend.load()

    def out_of_memory(*_args: object) -> None:
        raise error

    hook = backend.pipeline.unet.register_forward_pre_hook(out_of_memory)
    with pytest.raises(OutOfMemory) as caught:
        backend.generate(photo(), motion_bucket=127, fps=7, seed=0)
    hook.remove()
    result = backend.generate(photo(), motion_bucket=127, fps=7, seed=0)

    assert caught.value.user_text == OutOfMemory.user_text
    assert caught.value.__cause__ is error
    assert len(result.frames) == 2


def test_other_runtime_errors_are_not_called_out_of_memory(backend: SvdBackend) -> None:
    backend.load()

    def broken(*_args: object) -> None:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    backend.pipeline.unet.register_forward_pre_hook(broken)
    with pytest.raises(RuntimeError, match="shapes") as caught:
        backend.generate(photo(), motion_bucket=127, fps=7, seed=0)
    assert not isinstance(caught.value, OutOfMemory)


def _count_compiles(monkeypatch: pytest.MonkeyPatch, behaviour) -> list[object]:
    calls: list[object] = []

    def fake_compile(fn: object, *args: object, **kwargs: object) -> object:
        calls.append(fn)
        return behaviour(fn)

    monkeypatch.setattr(torch, "compile", fake_compile)
    return calls


def test_compile_is_cuda_only_so_cpu_runs_eager(
    tiny_svd_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_compiles(monkeypatch, lambda fn: fn)
    backend = SvdBackend(tiny_settings(tiny_svd_dir, compile=True))

    result = backend.generate(photo(), motion_bucket=127, fps=7, seed=0)

    assert calls == []
    assert len(result.frames) == 2


def test_compile_refused_runs_eager(
    tiny_svd_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(svd_speed, "compile_available", lambda device: True)

    def unsupported(fn: object) -> object:
        raise RuntimeError("Dynamo is not supported on this Python")

    calls = _count_compiles(monkeypatch, unsupported)
    eager = SvdBackend(tiny_settings(tiny_svd_dir, compile=False))
    backend = SvdBackend(tiny_settings(tiny_svd_dir, compile=True))

    with caplog.at_level(logging.WARNING, logger="generator.engines"):
        first = backend.generate(photo(), motion_bucket=127, fps=7, seed=4)
        job = svd_speed.compile_job(backend.pipeline)
        assert job is not None and job.wait(120)
        tried = len(calls)
        backend.generate(photo(), motion_bucket=127, fps=7, seed=4)
    expected = eager.generate(photo(), motion_bucket=127, fps=7, seed=4)

    assert tried and len(calls) == tried  # tried once per placed pipeline, not per clip
    assert any(
        "eager" in r.getMessage() and "Dynamo is not supported" in r.getMessage()
        for r in caplog.records
    )
    assert np.array_equal(as_array(first.frames), as_array(expected.frames))


def _denoising(events: list[Progress]) -> list[Progress]:
    return [e for e in events if e.stage == "denoising"]


def test_the_first_clip_runs_eager_and_says_so_while_the_compile_runs_behind_it(
    tiny_svd_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(svd_speed, "compile_available", lambda device: True)
    gate = threading.Event()

    def slow(fn):  # "compiled" = the same forward, after a compile as long as the test wants
        def compiled(*args, **kwargs):
            gate.wait(120)
            return fn(*args, **kwargs)

        return compiled

    calls = _count_compiles(monkeypatch, slow)
    backend = SvdBackend(tiny_settings(tiny_svd_dir, compile=True))
    expected = SvdBackend(tiny_settings(tiny_svd_dir, compile=False)).generate(
        photo(), motion_bucket=127, fps=7, seed=4
    )
    first_events: list[Progress] = []
    later_events: list[Progress] = []

    first = backend.generate(
        photo(), motion_bucket=127, fps=7, seed=4, on_progress=first_events.append
    )
    job = svd_speed.compile_job(backend.pipeline)
    assert job is not None and job.busy
    gate.set()
    assert job.wait(120) and not job.errors
    later = backend.generate(
        photo(), motion_bucket=127, fps=7, seed=4, on_progress=later_events.append
    )

    assert calls  # the side thread built the compiled twins
    assert all(e.warming for e in _denoising(first_events))  # the card says "slower"
    assert _denoising(first_events)[0].remaining_s is not None
    assert _denoising(first_events)[-1].remaining_s == 0
    assert not any(e.warming for e in _denoising(later_events))  # switched over
    assert job.swapped
    assert np.array_equal(as_array(first.frames), as_array(expected.frames))
    assert np.array_equal(as_array(later.frames), as_array(expected.frames))


def test_loading_starts_the_compile_so_a_clip_after_it_runs_compiled(
    tiny_svd_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(svd_speed, "compile_available", lambda device: True)
    monkeypatch.setattr(svd_speed, "LOAD_GRACE_S", 0.01)  # no clip comes: it starts alone
    calls = _count_compiles(monkeypatch, lambda fn: fn)
    backend = SvdBackend(tiny_settings(tiny_svd_dir, compile=True))
    backend.load()

    assert backend.prepare(32, 32)  # as the engine does at load: before any clip
    job = svd_speed.compile_job(backend.pipeline)
    assert job is not None and job.wait(120) and calls
    assert not backend.prepare(32, 32)  # placed already: the next load leaves it alone
    events: list[Progress] = []
    backend.generate(photo(), motion_bucket=127, fps=7, seed=4, on_progress=events.append)

    assert not any(e.warming for e in _denoising(events))  # the first clip ran compiled
    assert job.swapped


def _side_thread_unet_passes(backend: SvdBackend) -> list[bool]:
    """Whether a clip was being served at each UNet pass the compile's side thread makes."""
    pipe, main = backend.pipeline, threading.get_ident()
    beside_clip: list[bool] = []

    def on_unet(_module: torch.nn.Module, _args: object) -> None:
        if threading.get_ident() != main:
            job = svd_speed.compile_job(pipe)
            beside_clip.append(job is not None and job.in_clip)

    pipe.unet.register_forward_pre_hook(on_unet)
    return beside_clip


def test_the_clip_that_starts_the_compile_runs_alone(
    tiny_svd_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(svd_speed, "compile_available", lambda device: True)
    _count_compiles(monkeypatch, lambda fn: fn)
    asked_in_clip: list[bool] = []
    before_clip = svd_speed.SvdCompile.before_clip

    def watched(job: svd_speed.SvdCompile, shape: svd_speed.ClipShape, **kw: float) -> bool:
        asked_in_clip.append(job.in_clip)  # a compile started here waits for the clip's end
        return before_clip(job, shape, **kw)

    monkeypatch.setattr(svd_speed.SvdCompile, "before_clip", watched)
    backend = SvdBackend(tiny_settings(tiny_svd_dir, compile=True))
    backend.load()
    beside_clip = _side_thread_unet_passes(backend)
    events: list[Progress] = []

    backend.generate(photo(), motion_bucket=127, fps=7, seed=4, on_progress=events.append)
    job = svd_speed.compile_job(backend.pipeline)
    assert job is not None and job.wait(120) and not job.errors

    assert all(e.warming for e in _denoising(events))  # eager, and the card says so
    assert asked_in_clip == [True]
    assert beside_clip and not any(beside_clip)  # its passes, uncompiled parts too, came after


def test_a_clip_right_after_loading_runs_before_the_compile_load_started(
    tiny_svd_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(svd_speed, "compile_available", lambda device: True)
    monkeypatch.setattr(svd_speed, "LOAD_GRACE_S", 600.0)  # the clip surely comes within it
    _count_compiles(monkeypatch, lambda fn: fn)
    backend = SvdBackend(tiny_settings(tiny_svd_dir, compile=True))
    backend.load()
    assert backend.prepare(32, 32)  # as a restarted worker's warm-up does
    beside_clip = _side_thread_unet_passes(backend)
    events: list[Progress] = []

    backend.generate(photo(), motion_bucket=127, fps=7, seed=4, on_progress=events.append)
    job = svd_speed.compile_job(backend.pipeline)
    assert job is not None and job.wait(120) and not job.errors

    assert all(e.warming for e in _denoising(events))  # the queued job's clip: eager, alone
    assert beside_clip and not any(beside_clip)
    later: list[Progress] = []
    backend.generate(photo(), motion_bucket=127, fps=7, seed=4, on_progress=later.append)
    assert not any(e.warming for e in _denoising(later))


def test_a_compile_waits_while_a_clip_runs(
    tiny_svd_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(svd_speed, "compile_available", lambda device: True)
    compiled_during_clip: list[bool] = []
    serving = threading.Event()

    def watched(fn):
        def compiled(*args, **kwargs):
            compiled_during_clip.append(serving.is_set())
            return fn(*args, **kwargs)

        return compiled

    _count_compiles(monkeypatch, watched)
    backend = SvdBackend(tiny_settings(tiny_svd_dir, compile=True))

    def progress(event: Progress) -> None:
        serving.set()  # from the first step to the end of the clip
        if event.stage == "decoding":
            serving.clear()

    backend.generate(photo(), motion_bucket=127, fps=7, seed=4, on_progress=progress)
    job = svd_speed.compile_job(backend.pipeline)
    assert job is not None and job.wait(120) and not job.errors

    assert compiled_during_clip and not any(compiled_during_clip)


def test_compile_failing_on_first_use_runs_eager_with_the_same_seed(
    tiny_svd_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(svd_speed, "compile_available", lambda device: True)

    def fails_when_called(fn: object) -> object:
        def compiled(*args: object, **kwargs: object) -> object:
            raise torch._dynamo.exc.TorchRuntimeError("inductor: no C++ compiler")

        return compiled

    _count_compiles(monkeypatch, fails_when_called)
    backend = SvdBackend(tiny_settings(tiny_svd_dir, compile=True))

    result = backend.generate(photo(), motion_bucket=127, fps=7, seed=4)
    job = svd_speed.compile_job(backend.pipeline)
    assert job is not None and job.wait(120)
    again = backend.generate(photo(), motion_bucket=127, fps=7, seed=4)
    expected = SvdBackend(tiny_settings(tiny_svd_dir, compile=False)).generate(
        photo(), motion_bucket=127, fps=7, seed=4
    )

    assert np.array_equal(as_array(result.frames), as_array(expected.frames))
    assert np.array_equal(as_array(again.frames), as_array(expected.frames))
    assert "no C++ compiler" in next(iter(job.errors.values()))
    assert not job.busy and not job.swapped  # no second try: that shape stays eager


def test_fp8_without_an_fp8_gpu_warns_and_runs_fp16(
    tiny_svd_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = SvdBackend(tiny_settings(tiny_svd_dir, fp8=True))
    with caplog.at_level(logging.WARNING, logger="generator.engines.svd"):
        result = backend.generate(photo(), motion_bucket=127, fps=7, seed=1)
    assert len(result.frames) == 2
    assert any("fp8" in r.getMessage() for r in caplog.records)


def test_missing_model_folder_is_unavailable(tmp_path: Path) -> None:
    backend = SvdBackend(tiny_settings(tmp_path / "not-downloaded"))

    with pytest.raises(BackendUnavailable, match="does not exist") as caught:
        backend.generate(photo(), motion_bucket=127, fps=7)

    assert not backend.loaded
    assert caught.value.user_text != str(caught.value)


def test_asking_for_cuda_without_it_is_unavailable(
    tiny_svd_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _accelerators(monkeypatch, cuda=False, mps=False)
    backend = SvdBackend(tiny_settings(tiny_svd_dir, device="cuda"))

    with pytest.raises(BackendUnavailable, match="cuda"):
        backend.generate(photo(), motion_bucket=127, fps=7)

    assert not backend.loaded


def test_unknown_hub_model_is_unavailable_and_mentions_the_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    # No network here: the hub lookup fails; with network the repo does not exist. Same answer.
    backend = SvdBackend(tiny_settings(tmp_path, model="example-org/no-such-svd-model"))

    with pytest.raises(BackendUnavailable, match="HF_TOKEN"):
        backend.load()


@pytest.mark.parametrize(
    ("size", "kwargs", "message"),
    [
        ((30, 32), {}, "multiples of 8"),
        ((32, 32), {"frames": 1}, "frames"),
        ((32, 32), {"steps": 0}, "steps"),
        ((32, 32), {"motion_bucket": 256}, "motion"),
        ((32, 32), {"fps": 0}, "fps"),
    ],
)
def test_bad_arguments_fail_before_loading(
    backend: SvdBackend, size: tuple[int, int], kwargs: dict[str, int], message: str
) -> None:
    args = {"motion_bucket": 127, "fps": 7} | kwargs

    with pytest.raises(InvalidRequest, match=message):
        backend.generate(photo(*size), **args)

    assert not backend.loaded


def test_token_stays_out_of_repr(tiny_svd_settings: SvdSettings) -> None:
    backend = SvdBackend(tiny_svd_settings, hf_token="hf_secretvalue123")

    assert "hf_secretvalue123" not in repr(backend)


def _live_tensors() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))


def test_jobs_leave_no_tensors_behind(backend: SvdBackend) -> None:
    # Warm up (first call allocates the scheduler's tables), then later jobs must not pile up.
    backend.generate(photo(), motion_bucket=127, fps=7, seed=0)
    with pytest.raises(Cancelled):
        backend.generate(photo(), motion_bucket=127, fps=7, seed=0, should_cancel=lambda: True)
    baseline = _live_tensors()

    for seed in range(3):
        backend.generate(photo(), motion_bucket=127, fps=7, seed=seed)
        with pytest.raises(Cancelled):
            backend.generate(photo(), motion_bucket=127, fps=7, should_cancel=lambda: True)

    assert _live_tensors() <= baseline


def test_a_restart_runs_its_first_clip_compiled_from_the_graphs_saved_before(
    tiny_svd_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(svd_speed, "compile_available", lambda device: True)
    monkeypatch.setattr(svd_speed, "COMPILE_BACKEND", saveable_eager)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "unused"))  # restored after
    settings = tiny_settings(tiny_svd_dir, compile=True, cache_dir=str(tmp_path / "cache"))
    expected = SvdBackend(tiny_settings(tiny_svd_dir, compile=False)).generate(
        photo(), motion_bucket=127, fps=7, seed=4
    )
    before = SvdBackend(settings)
    before.generate(photo(), motion_bucket=127, fps=7, seed=4)  # eager; compiles behind
    job = svd_speed.compile_job(before.pipeline)
    assert job is not None and job.wait(120) and not job.errors and job.saved_files
    before.unload()

    calls = _count_compiles(monkeypatch, lambda fn: pytest.fail("compiled after the restart"))
    restarted = SvdBackend(settings)  # a new process loads the weights from the folder again
    restarted.load()
    assert not restarted.prepare(32, 32)  # as a restarted worker's warm-up: nothing to compile
    events: list[Progress] = []
    first = restarted.generate(photo(), motion_bucket=127, fps=7, seed=4, on_progress=events.append)

    assert calls == []
    assert not any(e.warming for e in _denoising(events))  # the card gives the usual estimate
    job = svd_speed.compile_job(restarted.pipeline)
    assert job is not None and job.swapped
    assert job.loaded_files > 0 and job.saved_files == 0  # every graph came from the files
    assert np.array_equal(as_array(first.frames), as_array(expected.frames))
