"""Distributed training on the CPU with gloo: 2 ranks equal one process on the same global
batch; killing a rank stops the run with an error (no hang) and it resumes under torchrun;
the launch checks. Ranks are separate processes with the variables torchrun sets."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.training.conftest import debug_config
from training.checkpoint import load_checkpoint
from training.cli import main
from training.distributed import (
    Distributed,
    DistributedError,
    Topology,
    rank_config,
    rank_dir,
    topology_from_env,
)
from training.logger import read_metrics
from training.loop import Trainer

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["--preset", "debug", "--task", "cartpole_swingup-fusion", "--log.progress", "false",
        "--log.video", "false", "--log.tensorboard", "false", "--dist.timeout", "30"]
PARAM_ATOL = 1e-5  # float32 rounding of the two halves' sum vs the whole batch's mean


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(rank: int | None, world: int = 2, port: int = 0) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in
           ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=str(ROOT), MUJOCO_GL=env.get("MUJOCO_GL", "egl"))
    if rank is not None:
        env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    return env


def _ranks(command: list[str], world: int = 2) -> list[subprocess.Popen]:
    port = _free_port()
    return [subprocess.Popen(command, cwd=ROOT, env=_env(r, world, port),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for r in range(world)]


def _wait(process: subprocess.Popen, timeout: float) -> tuple[int, str]:
    try:
        _, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
        raise AssertionError(f"no exit within {timeout} s: {err.decode()[-2000:]}") from None
    return process.returncode, err.decode()


# ---------------------------------------------------------------- equivalence


def test_two_ranks_equal_one_process_on_the_same_global_batch(tmp_path):
    worker = [sys.executable, "-m", "tests.training.ddp_worker"]
    single = subprocess.Popen([*worker, str(tmp_path / "single.pt")], cwd=ROOT,
                              env=_env(None), stderr=subprocess.PIPE)
    ranks = []
    port = _free_port()
    for r in range(2):
        ranks.append(subprocess.Popen([*worker, str(tmp_path / f"rank{r}.pt")], cwd=ROOT,
                                      env=_env(r, 2, port), stderr=subprocess.PIPE))
    for process in (single, *ranks):
        code, err = _wait(process, 120)
        assert code == 0, err[-3000:]
    one = torch.load(tmp_path / "single.pt")
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert (one["world"], r0["world"]) == (1, 2)
    # Three updates (world model, state probe, actor, critic) on fixed batches with the
    # random draws held constant: the ranks' parameters equal the one process's.
    diff = max((one["exact"][k] - r0["exact"][k]).abs().max().item() for k in one["exact"])
    assert diff <= PARAM_ATOL, f"max |param difference| {diff:.3g}"
    for k in one["exact"]:
        assert torch.equal(r0["exact"][k], r1["exact"][k]), k
    # The gradient norms are those of the global batch (after averaging, before the clip):
    # the mean of the ranks' gradients, not their sum, and not one rank's.
    for m_one, m_rank in zip(one["metrics"], r0["metrics"], strict=True):
        for key in ("wm/grad_norm", "actor/grad_norm", "value/grad_norm"):
            assert m_rank[key] == pytest.approx(m_one[key], rel=1e-5), key
        assert m_rank["wm/loss"] != pytest.approx(m_one["wm/loss"], rel=1e-3)  # own half
    # With real draws from each rank's own generator the ranks stay identical: every
    # trained parameter is averaged.
    for k in r0["noisy"]:
        assert torch.equal(r0["noisy"][k], r1["noisy"][k]), k
    # A parameter with a gradient on one rank only gets the mean (zeros elsewhere); one
    # without on every rank keeps None.
    assert one["sparse"][0].tolist() == [2.0, 2.0] and one["sparse"][1] is None
    for r in (r0, r1):
        assert r["sparse"][0].tolist() == [1.0, 1.0] and r["sparse"][1] is None


# ---------------------------------------------------------------- a run, a kill, a resume


@pytest.mark.slow
def test_killing_a_rank_stops_the_run_and_torchrun_resumes_it(tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "training.dreamer", *ARGS, "--loop.steps", "100000",
               "--logdir", str(run)]
    ranks = _ranks(command)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            for p in ranks:
                assert p.poll() is None, p.stderr.read().decode()[-3000:]
            try:
                if load_checkpoint(run / "checkpoint.pt")["counters"]["iteration"] >= 1:
                    break
            except Exception:
                pass
            time.sleep(0.1)
        else:
            raise AssertionError("no checkpoint after an iteration in time")
        os.kill(ranks[1].pid, signal.SIGKILL)
        killed = time.monotonic()
        code, err = _wait(ranks[0], 45)
        stopped = time.monotonic() - killed
    finally:
        for p in ranks:
            if p.poll() is None:
                p.kill()
            p.wait()
    assert code == 4 and "training stopped" in err and "--resume" in err, err[-3000:]
    assert stopped < 20  # about 2 s measured: the closed connection, not the timeout
    saved = load_checkpoint(run / "checkpoint.pt")  # the last one, whole
    assert saved["world_size"] == 2 and len(saved["ranks"]) == 2
    assert not (rank_dir(run, 1) / "checkpoint.pt").exists()
    assert sorted(p.name for p in rank_dir(run, 1).iterdir()) == ["episodes"]
    # A single process refuses the 2-rank run (each rank's replay is its own).
    assert main([*ARGS, "--resume", str(run)], "dreamer") == 2

    on_disk = sum(len(list((rank_dir(run, r) / "episodes").glob("*.npz"))) for r in (0, 1))
    target = on_disk * 100 + 2 * 2 * 100  # two more iterations of one episode per rank
    resume = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "training.dreamer", *ARGS, "--resume", str(run), "--loop.steps", str(target)],
        cwd=ROOT, env=_env(None), capture_output=True, timeout=120)
    assert resume.returncode == 0, resume.stderr.decode()[-3000:]
    after = load_checkpoint(run / "checkpoint.pt")
    assert after["env_steps"] == target and after["counters"]["restarts"] == 1
    assert after["counters"]["updates"] == saved["counters"]["updates"] + 2 * 3
    for r in (0, 1):  # each rank continued its own replay, with its own generators
        files = sorted((rank_dir(run, r) / "episodes").glob("*.npz"))
        assert [int(p.name[:6]) for p in files] == list(range(len(files)))
        assert after["ranks"][r]["train_episodes"] == len(files)
    steps = [row["step"] for row in read_metrics(run) if "train/return" in row]
    assert steps == sorted(steps) and steps[-1] == target


# ---------------------------------------------------------------- launch checks


def test_topology_from_the_torchrun_variables():
    assert topology_from_env({}) == Topology()
    assert topology_from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == \
        Topology(1, 2, 1)
    with pytest.raises(DistributedError, match="not LOCAL_RANK"):
        topology_from_env({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(DistributedError, match="0 <= RANK < WORLD_SIZE"):
        topology_from_env({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})


def test_rank_config_divides_the_global_batch():
    config = debug_config(**{"replay.batch": 8, "dreamer.imag_starts": 32})
    local = rank_config(config, 4)
    assert (local.replay.batch, local.dreamer.imag_starts) == (2, 8)
    assert rank_config(config, 1) is config
    with pytest.raises(DistributedError, match="divisible by the world size 3"):
        rank_config(config, 3)


def test_launch_refusals(tmp_path, monkeypatch, capsys):
    for key, value in {"RANK": "0", "WORLD_SIZE": "3", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    assert main([*ARGS, "--logdir", str(tmp_path / "a")], "dreamer") == 2  # batch 4, 3 ranks
    assert "replay.batch=4" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(ARGS, "dreamer") == 2
    assert "needs --logdir" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_a_single_process_run_is_not_resumed_by_two_ranks(tmp_path):
    config = debug_config(**{"log.video": False})
    first = Trainer(config, tmp_path)
    first.setup()
    try:
        first.prefill()
        first.save()
    finally:
        first.close()
    again = Trainer(config, tmp_path, dist=Distributed(Topology(0, 2, 0)))
    try:
        with pytest.raises(DistributedError, match="trained by 1 process"):
            again.setup()
    finally:
        again.close()
