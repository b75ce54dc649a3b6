"""Training acts in unit range and the environment gets its own bounds
(``training.driver.run_episodes``): a task with bounds [0, 4] x [-3, -1] receives
``centre + unit * half``, the episode (what the world model learns from) keeps the unit
action, [-1, 1] bounds change no value of it, and bounds a tanh actor
cannot reach are refused before any step. Exact comparisons (float32 arithmetic of the
same conversion; the hand-computed values are exact in float32)."""

from __future__ import annotations

import numpy as np
import pytest

from training.driver import LocalEnvs, env_actions, run_episodes
from training.envs.spaces import ArraySpace


class BoundedTask:
    """Three steps of a one-number observation; records the actions it is given."""

    sensors = ("proprio",)
    state_names = ()
    control_period = 0.02

    def __init__(self, low, high):
        self.obs_space = {"proprio": ArraySpace((1,), np.dtype(np.float32))}
        self.act_space = ArraySpace((2,), np.dtype(np.float32), low, high)
        self.applied: list[np.ndarray] = []
        self.t = 0

    def _obs(self) -> dict:
        return {"proprio": np.array([self.t], np.float32), "reward": np.float32(0.0),
                "is_first": self.t == 0, "is_last": self.t == 3, "is_terminal": False}

    def reset(self) -> dict:
        self.t = 0
        return self._obs()

    def step(self, action) -> dict:
        self.applied.append(np.array(action, copy=True))
        self.t += 1
        return self._obs()

    def close(self) -> None:
        pass


UNIT = np.array([[-1.0, 0.5]], np.float32)


def _policy(obs):
    return UNIT


def test_the_environment_gets_its_bounds_and_the_episode_keeps_unit_actions():
    task = BoundedTask(np.array([0.0, -3.0]), np.array([4.0, -1.0]))
    (episode,) = run_episodes(LocalEnvs([task]), _policy, 2)
    # centre (2, -2), half (2, 1): -1 -> 0, 0.5 -> -1.5
    assert [a.tolist() for a in task.applied] == [[0.0, -1.5]] * 3
    assert episode["action"][:3].tolist() == [[-1.0, 0.5]] * 3


def test_unit_bounds_change_no_value_of_the_policy_action():
    to_env = env_actions(ArraySpace((2,), np.dtype(np.float32), -1.0, 1.0), 2)
    rng = np.random.default_rng(0)
    unit = rng.uniform(-1, 1, (64, 2)).astype(np.float32)
    # bit-equal (these draws hold no -0.0, which 0 + u * 1 turns into +0.0)
    assert to_env(unit).dtype == np.float32 and to_env(unit).tobytes() == unit.tobytes()
    task = BoundedTask(-1.0, 1.0)
    run_episodes(LocalEnvs([task]), _policy, 2)
    assert [a.tolist() for a in task.applied] == [UNIT[0].tolist()] * 3


@pytest.mark.parametrize("low, high", [(None, None), (-np.inf, np.inf), (0.0, None)])
def test_bounds_a_tanh_actor_cannot_reach_are_refused_before_a_step(low, high):
    task = BoundedTask(low, high)
    with pytest.raises(ValueError, match="bounds"):
        run_episodes(LocalEnvs([task]), _policy, 2)
    assert task.applied == []
