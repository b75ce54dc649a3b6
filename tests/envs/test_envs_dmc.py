"""Real dm_control tasks with real rendering: determinism, timing, bounds, variants."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.envs import make_task
from training.envs.dmc import DMCTask

pytestmark = pytest.mark.render

SHORT = {"episode_length": 40}


def rollout(task, actions) -> list[dict]:
    observations = [task.reset()]
    for action in actions:
        observations.append(task.step(action))
    return observations


def random_actions(task, steps: int, seed: int = 0) -> np.ndarray:
    space = task.act_space
    return np.random.default_rng(seed).uniform(space.low, space.high, (steps, *space.shape))


def assert_same(first: list[dict], second: list[dict]) -> None:
    for a, b in zip(first, second, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert np.array_equal(a[key], b[key]), key


@pytest.mark.parametrize(
    "name", ["cheetah_run-occlusion_disks-noise", "cup_catch-fusion-noise", "walker_walk"]
)
def test_same_seed_same_frames_masks_and_rewards(name):
    with make_task(name, 7, **SHORT) as task:
        actions = random_actions(task, 12)
        first = rollout(task, actions)
    with make_task(name, 7, **SHORT) as task:
        second = rollout(task, actions)
    assert_same(first, second)
    with make_task(name, 8, **SHORT) as task:
        other = rollout(task, actions)
    assert any(
        not np.array_equal(a["image"], b["image"]) for a, b in zip(first, other, strict=True)
    )


def test_successive_episodes_differ_but_replay_under_the_seed():
    def two_episodes(seed):
        with make_task("cartpole_swingup", seed, episode_length=4) as task:
            return [task.reset()["image"], *[task.step([0.0])["image"] for _ in range(2)]], [
                task.reset()["image"]
            ]

    (first_a, second_a), (first_b, second_b) = two_episodes(0), two_episodes(0)
    assert np.array_equal(first_a[0], first_b[0]) and np.array_equal(second_a[0], second_b[0])
    assert not np.array_equal(first_a[0], second_a[0]), "a new initial state per episode"


@pytest.mark.parametrize(
    ("name", "repeat", "period"),
    [
        ("cheetah_run", 2, 0.02),
        ("walker_walk", 2, 0.05),
        ("cartpole_swingup", 8, 0.08),
        ("cup_catch", 4, 0.08),
    ],
)
def test_control_period_and_time_stamps(name, repeat, period):
    with make_task(name, 0, action_repeat=repeat, **SHORT) as task:
        assert task.control_period == pytest.approx(period)
        observations = rollout(task, random_actions(task, 3))
    stamps = [float(obs["time/image"]) for obs in observations]
    np.testing.assert_allclose(stamps, np.arange(4) * period, atol=1e-9)


def test_rewards_are_summed_over_the_action_repeat():
    with make_task("walker_walk", 3, action_repeat=1, **SHORT) as single:
        actions = random_actions(single, 6)
        fine = rollout(single, np.repeat(actions, 2, axis=0))
    with make_task("walker_walk", 3, action_repeat=2, **SHORT) as double:
        coarse = rollout(double, actions)
    fine_rewards = np.array([float(o["reward"]) for o in fine[1:]])
    coarse_rewards = np.array([float(o["reward"]) for o in coarse[1:]])
    assert fine_rewards.any(), "walker is rewarded for standing"
    np.testing.assert_allclose(coarse_rewards, fine_rewards.reshape(-1, 2).sum(1), rtol=1e-5)
    assert np.array_equal(coarse[-1]["image"], fine[-1]["image"])


def test_episode_length_counts_environment_steps():
    with make_task("pendulum_swingup", 0, episode_length=10, action_repeat=4) as task:
        obs = task.reset()
        assert obs["is_first"] and not obs["is_last"] and obs["reward"] == 0
        flags = [task.step([0.0]) for _ in range(math.ceil(10 / 4))]
        assert [bool(o["is_last"]) for o in flags] == [False, False, True]
        assert not any(o["is_terminal"] for o in flags), "a time limit is not a terminal state"
        with pytest.raises(RuntimeError, match="reset"):
            task.step([0.0])
        assert task.reset()["is_first"]


def test_step_before_reset_is_refused():
    with make_task("pendulum_swingup", 0) as task, pytest.raises(RuntimeError, match="reset"):
        task.step([0.0])


def test_bad_actions_are_refused_and_out_of_bounds_clipped():
    with make_task("cheetah_run", 1, **SHORT) as task:
        task.reset()
        with pytest.raises(ValueError, match="shape"):
            task.step(np.zeros(5))
        with pytest.raises(ValueError, match="NaN"):
            task.step(np.full(6, np.nan))
        big = [task.step(np.full(6, 5.0)) for _ in range(3)]
    with make_task("cheetah_run", 1, **SHORT) as task:
        task.reset()
        bounded = [task.step(np.ones(6)) for _ in range(3)]
    assert_same(big, bounded)


@pytest.mark.parametrize(
    "name",
    [
        "cheetah_run",
        "walker_walk-occlusion_walls",
        "cup_catch-occlusion_disks",
        "cartpole_swingup-missing-noise",
        "reacher_easy-fusion",
    ],
)
def test_observations_follow_the_declared_spaces(name):
    with make_task(name, 0, **SHORT) as task:
        space = task.obs_space
        for obs in rollout(task, random_actions(task, 8)):
            assert obs.keys() == space.keys()
            for key, value in obs.items():
                assert space[key].contains(value), (key, np.asarray(value).dtype)
        assert ("mask/image" in space) == ("occlusion" in name)
        assert task.sensors == (("proprio", "image") if "fusion" in name else ("image",))


@pytest.mark.parametrize(
    ("name", "size", "key", "start", "stop"),
    [
        ("cheetah_run", 6, "position", -6, None),
        ("walker_walk", 14, "orientations", None, None),
        ("walker_run", 14, "orientations", None, None),
        ("cartpole_swingup", 1, "position", None, 1),
        ("cup_catch", 2, "position", None, 2),
        ("reacher_easy", 2, "position", None, None),
        ("hopper_hop", 4, "position", -4, None),
        ("pendulum_swingup", 1, "velocity", None, None),
    ],
)
def test_fusion_proprio_dimensions_per_task(name, size, key, start, stop):
    with make_task(f"{name}-fusion", 0, **SHORT) as task:
        assert task.obs_space["proprio"].shape == (size,)
        base = task.unwrapped
        assert isinstance(base, DMCTask)
        observations = rollout(task, random_actions(task, 6))
        for obs in observations:
            assert obs["proprio"].shape == (size,) and obs["proprio"].dtype == np.float32
            assert obs["valid/proprio"]
        expected = np.asarray(base.state_observation[key], np.float32).reshape(-1)[start:stop]
        np.testing.assert_array_equal(observations[-1]["proprio"], expected)
        assert observations[-1]["time/proprio"] == pytest.approx(6 * task.control_period)
        assert not all(o["valid/image"] for o in observations), "images are missing at times"


def test_action_noise_changes_trajectories():
    def run(name, seed=4):
        with make_task(name, seed, **SHORT) as task:
            return rollout(task, np.zeros((10, 6)))

    clean, noisy, noisy_again = (
        run("cheetah_run"),
        run("cheetah_run-noise"),
        run("cheetah_run-noise"),
    )
    assert np.array_equal(clean[0]["image"], noisy[0]["image"]), "same initial state"
    assert not np.array_equal(clean[-1]["image"], noisy[-1]["image"])
    assert_same(noisy, noisy_again)


def test_missing_task_drops_frames_on_schedule():
    with make_task("cheetah_run-missing", 2, episode_length=120) as task:
        observations = rollout(task, np.zeros((59, 6)))
    valid = np.array([bool(o["valid/image"]) for o in observations])
    assert valid[0] and 7 <= valid.sum() <= 15
    assert set(np.diff(np.flatnonzero(valid))) <= set(range(4, 9))
    assert all(not o["image"].any() for o in np.array(observations)[~valid])


def test_any_suite_task_by_name():
    with make_task("finger_spin", 0, episode_length=4) as task:
        obs = task.reset()
        assert obs["image"].shape == (64, 64, 3) and obs["image"].std() > 0
        assert task.act_space.shape == (2,)


def test_fast_render_settings_give_nearly_the_same_image():
    with make_task("walker_walk", 0, fast_render=False, **SHORT) as slow:
        reference = slow.reset()["image"].astype(int)
    with make_task("walker_walk", 0, **SHORT) as fast:
        image = fast.reset()["image"].astype(int)
    assert np.abs(reference - image).mean() < 3.0
    assert image.std() > 10, "a real scene, not a blank frame"


def test_bad_camera_is_refused():
    with pytest.raises(ValueError, match="camera_id 9"):
        make_task("cartpole_swingup", 0, camera_id=9)
