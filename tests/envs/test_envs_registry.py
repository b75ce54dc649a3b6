"""Task names, defaults, overrides and seeding (no dm_control needed)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest

from training.envs import (
    ACTION_NOISE_STD,
    BASE_TASKS,
    TaskConfig,
    TaskSeeds,
    Variant,
    list_tasks,
    planet_action_repeat,
    task_config,
)


def test_list_tasks_covers_every_base_variant_and_noise_combination():
    names = list_tasks()
    assert len(names) == len(set(names)) == 8 * 5 * 2
    for required in [
        "cheetah_run",
        "cheetah_run-noise",
        "walker_walk-occlusion_walls",
        "cartpole_swingup-fusion",
        "cheetah_run-missing",
        "cheetah_run-missing-noise",
        "ball_in_cup_catch-occlusion_disks-noise",
        "pendulum_swingup-fusion",
    ]:
        assert required in names


@pytest.mark.parametrize("name", list_tasks())
def test_every_listed_name_parses_back_to_its_variant(name):
    config = task_config(name)
    assert config.name == name
    assert (config.action_noise_std > 0) == name.endswith("-noise")
    stem = name.removesuffix("-noise")
    expected = stem.split("-")[1] if "-" in stem else "standard"
    assert config.variant is Variant(expected)


def test_cup_catch_is_an_alias_for_ball_in_cup_catch():
    config = task_config("cup_catch-fusion-noise")
    assert (config.domain, config.task, config.variant) == ("ball_in_cup", "catch", Variant.FUSION)
    assert config.action_noise_std == 0.3


@pytest.mark.parametrize(
    ("name", "std"),
    [
        ("cheetah_run-noise", 0.2),
        ("walker_walk-missing-noise", 0.2),
        ("cartpole_swingup-occlusion_walls-noise", 0.3),
        ("cup_catch-noise", 0.3),
        ("cheetah_run-missing", 0.0),
    ],
)
def test_action_noise_defaults_follow_the_paper(name, std):
    assert task_config(name).action_noise_std == std


def test_defaults_match_the_design():
    config = task_config("cheetah_run")
    assert (config.action_repeat, config.episode_length, config.image_size) == (2, 1000, 64)
    assert config.camera_id == 0 and config.frame_gap == (4, 8)
    assert set(ACTION_NOISE_STD) == set(BASE_TASKS), "every base task has a default noise std"


def test_planet_action_repeat_per_domain():
    assert [planet_action_repeat(d) for d in ("cheetah", "walker", "cartpole", "ball_in_cup")] == [
        4,
        2,
        8,
        4,
    ]
    assert planet_action_repeat("hopper") == 2


def test_overrides_replace_defaults():
    config = task_config("cheetah_run-noise", action_repeat=4, action_noise_std=0.5)
    assert config.action_repeat == 4 and config.action_noise_std == 0.5


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("cheetah_runn", "Did you mean cheetah_run"),
        ("cheetah_run-blur", "no variant 'blur'"),
        ("cheetah_run-standard", "standard variant has no suffix"),
        ("cheetah_run-missing-fusion", "too many"),
        ("", "non-empty"),
    ],
)
def test_bad_names_are_refused_with_the_naming_scheme(name, fragment):
    with pytest.raises(ValueError) as info:
        task_config(name)
    message = str(info.value)
    assert fragment in message
    assert "cheetah_run" in message and "occlusion_walls" in message and "cup_catch" in message


def test_unknown_suite_task_lists_valid_names():
    pytest.importorskip("dm_control")
    with pytest.raises(ValueError, match="neither a registered task nor a dm_control suite task"):
        task_config("cheetah_fly")


@pytest.mark.parametrize("key", ["action_repat", "domain", "variant"])
def test_unknown_or_fixed_overrides_are_refused(key):
    with pytest.raises(TypeError, match="valid: action_noise_std"):
        task_config("cheetah_run", **{key: 1})


@pytest.mark.parametrize(
    "overrides",
    [
        {"action_repeat": 0},
        {"episode_length": -5},
        {"image_size": 2.5},
        {"frame_gap": (5, 4)},
        {"frame_gap": (0, 3)},
        {"action_noise_std": -0.1},
        {"action_noise_std": math.nan},
    ],
)
def test_invalid_override_values_are_refused(overrides):
    with pytest.raises(ValueError):
        task_config("cheetah_run", **overrides)


def test_task_config_is_immutable():
    config = task_config("cheetah_run")
    assert isinstance(config, TaskConfig)
    with pytest.raises(AttributeError):
        config.action_repeat = 3  # type: ignore[misc]


def test_seeds_are_reproducible_and_independent_per_source():
    first, again, other = TaskSeeds.from_seed(3), TaskSeeds.from_seed(3), TaskSeeds.from_seed(4)
    draws = [g.random(4) for g in first]
    assert all(np.array_equal(d, g.random(4)) for d, g in zip(draws, again, strict=True))
    assert not np.array_equal(draws[0], other.physics.random(4))
    assert len({tuple(d) for d in draws}) == len(draws), "each source has its own stream"


@pytest.mark.parametrize("seed", [-1, 1.5, True, "0"])
def test_bad_seeds_are_refused(seed):
    with pytest.raises(ValueError, match="seed"):
        TaskSeeds.from_seed(seed)


def test_importing_the_package_has_no_side_effects():
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM")}
    code = (
        "import os, sys\n"
        "import training.envs, training.envs.gym_env, training.envs.parallel\n"
        "import training.envs.preview, training.envs.rendering, training.envs.dmc\n"
        "assert 'dm_control' not in sys.modules, 'dm_control imported'\n"
        "assert 'mujoco' not in sys.modules, 'mujoco imported'\n"
        "assert 'MUJOCO_GL' not in os.environ, 'MUJOCO_GL set at import'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
