"""Rauch-Tung-Striebel smoothing and the smoothed dynamics of the VRKN loss (paper Eq. 4).

Equations of docs/design.md §2.5 (RTS smoother) and §2.6 (smoothed dynamics, paper
App. A.2), diagonal and elementwise, on the output of ``estimator.kalman.kalman_filter``.
Indexing: ``transition`` entry t maps step t to t+1, ``prior`` at t+1 is its prediction.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from estimator.gaussian import Belief, check_belief, check_transition
from estimator.kalman import FilterResult


class SmootherResult(NamedTuple):
    """Smoothed marginals q(z_t | o_0:T-1) and the RTS gains."""

    smoothed: Belief  # [B, T, L]
    gain: Tensor  # [B, T-1, L]; C_t = var+_t A_t / var-_{t+1}
    # var+_t q_t / var-_{t+1}: the part of var^s_t that no future observation can remove;
    # kept because the smoothed-dynamics variance needs it.
    residual_var: Tensor  # [B, T-1, L]


def smoother_gains(filtered: FilterResult) -> tuple[Tensor, Tensor]:
    """C_t = var+_t A_t / var-_{t+1} and R_t = var+_t q_t / var-_{t+1}, all t at once.

    R_t = var+_t - C_t^2 var-_{t+1} (because var-_{t+1} = A_t^2 var+_t + q_t), computed
    without the subtraction so that it stays positive in float32.
    """
    post_var = filtered.posterior.var[:, :-1]
    ratio = post_var / filtered.prior.var[:, 1:]
    return ratio * filtered.transition.a, ratio * filtered.transition.q


def rts_smoother(filtered: FilterResult, validate: bool = True) -> SmootherResult:
    """RTS smoother (docs/design.md §2.5), backward from the last filtered posterior:

    mu^s_t  = mu+_t + C_t (mu^s_{t+1} - mu-_{t+1})
    var^s_t = var+_t + C_t^2 (var^s_{t+1} - var-_{t+1})
            = R_t + C_t^2 var^s_{t+1}          (the form used: a sum of positive terms)
    """
    post, prior = filtered.posterior, filtered.prior
    if validate:
        check_belief("filtered.posterior", post)
        check_belief("filtered.prior", prior, post.mean.shape)
        b, t, l = post.mean.shape
        check_transition("filtered.transition", filtered.transition, (b, t - 1, l))
    gain, residual = smoother_gains(filtered)
    # Everything that does not depend on the recursion is computed once, vectorised:
    # mu^s_t = d_t + C_t mu^s_{t+1} with d_t = mu+_t - C_t mu-_{t+1}.
    offset = post.mean[:, :-1] - gain * prior.mean[:, 1:]
    gains, offsets, residuals = gain.unbind(1), offset.unbind(1), residual.unbind(1)
    mean, var = post.mean[:, -1], post.var[:, -1]
    means, variances = [mean], [var]
    for t in range(len(gains) - 1, -1, -1):
        c = gains[t]
        mean = offsets[t] + c * mean
        var = residuals[t] + c * c * var
        means.append(mean)
        variances.append(var)
    smoothed = Belief(torch.stack(means[::-1], 1), torch.stack(variances[::-1], 1))
    return SmootherResult(smoothed, gain, residual)


def smoothed_dynamics(smoothed: SmootherResult, z_prev: Tensor) -> Belief:
    """q(z_{t+1} | z_t = z_prev_t, o_>t) for t = 0..T-2, shape ``[B, T-1, L]``.

    The conditional of the smoothed pairwise joint (paper App. A.2, docs/design.md §2.6), whose
    cross-covariance is Cov(z_t, z_{t+1}) = C_t var^s_{t+1}:
        G    = var^s_{t+1} C_t / var^s_t
        mean = mu^s_{t+1} + G (z_prev_t - mu^s_t)
        var  = var^s_{t+1} - G C_t var^s_{t+1} = var^s_{t+1} R_t / var^s_t
    (the last form follows from var^s_t = R_t + C_t^2 var^s_{t+1} and stays positive).
    ``z_prev`` is typically a sample of the smoothed marginals at steps 0..T-2.
    """
    s = smoothed.smoothed
    mean_t, var_t = s.mean[:, :-1], s.var[:, :-1]
    mean_next, var_next = s.mean[:, 1:], s.var[:, 1:]
    if z_prev.shape != mean_t.shape:
        raise ValueError(f"z_prev (shape {tuple(z_prev.shape)}) must have shape "
                         f"{tuple(mean_t.shape)} (smoothed steps 0..T-2)")
    ratio = var_next / var_t
    mean = mean_next + ratio * smoothed.gain * (z_prev - mean_t)
    var = ratio * smoothed.residual_var
    return Belief(mean, var)
