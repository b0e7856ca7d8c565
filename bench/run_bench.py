"""`make bench`: the stock DETR fine-tuning path against ours, on the same random DETR and synthetic data of CPPE-5's
real image shapes (see bench/workload.py), measured on this machine; prints two tables and writes bench/results.json.

    python -m bench.run_bench [--quick] [--only canvas] [--output bench/results.json]

Measures (medians of interleaved repeats where timed):
- syncs_per_step: host syncs of one training step (forward, loss, backward), by `HostSyncCounter`; again on the Gaudi
  stack (`gaudi_stack`: optimum-habana 1.21.2 + transformers 4.55, run in `--gaudi_python` by bench/gaudi_syncs.py);
- recompiles / compile_warmup_s: graphs compiled and compile warm-up over the epoch with `model.model` compiled
  (bench/compile_warmup.py; stock's is scaled from its first shapes);
- eager_steps_per_s: training steps (forward, loss, backward, AdamW) per second without compilation, over the epoch;
- canvas_paths: per path (stock, square = ours, k2, k3 = --image_buckets 2 / 3) the padded-pixel fraction of the
  epoch's batches, eager images/s, graphs and compile warm-up over the epoch, and their ratios to the square and stock;
- regional_compile: graphs and compile warm-up of stock and K = 3 with `model.model` compiled by regions (accelerate's
  `compile_regions`, as `ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION=1` has the Trainer do), against the whole compile;
- loader: images/s of the real data path (bench/loader_speed.py: `DetectionDataset` with augmentation on CPPE-5's test
  split at the bench's image size, the collator, a DataLoader with the default workers of `--dataloader_num_workers`)
  next to the steps', and its ratio to the fastest step's;
- matcher_ms_per_step: transformers' HungarianMatcher once per decoder layer (as its loss calls it) against our
  `hungarian_match` of all layers at once, on the same model outputs;
- map_eval_s: pycocotools against our `coco_map` (bench/map_eval.py);
- matcher_step: ms of a training step (forward without labels, criterion on its outputs, backward) at DETR-R50's
  matching shapes (the workload's model, 8 images, targets padded to 60 slots), with its loss and host reads.

`--only canvas` (`make bench-canvas`) measures only the canvas part (compile warm-up, eager epoch and loader of the
four image paths: a few minutes on 2 cores) and prints only its table. `--quick` is a smoke run of every measure at
toy sizes (a smaller transformer, fewer steps, 200 images for mAP): its counts are meaningful, its timings are not.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import transformers
from accelerate.utils import send_to_device
from transformers import HfArgumentParser
from transformers.loss.loss_for_object_detection import HungarianMatcher

from bench.compile_warmup import compile_warmup_isolated
from bench.loader_speed import loader_images_per_s
from bench.map_eval import compare_map_evaluation
from bench.training_step import forward_and_loss
from bench.workload import (
    CANVAS_PATHS,
    PATHS,
    Workload,
    build_model,
    default_optimizer,
    make_batches,
    make_samples,
    step_loss,
    train_step,
)
from detr_ft.data.loader_workers import default_dataloader_workers
from detr_ft.data.padding import DetectionCollator
from detr_ft.model.matcher import hungarian_match
from detr_ft.train.sync_audit import HostSyncCounter

MAX_MAP_DIFF = 1e-4
CPPE5_TEST = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "cppe5-test"


@dataclass
class BenchArguments:
    quick: bool = field(default=False, metadata={"help": "Smoke run of every measure at toy sizes (< 1 min)."})
    output: str = field(default="bench/results.json", metadata={"help": "Where to write the results (json)."})
    gaudi_python: str = field(
        default=".venv-gaudi/bin/python", metadata={"help": "Python of the Gaudi stack's venv; skipped if absent."}
    )
    only: str = field(default="", metadata={"help": "canvas: only the image paths' part (make bench-canvas)."})


@dataclass(frozen=True)
class BenchSizes:
    workload: Workload = Workload()
    sync_steps: int = 2
    eager_every: int = 4  # eager steps: every 4th batch of each path's epoch (a fair sample of its shapes)
    eager_chunks: int = 4  # in this many turns, the paths alternating (the machine's load drifts)
    # The canvas paths' eager steps and the loader run at this size: at the workload's 160 px the 100-query decoder
    # dominates the step and the canvas area hardly counts; at 800 px with ResNet-50 the pixels dominate, as here.
    canvas_eager_image_size: int = 480
    matcher_batches: int = 8
    matcher_repeats: int = 5
    # inductor takes ~1 min per shape of this model here: aot_eager (dynamo + AOTAutograd, no code generation)
    # keeps the 4 paths' compile runs within minutes; the graph counts are the same.
    compile_backend: str = "aot_eager"
    compile_stock_shapes: int = 3  # stock meets a new shape almost every batch: compile this many, scale to the epoch
    loader_epochs: int = 2
    map_images: int = 5000
    map_detections_per_image: int = 100
    matcher_shape: tuple[int, int, int, int] = (6, 8, 100, 60)  # decoder layers, batch, queries, target slots


FULL = BenchSizes()
QUICK = BenchSizes(
    workload=Workload(image_size=160, batch_size=2, batches_per_epoch=8, d_model=32, ffn_dim=64,
                      encoder_layers=2, decoder_layers=2, num_queries=20, backbone_width=8),
    sync_steps=1, eager_every=1, eager_chunks=2, canvas_eager_image_size=160, matcher_batches=3, matcher_repeats=2,
    compile_stock_shapes=2, loader_epochs=1, map_images=200, matcher_shape=(2, 2, 20, 8),
)
MAX_CANVAS_SHAPES = 8  # our paths compile every shape of the epoch: at most 3 canvases
REGIONAL_PATHS = ("stock", "k3")  # compiled by regions too: stock and the recommended K


def syncs_per_step(workload: Workload, steps: int) -> dict[str, dict]:
    """Host syncs per training step (forward, loss, backward) on each path, over its first `steps` batches."""
    samples = make_samples(workload)
    results = {}
    for path in PATHS:
        model = build_model(workload, path)
        batches = make_batches(workload, path, samples)[:steps]  # before the counter: the data loader's tensors
        with HostSyncCounter() as counter:
            for batch in batches:
                step_loss(model, batch).backward()
        results[path] = {"per_step": counter.count / steps, "by_op": {op: n / steps for op, n in counter.by_op.items()}}
    return results


def gaudi_stack_syncs(workload: Workload, steps: int, python: str) -> dict:
    """`syncs_per_step` on the Gaudi stack, in its own venv (bench/gaudi_syncs.py); {"skipped": why} without it."""
    if not Path(python).exists():
        return {"skipped": f"no {python} (make venv-gaudi)"}
    command = [python, "-m", "bench.gaudi_syncs", "--workload", json.dumps(asdict(workload)), "--steps", str(steps)]
    finished = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(finished.stdout.strip().splitlines()[-1])


def padded_pixel_fraction(batches: list[dict]) -> float:
    """Share of the batches' pixels that are padding (pixel_mask 0)."""
    return 1.0 - sum(int(b["pixel_mask"].sum()) for b in batches) / sum(b["pixel_mask"].numel() for b in batches)


