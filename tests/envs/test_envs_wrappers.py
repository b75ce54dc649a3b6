"""Variant wrappers on a numpy stand-in task: missing frames, action noise, occlusion."""

from __future__ import annotations

import numpy as np
import pytest
from fake_task import FakeTask
from scipy import stats

from training.envs.action_noise import ActionNoise
from training.envs.missing import MissingFrames
from training.envs.occluders import DiskOccluders, DiskParams
from training.envs.occlusion import Occlusion
from training.envs.spaces import ArraySpace, check_action


def valid_flags(task, steps: int) -> list[bool]:
    flags = [bool(task.reset()["valid/image"])]
    flags += [bool(task.step(np.zeros(2))["valid/image"]) for _ in range(steps)]
    return flags


def gaps(flags: list[bool]) -> np.ndarray:
    return np.diff(np.flatnonzero(flags))


def test_missing_frames_first_valid_then_gaps_in_4_to_8():
    task = MissingFrames(FakeTask(episode_steps=10**6), np.random.default_rng(0))
    flags = valid_flags(task, 6000)
    assert flags[0]
    observed = gaps(flags)
    assert observed.min() >= 4 and observed.max() <= 8
    counts = np.bincount(observed, minlength=9)[4:]
    assert np.all(counts > 0)
    # Uniform over {4..8}: a chi-square test, fixed seed, so no flakiness.
    assert stats.chisquare(counts).pvalue > 0.01
    assert abs(observed.mean() - 6.0) < 0.1


def test_missing_frames_schedule_restarts_at_reset():
    task = MissingFrames(FakeTask(episode_steps=10**6), np.random.default_rng(1))
    first = valid_flags(task, 40)
    second = valid_flags(task, 40)
    assert first[0] and second[0]
    assert gaps(second).min() >= 4
    assert first != second, "a new schedule is drawn for each episode"


def test_missing_frames_are_zeroed_flagged_and_not_rendered():
    inner = FakeTask(episode_steps=10**6)
    task = MissingFrames(inner, np.random.default_rng(2))
    flags = [bool(task.reset()["valid/image"])]
    for _ in range(30):
        obs = task.step(np.zeros(2))
        flags.append(bool(obs["valid/image"]))
        if obs["valid/image"]:
            assert obs["image"].max() > 0 and obs["time/image"] > 0
        else:
            assert not obs["image"].any() and obs["time/image"] == 0.0
    assert inner.render_flags == flags, "the inner task renders exactly the valid frames"
    assert 4 <= sum(flags) <= 8


def test_missing_frames_schedule_is_seeded():
    def flags(seed):
        return valid_flags(MissingFrames(FakeTask(), np.random.default_rng(seed)), 45)

    assert flags(3) == flags(3)
    assert flags(3) != flags(4)


@pytest.mark.parametrize("gap", [(0, 3), (5, 4), (2.5, 4)])
def test_missing_frames_refuse_bad_gaps(gap):
    with pytest.raises(ValueError, match="frame gap"):
        MissingFrames(FakeTask(), np.random.default_rng(0), gap)


def test_missing_frames_over_occlusion_hide_the_mask_too():
    inner = Occlusion(FakeTask(), DiskOccluders(8, DiskParams()), np.random.default_rng(0))
    task = MissingFrames(inner, np.random.default_rng(0))
    assert "mask/image" in task.obs_space
    task.reset()
    seen_invalid = False
    for _ in range(12):
        obs = task.step(np.zeros(2))
        if not obs["valid/image"]:
            seen_invalid = True
            assert not obs["mask/image"].any() and not obs["image"].any()
    assert seen_invalid


def test_occlusion_mask_marks_exactly_the_replaced_pixels():
    occluders = DiskOccluders(8, DiskParams(count=2, radius=(0.2, 0.3)))
    task = Occlusion(FakeTask(), occluders, np.random.default_rng(0))
    obs = task.reset()
    mask = obs["mask/image"]
    assert mask.shape == (8, 8) and mask.dtype == bool
    assert np.all(obs["image"][mask] == 1), "visible pixels keep the true frame"
    frame = occluders.draw()
    assert np.array_equal(obs["image"][~mask], frame.color[~mask])
    assert 0 < mask.mean() < 1


def test_occlusion_refuses_mismatched_sizes():
    with pytest.raises(ValueError, match="do not fit"):
        Occlusion(FakeTask(size=8), DiskOccluders(16, DiskParams()), np.random.default_rng(0))


def test_action_noise_has_the_requested_std_and_is_drawn_once_per_step():
    inner = FakeTask(episode_steps=10**6)
    task = ActionNoise(inner, 0.2, np.random.default_rng(0))
    task.reset()
    for _ in range(4000):
        task.step(np.zeros(2))
    applied = np.array(inner.actions)
    assert applied.shape == (4000, 2), "one (noisy) action per agent step"
    assert abs(applied.std() - 0.2) < 0.01 and abs(applied.mean()) < 0.01
    assert np.array_equal(applied[-1], task.last_applied_action)


def test_action_noise_clips_to_the_bounds():
    inner = FakeTask(episode_steps=10**6)
    task = ActionNoise(inner, 0.3, np.random.default_rng(1))
    task.reset()
    for _ in range(500):
        task.step(np.array([0.95, 3.0]))  # the second entry is clipped before the noise
    applied = np.array(inner.actions)
    assert applied.max() <= 1.0 and applied.min() >= -1.0
    assert np.mean(applied == 1.0) > 0.3, "noise pushing past the bound is clipped to it"
    assert applied[:, 1].mean() < 1.0 and applied[:, 1].mean() > 0.8


def test_action_noise_is_seeded_and_refuses_bad_input():
    def applied(seed):
        inner = FakeTask()
        task = ActionNoise(inner, 0.2, np.random.default_rng(seed))
        task.reset()
        for _ in range(5):
            task.step(np.zeros(2))
        return np.array(inner.actions)

    assert np.array_equal(applied(0), applied(0))
    assert not np.array_equal(applied(0), applied(1))
    task = ActionNoise(FakeTask(), 0.2, np.random.default_rng(0))
    task.reset()
    with pytest.raises(ValueError, match="NaN"):
        task.step(np.array([np.nan, 0.0]))
    with pytest.raises(ValueError, match="shape"):
        task.step(np.zeros(3))
    with pytest.raises(ValueError, match="std"):
        ActionNoise(FakeTask(), -0.1, np.random.default_rng(0))


def test_check_action():
    space = ArraySpace((2,), np.float64, -1.0, 1.0)
    np.testing.assert_array_equal(check_action([2.0, -0.5], space), [1.0, -0.5])
    for bad, match in [([np.inf, 0], "NaN or infinite"), ([0.0], "shape"), ("ab", "numeric")]:
        with pytest.raises(ValueError, match=match):
            check_action(bad, space)
