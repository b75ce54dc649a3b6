"""A tiny numpy task for the wrapper tests (imported by test_envs_wrappers.py)."""

from __future__ import annotations

import numpy as np

from training.envs.base import Obs, Task
from training.envs.spaces import ArraySpace, bool_space, check_action, time_space


class FakeTask(Task):
    """A numpy stand-in for DMCTask: frame k is filled with the value k + 1.

    Records the actions it receives and the render flags it is asked for.
    """

    def __init__(self, size: int = 8, episode_steps: int = 50, period: float = 0.1):
        self.size = size
        self.episode_steps = episode_steps
        self.period = period
        self.actions: list[np.ndarray] = []
        self.render_flags: list[bool] = []
        self._t = 0

    @property
    def obs_space(self) -> dict[str, ArraySpace]:
        return {
            "image": ArraySpace((self.size, self.size, 3), np.uint8, 0, 255),
            "valid/image": bool_space(),
            "time/image": time_space(),
            "reward": ArraySpace((), np.float32),
            "is_first": bool_space(),
            "is_last": bool_space(),
            "is_terminal": bool_space(),
        }

    @property
    def act_space(self) -> ArraySpace:
        return ArraySpace((2,), np.float64, -1.0, 1.0)

    @property
    def control_period(self) -> float:
        return self.period

    @property
    def sensors(self) -> tuple[str, ...]:
        return ("image",)

    def _obs(self, render: bool) -> Obs:
        self.render_flags.append(render)
        value = (self._t + 1) % 256 if render else 0
        return {
            "image": np.full((self.size, self.size, 3), value, np.uint8),
            "valid/image": np.bool_(render),
            "time/image": np.float64(self._t * self.period if render else 0.0),
            "reward": np.float32(1.0),
            "is_first": np.bool_(self._t == 0),
            "is_last": np.bool_(self._t >= self.episode_steps),
            "is_terminal": np.bool_(False),
        }

    def reset(self) -> Obs:
        self._t = 0
        return self._obs(True)

    def step(self, action: np.ndarray, *, render: bool = True) -> Obs:
        self.actions.append(check_action(action, self.act_space))
        self._t += 1
        return self._obs(render)
