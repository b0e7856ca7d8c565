#!/usr/bin/env bash
# CUDA acceptance check, for a GPU machine that has python3 with torch (CUDA) but no internet and no project venv.
#
#   scripts/gpu_check.sh          # on the GPU machine, from anywhere; steps 1-4 and 6: about 8 minutes on one H200
#   scripts/gpu_check.sh --tiny   # CPU smoke test of the same steps with a tiny model (no GPU needed)
#   CHECKS="1 6" scripts/gpu_check.sh   # only these steps (default: all six)
#
# Wheels for what the GPU machine lacks, fetched where there is internet (here for Python 3.12; the machine's own
# numpy, scipy and opencv stay):
#   pip download --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 \
#       --platform manylinux_2_28_x86_64 -d .whl transformers==5.24.0 albumentations faster-coco-eval pycocotools
#   rm .whl/numpy-* .whl/scipy-* .whl/opencv_python_headless-*
#
# 1. the padded-loss equivalence tests on cuda (tests/test_loss_equivalence.py, DETR_FT_TEST_DEVICE=cuda);
# 2. two --deterministic runs of the entry (static shapes, fp32, eager), compared bit for bit (losses, gradient norms,
#    final weights); the table shows the first one's speed, the price of determinism;
# 3. a benchmark of a randomly initialised DETR-R50-sized model at 800 px: the stock path (fp32, variable shapes,
#    transformers' loss) against static shapes (--pad_images --pad_objects --num_buckets 1) + --bf16 + --torch_compile;
#    images/s, host syncs per step and graph compilations come from each run's run_summary.json.
# 4. matcher ms per step at DETR-R50 shapes on $DEVICE: scipy against the exact device matcher, eager and compiled
#    (bench/run_bench.py's device_matcher_ms_per_step): the numbers that settle `--matcher auto` there.
# 5. training step ms per matcher at the same shapes (bench/run_bench.py's matcher_step_ms: forward without labels,
#    loss from its outputs, backward), plus the device matcher's step with the forward under torch.compile(mode=
#    "reduce-overhead", fullgraph=True): CUDA graphs, to compare with device_compiled (the same step, forward eager).
# 6. issue 14's image paths on $DEVICE: eager images/s of stock, the square and K = 2, 3 canvases on the bench's
#    CPPE-5-shaped epoch at 800 px with ResNet-50 itself (bench/run_bench.py's eager_epoch).
# Ends with a table. A step that fails is named and the others still run (device time is scarce); the exit status
# says whether all passed. It installs nothing, except wheels carried in .whl/ (pip install --no-deps --no-index),
# and writes only under $WORK (default: a new /tmp/detr-ft-gpu-check.* folder).
set -uo pipefail

cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WORK=${WORK:-$(mktemp -d /tmp/detr-ft-gpu-check.XXXXXX)}
if [[ -n "$(ls -A "$WORK" 2>/dev/null)" ]]; then  # an entry run into an existing output folder resumes it
    echo "WORK=$WORK is not empty: give a new folder" >&2
    exit 2
fi
if [[ "${1:-}" == "--tiny" ]]; then
    TINY=1 DEVICE=cpu SIZE=64 STEPS=6 BATCH=4 WORKERS=2 COMPILE_BACKEND=eager DEVICE_FLAGS=(--device cpu --use_cpu)
    MATCHER_SHAPE="2, 2, 20, 8"
else  # 8 loader workers: augmenting 800 px images must keep up with a compiled bf16 model
    TINY=0 DEVICE=cuda SIZE=800 STEPS=60 BATCH=8 WORKERS=8 COMPILE_BACKEND=inductor DEVICE_FLAGS=(--device cuda)
    MATCHER_SHAPE="6, 8, 100, 60"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
echo "work dir: $WORK"

