"""The mAP table a person reads: one row per checkpoint, the same in training's output and eval_checkpoints'."""

from __future__ import annotations

from pathlib import Path

TABLE_KEYS = ("map", "map_50", "map_75")


def format_map_table(records: list[dict]) -> str:
    """Records {epoch, step, checkpoint, metrics} (eval_history.json, checkpoint_metrics.json) as a text table."""
    lines = [f"{'epoch':>7} {'step':>7} " + " ".join(f"{k:>7}" for k in TABLE_KEYS) + "  checkpoint"]
    for record in records:
        metrics = record["metrics"]
        lines.append(f"{record['epoch']:>7.2f} {record['step']:>7d} "
                     + " ".join(f"{metrics.get(k, float('nan')):>7.4f}" for k in TABLE_KEYS)
                     + f"  {Path(record['checkpoint']).name}")
    return "\n".join(lines)
