"""One clip on two processes through the engine interface (gloo on CPU): the leader's
``generate(..., pairing=...)`` and the peer's ``serve_peer`` make the frames the engine makes
alone, and a peer that never comes costs the clip nothing."""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from generator.config import GeneratorSettings, ImageSettings
from generator.engines.catalog import build_engine
from generator.engines.pairing import LEADER, PEER, Pairing, PeerLost
from generator.errors import InvalidRequest
from generator.options import Backend, Request
from generator.router import Generator
from tests.support.tiny_svd import tiny_settings
from tests.support.tiny_wan import tiny_wan_settings

JOIN_S = 120  # a spawned process imports torch and diffusers first: seconds on a busy CPU


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _settings(backend: Backend, model_dir: Path) -> GeneratorSettings:
    small = ImageSettings(landscape_size=(64, 32), portrait_size=(32, 64))
    if backend is Backend.SVD:
        return GeneratorSettings(svd=tiny_settings(model_dir), image=small)
    return GeneratorSettings(wan=tiny_wan_settings(model_dir), image=small)


def _photo(backend: Backend) -> PIL.Image.Image:
    """A colour gradient the size the engine takes (SVD 32x32, Wan 64x32)."""
    width, height = (32, 32) if backend is Backend.SVD else (64, 32)
    x = np.linspace(0, 255, width, dtype=np.uint8)
    y = np.linspace(0, 255, height, dtype=np.uint8)
    pixels = np.stack(np.broadcast_arrays(x[None, :], y[:, None], 255 - x[None, :]), axis=-1)
    return PIL.Image.fromarray(np.ascontiguousarray(pixels), "RGB")


def _request(backend: Backend) -> Request:
    return Request(image=Path("photo.png"), backend=backend, seed=7)


def _frames(frames: list) -> np.ndarray:
    return np.stack([np.asarray(f, dtype=np.float64) for f in frames])


def _side(backend: str, rank: int, port: int, model_dir: str, out: str) -> None:
    """One of the two processes: the engine leads the clip (rank 0) or serves as its peer."""
    torch.set_num_threads(1)
    chosen = Backend(backend)
    engine = build_engine(chosen, _settings(chosen, Path(model_dir)))
    pairing = Pairing(rank, port, chosen, timeout_s=JOIN_S)
    if rank == PEER:
        Path(out).write_text(str(engine.serve_peer(_request(chosen), pairing)))
        return
    made = engine.generate(_photo(chosen), _request(chosen), pairing=pairing)
    np.save(out, _frames(made.frames))


def _both_sides(backend: Backend, model_dir: Path, tmp_path: Path) -> tuple[np.ndarray, int]:
    """The leader's frames and the calls its peer served, from two spawned processes."""
    context = multiprocessing.get_context("spawn")
    port = _free_port()
    outs = [tmp_path / "frames.npy", tmp_path / "served.txt"]
    procs = [
        context.Process(target=_side, args=(backend.value, r, port, str(model_dir), str(outs[r])))
        for r in (LEADER, PEER)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=2 * JOIN_S)
    for p in procs:
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0]
    return np.load(outs[0]), int(outs[1].read_text())


@pytest.mark.parametrize("backend", [Backend.SVD, Backend.WAN])
def test_a_clip_shared_with_a_peer_engine_has_the_frames_the_engine_makes_alone(
    backend: Backend, tiny_svd_dir: Path, tiny_wan_dir: Path, tmp_path: Path
) -> None:
    model_dir = tiny_svd_dir if backend is Backend.SVD else tiny_wan_dir
    torch.set_num_threads(1)
    engine = build_engine(backend, _settings(backend, model_dir))
    assert engine.supports_split
    alone = _frames(engine.generate(_photo(backend), _request(backend)).frames)

    shared, served = _both_sides(backend, model_dir, tmp_path)

    assert served == 2  # the peer ran its half of both steps
    assert shared.shape == alone.shape
    assert np.abs(shared - alone).max() <= 1  # uint8 frames: at most a rounding step apart


