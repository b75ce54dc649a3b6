"""Kill -9 a training process after its first checkpoint, resume, and check that nothing
finished was lost: the step counter continues from the saved step and the episodes on disk
are intact."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from training.checkpoint import load_checkpoint
from training.cli import main
from training.logger import read_metrics

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["--preset", "debug", "--task", "cartpole_swingup-fusion", "--log.progress", "false",
        "--log.video", "false", "--loop.checkpoint_every", "1"]


def _digests(run: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((run / "episodes").glob("*.npz"))}


def _wait_for_iteration(run: Path, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode()
        path = run / "checkpoint.pt"
        if path.exists():
            try:
                if load_checkpoint(path)["counters"]["iteration"] >= 1:
                    return
            except Exception:
                pass
        time.sleep(0.1)
    raise AssertionError("no checkpoint after an iteration in time")


@pytest.mark.slow
def test_kill_and_resume(tmp_path):
    run = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "training.dreamer", *ARGS, "--loop.steps", "100000",
         "--logdir", str(run)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        _wait_for_iteration(run, process)
        time.sleep(0.7)  # let it get into the next iteration
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    saved = load_checkpoint(run / "checkpoint.pt")
    episodes_at_kill = _digests(run)
    steps_on_disk = sum(int(name.split("-")[1].split(".")[0]) for name in episodes_at_kill) * 2
    assert saved["env_steps"] <= steps_on_disk
    assert len(episodes_at_kill) >= saved["train_episodes"]

    # Resume for two more episodes (100 env steps each).
    target = steps_on_disk + 200
    assert main([*ARGS, "--resume", str(run), "--loop.steps", str(target)], "dreamer") == 0
    after = load_checkpoint(run / "checkpoint.pt")
    assert after["env_steps"] == target
    assert after["counters"]["restarts"] == saved["counters"]["restarts"] + 1
    assert after["counters"]["updates"] == (saved["counters"]["updates"] + 2 * 3)
    assert after["counters"]["iteration"] == saved["counters"]["iteration"] + 2
    now = _digests(run)
    assert {k: now[k] for k in episodes_at_kill} == episodes_at_kill  # untouched
    assert len(now) == len(episodes_at_kill) + 2
    assert [int(n[:6]) for n in now] == list(range(len(now)))
    records = read_metrics(run)
    steps = [r["step"] for r in records if "train/return" in r]
    assert steps == sorted(steps) and steps[-1] == target
    assert steps_on_disk + 100 in steps  # the first iteration after the restart
