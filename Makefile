# detr-ft: every target creates the virtual environment it needs on first use (only python3 is required).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
GAUDI_VENV := .venv-gaudi
GAUDI_PY := $(GAUDI_VENV)/bin/python
DATA := data/synthetic
OUTDIR ?= outputs/cppe5
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: venv venv-gaudi data cppe5 demo demo-canvases demo-families train train-hpu train-hpu-hf eval-all-checkpoints \
	infer test test-main test-gaudi test-fast bench bench-canvas lint clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: the CPU build; any looser spec lets pip pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	touch $@

venv: $(VENV)/.installed

# optimum-habana 1.21.2 pins transformers 4.55.x and accelerate <= 1.10.1: its own venv. On a Gaudi host use
# Habana's PyTorch container and install requirements-gaudi.txt without its torch line.
$(GAUDI_VENV)/.installed: requirements-gaudi.txt
	$(PYTHON) -m venv $(GAUDI_VENV)
	$(GAUDI_PY) -m pip install -q torch==2.13.0
	$(GAUDI_PY) -m pip install -q -r requirements-gaudi.txt
	touch $@

venv-gaudi: $(GAUDI_VENV)/.installed

$(DATA)/annotations/train.json: | $(VENV)/.installed
	$(PY) -m detr_ft.data.make_synthetic --output_dir $(DATA)

data: $(DATA)/annotations/train.json

# The original CPPE-5 release (COCO json + images, MD5-checked) in the --dataset_dir layout, for when the hub's
# `cppe-5` loading script cannot run (datasets >= 4) or the hub is out of reach: train with --dataset_dir $(CPPE5_DIR).
# ARGS="--url PATH_OR_URL --checksum ALGO:HEX": another copy of the archive (e.g. one fetched on another machine).
CPPE5_DIR ?= data/cppe5
$(CPPE5_DIR)/annotations/train.json: | $(VENV)/.installed
	$(PY) -m detr_ft.data.cppe5_download --output_dir $(CPPE5_DIR) $(ARGS)

cppe5: $(CPPE5_DIR)/annotations/train.json

demo: $(VENV)/.installed
	$(PY) -m detr_ft.demo

demo-canvases: $(VENV)/.installed
	$(PY) -m detr_ft.demo canvases

# DETR, Conditional DETR and Deformable DETR tiny presets, the same recipe and steps, on synthetic shapes and on the
# CPPE-5 test split in ../shared (docs/families.md): mAP at each evaluation and seconds per step.
demo-families: $(VENV)/.installed
	$(PY) -m detr_ft.demo families

# Stock path against ours on a DETR-R50-shaped random model (CPU): host syncs (on both stacks: the Gaudi one in
# $(GAUDI_VENV)), compilations, compile warm-up, eager steps/s, matcher and mAP-evaluation time. Prints a table,
# writes bench/results.json (gitignored). BENCH_ARGS=--quick: a smoke run of every measure at toy sizes.
bench: $(VENV)/.installed $(GAUDI_VENV)/.installed
	$(PY) -m bench.run_bench --gaudi_python $(GAUDI_PY) $(BENCH_ARGS)

# Only the image paths on CPPE-5's shapes (stock, square, --image_buckets 2 and 3): padded pixels, eager images/s,
# graphs and compile warm-up over the epoch, the loader's images/s (a few minutes on 2 cores; make bench runs it too).
bench-canvas: $(VENV)/.installed
	$(PY) -m bench.run_bench --only canvas --output bench/results_canvas.json $(BENCH_ARGS)

# Fine-tune facebook/detr-resnet-50 on CPPE-5 (needs the hub) with a recipe of recipes/ (static shapes);
# ARGS: more flags, overriding the recipe's (e.g. ARGS="--dataset_dir data/cppe5" after `make cppe5`).
RECIPE ?= recipes/cppe5-r50.json
train: $(VENV)/.installed
	$(PY) run_object_detection.py $(RECIPE) --output_dir $(OUTDIR) $(ARGS)

# Fine-tune on Gaudi (HPU), one target per trainer stack (docs/gaudi.md: which to use, set-up, what is unverified).
# They run on a Gaudi host inside Intel's PyTorch container, whose python and Habana torch build they use (HPU_RUN),
# not this project's venvs (CPU torch): train-hpu is optimum-habana's GaudiTrainer (requirements-gaudi.txt without its
# torch line), train-hpu-hf transformers 5's own Trainer (requirements.txt). Multi-card: HPU_RUN="torchrun
# --nproc_per_node 8". ARGS: more flags, overriding the recipe's.
HPU_RUN ?= python3
train-hpu:
	$(HPU_RUN) run_object_detection.py recipes/cppe5-r50-hpu.json --output_dir $(OUTDIR) $(ARGS)

train-hpu-hf:
	$(HPU_RUN) run_object_detection.py recipes/cppe5-r50-hpu-hf.json --output_dir $(OUTDIR) $(ARGS)

# mAP of every complete checkpoint of OUTDIR on the run's eval split (ARGS="--split test", ARGS=--redo):
# checkpoint_metrics.csv/.json (best checkpoint named) and map_vs_epoch.png, written into OUTDIR.
eval-all-checkpoints: $(VENV)/.installed
	$(PY) -m detr_ft.evaluation.eval_checkpoints --run_dir $(OUTDIR) $(ARGS)

# Detections of MODEL (default: OUTDIR's final model; or one of its checkpoint-N folders) on the run's eval
# split, or on IMAGES=<folder>: predictions.json (COCO results), annotated/, metrics.json, in INFER_DIR.
MODEL ?= $(OUTDIR)
INFER_DIR ?= $(OUTDIR)/inference
infer: $(VENV)/.installed
	$(PY) -m detr_ft.evaluation.inference --model_path $(MODEL) --output_dir $(INFER_DIR) \
		$(if $(IMAGES),--images_dir $(IMAGES)) $(ARGS)

# The Gaudi venv too: the bench test runs make bench's Gaudi-stack sync count in it (skipped without it).
test-main: $(VENV)/.installed $(GAUDI_VENV)/.installed
	$(PY) -m pytest tests --ignore=tests/gaudi -q $(PYTEST_ARGS)

# The Gaudi code path through the real optimum-habana GaudiTrainer, on CPU (tests/habana_stub stands in for
# the habana_frameworks that only Gaudi hosts have).
test-gaudi: $(GAUDI_VENV)/.installed
	$(GAUDI_PY) -m pytest tests/gaudi -q $(PYTEST_ARGS)

test: test-main test-gaudi

# The edit-test loop: the main suite without the tests marked slow (entry runs, the convergence run, DDP, resume,
# the compiling bench; setup.cfg lists the marker). `make test` (CI) runs everything.
test-fast: $(VENV)/.installed
	$(PY) -m pytest tests --ignore=tests/gaudi -q -m "not slow" $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) $(GAUDI_VENV) data outputs .pytest_cache .ruff_cache
