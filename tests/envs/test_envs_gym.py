"""The gymnasium.Env view of the tasks."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from training.envs.gym_env import GymTask, register_gymnasium_envs

pytestmark = pytest.mark.render


@pytest.mark.filterwarnings("ignore:.*infinity:UserWarning")  # proprio is unbounded
def test_passes_gymnasiums_env_checker():
    env = GymTask("cartpole_swingup-fusion", seed=0, episode_length=30)
    try:
        check_env(env, skip_render_check=True)
        assert {"image", "proprio", "valid/image", "time/proprio"} <= set(env.observation_space)
        assert "reward" not in env.observation_space
    finally:
        env.close()


def test_registered_ids_truncate_at_the_episode_end_and_reseed():
    ids = register_gymnasium_envs()
    assert "vrkn/ball_in_cup_catch-occlusion_walls" in ids
    env = gymnasium.make(
        "vrkn/ball_in_cup_catch-occlusion_walls", episode_length=8, disable_env_checker=True
    )
    try:
        first, info = env.reset(seed=5)
        assert info["is_first"] and first["mask/image"].shape == (64, 64)
        outcomes = [env.step(env.action_space.sample())[2:4] for _ in range(4)]
        assert outcomes == [(False, False)] * 3 + [(False, True)]
        again, _ = env.reset(seed=5)
        assert np.array_equal(first["image"], again["image"])
        assert np.array_equal(first["mask/image"], again["mask/image"])
    finally:
        env.close()