def wait_for(device: str) -> None:
    """Until the work queued on `device` has run (nothing to wait for on the CPU)."""
    if device != "cpu":
        torch.accelerator.synchronize()


def eager_epoch(workload: Workload, every: int, chunks: int, paths: tuple[str, ...] = CANVAS_PATHS,
                device: str = "cpu") -> dict[str, dict]:
    """Each path's epoch without compilation: padded-pixel fraction and distinct image shapes of all its batches;
    images/s and steps/s of every `every`-th batch, after a warm-up step on each shape among them, in `chunks`
    turns with the paths alternating. On an accelerator the timed batches are on it beforehand (as a prefetching
    loader leaves them) and each turn's clock stops when its queued work has run."""
    samples = make_samples(workload)
    runs = {}
    for path in paths:
        model = build_model(workload, path).to(device)
        optimizer = default_optimizer(model)
        batches = make_batches(workload, path, samples)
        timed = [send_to_device(batch, device) for batch in batches[::every]]
        for batch in {tuple(b["pixel_values"].shape): b for b in timed}.values():
            train_step(model, optimizer, batch)  # first-use costs of each timed shape (allocator, kernels)
        runs[path] = (model, optimizer, batches, timed)
    seconds = dict.fromkeys(paths, 0.0)
    for turn in range(chunks):
        for path, (model, optimizer, _, timed) in runs.items():
            wait_for(device)
            start = time.perf_counter()
            for batch in timed[turn::chunks]:
                train_step(model, optimizer, batch)
            wait_for(device)
            seconds[path] += time.perf_counter() - start
    return {path: {"steps": len(batches), "timed_steps": len(timed),
                   "images_per_s": len(timed) * workload.batch_size / seconds[path],
                   "steps_per_s": len(timed) / seconds[path],
                   "padded_pixel_fraction": padded_pixel_fraction(batches),
                   "image_shapes": len({tuple(b["pixel_values"].shape[2:]) for b in batches})}
            for path, (_, _, batches, timed) in runs.items()}


