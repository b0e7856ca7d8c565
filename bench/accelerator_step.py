"""The training step's paths measured against the device's limit: scripts/gpu_check.sh step 3 on a GPU, and its
`--tiny` rehearsal on the CPU.

    python -m bench.accelerator_step --device cuda --image_size 800 --batch_sizes 8 16 \\
        --data_dir WORK/data --output WORK/step_paths.json

Each path trains the same random DETR (bench/workload.py: ResNet-50 with `--resnet50`, DETR's transformer, dropout 0)
on the same CPPE-5-shaped images, in bf16 autocast, clipping gradients and stepping torch's fused AdamW as the
Trainer does:
- stock: transformers' forward with its own loss, labels a list per image, images padded per batch and normalised
  on the CPU beforehand (as the Hugging Face example's processor leaves them), eager;
- eager: ours: 8-bit images on the image_size square normalised on the device (`model_pixels`), the label-free
  forward, DetrCriterion with the host matcher, eager;
- eager_channels_last: eager with the model's weights and the images in channels-last memory format;
- compiled: eager with the forward and its backward compiled (`--compile_backend`, inductor on a GPU) and the
  criterion's device parts compiled as `--torch_compile` compiles them (detr_ft/train/compiled_step.py);
- captured: compiled in inductor's reduce-overhead mode, the forward and backward replayed as CUDA graphs:
  `--torch_compile --torch_compile_mode reduce-overhead`.

Per path and batch size: steady images/s (the timed steps after the warm-up, whose first step compiles), the GPU's
busy fraction, kernels and launch calls per step (bench/kernel_profile.py), FLOP per step (FlopCounterMode on the
eager form of the step, per batch shape) and the TFLOP/s that makes against the device's dense bf16 peak
(bench/device_peaks.py), peak device memory, first-step (compile) seconds, and for the compiled paths how many graphs
inductor declined to capture ("skipping cudagraphs", `cudagraph_skips`). The batches are on the device beforehand, as
a prefetching loader leaves them; the loader's own images/s is measured apart (bench/loader_speed.py), with float and
8-bit pixels. The captured path's gradient accumulation is checked: two micro-batches accumulated into
`StableGradBuffers` against the sum of each one's gradients alone (the same graphs, so equal up to the order of
floating-point additions).

Dropout is 0 so that every path computes the same function: the accumulation check compares gradients, and DETR's
dropout (0.1) adds only elementwise kernels, about 60 per eager step. Paths run in the order `--paths` gives, each at
every batch size, the compiling ones last; one that would end past `--budget_s` (estimated from the longest path of
its kind so far) is skipped and named.
Exit status 1 when the captured path skipped a CUDA graph or its accumulation check failed.
"""

from __future__ import annotations

import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from accelerate.utils import send_to_device
from torch import Tensor
from torch._dynamo.utils import counters
from torch.utils.flop_counter import FlopCounterMode
from transformers import HfArgumentParser

from bench.device_peaks import dense_bf16_peak, peak_table
from bench.kernel_profile import profile_steps
from bench.loader_speed import loader_images_per_s
from bench.workload import Workload, build_model, default_optimizer, make_batches, make_samples
from detr_ft.data.images import model_pixels
from detr_ft.model.criterion import DetrCriterion
from detr_ft.train.compiled_step import StableGradBuffers

PATHS = ("stock", "eager", "eager_channels_last", "compiled", "captured")
COMPILED_PATHS = ("compiled", "captured")
MAX_GRAD_NORM = 0.1  # the project's default --max_grad_norm
ACCUMULATION_TOLERANCE = 1e-3  # of the largest gradient entry; a lost or doubled micro-batch is off by about 1
TINY = Workload(d_model=32, ffn_dim=64, encoder_layers=2, decoder_layers=2, num_queries=20, backbone_width=8)


