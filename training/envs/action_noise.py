"""Transition noise: Gaussian noise on the agent action, once per agent step."""

from __future__ import annotations

import math

import numpy as np

from training.envs.base import Obs, Task, Wrapper
from training.envs.spaces import check_action


class ActionNoise(Wrapper):
    """Adds N(0, std^2) to every entry of the (clipped) agent action, then clips again.

    The noise is drawn once per agent step, so all repeated physics steps of that
    agent step apply the same noisy action (paper §4.2). The agent never sees the
    noisy action: the world model must treat it as transition noise.
    """

    def __init__(self, task: Task, std: float, rng: np.random.Generator) -> None:
        super().__init__(task)
        if not math.isfinite(std) or std < 0:
            raise ValueError(f"action noise std must be finite and >= 0, got {std}")
        self.std = float(std)
        self._rng = rng
        self.last_applied_action: np.ndarray | None = None

    def step(self, action: np.ndarray, *, render: bool = True) -> Obs:
        space = self.act_space
        clean = check_action(action, space)
        noisy = np.clip(
            clean + self._rng.normal(0.0, self.std, size=clean.shape), space.low, space.high
        )
        self.last_applied_action = noisy
        return self.task.step(noisy, render=render)
