"""Parallel-in-time (associative scan) diagonal Kalman filter and RTS smoother.

Särkkä & García-Fernández (2021), "Temporal parallelization of Bayesian smoothers",
IEEE TAC 66(1), specialised to the diagonal, identity-observation model of docs/design.md §2:
every matrix is a per-dimension scalar, so each combination is elementwise. Depth is
O(log T) instead of O(T); results equal the sequential ``kalman_filter`` /
``rts_smoother`` to rounding. Only for transitions that do not depend on the filtered
posterior (fixed or precomputed ``LinearTransition``); VRKN's transition network reads
mu+_t, so its training filter stays sequential while its smoother can use this scan.

Several sensors at one step are first combined into one observation with the summed
precision (exactly equivalent to sequential fusion for H = I, see ``fuse``); the
per-sensor predictive log-likelihood is then evaluated from the filtered priors,
vectorised over all steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from estimator.gaussian import (
    Belief,
    LatentObservation,
    LinearTransition,
    check_belief,
    check_observation,
    check_transition,
)
from estimator.kalman import FilterResult, predictive_log_prob, update
from estimator.smoother import SmootherResult, smoother_gains

Elements = tuple[Tensor, ...]


def associative_scan(combine: Callable[[Elements, Elements], Elements], elems: Elements,
                     reverse: bool = False) -> Elements:
    """Inclusive scan along dim 1 with an associative ``combine(earlier, later)``.

    Work-efficient odd/even recursion (as in ``jax.lax.associative_scan``): O(T) work,
    O(log T) depth, every level vectorised over the batch, time and latent axes.
    With ``reverse`` the scan runs from the last step backwards and ``combine`` receives
    ``(later, earlier)``.
    """
    if reverse:
        out = associative_scan(combine, tuple(e.flip(1) for e in elems))
        return tuple(o.flip(1) for o in out)
    steps = elems[0].shape[1]
    if steps < 2:
        return elems
    # Combine neighbouring pairs (0,1), (2,3), ...; scan the half-length sequence.
    pairs = combine(tuple(e[:, 0:-1:2] for e in elems), tuple(e[:, 1::2] for e in elems))
    odd = associative_scan(combine, pairs)  # prefix results at steps 1, 3, 5, ...
    # Steps 2, 4, ...: the prefix up to the previous odd step combined with the element.
    n_even = (steps + 1) // 2 - 1
    even_rest = combine(tuple(o[:, :n_even] for o in odd), tuple(e[:, 2::2] for e in elems))
    even = tuple(torch.cat([e[:, :1], r], 1) for e, r in zip(elems, even_rest, strict=True))
    # Interleave even and odd results back into time order.
    out = []
    for ev, od in zip(even, odd, strict=True):
        merged = torch.stack([ev[:, : od.shape[1]], od], 2).flatten(1, 2)
        if ev.shape[1] > od.shape[1]:
            merged = torch.cat([merged, ev[:, -1:]], 1)
        out.append(merged)
    return tuple(out)


def _filter_combine(i: Elements, j: Elements) -> Elements:
    """Särkkä & García-Fernández (2021) Lemma 8, elementwise: a_i (earlier) then a_j."""
    a_i, b_i, c_i, eta_i, j_i = i
    a_j, b_j, c_j, eta_j, j_j = j
    d = 1.0 / (1.0 + c_i * j_j)
    a = a_j * d * a_i
    b = a_j * d * (b_i + c_i * eta_j) + b_j
    c = a_j * d * c_i * a_j + c_j
    eta = a_i * d * (eta_j - j_j * b_i) + eta_i
    jj = a_i * d * j_j * a_i + j_i
    return a, b, c, eta, jj


def _smoother_combine(later: Elements, earlier: Elements) -> Elements:
    """Särkkä & García-Fernández (2021) Lemma 10, elementwise (reverse-time scan)."""
    e_l, g_l, l_l = later
    e_e, g_e, l_e = earlier
    return e_e * e_l, e_e * g_l + g_e, e_e * e_e * l_l + l_e


def combined_observation(observations: Sequence[LatentObservation]) -> tuple[Tensor, Tensor]:
    """Precision-weighted sum of the present sensors: (precision * mean sum, precision sum)."""
    info_mean = 0.0
    precision = 0.0
    for obs in observations:
        present = obs.valid.unsqueeze(-1).to(obs.var.dtype)
        p = present / obs.var
        info_mean = info_mean + p * obs.mean
        precision = precision + p
    return info_mean, precision


def parallel_filter(
    initial: Belief,
    observations: Sequence[LatentObservation],
    transition: LinearTransition,
    *,
    log_likelihood: bool = False,
    validate: bool = True,
) -> FilterResult:
    """The same result as ``kalman_filter`` with fixed transitions, by associative scan."""
    if not observations:
        raise ValueError("observations must hold at least one sensor")
    shape = observations[0].mean.shape
    if len(shape) != 3:
        raise ValueError(f"observations[0].mean (shape {tuple(shape)}) must be [B, T, L]")
    batch, steps, latent = shape
    if validate:
        check_belief("initial", initial, (batch, latent))
        for k, obs in enumerate(observations):
            check_observation(f"observations[{k}]", obs, shape)
        check_transition("transition", transition, (batch, steps - 1, latent))
    info_mean, precision = combined_observation(observations)
    info_mean = info_mean + torch.zeros(shape, dtype=initial.mean.dtype)
    precision = precision + torch.zeros(shape, dtype=initial.mean.dtype)

    # Step 0: update the initial belief; A = 0 and J = 0 make it the scan's anchor.
    p0, m0 = initial.var, initial.mean
    denom0 = 1.0 + p0 * precision[:, 0]
    first = (torch.zeros_like(m0), (m0 + p0 * info_mean[:, 0]) / denom0, p0 / denom0,
             torch.zeros_like(m0), torch.zeros_like(m0))
    # Steps t >= 1: element for p(z_t | z_{t-1}, w_t), with F = a, u = b, Q = q and
    # R^-1 = precision (0 when no sensor is present).
    a, u, q = transition
    lam, y_info = precision[:, 1:], info_mean[:, 1:]
    denom = 1.0 + q * lam  # = S / R for one sensor, written in information form
    gain = q * lam / denom  # K = Q / (Q + R)
    s_inv = lam / denom  # S^-1 = 1 / (Q + R)
    innovation_info = y_info - lam * u  # R^-1 (y - u)
    rest = ((1.0 - gain) * a,
            u + (q / denom) * innovation_info,
            q / denom,
            a * innovation_info / denom,
            a * a * s_inv)
    elems = tuple(torch.cat([f.unsqueeze(1), r], 1) for f, r in zip(first, rest, strict=True))
    _, mean, var, _, _ = associative_scan(_filter_combine, elems)
    posterior = Belief(mean, var)
    prior = Belief(
        torch.cat([m0.unsqueeze(1), a * mean[:, :-1] + u], 1),
        torch.cat([p0.unsqueeze(1), a * a * var[:, :-1] + q], 1),
    )
    ll = None
    if log_likelihood:
        # Sequential per-sensor predictive densities, vectorised over every step at once.
        belief, ll = prior, 0.0
        for obs in observations:
            ll = ll + predictive_log_prob(belief, obs)
            belief = update(belief, obs, validate=False)
    return FilterResult(prior, posterior, transition, ll)


def parallel_smoother(filtered: FilterResult) -> SmootherResult:
    """The same result as ``rts_smoother``, by a reverse-time associative scan."""
    gain, residual = smoother_gains(filtered)
    post, prior = filtered.posterior, filtered.prior
    offset = post.mean[:, :-1] - gain * prior.mean[:, 1:]
    last = (torch.zeros_like(post.mean[:, -1:]), post.mean[:, -1:], post.var[:, -1:])
    elems = (torch.cat([gain, last[0]], 1), torch.cat([offset, last[1]], 1),
             torch.cat([residual, last[2]], 1))
    _, mean, var = associative_scan(_smoother_combine, elems, reverse=True)
    return SmootherResult(Belief(mean, var), gain, residual)
