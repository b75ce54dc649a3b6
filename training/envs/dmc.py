"""The base task: a dm_control suite task seen through camera 0 as 64x64 RGB frames."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from training.envs.base import Obs, Task
from training.envs.rendering import CameraFrames, configure_headless_rendering
from training.envs.spaces import ArraySpace, bool_space, check_action, time_space
from training.envs.state import concat_state, state_names


@dataclass(frozen=True)
class DMCSettings:
    """How the dm_control task is run and seen.

    ``episode_length`` counts environment (control) steps, as dm_control does: an
    episode has ``ceil(episode_length / action_repeat)`` agent steps (1000 and 2
    give 500). ``fast_render`` False uses dm_control's default render settings
    (for the benchmark's comparison only).
    """

    domain: str
    task: str
    action_repeat: int = 2
    episode_length: int = 1000
    image_size: int = 64
    camera_id: int = 0
    fast_render: bool = True

    def __post_init__(self) -> None:
        for name in ("action_repeat", "episode_length", "image_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    @property
    def agent_steps_per_episode(self) -> int:
        return math.ceil(self.episode_length / self.action_repeat)


def load_suite_environment(domain: str, task: str, random_state: np.random.RandomState) -> Any:
    """``dm_control.suite.load`` without a time limit (episodes are ended by DMCTask)."""
    configure_headless_rendering()
    from dm_control import suite

    if (domain, task) not in suite.ALL_TASKS:
        known = ", ".join(f"{d}_{t}" for d, t in suite.ALL_TASKS)
        raise ValueError(f"unknown dm_control suite task {domain}_{task}; known: {known}")
    return suite.load(
        domain, task, task_kwargs={"random": random_state, "time_limit": float("inf")}
    )


class DMCTask(Task):
    """A dm_control suite task with action repeat, image observations and episode limits.

    ``rng`` seeds the physics (initial states): the same generator state gives the
    same episodes, frames and rewards. Rewards are summed over the repeated
    actions. ``is_terminal`` is True only when dm_control reports a terminal state
    (discount 0); reaching ``episode_length`` sets ``is_last`` alone.
    """

    def __init__(self, settings: DMCSettings, rng: np.random.Generator) -> None:
        self.settings = settings
        seed = int(rng.integers(2**31 - 1))
        self._env = load_suite_environment(
            settings.domain, settings.task, np.random.RandomState(seed)
        )
        self.physics = self._env.physics
        self._frames = CameraFrames(
            self.physics, settings.image_size, settings.camera_id, fast=settings.fast_render
        )
        spec = self._env.action_spec()
        self._act_space = ArraySpace(spec.shape, np.float64, spec.minimum, spec.maximum)
        size = settings.image_size
        obs_spec = self._env.observation_spec()
        self._state_keys = tuple(obs_spec)
        self._state_names = state_names({k: v.shape for k, v in obs_spec.items()},
                                       settings.domain, f"{settings.domain}_{settings.task}")
        self._obs_space = {
            "image": ArraySpace((size, size, 3), np.uint8, 0, 255),
            "valid/image": bool_space(),
            "time/image": time_space(),
            "reward": ArraySpace((), np.float32),
            "is_first": bool_space(),
            "is_last": bool_space(),
            "is_terminal": bool_space(),
            "state": ArraySpace((len(self._state_names),), np.float32),
        }
        self._control_period = self._env.control_timestep() * settings.action_repeat
        self._env_steps = 0
        self._running = False
        self.state_observation: dict[str, np.ndarray] = {}

    @property
    def obs_space(self) -> dict[str, ArraySpace]:
        return dict(self._obs_space)

    @property
    def act_space(self) -> ArraySpace:
        return self._act_space

    @property
    def control_period(self) -> float:
        return self._control_period

    @property
    def sensors(self) -> tuple[str, ...]:
        return ("image",)

    @property
    def state_names(self) -> tuple[str, ...]:
        return self._state_names

    @property
    def state_spec(self) -> dict[str, tuple[int, ...]]:
        """Shapes of dm_control's low-dimensional observations (for proprioception)."""
        return {key: spec.shape for key, spec in self._env.observation_spec().items()}

    @property
    def time(self) -> float:
        """Current physics time in seconds."""
        return float(self.physics.data.time)

    def render_frame(self) -> np.ndarray:
        """The camera's current view, whatever the variant wrappers report."""
        return self._frames.render()

    def reset(self) -> Obs:
        time_step = self._env.reset()
        self._env_steps = 0
        self._running = True
        self.state_observation = dict(time_step.observation)
        return self._observation(0.0, first=True, last=False, terminal=False, render=True)

    def step(self, action: np.ndarray, *, render: bool = True) -> Obs:
        if not self._running:
            raise RuntimeError("call reset() before step() (and again after is_last)")
        action = check_action(action, self._act_space)
        reward = 0.0
        terminal = False
        for _ in range(self.settings.action_repeat):
            time_step = self._env.step(action)
            reward += time_step.reward or 0.0
            self._env_steps += 1
            terminal = time_step.last() and time_step.discount == 0
            if terminal or self._env_steps >= self.settings.episode_length:
                break
        last = terminal or self._env_steps >= self.settings.episode_length
        self._running = not last
        self.state_observation = dict(time_step.observation)
        return self._observation(reward, first=False, last=last, terminal=terminal, render=render)

    def _observation(
        self, reward: float, *, first: bool, last: bool, terminal: bool, render: bool
    ) -> Obs:
        if render:
            image = self._frames.render()
            stamp = self.time
        else:
            image = self._obs_space["image"].zeros()
            stamp = 0.0
        return {
            "image": image,
            "valid/image": np.bool_(render),
            "time/image": np.float64(stamp),
            "reward": np.float32(reward),
            "is_first": np.bool_(first),
            "is_last": np.bool_(last),
            "is_terminal": np.bool_(terminal),
            "state": concat_state(self.state_observation, self._state_keys),
        }

    def close(self) -> None:
        self._frames.close()
        self._env.close()
        self._running = False
