"""Compiled block graphs kept on disk, so a restarted process runs its first clip compiled.

``torch.compile`` keeps its kernels in inductor's cache, but a new process still re-traces
every block with dynamo before it can use them: for SVD about 25-40 s after a restart, during
which clips run eagerly (bench/RESULTS.md). Here each block's ``forward`` is compiled ahead of
time per *call signature* with ``torch.compile(...).aot_compile`` (torch >= 2.10) and the whole
compiled function, dynamo's output included, is saved to a file; a restart loads the files in a
few seconds and skips tracing.

A graph is keyed by what it was compiled for, and only that: the block's fingerprint (its
classes, non-tensor settings and parameter shapes), the call's signature (each tensor's shape,
strides, dtype, device; each plain value) and a salt (torch, the GPU, the numeric flags, and the
source files of every class in the block). Blocks with equal keys share one graph (regional
compilation), a call whose key has no graph runs eagerly, and a change to any of these (a new
diffusers, a changed profile, another GPU) simply misses and compiles again. Dynamo's own guards
are not kept: the key is the guard. The files are pickles and inductor code, which run when
loaded, as inductor's own cache does: the folder must be writable by the service alone (the
data folder is). Files are written under a temporary name, then renamed, readable by their owner.

Example::

    >>> job = PrecompiledBlocks(blocks, folder=Path("data/inductor-cache/graphs"))
    >>> job.preload(("fast", 576, 1024))    # False on a first start: nothing saved yet
    >>> job.start([(shape, exercise)], inference=True)   # record, compile, save on a side thread
    >>> ...                                 # a later process: job.preload(shape) -> True
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from generator.engines.compiling import BackgroundCompile
from generator.files import write_atomic

log = logging.getLogger(__name__)

#: Part of every key: bump it when what a file holds, or how keys are made, changes.
FORMAT = 1
#: Graph files not read or written for this long are deleted when a new one is saved (old
#: torch or diffusers versions leave theirs behind).
KEEP_UNUSED_S = 30 * 24 * 3600.0

#: (block fingerprint, call signature): what one compiled graph serves.
GraphKey = tuple[str, str]


def default_folder() -> Path:
    """``graphs/`` inside inductor's cache folder (``$TORCHINDUCTOR_CACHE_DIR`` or torch's)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return Path(cache_dir()) / "graphs"


@dataclass(frozen=True)
class TensorSpec:
    """A tensor argument as recorded: enough to make an input of the same layout later."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device

    @classmethod
    def of(cls, value: Any) -> Any:
        """``value`` (tensors in tuples, lists, dicts) with each tensor replaced by its spec:
        recording a call keeps no activations alive."""
        if isinstance(value, torch.Tensor):
            return cls(tuple(value.shape), value.stride(), value.dtype, value.device)
        if isinstance(value, dict):
            return {k: cls.of(v) for k, v in value.items()}
        return type(value)(cls.of(v) for v in value) if isinstance(value, (tuple, list)) else value

    @classmethod
    def made(cls, value: Any) -> Any:
        """The reverse of :meth:`of`: an uninitialised tensor of each spec's layout."""
        if isinstance(value, cls):
            return torch.empty_strided(
                value.shape, value.stride, dtype=value.dtype, device=value.device
            )
        if isinstance(value, dict):
            return {k: cls.made(v) for k, v in value.items()}
        return (
            type(value)(cls.made(v) for v in value) if isinstance(value, (tuple, list)) else value
        )


def _plain(value: Any) -> str | None:
    """A value's part of a call signature; ``None`` when it cannot be keyed exactly."""
    if isinstance(value, torch.Tensor):
        # The device index too: inductor's code names the device it was compiled for.
        return f"T{tuple(value.shape)}{tuple(value.stride())}{value.dtype}{value.device}"
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        parts = [_plain(v) for v in value]
        return None if None in parts else f"({','.join(p for p in parts if p is not None)})"
    return None


