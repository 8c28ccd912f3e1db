"""Classifier-free guidance on two processes: each runs one half of the denoiser's batch.

Guidance runs the denoiser twice a step, with and without the condition. With two GPUs idle,
the two passes can run at the same time: the process that runs the pipeline (rank 0) computes
one and a peer (rank 1), holding its own copy of the same denoiser, the other, and the pipeline
gets back exactly the results it asked for. The function is the same as on one GPU; only the
batch each kernel sees changes, which can move the last bits of floating-point results.

- SVD batches both passes into one call of batch 2 (``torch.cat([latents] * 2)``):
  ``split_guidance`` keeps the first half and hands the second to the peer.
- Wan makes two calls a step, the conditional one first, differing only in
  ``encoder_hidden_states`` (prompt, then negative prompt): ``pair_guidance`` gives the peer
  the negative prompt's embeddings once, sends it each conditional call's other inputs, and
  answers the unconditional call with the peer's result, computed meanwhile.

Rank 0::

    split_guidance(pipe.unet)        # every later pipe.unet(...) call is shared with rank 1
    frames = pipe(image, ...).frames
    stop_peer()

Rank 1::

    serve_half(unet)                 # returns when rank 0 calls stop_peer()

Wan, rank 0: ``pair_guidance(pipe.transformer, negative_prompt_embeds)`` and pass the same
``negative_prompt_embeds`` object to the pipeline; rank 1: ``serve_half(transformer)``.

Both processes join one ``torch.distributed`` group of two first (NCCL between GPUs, gloo on
CPU). Tensors travel by ``broadcast`` from their owner; the call's layout (which arguments
are tensors, their shapes and dtypes) travels once per call as a small object.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch.utils import _pytree as pytree  # torch's own tree helpers (torch.compile uses them)

#: Rank of the process that runs the pipeline; the peer is rank 1.
LEADER, PEER = 0, 1


@dataclasses.dataclass(frozen=True)
class _Slot:
    """Where a tensor goes in a call: its shape and dtype (the bytes follow separately)."""

    shape: tuple[int, ...]
    dtype: torch.dtype


def _split(value: Any, batch: int) -> tuple[Any, Any, list[torch.Tensor]]:
    """(what rank 0 keeps, the layout for rank 1, rank 1's tensors in layout order).

    Tensors of ``batch`` rows are halved; others (and all, when ``batch`` is -1) go whole.
    """
    half = batch // 2

    def halved(v: torch.Tensor) -> bool:
        return batch > 0 and v.ndim > 0 and v.shape[0] == batch

    kept = pytree.tree_map_only(torch.Tensor, lambda v: v[:half] if halved(v) else v, value)
    theirs = pytree.tree_map_only(
        torch.Tensor, lambda v: (v[half:] if halved(v) else v).contiguous(), value
    )
    layout = pytree.tree_map_only(torch.Tensor, lambda v: _Slot(tuple(v.shape), v.dtype), theirs)
    return kept, layout, [v for v in pytree.tree_leaves(theirs) if isinstance(v, torch.Tensor)]


def _fill(layout: Any, tensors: list[torch.Tensor]) -> Any:
    """Rebuild rank 1's arguments from the layout, taking tensors in order."""
    queue = iter(tensors)
    return pytree.tree_map_only(_Slot, lambda _slot: next(queue), layout)


def _first_tensor(output: Any) -> torch.Tensor:
    """The batch output of a denoiser call: ``(sample,)`` with ``return_dict=False``, or
    ``.sample`` of its output class."""
    if isinstance(output, tuple | list):
        return output[0]
    return output.sample


def _with_first(output: Any, sample: torch.Tensor) -> Any:
    if isinstance(output, tuple | list):
        return type(output)([sample, *output[1:]])
    return dataclasses.replace(output, sample=sample)


def _leader_call(
    forward: Callable[..., Any], device: torch.device, *args: Any, **kwargs: Any
) -> Any:
    batch = next(a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)).shape[0]
    if batch % 2:  # no guidance batch to split (guidance 1, or a warm-up call)
        dist.broadcast_object_list([("alone", None)], src=LEADER, device=device)
        return forward(*args, **kwargs)
    (mine_args, mine_kwargs), layout, sent = _split((args, kwargs), batch)
    dist.broadcast_object_list([("call", layout)], src=LEADER, device=device)
    for tensor in sent:
        dist.broadcast(tensor, src=LEADER)
    output = forward(*mine_args, **mine_kwargs)
    mine = _first_tensor(output)
    theirs = _receiver(mine)
    dist.broadcast(theirs, src=PEER)  # rank 1's half, computed meanwhile
    return _with_first(output, torch.cat([mine, theirs]))


