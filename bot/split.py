"""Whether one clip runs on two GPUs of this process: the rule, as a pure function.

Classifier-free guidance runs the denoiser twice a step; an engine that ``splits_guidance``
(SVD, Wan 2.2) can run the second pass on another GPU at the same time
(``generator.engines.pairing``). A GPU lent that way makes no clip of its own, so it is only
lent when nobody is waiting for it: the rule never makes a queued job wait longer.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from generator.engines import EngineSpec
from generator.options import Backend


class SplitMode(enum.StrEnum):
    """``[gpu] split``: whether a clip may borrow an idle GPU."""

    AUTO = "auto"  # split when :func:`choose_peer` finds an idle GPU and an empty queue
    OFF = "off"  # one clip per GPU, always


@dataclass(frozen=True)
class ConsumerState:
    """What the rule needs to know of another consumer of this process right now."""

    running: bool  # it runs a job, or serves as another clip's peer
    paused: bool  # /pause: it claims nothing
    engine_ready: bool  # its GPU process is alive and said Ready
    can_pair: bool = True  # its runner is a GPU process (an inline one cannot be a peer)

    @property
    def idle(self) -> bool:
        return not self.running and not self.paused and self.engine_ready and self.can_pair


def choose_peer(
    mode: SplitMode,
    *,
    engine_splits: bool,
    others: Sequence[ConsumerState],
    waiting: int,
) -> int | None:
    """The index in ``others`` of the consumer to borrow for this clip, or ``None``: one clip
    on one GPU, as without the rule.

    A clip is split when ``mode`` allows it, its engine shares guidance passes
    (``engine_splits``), no other job is ``waiting`` in the queue (the idle GPU would serve
    it sooner than a split clip gains), and another consumer is idle.

    >>> idle = ConsumerState(running=False, paused=False, engine_ready=True)
    >>> choose_peer(SplitMode.AUTO, engine_splits=True, others=[idle], waiting=0)
    0
    >>> choose_peer(SplitMode.AUTO, engine_splits=True, others=[idle], waiting=1) is None
    True
    """
    if mode is SplitMode.OFF or not engine_splits or waiting > 0:
        return None
    return next((n for n, other in enumerate(others) if other.idle), None)


def split_engine(
    requested: Backend,
    *,
    veo_configured: bool,
    auto_local: Backend | None,
    specs: Mapping[Backend, EngineSpec],
) -> Backend | None:
    """The local engine a job for ``requested`` runs on, when that engine shares guidance
    passes; ``None`` when it does not, or when Veo may make the clip (``auto`` with Veo).

    >>> from generator.config import GeneratorSettings
    >>> from generator.engines.catalog import engine_specs
    >>> specs = engine_specs(GeneratorSettings())
    >>> split_engine(Backend.SVD, veo_configured=True, auto_local=None, specs=specs)
    <Backend.SVD: 'svd'>
    >>> split_engine(Backend.LTX, veo_configured=False, auto_local=None, specs=specs) is None
    True
    """
    if requested.local:
        engine: Backend | None = requested
    elif requested is Backend.AUTO and not veo_configured:
        engine = auto_local
    else:
        engine = None
    if engine is None or not specs[engine].splits_guidance:
        return None
    return engine
