"""The world models' input: the observation-dict contract of docs/design.md §1 as a typed batch.

A batch is ``[B, T, ...]`` per key. Sensors are described once by ``SensorSpec`` (the
fusion order is the order of the specs); ``SequenceBatch.from_dict`` checks every key and
shape and fails with a message naming the key and the expected shape.

Action convention: ``action[:, t]`` is the action applied after observing step t, so the
transition t -> t+1 uses it (paper Sec. 3.1, p(z_{t+1} | z_t, a_t)); the last action of
a sequence is not used by ``observe``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor

SensorKind = Literal["image", "vector"]


@dataclass(frozen=True)
class SensorSpec:
    """One sensor: its observation key, kind and per-step shape (image HWC uint8)."""

    name: str
    kind: SensorKind
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.kind == "image" and (len(self.shape) != 3 or self.shape[-1] != 3):
            raise ValueError(f"image sensor {self.name!r} needs shape (H, W, 3), got {self.shape}")
        if self.kind == "vector" and len(self.shape) != 1:
            raise ValueError(f"vector sensor {self.name!r} needs shape (P,), got {self.shape}")


def image_sensor(name: str = "image", size: int = 64) -> SensorSpec:
    return SensorSpec(name, "image", (size, size, 3))


def vector_sensor(name: str, dim: int) -> SensorSpec:
    return SensorSpec(name, "vector", (dim,))


class SensorBatch(NamedTuple):
    """One sensor's values over a batch of sequences."""

    value: Tensor  # [B, T, *shape]; uint8 images or float vectors; zeros where missing
    valid: Tensor  # [B, T] bool
    mask: Tensor | None  # [B, T, H, W] bool visibility (occlusion tasks), else None


class SequenceBatch(NamedTuple):
    """A batch of sequences for world-model training."""

    sensors: tuple[SensorBatch, ...]  # in the order of the model's SensorSpecs
    action: Tensor  # [B, T, A] float
    reward: Tensor  # [B, T] float
    is_first: Tensor  # [B, T] bool

    @property
    def batch_size(self) -> int:
        return self.action.shape[0]

    @property
    def length(self) -> int:
        return self.action.shape[1]

    @staticmethod
    def from_dict(data: Mapping[str, Tensor], specs: tuple[SensorSpec, ...], action_dim: int,
                  device: torch.device | str | None = None) -> SequenceBatch:
        """Build and check a batch from the observation-dict contract (plus ``action``)."""
        for key in ("action", "reward"):
            if key not in data:
                raise ValueError(f"batch is missing key {key!r}; it has {sorted(data)}")
        action = torch.as_tensor(data["action"], device=device)
        if action.ndim != 3 or action.shape[-1] != action_dim:
            raise ValueError(f"batch['action'] has shape {tuple(action.shape)}, expected "
                             f"[B, T, {action_dim}]")
        bt = tuple(action.shape[:2])

        def get(key: str, shape: tuple[int, ...], dtype: torch.dtype | None = None) -> Tensor:
            if key not in data:
                raise ValueError(f"batch is missing key {key!r} (expected shape {list(shape)}); "
                                 f"it has {sorted(data)}")
            x = torch.as_tensor(data[key], device=device)
            if tuple(x.shape) != shape:
                raise ValueError(f"batch[{key!r}] has shape {tuple(x.shape)}, expected "
                                 f"{list(shape)}")
            if dtype is not None and x.dtype != dtype:
                x = x.to(dtype)
            return x

        sensors = []
        for spec in specs:
            value = get(spec.name, bt + spec.shape)
            if spec.kind == "image" and value.dtype != torch.uint8:
                raise ValueError(f"batch[{spec.name!r}] must be uint8 images, got {value.dtype}")
            if spec.kind == "vector":
                value = value.float()
            valid_key = f"valid/{spec.name}"
            valid = (get(valid_key, bt, torch.bool) if valid_key in data
                     else torch.ones(bt, dtype=torch.bool, device=value.device))
            mask_key = f"mask/{spec.name}"
            mask = get(mask_key, bt + spec.shape[:2], torch.bool) if mask_key in data else None
            sensors.append(SensorBatch(value, valid, mask))
        reward = get("reward", bt, torch.float32)
        is_first = (get("is_first", bt, torch.bool) if "is_first" in data
                    else torch.zeros(bt, dtype=torch.bool, device=action.device))
        return SequenceBatch(tuple(sensors), action.float(), reward, is_first)
