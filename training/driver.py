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


def env_actions(act_space: Any, action_dim: int) -> Callable[[np.ndarray], np.ndarray]:
    """The policies' unit actions ``[-1, 1]`` (what the world model and the replay hold)
    -> the environment's bounds (``server.runtime.actions.from_unit``, the conversion the
    service applies too; for ``[-1, 1]`` bounds, the DMC suite's, it changes no value).
    ValueError for bounds a tanh actor cannot reach (missing or infinite)."""
    from server.runtime.actions import from_unit

    bounds = [getattr(act_space, "low", None), getattr(act_space, "high", None)]
    if any(b is None for b in bounds):
        raise ValueError("the environment's action space has no bounds: the actor acts in "
                         "[-1, 1] and needs finite bounds to scale to")
    low, high = (np.broadcast_to(np.asarray(b, np.float32), (action_dim,)) for b in bounds)
    from_unit(np.zeros(action_dim), low, high)  # ValueError now for infinite bounds
    return lambda unit: from_unit(unit, low, high)


def run_episodes(envs: Envs, policy: Callable[[Obs], np.ndarray], action_dim: int
                 ) -> list[Episode]:
    """One episode per environment (all started together); policy sees stacked obs. The
    policy acts in unit range, the episodes record that, the environments get their own
    units (``env_actions``)."""
    to_env = env_actions(envs.act_space, action_dim)
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
        obs = envs.step(to_env(actions))
        for i in np.flatnonzero(~done):
            builders[i].add(_row(obs, i))
            done[i] = bool(obs["is_last"][i])
    return [b.finish(action_dim) for b in builders]


def episode_return(episode: Episode) -> float:
    return float(np.sum(episode["reward"][1:]))
