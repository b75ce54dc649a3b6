"""Named tasks of the multi-rate DMC suite, and ``make_task``.

Task names are ``<base>[-<variant>][-noise]``:

* ``<base>``: a DMC suite task, ``<domain>_<task>``; registered with documented
  defaults: cheetah_run, walker_walk, walker_run, cartpole_swingup,
  ball_in_cup_catch (alias ``cup_catch``), reacher_easy, hopper_hop,
  pendulum_swingup. Any other dm_control suite task works for the variants that
  need no per-task definition (e.g. ``finger_spin-missing``).
* ``<variant>``: none (standard), ``occlusion_disks``, ``occlusion_walls``,
  ``missing`` or ``fusion`` (missing frames + proprioception at every step).
* ``-noise``: Gaussian action (transition) noise with the task's default std
  (:data:`ACTION_NOISE_STD`). ``cheetah_run-noise`` is action noise alone.

Examples: ``cheetah_run``, ``cup_catch``, ``walker_walk-occlusion_walls``,
``cartpole_swingup-fusion``, ``cheetah_run-missing-noise``.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from training.envs.action_noise import ActionNoise
from training.envs.base import Task
from training.envs.dmc import DMCSettings, DMCTask
from training.envs.missing import MissingFrames, check_frame_gap
from training.envs.occluders import DiskParams, WallParams, make_occluders
from training.envs.occlusion import Occlusion
from training.envs.proprio import Proprioception, proprio_spec


class Variant(enum.StrEnum):
    STANDARD = "standard"
    OCCLUSION_DISKS = "occlusion_disks"
    OCCLUSION_WALLS = "occlusion_walls"
    MISSING = "missing"
    FUSION = "fusion"


NOISE_SUFFIX = "noise"

# Registered base tasks: name -> (domain, task).
BASE_TASKS: dict[str, tuple[str, str]] = {
    "cheetah_run": ("cheetah", "run"),
    "walker_walk": ("walker", "walk"),
    "walker_run": ("walker", "run"),
    "cartpole_swingup": ("cartpole", "swingup"),
    "ball_in_cup_catch": ("ball_in_cup", "catch"),
    "reacher_easy": ("reacher", "easy"),
    "hopper_hop": ("hopper", "hop"),
    "pendulum_swingup": ("pendulum", "swingup"),
}
ALIASES = {"cup_catch": "ball_in_cup_catch"}

# Action-noise std of the ``-noise`` tasks. Paper §4.2: cheetah, walker 0.2;
# cartpole, cup 0.3. Ours, by analogy: locomotion 0.2, the rest 0.3.
ACTION_NOISE_STD = {
    "cheetah_run": 0.2,
    "walker_walk": 0.2,
    "cartpole_swingup": 0.3,
    "ball_in_cup_catch": 0.3,
    "walker_run": 0.2,
    "hopper_hop": 0.2,
    "reacher_easy": 0.3,
    "pendulum_swingup": 0.3,
}

# PlaNet's per-domain action repeat (docs/design.md §4.2); Dreamer uses 2 everywhere,
# which is the default of ``action_repeat``.
PLANET_ACTION_REPEAT = {"cheetah": 4, "walker": 2, "cartpole": 8, "ball_in_cup": 4}
DEFAULT_ACTION_REPEAT = 2


def planet_action_repeat(domain: str) -> int:
    """PlaNet's action repeat for ``domain`` (2 where PlaNet gives none)."""
    return PLANET_ACTION_REPEAT.get(domain, DEFAULT_ACTION_REPEAT)


@dataclass(frozen=True)
class TaskConfig:
    """Everything that defines a task; ``make_task`` overrides any field below ``variant``."""

    name: str
    domain: str
    task: str
    variant: Variant
    action_noise_std: float = 0.0
    action_repeat: int = DEFAULT_ACTION_REPEAT
    episode_length: int = 1000  # environment steps, as in dm_control
    image_size: int = 64
    camera_id: int = 0
    fast_render: bool = True
    frame_gap: tuple[int, int] = (4, 8)  # missing / fusion: agent steps between frames
    disks: DiskParams = field(default_factory=DiskParams)
    walls: WallParams = field(default_factory=WallParams)

    def __post_init__(self) -> None:
        if not np.isfinite(self.action_noise_std) or self.action_noise_std < 0:
            raise ValueError(f"action_noise_std must be >= 0, got {self.action_noise_std}")
        check_frame_gap(self.frame_gap)
        self.dmc_settings()  # validates the integer fields

    def dmc_settings(self) -> DMCSettings:
        return DMCSettings(
            domain=self.domain,
            task=self.task,
            action_repeat=self.action_repeat,
            episode_length=self.episode_length,
            image_size=self.image_size,
            camera_id=self.camera_id,
            fast_render=self.fast_render,
        )


FIXED_FIELDS = ("name", "domain", "task", "variant")
OVERRIDABLE_FIELDS = tuple(
    f.name for f in dataclasses.fields(TaskConfig) if f.name not in FIXED_FIELDS
)


