#!/usr/bin/env python
"""Fine-tune a DETR-family model (DETR, Conditional DETR, Deformable DETR) on CPPE-5 or any COCO-format folder, with
static shapes on HPU, CUDA or CPU.

    python run_object_detection.py recipes/demo-tiny.json --output_dir outputs/demo
    python run_object_detection.py --dataset_dir data/synthetic --model_name_or_path detr-tiny \\
        --pad_images --image_size 64 --pad_objects --num_buckets 1 --output_dir outputs/demo

mAP is evaluated at every checkpoint interval (`--ckpt_store_interval_epochs`) into eval_history.json; a test split,
when the dataset has one, is scored once by the final model (test_results.json). Exit codes: 0 done, 2 refused flags
or data, 3 a non-finite loss, 4 a failed write.
"""

import logging
import sys

from detr_ft.config import FlagError, RunArguments, device_arguments, parse_arguments
from detr_ft.console import setup_logging
from detr_ft.train.devices import DeviceSettingsError, check_device_settings
from detr_ft.train.flag_checks import (
    check_flags,
    check_model_family,
    family_defaults,
    hpu_compile_default,
    static_shape_defaults,
)


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    try:
        # Before TrainingArguments exist: building them fixes HPU lazy or eager mode (`config.device_arguments`).
        device_type = check_device_settings(device_arguments(argv))
        args = parse_arguments(argv)
        hpu_compile_default(args)
        check_flags(args)
        family = check_model_family(args)
    except (FlagError, DeviceSettingsError) as error:
        logging.error("%s", error)
        return 2
    static_shape_defaults(args)
    family_defaults(args, family)
    # Imported after the device check: HPU lazy/eager mode is fixed when habana_frameworks is first imported.
    from detr_ft.model.build import trained_from_scratch
    from detr_ft.model.presets import default_image_size
    from detr_ft.run_files import RunArgumentsError
    from detr_ft.train.run_folder import FinishedRun, RunFolderError, claim_run_folder

    args.data.image_size = args.data.image_size or default_image_size(args.model.model_name_or_path)
    try:  # before anything is written into the folder
        run_arguments = args.saved(from_scratch=trained_from_scratch(args.model.model_name_or_path))
        lock = claim_run_folder(args.training.output_dir, run_arguments, args.training)
    except FinishedRun as finished:
        logging.getLogger("detr_ft").info("%s", finished)  # the root logger shows WARNING and up only
        return 0
    except (RunArgumentsError, RunFolderError) as error:
        logging.error("%s", error)
        return 2
    try:
        return train(device_type, args, run_arguments)
    finally:
        if lock is not None:
            lock.close()


