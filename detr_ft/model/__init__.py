"""Model: the DETR to fine-tune and the static-shape loss that trains it.

    presets/, presets.py  small DETR-family configs trained from scratch (demo, tests)
    build.py       build or load the DETR; what trains and how it is initialised
    box_ops.py     box formats and generalized IoU
    matcher.py     Hungarian matching of queries to padded targets
    loss.py        where the loss is: DETR's set-prediction loss on padded targets
    outputs.py     DetectionOutput: the label-free forward's predictions, every decoder layer's stacked
    box_terms.py   the L1 and GIoU matching costs and losses every DETR family shares
    focal_criterion.py  Conditional / Deformable DETR's loss on padded targets (sigmoid focal class term)
    scratch_init.py     Conditional / Deformable DETR's own initialisation for training from scratch
    static_shapes.py  switch a model to that loss and to the sync-free forward patches
    pure_forward.py   the forward without the loss, and the loss from its outputs (two calls, not one)
"""