def cppe5_loader(workload: Workload, epochs: int) -> dict | None:
    """`loader_images_per_s` on CPPE-5's test split at the workload's image size and batch, with the default
    DataLoader workers of `--dataloader_num_workers`; None without the split."""
    if not (CPPE5_TEST / "annotations" / "test.json").exists():
        return None
    return loader_images_per_s(CPPE5_TEST, "test", workload.image_size, workload.batch_size,
                               default_dataloader_workers(), epochs)


@torch.no_grad()
def matcher_ms_per_step(workload: Workload, batches: int, repeats: int) -> dict[str, float]:
    """Median milliseconds per batch of each matcher over all decoder layers' outputs of the same forward (the
    epoch's first `batches` batches)."""
    model = build_model(workload, "ours")
    config = model.config
    costs = {"class_cost": config.class_cost, "bbox_cost": config.bbox_cost, "giou_cost": config.giou_cost}
    stock_matcher = HungarianMatcher(**costs)
    samples = make_samples(workload)
    cases = []
    stock_batches, our_batches = (make_batches(workload, path, samples)[:batches] for path in PATHS)
    for stock_batch, our_batch in zip(stock_batches, our_batches, strict=True):
        decoded = model.model(our_batch["pixel_values"], our_batch["pixel_mask"]).intermediate_hidden_states
        logits = model.class_labels_classifier(decoded)  # (L, B, Q, C+1)
        boxes = model.bbox_predictor(decoded).sigmoid()  # (L, B, Q, 4)
        cases.append((logits, boxes, stock_batch["labels"], our_batch["labels"]))

    def stock(logits, boxes, stock_labels, _):
        for layer_logits, layer_boxes in zip(logits, boxes, strict=True):
            stock_matcher({"logits": layer_logits, "pred_boxes": layer_boxes}, stock_labels)

    def ours(logits, boxes, _, padded_labels):
        hungarian_match(logits, boxes, padded_labels, **costs)

    times: dict[str, list[float]] = {"stock": [], "ours": []}
    for _ in range(repeats):
        for name, match in (("stock", stock), ("ours", ours)):
            start = time.perf_counter()
            for case in cases:
                match(*case)
            times[name].append(1000 * (time.perf_counter() - start) / len(cases))
    return {name: statistics.median(values) for name, values in times.items()}


def matcher_step_ms(workload: Workload, target_slots: int, repeats: int) -> dict:
    """Median ms of one eager training step (forward without labels, criterion on its outputs with the host matcher,
    backward: bench/training_step.py) on one batch of `workload` with targets padded to `target_slots`, with its loss
    (the same dropout masks every step) and its host reads (`HostSyncCounter`)."""
    model = build_model(workload, "ours")
    samples = make_samples(workload)[:workload.batch_size]
    batch = DetectionCollator(workload.image_size, [target_slots])(samples)

    def train_step() -> torch.Tensor:
        torch.manual_seed(workload.seed)  # the same dropout masks in every step
        loss = forward_and_loss(model, batch)  # ()
        loss.backward()
        model.zero_grad(set_to_none=True)
        return loss.detach()

    start = time.perf_counter()
    loss = float(train_step())
    first_step_s = time.perf_counter() - start
    with HostSyncCounter() as counter:
        train_step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        train_step()
        times.append(1000 * (time.perf_counter() - start))
    return {"batch": workload.batch_size, "target_slots": target_slots,
            "ms_per_step": {"eager": statistics.median(times)}, "loss": {"eager": loss},
            "host_reads_per_step": {"eager": counter.count},
            "first_step_s": {"eager": first_step_s}}


def machine_info() -> dict:
    cpu_model = platform.processor()
    if Path("/proc/cpuinfo").exists():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu_model = names[0] if names else cpu_model
    return {
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "processor": cpu_model,
        "machine": platform.machine(), "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "load_average_at_start": os.getloadavg()[0],
    }


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the compile runs): on an idle machine with n cores the
    wall time lies between this / n and this."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def progress(phase: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {phase}", file=sys.stderr, flush=True)


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("inf")