@dataclass
class StepArguments:
    device: str = field(default="cuda", metadata={"help": "cuda, or cpu for a rehearsal."})
    image_size: int = field(default=800, metadata={"help": "The square the images are fitted into and padded to."})
    batch_sizes: list[int] = field(default_factory=lambda: [8, 16], metadata={"help": "Batch sizes to measure."})
    paths: list[str] = field(default_factory=lambda: list(PATHS), metadata={"help": f"Of {', '.join(PATHS)}."})
    resnet50: bool = field(default=True, metadata={"help": "DETR-R50's backbone; false: the bench's tiny model."})
    compile_backend: str = field(default="inductor", metadata={"help": "torch.compile backend of the compiled "
                                                                       "paths (aot_eager for a CPU rehearsal)."})
    warmup_steps: int = field(default=3, metadata={"help": "Untimed steps first: CUDA graphs record on the 2nd."})
    timed_steps: int = field(default=12, metadata={"help": "Timed steps per path and batch size."})
    profiled_steps: int = field(default=2, metadata={"help": "Of the timed batches, profiled again."})
    data_dir: str | None = field(default=None, metadata={"help": "COCO folder whose train split the loader reads."})
    loader_workers: int = field(default=8, metadata={"help": "DataLoader workers of the loader measure."})
    budget_s: float = field(default=200.0, metadata={"help": "Skip a path that would end later than this."})
    output: str = field(default="step_paths.json", metadata={"help": "Where the results go (json)."})


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class PathStep:
    """One training step of `path` on `model`: `loss(batch)` (forward and loss, no backward) and `step(batch)` (loss,
    backward, clipping, on our paths the finite-loss guard's read of the loss (`--check_finite_loss`, on by default),
    AdamW, gradients set to None)."""

    def __init__(self, path: str, model: torch.nn.Module, device: str, backend: str):
        self.path, self.model, self.device_type = path, model, torch.device(device).type
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = default_optimizer(model)
        self.forward, self.criterion = model, DetrCriterion(model.config)
        self.memory_format = torch.channels_last if path == "eager_channels_last" else torch.contiguous_format
        if path == "eager_channels_last":
            model.to(memory_format=torch.channels_last)
        if path in COMPILED_PATHS:
            mode = "reduce-overhead" if path == "captured" and backend == "inductor" else None
            self.forward = torch.compile(model, backend=backend, mode=mode, dynamic=False)
            self.criterion = DetrCriterion(model.config, {"backend": backend})

    def loss(self, batch: dict) -> Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            if self.path == "stock":
                return self.model(**batch).loss  # ()
            pixels = model_pixels(batch["pixel_values"], batch["pixel_mask"])  # (B, 3, H, W)
            outputs = self.forward(pixel_values=pixels.contiguous(memory_format=self.memory_format),
                                   pixel_mask=batch["pixel_mask"])
        return self.criterion(outputs, batch["labels"])[0]  # ()

    def step(self, batch: dict) -> Tensor:
        loss = self.loss(batch)  # ()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.parameters, MAX_GRAD_NORM)
        if self.path != "stock" and not torch.isfinite(loss):  # the finite-loss guard's one read, as ours trains
            raise FloatingPointError(f"{self.path}: a non-finite loss")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()


def path_batches(workload: Workload, path: str, count: int) -> list[dict]:
    """`count` batches of `path`'s collation, on the CPU: 8-bit pixels, normalised here for stock."""
    samples = make_samples(replace(workload, batches_per_epoch=count), uint8_pixels=True)
    batches = make_batches(workload, "stock" if path == "stock" else "ours", samples)
    if path == "stock":
        batches = [{**batch, "pixel_values": model_pixels(batch["pixel_values"], batch["pixel_mask"])}
                   for batch in batches]
    return batches


def step_flops(loss: Callable[[dict], Tensor], model: torch.nn.Module, batch: dict) -> int:
    """FLOP of the forward, loss and backward of `batch` (FlopCounterMode: matrix products and convolutions), eager."""
    with FlopCounterMode(display=False) as counter:
        loss(batch).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def flops_per_step(step: PathStep, batches: list[dict], device: str, backend: str) -> float:
    """Mean FLOP per step over `batches`, counted once per batch shape on the step's eager form."""
    eager = step if step.path not in COMPILED_PATHS else PathStep("eager", step.model, device, backend)
    by_shape: dict[tuple, int] = {}
    for batch in batches:
        shape = tuple(batch["pixel_values"].shape)
        if shape not in by_shape:
            by_shape[shape] = step_flops(eager.loss, step.model, batch)
    return statistics.mean(by_shape[tuple(batch["pixel_values"].shape)] for batch in batches)


