"""Evaluation: COCO mAP of a model's detections, during training and afterwards.

    coco_map.py    COCO box mAP of detections (faster-coco-eval)
    coco_map_metric/     the same mAP as a Hugging Face `evaluate` module, loaded by path
    loop.py        mAP through the Trainer's own evaluation loop, static shapes, any number of processes
    saved_run.py   a saved model and the data of the run that trained it
    report.py      the mAP table a person reads
    model_card.py  README.md in a run's output folder: dataset, classes, recipe, mAP
    eval_checkpoints.py  command: mAP of every checkpoint of a run
    inference.py   command: detections, annotated images and COCO results of a model
"""
