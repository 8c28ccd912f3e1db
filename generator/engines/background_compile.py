"""Compile a model's repeated blocks on a side thread while clips run eagerly, so nobody
waits for the compiler.

Shared by the engines whose denoiser is a stack of identical blocks (LTX-Video, Wan 2.2).
The API is small on purpose: :class:`BackgroundCompile` (``before_clip``, ``wait``,
``swap_out``), :func:`attach` and :func:`before_clip` for a pipeline, :func:`compile_available`.

Example::

    >>> attach(pipe, name="Wan")                        # once, when the weights are placed
    >>> before_clip(pipe, (704, 1280, 121))             # before each clip: compiled yet?
    False
    >>> video = pipe(...)                               # eager; compiling starts behind it
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch

log = logging.getLogger(__name__)

#: Python's thread switch interval while a compile runs behind clips (default 5 ms).
COMPILE_SWITCH_INTERVAL_S = 0.0005

#: A clip's shape as the compiled blocks see it, e.g. (height, width, frames).
ClipShape = tuple[int, ...]

_ATTR = "_background_compile"


def compile_available() -> bool:
    """Whether ``torch.compile`` can make CUDA kernels here (it needs Triton)."""
    try:
        from torch.utils._triton import has_triton
    except ImportError:
        return False
    return bool(has_triton())


def attach(
    pipe: Any, *, name: str, backend: str | Callable[..., Any] = "inductor"
) -> BackgroundCompile | None:
    """Give ``pipe`` a :class:`BackgroundCompile` of its transformer's repeated blocks, once.

    Returns the job (``None`` where inductor cannot run: no Triton)."""
    job = getattr(pipe, _ATTR, None)
    if job is None and (backend != "inductor" or compile_available()):
        job = BackgroundCompile(pipe.transformer, name=name, backend=backend)
        setattr(pipe, _ATTR, job)
    return job


def job_of(pipe: Any) -> BackgroundCompile | None:
    """The pipeline's compile job, if :func:`attach` gave it one."""
    return getattr(pipe, _ATTR, None)


def detach(pipe: Any) -> None:
    """Back to the eager blocks for good (a placement the compiled blocks do not suit)."""
    job = getattr(pipe, _ATTR, None)
    if job is not None:
        job.wait()
        job.swap_out()
        delattr(pipe, _ATTR)


def before_clip(pipe: Any, shape: ClipShape) -> bool:
    """Call before each clip: compiled blocks if ready for ``shape``, else eager (and a shape
    not compiled yet starts compiling behind this clip). Returns whether it runs compiled."""
    job = getattr(pipe, _ATTR, None)
    return False if job is None else job.before_clip(shape)


