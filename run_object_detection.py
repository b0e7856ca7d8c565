#!/usr/bin/env python
"""Fine-tune DETR on CPPE-5 or any COCO-format folder, with static shapes on HPU, CUDA or CPU.

    python run_object_detection.py --dataset_dir data/synthetic --model_name_or_path detr-tiny \\
        --pad_images --image_size 64 --pad_objects --num_buckets 1 --output_dir outputs/demo

mAP is evaluated at every checkpoint interval (`--ckpt_store_interval_epochs`) into eval_history.json.
"""

import logging
import sys

from detr_ft.console import setup_logging
from detr_ft.train.arguments import parse_arguments
from detr_ft.train.devices import DeviceSettingsError, check_device_settings


def main(argv: list[str] | None = None) -> int:
    model_args, data_args, shape_args, device_args, training_args = parse_arguments(argv)
    setup_logging()
    try:
        device_type = check_device_settings(device_args)
    except DeviceSettingsError as error:
        logging.error("%s", error)
        return 2
    # Imported after the device check: HPU lazy/eager mode is fixed when habana_frameworks is first imported.
    from transformers import set_seed

    from detr_ft.data.dataset import PaddedToMultiple
    from detr_ft.data.images import Preprocessing
    from detr_ft.data.prepare import prepare_data, warn_queries_overflow
    from detr_ft.data.validation import DatasetError
    from detr_ft.evaluation.loop import EVAL_IGNORE_KEYS, CocoMetrics, preprocess_logits_for_metrics
    from detr_ft.evaluation.report import format_map_table
    from detr_ft.model.build import build_model
    from detr_ft.model.presets import default_image_size, is_preset
    from detr_ft.model.static_shapes import use_static_shape_loss
    from detr_ft.run_files import save_run_arguments
    from detr_ft.train.arguments import finalize_training_arguments
    from detr_ft.train.checkpoints import CheckpointCompleteCallback, resume_checkpoint
    from detr_ft.train.devices import build_trainer, training_arguments
    from detr_ft.train.map_history import MapHistoryCallback, read_history
    from detr_ft.train.nonfinite_guard import NonFiniteLossError, NonFiniteLossGuard
    from detr_ft.train.optimizer import adamw_class, build_optimizer
    from detr_ft.train.run_summary import RunSummaryCallback, precision_name
    from patches import trainer_resume_weights

    # Before the model is built: torch seeds itself randomly per process, so an unseeded init differs run to run.
    set_seed(training_args.seed, deterministic=shape_args.deterministic or training_args.full_determinism)
    data_args.image_size = data_args.image_size or default_image_size(model_args.model_name_or_path)
    try:
        data = prepare_data(data_args, shape_args)
    except DatasetError as error:
        logging.error("%s", error)
        return 2
    preprocessing = Preprocessing(data_args.image_size, shape_args.pad_images,
                                  tuple(data.canvases) if shape_args.image_buckets > 1 else ())
    save_run_arguments(training_args.output_dir, model_args, data_args, shape_args, device_args,
                       per_device_eval_batch_size=training_args.per_device_eval_batch_size)
    model = build_model(model_args.model_name_or_path, data.classes.id2label, model_args.model_revision,
                        model_args.freeze_backbone)
    warn_queries_overflow(data, model.config.num_queries)
    if data.bucket_sizes:
        use_static_shape_loss(model)
    callbacks = [MapHistoryCallback(training_args.output_dir), CheckpointCompleteCallback()]
    if shape_args.check_finite_loss:
        guard = NonFiniteLossGuard(training_args.output_dir, shape_args.skip_nonfinite_batches, data.train_image_names)
        guard.install(model)
        callbacks.append(guard)  # before RunSummaryCallback: its host-sync count includes the guard's read
    training_args = finalize_training_arguments(training_args, shape_args, data.images_per_canvas())
    training_args = training_arguments(device_type, device_args, training_args)
    model.to(training_args.device)
    pretrained = not is_preset(model_args.model_name_or_path)
    backbone_lr = model_args.backbone_lr or (1e-5 if pretrained else training_args.learning_rate)
    optimizer = build_optimizer(model, training_args.learning_rate, backbone_lr, training_args.weight_decay,
                                adamw_class(training_args))
    eval_multiple = training_args.per_device_eval_batch_size * training_args.world_size
    trainer = build_trainer(
        device_args, training_args,
        model=model,
        train_dataset=data.train,
        eval_dataset=PaddedToMultiple(data.eval, eval_multiple),
        data_collator=data.collator(),
        processing_class=preprocessing.image_processor(),
        compute_metrics=CocoMetrics(data.eval_split, data.classes),
        preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        optimizers=(optimizer, None),
        callbacks=[*callbacks,
                   RunSummaryCallback(training_args.output_dir, device_type, data.bucket_sizes, data_args.image_size,
                                      precision_name(training_args), data.canvases, data.padded_pixel_fraction)],
        train_sampler=data.train_sampler(training_args.per_device_train_batch_size * training_args.world_size,
                                         training_args.seed if training_args.data_seed is None
                                         else training_args.data_seed),
    )
    trainer_resume_weights.patch_trainer(trainer)
    try:
        trainer.train(resume_from_checkpoint=resume_checkpoint(training_args), ignore_keys_for_eval=EVAL_IGNORE_KEYS)
    except NonFiniteLossError as error:
        logging.error("%s", error)
        return 3
    trainer.save_model()
    print(format_map_table(read_history(training_args.output_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
