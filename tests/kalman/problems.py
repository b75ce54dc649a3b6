"""Random batched diagonal problems for the estimator tests, and their two views:

* :meth:`DiagProblem.torch_inputs`: the estimator's inputs (Belief, LatentObservation list,
  LinearTransition) in a chosen dtype;
* :meth:`DiagProblem.dense`: batch element i as a full-matrix ``reference.LGSSM``
  (diagonal parameters embedded with ``np.diag``).
"""

from __future__ import annotations

from dataclasses import dataclass

import hypothesis.extra.numpy as hnp
import numpy as np
import torch
from hypothesis import strategies as st

from estimator import Belief, LatentObservation, LinearTransition
from tests.kalman.reference import LGSSM


@dataclass
class DiagProblem:
    m0: np.ndarray  # [B, L]
    p0: np.ndarray  # [B, L]
    a: np.ndarray  # [B, T-1, L]
    b: np.ndarray  # [B, T-1, L]
    q: np.ndarray  # [B, T-1, L]
    w: np.ndarray  # [K, B, T, L]
    r: np.ndarray  # [K, B, T, L]
    valid: np.ndarray  # [K, B, T] bool

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(K, B, T, L)."""
        k, b, t, l = self.w.shape
        return k, b, t, l

    def dense(self, i: int) -> LGSSM:
        """Batch element i as a full-matrix model."""
        eye = np.eye(self.m0.shape[1])

        def diag(x: np.ndarray) -> np.ndarray:  # [..., L] -> [..., L, L]
            return x[..., None] * eye

        return LGSSM(
            m0=self.m0[i].copy(),
            P0=diag(self.p0[i]),
            A=diag(self.a[i]),
            b=self.b[i].copy(),
            Q=diag(self.q[i]),
            w=self.w[:, i].copy(),
            R=diag(self.r[:, i]),
            valid=self.valid[:, i].copy(),
        )

    def torch_inputs(self, dtype: torch.dtype = torch.float64, requires_grad: bool = False
                     ) -> tuple[Belief, list[LatentObservation], LinearTransition]:
        def t(x: np.ndarray) -> torch.Tensor:
            return torch.tensor(x, dtype=dtype, requires_grad=requires_grad)

        initial = Belief(t(self.m0), t(self.p0))
        observations = [LatentObservation(t(self.w[k]), t(self.r[k]), torch.tensor(self.valid[k]))
                        for k in range(self.w.shape[0])]
        return initial, observations, LinearTransition(t(self.a), t(self.b), t(self.q))


def _log_uniform(rng: np.random.Generator, low: float, high: float, size) -> np.ndarray:
    return np.exp(rng.uniform(np.log(low), np.log(high), size))


def random_problem(rng: np.random.Generator, batch: int, steps: int, latent: int,
                   sensors: int, missing: float = 0.3, a_range: tuple[float, float] = (-1.2, 1.2),
                   var_range: tuple[float, float] = (0.05, 5.0)) -> DiagProblem:
    """Time-varying parameters that differ per step and per batch element.

    Missing observations (probability ``missing``) carry finite garbage: a large random
    mean and a variance that may even be 0 (allowed where not valid), so a masking bug
    shows up as a large error instead of hiding.
    """
    k, b, t, l = sensors, batch, steps, latent
    valid = rng.random((k, b, t)) >= missing
    w = rng.normal(0.0, 2.0, (k, b, t, l))
    r = _log_uniform(rng, *var_range, (k, b, t, l))
    garbage_w = rng.normal(0.0, 1e3, (k, b, t, l))
    garbage_r = np.where(rng.random((k, b, t, l)) < 0.5, 0.0, _log_uniform(rng, 1e-3, 1e3,
                                                                             (k, b, t, l)))
    w = np.where(valid[..., None], w, garbage_w)
    r = np.where(valid[..., None], r, garbage_r)
    return DiagProblem(
        m0=rng.normal(0.0, 1.0, (b, l)),
        p0=_log_uniform(rng, *var_range, (b, l)),
        a=rng.uniform(*a_range, (b, t - 1, l)),
        b=rng.normal(0.0, 0.5, (b, t - 1, l)),
        q=_log_uniform(rng, 0.5 * var_range[0], 0.5 * var_range[1], (b, t - 1, l)),
        w=w,
        r=r,
        valid=valid,
    )


@st.composite
def diag_problems(draw, log10_var: tuple[float, float] = (-2.0, 2.0),
                  a_range: tuple[float, float] = (-1.5, 1.5),
                  log10_scale: tuple[float, float] = (-1.0, 1.0),
                  max_batch: int = 3, max_steps: int = 6, max_latent: int = 3,
                  max_sensors: int = 3) -> DiagProblem:
    """Hypothesis strategy: sizes, per-element variances 10^x with x in ``log10_var``
    (p0, q and r independently), a in ``a_range``, means/offsets/observations of magnitude
    up to 10^``log10_scale[1]``, and an arbitrary validity mask."""
    k = draw(st.integers(1, max_sensors))
    b = draw(st.integers(1, max_batch))
    t = draw(st.integers(1, max_steps))
    l = draw(st.integers(1, max_latent))

    def floats(shape, low, high):
        return draw(hnp.arrays(np.float64, shape, elements=st.floats(low, high)))

    def variances(shape):
        return 10.0 ** floats(shape, *log10_var)

    def values(shape):
        return floats(shape, -1.0, 1.0) * 10.0 ** floats(shape, *log10_scale)

    return DiagProblem(
        m0=values((b, l)), p0=variances((b, l)),
        a=floats((b, t - 1, l), *a_range), b=values((b, t - 1, l)), q=variances((b, t - 1, l)),
        w=values((k, b, t, l)), r=variances((k, b, t, l)),
        valid=draw(hnp.arrays(np.bool_, (k, b, t))),
    )
