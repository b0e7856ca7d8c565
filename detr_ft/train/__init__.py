"""Training: the trainer that owns the step, its arguments per device, and the callbacks that make a run safe and
measured. The flags themselves live in detr_ft/config.py.

    flag_checks.py every flag checked once, before data or model
    devices.py     the device flags and environment, set before habana_frameworks is imported; compile settings
    training_arguments.py  the TrainingArguments (or GaudiTrainingArguments) the project derives for a run
    trainer.py     one trainer mixin owns the step: label-free forward, criterion, sampler, evaluation's labels
    compiled_step.py  --torch_compile on the whole step but the matcher; CUDA graphs' rules
    hpu_trainer.py transformers' Trainer on Gaudi: lazy-mode steps, fused clipping, HPU graphs
    optimizer.py   parameter groups and the optimizer --optim names
    run_folder.py  one run per output dir: the lock, the same-run check, a finished run left as it is
    checkpoints.py complete checkpoints only; which one to resume from
    map_history.py eval_history.json: mAP at every checkpoint interval
    nonfinite_guard.py  stop (or skip) at a NaN / inf loss before it reaches the weights
    ddp_buffers.py every process evaluates with rank 0's buffers
    run_summary.py run_summary.json: speed, host syncs, graph compilations, the stack
    sync_audit.py  count host syncs of torch code (--audit_host_syncs)
"""
