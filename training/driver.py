"""Environments for the loop, and running whole episodes with a policy.

``make_envs(task, seeds, **overrides)`` gives N tasks behind one ``reset()`` /
``step(actions [N, A])`` interface: in this process for N = 1, in N subprocesses
(``training.envs.parallel.ParallelEnvs``) otherwise. ``run_episodes`` steps them until every
environment has finished one episode and returns the episodes in the replay format.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from training.envs.base import Obs, Task
from training.envs.parallel import stack
from training.replay import Episode, EpisodeBuilder


class Envs(Protocol):
    obs_space: dict
    act_space: Any
    sensors: tuple[str, ...]
    state_names: tuple[str, ...]  # the privileged ``state`` elements; () when none

    def __len__(self) -> int: ...
    def reset(self) -> Obs: ...
    def step(self, actions: np.ndarray) -> Obs: ...
    def close(self) -> None: ...


class LocalEnvs:
    """Tasks stepped one after the other in this process (same semantics as ParallelEnvs)."""

    def __init__(self, tasks: Sequence[Task]):
        self.tasks = list(tasks)
        self.obs_space = self.tasks[0].obs_space
        self.act_space = self.tasks[0].act_space
        self.sensors = self.tasks[0].sensors
        self.control_period = self.tasks[0].control_period
        self.state_names = self.tasks[0].state_names
        self._needs_reset = [True] * len(self.tasks)

    def __len__(self) -> int:
        return len(self.tasks)

    def reset(self) -> Obs:
        observations = [task.reset() for task in self.tasks]
        self._needs_reset = [bool(o["is_last"]) for o in observations]
        return stack(observations)

    def step(self, actions: np.ndarray) -> Obs:
        observations = [task.reset() if reset else task.step(action)
                        for task, reset, action in zip(self.tasks, self._needs_reset, actions,
                                                       strict=True)]
        self._needs_reset = [bool(o["is_last"]) for o in observations]
        return stack(observations)

    def close(self) -> None:
        for task in self.tasks:
            task.close()


EnvFactory = Callable[[str, Sequence[int], Mapping[str, Any]], Envs]


def make_envs(task: str, seeds: Sequence[int], overrides: Mapping[str, Any]) -> Envs:
    """The default environment factory."""
    if len(seeds) == 1:
        from training.envs import make_task

        return LocalEnvs([make_task(task, int(seeds[0]), **overrides)])
    from training.envs.parallel import ParallelEnvs

    return ParallelEnvs(task, [int(s) for s in seeds], **overrides)


def _row(obs: Obs, index: int) -> dict[str, np.ndarray]:
    return {k: v[index] for k, v in obs.items()}


def run_episodes(envs: Envs, policy: Callable[[Obs], np.ndarray], action_dim: int
                 ) -> list[Episode]:
    """One episode per environment (all started together); policy sees stacked obs."""
    policy_reset = getattr(policy, "reset", None)
    if policy_reset is not None:
        policy_reset()
    obs = envs.reset()
    n = len(envs)
    builders = [EpisodeBuilder() for _ in range(n)]
    done = np.zeros(n, bool)
    for i in range(n):
        builders[i].add(_row(obs, i))
    while not done.all():
        actions = np.asarray(policy(obs), np.float32)
        if actions.shape != (n, action_dim):
            raise ValueError(f"policy returned actions of shape {actions.shape}, expected "
                             f"{(n, action_dim)}")
        for i in np.flatnonzero(~done):
            builders[i].set_action(actions[i])
        obs = envs.step(actions)
        for i in np.flatnonzero(~done):
            builders[i].add(_row(obs, i))
            done[i] = bool(obs["is_last"][i])
    return [b.finish(action_dim) for b in builders]


def episode_return(episode: Episode) -> float:
    return float(np.sum(episode["reward"][1:]))
