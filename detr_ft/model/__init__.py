"""Model: the detector to fine-tune and the criterion that trains it (`loss, terms = criterion(model(x), labels)`).

    presets/, presets.py  small DETR-family configs trained from scratch (demo, tests)
    build.py       build or load the detector; what trains and how it is initialised
    outputs.py     DetectionOutput: the label-free forward's predictions, every decoder layer's stacked
    box_ops.py     box formats and generalized IoU
    matcher.py     Hungarian matching of queries to padded targets: the one host read
    criterion.py   DETR's criterion on padded targets, and transformers' own loss behind the same interface
    box_terms.py   the L1 and GIoU matching costs and losses every DETR family shares
    focal_criterion.py  Conditional / Deformable DETR's criterion on padded targets (sigmoid focal class term)
    scratch_init.py     Conditional / Deformable DETR's own initialisation for training from scratch
"""
