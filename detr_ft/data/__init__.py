"""Data: COCO folders and hub splits -> validated splits -> model samples -> static-shape batches.

    sources.py     read a COCO folder or a hub dataset into a `CocoSplit`; carve a validation split
    validation.py  refuse what has no safe fix, fix and count the rest; the rules for boxes
    size_repair.py an image whose json width x height is not its own, repaired by what its boxes say
    labels.py      the one category id <-> model label <-> name mapping
    images.py      RGB conversion, EXIF orientation, resize and normalisation (the preprocessing; on the device
                   for 8-bit batches)
    augmentation.py  training augmentation
    dataset.py     `DetectionDataset`: pixels and normalised boxes per image
    padding.py     where padding happens: images to one canvas, targets to bucket sizes (the collator)
    loader_workers.py  data loader workers: how many, started from a forkserver, ending with the trainer
    prepare.py     all of the above for one training run
    synthetic.py   deterministic synthetic shapes (demo, tests)
    cppe5_download.py  `make cppe5`: the original CPPE-5 release unpacked as a COCO folder
"""