def accumulation_check(step: PathStep, batches: list[dict]) -> float:
    """Largest |accumulated - sum of singles| over the largest gradient entry, for two micro-batches' gradients
    accumulated into `StableGradBuffers` against each one's gradients taken alone."""
    grads = StableGradBuffers(step.model)
    singles = []
    for batch in batches[:2]:
        grads.attach()
        step.loss(batch).backward()
        singles.append([buffer.clone() for buffer in grads.buffers])
    grads.attach()
    for batch in batches[:2]:
        step.loss(batch).backward()
    expected = [first + second for first, second in zip(*singles, strict=True)]
    scale = max(float(grad.abs().max()) for grad in expected)
    deviation = max(float((got - want).abs().max()) for got, want in zip(grads.buffers, expected, strict=True))
    step.model.zero_grad(set_to_none=True)
    return deviation / scale


def measure(args: StepArguments, workload: Workload, path: str) -> dict:
    """One path at one batch size (module docstring)."""
    torch._dynamo.reset()
    counters.clear()
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    model = build_model(workload, "stock" if path == "stock" else "ours").to(args.device)
    step = PathStep(path, model, args.device, args.compile_backend)
    batches = send_to_device(path_batches(workload, path, args.warmup_steps + args.timed_steps), args.device)
    warmup, timed = batches[:args.warmup_steps], batches[args.warmup_steps:]

    start = time.perf_counter()
    step.step(warmup[0])
    synchronize(args.device)
    first_step_s = time.perf_counter() - start
    for batch in warmup[1:]:
        step.step(batch)
    synchronize(args.device)
    start = time.perf_counter()
    for batch in timed:
        step.step(batch)
    synchronize(args.device)
    seconds = time.perf_counter() - start
    profile = profile_steps(step.step, timed[:args.profiled_steps], args.device)
    result = {"path": path, "batch": workload.batch_size, "first_step_s": first_step_s,
              "images_per_s": len(timed) * workload.batch_size / seconds, **asdict(profile)}
    if path in COMPILED_PATHS:
        result["cudagraph_skips"] = counters["inductor"]["cudagraph_skips"]
    if path == "captured":
        result["accumulation_deviation"] = accumulation_check(step, timed)
    result["flop_per_step"] = flops_per_step(step, timed, args.device, args.compile_backend)
    result["tflops"] = result["flop_per_step"] * len(timed) / seconds / 1e12
    if args.device.startswith("cuda"):
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    del step, model, batches, warmup, timed
    gc.collect()
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return result


def run(args: StepArguments) -> dict:
    """Every (batch size, path) within the budget, the loader, the device and its peak."""
    start = time.perf_counter()
    base = replace(Workload(), resnet50=True) if args.resnet50 else TINY
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    peak = dense_bf16_peak(device_name)
    results: dict = {"device": device_name, "peak": peak and {"part": peak[0], "dense_bf16_tflops": peak[1]},
                     "torch": torch.__version__, "image_size": args.image_size, "measured": [], "skipped": []}
    order = [(batch_size, path) for compiling in (False, True) for path in args.paths
             for batch_size in args.batch_sizes if (path in COMPILED_PATHS) == compiling]
    spent: dict[bool, float] = {}  # the longest a (non-)compiling path has taken so far
    for batch_size, path in order:
        compiling = path in COMPILED_PATHS
        elapsed = time.perf_counter() - start
        if elapsed + spent.get(compiling, 0.0) > args.budget_s:
            results["skipped"].append({"path": path, "batch": batch_size, "why": f"time budget {args.budget_s:g} s"})
            continue
        workload = replace(base, image_size=args.image_size, batch_size=batch_size, dropout=0.0)
        print(f"[step paths] {path}, batch {batch_size}", file=sys.stderr, flush=True)
        path_start = time.perf_counter()
        measured = measure(args, workload, path)
        measured["wall_s"] = time.perf_counter() - path_start
        spent[compiling] = max(spent.get(compiling, 0.0), measured["wall_s"])
        results["measured"].append(measured)
    if args.data_dir:
        pin = args.device.startswith("cuda")
        results["loader"] = [loader_images_per_s(Path(args.data_dir), "train", args.image_size, batch_size,
                                                 args.loader_workers, uint8_pixels=uint8, pin_memory=pin)
                             for batch_size in args.batch_sizes[:1] for uint8 in (False, True)]
    results["total_s"] = time.perf_counter() - start
    return results


