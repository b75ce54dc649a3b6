"""Value checks of a run config that need more than its own fields: activation names, the
world model's sizes and ranges, the task's construction inputs and the device.

Each check raises ``ConfigError`` with one line naming the key, the value and what is
allowed; ``training.config.validate`` runs them all (``check_values``) before any work
starts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from training.config import ConfigError, to_flat

# World-model integer fields that are sizes or counts (>= 1); every other integer >= 0.
MODEL_SIZES = ("latent", "hidden", "deter", "stoch", "backward_units", "depth")
# Probabilities of dropping a unit: [0, 1).
MODEL_PROBABILITIES = ("dropout",)


def activations() -> tuple[str, ...]:
    from estimator.networks import ACTIVATIONS

    return tuple(sorted(ACTIVATIONS))


def check_activation(key: str, value: Any) -> None:
    if value not in activations():
        raise ConfigError(f"{key}: unknown activation {value!r}; choose one of "
                          f"{', '.join(activations())}")


def check_activations(flat: Mapping[str, Any]) -> None:
    """Every ``act`` key of the flat run config (``dreamer.act``, ``state.act`` ...)."""
    for key, value in flat.items():
        if key == "act" or key.endswith(".act"):
            check_activation(key, value)


def _leaves(config: Any, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out += _leaves(value, f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", value))
    return out


def check_model_values(config: Any) -> None:
    """Sizes >= 1, counts >= 0, finite non-negative floats, dropout in [0, 1), known
    activations, for a world-model config dataclass (VRKNConfig, RSSMConfig)."""
    for key, value in _leaves(config):
        name = f"wm.{key}"
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "act":
            check_activation(name, value)
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int):
            low = 1 if leaf in MODEL_SIZES else 0
            if value < low:
                raise ConfigError(f"{name} must be >= {low}, got {value}")
        elif isinstance(value, float):
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {value}")
            if leaf in MODEL_PROBABILITIES and not value < 1:
                raise ConfigError(f"{name} is a dropout probability: it must be in [0, 1), "
                                  f"got {value}")


def check_task_inputs(task: Any) -> None:
    """What building the task needs beyond its name (a TaskConfig): proprioception for
    fusion tasks."""
    from training.envs.proprio import proprio_spec
    from training.envs.registry import Variant

    if task.variant is Variant.FUSION:
        try:
            proprio_spec(task.domain)
        except ValueError as error:
            raise ConfigError(f"task {task.name!r} has no fusion variant: {error}") from None


def check_device(name: str) -> None:
    """``auto``, ``cpu``, or an available ``cuda[:N]`` / ``mps``."""
    if name in ("auto", "cpu"):
        return
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device must be auto, cpu, cuda[:N] or mps, got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r}: CUDA is not available here; use --device cpu "
                              "(or auto)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device {name!r}: there {'is' if count == 1 else 'are'} only "
                              f"{count} CUDA device{'s' * (count != 1)} (cuda:0"
                              f"{f'..cuda:{count - 1}' if count > 1 else ''})")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"device {name!r}: MPS is not available here; use --device cpu "
                              "(or auto)")
    elif device.type != "cpu":
        raise ConfigError(f"device must be auto, cpu, cuda[:N] or mps, got {name!r}")


def check_values(config: Any, model: Any, task: Any) -> None:
    """Everything above for a RunConfig, its world-model config and its TaskConfig."""
    flat = to_flat(config)
    check_activations(flat)
    for key in ("dreamer.init_std", "dreamer.mean_scale"):
        if not flat[key] > 0:
            raise ConfigError(f"{key} must be > 0, got {flat[key]}")
    check_model_values(model)
    check_task_inputs(task)
    check_device(config.device)
    check_compile_backend(config.perf)
    if not config.dist.timeout > 0:
        raise ConfigError(f"dist.timeout must be > 0 seconds, got {config.dist.timeout}")


def check_compile_backend(perf: Any) -> None:
    """``perf.compile_backend`` when a ``perf.compile_*`` option is on: a backend torch
    knows (debug backends such as aot_eager included)."""
    if not (perf.compile_conv or perf.compile_model or perf.compile_actor_critic):
        return
    import torch._dynamo

    backends = torch._dynamo.list_backends(exclude_tags=())
    if perf.compile_backend not in backends:
        raise ConfigError(f"perf.compile_backend: unknown backend {perf.compile_backend!r}; "
                          f"choose one of {', '.join(backends)}")
