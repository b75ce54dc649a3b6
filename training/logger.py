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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

METRICS = "metrics.jsonl"


def truncate_metrics(path: Path, max_step: float = math.inf, rows: int | None = None
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Keep the first ``rows`` records (when given) with ``step <= max_step``: what a resumed
    run does not redo; lines cut by a kill are dropped. The file is replaced atomically.
    Returns the (kept, dropped) records."""
    if not path.exists():
        return [], []
    kept: list[dict[str, Any]] = []
    dropped: list[dict[str, Any]] = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if not isinstance(record, dict):
            continue
        keep = (rows is None or len(kept) < rows) and record.get("step", math.inf) <= max_step
        (kept if keep else dropped).append(record)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{json.dumps(record)}\n" for record in kept))
    os.replace(tmp, path)
    return kept, dropped


def _clean(value: Any) -> Any:
    value = float(value) if not isinstance(value, int | str | bool) else value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k not in ("step", "wall_time")
            and isinstance(v, int | float) and not isinstance(v, bool)}


class Logger:
    """Appends records to metrics.jsonl (and TensorBoard). ``rows`` counts the records in
    the file; a checkpoint stores it, and a resumed run passes it back as ``keep_rows`` so
    that what came after the checkpoint (and is redone) is dropped from both, by count:
    rows at the checkpoint's own step written after it (an evaluation) go too.
    ``keep_rows=0`` (no checkpoint yet) starts over. ``purge_step`` alone (checkpoints
    without the count) keeps the records up to that step."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, purge_step: int | None = None,
                 keep_rows: int | None = None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS
        kept: list[dict[str, Any]] = []
        purge: int | None = None  # TensorBoard hides earlier events at steps >= purge
        if keep_rows is not None or purge_step is not None:
            max_step = math.inf if purge_step is None else purge_step
            kept, dropped = truncate_metrics(self.path, max_step, keep_rows)
            if dropped:
                purge = int(min(r.get("step", 0) for r in dropped))
            elif purge_step is not None:
                purge = purge_step + 1
        self.rows = len(kept)
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
                self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge)
                # Kept records at the purged steps (the checkpoint's own step) again.
                for record in kept:
                    if purge is not None and record.get("step", -1) >= purge:
                        self._tensorboard(int(record["step"]), _scalars(record),
                                          record.get("wall_time"))

    def _tensorboard(self, step: int, metrics: Mapping[str, Any],
                     wall_time: float | None = None) -> None:
        assert self.writer is not None
        for key, value in _scalars(metrics).items():
            self.writer.add_scalar(key, value, step, walltime=wall_time)
        self.writer.flush()

    def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
        record = {"step": int(step), **{k: _clean(v) for k, v in metrics.items()},
                  "wall_time": round(time.time(), 3)}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        self.rows += 1
        if self.writer is not None:
            self._tensorboard(int(step), metrics)
        return record

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()


def log_episode_files(logger: Logger, files: Sequence[Path], step: int, episodes: int,
                      repeat: int) -> None:
    """Rows (return, length, episode count) of the episode files finished after ``step``
    environment steps and ``episodes`` episodes: after a restart, the episodes collected
    past the checkpoint stay in replay while their iteration's row went with the rest of
    what the restart redoes."""
    for index, path in enumerate(files, episodes + 1):
        with np.load(path) as episode:
            reward = episode["reward"]
        step += (len(reward) - 1) * repeat
        logger.write(step, {"train/return": float(np.sum(reward[1:])),
                            "train/length": float(len(reward) - 1), "train/episodes": index})


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
