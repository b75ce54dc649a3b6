"""Occlusion variant: moving disks or walls over the image, with a visibility mask."""

from __future__ import annotations

import numpy as np

from training.envs.base import Obs, Task, Wrapper
from training.envs.occluders import Occluders, composite
from training.envs.spaces import ArraySpace, bool_space


class Occlusion(Wrapper):
    """Draws ``occluders`` over every image and adds ``mask/image``.

    ``mask/image`` is True where the true pixel is visible, for masked
    reconstruction (docs/design.md §3.2); the loss mask is training-only information, an
    agent must not read it. A new pattern is drawn from ``rng`` at every reset, and
    the pattern moves once per agent step whether or not the frame is rendered.
    When the image is missing the mask is all False.
    """

    def __init__(self, task: Task, occluders: Occluders, rng: np.random.Generator) -> None:
        super().__init__(task)
        shape = task.obs_space["image"].shape
        if shape[:2] != (occluders.size, occluders.size):
            raise ValueError(f"occluders of size {occluders.size} do not fit images {shape}")
        self.occluders = occluders
        self._rng = rng

    @property
    def obs_space(self) -> dict[str, ArraySpace]:
        size = self.occluders.size
        return {**self.task.obs_space, "mask/image": bool_space((size, size))}

    def reset(self) -> Obs:
        self.occluders.reset(self._rng)
        return self._occlude(self.task.reset())

    def step(self, action: np.ndarray, *, render: bool = True) -> Obs:
        obs = self.task.step(action, render=render)
        self.occluders.advance()
        return self._occlude(obs)

    def _occlude(self, obs: Obs) -> Obs:
        if not obs["valid/image"]:
            obs["mask/image"] = np.zeros((self.occluders.size,) * 2, bool)
            return obs
        frame = self.occluders.draw()
        obs["image"] = composite(obs["image"], frame)
        obs["mask/image"] = frame.visible
        return obs
