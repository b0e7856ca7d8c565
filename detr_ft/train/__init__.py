"""Training: arguments, device and trainer choice, and the callbacks that make a run safe and measured.

    arguments.py   the command line: our argument dataclasses next to TrainingArguments
    flag_checks.py every flag checked once, before data or model
    run_folder.py  one run per output dir: the lock, the same-run check
    devices.py     where the device is chosen: HPU (GaudiTrainer), CUDA or CPU (Trainer)
    trainer_loss.py  both trainers compute the loss from a label-free forward
    compiled_step.py  --torch_compile on the whole step but the matcher; CUDA graphs' rules
    optimizer.py   parameter groups and the optimizer
    checkpoints.py complete checkpoints only; which one to resume from
    map_history.py eval_history.json: mAP at every checkpoint interval
    nonfinite_guard.py  stop (or skip) at a NaN / inf loss before it reaches the weights
    run_summary.py run_summary.json: speed, host syncs, graph compilations
    sync_audit.py  count host syncs of torch code
"""
