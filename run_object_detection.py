#!/usr/bin/env python
"""Fine-tune DETR on CPPE-5 or any COCO-format folder, with static shapes on HPU, CUDA or CPU.

    python run_object_detection.py --dataset_dir data/synthetic --model_name_or_path detr-tiny \\
        --pad_images --image_size 64 --pad_objects --num_buckets 1 --output_dir outputs/demo

mAP is evaluated at every checkpoint interval (`--ckpt_store_interval_epochs`) into eval_history.json.
"""

import contextlib
import logging
import sys

from detr_ft.console import setup_logging
from detr_ft.train.arguments import device_arguments, parse_arguments, user_set_flags
from detr_ft.train.devices import DeviceSettingsError, check_device_settings
from detr_ft.train.flag_checks import FlagError, check_flags, static_shape_defaults

# TrainingArguments a run's checkpoints depend on, saved into run_args.json beside our own flags.
RUN_TRAINING_ARGUMENTS = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                          "learning_rate", "weight_decay", "optim")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    setup_logging()
    try:  # before TrainingArguments are built: building them fixes HPU lazy or eager mode (`device_arguments`)
        device_type = check_device_settings(device_arguments(argv))
    except DeviceSettingsError as error:
        logging.error("%s", error)
        return 2
    model_args, data_args, shape_args, device_args, training_args = parse_arguments(argv)
    user_set = user_set_flags(argv)
    try:
        check_flags(model_args, data_args, shape_args, device_args, training_args, user_set)
    except FlagError as error:
        logging.error("%s", error)
        return 2
    static_shape_defaults(shape_args, device_args, training_args, user_set)
    # Imported after the device check: HPU lazy/eager mode is fixed when habana_frameworks is first imported.
    from detr_ft.model.build import trained_from_scratch
    from detr_ft.model.presets import default_image_size
    from detr_ft.run_files import flat_run_arguments
    from detr_ft.train.run_folder import RunFolderError, check_same_run, lock_run_folder

    data_args.image_size = data_args.image_size or default_image_size(model_args.model_name_or_path)
    training_values = training_args.to_dict()  # enums (--optim) as their values
    run_arguments = flat_run_arguments(
        model_args, data_args, shape_args, device_args,
        **{name: training_values[name] for name in RUN_TRAINING_ARGUMENTS},
        from_scratch=trained_from_scratch(model_args.model_name_or_path),
    )
    try:  # before anything is written into the folder
        lock = lock_run_folder(training_args.output_dir)
        check_same_run(training_args.output_dir, run_arguments, training_args.overwrite_output_dir)
    except RunFolderError as error:
        logging.error("%s", error)
        return 2
    try:
        return train(device_type, run_arguments, model_args, data_args, shape_args, device_args, training_args)
    finally:
        if lock is not None:
            lock.close()


