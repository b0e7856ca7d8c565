"""Model: the detector to fine-tune and the criterion that trains it (`loss, terms = criterion(model(x), labels)`).

    families.py    the registry: each supported model_type's classes, criterion, init, post-processing and recipe
    presets/, presets.py  small DETR-family configs trained from scratch (demo, tests)
    build.py       build or load the model; what trains and how it is initialised
    box_ops.py     box formats and generalized IoU
    box_terms.py   what every family's criterion shares: L1 / GIoU costs and losses, the box count, the layer sum
    matcher.py     Hungarian matching of queries to padded targets (DETR's softmax cost; the one host copy)
    criterion.py   DETR's criterion on padded targets, and transformers' own loss for unpadded ones
    focal_criterion.py  Conditional / Deformable DETR's criterion on padded targets (sigmoid focal class term)
    scratch_init.py     Conditional / Deformable DETR's own initialisation for training from scratch
    postprocess.py detections from the final layer's predictions: DETR's softmax, the others' sigmoid top k
    outputs.py     DetectionOutput: the label-free forward's predictions, every decoder layer's stacked
"""
