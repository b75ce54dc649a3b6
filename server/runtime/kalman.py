"""Diagonal Kalman arithmetic in numpy for the online filter (docs/design.md §2).

The same equations as ``estimator.kalman`` (predict; masked Joseph-form update with
H = I; sequential fusion), on float32 arrays ``[N, L]``; tests check both agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Belief:
    """A diagonal Gaussian over the latent state, ``[N, L]`` each."""

    mean: np.ndarray
    var: np.ndarray

    def rows(self, index: np.ndarray) -> Belief:
        return Belief(self.mean[index], self.var[index])


def predict(belief: Belief, a: np.ndarray, b: np.ndarray, q: np.ndarray) -> Belief:
    """mu- = A mu+ + b; var- = A^2 var+ + q."""
    return Belief(a * belief.mean + b, a * a * belief.var + q)


def update(prior: Belief, w: np.ndarray, w_var: np.ndarray, valid: np.ndarray) -> Belief:
    """Joseph-form update; rows where ``valid`` is False keep the prior exactly."""
    denom = prior.var + w_var
    present = valid.astype(prior.var.dtype)[:, None]
    gain = present * (prior.var / denom)
    one_minus_gain = present * (w_var / denom) + (1.0 - present)
    mean = prior.mean + gain * (w - prior.mean)
    var = one_minus_gain * one_minus_gain * prior.var + gain * gain * w_var
    return Belief(mean.astype(prior.mean.dtype), var.astype(prior.var.dtype))
