"""The variational bounds of paper Eq. 3 (RSSM) and Eq. 4 (SSM) for the toy LGSSM.

Both bounds are E_q[log p(o, z) - log q(z)] for a Markov-chain q
    q(z) = q(z_0 | .) prod_{t>=1} q(z_t | z_{t-1}, .),
i.e.  sum_t E_{q(z_t)}[log p(o_t | z_t)] - KL(q(z_0 | .) || p(z_0))
      - sum_{t>=1} E_{q(z_{t-1})}[ KL(q(z_t | z_{t-1}, .) || p(z_t | z_{t-1})) ].
They differ only in what q's factors may condition on: Eq. 3 (RSSM) allows o_t only,
q(z_t | z_{t-1}, o_t), so q(z_{t-1}) is a filtering-type belief q(z_{t-1} | o_<=t-1);
Eq. 4 (SSM) allows o_>=t, q(z_t | z_{t-1}, o_>=t), so q(z_{t-1}) is a smoothed belief.
(The paper writes the sums from t = 1 and leaves out the t = 0 terms; we keep them, as
in the general bound of Eq. 1 -- they are the same for both bounds.)

Every q used here has linear-Gaussian conditionals
    q(z_0 | .) = N(m_0, L_0 L_0^T),   q(z_t | z_{t-1}, .) = N(F_t z_{t-1} + b_t, L_t L_t^T),
where F_t, b_t, L_t may depend on the observations in the way each bound allows (the
inference networks in ``training.lgssm.inference`` build them). Then the marginals q(z_t)
are Gaussian, N(m_t, P_t) with m_t = F_t m_{t-1} + b_t, P_t = F_t P_{t-1} F_t^T + L_t L_t^T,
and both expectations above have closed forms (``analytic_bound``): with R = r I, Q = s I,
    E log N(o_t | z_t, r I)   = -D/2 log(2 pi r) - (|o_t - m_t|^2 + tr P_t) / (2 r)
    E KL_t = 1/2 [ (|L_t|_F^2 + |(F_t - A) m_{t-1} + b_t|^2 + tr((F_t - A) P_{t-1} (F_t - A)^T)) / s
                   - D + D log s - log det(L_t L_t^T) ].
This is the *same objective* as the paper's single-sample Monte-Carlo estimate
(``mc_bound``: ancestral reparameterised samples, KL at the sample) without its sampling
noise, so the experiment trains on it by default: exact gradients converge faster and make
the learned sigma~ a property of the bound, not of the optimiser noise. The test checks
that the average of many ``mc_bound`` draws matches ``analytic_bound``, and that with q the
exact smoother conditionals the analytic bound equals log p(o) (Eq. 4 is tight).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from training.lgssm.dense_kalman import LGSSM, LOG_2PI, mvn_log_prob


class ConditionalChain(NamedTuple):
    """A Markov-chain q with linear-Gaussian factors (module docstring).

    Leading axes of the matrix fields may be left out when they are shared by all
    sequences (e.g. the RSSM's F and L are the same for every sequence and step):
    ``trans`` and ``chol`` are ``[T-1, D, D]`` or ``[B, T-1, D, D]``; ``init_chol`` is
    ``[D, D]`` or ``[B, D, D]``.
    """

    init_mean: Tensor  # [B, D]   m_0
    init_chol: Tensor  # [(B,) D, D]   L_0, lower triangular, positive diagonal
    trans: Tensor  # [(B,) T-1, D, D]   F_t, t = 1..T-1
    offset: Tensor  # [B, T-1, D]   b_t
    chol: Tensor  # [(B,) T-1, D, D]   L_t


class Marginals(NamedTuple):
    """Gaussian marginals q(z_t) = N(mean_t, cov_t) of a ConditionalChain."""

    mean: Tensor  # [B, T, D]
    cov: Tensor  # [(B,) T, D, D]


def _matvec(m: Tensor, v: Tensor) -> Tensor:
    """m v over the last axes; a shared ``[D, D]`` matrix is one matmul for the whole batch."""
    if m.dim() == 2:
        return v @ m.mT
    return (m @ v.unsqueeze(-1)).squeeze(-1)


def chain_marginals(chain: ConditionalChain) -> Marginals:
    """m_t = F_t m_{t-1} + b_t,  P_t = F_t P_{t-1} F_t^T + L_t L_t^T  (P_0 = L_0 L_0^T)."""
    mean = chain.init_mean
    cov = chain.init_chol @ chain.init_chol.mT
    noise = chain.chol @ chain.chol.mT  # all steps at once, outside the recursion
    means, covs = [mean], [cov]
    for f, b, n in zip(chain.trans.unbind(-3), chain.offset.unbind(-2), noise.unbind(-3),
                       strict=True):
        mean = _matvec(f, mean) + b
        cov = f @ cov @ f.mT + n
        means.append(mean)
        covs.append(cov)
    return Marginals(torch.stack(means, -2), torch.stack(covs, -3))


def _isotropic(cov: Tensor, name: str) -> Tensor:
    """The scalar s of an isotropic covariance s I (the toy's Q and R); checked."""
    s = cov[..., 0, 0]
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    if not torch.allclose(cov.detach(), s.detach() * eye):
        raise ValueError(f"{name} must be isotropic (s * I) for these bounds")
    return s


def _log_det_chol(chol: Tensor) -> Tensor:
    """log det(L L^T) for a lower-triangular L with positive diagonal."""
    return 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)


def _initial_kl(chain: ConditionalChain, model: LGSSM) -> Tensor:
    """KL(N(m_0, L_0 L_0^T) || N(m0, P0)) with isotropic P0, shape [B]."""
    p0 = _isotropic(model.P0, "P0")
    dim = chain.init_mean.shape[-1]
    tr = chain.init_chol.square().sum((-2, -1))
    maha = (chain.init_mean - model.m0).square().sum(-1)
    return 0.5 * ((tr + maha) / p0 - dim + dim * torch.log(p0) - _log_det_chol(chain.init_chol))


def analytic_bound(chain: ConditionalChain, obs: Tensor, model: LGSSM) -> Tensor:
    """E_q[log p(o, z) - log q(z)] in closed form, per sequence, shape ``[B]``.

    Eq. 3 when ``chain`` comes from an RSSM-factorised q, Eq. 4 when it comes from a
    smoothing q (module docstring).
    """
    r, s = _isotropic(model.R, "R"), _isotropic(model.Q, "Q")
    dim = obs.shape[-1]
    marg = chain_marginals(chain)
    tr_p = torch.diagonal(marg.cov, dim1=-2, dim2=-1).sum(-1)  # [(B,) T]
    recon = (-0.5 * dim * (LOG_2PI + torch.log(r))
             - 0.5 * ((obs - marg.mean).square().sum(-1) + tr_p) / r).sum(-1)

    diff = chain.trans - model.A  # [(B,) T-1, D, D]
    mean_err = _matvec(diff, marg.mean[..., :-1, :]) + chain.offset  # [B, T-1, D]
    cov_err = (diff @ marg.cov[..., :-1, :, :] @ diff.mT)
    expected_sq = mean_err.square().sum(-1) + torch.diagonal(cov_err, dim1=-2, dim2=-1).sum(-1)
    tr_q = chain.chol.square().sum((-2, -1))
    kl_steps = 0.5 * ((tr_q + expected_sq) / s - dim + dim * torch.log(s)
                      - _log_det_chol(chain.chol))
    return recon - _initial_kl(chain, model) - kl_steps.sum(-1)


def mc_bound(chain: ConditionalChain, obs: Tensor, model: LGSSM,
             generator: torch.Generator | None = None) -> Tensor:
    """Single-sample Monte-Carlo estimate of the same bound, shape ``[B]`` (the paper's way).

    Ancestral reparameterised sample z_0 ~ q(z_0), z_t ~ q(z_t | z_{t-1}); the
    reconstruction term at the sample, the transition KL analytic at the sampled z_{t-1}
    (as in RSSM/Dreamer code), the initial KL analytic.
    """
    r, s = _isotropic(model.R, "R"), _isotropic(model.Q, "Q")
    batch, _, dim = obs.shape

    def eps() -> Tensor:
        return torch.randn(batch, dim, generator=generator, dtype=obs.dtype, device=obs.device)

    z = chain.init_mean + _matvec(chain.init_chol, eps())
    samples, kls = [z], []
    tr_q = chain.chol.square().sum((-2, -1))
    logdet_q = _log_det_chol(chain.chol)
    for f, b, l in zip(chain.trans.unbind(-3), chain.offset.unbind(-2), chain.chol.unbind(-3),
                       strict=True):
        mean_q = _matvec(f, z) + b
        mean_p = z @ model.A.mT
        kls.append((mean_q - mean_p).square().sum(-1))
        z = mean_q + _matvec(l, eps())
        samples.append(z)
    zs = torch.stack(samples, 1)
    recon = (-0.5 * dim * (LOG_2PI + torch.log(r))
             - 0.5 * (obs - zs).square().sum(-1) / r).sum(-1)
    maha = torch.stack(kls, -1)
    kl_steps = 0.5 * ((tr_q + maha) / s - dim + dim * torch.log(s) - logdet_q)
    return recon - _initial_kl(chain, model) - kl_steps.sum(-1)


def marginal_log_prob(states: Tensor, marg: Marginals) -> Tensor:
    """Mean per-step log N(z_t | m_t, P_t) of ground-truth ``states`` ``[B, T, D]`` (a scalar)."""
    return mvn_log_prob(states, marg.mean, marg.cov).mean()

