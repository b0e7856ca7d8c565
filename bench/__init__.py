"""`make bench`: the stock DETR fine-tuning path against ours (static shapes), on the same model and data."""
