#!/usr/bin/env bash
# CUDA acceptance check, for a GPU machine that has python3 with torch (CUDA) but no internet and no project venv.
#
#   scripts/gpu_check.sh          # on the GPU machine, from anywhere: steps 1-3, sized for 6 minutes on one H100/H200
#   scripts/gpu_check.sh --tiny   # CPU rehearsal of steps 1-5 with a tiny model (no GPU needed)
#   CHECKS="1 4" scripts/gpu_check.sh   # only these steps (default: 1 2 3; --tiny: 1 2 3 4 5)
#
# Wheels for what the GPU machine lacks, fetched where there is internet (here for Python 3.12; the machine's own
# numpy, scipy and opencv stay):
#   pip download --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 \
#       --platform manylinux_2_28_x86_64 -d .whl transformers==5.24.0 albumentations faster-coco-eval pycocotools
#   rm .whl/numpy-* .whl/scipy-* .whl/opencv_python_headless-*
#
# 1. the equivalence tests on $DEVICE: tests/test_loss_equivalence.py and tests/test_buckets_equivalence.py build
#    their tensors on the device DETR_FT_TEST_DEVICE names (a test in each proves it), the compiled criterion with
#    inductor there;
# 2. the recommended GPU recipe (recipes/cppe5-r50-cuda.json: bf16, --torch_compile in reduce-overhead mode, 8-bit
#    images normalised on the GPU) through the entry, on a random DETR-R50 and synthetic $SIZE px images, one canvas,
#    gradient accumulation 2 (the stable gradient buffers), with TORCHINDUCTOR_CUDAGRAPH_OR_ERROR=1 on the GPU (a graph
#    inductor declines to capture fails the run); run_summary.json must show a graph for the canvas and two for the
#    bucket;
# 3. the step's paths (bench/accelerator_step.py): stock (transformers' loss, per-batch padding, eager), ours eager,
#    eager channels-last, compiled and captured (CUDA graphs), at $SIZE px in bf16, batch $BATCHES: images/s, GPU busy
#    fraction, kernels and launch calls per step, TFLOP/s and its fraction of the device's dense bf16 peak, peak
#    memory, the loader's images/s (float and 8-bit pixels), the captured accumulation checked; a path that would
#    end past STEP_BUDGET_S seconds (default 200) is skipped and named;
# 4. two --deterministic runs of the entry (static shapes, fp32, eager), compared bit for bit;
# 5. the image paths' eager images/s: stock, the square and K = 2, 3 canvases on the bench's CPPE-5-shaped epoch with
#    ResNet-50 (bench/run_bench.py's eager_epoch).
# Ends with a table of the entry runs. A step that fails is named and the others still run (device time is scarce);
# the exit status says whether all passed. It installs nothing, except wheels carried in .whl/ (pip install --no-deps
# --no-index), and writes only under $WORK (default: a new /tmp/detr-ft-gpu-check.* folder).
set -uo pipefail

cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WORK=${WORK:-$(mktemp -d /tmp/detr-ft-gpu-check.XXXXXX)}
if [[ -n "$(ls -A "$WORK" 2>/dev/null)" ]]; then  # an entry run into an existing output folder resumes it
    echo "WORK=$WORK is not empty: give a new folder" >&2
    exit 2
fi
# On the CPU (--tiny) the compiled paths use backends that compile there in seconds: for the recipe dynamo's
# cudagraphs backend (AOTAutograd and CUDA graph trees, which leave CPU graphs uncaptured), so that its CUDA-graph
# handling (the stable gradient buffers) runs; for the step's paths aot_eager.
if [[ "${1:-}" == "--tiny" ]]; then
    TINY=1 DEVICE=cpu SIZE=64 STEPS=6 BATCH=4 BATCHES="2 4" WORKERS=2 COMPILE_BACKEND=aot_eager
    RECIPE_BACKEND=cudagraphs CAPTURE_OR_ERROR=0 DEVICE_FLAGS=(--device cpu) DEFAULT_CHECKS="1 2 3 4 5"
else  # 8 loader workers: augmenting 800 px images must keep up with a compiled bf16 model
    TINY=0 DEVICE=cuda SIZE=800 STEPS=30 BATCH=8 BATCHES="8 16" WORKERS=8 COMPILE_BACKEND=inductor
    RECIPE_BACKEND=inductor CAPTURE_OR_ERROR=1 DEVICE_FLAGS=(--device cuda) DEFAULT_CHECKS="1 2 3"
fi
STEP_BUDGET_S=${STEP_BUDGET_S:-200}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
echo "work dir: $WORK"

FAILED=()
want() {  # want STEP: whether $CHECKS (default $DEFAULT_CHECKS) names this step
    [[ " ${CHECKS:-$DEFAULT_CHECKS} " == *" $1 "* ]]
}
failed() {  # failed STEP: note a step that failed (once, however many of its parts did) and go on with the next
    echo "!! step $1 failed"
    [[ " ${FAILED[*]} " == *" $1 "* ]] || FAILED+=("$1")
}

