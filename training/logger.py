"""Metrics: one JSON object per line in ``RUN_DIR/metrics.jsonl`` and TensorBoard events.

Every record has ``step`` (environment steps) and scalar metrics named ``section/name``
(``eval/return``, ``train/return``, ``wm/loss``, ``actor/loss``, ``value/loss``, ``fps``,
``updates_per_s`` ...). TensorBoard (``RUN_DIR/tb``) needs the ``tensorboard`` package (in the
``train`` extra); without it the run warns once and writes JSONL only.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

METRICS = "metrics.jsonl"


def truncate_metrics(path: Path, max_step: int) -> None:
    """Keep only records with ``step <= max_step`` (a resumed run rewrites what came after
    its checkpoint); the file is replaced atomically."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if record.get("step", math.inf) <= max_step:
            kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept))
    os.replace(tmp, path)


def _clean(value: Any) -> Any:
    value = float(value) if not isinstance(value, int | str | bool) else value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class Logger:
    def __init__(self, run_dir: Path, tensorboard: bool = True, purge_step: int | None = None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS
        if purge_step is not None:
            truncate_metrics(self.path, purge_step)
        self.file = open(self.path, "a")
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                warnings.warn("tensorboard is not installed: metrics go to metrics.jsonl only "
                              "(pip install tensorboard, or --log.tensorboard false)",
                              stacklevel=2)
            else:
                # TensorBoard purges events at steps >= purge_step; keep the checkpoint's own.
                purge = None if purge_step is None else purge_step + 1
                self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge)

    def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
        record = {"step": int(step), **{k: _clean(v) for k, v in metrics.items()},
                  "wall_time": round(time.time(), 3)}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in metrics.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    self.writer.add_scalar(key, value, step)
            self.writer.flush()
        return record

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
