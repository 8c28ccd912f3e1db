"""Compile a model's repeated blocks on a side thread while clips run eagerly, then switch over.

Shared by the engines whose first compiled clip would otherwise wait minutes for the compiler
(``ltx_speed`` records a clip's block inputs, ``svd_speed`` makes its own). Nothing here knows
a model: an engine hands :class:`BackgroundCompile` the modules to compile and, per clip
shape, a function that calls them once with that shape's inputs.

Example::

    >>> job = BackgroundCompile(blocks)
    >>> job.use((576, 1024))                 # False: eager; nothing compiled yet
    >>> job.start([((576, 1024), exercise)]) # exercise() calls the blocks on the side thread
    >>> ...                                  # clips keep running eagerly meanwhile
    >>> job.use((576, 1024))                 # True once the side thread is done
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Any

import torch

log = logging.getLogger(__name__)

#: Python's thread switch interval while a compile runs behind clips (default 5 ms).
COMPILE_SWITCH_INTERVAL_S = 0.0005


def compile_available() -> bool:
    """Whether ``torch.compile`` can make CUDA kernels here (it needs Triton)."""
    try:
        from torch.utils._triton import has_triton
    except ImportError:
        return False
    return bool(has_triton())


class BackgroundCompile:
    """Compiled twins of ``modules``, built on a side thread; clips use them once ready.

    Before each clip the engine calls :meth:`use` with the clip's shape: a shape compiled
    already runs compiled; any other shape runs eagerly. :meth:`start` compiles shapes on a
    side thread by calling ``work()`` for each; while it runs, a module called from that
    thread goes through its compiled twin and the same module called from a clip runs eagerly.
    While a side thread compiles, every clip runs eagerly, so the thread and the clips never
    share a compiled graph (the compiler's caches are not made for two threads). An engine
    that wraps its clips in :meth:`serving` gets them served alone: the side thread begins
    each shape only between clips, and a compile started inside ``serving()`` (by the clip
    that needs it) or just before a clip (``grace_s``, at load) waits for that clip. The compiled
    forwards share the modules' weights (no extra memory), and a clip never switches kernels
    halfway through. A failed compile leaves that shape eager and says why in ``errors``.

    Args:
        modules: the modules to compile (e.g. a transformer's repeated blocks).
        backend: ``torch.compile``'s backend (tests pass a cheap one); each module's
            ``_call_impl`` is compiled (hooks included, like ``nn.Module.compile``).
        name: for logs and the thread's name.
        dynamo_config: ``torch._dynamo.config`` values for the side thread (recompile limits
            for many block shapes). Set there: that config is per thread in recent torch.
    """

    def __init__(
        self,
        modules: Iterable[torch.nn.Module],
        *,
        backend: str | Callable[..., Any] = "inductor",
        name: str = "compile",
        dynamo_config: dict[str, Any] | None = None,
    ) -> None:
        self._modules = list(modules)
        self._dynamo_config = dict(dynamo_config or {})
        self._compiled = self._make_twins(backend)
        self._dispatch = [
            self._dispatcher(i, m, fn)
            for i, (m, fn) in enumerate(zip(self._modules, self._compiled, strict=True))
        ]
        self._ready: set[Hashable] = set()
        self._thread: threading.Thread | None = None
        self._worker: int | None = None  # the side thread's ident while it compiles
        self._idle = threading.Event()  # cleared while an engine serves a clip (serving())
        self._idle.set()
        self._clip_began = threading.Event()  # set when a clip enters serving() after start()
        self.name = name
        self.errors: dict[Hashable, str] = {}
        self.compile_s: dict[Hashable, float] = {}
        self.swapped = False

    @property
    def modules(self) -> list[torch.nn.Module]:
        return list(self._modules)

    @property
    def busy(self) -> bool:
        """Whether a side thread is compiling."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def in_clip(self) -> bool:
        """Whether an engine is serving a clip now (inside :meth:`serving`)."""
        return not self._idle.is_set()

    def ready(self, shape: Hashable) -> bool:
        return shape in self._ready

    def known(self, shape: Hashable) -> bool:
        """Compiled already, or failed (and so stays eager)."""
        return shape in self._ready or shape in self.errors

    def use(self, shape: Hashable) -> bool:
        """Pick eager or compiled modules for the next clip; return whether it runs compiled."""
        if not self._modules:
            return False
        compiled = not self.busy and shape in self._ready
        self._swap(compiled=compiled)
        return compiled

    def start(
        self,
        work: list[tuple[Hashable, Callable[[], None]]],
        *,
        inference: bool,
        grace_s: float = 0.0,
    ) -> bool:
        """Compile each ``(shape, work)`` in turn on a side thread; ``False`` if one runs already.

        ``work()`` calls the modules with its shape's inputs; ``inference`` runs it under
        ``torch.inference_mode`` (as the clips do, so the graphs' guards match them). Each
        shape begins only while no clip is served, so a compile started inside
        :meth:`serving` begins when that clip ends. ``grace_s``: wait up to this long for a
        clip before beginning (an engine starting its compile at load, when a queued job may
        come at once); with no clip by then it begins alone, so nobody has to end the wait.
        """
        if self.busy or not self._modules or not work:
            return False
        if self.in_clip:
            self._clip_began.set()  # that clip is the one the grace waits for
        else:
            self._clip_began.clear()
        # From now on a module called from the side thread runs its compiled twin; called
        # from anywhere else, it runs eagerly.
        self._install(self._dispatch)
        self.swapped = False
        self._thread = threading.Thread(
            target=self._run, args=(work, inference, grace_s), name=self.name, daemon=True
        )
        self._thread.start()
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the side thread has finished (tests and benchmarks only)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.busy

    def swap_out(self) -> None:
        """Go back to the eager modules."""
        self._swap(compiled=False)

    def call_compiled(self, index: int, *args: Any, **kwargs: Any) -> Any:
        """Call the compiled twin of ``modules[index]`` directly (on the side thread)."""
        self.pause()
        return self._compiled[index](*args, **kwargs)

    def pause(self) -> None:
        """On the side thread: wait here while a clip is served (between two parts of work)."""
        self._idle.wait()

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        """Around a clip: the side thread pauses before its next module until the clip ends.

        The compiler is Python: beside a running clip it competes for the interpreter lock
        with the clip's kernel launches, and both slow down (SVD on an H200: eager clips 17.4
        -> 21-38 s, and the compile did not finish in 290 s; bench/RESULTS.md). Paused, it
        compiles in the time between clips; a clip waits at most for the one module being
        compiled when it started, and not at all for a compile it starts itself.
        """
        self._idle.clear()
        self._clip_began.set()
        try:
            yield
        finally:
            self._idle.set()

    # --- inside -------------------------------------------------------------------------------

    def _make_twins(self, backend: str | Callable[..., Any]) -> list[Any]:
        """The compiled twin of each module (a subclass may make them another way)."""
        return [torch.compile(m._call_impl, backend=backend, dynamic=False) for m in self._modules]

    def _dispatcher(
        self, index: int, module: torch.nn.Module, fn: Callable[..., Any]
    ) -> Callable[..., Any]:
        def dispatch(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() == self._worker:
                self.pause()
                return fn(*args, **kwargs)
            return module._call_impl(*args, **kwargs)

        return dispatch

    def _swap(self, *, compiled: bool) -> None:
        # What nn.Module.compile sets: Module.__call__ calls _compiled_call_impl when present.
        self._install(self._compiled if compiled else self._dispatch if self.busy else None)
        self.swapped = compiled

    def _install(self, table: list[Callable[..., Any]] | None) -> None:
        for i, module in enumerate(self._modules):
            module._compiled_call_impl = table[i] if table is not None else None

    def _run(
        self, work: list[tuple[Hashable, Callable[[], None]]], inference: bool, grace_s: float
    ) -> None:
        self._worker = threading.get_ident()
        if grace_s > 0:
            # Blocked on an event, the thread holds no interpreter lock: a clip that comes
            # meanwhile starts alone, and the pause in _compile_one holds it until it ends.
            self._clip_began.wait(grace_s)
        # The compiler is Python holding the interpreter lock; a clip served meanwhile waits
        # for that lock between kernel launches. Shorter turns make those waits shorter.
        interval = sys.getswitchinterval()
        sys.setswitchinterval(COMPILE_SWITCH_INTERVAL_S)
        import torch._dynamo.config as dynamo_config

        known = {k: v for k, v in self._dynamo_config.items() if hasattr(dynamo_config, k)}
        try:
            with dynamo_config.patch(**known):
                for shape, fn in work:
                    self._compile_one(shape, fn, inference)
        finally:
            sys.setswitchinterval(interval)
            self._worker = None

    def _compile_one(self, shape: Hashable, fn: Callable[[], None], inference: bool) -> None:
        if self.known(shape):
            return
        # Not only the compiled modules wait for a clip: the work's uncompiled parts (a UNet's
        # embeddings and convolutions, its random inputs) would run beside it too.
        self.pause()
        start = time.perf_counter()
        mode = torch.inference_mode() if inference else torch.no_grad()
        try:
            self._build(shape, fn, mode)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
        except Exception as exc:  # any compile failure: this shape stays eager, say why
            self.errors[shape] = f"{type(exc).__name__}: {exc}"
            log.warning("%s for %s failed; eager (%s)", self.name, shape, self.errors[shape])
            return
        self.compile_s[shape] = time.perf_counter() - start
        self._ready.add(shape)
        log.info("%s: %s compiled in %.1f s", self.name, shape, self.compile_s[shape])

    def _build(self, shape: Hashable, fn: Callable[[], None], mode: Any) -> None:
        """Compile ``shape``: here, by calling the modules through their twins in ``fn``."""
        del shape
        with mode:
            fn()
