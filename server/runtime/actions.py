"""The one conversion between the two action units.

* **unit**: ``[-1, 1]`` per dimension, what the transition network was trained on and what
  the actor outputs (tanh). ``OnlineFilter`` (the one filter engine) and the session timeline
  work in these units.
* **bundle units**: ``[low, high]`` of the manifest's ``action`` entry, what a robot
  applies and reports, and what the service returns as the policy's action.

``unit = (a - centre) / half`` and ``a = centre + unit * half`` with ``centre = (high +
low) / 2`` and ``half = (high - low) / 2``: for ``[-1, 1]`` bounds both are the identity,
bit for bit (centre 0, half 1).
"""

from __future__ import annotations

import numpy as np


def _bounds(low, high) -> tuple[np.ndarray, np.ndarray]:
    low = np.asarray(low, np.float32)
    high = np.asarray(high, np.float32)
    if low.shape != high.shape or low.ndim != 1 or not bool(np.all(low < high)):
        raise ValueError(f"action bounds: low {low.tolist()} and high {high.tolist()} must "
                         "be equal-length vectors with low < high")
    with np.errstate(over="ignore", invalid="ignore"):  # refused just below
        centre, half = (high + low) * np.float32(0.5), (high - low) * np.float32(0.5)
    if not bool(np.isfinite(centre).all() and np.isfinite(half).all()):
        raise ValueError(f"action bounds: low {low.tolist()} and high {high.tolist()} must "
                         "be finite (with a finite width)")
    return centre, half


def _checked(values, size: int, what: str) -> np.ndarray:
    a = np.asarray(values, np.float32)
    if a.shape[-1:] != (size,):
        raise ValueError(f"{what}: shape {list(a.shape)}, the last axis must be the action "
                         f"size {size}")
    if not bool(np.isfinite(a).all()):
        raise ValueError(f"{what}: NaN or infinite values")
    return a


def to_unit(action, low, high) -> np.ndarray:
    """An action in bundle units ``[..., A]`` -> unit ``[-1, 1]`` (float32). Values are
    not clipped; ValueError on NaN, infinity or a wrong size."""
    centre, half = _bounds(low, high)
    a = _checked(action, centre.shape[0], "action (bundle units)")
    return ((a - centre) / half).astype(np.float32)


def from_unit(unit, low, high) -> np.ndarray:
    """A unit action ``[..., A]`` in ``[-1, 1]`` -> bundle units (float32). Values are
    not clipped; ValueError on NaN, infinity or a wrong size."""
    centre, half = _bounds(low, high)
    u = _checked(unit, centre.shape[0], "action (unit)")
    return (centre + u * half).astype(np.float32)