if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install --no-deps --no-index -q .whl/*.whl || exit 1
fi
"$PY" - "$DEVICE" <<'EOF' || exit 1
import importlib.util
import sys

import torch

missing = [m for m in ("transformers", "scipy", "albumentations", "faster_coco_eval", "pytest", "safetensors")
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing Python packages: {', '.join(missing)}: carry their wheels in .whl/ (pip download on a "
             "machine with internet) and rerun")
if sys.argv[1] == "cuda" and not torch.cuda.is_available():
    sys.exit("no CUDA device visible (check CUDA_VISIBLE_DEVICES); --tiny runs the check on CPU")
import transformers

name = torch.cuda.get_device_name() if sys.argv[1] == "cuda" else "cpu"
print(f"torch {torch.__version__}, transformers {transformers.__version__}, device: {name}")
EOF

if want 1; then
    echo "== 1. equivalence tests on $DEVICE"
    DETR_FT_TEST_DEVICE=$DEVICE "$PY" -m pytest tests/test_loss_equivalence.py tests/test_buckets_equivalence.py -q \
        -p no:cacheprovider || failed 1
fi

echo "== data and a random DETR-R50-sized model"
"$PY" - "$WORK" "$SIZE" "$TINY" <<'EOF'
import sys
from pathlib import Path

from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

from bench.workload import RESNET50
from detr_ft.data.synthetic import write_synthetic_coco

work, size, tiny = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
write_synthetic_coco(work / "data", num_train=256, num_validation=16, image_size=size, seed=0)
if tiny:
    backbone = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], out_features=["stage2"])
    sizes = {"d_model": 32, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "encoder_attention_heads": 2,
             "decoder_attention_heads": 2, "encoder_layers": 1, "decoder_layers": 2, "num_queries": 10}
else:  # ResNet-50 and DETR's defaults: d_model 256, 6 + 6 layers, 100 queries (41.5 M parameters)
    backbone = ResNetConfig(**RESNET50)
    sizes = {}
config = DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False, backbone=None, backbone_config=backbone,
                    num_labels=3, **sizes)
DetrForObjectDetection(config).save_pretrained(work / "model")
EOF
[[ -f "$WORK/model/config.json" ]] || exit 1

run() {  # run NAME [RECIPE.json] FLAGS...: one entry run into $WORK/NAME, a recipe's flags first
    local name=$1 recipe=()
    shift
    if [[ "${1:-}" == *.json ]]; then
        recipe=("$1")
        shift
    fi
    echo "== run $name: ${recipe[*]} $*"
    "$PY" run_object_detection.py "${recipe[@]}" --model_name_or_path "$WORK/model" --dataset_dir "$WORK/data" \
        --output_dir "$WORK/$name" --image_size "$SIZE" --per_device_train_batch_size "$BATCH" \
        --per_device_eval_batch_size "$BATCH" --logging_steps 1 --report_to none --seed 0 --audit_host_syncs \
        --dataloader_num_workers "$WORKERS" "${DEVICE_FLAGS[@]}" "$@" > "$WORK/$name.log" 2>&1 \
        || { tail -n 40 "$WORK/$name.log"; return 1; }
}

if want 2; then
    echo "== 2. the recommended GPU recipe through the entry, $STEPS steps of 2 accumulated batches"
    TORCHINDUCTOR_CUDAGRAPH_OR_ERROR=$CAPTURE_OR_ERROR run recipe recipes/cppe5-r50-cuda.json --image_buckets 1 \
        --gradient_accumulation_steps 2 --max_steps "$STEPS" --torch_compile_backend "$RECIPE_BACKEND" || failed 2
    "$PY" - "$WORK/recipe/run_summary.json" <<'EOF' || failed 2
import json
import math
import sys

summary = json.loads(open(sys.argv[1]).read())
graphs = summary["graph_compilations"].get("torch_compile", 0)
expected = len(summary["image_canvases"]) + 2 * len(summary["buckets"])  # forward per canvas, criterion per bucket
print(f"recipe run: {summary['steps']} steps, {graphs} graphs compiled (a canvas and a bucket: {expected}), "
      f"host syncs per step {summary['host_syncs_per_step']}, steady images/s {summary['steady_samples_per_second']}, "
      f"loss {summary['train_loss']:.4f}")
sys.exit(0 if graphs == expected and math.isfinite(summary["train_loss"]) else 1)
EOF
fi

if want 3; then
    echo "== 3. the step's paths on $DEVICE at $SIZE px, batch $BATCHES, budget ${STEP_BUDGET_S} s"
    TINY_FLAGS=()
    (( TINY )) && TINY_FLAGS=(--resnet50 false --warmup_steps 2 --timed_steps 3 --profiled_steps 1)
    # shellcheck disable=SC2086
    "$PY" -m bench.accelerator_step --device "$DEVICE" --image_size "$SIZE" --batch_sizes $BATCHES \
        --paths stock eager eager_channels_last captured compiled --compile_backend "$COMPILE_BACKEND" \
        --data_dir "$WORK/data" --loader_workers "$WORKERS" --budget_s "$STEP_BUDGET_S" \
        --output "$WORK/step_paths.json" "${TINY_FLAGS[@]}" || failed 3
fi

if want 4; then
    echo "== 4. two deterministic runs"
    DETERMINISTIC=(--pad_images --pad_objects --num_buckets 1 --deterministic --max_steps 10)
    run deterministic_a "${DETERMINISTIC[@]}" || failed 4
    run deterministic_b "${DETERMINISTIC[@]}" || failed 4
fi

if want 5; then
    echo "== 5. the image paths' eager images/s on $DEVICE at $SIZE px, the bench's batch of 4"
    "$PY" - "$DEVICE" "$TINY" "$SIZE" <<'EOF' | tee "$WORK/canvas_eager.json"
import json
import sys
from dataclasses import replace

from bench.run_bench import FULL, QUICK, eager_epoch

device, tiny, size = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
sizes = QUICK if tiny else FULL
workload = replace(sizes.workload, image_size=size, resnet50=not tiny)
paths = eager_epoch(workload, sizes.eager_every, sizes.eager_chunks, device=device)
for path, measured in paths.items():
    measured["vs_stock"] = measured["images_per_s"] / paths["stock"]["images_per_s"]
    measured["vs_square"] = measured["images_per_s"] / paths["ours"]["images_per_s"]
print(json.dumps(paths))
EOF
    (( PIPESTATUS[0] == 0 )) || failed 5
fi

want 4 && DETERMINISTIC_RUNS=1 || DETERMINISTIC_RUNS=0
"$PY" - "$WORK" "$DETERMINISTIC_RUNS" <<'EOF' || failed 4
import json
import sys
from pathlib import Path

from safetensors.torch import load_file

work = Path(sys.argv[1])


def step_logs(run: str) -> list[tuple]:
    state = json.loads(sorted((work / run).glob("checkpoint-*/trainer_state.json"))[-1].read_text())
    return [(log["step"], log["loss"], log.get("grad_norm")) for log in state["log_history"] if "loss" in log]