def train(device_type: str, args: RunArguments, run_arguments: dict) -> int:
    """Everything after the flags are checked and the run folder is held."""
    from transformers import set_seed

    from detr_ft.data.dataset import PaddedToMultiple
    from detr_ft.data.images import Preprocessing
    from detr_ft.data.prepare import prepare_data, warn_queries_overflow
    from detr_ft.data.size_repair import write_size_repairs
    from detr_ft.data.sources import DatasetError
    from detr_ft.evaluation.loop import CocoMetrics, DetectionRows, evaluate_split
    from detr_ft.evaluation.model_card import write_model_card
    from detr_ft.evaluation.report import format_map_table
    from detr_ft.launcher import launched_rank
    from detr_ft.model.build import build_model
    from detr_ft.model.families import UnsupportedModelError, build_criterion, family_of
    from detr_ft.run_files import save_run_arguments
    from detr_ft.train.checkpoints import (
        CheckpointCompleteCallback,
        checkpoint_state,
        describe_write_failure,
        last_step,
        resume_checkpoint,
    )
    from detr_ft.train.compiled_step import (
        compiled_criterion_settings,
        compiled_step_callbacks,
        criterion_compile_options,
    )
    from detr_ft.train.ddp_buffers import BroadcastBuffersBeforeEvaluation
    from detr_ft.train.devices import compile_settings
    from detr_ft.train.flag_checks import check_batch_fits
    from detr_ft.train.map_history import MapHistoryCallback, read_history
    from detr_ft.train.nonfinite_guard import NonFiniteLossError, NonFiniteLossGuard
    from detr_ft.train.optimizer import run_optimizer
    from detr_ft.train.run_summary import RunSummaryCallback, precision_name
    from detr_ft.train.trainer import build_trainer
    from detr_ft.train.training_arguments import steps_per_epoch, training_arguments
    from patches import apply_patches, apply_trainer_patches

    model_args, data_args, shapes, training = args.model, args.data, args.shapes, args.training
    # Before the model is built: torch seeds itself randomly per process, so an unseeded init differs run to run.
    set_seed(training.seed, deterministic=shapes.deterministic or training.full_determinism)
    try:
        data = prepare_data(data_args, shapes)
        check_batch_fits(data.images_per_canvas(), training)
        model = build_model(model_args.model_name_or_path, data.classes.id2label, model_args.model_revision,
                            model_args.freeze_backbone)
    # OSError: a model the hub or the disk cannot give; UnsupportedModelError: its hub copy changed since the check
    except (DatasetError, FlagError, OSError, UnsupportedModelError) as error:
        logging.error("%s", error)
        return 2
    if launched_rank() == 0:  # one writer per launch, as for the run folder's lock
        save_run_arguments(training.output_dir, run_arguments)
        write_size_repairs(training.output_dir, data.size_repairs)
    warn_queries_overflow(data, model.config.num_queries)
    training = training_arguments(device_type, args, data.images_per_canvas())  # on Gaudi: adapts transformers
    model.to(training.device)
    from_scratch = run_arguments["from_scratch"]
    apply_patches(model, static_shapes=bool(data.bucket_sizes),
                  train_backbone_stages=not from_scratch and not model_args.freeze_backbone,
                  cpu_position_embedding=args.device.cpu_position_embedding)
    run_summary = RunSummaryCallback(training.output_dir, training.device.type, data.bucket_sizes, data_args.image_size,
                                     precision_name(training), data.canvases, data.padded_pixel_fraction,
                                     shapes.audit_host_syncs)
    preprocessing = Preprocessing(data_args.image_size, shapes.pad_images,
                                  tuple(data.canvases) if shapes.image_buckets > 1 else ())
    trainer = build_trainer(
        args.device, training,
        model=model,
        criterion=build_criterion(model, padded_targets=bool(data.bucket_sizes),
                                  compile_options=criterion_compile_options(training, device_type)),
        finite_guard=NonFiniteLossGuard(training.output_dir, shapes.skip_nonfinite_batches, data.train_image_names)
        if shapes.check_finite_loss else None,
        train_sampler=data.train_sampler(training.per_device_train_batch_size * training.world_size,
                                         training.seed if training.data_seed is None else training.data_seed,
                                         training.gradient_accumulation_steps),
        train_dataset=data.train,
        eval_dataset=PaddedToMultiple(data.eval, training.per_device_eval_batch_size * training.world_size),
        data_collator=data.collator(),
        # The canvases ride along in the saved processor, so evaluation and inference pad as training did.
        processing_class=preprocessing.image_processor(family_of(model.config).image_processor),
        compute_metrics=CocoMetrics(data.eval_split, data.eval_classes),
        preprocess_logits_for_metrics=DetectionRows(model),
        optimizers=(run_optimizer(model, model_args, training, from_scratch, on_hpu=device_type == "hpu"), None),
        callbacks=[MapHistoryCallback(training.output_dir), CheckpointCompleteCallback(),
                   BroadcastBuffersBeforeEvaluation(), *compiled_step_callbacks(training), run_summary],
    )
    apply_trainer_patches(trainer)
    run_summary.name_stack(trainer, args.device)
    checkpoint = resume_checkpoint(training)
    end = last_step(training, steps_per_epoch(data.images_per_canvas(), training))
    test_metrics = None
    try:
        if checkpoint and checkpoint_state(checkpoint)["global_step"] >= end:
            logging.getLogger("detr_ft").info("%s is the run's last step (%d) and the final model is missing or "
                                              "damaged: saving it from there", checkpoint, end)
            trainer._load_from_checkpoint(checkpoint)  # the Trainer's own resume loader (patched on 5.x)
        else:
            with (run_summary.host_sync_audit(), compile_settings(training, data.canvases),
                  compiled_criterion_settings(len(data.bucket_sizes or []))):
                trainer.train(resume_from_checkpoint=checkpoint)
        trainer.save_model()
        if data.test is not None:
            test_metrics = evaluate_split(trainer, data.test, data.test_classes, "test")
            trainer.save_metrics("test", test_metrics)
        if trainer.is_world_process_zero():
            write_model_card(training.output_dir, run_arguments, list(data.classes.names),
                             read_history(training.output_dir), test_metrics)
    except NonFiniteLossError as error:
        logging.error("%s", error)
        return 3
    except Exception as error:  # torch, safetensors and the OS each report a failed write their own way
        message = describe_write_failure(error, training.output_dir)
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
    print(format_map_table(read_history(training.output_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
