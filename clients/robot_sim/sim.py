"""Build a task and a backend and run the closed loop; the API behind
``python -m clients.robot_sim`` (and what the tests call)."""

from __future__ import annotations

from typing import Any

import numpy as np

from clients.robot_sim.camera import NO_LATENCY, Latency
from clients.robot_sim.loop import EpisodeRecord, run_episode


def make_task(name: str, seed: int, episode_length: int | None = None,
              action_repeat: int | None = None) -> Any:
    from training.envs import make_task as make

    overrides: dict[str, Any] = {}
    if episode_length is not None:
        overrides["episode_length"] = episode_length
    if action_repeat is not None:
        overrides["action_repeat"] = action_repeat
    return make(name, seed, **overrides)


def service_backend(server: str | None = None, http: str | None = None,
                    token: str | None = None, model: str | None = None,
                    encoding: str = "png", timeout: float = 5.0, wait_s: float = 30.0) -> Any:
    """A session on the service over gRPC (``server`` = host:port) or HTTP (``http`` =
    URL), once the server reports ready."""
    from clients.robot_sim.backends import ServiceBackend

    if (server is None) == (http is None):
        raise ValueError("give exactly one of server (gRPC host:port) and http (URL)")
    if server is not None:
        from clients.grpc_client import EstimatorClient

        client: Any = EstimatorClient(server, token=token, timeout=timeout)
    else:
        from clients.http_client import HttpEstimatorClient

        client = HttpEstimatorClient(http, token=token, timeout=timeout)
    try:
        client.wait_until_ready(wait_s)
        return ServiceBackend(client, model, encoding)
    except BaseException:
        client.close()
        raise


def in_process_backend(bundle_dir: str) -> Any:
    from clients.robot_sim.backends import InProcessBackend
    from server.runtime import load_bundle

    return InProcessBackend(load_bundle(bundle_dir, providers="cpu", threads=1))


def simulate(task_name: str, backend: Any, seed: int = 0, latency: Latency = NO_LATENCY,
             episode_length: int | None = None, action_repeat: int | None = None,
             video_ticks: int = 0, realtime: bool = False) -> EpisodeRecord:
    """One seeded episode of ``task_name`` through ``backend`` (the task's physics, frame
    schedule and the camera latencies are all seeded by ``seed``)."""
    task = make_task(task_name, seed, episode_length, action_repeat)
    try:
        return run_episode(task, backend, latency, seed=seed, video_ticks=video_ticks,
                           realtime=realtime)
    finally:
        task.close()


def random_return(task_name: str, seed: int, episode_length: int | None = None,
                  action_repeat: int | None = None) -> float:
    """The return of uniformly random actions on the same seeded episode (a baseline for the
    closed-loop return; no camera rendering)."""
    task = make_task(task_name, seed, episode_length, action_repeat)
    rng = np.random.default_rng(seed)
    space = task.act_space
    total = 0.0
    try:
        obs = task.reset()
        for _ in range(100_000):
            if obs["is_last"]:
                break
            obs = task.step(rng.uniform(space.low, space.high, space.shape), render=False)
            total += float(obs["reward"])
    finally:
        task.close()
    return total
