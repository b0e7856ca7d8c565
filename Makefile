# detr-ft: every target creates the virtual environment it needs on first use (only python3 is required).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
GAUDI_VENV := .venv-gaudi
GAUDI_PY := $(GAUDI_VENV)/bin/python
DATA := data/synthetic
OUTDIR ?= outputs/cppe5
PYTEST_ARGS ?=

.PHONY: venv venv-gaudi data demo train eval-all-checkpoints infer test test-main test-gaudi bench lint clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: the CPU build; any looser spec lets pip pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	touch $@

venv: $(VENV)/.installed

$(DATA)/annotations/train.json: | $(VENV)/.installed
	$(PY) -m detr_ft.synthetic --output_dir $(DATA)

data: $(DATA)/annotations/train.json

demo: $(VENV)/.installed
	$(PY) -m detr_ft.demo

# Fine-tune facebook/detr-resnet-50 on CPPE-5 (needs the hub), with the recommended static shapes.
train: $(VENV)/.installed
	$(PY) run_object_detection.py --output_dir $(OUTDIR) --dataset_name cppe-5 \
		--pad_images --image_size 800 --pad_objects --num_buckets 1 \
		--num_train_epochs 100 --ckpt_store_interval_epochs 10 $(ARGS)

test-main: $(VENV)/.installed
	$(PY) -m pytest tests --ignore=tests/gaudi -q $(PYTEST_ARGS)

test: test-main

lint: $(VENV)/.installed
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) $(GAUDI_VENV) data outputs .pytest_cache .ruff_cache
