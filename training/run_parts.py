"""The pieces a training run is built from: the device, the sensors of a task, the seeds of
its environments, the world-model and agent factories, and the random-policy baseline."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from estimator.batch import SensorSpec
from estimator.models import make_world_model
from estimator.world_model import WorldModel
from training.agent import Agent, RandomPolicy
from training.config import RunConfig, model_config, task_overrides
from training.driver import EnvFactory, Envs, episode_return, make_envs, run_episodes

ModelFactory = Callable[[RunConfig, tuple[SensorSpec, ...], int], WorldModel]
TRAIN_ENVS, EVAL_ENVS = 0, 1


def default_model_factory(config: RunConfig, specs: tuple[SensorSpec, ...], action_dim: int
                          ) -> WorldModel:
    return make_world_model(config.model, specs, action_dim, config=model_config(config))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def sensor_specs(envs: Envs) -> tuple[SensorSpec, ...]:
    """The model's sensors in the task's update order (proprio first)."""
    specs = []
    for name in envs.sensors:
        shape = tuple(envs.obs_space[name].shape)
        specs.append(SensorSpec(name, "image" if len(shape) == 3 else "vector", shape))
    return tuple(specs)


def env_seeds(seed: int, kind: int, index: int, count: int) -> list[int]:
    state = np.random.SeedSequence([seed, kind, index]).generate_state(count)
    return [int(s % (2**31 - 1)) for s in state]


def make_agent(config: RunConfig, model: WorldModel) -> Agent:
    if config.agent == "planet":
        from training.planet_agent import PlanetAgent

        return PlanetAgent(model, config.planet)
    from training.dreamer_agent import DreamerAgent

    return DreamerAgent(model, config.dreamer)


def random_returns(config: RunConfig, episodes: int, seed: int = 12345,
                   env_factory: EnvFactory = make_envs) -> list[float]:
    """Returns of the uniform random policy on the run's task and episode settings."""
    envs = env_factory(config.task, env_seeds(seed, EVAL_ENVS, 0, 1), task_overrides(config))
    try:
        policy = RandomPolicy(int(envs.act_space.shape[0]), np.random.default_rng(seed))
        out: list[float] = []
        while len(out) < episodes:
            out += [episode_return(e) for e in run_episodes(envs, policy,
                                                            int(envs.act_space.shape[0]))]
        return out[:episodes]
    finally:
        envs.close()
