"""The task interface the training loop uses, and the base class of the variant wrappers.

A task follows the embodied API of DreamerV3: ``reset()`` and ``step(action)``
both return one observation dict (docs/design.md §1) that also carries ``reward``,
``is_first``, ``is_last`` and ``is_terminal``. After ``is_last`` call ``reset()``.

Keys of the observation dict:

* ``image`` uint8 [H, W, 3], ``valid/image`` bool, ``time/image`` float64
* ``proprio`` float32 [P], ``valid/proprio`` bool, ``time/proprio`` float64 (fusion)
* ``mask/image`` bool [H, W], True where the pixel is visible (occlusion tasks)
* ``reward`` float32, ``is_first``, ``is_last``, ``is_terminal`` bool
* ``state`` float32 [S]: the simulator's privileged state (``training.envs.state``), for
  judging the estimator only; never a model input. ``Task.state_names`` names its elements.

A missing sensor reading is all zeros with ``valid/<sensor>`` False and
``time/<sensor>`` 0.0. Time stamps are seconds of physics time at which the
reading was taken (the end of the agent step).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from training.envs.spaces import ArraySpace

Obs = dict[str, np.ndarray]


class Task(ABC):
    """One episodic environment; see the module docstring for the observation dict."""

    @property
    @abstractmethod
    def obs_space(self) -> dict[str, ArraySpace]:
        """Every key of the observation dict with its shape, dtype and bounds."""

    @property
    @abstractmethod
    def act_space(self) -> ArraySpace:
        """The action: float, shape [A], bounds [-1, 1] for the DMC suite."""

    @property
    @abstractmethod
    def control_period(self) -> float:
        """Seconds of physics time per agent step (timestep x sub-steps x action repeat)."""

    @property
    @abstractmethod
    def sensors(self) -> tuple[str, ...]:
        """Names of the sensors in update order (proprio first), e.g. ('proprio', 'image')."""

    @abstractmethod
    def reset(self) -> Obs:
        """Start a new episode; the returned dict has ``is_first`` True and reward 0."""

    @abstractmethod
    def step(self, action: np.ndarray, *, render: bool = True) -> Obs:
        """Apply ``action`` for one agent step.

        Raises ValueError for an action of the wrong shape or with NaN/inf entries;
        entries outside ``act_space`` bounds are clipped. ``render=False`` skips the
        camera for this step (the image is then reported missing); the
        missing-frames wrapper uses it so that dropped frames cost no rendering.
        """

    @property
    def state_names(self) -> tuple[str, ...]:
        """Names of the ``state`` elements; () for a task without a privileged state."""
        return ()

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to free by default
        """Release rendering and simulation resources."""

    @property
    def unwrapped(self) -> Task:
        """The innermost task (the dm_control task itself)."""
        return self

    def __enter__(self) -> Task:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Wrapper(Task):
    """Forwards everything to the wrapped task; subclasses override what they change."""

    def __init__(self, task: Task) -> None:
        self.task = task

    @property
    def obs_space(self) -> dict[str, ArraySpace]:
        return self.task.obs_space

    @property
    def act_space(self) -> ArraySpace:
        return self.task.act_space

    @property
    def control_period(self) -> float:
        return self.task.control_period

    @property
    def sensors(self) -> tuple[str, ...]:
        return self.task.sensors

    @property
    def state_names(self) -> tuple[str, ...]:
        return self.task.state_names

    def reset(self) -> Obs:
        return self.task.reset()

    def step(self, action: np.ndarray, *, render: bool = True) -> Obs:
        return self.task.step(action, render=render)

    def close(self) -> None:
        self.task.close()

    @property
    def unwrapped(self) -> Task:
        return self.task.unwrapped


def mark_image_missing(obs: Obs) -> Obs:
    """Zero the image (and its mask and time stamp) and flag it invalid, in place."""
    obs["image"] = np.zeros_like(obs["image"])
    obs["valid/image"] = np.bool_(False)
    obs["time/image"] = np.float64(0.0)
    if "mask/image" in obs:
        obs["mask/image"] = np.zeros_like(obs["mask/image"])
    return obs