def list_tasks() -> list[str]:
    """Every registered task name (aliases excluded)."""
    suffixes = [""] + [f"-{v}" for v in Variant if v is not Variant.STANDARD]
    names = []
    for base in BASE_TASKS:
        for suffix in suffixes:
            names.append(base + suffix)
            names.append(f"{base}{suffix}-{NOISE_SUFFIX}")
    return names


def _naming_help() -> str:
    variants = ", ".join(v.value for v in Variant if v is not Variant.STANDARD)
    return (
        "task names are <base>[-<variant>][-noise] with <base> one of "
        f"{', '.join([*BASE_TASKS, *ALIASES])} (or another dm_control suite task) and "
        f"<variant> one of {variants}"
    )


def _unknown(name: str, reason: str) -> ValueError:
    close = difflib.get_close_matches(name, list_tasks() + list(ALIASES), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ValueError(f"unknown task {name!r}: {reason}.{hint}\nValid: {_naming_help()}.")


class _ParsedName(NamedTuple):
    base: str
    variant: Variant
    noisy: bool


def _parse(name: str) -> _ParsedName:
    if not isinstance(name, str) or not name:
        raise _unknown(str(name), "expected a non-empty string")
    parts = name.split("-")
    noisy = len(parts) > 1 and parts[-1] == NOISE_SUFFIX
    if noisy:
        parts = parts[:-1]
    if len(parts) > 2:
        raise _unknown(name, "too many '-' separated parts")
    variant = Variant.STANDARD
    if len(parts) == 2:
        try:
            variant = Variant(parts[1])
        except ValueError:
            raise _unknown(name, f"no variant {parts[1]!r}") from None
        if variant is Variant.STANDARD:
            raise _unknown(name, "the standard variant has no suffix")
    return _ParsedName(ALIASES.get(parts[0], parts[0]), variant, noisy)


def _resolve_suite_task(base: str, name: str) -> tuple[str, str]:
    if base in BASE_TASKS:
        return BASE_TASKS[base]
    from training.envs.rendering import configure_headless_rendering

    configure_headless_rendering()
    from dm_control import suite

    for domain, task in suite.ALL_TASKS:
        if f"{domain}_{task}" == base:
            return domain, task
    raise _unknown(name, f"{base!r} is neither a registered task nor a dm_control suite task")


def task_config(name: str, **overrides: Any) -> TaskConfig:
    """The configuration of a named task with ``overrides`` applied (see TaskConfig)."""
    unknown = sorted(set(overrides) - set(OVERRIDABLE_FIELDS))
    if unknown:
        raise TypeError(
            f"unknown override(s) {', '.join(unknown)}; valid: {', '.join(OVERRIDABLE_FIELDS)}"
        )
    parsed = _parse(name)
    domain, task = _resolve_suite_task(parsed.base, name)
    noise_std = 0.0
    if parsed.noisy and "action_noise_std" not in overrides:
        if parsed.base not in ACTION_NOISE_STD:
            raise ValueError(
                f"{name!r}: no default action-noise std for {parsed.base}; "
                "pass action_noise_std=..."
            )
        noise_std = ACTION_NOISE_STD[parsed.base]
    config = TaskConfig(
        name=name, domain=domain, task=task, variant=parsed.variant, action_noise_std=noise_std
    )
    return dataclasses.replace(config, **overrides)


class TaskSeeds(NamedTuple):
    """Independent generators per randomness source, spawned from one seed.

    Separate streams keep sources apart: ``cheetah_run-missing`` and
    ``cheetah_run-missing-noise`` with one seed share initial states and frame
    schedule and differ only by the noise.
    """

    physics: np.random.Generator
    action_noise: np.random.Generator
    occlusion: np.random.Generator
    missing_frames: np.random.Generator

    @classmethod
    def from_seed(cls, seed: int) -> TaskSeeds:
        if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        children = np.random.SeedSequence(int(seed)).spawn(len(cls._fields))
        return cls(*(np.random.default_rng(child) for child in children))


def build_task(config: TaskConfig, seeds: TaskSeeds) -> Task:
    """Compose the base task and the variant wrappers that ``config`` asks for."""
    task: Task = DMCTask(config.dmc_settings(), seeds.physics)
    try:
        if config.variant is Variant.FUSION:
            task = Proprioception(task, proprio_spec(config.domain))
        if config.variant in (Variant.OCCLUSION_DISKS, Variant.OCCLUSION_WALLS):
            kind = config.variant.value.removeprefix("occlusion_")
            occluders = make_occluders(kind, config.image_size, config.disks, config.walls)
            task = Occlusion(task, occluders, seeds.occlusion)
        if config.variant in (Variant.MISSING, Variant.FUSION):
            task = MissingFrames(task, seeds.missing_frames, config.frame_gap)
        if config.action_noise_std > 0:
            task = ActionNoise(task, config.action_noise_std, seeds.action_noise)
    except Exception:
        task.close()
        raise
    return task


def make_task(name: str, seed: int, **overrides: Any) -> Task:
    """Create the named task, seeded; ``overrides`` replace TaskConfig defaults.

    E.g. ``make_task("cheetah_run-fusion-noise", seed=0, action_repeat=4,
    episode_length=100)``. Unknown names raise ValueError listing the valid ones.
    """
    return build_task(task_config(name, **overrides), TaskSeeds.from_seed(seed))
