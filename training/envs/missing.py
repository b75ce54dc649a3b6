"""Missing-frames variant: images arrive only every n agent steps, n random."""

from __future__ import annotations

import numpy as np

from training.envs.base import Obs, Task, Wrapper, mark_image_missing


def check_frame_gap(gap: tuple[int, int]) -> tuple[int, int]:
    low, high = gap
    if not (isinstance(low, int) and isinstance(high, int) and 1 <= low <= high):
        raise ValueError(f"frame gap must be integers 1 <= low <= high, got {gap}")
    return low, high


class MissingFrames(Wrapper):
    """Keeps the first frame of an episode, then one frame every n agent steps.

    n is drawn uniformly from ``{gap[0], ..., gap[1]}`` (default {4..8}, paper
    §4.2.2) after every valid frame. Frames in between are not rendered at all;
    they are reported as zeros with ``valid/image`` False and ``time/image`` 0.
    """

    def __init__(self, task: Task, rng: np.random.Generator, gap: tuple[int, int] = (4, 8)):
        super().__init__(task)
        self.gap = check_frame_gap(gap)
        self._rng = rng
        self._step = 0
        self._next_valid = 0

    def _draw_gap(self) -> int:
        return int(self._rng.integers(self.gap[0], self.gap[1] + 1))

    def reset(self) -> Obs:
        self._step = 0
        self._next_valid = self._draw_gap()
        return self.task.reset()

    def step(self, action: np.ndarray, *, render: bool = True) -> Obs:
        self._step += 1
        valid = self._step == self._next_valid
        if valid:
            self._next_valid += self._draw_gap()
        obs = self.task.step(action, render=render and valid)
        return obs if valid else mark_image_missing(obs)