def format_table(results: dict) -> str:
    """The measured paths, their ratio to stock's images/s at the same batch, the device and its peak, the loader."""
    peak = results["peak"]
    stock = {m["batch"]: m["images_per_s"] for m in results["measured"] if m["path"] == "stock"}
    lines = [f"device: {results['device']}, torch {results['torch']}, {results['image_size']} px, bf16 autocast; "
             + (f"{peak['part']}: {peak['dense_bf16_tflops']:g} TFLOP/s dense bf16" if peak else "peak unknown"),
             peak_table(), "",
             "| path | batch | images/s | vs stock | GPU busy | kernels/step | launch calls/step | GFLOP/step | "
             "TFLOP/s | of peak | peak GiB | first step s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]

    def cell(value: float | None, form: str) -> str:
        return "-" if value is None else format(value, form)

    for m in results["measured"]:
        versus = m["images_per_s"] / stock[m["batch"]] if m["batch"] in stock else None
        of_peak = m["tflops"] / peak["dense_bf16_tflops"] if peak else None
        lines.append(f"| {m['path']} | {m['batch']} | {m['images_per_s']:.1f} | {cell(versus, '.2f')}"
                     f"{'x' if versus is not None else ''} | {cell(m['busy_fraction'], '.2f')} | "
                     f"{cell(m['kernels_per_step'], '.0f')} | {cell(m['launch_calls_per_step'], '.0f')} | "
                     f"{m['flop_per_step'] / 1e9:.4g} | {m['tflops']:.3g} | {cell(of_peak, '.1%')} | "
                     f"{cell(m.get('peak_memory_gib'), '.1f')} | {m['first_step_s']:.1f} |")
    for m in results["measured"]:
        if "cudagraph_skips" in m:
            lines.append(f"{m['path']}, batch {m['batch']}: graphs inductor declined to capture: "
                         f"{m['cudagraph_skips']}")
        if "accumulation_deviation" in m:
            lines.append(f"{m['path']}, batch {m['batch']}: 2 micro-batches accumulated in stable buffers against "
                         f"their sum taken alone: {m['accumulation_deviation']:.1e} of the largest gradient")
    lines += [f"skipped: {s['path']}, batch {s['batch']} ({s['why']})" for s in results["skipped"]]
    for loader in results.get("loader", []):
        lines.append(f"loader, {'8-bit' if loader['uint8_pixels'] else 'float'} pixels: "
                     f"{loader['images_per_s']:.1f} images/s with {loader['workers']} workers")
    lines.append(f"total {results['total_s']:.0f} s")
    return "\n".join(lines)


def failures(results: dict) -> list[str]:
    """The captured path's graph skips and accumulation deviations past ACCUMULATION_TOLERANCE."""
    found = []
    for m in results["measured"]:
        if m["path"] == "captured" and m.get("cudagraph_skips"):
            found.append(f"captured, batch {m['batch']}: {m['cudagraph_skips']} graphs not captured")
        if m.get("accumulation_deviation", 0.0) > ACCUMULATION_TOLERANCE:
            found.append(f"captured, batch {m['batch']}: accumulated gradients off by "
                         f"{m['accumulation_deviation']:.1e} of the largest")
    return found


def main(argv: list[str] | None = None) -> int:
    (args,) = HfArgumentParser(StepArguments).parse_args_into_dataclasses(argv)
    unknown = sorted(set(args.paths) - set(PATHS))
    if unknown:
        raise SystemExit(f"--paths {' '.join(unknown)}: not a path; choose from {', '.join(PATHS)}")
    results = run(args)
    Path(args.output).write_text(json.dumps(results, indent=2))
    print(format_table(results))
    problems = failures(results)
    for problem in problems:
        print(f"!! {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
