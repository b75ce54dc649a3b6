"""Shared helpers for the training-backend tests: tiny configs and a tiny world model."""

from __future__ import annotations

import pytest
import torch

from estimator.batch import image_sensor, vector_sensor
from estimator.models import make_world_model
from training.presets import TINY_RSSM, TINY_VRKN, model_family, resolve

FAST = {"log.progress": False, "log.tensorboard": False}


def debug_config(model: str = "vrkn", agent: str = "dreamer", **overrides):
    presets = ["planet", "debug"] if agent == "planet" else ["debug"]
    return resolve(presets, {"model": model, **FAST, **overrides})


def tiny_world_model(name: str = "vrkn", action_dim: int = 1, proprio: int = 1):
    from estimator.models import default_config
    from training.config import apply_model_overrides

    wm = TINY_VRKN if model_family(name) == "vrkn" else TINY_RSSM
    config = apply_model_overrides(default_config(name), wm, name)
    torch.manual_seed(0)
    specs = (vector_sensor("proprio", proprio), image_sensor())
    return make_world_model(name, specs, action_dim, config=config)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
