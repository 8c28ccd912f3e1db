"""Two processes making one clip: joining and leaving the process group that
``generator.engines.guidance_split`` talks over, for whichever engine shares its guidance.

The leader (rank 0) runs the pipeline; the peer (rank 1) holds its own copy of the denoiser
and runs half of each guided step (``guidance_split``). Both join one ``torch.distributed``
group of two over ``tcp://127.0.0.1:port`` (NCCL between CUDA devices, gloo otherwise) and
leave it when the clip ends. A peer that never comes, or dies half way, must not cost the
clip: the leader raises :class:`PeerLost` and the caller (``generator.router``) makes the clip
alone. Nothing here imports torch until a group is joined, so the bot can build a
:class:`Pairing` without it.

Leader::

    with leading(pairing, pipe.unet, split_guidance):
        frames = pipe(...)            # PeerLost if the peer cannot be reached

Peer::

    with joined(pairing, unet):
        serve_half(unet)
"""

from __future__ import annotations

import contextlib
import datetime
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from generator.errors import TransientError
from generator.options import Backend

log = logging.getLogger(__name__)

#: Rank of the process that runs the pipeline, and of its peer (``guidance_split``'s).
LEADER, PEER = 0, 1
#: How long either side waits for the other: to join (the peer loads its model first), and
#: for each exchange after (the peer waits through the leader's VAE decode for its stop).
#: Long enough for a cold Wan load; a peer that is gone costs the leader at most this.
DEFAULT_TIMEOUT_S = 300.0


class PeerLost(TransientError):
    """The peer of a shared clip could not be joined, or stopped answering half way."""

    user_text = "The second GPU stopped answering; the clip is made on one GPU instead."


@dataclass(frozen=True)
class Pairing:
    """One side of a clip shared by two processes.

    Args:
        rank: ``LEADER`` (runs the pipeline) or ``PEER`` (serves half of each step).
        port: the loopback port the leader listens on; both sides get the same one.
        backend: the engine both sides load (the peer loads it for the same request).
        timeout_s: how long either side waits for the other before giving up.
    """

    rank: int
    port: int
    backend: Backend
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.rank not in (LEADER, PEER):
            raise ValueError(f"rank must be {LEADER} or {PEER}, not {self.rank}")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be 1-65535, not {self.port}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, not {self.timeout_s}")

    @property
    def leads(self) -> bool:
        return self.rank == LEADER

    def as_peer(self) -> Pairing:
        """The other side of this pairing (same port, engine and timeout)."""
        return Pairing(PEER, self.port, self.backend, self.timeout_s)


def _device_kind(module: Any) -> str:
    return next(module.parameters()).device.type


@contextlib.contextmanager
def joined(pairing: Pairing, module: Any) -> Iterator[None]:
    """Be in the pairing's process group (NCCL when ``module`` is on CUDA, else gloo) for
    the ``with`` block, and leave it after, whatever happens.

    Raises:
        PeerLost: the other side did not join within ``pairing.timeout_s``.
    """
    import torch.distributed as dist
    from torch.distributed import distributed_c10d

    backend = "nccl" if _device_kind(module) == "cuda" else "gloo"
    if not dist.is_initialized():
        # Both sides name the group's keys in the rendezvous store after a process-wide
        # counter that init_process_group raises and only destroy_process_group resets: a
        # join that failed earlier (a peer that never came) leaves it one ahead, and every
        # later join of this process would then wait for keys its peer never writes.
        distributed_c10d._world.group_count = 0
    try:
        dist.init_process_group(
            backend,
            init_method=f"tcp://127.0.0.1:{pairing.port}",
            rank=pairing.rank,
            world_size=2,
            timeout=datetime.timedelta(seconds=pairing.timeout_s),
        )
    except Exception as exc:  # a store timeout, a refused port: no peer to share with
        raise PeerLost(f"could not join the pairing on port {pairing.port}: {exc}") from exc
    try:
        yield
    finally:
        with contextlib.suppress(Exception):  # a broken group still frees what it can
            dist.destroy_process_group()


@contextlib.contextmanager
def leading(
    pairing: Pairing, module: Any, share: Callable[[Any], Callable[[], None]]
) -> Iterator[None]:
    """Rank 0: join, share ``module``'s calls with the peer through ``share`` (e.g.
    ``guidance_split.split_guidance``, returning its undo) for the ``with`` block, then stop
    the peer and leave, whatever happens.

    Raises:
        PeerLost: the peer did not join, or a call of ``module`` failed for anything but
            running out of memory (the peer died, or the link broke); nothing of the clip is
            kept, so the caller can make it alone.
    """
    from generator.engines.device import is_oom
    from generator.engines.guidance_split import object_device, stop_peer

    if not pairing.leads:
        raise ValueError("leading needs the leader's pairing (rank 0)")
    with joined(pairing, module):
        undo = share(module)
        shared = module.forward
        broken: list[BaseException] = []

        def forward(*args: Any, **kwargs: Any) -> Any:
            try:
                return shared(*args, **kwargs)
            except Exception as exc:
                if is_oom(exc):
                    raise
                broken.append(exc)
                raise PeerLost(f"the shared denoiser call failed: {exc}") from exc

        module.forward = forward
        try:
            yield
        finally:
            undo()  # the module's own forward again, for later clips alone
            if not broken:  # a broken link has nobody to tell
                try:
                    stop_peer(object_device(module))
                except Exception as exc:
                    log.warning("could not stop the guidance peer: %s", exc)
