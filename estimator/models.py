"""Choose a world model by name: one registry for the training backend and the tests."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from estimator.batch import SensorSpec
from estimator.rssm import RSSM, RSSMConfig
from estimator.vrkn import VRKN, VRKNConfig
from estimator.world_model import WorldModel

# name -> (model class, config with the variant's defaults)
MODELS: dict[str, tuple[Callable[..., WorldModel], Any]] = {
    "vrkn": (VRKN, VRKNConfig()),
    "vrkn_no_dropout": (VRKN, VRKNConfig(dropout=0.0)),
    "rssm": (RSSM, RSSMConfig()),
    "smooth_rssm": (RSSM, RSSMConfig(smooth=True)),
    "mcd_rssm": (RSSM, RSSMConfig(dropout=0.1)),
}


def default_config(name: str) -> Any:
    """The config dataclass of model ``name`` with its variant's defaults."""
    if name not in MODELS:
        raise ValueError(f"unknown world model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name][1]


def make_world_model(name: str, specs: tuple[SensorSpec, ...], action_dim: int,
                     config: Any = None, **overrides: Any) -> WorldModel:
    """Build model ``name``; ``config`` replaces its defaults, ``overrides`` single fields."""
    cls, default = MODELS.get(name, (None, None))
    if cls is None:
        raise ValueError(f"unknown world model {name!r}; choose one of {sorted(MODELS)}")
    config = default if config is None else config
    if type(config) is not type(default):
        raise ValueError(f"model {name!r} takes a {type(default).__name__}, "
                         f"got {type(config).__name__}")
    if overrides:
        config = dataclasses.replace(config, **overrides)
    return cls(specs, action_dim, config)
