"""Dense (full-covariance) Kalman filter, RTS smoother and Gaussian helpers for the toy LGSSM.

The project's estimator (``estimator/``) is diagonal and elementwise; the toy of paper
Sec. 2.2 needs a full 4x4 transition matrix, hence this small dense counterpart.

Model: z_0 ~ N(m0, P0); z_t = A z_{t-1} + N(0, Q); o_t = z_t + N(0, R) (identity
observation matrix, as in the paper's toy). Shapes: observations ``[B, T, D]``.

Because A, Q, R, P0 are shared by all sequences and every sequence is fully observed,
every filter / smoother covariance depends on t only, not on the data: covariances are
computed once per step as ``[D, D]`` (stacked to ``[T, D, D]``) and only the means are
batched ``[B, T, D]``. This is exact, and it makes training the closed-form SSM model
(maximising log p(o) through the filter) cost a few microseconds per step and sequence.

Numerics: Joseph-form covariance updates, symmetrised after every step, and linear
solves instead of explicit inverses. Use float64 (the experiment does) -- the smoothed
pairwise conditional is a difference of nearly equal matrices.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

LOG_2PI = math.log(2.0 * math.pi)


class LGSSM(NamedTuple):
    """A linear-Gaussian SSM with identity observation matrix; every field ``[D, D]`` or ``[D]``."""

    A: Tensor  # [D, D] transition matrix
    Q: Tensor  # [D, D] transition noise covariance
    R: Tensor  # [D, D] observation noise covariance
    m0: Tensor  # [D] initial mean
    P0: Tensor  # [D, D] initial covariance


class FilterOutput(NamedTuple):
    """Filtered beliefs. ``prior[t]`` is the prediction before o_t (the initial belief at t=0)."""

    prior_mean: Tensor  # [B, T, D]
    prior_cov: Tensor  # [T, D, D]
    post_mean: Tensor  # [B, T, D]
    post_cov: Tensor  # [T, D, D]
    log_lik: Tensor  # [B]  log p(o_0:T-1), prediction-error decomposition


class SmootherOutput(NamedTuple):
    """Smoothed marginals N(mean_t, cov_t) = p(z_t | o_0:T-1) and RTS gains C_t (t=0..T-2)."""

    mean: Tensor  # [B, T, D]
    cov: Tensor  # [T, D, D]
    gain: Tensor  # [T-1, D, D]


def symmetrize(m: Tensor) -> Tensor:
    """(M + M^T) / 2 over the last two axes."""
    return 0.5 * (m + m.mT)


def mvn_log_prob(x: Tensor, mean: Tensor, cov: Tensor) -> Tensor:
    """log N(x | mean, cov) with full covariance, shape ``x.shape[:-1]``.

    ``x - mean`` is ``[..., D]``; ``cov`` is ``[*C, D, D]`` whose batch axes ``C`` either
    equal the trailing batch axes of ``x`` (e.g. ``[D, D]`` for one covariance shared by
    all, or ``[T, D, D]`` against ``[B, T, D]``: one triangular solve with many right-hand
    sides, no copy of the factor per sequence) or broadcast against them.
    """
    chol = torch.linalg.cholesky(cov)
    diff = x - mean
    dim = diff.shape[-1]
    cov_batch = chol.shape[:-2]
    n_cov = len(cov_batch)
    if diff.shape[diff.dim() - 1 - n_cov:-1] == cov_batch:
        lead = diff.shape[:diff.dim() - 1 - n_cov]
        rhs = diff.reshape(-1, *cov_batch, dim).movedim(0, -1)  # [*C, D, N]
        white = torch.linalg.solve_triangular(chol, rhs, upper=False)
        white = white.movedim(-1, 0).reshape(*lead, *cov_batch, dim)
    else:
        col = diff.unsqueeze(-1)
        chol_b = chol.expand(*torch.broadcast_shapes(col.shape[:-2], cov_batch), dim, dim)
        white = torch.linalg.solve_triangular(chol_b, col.expand(*chol_b.shape[:-1], 1),
                                              upper=False).squeeze(-1)
    logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    return -0.5 * (dim * LOG_2PI + logdet + white.square().sum(-1))


def kalman_filter(obs: Tensor, model: LGSSM) -> FilterOutput:
    """Dense Kalman filter over ``obs`` ``[B, T, D]``; step 0 is an update without a predict.

    predict:  m- = A m+,  P- = A P+ A^T + Q
    update:   S = P- + R,  K = P- S^-1,  m+ = m- + K (o - m-),
              P+ = (I - K) P- (I - K)^T + K R K^T   (Joseph form)
    log p(o) = sum_t log N(o_t | m-_t, S_t).
    """
    if obs.dim() != 3:
        raise ValueError(f"obs (shape {tuple(obs.shape)}) must be [B, T, D]")
    batch, _, dim = obs.shape
    eye = torch.eye(dim, dtype=obs.dtype, device=obs.device)
    mean = model.m0.expand(batch, dim)
    cov = model.P0
    prior_means, prior_covs, post_means, post_covs = [], [], [], []
    log_lik = obs.new_zeros(batch)
    # Unbind once: indexing obs[:, t] inside the loop makes the backward quadratic in T.
    for t, o in enumerate(obs.unbind(1)):
        if t > 0:
            mean = mean @ model.A.mT
            cov = symmetrize(model.A @ cov @ model.A.mT + model.Q)
        prior_means.append(mean)
        prior_covs.append(cov)
        s = symmetrize(cov + model.R)
        log_lik = log_lik + mvn_log_prob(o, mean, s)
        gain = torch.linalg.solve(s, cov).mT  # K = P- S^-1 (S, P- symmetric)
        mean = mean + (o - mean) @ gain.mT
        i_k = eye - gain
        cov = symmetrize(i_k @ cov @ i_k.mT + gain @ model.R @ gain.mT)
        post_means.append(mean)
        post_covs.append(cov)
    return FilterOutput(torch.stack(prior_means, 1), torch.stack(prior_covs),
                        torch.stack(post_means, 1), torch.stack(post_covs), log_lik)


def rts_smoother(filtered: FilterOutput, model: LGSSM) -> SmootherOutput:
    """Rauch-Tung-Striebel smoother, backward from the last filtered posterior:

    C_t   = P+_t A^T (P-_{t+1})^-1
    m^s_t = m+_t + C_t (m^s_{t+1} - m-_{t+1})
    P^s_t = P+_t + C_t (P^s_{t+1} - P-_{t+1}) C_t^T
    """
    post_m, post_p = filtered.post_mean.unbind(1), filtered.post_cov.unbind(0)
    prior_m, prior_p = filtered.prior_mean.unbind(1), filtered.prior_cov.unbind(0)
    steps = len(post_m)
    mean, cov = post_m[-1], post_p[-1]
    means, covs, gains = [mean], [cov], []
    for t in range(steps - 2, -1, -1):
        # C_t^T = (P-_{t+1})^-1 A P+_t  (both covariances symmetric)
        c = torch.linalg.solve(prior_p[t + 1], model.A @ post_p[t]).mT
        mean = post_m[t] + (mean - prior_m[t + 1]) @ c.mT
        cov = symmetrize(post_p[t] + c @ (cov - prior_p[t + 1]) @ c.mT)
        means.append(mean)
        covs.append(cov)
        gains.append(c)
    return SmootherOutput(torch.stack(means[::-1], 1), torch.stack(covs[::-1]),
                          torch.stack(gains[::-1]) if gains else post_p[0].new_zeros(0, *cov.shape))


class SmoothedConditionals(NamedTuple):
    """q(z_t | z_{t-1}, o_0:T-1) = N(F_t z_{t-1} + b_t, L_t L_t^T) for t = 1..T-1."""

    trans: Tensor  # [T-1, D, D]  F_t
    offset: Tensor  # [B, T-1, D]  b_t
    chol: Tensor  # [T-1, D, D]  L_t (lower Cholesky factor)


def smoothed_conditionals(smoothed: SmootherOutput) -> SmoothedConditionals:
    """Forward conditionals of the smoothed pairwise joint (paper App. A.2, in full covariance).

    Cov(z_{t-1}, z_t | o) = C_{t-1} P^s_t, so conditioning z_t on z_{t-1}:
    F_t = P^s_t C_{t-1}^T (P^s_{t-1})^-1,  b_t = m^s_t - F_t m^s_{t-1},
    cov_t = P^s_t - F_t C_{t-1} P^s_t.
    By the Markov property this equals p(z_t | z_{t-1}, o_t:T-1): the smoothing factor of Eq. 4.
    """
    cov_prev, cov_next = smoothed.cov[:-1], smoothed.cov[1:]
    cross = smoothed.gain @ cov_next  # Cov(z_{t-1}, z_t) = C_{t-1} P^s_t
    trans = torch.linalg.solve(cov_prev, cross).mT  # F_t^T = (P^s_{t-1})^-1 Cov(z_{t-1}, z_t)
    cond_cov = symmetrize(cov_next - trans @ cross)
    offset = smoothed.mean[:, 1:] - (trans @ smoothed.mean[:, :-1].unsqueeze(-1)).squeeze(-1)
    return SmoothedConditionals(trans, offset, torch.linalg.cholesky(cond_cov))
