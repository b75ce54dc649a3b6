"""Proprioception for the fusion variant: low-dimensional robot state at every step.

What counts as proprioceptive is task dependent (paper §4.2.3): the robot's own
configuration, never what has to be inferred from the camera. The paper's
definitions (docs/design.md §4.3) for cheetah, walker, cartpole and cup; ours (marked) for
the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.envs.base import Obs, Task, Wrapper
from training.envs.dmc import DMCTask
from training.envs.spaces import ArraySpace, bool_space, time_space


@dataclass(frozen=True)
class ProprioSpec:
    """A slice ``[start:stop]`` of one dm_control observation entry."""

    key: str
    start: int | None
    stop: int | None
    description: str

    def extract(self, state_observation: dict[str, np.ndarray]) -> np.ndarray:
        values = np.asarray(state_observation[self.key], np.float32).reshape(-1)
        return values[self.start : self.stop].copy()


PROPRIO_SPECS: dict[str, ProprioSpec] = {
    "cheetah": ProprioSpec("position", -6, None, "the 6 joint angles (position[-6:]); paper"),
    "walker": ProprioSpec("orientations", None, None, "the 14 body orientations; paper"),
    "cartpole": ProprioSpec("position", None, 1, "cart position (position[:1]); paper"),
    "ball_in_cup": ProprioSpec("position", None, 2, "cup x, z (position[:2]); paper"),
    "reacher": ProprioSpec(
        "position", None, None, "the 2 arm joint angles; ours (the target is left to the camera)"
    ),
    "hopper": ProprioSpec(
        "position", -4, None, "the 4 joint angles (position[-4:]), as for cheetah; ours"
    ),
    "pendulum": ProprioSpec(
        "velocity", None, None, "angular velocity (a gyro; the angle is left to the camera); ours"
    ),
}


def proprio_spec(domain: str) -> ProprioSpec:
    try:
        return PROPRIO_SPECS[domain]
    except KeyError:
        raise ValueError(
            f"no proprioception defined for domain {domain!r}; defined for: "
            f"{', '.join(sorted(PROPRIO_SPECS))}"
        ) from None


class Proprioception(Wrapper):
    """Adds ``proprio`` (float32 [P]), valid at every step, stamped with physics time."""

    def __init__(self, task: Task, spec: ProprioSpec) -> None:
        super().__init__(task)
        base = task.unwrapped
        if not isinstance(base, DMCTask):
            raise TypeError("Proprioception needs a DMCTask underneath")
        if spec.key not in base.state_spec:
            raise ValueError(f"dm_control observation has no {spec.key!r}: {base.state_spec}")
        self._base = base
        self.spec = spec
        size = int(np.prod(base.state_spec[spec.key]))
        self.size = len(range(size)[spec.start : spec.stop])

    @property
    def obs_space(self) -> dict[str, ArraySpace]:
        return {
            **self.task.obs_space,
            "proprio": ArraySpace((self.size,), np.float32),
            "valid/proprio": bool_space(),
            "time/proprio": time_space(),
        }

    @property
    def sensors(self) -> tuple[str, ...]:
        return ("proprio", *self.task.sensors)

    def reset(self) -> Obs:
        return self._add(self.task.reset())

    def step(self, action: np.ndarray, *, render: bool = True) -> Obs:
        return self._add(self.task.step(action, render=render))

    def _add(self, obs: Obs) -> Obs:
        obs["proprio"] = self.spec.extract(self._base.state_observation)
        obs["valid/proprio"] = np.bool_(True)
        obs["time/proprio"] = np.float64(self._base.time)
        return obs


def measured_state_names(task: Task) -> tuple[str, ...]:
    """The ``state`` elements the task's proprioception measures directly (by name), e.g.
    ``("cart_position",)`` for cartpole fusion; () for a task without proprioception. The
    rest of the state is hidden: it must be inferred."""
    wrapper: Task | None = task
    spec = None
    while isinstance(wrapper, Wrapper):
        if isinstance(wrapper, Proprioception):
            spec = wrapper.spec
            break
        wrapper = wrapper.task
    base = task.unwrapped
    if spec is None or not isinstance(base, DMCTask):
        return ()
    names, offset = base.state_names, 0
    for key, shape in base.state_spec.items():
        size = int(np.prod(shape)) if shape else 1
        if key == spec.key:
            return tuple(names[offset + i] for i in range(size)[spec.start:spec.stop])
        offset += size
    return ()
