"""Vectorised collection in worker processes."""

from __future__ import annotations

import numpy as np
import pytest

from training.envs import make_task
from training.envs.parallel import ParallelEnvs, WorkerError

pytestmark = [pytest.mark.render, pytest.mark.slow]

NAME = "cartpole_swingup-fusion"
SHORT = {"episode_length": 10}


def test_workers_match_single_process_tasks_and_auto_reset():
    seeds = [0, 1]
    actions = np.random.default_rng(0).uniform(-1, 1, (7, 2, 1))
    with ParallelEnvs(NAME, seeds, **SHORT) as envs:
        assert envs.sensors == ("proprio", "image") and envs.act_space.shape == (1,)
        stacked = [envs.reset(), *[envs.step(a) for a in actions]]
        processes = envs.processes
    assert not any(p.is_alive() for p in processes), "close() ends every worker"
    for index, seed in enumerate(seeds):
        with make_task(NAME, seed, **SHORT) as task:
            expected = [task.reset()]
            for action in actions[:, index]:
                expected.append(task.reset() if expected[-1]["is_last"] else task.step(action))
        for got, want in zip(stacked, expected, strict=True):
            for key in want:
                assert np.array_equal(got[key][index], want[key]), key
    # 10 env steps at action repeat 2: step 5 ends the episode, step 6 starts the next.
    assert stacked[5]["is_last"].all() and stacked[6]["is_first"].all()


def test_worker_errors_are_raised_with_the_workers_traceback():
    with ParallelEnvs(NAME, [0, 1], **SHORT) as envs:
        envs.reset()
        with pytest.raises(WorkerError) as info:
            envs.step(np.zeros((2, 3)))
        message = str(info.value)
        assert "worker 0 failed" in message and "Traceback" in message
        assert "ValueError: action has shape (3,), expected (1,)" in message
        assert envs.step(np.zeros((2, 1)))["image"].shape == (2, 64, 64, 3), "workers survive"


def test_worker_start_failure_is_reported():
    with pytest.raises(WorkerError, match="camera_id 9 out of range"):
        ParallelEnvs("cartpole_swingup", [0], camera_id=9)


def test_bad_names_fail_in_the_parent():
    with pytest.raises(ValueError, match="unknown task"):
        ParallelEnvs("cartpole_swingdown", [0])
