"""Descriptions of observation and action arrays (shape, dtype, bounds)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ArraySpace:
    """One array of the observation dict, or the action.

    ``low``/``high`` are scalars or arrays broadcastable to ``shape``; None means
    unbounded. Scalars in the observation dict (reward, flags, time stamps) have
    ``shape == ()``.
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    low: float | np.ndarray | None = None
    high: float | np.ndarray | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "dtype", np.dtype(self.dtype))

    def zeros(self) -> np.ndarray:
        """An all-zero value of this space (a missing sensor's value)."""
        return np.zeros(self.shape, self.dtype)

    def contains(self, value: object) -> bool:
        """True when ``value`` has this shape and dtype and lies within the bounds."""
        array = np.asarray(value)
        if array.shape != self.shape or array.dtype != self.dtype:
            return False
        if self.low is not None and np.any(array < self.low):
            return False
        return not (self.high is not None and np.any(array > self.high))


def bool_space(shape: tuple[int, ...] = ()) -> ArraySpace:
    return ArraySpace(shape, np.bool_)


def time_space() -> ArraySpace:
    """Simulation time stamp in seconds of physics time (0.0 when the reading is missing)."""
    return ArraySpace((), np.float64, 0.0, None)


def check_action(action: object, space: ArraySpace) -> np.ndarray:
    """Validate an agent action; return it as float64 clipped to the bounds.

    Raises ValueError for a wrong shape and for NaN or infinite entries. Values
    outside the bounds are clipped (documented behaviour, not an error).
    """
    try:
        array = np.asarray(action, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"action must be numeric, got {type(action).__name__}") from error
    if array.shape != space.shape:
        raise ValueError(f"action has shape {array.shape}, expected {space.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"action contains NaN or infinite values: {array}")
    return np.clip(array, space.low, space.high)
