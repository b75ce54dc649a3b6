"""Typed containers for diagonal Gaussians and the input checks shared by the filter code.

Shapes follow one convention throughout `estimator/`: a single step is ``[B, L]``
(batch, latent), a sequence is ``[B, T, L]``; masks drop the last axis (``[B]`` or
``[B, T]``). All containers are NamedTuples of tensors, so they pass through
``torch.jit``/``torch.compile`` and ``torch.stack``-style helpers unchanged.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class Belief(NamedTuple):
    """A diagonal Gaussian belief N(mean, diag(var)) over the latent state."""

    mean: Tensor  # [..., L]
    var: Tensor  # [..., L], strictly positive


class LatentObservation(NamedTuple):
    """One sensor's latent observation w ~ N(z, diag(var)) (paper Sec. 3.2).

    ``valid`` marks which batch elements (and steps) carry an observation; where it
    is False the update is skipped and ``mean``/``var`` are ignored (they must still
    be finite, e.g. zeros and ones, so that gradients stay finite).
    """

    mean: Tensor  # [..., L]
    var: Tensor  # [..., L], strictly positive where valid
    valid: Tensor  # [...] bool


class LinearTransition(NamedTuple):
    """Locally linear diagonal dynamics z' = a * z + b + N(0, diag(q)) (paper Sec. 3.1)."""

    a: Tensor  # [..., L]
    b: Tensor  # [..., L]
    q: Tensor  # [..., L], strictly positive


def always_valid(mean: Tensor, var: Tensor) -> LatentObservation:
    """A latent observation present at every batch element (and step)."""
    return LatentObservation(mean, var, torch.ones(mean.shape[:-1], dtype=torch.bool,
                                                   device=mean.device))


def stack_beliefs(beliefs: list[Belief], dim: int = 1) -> Belief:
    """Stack per-step beliefs ``[B, L]`` into a sequence ``[B, T, L]``."""
    return Belief(torch.stack([b.mean for b in beliefs], dim),
                  torch.stack([b.var for b in beliefs], dim))


def index_time(x: Belief, t: int | slice) -> Belief:
    """Select step(s) ``t`` along the time axis of a sequence belief ``[B, T, L]``."""
    return Belief(x.mean[:, t], x.var[:, t])


# --------------------------------------------------------------------------- checks


def _describe(name: str, x: Tensor) -> str:
    return f"{name} (shape {tuple(x.shape)}, dtype {x.dtype})"


def check_tensor(name: str, x: Tensor, shape: tuple[int, ...] | torch.Size | None = None,
                 positive: bool = False, finite: bool = True) -> None:
    """Raise a ValueError naming ``name`` and its shape when ``x`` is malformed.

    Checks, in order: that ``x`` is a floating tensor, its shape (when ``shape`` is
    given), finiteness, and strict positivity (for variances).
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{_describe(name, x)} must be a floating-point tensor")
    if shape is not None and tuple(x.shape) != tuple(shape):
        raise ValueError(f"{_describe(name, x)} does not match the expected shape {tuple(shape)}")
    if finite and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{_describe(name, x)} contains NaN or inf")
    if positive and not bool((x > 0).all()):
        raise ValueError(f"{_describe(name, x)} must be strictly positive (it is a variance); "
                         f"min is {x.min().item():.3g}")


def check_belief(name: str, x: Belief, shape: tuple[int, ...] | torch.Size | None = None) -> None:
    """Check a belief: mean and var of one shape, finite, var > 0."""
    shape = x.mean.shape if shape is None else shape
    check_tensor(f"{name}.mean", x.mean, shape)
    check_tensor(f"{name}.var", x.var, shape, positive=True)


def check_transition(name: str, x: LinearTransition,
                     shape: tuple[int, ...] | torch.Size | None = None) -> None:
    """Check a transition: a, b, q of one shape, finite, q > 0."""
    shape = x.a.shape if shape is None else shape
    check_tensor(f"{name}.a", x.a, shape)
    check_tensor(f"{name}.b", x.b, shape)
    check_tensor(f"{name}.q", x.q, shape, positive=True)


def check_observation(name: str, x: LatentObservation,
                      shape: tuple[int, ...] | torch.Size | None = None) -> None:
    """Check a latent observation: mean/var of one shape, finite, var > 0 where valid."""
    shape = x.mean.shape if shape is None else shape
    check_tensor(f"{name}.mean", x.mean, shape)
    check_tensor(f"{name}.var", x.var, shape)
    if not isinstance(x.valid, Tensor) or x.valid.dtype != torch.bool:
        raise ValueError(f"{name}.valid must be a bool tensor, got "
                         f"{getattr(x.valid, 'dtype', type(x.valid).__name__)}")
    if tuple(x.valid.shape) != tuple(shape[:-1]):
        raise ValueError(f"{name}.valid (shape {tuple(x.valid.shape)}) must have shape "
                         f"{tuple(shape[:-1])} (the observation's shape without the latent axis)")
    if not bool((x.var[x.valid] > 0).all()):
        raise ValueError(f"{_describe(name + '.var', x.var)} must be strictly positive where valid")
