"""detr-ft: fine-tune DETR object detectors with static shapes on HPU, CUDA and CPU."""