def test_a_leader_whose_peer_never_comes_gives_up_after_the_timeout(
    tiny_svd_dir: Path,
) -> None:
    engine = build_engine(Backend.SVD, _settings(Backend.SVD, tiny_svd_dir))
    pairing = Pairing(LEADER, _free_port(), Backend.SVD, timeout_s=1.0)

    with pytest.raises(PeerLost):
        engine.generate(_photo(Backend.SVD), _request(Backend.SVD), pairing=pairing)
    # ...and the engine still makes the clip alone afterwards.
    made = engine.generate(_photo(Backend.SVD), _request(Backend.SVD))
    assert len(made.frames) == 2


def test_the_router_makes_the_clip_alone_when_the_peer_never_comes(
    tiny_svd_dir: Path, tmp_path: Path
) -> None:
    photo = tmp_path / "photo.png"
    _photo(Backend.SVD).save(photo)
    generator = Generator(_settings(Backend.SVD, tiny_svd_dir), total_vram=lambda: None)
    pairing = Pairing(LEADER, _free_port(), Backend.SVD, timeout_s=1.0)
    request = Request(image=photo, backend=Backend.SVD, seed=7)

    clip = asyncio.run(generator.generate(request, tmp_path / "clip.mp4", pairing=pairing))

    assert clip.backend is Backend.SVD
    assert clip.video.path.stat().st_size > 0


def test_an_engine_without_guidance_refuses_to_share_a_clip(tiny_svd_dir: Path) -> None:
    settings = GeneratorSettings(svd=tiny_settings(tiny_svd_dir, max_guidance_scale=1.0))
    engine = build_engine(Backend.SVD, settings)
    pairing = Pairing(LEADER, _free_port(), Backend.SVD)

    assert not engine.supports_split
    assert not build_engine(Backend.LTX, GeneratorSettings()).supports_split
    with pytest.raises(InvalidRequest):
        engine.generate(_photo(Backend.SVD), _request(Backend.SVD), pairing=pairing)
    with pytest.raises(InvalidRequest):
        engine.serve_peer(_request(Backend.SVD), pairing.as_peer())


def _peer_dying_at_the_first_call(port: int) -> None:
    """A peer that joins, hears the leader's first shared call, and dies."""
    import datetime
    import os

    import torch.distributed as dist

    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=PEER,
        world_size=2,
        timeout=datetime.timedelta(seconds=JOIN_S),
    )
    dist.broadcast_object_list([None], src=LEADER)
    os._exit(3)


def test_a_peer_dying_half_way_costs_the_clip_nothing_the_router_makes_it_alone(
    tiny_svd_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", logger="generator.router")
    photo = tmp_path / "photo.png"
    _photo(Backend.SVD).save(photo)
    generator = Generator(_settings(Backend.SVD, tiny_svd_dir), total_vram=lambda: None)
    # A join that failed earlier in this process (a peer that never came) must not spoil
    # this one: torch names the group's rendezvous keys after a process-wide counter.
    never = Pairing(LEADER, _free_port(), Backend.SVD, timeout_s=1.0)
    with pytest.raises(PeerLost):
        build_engine(Backend.SVD, _settings(Backend.SVD, tiny_svd_dir)).generate(
            _photo(Backend.SVD), _request(Backend.SVD), pairing=never
        )
    port = _free_port()
    peer = multiprocessing.get_context("spawn").Process(
        target=_peer_dying_at_the_first_call, args=(port,)
    )
    peer.start()
    try:
        pairing = Pairing(LEADER, port, Backend.SVD, timeout_s=JOIN_S)
        request = Request(image=photo, backend=Backend.SVD, seed=7)
        clip = asyncio.run(generator.generate(request, tmp_path / "clip.mp4", pairing=pairing))
    finally:
        peer.join(timeout=JOIN_S)
        if peer.is_alive():
            peer.kill()

    assert peer.exitcode == 3  # it joined and took the first call before it died
    assert clip.backend is Backend.SVD
    assert clip.video.path.stat().st_size > 0
    assert "making the clip on one GPU" in caplog.text