def compile_over_epoch(workload: Workload, path: str, sizes: BenchSizes, regional: bool = False) -> dict:
    """Graphs and compile warm-up of `path` over the epoch (bench/compile_warmup.py; by regions if `regional`),
    scaled from the shapes compiled to the epoch's shapes where fewer were compiled (stock); `estimated` says whether
    it was."""
    max_shapes = sizes.compile_stock_shapes if path == "stock" else MAX_CANVAS_SHAPES
    run = compile_warmup_isolated(workload, path, sizes.compile_backend, max_shapes, regional)
    scale = run["epoch_image_shapes"] / run["image_shapes"]
    return {"graphs": round(run["compilations"] * scale), "warmup_s": run["warmup_s"] * scale,
            "graph_breaks": run["graph_breaks"], "image_shapes": run["epoch_image_shapes"],
            "shapes_compiled": run["image_shapes"], "estimated": scale > 1}


def measure_canvas_paths(sizes: BenchSizes, results: dict) -> dict:
    """The canvas part (`--only canvas`): compile warm-up and eager epoch of every image path and the loader, into
    `results`; returns the compile runs, which the main table reads for stock and ours."""
    workload = sizes.workload
    progress("compile warm-up, a process per path")
    compiles = {path: compile_over_epoch(workload, path, sizes) for path in CANVAS_PATHS}
    regional = {path: compile_over_epoch(workload, path, sizes, regional=True) for path in REGIONAL_PATHS}
    results["compiled"] = ("model.model (backbone + encoder + decoder), dynamic=False; heads, loss, backward, AdamW "
                           "around it")
    results["compile_backend"] = sizes.compile_backend
    results["compile_warmup_steps"] = workload.batches_per_epoch
    progress("eager training")
    eager_workload = replace(workload, image_size=sizes.canvas_eager_image_size)
    eager = eager_epoch(eager_workload, sizes.eager_every, sizes.eager_chunks)
    progress("loader")
    results.update(canvas_summary(compiles, eager, cppe5_loader(eager_workload, sizes.loader_epochs)))
    results["regional_compile"] = regional_summary(compiles, regional)
    return compiles


def regional_summary(compiles: dict, regional: dict) -> dict:
    """Per path in REGIONAL_PATHS: graphs and warm-up compiled by regions, stock's regional warm-up over the path's,
    and the path's whole-model warm-up over its regional one."""
    return {path: {"graphs": regional[path]["graphs"], "warmup_s": regional[path]["warmup_s"],
                   "estimated": regional[path]["estimated"],
                   "stock_over_path": ratio(regional["stock"]["warmup_s"], regional[path]["warmup_s"]),
                   "whole_over_regional": ratio(compiles[path]["warmup_s"], regional[path]["warmup_s"])}
            for path in REGIONAL_PATHS}


def canvas_summary(compiles: dict, eager: dict, loader: dict | None) -> dict:
    """canvas_paths (each path's eager and compile measures), canvas_ratios and loader (with the steps' images/s
    beside it, and its own over the fastest step's), from the measures of every path in CANVAS_PATHS."""
    steps = {path: eager[path]["images_per_s"] for path in CANVAS_PATHS}
    return {
        "canvas_paths": {path: {**eager[path], **{f"compile_{k}": v for k, v in compiles[path].items()}}
                         for path in CANVAS_PATHS},
        "canvas_ratios": {path: {
            "eager_vs_square": ratio(eager[path]["images_per_s"], eager["ours"]["images_per_s"]),
            "eager_vs_stock": ratio(eager[path]["images_per_s"], eager["stock"]["images_per_s"]),
            "compile_warmup_stock_over_path": ratio(compiles["stock"]["warmup_s"], compiles[path]["warmup_s"]),
        } for path in CANVAS_PATHS},
        "loader": loader and {**loader, "step_images_per_s": steps,
                              "over_fastest_step": ratio(loader["images_per_s"], max(steps.values()))},
    }


