"""End to end through the real transformers Trainer: training, mAP history, buckets that change nothing; the mAP
history callback on its own."""

import json

import pytest
from transformers import TrainerControl, TrainerState, TrainingArguments

import run_object_detection
from detr_ft.run_files import write_json_atomic
from detr_ft.train.checkpoints import all_checkpoints
from detr_ft.train.map_history import HISTORY_FILE, MapHistoryCallback, read_history

slow = pytest.mark.slow  # entry runs: every test but the callback's own

TINY = ["--model_name_or_path", "detr-tiny", "--image_size", "64", "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "8", "--report_to", "none", "--seed", "0", "--learning_rate", "3e-4",
        "--lr_scheduler_type", "constant", "--disable_tqdm", "true"]


def train(tmp_path, name, *args):
    output_dir = tmp_path / name
    assert run_object_detection.main([*TINY, "--output_dir", str(output_dir), *args]) == 0
    return output_dir


@pytest.fixture(scope="module")
def run_losses(logged_losses):
    """Losses a run logged, in step order, from its last checkpoint's trainer_state.json."""
    return lambda output_dir: [loss for _, loss in logged_losses(all_checkpoints(output_dir)[-1])]


@pytest.fixture(scope="module")
def padded_run(synthetic_dir, tmp_path_factory):
    """detr-tiny, 96 images, 12 steps an epoch, 4 epochs, checkpoint + mAP every 2 epochs."""
    return train(tmp_path_factory.mktemp("runs"), "padded", "--dataset_dir", str(synthetic_dir), "--pad_images",
                 "--pad_objects", "--num_buckets", "1", "--num_train_epochs", "4", "--ckpt_store_interval_epochs",
                 "2", "--logging_steps", "1", "--save_total_limit", "5", "--check_finite_loss", "false",
                 "--audit_host_syncs")


@slow
def test_tiny_detr_trains_and_its_loss_falls(padded_run, run_losses):
    losses = run_losses(padded_run)
    assert len(losses) == 48
    assert sum(losses[-8:]) / 8 < 0.9 * sum(losses[:8]) / 8


@slow
def test_map_history_has_one_record_per_checkpoint(padded_run):
    history = json.loads((padded_run / "eval_history.json").read_text())
    assert [(r["epoch"], r["step"]) for r in history] == [(2.0, 24), (4.0, 48)]
    for record in history:
        assert (padded_run / f"checkpoint-{record['step']}" / "model.safetensors").exists()
        assert record["checkpoint"].endswith(f"checkpoint-{record['step']}")
        assert 0.0 <= record["metrics"]["map"] <= record["metrics"]["map_50"] <= 1.0
        assert {"map_75", "map_small", "map_circle", "map_square", "map_triangle"} <= record["metrics"].keys()


@slow
def test_run_summary_reports_buckets_and_one_sync(padded_run):
    """One sync a step, the matcher's (the finite-loss guard, off here, adds its own read)."""
    summary = json.loads((padded_run / "run_summary.json").read_text())
    assert summary["device"] == "cpu" and summary["precision"] == "fp32" and summary["image_size"] == 64
    assert summary["buckets"] == [4] and summary["steps"] == 48
    assert summary["host_syncs_per_step"] == 1
    assert summary["train_samples_per_second"] > 0


@slow
def test_final_model_is_a_loadable_hf_folder(padded_run):
    from transformers import DetrForObjectDetection

    model = DetrForObjectDetection.from_pretrained(padded_run)
    assert model.config.id2label == {0: "circle", 1: "square", 2: "triangle"}
    assert (padded_run / "preprocessor_config.json").exists()


@slow
def test_buckets_do_not_change_the_loss(synthetic_dir, tmp_path, run_losses):
    """--num_buckets 0 (stock targets, transformers' loss) and 1 (padded targets, ours): the same run, to rounding.

    The tight proof is per step, on the same weights (test_buckets_equivalence.py); here, the entry wires both paths
    the same. Each optimizer step amplifies the losses' float rounding, by an amount that depends on the thread count
    and CPU kernels (10 steps with 2 threads: 1.4e-5), so the run is short and the tolerance measured: worst relative
    deviation over these 3 steps 7.0e-8 with OMP_NUM_THREADS=1, 7.0e-7 with 2 (and with 4), deterministic; 1e-5 is
    14x that. A wrong loss differs already at step 1, on identical weights (a changed eos weight: 1.7e-3).
    """
    common = ["--dataset_dir", str(synthetic_dir), "--pad_images", "--pad_objects", "--deterministic",
              "--max_steps", "3", "--logging_steps", "1", "--ckpt_store_interval_epochs", "1"]
    stock = run_losses(train(tmp_path, "stock", *common, "--num_buckets", "0"))
    padded = run_losses(train(tmp_path, "padded", *common, "--num_buckets", "1"))
    assert len(stock) == len(padded) == 3
    for a, b in zip(stock, padded, strict=True):
        assert abs(a - b) <= 1e-5 * abs(a)


@slow
def test_real_cppe5_images_train_and_log_map_per_epoch(cppe5_dir, tmp_path):
    output_dir = train(tmp_path, "cppe5", "--dataset_dir", str(cppe5_dir), "--train_split", "test", "--eval_split",
                       "test", "--num_train_epochs", "2", "--ckpt_store_interval_epochs", "1")
    history = json.loads((output_dir / "eval_history.json").read_text())
    assert [r["epoch"] for r in history] == [1.0, 2.0]
    assert {"map_Coverall", "map_Face_Shield", "map_Gloves", "map_Goggles", "map_Mask"} <= history[0]["metrics"].keys()


def history_record(output_dir, step: int) -> dict:
    """A record as MapHistoryCallback.on_evaluate writes it (2 steps an epoch)."""
    return {"epoch": step / 2, "step": step, "checkpoint": str(output_dir / f"checkpoint-{step}"),
            "metrics": {"map": step / 10, "map_50": step / 5}}


@pytest.mark.parametrize("world_process_zero", [True, False])
def test_map_history_on_resume_drops_records_past_the_resumed_step(tmp_path, world_process_zero):
    """Resuming from checkpoint-2 of a run that had evaluated steps 2, 4 and 6: the main process keeps step 2's
    record only (what an uninterrupted run has by then); any other process leaves the file to it."""
    records = [history_record(tmp_path, step) for step in (2, 4, 6)]
    write_json_atomic(tmp_path / HISTORY_FILE, records)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    state = TrainerState(global_step=2, is_world_process_zero=world_process_zero)

    MapHistoryCallback(tmp_path).on_train_begin(args, state, TrainerControl())
    assert read_history(tmp_path) == (records[:1] if world_process_zero else records)
