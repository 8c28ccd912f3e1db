"""One clip's guidance split across two GPUs against the same clip on one GPU (issue 14).

Two processes, one per GPU, join one NCCL group (gloo with ``--tiny`` on CPU). Rank 0 builds
the pipeline with seeded random weights (full-size architectures, as ``bench/svd_bench.py``
and ``bench/wan_bench.py`` build them) and times a clip alone, then the same clip with the
guidance passes shared with rank 1 (``generator.engines.guidance_split``), and reports the
ratio and the relative error of the final latents. Rank 1 builds the same denoiser on its
GPU and serves. NVLink multicast stays off (``NCCL_NVLS_ENABLE=0``).

Example (a two-GPU machine)::

    NCCL_NVLS_ENABLE=0 python -m bench.split_bench --model svd --out $OUT/split-svd.json
    NCCL_NVLS_ENABLE=0 python -m bench.split_bench --model wan --steps 6 --out $OUT/split-wan.json
    python -m bench.split_bench --tiny --model svd      # CPU smoke run, gloo
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _build(args: argparse.Namespace, device: str, folder: Path) -> Any:
    """The pipeline on ``device`` (rank 0), built the way the model's own benchmark does."""
    if args.model == "svd":
        from bench import svd_bench

        if args.tiny:
            return svd_bench.build_tiny(folder)
        return svd_bench.build_full(device, torch.float16)
    from bench import wan_bench

    return wan_bench.build_pipe(device, tiny=args.tiny)


def _denoiser(pipe: Any) -> torch.nn.Module:
    return pipe.unet if hasattr(pipe, "unet") else pipe.transformer


def _clip(pipe: Any, args: argparse.Namespace, device: str, pair: Any = None) -> dict[str, Any]:
    """One clip; ``pair`` shares the guidance with rank 1. Times and the final latents."""
    from PIL import Image

    from generator.engines import guidance_split

    image = Image.new("RGB", (args.width, args.height), (200, 120, 40))
    final: list[torch.Tensor] = []

    def on_step(_pipe: Any, i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if i == args.steps - 1:
            final.append(kwargs["latents"].float().cpu())
        return kwargs

    common: dict[str, Any] = dict(
        height=args.height,
        width=args.width,
        num_frames=args.frames,
        num_inference_steps=args.steps,
        generator=torch.Generator(device).manual_seed(1),
        output_type="latent",
        callback_on_step_end=on_step,
    )
    undo = None
    if args.model == "svd":
        kwargs = dict(common, image=image, decode_chunk_size=8)
        if pair:
            undo = guidance_split.split_guidance(pipe.unet)
    else:
        with torch.no_grad():
            embeds, negative = pipe.encode_prompt(
                prompt="waves roll in", negative_prompt="blur", device=device
            )
        kwargs = dict(
            common,
            image=image,
            prompt_embeds=embeds,
            negative_prompt_embeds=negative,
            guidance_scale=5.0,
        )
        if pair:
            undo = guidance_split.pair_guidance(pipe.transformer, negative)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        pipe(**kwargs)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if undo:
        undo()
    return dict(seconds=seconds, latents=final[0])


def _rank(rank: int, port: int, args: argparse.Namespace, folder: str, out: str) -> None:
    import torch.distributed as dist

    from generator.engines import guidance_split

    device = "cpu" if args.tiny else f"cuda:{rank}"
    if not args.tiny:
        torch.cuda.set_device(rank)
    # Built before joining the group: under torch.distributed, save_pretrained writes weights
    # on rank 0 only, and the tiny models are saved and loaded like real ones.
    pipe = _build(args, device, Path(folder) / f"rank{rank}")
    dist.init_process_group(
        "gloo" if args.tiny else "nccl",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=2,
    )
    try:
        if rank == 1:
            denoiser = _denoiser(pipe)
            for _ in range(args.repeat):
                guidance_split.serve_half(denoiser)
            return
        alone = [_clip(pipe, args, device) for _ in range(args.repeat)]
        split = []
        for _ in range(args.repeat):
            split.append(_clip(pipe, args, device, pair=True))
            guidance_split.stop_peer(torch.device(device) if not args.tiny else None)
        a = min(r["seconds"] for r in alone)
        s = min(r["seconds"] for r in split)
        ref, got = alone[-1]["latents"], split[-1]["latents"]
        result = dict(
            model=args.model,
            tiny=args.tiny,
            steps=args.steps,
            one_gpu_s=a,
            two_gpus_s=s,
            ratio=s / a,
            latents_rel_err=float((got - ref).norm() / ref.norm()),
            runs=dict(alone=[r["seconds"] for r in alone], split=[r["seconds"] for r in split]),
            torch=torch.__version__,
            date=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        )
        print(json.dumps(result, indent=2), flush=True)
        if out:
            Path(out).write_text(json.dumps(result, indent=2))
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("svd", "wan"), default="svd")
    parser.add_argument("--tiny", action="store_true", help="tiny models on CPU with gloo")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeat", type=int, default=2, help="clips each way (first warms up)")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    big = (1024, 576, 25) if args.model == "svd" else (1280, 704, 121)
    args.width, args.height, args.frames = (
        (32, 32, 2 if args.model == "svd" else 5) if args.tiny else big
    )
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # multicast can take a shared host's GPUs
    context = multiprocessing.get_context("spawn")
    port = _port()
    with tempfile.TemporaryDirectory() as folder:
        procs = [
            context.Process(target=_rank, args=(r, port, args, folder, args.out)) for r in (0, 1)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    return max(p.exitcode or 0 for p in procs)


if __name__ == "__main__":
    sys.exit(main())