def run(sizes: BenchSizes, gaudi_python: str, only: str = "") -> dict:
    """Every measure, or with only="canvas" the canvas part alone."""
    start, start_cpu = time.perf_counter(), cpu_seconds()
    workload = sizes.workload
    results: dict = {"machine": machine_info(), "sizes": asdict(sizes), "num_buckets": 1, "only": only or "all"}
    if only != "canvas":
        syncs = syncs_per_step(workload, sizes.sync_steps)
        results["syncs_per_step"] = {path: syncs[path]["per_step"] for path in PATHS}
        results["syncs_by_op"] = {path: syncs[path]["by_op"] for path in PATHS}
        results["gaudi_stack"] = gaudi_stack_syncs(workload, sizes.sync_steps, gaudi_python)

    compiles = measure_canvas_paths(sizes, results)

    if only != "canvas":
        results["recompiles"] = {path: compiles[path]["graphs"] for path in PATHS}
        results["graph_breaks"] = {path: compiles[path]["graph_breaks"] for path in PATHS}
        results["image_shapes_compiled"] = {path: compiles[path]["image_shapes"] for path in PATHS}
        results["compile_warmup_s"] = {path: compiles[path]["warmup_s"] for path in PATHS}
        results["compile_warmup_speedup"] = ratio(compiles["stock"]["warmup_s"], compiles["ours"]["warmup_s"])
        progress("eager training, stock and ours")
        eager = eager_epoch(workload, sizes.eager_every, sizes.eager_chunks, PATHS)
        results["eager_steps_per_s"] = {path: eager[path]["steps_per_s"] for path in PATHS}
        results["eager_ratio"] = ratio(results["eager_steps_per_s"]["ours"], results["eager_steps_per_s"]["stock"])

        progress("matchers and mAP evaluation")
        results["matcher_ms_per_step"] = matcher_ms_per_step(workload, sizes.matcher_batches, sizes.matcher_repeats)
        layers, batch_size, num_queries, target_slots = sizes.matcher_shape
        assert (layers, num_queries) == (workload.decoder_layers, workload.num_queries), "matcher_shape: the workload's"
        results["matcher_step"] = matcher_step_ms(replace(workload, batch_size=batch_size), target_slots,
                                                  sizes.matcher_repeats)
        map_eval = compare_map_evaluation(sizes.map_images, sizes.map_detections_per_image, workload.seed)
        results["map_eval_s"] = map_eval["seconds"]
        results["map_eval_speedup"] = ratio(map_eval["seconds"]["pycocotools"], map_eval["seconds"]["ours"])
        results["map_eval_images"], results["map_eval_detections"] = map_eval["images"], map_eval["detections"]
        results["map"] = map_eval["map"]
        results["map_max_abs_diff"] = map_eval["max_abs_diff"]
    results["machine"]["load_average_at_end"] = os.getloadavg()[0]
    results["total_s"] = time.perf_counter() - start
    results["total_cpu_s"] = cpu_seconds() - start_cpu
    return results


def format_table(results: dict) -> str:
    """Markdown table: one row per measure with stock, ours and, for timings and rates, ours' speed-up."""
    rows = [
        ("host syncs per step", results["syncs_per_step"], "{:.0f}", None),
        (f"graph compilations, {results['compile_warmup_steps']} steps", results["recompiles"], "{:d}", None),
        (f"compile warm-up s, {results['compile_warmup_steps']} steps", results["compile_warmup_s"], "{:.1f}", "time"),
        ("eager steps/s", results["eager_steps_per_s"], "{:.3f}", "rate"),
        ("matcher ms per step", results["matcher_ms_per_step"], "{:.1f}", "time"),
        (f"mAP eval s, {results['map_eval_images']} images", results["map_eval_s"], "{:.1f}", "time"),
    ]
    gaudi = results["gaudi_stack"]
    if "syncs_per_step" in gaudi:
        rows.insert(1, (f"host syncs per step, Gaudi stack (transformers {gaudi['stack']['transformers']})",
                        gaudi["syncs_per_step"], "{:.0f}", None))
    lines = ["| measure | stock | ours | ours' speed-up |", "| --- | ---: | ---: | ---: |"]
    for name, values, number, unit in rows:
        stock = values["pycocotools" if "pycocotools" in values else "stock"]
        ours = values["ours"]
        speedup = {"time": ratio(stock, ours), "rate": ratio(ours, stock)}.get(unit)
        versus = "" if speedup is None else f"{speedup:.2f}x"
        lines.append(f"| {name} | {number.format(stock)} | {number.format(ours)} | {versus} |")
    if "skipped" in gaudi:
        lines.append(f"\nGaudi stack skipped: {gaudi['skipped']}")
    step = results["matcher_step"]
    lines.append(f"training step ms (forward without labels, criterion, backward), batch {step['batch']}, "
                 f"{step['target_slots']} target slots: " + ", ".join(
                     f"{name} {ms:.0f}" for name, ms in step["ms_per_step"].items())
                 + "; host reads per step: " + ", ".join(
                     f"{name} {reads}" for name, reads in step["host_reads_per_step"].items()))
    machine = results["machine"]
    lines.append(
        f"\nmAP max |diff| {results['map_max_abs_diff']:.2e}; {machine['cpu_count']} x {machine['processor']}, "
        f"torch {machine['torch']}, compile backend {results['compile_backend']}, load average "
        f"{machine['load_average_at_start']:.1f} -> {machine['load_average_at_end']:.1f}, "
        f"total {results['total_s']:.0f} s wall, {results['total_cpu_s']:.0f} s CPU"
    )
    return "\n".join(lines)