print(f"\n{'run':<16} {'precision':<14} {'img/s steady':>12} {'img/s all':>10} {'syncs/step':>10} "
      f"{'compilations':>14} {'final loss':>10}")
for run in ("recipe", "deterministic_a"):
    if not (work / run / "run_summary.json").exists():
        print(f"{run:<16} (not run, or did not finish)")
        continue
    summary = json.loads((work / run / "run_summary.json").read_text())
    compilations = ", ".join(f"{k} {v}" for k, v in summary["graph_compilations"].items()) or "-"
    print(f"{run:<16} {summary['precision']:<14} {summary['steady_samples_per_second'] or float('nan'):>12.2f} "
          f"{summary['train_samples_per_second']:>10.2f} {summary['host_syncs_per_step']:>10} {compilations:>14} "
          f"{summary['train_loss']:>10.4f}")

if (work / "step_paths.json").exists():
    from bench.accelerator_step import format_table

    print("\n" + format_table(json.loads((work / "step_paths.json").read_text())))

if (work / "canvas_eager.json").exists() and (work / "canvas_eager.json").stat().st_size:
    print(f"\n{'image path':<10} {'padded px':>9} {'shapes':>6} {'img/s':>8} {'vs stock':>8} {'vs square':>9}")
    for path, measured in json.loads((work / "canvas_eager.json").read_text()).items():
        print(f"{path:<10} {measured['padded_pixel_fraction']:>9.3f} {measured['image_shapes']:>6} "
              f"{measured['images_per_s']:>8.2f} {measured['vs_stock']:>7.2f}x {measured['vs_square']:>8.2f}x")

if sys.argv[2] == "0":  # step 4 not run
    sys.exit(0)
a, b = load_file(work / "deterministic_a" / "model.safetensors"), load_file(work / "deterministic_b" / "model.safetensors")
same_weights = a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
same_logs = step_logs("deterministic_a") == step_logs("deterministic_b")
print(f"\ndeterministic runs: losses and grad norms {'identical' if same_logs else 'DIFFER'}, "
      f"final weights {'identical' if same_weights else 'DIFFER'}")
sys.exit(0 if same_weights and same_logs else 1)
EOF

if (( ${#FAILED[@]} )); then
    echo "FAILED steps: ${FAILED[*]}"
    exit 1
fi
echo "all steps passed"