def train(device_type: str, run_arguments: dict, model_args, data_args, shape_args, device_args,
          training_args) -> int:
    """Everything after the flags are checked and the run folder is held."""
    from transformers import set_seed

    from detr_ft.data.dataset import PaddedToMultiple
    from detr_ft.data.images import Preprocessing
    from detr_ft.data.prepare import prepare_data, warn_queries_overflow
    from detr_ft.data.sources import DatasetError
    from detr_ft.evaluation.loop import (
        EVAL_IGNORE_KEYS,
        CocoMetrics,
        gather_image_index_as_labels,
        preprocess_logits_for_metrics,
    )
    from detr_ft.evaluation.report import format_map_table
    from detr_ft.launcher import launched_rank
    from detr_ft.model.build import build_model
    from detr_ft.model.device_matcher import DeviceMatcher, choose_matcher
    from detr_ft.model.static_shapes import use_static_shape_loss
    from detr_ft.run_files import save_run_arguments
    from detr_ft.train.arguments import finalize_training_arguments
    from detr_ft.train.checkpoints import CheckpointCompleteCallback, describe_write_failure, resume_checkpoint
    from detr_ft.train.ddp_buffers import BroadcastBuffersBeforeEvaluation
    from detr_ft.train.devices import build_trainer, compile_each_image_shape_once, training_arguments
    from detr_ft.train.flag_checks import check_batch_fits
    from detr_ft.train.map_history import MapHistoryCallback, read_history
    from detr_ft.train.nonfinite_guard import NonFiniteLossError, NonFiniteLossGuard
    from detr_ft.train.optimizer import (
        build_optimizer,
        describe_optimizer,
        describe_training,
        optimizer_class_and_kwargs,
    )
    from detr_ft.train.run_summary import RunSummaryCallback, precision_name
    from patches import apply_patches, apply_trainer_patches

    # Before the model is built: torch seeds itself randomly per process, so an unseeded init differs run to run.
    set_seed(training_args.seed, deterministic=shape_args.deterministic or training_args.full_determinism)
    try:
        data = prepare_data(data_args, shape_args)
    except DatasetError as error:
        logging.error("%s", error)
        return 2
    try:
        check_batch_fits(data.images_per_canvas(), training_args)
        model = build_model(model_args.model_name_or_path, data.classes.id2label, model_args.model_revision,
                            model_args.freeze_backbone)
    except (FlagError, OSError) as error:  # OSError: a model the hub or the disk cannot give
        logging.error("%s", error)
        return 2
    if launched_rank() == 0:  # one writer per launch, as for the run folder's lock
        save_run_arguments(training_args.output_dir, run_arguments)
    # The canvases ride along in the saved processor, so evaluation and inference pad as training did.
    preprocessing = Preprocessing(data_args.image_size, shape_args.pad_images,
                                  tuple(data.canvases) if shape_args.image_buckets > 1 else ())
    warn_queries_overflow(data, model.config.num_queries)
    matcher = choose_matcher(shape_args.matcher, device_type, shape_args.matcher_steps) if data.bucket_sizes else None
    if matcher is not None:
        use_static_shape_loss(model, matcher)
    callbacks = [MapHistoryCallback(training_args.output_dir), CheckpointCompleteCallback(),
                 BroadcastBuffersBeforeEvaluation()]
    guard = None
    if shape_args.check_finite_loss:
        guard = NonFiniteLossGuard(training_args.output_dir, shape_args.skip_nonfinite_batches, data.train_image_names)
        guard.install(model)
        callbacks.append(guard)  # before RunSummaryCallback: its host-sync count includes the guard's read
    training_args = finalize_training_arguments(training_args, shape_args, data.images_per_canvas())
    training_args = training_arguments(device_type, device_args, training_args)
    model.to(training_args.device)  # on Gaudi after adapt_transformers_to_gaudi(), which the device set-up runs
    from_scratch = run_arguments["from_scratch"]
    apply_patches(model, static_shapes=bool(data.bucket_sizes),
                  train_backbone_stages=not from_scratch and not model_args.freeze_backbone,
                  cpu_position_embedding=device_args.cpu_position_embedding)
    # After the patches (they choose the trainable parameters) and with the model on its device.
    backbone_lr = model_args.backbone_lr
    if backbone_lr is None:
        backbone_lr = training_args.learning_rate if from_scratch else 1e-5
    optimizer_class, optimizer_kwargs = optimizer_class_and_kwargs(training_args)
    optimizer = build_optimizer(model, training_args.learning_rate, backbone_lr, training_args.weight_decay,
                                optimizer_class, optimizer_kwargs)
    logging.getLogger("detr_ft").info("what trains, stepped by %s:\n  %s",
                                      describe_optimizer(optimizer_class, optimizer_kwargs),
                                      "\n  ".join(describe_training(model, optimizer)))
    eval_multiple = training_args.per_device_eval_batch_size * training_args.world_size
    run_summary = RunSummaryCallback(training_args.output_dir, device_type, data.bucket_sizes, data_args.image_size,
                                     precision_name(training_args), data.canvases, data.padded_pixel_fraction)
    trainer = build_trainer(
        device_args, training_args,
        model=model,
        train_dataset=data.train,
        eval_dataset=PaddedToMultiple(data.eval, eval_multiple),
        data_collator=data.collator(),
        processing_class=preprocessing.image_processor(),
        compute_metrics=CocoMetrics(data.eval_split, data.eval_classes),
        preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        optimizers=(optimizer, None),
        callbacks=[*callbacks, run_summary],
        train_sampler=data.train_sampler(training_args.per_device_train_batch_size * training_args.world_size,
                                         training_args.seed if training_args.data_seed is None
                                         else training_args.data_seed,
                                         training_args.gradient_accumulation_steps),
    )
    if guard is not None and isinstance(matcher, DeviceMatcher) and matcher.steps:
        guard.carry_matcher_flags(matcher, trainer)  # the matcher's "unfinished" flag rides on the guard's read
        run_summary.counters["matcher_steps_redone_on_host"] = lambda: guard.redone_steps
    apply_trainer_patches(trainer)
    gather_image_index_as_labels(trainer)
    compile_settings = (compile_each_image_shape_once(len(data.canvases))
                        if training_args.torch_compile and data.canvases else contextlib.nullcontext())
    try:
        with run_summary.host_sync_audit(), compile_settings:  # the audit's torch modes end with training, raise or not
            trainer.train(resume_from_checkpoint=resume_checkpoint(training_args),
                          ignore_keys_for_eval=EVAL_IGNORE_KEYS)
        trainer.save_model()
    except NonFiniteLossError as error:
        logging.error("%s", error)
        return 3
    except (OSError, RuntimeError) as error:
        message = describe_write_failure(error, training_args.output_dir)
        if message is None:
            raise
        logging.error("%s", message)
        return 4
    # Under torchrun, the process group ends here, once every process is done with the others: left to interpreter
    # shutdown, a gloo group aborted a finished process ("terminate called without an active exception"), and one
    # process ending it while another is still at work can hang both (pytorch/pytorch#75097). Not after an
    # exception: a process waiting here for one stuck elsewhere would never exit, while its exit lets torchrun stop
    # the others.
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    print(format_map_table(read_history(training_args.output_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