class BackgroundCompile:
    """Compile a model's repeated blocks on a side thread while clips run eagerly.

    Before each clip the engine calls :meth:`before_clip` with the clip's shape. A shape
    compiled already runs compiled; any other shape runs eagerly, and its first block's inputs
    are recorded during that clip so a side thread compiles that shape behind it. While a side
    thread compiles, every clip runs eagerly, so the thread and the clips never share a
    compiled graph. The compiled forward shares the blocks' weights (no extra memory), and a
    clip never switches kernels halfway through. Landscape and portrait clips of one duration
    have the same token count and share one graph.

    A clip served while the side thread compiles is slower (the compiler holds Python's lock
    part of the time), never blocked. A failed compile leaves that shape eager and says why in
    ``errors``. The side thread runs the first block's recorded inputs through every block, so
    the blocks must be resident (not streamed by offloading hooks) while it runs.

    Args:
        model: the transformer; its ``_repeated_blocks`` class names choose the blocks.
        name: for logs and the thread's name ("LTX", "Wan").
        backend: ``torch.compile``'s backend (tests pass a slow fake one).
        blocks: the blocks to compile, where the model names none.

    Example::

        >>> job = BackgroundCompile(pipe.transformer, name="LTX")
        >>> job.before_clip((512, 768, 121))   # False: eager, and compiling starts behind it
        >>> ...                                # later clips of that shape
        >>> job.before_clip((512, 768, 121))   # True once the side thread is done
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        name: str = "model",
        backend: str | Callable[..., Any] = "inductor",
        blocks: Iterable[torch.nn.Module] | None = None,
    ) -> None:
        self.name = name
        self._blocks = list(repeated_blocks(model) if blocks is None else blocks)
        # One compiled wrapper per block; they share one code cache, so a shape compiles once.
        self._compiled = [
            torch.compile(block._call_impl, backend=backend, dynamic=False)
            for block in self._blocks
        ]
        self._ready: set[ClipShape] = set()
        self._hook: Any = None
        self._thread: threading.Thread | None = None
        self.errors: dict[ClipShape, str] = {}
        self.compile_s: dict[ClipShape, float] = {}
        self.swapped = False

    @property
    def busy(self) -> bool:
        """Whether a side thread is compiling (or waits for a clip to record inputs from)."""
        return self._hook is not None or (self._thread is not None and self._thread.is_alive())

    def ready(self, shape: ClipShape) -> bool:
        return shape in self._ready

    def before_clip(self, shape: ClipShape) -> bool:
        """Pick eager or compiled blocks for the next clip; return whether it runs compiled."""
        if not self._blocks:
            return False
        if not self.busy and shape in self._ready:
            self._swap(compiled=True)
            return True
        self._swap(compiled=False)
        if not self.busy and shape not in self._ready and shape not in self.errors:
            self._hook = self._blocks[0].register_forward_pre_hook(
                lambda _m, args, kwargs: self._capture(shape, args, kwargs), with_kwargs=True
            )
        return False

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the side thread has finished (tests and benchmarks only)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.busy

    def swap_out(self) -> None:
        """Go back to the eager blocks (and stop waiting for a clip to record inputs from)."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._swap(compiled=False)

    def _swap(self, *, compiled: bool) -> None:
        for block, fn in zip(self._blocks, self._compiled, strict=True):
            block._compiled_call_impl = fn if compiled else None  # what nn.Module.compile sets
        self.swapped = compiled

    def _capture(self, shape: ClipShape, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self._hook is not None:
            self._hook.remove()
        inputs = (_detached(args), _detached(kwargs))
        # Compile under the clip's own grad/inference mode, so the graph's guards match it.
        inference = torch.is_inference_mode_enabled()
        self._thread = threading.Thread(
            target=self._compile,
            args=(shape, inference, *inputs),
            name=f"{self.name.lower()}-compile",
            daemon=True,
        )
        self._thread.start()
        self._hook = None

    def _compile(
        self, shape: ClipShape, inference: bool, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        start = time.perf_counter()
        mode = torch.inference_mode() if inference else torch.no_grad()
        # The compiler is Python holding the interpreter lock; a clip served meanwhile waits
        # for that lock between kernel launches. Shorter turns make those waits shorter.
        interval = sys.getswitchinterval()
        sys.setswitchinterval(COMPILE_SWITCH_INTERVAL_S)
        try:
            with mode:
                # The first call compiles the shared graph; the others only check guards.
                for fn in self._compiled:
                    fn(*args, **kwargs)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
        except Exception as exc:  # any compile failure: this shape stays eager, say why
            self.errors[shape] = f"{type(exc).__name__}: {exc}"
            log.warning(
                "compiling %s blocks for %s failed; eager (%s)",
                self.name,
                shape,
                self.errors[shape],
            )
            return
        finally:
            sys.setswitchinterval(interval)
        self.compile_s[shape] = time.perf_counter() - start
        self._ready.add(shape)
        log.info("%s blocks compiled for %s in %.1f s", self.name, shape, self.compile_s[shape])


def repeated_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules whose class the model lists in ``_repeated_blocks`` (diffusers' marker for
    regional compilation), in order."""
    names = set(getattr(model, "_repeated_blocks", ()) or ())
    return [m for m in model.modules() if type(m).__name__ in names]


def _detached(value: Any) -> Any:
    """A copy of a block's inputs that outlives the clip that made them."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, tuple | list):
        return type(value)(_detached(v) for v in value)
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value
