"""A ``torch.compile`` backend for tests of saved graphs: compiles nothing, can be saved."""

from __future__ import annotations

from typing import Any

import torch
from torch._dynamo.aot_compile_types import GraphModuleSerializableCallable


def saveable_eager(graph: torch.fx.GraphModule, _inputs: list[Any]) -> Any:
    """Dynamo's graph as it is, run eagerly; ``aot_compile`` can save and reload it in
    milliseconds on a CPU, where inductor would build C++ for a minute."""
    return GraphModuleSerializableCallable(graph)