FAILED=()
want() {  # want STEP: whether $CHECKS (default all) names this step
    [[ " ${CHECKS:-1 2 3 4 5 6} " == *" $1 "* ]]
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
    echo "== 1. loss equivalence on $DEVICE"
    DETR_FT_TEST_DEVICE=$DEVICE "$PY" -m pytest tests/test_loss_equivalence.py -q -p no:cacheprovider || failed 1
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

run() {  # run NAME FLAGS...: one entry run into $WORK/NAME
    local name=$1
    shift
    echo "== run $name: $*"
    "$PY" run_object_detection.py --model_name_or_path "$WORK/model" --dataset_dir "$WORK/data" \
        --output_dir "$WORK/$name" --image_size "$SIZE" --per_device_train_batch_size "$BATCH" \
        --per_device_eval_batch_size "$BATCH" --logging_steps 1 --report_to none --seed 0 --audit_host_syncs \
        --dataloader_num_workers "$WORKERS" "${DEVICE_FLAGS[@]}" "$@" > "$WORK/$name.log" 2>&1 \
        || { tail -n 40 "$WORK/$name.log"; return 1; }
}

if want 2; then
    echo "== 2. two deterministic runs"
    DETERMINISTIC=(--pad_images --pad_objects --num_buckets 1 --deterministic --max_steps 10)
    run deterministic_a "${DETERMINISTIC[@]}" || failed 2
    run deterministic_b "${DETERMINISTIC[@]}" || failed 2
fi

if want 3; then
    echo "== 3. benchmark, $STEPS steps each"
    run stock --num_buckets 0 --max_steps "$STEPS" || failed 3
    run static_bf16_compiled --pad_images --pad_objects --num_buckets 1 --bf16 --torch_compile \
        --torch_compile_backend "$COMPILE_BACKEND" --max_steps "$STEPS" || failed 3
fi

if want 4; then
    echo "== 4. matcher ms per step on $DEVICE"
    "$PY" -c "import json; from bench.run_bench import device_matcher_ms_per_step as m; \
print(json.dumps(m(($MATCHER_SHAPE), 5, '$COMPILE_BACKEND', 0, '$DEVICE')))" | tee "$WORK/matcher.json" || failed 4
fi

if want 5; then
    echo "== 5. training step per matcher on $DEVICE, and the device matcher's step with the forward captured"
    "$PY" - "$DEVICE" "$TINY" "$COMPILE_BACKEND" <<'EOF' | tee "$WORK/matcher_step.json"
import json
import sys
from dataclasses import replace

from bench.run_bench import FULL, QUICK, matcher_step_ms

device, tiny, backend = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
sizes = QUICK if tiny else FULL
_, batch_size, _, target_slots = sizes.matcher_shape
# CUDA graphs on the GPU; on the CPU (--tiny) a backend that compiles there in seconds
captured = {"backend": "aot_eager", "fullgraph": True} if tiny else {"mode": "reduce-overhead", "fullgraph": True}
print(json.dumps(matcher_step_ms(replace(sizes.workload, batch_size=batch_size), target_slots, 5, backend, device,
                                 captured)))
EOF
    (( PIPESTATUS[0] == 0 )) || failed 5
fi

if want 6; then
    echo "== 6. the image paths' eager images/s on $DEVICE at $SIZE px, the bench's batch of 4 (issue 14)"
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
    (( PIPESTATUS[0] == 0 )) || failed 6
fi

want 2 && DETERMINISTIC_RUNS=1 || DETERMINISTIC_RUNS=0
"$PY" - "$WORK" "$DETERMINISTIC_RUNS" <<'EOF' || failed 2
import json
import sys
from pathlib import Path

from safetensors.torch import load_file

work = Path(sys.argv[1])


def step_logs(run: str) -> list[tuple]:
    state = json.loads(sorted((work / run).glob("checkpoint-*/trainer_state.json"))[-1].read_text())
    return [(log["step"], log["loss"], log.get("grad_norm")) for log in state["log_history"] if "loss" in log]


print(f"\n{'run':<22} {'precision':<14} {'img/s steady':>12} {'img/s all':>10} {'syncs/step':>10} "
      f"{'compilations':>14} {'final loss':>10}")
for run in ("stock", "static_bf16_compiled", "deterministic_a"):
    if not (work / run / "run_summary.json").exists():
        print(f"{run:<22} (did not finish)")
        continue
    summary = json.loads((work / run / "run_summary.json").read_text())
    compilations = ", ".join(f"{k} {v}" for k, v in summary["graph_compilations"].items()) or "-"
    print(f"{run:<22} {summary['precision']:<14} {summary['steady_samples_per_second'] or float('nan'):>12.2f} "
          f"{summary['train_samples_per_second']:>10.2f} {summary['host_syncs_per_step']:>10} {compilations:>14} "
          f"{step_logs(run)[-1][1]:>10.4f}")

if (work / "canvas_eager.json").exists() and (work / "canvas_eager.json").stat().st_size:
    print(f"\n{'image path':<10} {'padded px':>9} {'shapes':>6} {'img/s':>8} {'vs stock':>8} {'vs square':>9}")
    for path, measured in json.loads((work / "canvas_eager.json").read_text()).items():
        print(f"{path:<10} {measured['padded_pixel_fraction']:>9.3f} {measured['image_shapes']:>6} "
              f"{measured['images_per_s']:>8.2f} {measured['vs_stock']:>7.2f}x {measured['vs_square']:>8.2f}x")

if sys.argv[2] == "0":  # step 2 not run
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