def format_canvas_table(results: dict) -> str:
    """Markdown table of the aspect-ratio canvases: one column per path, the ratios to the square and to stock."""
    paths, ratios = results["canvas_paths"], results["canvas_ratios"]
    names = {"stock": "stock", "ours": "square", "k2": "K = 2", "k3": "K = 3"}
    steps = results["compile_warmup_steps"]
    eager_px, compile_px = results["sizes"]["canvas_eager_image_size"], results["sizes"]["workload"]["image_size"]

    def estimated(path: str) -> str:
        return "*" if paths[path]["compile_estimated"] else ""

    rows = [
        (f"padded-pixel fraction, {eager_px} px", [f"{paths[p]['padded_pixel_fraction']:.3f}" for p in CANVAS_PATHS]),
        (f"image shapes in the epoch, {eager_px} px", [str(paths[p]["image_shapes"]) for p in CANVAS_PATHS]),
        (f"eager images/s, {eager_px} px", [f"{paths[p]['images_per_s']:.2f}" for p in CANVAS_PATHS]),
        ("eager vs square", [f"{ratios[p]['eager_vs_square']:.2f}x" for p in CANVAS_PATHS]),
        ("eager vs stock", [f"{ratios[p]['eager_vs_stock']:.2f}x" for p in CANVAS_PATHS]),
        (f"graphs compiled, {steps} steps, {compile_px} px",
         [f"{paths[p]['compile_graphs']}{estimated(p)}" for p in CANVAS_PATHS]),
        (f"compile warm-up s, {steps} steps, {compile_px} px",
         [f"{paths[p]['compile_warmup_s']:.1f}{estimated(p)}" for p in CANVAS_PATHS]),
        ("warm-up stock / path", [f"{ratios[p]['compile_warmup_stock_over_path']:.1f}x" for p in CANVAS_PATHS]),
    ]
    lines = ["| measure | " + " | ".join(names[p] for p in CANVAS_PATHS) + " |",
             "| --- |" + " ---: |" * len(CANVAS_PATHS)]
    lines += [f"| {name} | " + " | ".join(values) + " |" for name, values in rows]
    stock = paths["stock"]
    lines.append(f"\n* scaled from the first {stock['compile_shapes_compiled']} of {stock['compile_image_shapes']} "
                 f"shapes compiled ({results['compile_backend']})")
    regional = results["regional_compile"]
    lines.append("compiled by regions (accelerate's compile_regions): " + "; ".join(
        f"{names[path]} {measured['warmup_s']:.1f}{'*' if measured['estimated'] else ''} s, {measured['graphs']} "
        f"graphs, {measured['whole_over_regional']:.1f}x shorter than whole, stock / path "
        f"{measured['stock_over_path']:.1f}x" for path, measured in regional.items()))
    loader = results["loader"]
    if loader:
        lines.append(f"loader: {loader['images_per_s']:.1f} images/s with {loader['workers']} workers (CPPE-5 test "
                     f"split, augmented, at {eager_px} px), {loader['over_fastest_step']:.2f}x the fastest path's "
                     "eager images/s")
    if results["only"] == "canvas":
        machine = results["machine"]
        lines.append(f"{machine['cpu_count']} x {machine['processor']}, torch {machine['torch']}, load average "
                     f"{machine['load_average_at_start']:.1f} -> {machine['load_average_at_end']:.1f}, total "
                     f"{results['total_s']:.0f} s wall, {results['total_cpu_s']:.0f} s CPU")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    (args,) = HfArgumentParser(BenchArguments).parse_args_into_dataclasses(argv)
    if args.only not in ("", "canvas"):
        raise SystemExit(f"--only {args.only}: the one part that runs alone is canvas")
    results = run(QUICK if args.quick else FULL, args.gaudi_python, args.only)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    if args.only != "canvas":
        print(format_table(results))
    print(format_canvas_table(results))
    print(f"results: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