def split_guidance(module: torch.nn.Module) -> Callable[[], None]:
    """Share every later call of ``module`` with the peer; returns a function that undoes it.

    Calls whose batch is odd (no guidance batch) run here alone; the peer is told to skip.
    """
    original = module.forward
    device = object_device(module)
    module.forward = functools.partial(_leader_call, original, device)  # type: ignore[method-assign]

    def undo() -> None:
        module.forward = original  # type: ignore[method-assign]

    return undo


def pair_guidance(module: torch.nn.Module, negative: torch.Tensor) -> Callable[[], None]:
    """Share the two calls of each guided step with the peer (Wan's way); returns the undo.

    ``negative`` must be the very tensor the pipeline passes as the unconditional call's
    ``encoder_hidden_states``: that is how the two calls of a step are told apart.
    """
    original = module.forward
    device = object_device(module)
    dist.broadcast_object_list(
        [("negative", _Slot(tuple(negative.shape), negative.dtype))], src=LEADER, device=device
    )
    dist.broadcast(negative.contiguous(), src=LEADER)
    pending: list[torch.Tensor] = []

    def forward(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("encoder_hidden_states") is negative:
            if not pending:
                raise RuntimeError("an unconditional call without its conditional one")
            theirs = pending.pop()
            dist.broadcast(theirs, src=PEER)  # computed while this process ran its pass
            return (theirs,) if not kwargs.get("return_dict", True) else _sample_output(theirs)
        others = {k: v for k, v in kwargs.items() if k != "encoder_hidden_states"}
        _, layout, sent = _split((args, others), batch=-1)  # nothing to split: all travel
        dist.broadcast_object_list([("pair", layout)], src=LEADER, device=device)
        for tensor in sent:
            dist.broadcast(tensor, src=LEADER)
        output = original(*args, **kwargs)
        pending.append(_receiver(_first_tensor(output)))
        return output

    module.forward = forward  # type: ignore[method-assign]

    def undo() -> None:
        module.forward = original  # type: ignore[method-assign]

    return undo


def _sample_output(sample: torch.Tensor) -> Any:
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    return Transformer2DModelOutput(sample=sample)


def stop_peer(device: torch.device | None = None) -> None:
    """Tell the peer that no more calls come (``serve_half`` returns)."""
    dist.broadcast_object_list([("stop", None)], src=LEADER, device=device)


def serve_half(module: torch.nn.Module) -> int:
    """Rank 1: run the second half of each of rank 0's calls until it stops; returns the
    number of calls served."""
    device = object_device(module)
    served = 0
    negative: torch.Tensor | None = None
    while True:
        message: list[Any] = [None]
        dist.broadcast_object_list(message, src=LEADER, device=device)
        kind, layout = message[0]
        if kind == "stop":
            return served
        if kind == "alone":
            continue
        tensors = []
        for slot in _slots(layout):
            tensor = torch.empty(slot.shape, dtype=slot.dtype, device=_param_device(module))
            dist.broadcast(tensor, src=LEADER)
            tensors.append(tensor)
        if kind == "negative":
            negative = tensors[0]
            continue
        args, kwargs = _fill(layout, tensors)
        if kind == "pair":
            kwargs = {**kwargs, "encoder_hidden_states": negative}
        with torch.inference_mode():
            output = module(*args, **kwargs)
        dist.broadcast(_first_tensor(output).contiguous(), src=PEER)
        served += 1


def _receiver(like: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor shaped like ``like`` (``empty_like`` keeps a permuted layout, and
    ``broadcast`` fills memory in order: Wan's output is one such)."""
    return torch.empty(like.shape, dtype=like.dtype, device=like.device)


def _slots(layout: Any) -> list[_Slot]:
    return [leaf for leaf in pytree.tree_leaves(layout) if isinstance(leaf, _Slot)]


def _param_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def object_device(module: torch.nn.Module) -> torch.device | None:
    """Where ``broadcast_object_list`` stages its bytes: the GPU under NCCL, else CPU."""
    device = _param_device(module)
    return device if device.type == "cuda" else None
