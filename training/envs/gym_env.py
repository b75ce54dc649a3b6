"""A gymnasium.Env view of every task, for other RL libraries.

The observation is a ``spaces.Dict`` of the sensor entries of the observation
dict (``image``, ``valid/image``, ``time/image``, ``proprio``, ``mask/image``...);
``reward``, ``is_last`` and ``is_terminal`` become gymnasium's reward,
``terminated`` (``is_terminal``) and ``truncated`` (``is_last`` without
``is_terminal``). ``mask/image`` is training-only information: a policy should not
read it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium
import numpy as np
from gymnasium import spaces

from training.envs.base import Obs, Task
from training.envs.registry import list_tasks, make_task
from training.envs.spaces import ArraySpace

STEP_KEYS = ("reward", "is_first", "is_last", "is_terminal")
GYM_ID_PREFIX = "vrkn/"


def to_gym_space(space: ArraySpace) -> spaces.Box:
    """An ArraySpace as a gymnasium Box (unbounded sides become +-inf)."""
    if space.dtype == np.bool_:
        return spaces.Box(0, 1, space.shape, np.bool_)
    if space.dtype == np.uint8:
        return spaces.Box(0, 255, space.shape, np.uint8)
    low = -np.inf if space.low is None else space.low
    high = np.inf if space.high is None else space.high
    low = np.broadcast_to(np.asarray(low, space.dtype), space.shape)
    high = np.broadcast_to(np.asarray(high, space.dtype), space.shape)
    return spaces.Box(low, high, space.shape, space.dtype)


class GymTask(gymnasium.Env):
    """``make_task(name, seed, **overrides)`` behind the gymnasium API.

    ``reset(seed=s)`` rebuilds the task with seed ``s`` (same seed, same episodes);
    ``reset()`` without a seed continues the current seed's stream of episodes.
    ``render()`` returns the last image the agent saw.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"]}

    def __init__(self, name: str, seed: int = 0, render_mode: str | None = None, **overrides):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        self._name = name
        self._overrides = overrides
        self._seed = seed
        self.task: Task = make_task(name, seed, **overrides)
        self.observation_space = spaces.Dict(
            {k: to_gym_space(s) for k, s in self.task.obs_space.items() if k not in STEP_KEYS}
        )
        act = self.task.act_space
        self.action_space = spaces.Box(
            np.asarray(act.low, np.float32),
            np.asarray(act.high, np.float32),
            act.shape,
            np.float32,
        )
        self._last_image: np.ndarray | None = None

    def _split(self, obs: Obs) -> dict[str, np.ndarray]:
        self._last_image = obs["image"]
        return {k: np.asarray(v) for k, v in obs.items() if k not in STEP_KEYS}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self.task.close()
            self._seed = seed
            self.task = make_task(self._name, seed, **self._overrides)
        obs = self.task.reset()
        return self._split(obs), {"is_first": bool(obs["is_first"])}

    def step(self, action: np.ndarray):
        obs = self.task.step(np.asarray(action))
        terminated = bool(obs["is_terminal"])
        truncated = bool(obs["is_last"]) and not terminated
        return self._split(obs), float(obs["reward"]), terminated, truncated, {}

    def render(self) -> np.ndarray | None:
        return None if self._last_image is None else self._last_image.copy()

    def close(self) -> None:
        self.task.close()


def register_gymnasium_envs() -> list[str]:
    """Register every task as ``vrkn/<name>`` (e.g. ``gymnasium.make("vrkn/cup_catch-missing")``).

    Call it yourself; importing this module registers nothing. Returns the ids.
    """
    ids = []
    for name in list_tasks():
        env_id = GYM_ID_PREFIX + name
        if env_id not in gymnasium.registry:
            gymnasium.register(
                id=env_id, entry_point="training.envs.gym_env:GymTask", kwargs={"name": name}
            )
        ids.append(env_id)
    return ids
