"""`make bench`: the stock DETR fine-tuning path against ours (static shapes), on the same model and data; and
scripts/gpu_check.sh's measure of the step's paths on an accelerator (accelerator_step.py)."""
