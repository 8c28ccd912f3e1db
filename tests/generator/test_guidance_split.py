"""Guidance split across two processes (gloo on CPU): the same frames as one process."""

from __future__ import annotations

import multiprocessing
import socket
from pathlib import Path

import numpy as np
import torch

from tests.support.images import photo_bytes

STEPS, FRAMES, SIZE = 2, 2, 32


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_ranks(target, model_dir: Path, photo: Path, tmp_path: Path) -> tuple[np.ndarray, int]:
    """Run ``target`` as ranks 0 and 1 in two spawned processes: rank 0's frames and how many
    calls rank 1 served."""
    context = multiprocessing.get_context("spawn")
    port = _free_port()
    outs = [tmp_path / "frames.npy", tmp_path / "served.txt"]
    procs = [
        context.Process(target=target, args=(r, port, str(model_dir), str(photo), str(outs[r])))
        for r in (0, 1)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    return np.load(outs[0]), int(outs[1].read_text())


def _animate(model_dir: Path, photo: Path) -> np.ndarray:
    """The tiny SVD pipeline's frames for ``photo``, seeded, as the engine would ask."""
    from diffusers import StableVideoDiffusionPipeline
    from PIL import Image

    pipe = StableVideoDiffusionPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    image = Image.open(photo).convert("RGB")
    out = pipe(
        image,
        height=SIZE,
        width=SIZE,
        num_frames=FRAMES,
        num_inference_steps=STEPS,
        decode_chunk_size=FRAMES,
        generator=torch.Generator().manual_seed(7),
        output_type="np",
    )
    return np.asarray(out.frames[0])


def _rank(rank: int, port: int, model_dir: str, photo: str, out: str) -> None:
    """One of the two processes: rank 0 runs the pipeline, rank 1 serves its second halves."""
    import torch.distributed as dist
    from diffusers import UNetSpatioTemporalConditionModel

    from generator.engines.guidance_split import serve_half, split_guidance, stop_peer

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        if rank == 1:
            unet = UNetSpatioTemporalConditionModel.from_pretrained(Path(model_dir) / "unet")
            served = serve_half(unet)
            Path(out).write_text(str(served))
            return
        from diffusers import StableVideoDiffusionPipeline

        original = StableVideoDiffusionPipeline.from_pretrained

        def split_pipeline(*args: object, **kwargs: object) -> StableVideoDiffusionPipeline:
            pipe = original(*args, **kwargs)
            split_guidance(pipe.unet)
            return pipe

        StableVideoDiffusionPipeline.from_pretrained = split_pipeline  # type: ignore[method-assign]
        frames = _animate(Path(model_dir), Path(photo))
        stop_peer()
        np.save(out, frames)
    finally:
        dist.destroy_process_group()


def test_two_processes_sharing_the_guidance_batch_make_the_frames_one_process_makes(
    tiny_svd_dir: Path, tmp_path: Path
) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(photo_bytes((48, 40), fmt="PNG"))
    torch.set_num_threads(1)
    alone = _animate(tiny_svd_dir, photo)

    split, served = _two_ranks(_rank, tiny_svd_dir, photo, tmp_path)
    assert served == STEPS  # the peer ran half of every step's batch
    assert split.shape == alone.shape == (FRAMES, SIZE, SIZE, 3)
    error = np.linalg.norm(split - alone) / np.linalg.norm(alone)
    assert error < 1e-5, f"relative error {error:.2e}"


def _animate_wan(model_dir: Path, photo: Path, pair: bool = False) -> np.ndarray:
    """The tiny Wan pipeline's frames, seeded, with the prompt encoded beforehand as the
    engine does (so the negative prompt's embeddings are one tensor both ranks know)."""
    from diffusers import WanImageToVideoPipeline
    from PIL import Image

    from generator.engines.guidance_split import pair_guidance

    pipe = WanImageToVideoPipeline.from_pretrained(
        model_dir, image_encoder=None, image_processor=None, expand_timesteps=True
    )
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        embeds, negative = pipe.encode_prompt(
            prompt="waves roll in", negative_prompt="blur", max_sequence_length=16
        )
    if pair:
        pair_guidance(pipe.transformer, negative)
    out = pipe(
        image=Image.open(photo).convert("RGB"),
        prompt_embeds=embeds,
        negative_prompt_embeds=negative,
        height=SIZE,
        width=SIZE,
        num_frames=5,
        num_inference_steps=STEPS,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(7),
        output_type="np",
    )
    return np.asarray(out.frames[0])


def _wan_rank(rank: int, port: int, model_dir: str, photo: str, out: str) -> None:
    import torch.distributed as dist
    from diffusers import WanTransformer3DModel

    from generator.engines.guidance_split import serve_half, stop_peer

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        if rank == 1:
            transformer = WanTransformer3DModel.from_pretrained(model_dir, subfolder="transformer")
            Path(out).write_text(str(serve_half(transformer)))
            return
        frames = _animate_wan(Path(model_dir), Path(photo), pair=True)
        stop_peer()
        np.save(out, frames)
    finally:
        dist.destroy_process_group()


def test_wan_conditional_and_unconditional_passes_on_two_processes_make_the_same_frames(
    tiny_wan_dir: Path, tmp_path: Path
) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(photo_bytes((48, 40), fmt="PNG"))
    torch.set_num_threads(1)
    alone = _animate_wan(tiny_wan_dir, photo)

    paired, served = _two_ranks(_wan_rank, tiny_wan_dir, photo, tmp_path)
    assert served == STEPS  # the peer made every unconditional pass
    assert paired.shape == alone.shape
    error = np.linalg.norm(paired - alone) / np.linalg.norm(alone)
    assert error < 1e-5, f"relative error {error:.2e}"
