"""The multi-rate DMC task suite: noise, occlusion, missing frames and sensor fusion.

Importing this package has no side effects: dm_control is imported (and the
headless OpenGL backend chosen) when the first task is created.

    from training.envs import make_task
    task = make_task("cartpole_swingup-fusion", seed=0)
    obs = task.reset()
    while not obs["is_last"]:
        obs = task.step(policy(obs))

See ``training.envs.base`` for the observation dict and ``training.envs.registry``
for task names. ``docs/tasks.md`` describes every variant.
"""

from training.envs.base import Obs, Task, Wrapper
from training.envs.registry import (
    ACTION_NOISE_STD,
    BASE_TASKS,
    PLANET_ACTION_REPEAT,
    TaskConfig,
    TaskSeeds,
    Variant,
    build_task,
    list_tasks,
    make_task,
    planet_action_repeat,
    task_config,
)
from training.envs.spaces import ArraySpace

__all__ = [
    "ACTION_NOISE_STD",
    "BASE_TASKS",
    "PLANET_ACTION_REPEAT",
    "ArraySpace",
    "Obs",
    "Task",
    "TaskConfig",
    "TaskSeeds",
    "Variant",
    "Wrapper",
    "build_task",
    "list_tasks",
    "make_task",
    "planet_action_repeat",
    "task_config",
]
