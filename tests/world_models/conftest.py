"""Tiny world models and synthetic batches that follow the observation contract."""

from __future__ import annotations

import pytest
import torch

from estimator.batch import SequenceBatch, image_sensor, vector_sensor
from estimator.models import MODELS, make_world_model
from estimator.networks import ConvConfig, MLPConfig

ACTION_DIM = 2
PROPRIO_DIM = 3
SENSOR_SETS = {
    "pixels": (image_sensor(),),
    "fusion": (vector_sensor("proprio", PROPRIO_DIM), image_sensor()),
    "proprio": (vector_sensor("proprio", PROPRIO_DIM),),
}

TINY_VECTOR = MLPConfig(hidden=24, layers=2)
TINY_CONV = ConvConfig(depth=4)
TINY_REWARD = MLPConfig(hidden=16, layers=1)


def tiny_overrides(name: str) -> dict:
    common = {"conv": TINY_CONV, "vector": TINY_VECTOR, "reward": TINY_REWARD}
    if name.startswith("vrkn"):
        return {"latent": 12, "hidden": 24, **common}
    return {"deter": 16, "stoch": 6, "hidden": 24, "backward_units": 10, **common}


def tiny_model(name: str, sensors: str, **extra) -> torch.nn.Module:
    torch.manual_seed(0)  # parameter initialisation of the tiny test models
    return make_world_model(name, SENSOR_SETS[sensors], ACTION_DIM,
                            **{**tiny_overrides(name), **extra})


def synthetic_data(sensors: str, batch: int = 3, steps: int = 6, seed: int = 0,
                   image_rate: float = 0.5, occlusion: bool = False) -> dict[str, torch.Tensor]:
    """A batch in the docs/design.md §1 dict contract; images valid on ~image_rate of the steps
    (always at t = 0), proprio at every step."""
    g = torch.Generator().manual_seed(seed)
    data: dict[str, torch.Tensor] = {
        "action": torch.rand(batch, steps, ACTION_DIM, generator=g) * 2 - 1,
        "reward": torch.rand(batch, steps, generator=g),
        "is_first": torch.zeros(batch, steps, dtype=torch.bool),
    }
    for spec in SENSOR_SETS[sensors]:
        if spec.kind == "image":
            valid = torch.rand(batch, steps, generator=g) < image_rate
            valid[:, 0] = True
            img = torch.randint(0, 256, (batch, steps, 64, 64, 3), dtype=torch.uint8,
                                generator=g)
            data["image"] = img * valid[..., None, None, None].to(torch.uint8)
            data["valid/image"] = valid
            if occlusion:
                data["mask/image"] = torch.rand(batch, steps, 64, 64, generator=g) > 0.3
        else:
            data[spec.name] = torch.randn(batch, steps, *spec.shape, generator=g)
            data[f"valid/{spec.name}"] = torch.ones(batch, steps, dtype=torch.bool)
    return data


def make_batch(model, data) -> SequenceBatch:
    return model.to_batch(data)


@pytest.fixture(params=sorted(MODELS))
def model_name(request) -> str:
    return request.param