def call_signature(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """What a compiled graph assumes about one call, or ``None`` for an argument it cannot
    key (such a call runs eagerly)."""
    parts = [_plain(a) for a in args] + [
        None if (p := _plain(v)) is None else f"{k}={p}" for k, v in sorted(kwargs.items())
    ]
    if None in parts:
        return None
    return ";".join(p for p in parts if p is not None)


def _setting(value: Any) -> str:
    if isinstance(value, (bool, int, float, str, type(None))):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return f"({','.join(_setting(v) for v in value)})"
    if isinstance(value, torch.dtype):
        return str(value)
    if isinstance(value, torch.Tensor):  # a plain tensor attribute: a graph may bake it in
        return f"T{tuple(value.shape)}{value.dtype}{value.device}{_small_content(value)}"
    # An object a forward may call (an attention processor, an activation function): which
    # one it is, not its contents; its class's source is in the salt.
    kind = value if inspect.isroutine(value) or isinstance(value, type) else type(value)
    return f"<{getattr(kind, '__module__', '')}.{getattr(kind, '__qualname__', repr(kind))}>"


def _small_content(t: torch.Tensor) -> str:
    if t.numel() > 4096 or t.is_meta:
        return ""
    raw = t.detach().reshape(-1).cpu().contiguous().view(torch.uint8).numpy().tobytes()
    return hashlib.sha256(raw).hexdigest()[:16]


def module_fingerprint(module: torch.nn.Module) -> str:
    """What a graph compiled for ``module.forward`` bakes in besides its inputs: every
    submodule's class and plain settings, every parameter's and buffer's shape and dtype."""
    lines = []
    for name, sub in module.named_modules():
        lines.append(f"{name}:{type(sub).__module__}.{type(sub).__qualname__}")
        for key, value in sorted(vars(sub).items()):
            if not key.startswith("_"):  # parameters, buffers, submodules and hooks follow
                lines.append(f" {key}={_setting(value)}")
        for kind, tensors in (("p", sub._parameters), ("b", sub._buffers)):
            for key, t in tensors.items():
                spec = "None" if t is None else f"{tuple(t.shape)}{t.dtype}{t.device}"
                lines.append(f" {kind}.{key}={spec}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:32]


def code_salt(modules: Iterable[torch.nn.Module]) -> str:
    """What no fingerprint shows but a graph depends on: torch, the GPU, the numeric flags
    and the source of every class the blocks (and their attention processors) run."""
    classes: set[type] = set()
    modules = list(modules)
    for module in modules:
        for sub in module.modules():
            classes.add(type(sub))
            processor = getattr(sub, "processor", None)
            if processor is not None:
                classes.add(type(processor))
    files = set()
    for cls in classes:
        with contextlib.suppress(TypeError, OSError):
            files.add(inspect.getsourcefile(cls) or "")
    h = hashlib.sha256()
    gpu = ""
    device = next((p.device for m in modules for p in m.parameters()), None)
    if device is not None and device.type == "cuda":
        gpu = f"{torch.cuda.get_device_name(device)} {torch.cuda.get_device_capability(device)}"
    libraries = " ".join(
        f"{name}={getattr(sys.modules[name], '__version__', '?')}"
        for name in ("diffusers", "transformers", "triton")
        if name in sys.modules
    )
    import torch._inductor.config as inductor_config

    flags = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        inductor_config.max_autotune,
        inductor_config.max_autotune_gemm,
    )
    h.update(f"{FORMAT} {torch.__version__} {torch.version.cuda} {gpu} {flags}".encode())
    h.update(libraries.encode())
    for path in sorted(f for f in files if f):
        with contextlib.suppress(OSError):
            h.update(path.encode() + Path(path).read_bytes())
    return h.hexdigest()[:32]


def _no_guards(entries: list[Any]) -> list[bool]:
    return [False] * len(entries)  # the key is the guard (see the module docstring)


def compile_forward(
    module: torch.nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    backend: str | Callable[..., Any],
) -> tuple[Callable[..., Any], bool]:
    """Compile ``type(module).forward`` for this call; return it (called as
    ``fn(module, *args, **kwargs)``) and whether it can be saved to a file.

    With ``aot_compile`` (torch >= 2.10) the graph is built here, whole, and can be saved;
    without it (or when it refuses, e.g. on a graph break) this is ordinary ``torch.compile``,
    run once here on the example inputs so the compile happens now and not in a clip.
    """
    forward = type(module).forward
    if ahead_of_time_available():
        # torch 2.10-2.12 offer aot_compile only with this flag on when the wrapper is made.
        with torch._dynamo.config.patch(enable_aot_compile=True):
            guardless = torch.compile(
                forward,
                backend=backend,
                dynamic=False,
                fullgraph=True,
                options={"guard_filter_fn": _no_guards},
            )
        try:
            fn = guardless.aot_compile(((module, *args), kwargs))
            fn.disable_guard_check()
            return fn, True
        except Exception as exc:  # any refusal: the ordinary compile below
            log.warning(
                "aot_compile of %s refused (%s: %s); compiling it in memory, so a restart "
                "compiles it again",
                type(module).__name__,
                type(exc).__name__,
                exc,
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
    # Never call the guardless wrapper: its graph would be cached on the class's forward with
    # no guards, and every block of that class would run it whatever its shapes.
    compiled = torch.compile(forward, backend=backend, dynamic=False)
    compiled(module, *args, **kwargs)
    return compiled, False


def ahead_of_time_available() -> bool:
    """Whether this torch can compile a function ahead of time and save it (>= 2.10)."""
    return hasattr(torch.compiler, "load_compiled_function") and hasattr(
        torch._dynamo.config, "enable_aot_compile"
    )


def save_graph(fn: Any, path: Path) -> None:
    """Write an ``aot_compile``d function to ``path`` (whole or not at all, owner-readable)."""
    write_atomic(path, type(fn).serialize(fn).serialized_data)


def load_graph(path: Path) -> Callable[..., Any]:
    with path.open("rb") as f:
        fn = torch.compiler.load_compiled_function(f)
    fn.disable_guard_check()
    with contextlib.suppress(OSError):
        os.utime(path)  # in use: not old
    return fn


class PrecompiledBlocks(BackgroundCompile):
    """Blocks compiled per call signature on a side thread, saved, and loaded after a restart.

    Like :class:`BackgroundCompile`, clips run eagerly until their shape is ready and the side
    thread pauses while clips run (``serving``); unlike it, the side thread first *records*
    the blocks' calls in one eager pass of the work, then compiles each new call signature
    with :func:`compile_forward` and saves it under ``folder``, and :meth:`preload` makes a
    shape ready from those files with no compiling. A ready shape stays usable while the side
    thread works on another: the saved graphs are plain functions, not dynamo's caches.

    Args:
        modules: the blocks, in a fixed order (e.g. ``unet.modules()`` filtered by class).
        folder: where graph files and each shape's index go (``None``: :func:`default_folder`).
        backend: ``torch.compile``'s backend (tests pass one that saves eager graphs).
        name: for logs and the thread's name.
        dynamo_config: as for :class:`BackgroundCompile` (the in-memory fallback recompiles).
    """

    def __init__(
        self,
        modules: Iterable[torch.nn.Module],
        *,
        folder: Path | None = None,
        backend: str | Callable[..., Any] = "inductor",
        name: str = "compile",
        dynamo_config: dict[str, Any] | None = None,
    ) -> None:
        self._folder = folder
        self._backend = backend
        self._graphs: dict[GraphKey, Callable[..., Any]] = {}
        self._fingerprints: list[str] | None = None
        self._salt: str | None = None
        self._recorded: dict[GraphKey, tuple[int, tuple[Any, ...], dict[str, Any]]] = {}
        self._shape_keys: dict[Hashable, list[GraphKey]] = {}
        self._compiled_clip = False
        self.loaded_files = 0
        self.saved_files = 0
        super().__init__(modules, backend=backend, name=name, dynamo_config=dynamo_config)
        self._compiled = self._dispatch  # a clip and the side thread share the dispatchers

    # --- what BackgroundCompile calls ------------------------------------------------------

    def _make_twins(self, backend: str | Callable[..., Any]) -> list[Any]:
        return [None] * len(self._modules)  # no twins: one dispatcher per module (below)

    def _dispatcher(
        self, index: int, module: torch.nn.Module, fn: Callable[..., Any] | None
    ) -> Callable[..., Any]:
        def dispatch(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() == self._worker:  # the side thread's recording pass
                self.pause()
                self._record(index, args, kwargs)
            elif self._compiled_clip:
                graph = self._graphs.get(
                    (self.fingerprints[index], call_signature(args, kwargs) or "")
                )
                if graph is not None:
                    return graph(module, *args, **kwargs)
            return module._call_impl(*args, **kwargs)

        return dispatch

    def use(self, shape: Hashable) -> bool:
        if not self._modules:
            return False
        self._compiled_clip = shape in self._ready
        self._install(self._compiled)  # one dispatcher for both: it reads _compiled_clip
        self.swapped = self._compiled_clip
        return self._compiled_clip

    def swap_out(self) -> None:
        self._compiled_clip = False
        self.swapped = False
        self._install(None)

    def _build(self, shape: Hashable, fn: Callable[[], None], mode: Any) -> None:
        if self.preload(shape):
            return
        self._recorded.clear()
        self._shape_keys[shape] = []
        self._install(self._compiled)
        failed: list[Exception] = []
        with mode:
            fn()  # eager, with each block call's signature recorded by dispatch()
            for key, (index, args, kwargs) in list(self._recorded.items()):
                self._shape_keys[shape].append(key)
                if key in self._graphs:
                    continue
                self.pause()
                try:
                    self._graphs[key] = self._load_or_compile(key, index, args, kwargs)
                except Exception as exc:  # that block stays eager; the others still compile
                    failed.append(exc)
                    log.warning(
                        "%s: %s with %s stays eager",
                        self.name,
                        type(self._modules[index]).__name__,
                        key[1],
                        exc_info=True,
                    )
        self._recorded.clear()
        if failed and len(failed) == len(self._shape_keys[shape]):
            raise failed[0]  # nothing compiled: the shape stays eager, with the reason
        self._write_index(shape)

    # --- keys, files -----------------------------------------------------------------------

    @property
    def fingerprints(self) -> list[str]:
        """Each module's fingerprint, taken once the profile has finished changing them."""
        if self._fingerprints is None:
            self._fingerprints = [module_fingerprint(m) for m in self._modules]
        return self._fingerprints

    @property
    def folder(self) -> Path:
        return self._folder if self._folder is not None else default_folder()

    def _salt_now(self) -> str:
        if self._salt is None:
            backend = self._backend
            name = backend if isinstance(backend, str) else getattr(backend, "__qualname__", "")
            self._salt = f"{code_salt(self._modules)}-{name}"  # another backend, other graphs
        return self._salt

    def _file(self, key: GraphKey) -> Path:
        digest = hashlib.sha256(f"{self._salt_now()}|{key[0]}|{key[1]}".encode()).hexdigest()
        return self.folder / f"{digest[:40]}.graph"

    def _index(self, shape: Hashable) -> Path:
        digest = hashlib.sha256(f"{self._salt_now()}|{shape!r}".encode()).hexdigest()
        return self.folder / f"{digest[:40]}.json"

    def _record(self, index: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        signature = call_signature(args, kwargs)
        if signature is None:
            return
        key = (self.fingerprints[index], signature)
        if key not in self._recorded:
            self._recorded[key] = (index, *TensorSpec.of((args, kwargs)))

    def _load_or_compile(
        self, key: GraphKey, index: int, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Callable[..., Any]:
        path = self._file(key)
        if path.exists():
            try:
                graph = load_graph(path)
                self.loaded_files += 1
                return graph
            except Exception as exc:  # a bad file: compile and replace it
                log.warning(
                    "%s: unreadable graph %s (%s); compiling it again", self.name, path, exc
                )

        module = self._modules[index]
        args, kwargs = TensorSpec.made((args, kwargs))
        graph, saveable = compile_forward(module, args, kwargs, backend=self._backend)
        if saveable:
            # Its first call loads the kernels (on an H200 the first compiled SVD clip took
            # 35 s instead of 12 s): make it here, between clips, not in the next user's clip.
            graph(module, *args, **kwargs)
            try:
                save_graph(graph, path)
                self.saved_files += 1
                self._prune()
            except Exception as exc:  # unsaved: the next start compiles again
                log.warning("%s: could not save a graph (%s)", self.name, exc)
        return graph

    def _write_index(self, shape: Hashable) -> None:
        # Graphs that live only in memory (compiled without aot_compile) or failed are left
        # out: after a restart those blocks run eagerly, like a failed one here.
        keys = [k for k in self._shape_keys.get(shape, []) if self._file(k).exists()]
        if not keys:
            return
        index = {
            "shape": repr(shape),
            "modules": self.fingerprints,
            "graphs": [list(k) for k in keys],
        }
        with contextlib.suppress(OSError):
            write_atomic(self._index(shape), json.dumps(index).encode())

    def _prune(self) -> None:
        now = time.time()
        # Graphs nobody loaded for a month; half-written files a crash left behind.
        for pattern, keep_s in (
            ("*.graph", KEEP_UNUSED_S),
            ("*.json", KEEP_UNUSED_S),
            (".*.part", 3600.0),
        ):
            for old in self.folder.glob(pattern):
                with contextlib.suppress(OSError):
                    if old.stat().st_mtime < now - keep_s:
                        old.unlink()

    def preload(self, shape: Hashable) -> bool:
        """Make ``shape`` ready from saved graphs, with no compiling; ``False`` when any of
        its graphs is missing or unreadable, or they were saved for blocks that differ from
        these in any way (then it compiles, loading the graphs that still fit)."""
        if shape in self._ready:
            return True
        if not self._modules:
            return False
        try:
            index = json.loads(self._index(shape).read_text())
            keys = [(str(fp), str(sig)) for fp, sig in index["graphs"]]
            saved_for = index["modules"]
        except (OSError, ValueError, KeyError, TypeError):
            return False
        if not keys or saved_for != self.fingerprints:
            return False  # saved for other blocks (a changed model or profile)
        started = time.perf_counter()
        graphs: dict[GraphKey, Callable[..., Any]] = {}
        for key in keys:
            if key in self._graphs:
                continue
            try:
                graphs[key] = load_graph(self._file(key))
            except Exception as exc:  # missing or bad: compile this shape
                log.info("%s: %s not loaded from disk (%s)", self.name, shape, exc)
                return False
        self._graphs.update(graphs)
        with contextlib.suppress(OSError):
            os.utime(self._index(shape))  # in use: not old
        self.loaded_files += len(graphs)
        self._shape_keys[shape] = keys
        self._ready.add(shape)
        self.compile_s[shape] = time.perf_counter() - started
        log.info(
            "%s: %s loaded from %d saved graphs in %.1f s",
            self.name,
            shape,
            len(graphs),
            self.compile_s[shape],
        )
        return True
