"""Kill -9 a training process after its first checkpoint, resume, and check that nothing
finished was lost: the step counter continues from the saved step, the episodes on disk
are intact, and the weights, optimiser states and generator states come back as saved.
In-process restarts check the metric rows (JSONL and TensorBoard) around a restart."""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tqdm import tqdm

from tests.training.conftest import debug_config
from training.checkpoint import load_checkpoint
from training.cli import load_run_config, main
from training.logger import read_metrics
from training.loop import Trainer

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
    # What a restart restores is the checkpoint: weights, Adam moments, generators (on a
    # copy, so that the resume below starts from the directory as the kill left it).
    copy_dir = tmp_path / "copy"
    shutil.copytree(run, copy_dir)
    restarted = Trainer(load_run_config(copy_dir), copy_dir)
    restarted.setup()
    try:
        assert _equal(restarted.agent.full_state(), saved["agent"])
        from training.checkpoint import generator_states

        assert _equal(generator_states(restarted.generators()), saved["rng"])
    finally:
        restarted.close()

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


# ---------------------------------------------------------------- in-process restarts
# A "kill" below is a Trainer closed without its next checkpoint; the restart is a fresh
# Trainer on the same run directory, as after kill -9.


def _config(**overrides):
    return debug_config(**{"log.video": False, "log.tensorboard": True, **overrides})


def _equal(a, b) -> bool:
    """Nested dicts / lists of tensors and plain data, compared exactly."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k])
                                                                    for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    return a == b


def _tensorboard_steps(run: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return [e.step for e in events.Scalars(tag)] if tag in events.Tags()["scalars"] else []


def _rows(run: Path, key: str) -> list[int]:
    return [r["step"] for r in read_metrics(run) if key in r]


def test_resume_restores_weights_optimiser_and_generators(tmp_path):
    first = Trainer(_config(), tmp_path)
    first.setup()
    try:
        first.prefill()
        first.train(2)  # Adam moments and step counts that are not the initial ones
        first.save()
        saved_state = copy.deepcopy(first.agent.full_state())
        saved_normalizer = first.normalizer.state_dict()
        draws = (torch.rand(4, generator=first.g_train), torch.rand(4, generator=first.g_act),
                 first.rng_replay.random(4), first.rng_prefill.random(4))
    finally:
        first.close()
    again = Trainer(_config(), tmp_path)
    again.setup()
    try:
        restored = again.agent.full_state()
        assert _equal(restored["modules"], saved_state["modules"])  # weights and buffers
        assert _equal(restored["optimisers"], saved_state["optimisers"])  # Adam moments
        assert any(len(o["state"]) for o in restored["optimisers"].values())
        assert again.normalizer.state_dict() == saved_normalizer
        assert again.counters.updates == 2 and again.counters.restarts == 1
        # Every generator continues where the checkpoint left it.
        assert torch.equal(torch.rand(4, generator=again.g_train), draws[0])
        assert torch.equal(torch.rand(4, generator=again.g_act), draws[1])
        np.testing.assert_array_equal(again.rng_replay.random(4), draws[2])
        np.testing.assert_array_equal(again.rng_prefill.random(4), draws[3])
    finally:
        again.close()


def test_resume_applies_new_learning_rates(tmp_path):
    first = Trainer(_config(), tmp_path)
    first.setup()
    try:
        first.prefill()
        first.train(1)
        first.save()
    finally:
        first.close()
    lower = _config(**{"dreamer.model_lr": 1e-4, "dreamer.actor_lr": 2e-5})
    again = Trainer(lower, tmp_path)
    again.setup()
    try:
        rates = {k: o.param_groups[0]["lr"] for k, o in again.agent.optimisers().items()}
        assert rates == {"model": 1e-4, "actor": 2e-5, "value": 8e-5}
        assert all(len(o.state) for o in again.agent.optimisers().values())  # moments kept
    finally:
        again.close()


def test_kill_before_the_first_checkpoint_leaves_no_duplicate_rows(tmp_path):
    first = Trainer(_config(), tmp_path)
    first.setup()
    try:  # prefill and the first evaluation logged, killed before the checkpoint
        first.prefill()
        first.log_eval(tqdm(disable=True))
    finally:
        first.close()
    assert not (tmp_path / "checkpoint.pt").exists()
    Trainer(_config(), tmp_path).run()
    assert _rows(tmp_path, "prefill/return") == [200]
    assert _rows(tmp_path, "eval/return") == [200, 300, 400]
    assert _tensorboard_steps(tmp_path, "prefill/return") == [200]
    assert _tensorboard_steps(tmp_path, "eval/return") == [200, 300, 400]


def test_episode_after_the_last_checkpoint_keeps_its_row(tmp_path):
    config = _config(**{"loop.checkpoint_every": 5})
    first = Trainer(config, tmp_path)
    first.setup()
    try:  # the start, then an iteration whose episode is on disk but not checkpointed
        first.prefill()
        first.log_eval(tqdm(disable=True))
        first.save()
        first.iteration(tqdm(disable=True))
        kept = dict(np.load(sorted((tmp_path / "episodes").glob("*.npz"))[-1]))
    finally:
        first.close()
    assert load_checkpoint(tmp_path / "checkpoint.pt")["env_steps"] == 200
    Trainer(config, tmp_path).run()
    rows = {r["step"]: r for r in read_metrics(tmp_path) if "train/return" in r}
    assert sorted(rows) == [300, 400]
    assert rows[300]["train/return"] == pytest.approx(float(np.sum(kept["reward"][1:])))
    assert rows[300]["train/episodes"] == 3
    assert _rows(tmp_path, "eval/return") == [200, 400]  # the lost iteration's is redone
    assert _tensorboard_steps(tmp_path, "train/return") == [300, 400]
    assert _tensorboard_steps(tmp_path, "eval/return") == [200, 400]


def test_kill_during_the_final_evaluation_leaves_no_duplicate_rows(tmp_path):
    config = _config(**{"loop.steps": 300, "loop.eval_every": 5})
    first = Trainer(config, tmp_path)
    first.setup()
    try:  # start, one checkpointed iteration, the final evaluation, killed before saving
        first.prefill()
        first.log_eval(tqdm(disable=True))
        first.save()
        first.iteration(tqdm(disable=True))
        first.log_eval(tqdm(disable=True))
    finally:
        first.close()
    assert _rows(tmp_path, "eval/return") == [200, 300]
    Trainer(config, tmp_path).run()  # redoes the final evaluation at the same step
    assert _rows(tmp_path, "eval/return") == [200, 300]
    assert _rows(tmp_path, "train/return") == [300]
    assert _tensorboard_steps(tmp_path, "eval/return") == [200, 300]
    assert _tensorboard_steps(tmp_path, "train/return") == [300]  # kept, written again
