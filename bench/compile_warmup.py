"""torch.compile warm-up of one path: compilations and wall time of the first training steps, in a fresh process.

Compiled on both paths alike: `model.model` (backbone, encoder, decoder) via `nn.Module.compile(dynamic=False)`. The
class and box heads, the loss (ours copies the matching costs to the host for scipy, the stock one does so per
layer), the backward (AOTAutograd's compiled backward of each compiled graph) and AdamW run around it, as in eager
training. Static shapes (`dynamic=False`): every new input shape is compiled anew, as Gaudi's graph mode does, up to
dynamo's recompile limit per frame (8), after which the frame runs eagerly. Automatic dynamic shapes (the default)
crash on the stock path: inductor fails to lower the convolution backward of the symbolic-size feature map
(torch 2.13, `ValueRangeError: Invalid ranges [0:-1]`).

A compilation is one graph handed to the backend: the first one, each recompile for a new input shape, and each
piece between graph breaks (the stock encoder layer's `if not torch.isfinite(...).all()` breaks the graph once per
layer). The warm-up is the first training step on each distinct image shape of the epoch (in epoch order, up to
`max_shapes`): the steps that compile. Where the epoch holds more shapes than were compiled (stock: a new padded
shape almost every batch; compiling each costs ~1 min with inductor here), the run scales the count and time by
epoch shapes / compiled shapes, and says so.
Each path runs in its own Python process with an empty inductor cache directory, so neither reuses what the other
(or an earlier run) compiled.

`regional=True` compiles `model.model` as accelerate's `compile_regions` does, which is what the Trainer's
`--torch_compile` does with `ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION=1`: each layer of a list of like layers (the 6
encoder layers, the 6 decoder layers, the backbone's stages) is compiled on its own, and dynamo reuses the first
layer's graph for the others (same code, same guards), so a shape costs one encoder layer's compilation instead of
six. Every other part is compiled on its own too: more graphs, each smaller.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
import torch._dynamo
from accelerate.utils import compile_regions
from torch._dynamo.backends.registry import lookup_backend
from torch._dynamo.utils import counters

from bench.workload import Workload, build_model, default_optimizer, make_batches, make_samples, train_step


class CountingBackend:
    """A torch.compile backend that counts the graphs it compiles and hands them to `backend`."""

    def __init__(self, backend: str) -> None:
        self.compile_graph = lookup_backend(backend)
        self.count = 0

    def __call__(self, graph_module: torch.fx.GraphModule, example_inputs: list) -> Callable:
        self.count += 1
        return self.compile_graph(graph_module, example_inputs)


def compile_warmup(workload: Workload, path: str, backend: str, max_shapes: int, regional: bool = False) -> dict:
    """One training step with `model.model` compiled (whole, or by regions) on each of the epoch's first `max_shapes`
    distinct image shapes, in this process: compilations, graph breaks, wall time, shapes compiled and shapes in the
    epoch."""
    torch._dynamo.reset()
    counters.clear()
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, max_shapes)
    model = build_model(workload, path)
    first_of_shape: dict[tuple, dict] = {}
    for batch in make_batches(workload, path, make_samples(workload)):
        first_of_shape.setdefault(tuple(batch["pixel_values"].shape), batch)
    batches = list(first_of_shape.values())[:max_shapes]
    optimizer = default_optimizer(model)
    counting_backend = CountingBackend(backend)
    if regional:
        model.model = compile_regions(model.model, backend=counting_backend, dynamic=False)
    else:
        model.model.compile(backend=counting_backend, dynamic=False)
    start = time.perf_counter()
    for batch in batches:
        train_step(model, optimizer, batch)
    return {
        "compilations": counting_backend.count,
        "graph_breaks": sum(counters["graph_break"].values()),
        "warmup_s": time.perf_counter() - start,
        "steps": len(batches),
        "image_shapes": len(batches),
        "epoch_image_shapes": len(first_of_shape),
    }


def compile_warmup_isolated(workload: Workload, path: str, backend: str, max_shapes: int,
                            regional: bool = False) -> dict:
    """`compile_warmup` in a new Python process whose inductor cache directory is new and empty."""
    with tempfile.TemporaryDirectory(prefix="bench_inductor_") as cache_dir:
        result_file = Path(cache_dir) / "result.json"
        request = json.dumps({"workload": asdict(workload), "path": path, "backend": backend,
                              "max_shapes": max_shapes, "regional": regional})
        finished = subprocess.run(
            [sys.executable, "-m", "bench.compile_warmup", request, str(result_file)], capture_output=True, text=True,
            env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache_dir}, cwd=Path(__file__).parent.parent,
        )
        if finished.returncode != 0:
            raise RuntimeError(f"compiling the {path} path failed:\n{finished.stderr[-3000:]}")
        return json.loads(result_file.read_text())


if __name__ == "__main__":
    arguments = json.loads(sys.argv[1])
    arguments["workload"] = Workload(**arguments["workload"])
    Path(sys.argv[2]).write_text(json.dumps(compile_warmup(**arguments)))
