"""Independent float64 references for the latent Kalman filter and RTS smoother.

Textbook linear-Gaussian state-space algebra with FULL matrices in numpy/scipy. Nothing
here imports or mirrors ``estimator/``: the diagonal core is checked against these by
embedding its diagonal parameters as diagonal matrices.

Model of one sequence (T steps, latent size L, K sensors, observation matrices H = I):

    z_0     ~ N(m0, P0)
    z_{t+1} =  A_t z_t + b_t + e_t,     e_t ~ N(0, Q_t),       t = 0..T-2
    w^k_t   =  z_t + v^k_t,             v^k_t ~ N(0, R^k_t),   only where valid[k, t]

Three independent ways to do inference in it:

* :func:`dense_kalman_filter` / :func:`dense_rts_smoother`: the recursive textbook
  filter (one joint update of all present sensors with the stacked H = [I; I; ...],
  covariance update P - K S K^T) and the RTS smoother with J_t = P_t A_t^T (P^-_{t+1})^-1.
* :func:`joint_posterior_precision`: brute force. The joint precision of z_0..z_{T-1}
  (TL x TL) assembled from the prior chain and the observation terms, inverted.
* :func:`joint_prior_moments` + :func:`joint_posterior_covariance_form` /
  :func:`log_marginal_likelihood_bruteforce`: brute force in covariance form. The joint
  prior of z_0..z_{T-1} written as z = F e + const, then Gaussian conditioning on (or the
  joint density of) the stacked observed w's.

Sizes are meant to be tiny (T <= 6, L <= 3): everything is O((TL)^3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.stats


@dataclass
class LGSSM:
    """One sequence of a linear-Gaussian SSM with identity observation matrices."""

    m0: np.ndarray  # [L]
    P0: np.ndarray  # [L, L]
    A: np.ndarray  # [T-1, L, L]
    b: np.ndarray  # [T-1, L]
    Q: np.ndarray  # [T-1, L, L]
    w: np.ndarray  # [K, T, L]; ignored where not valid
    R: np.ndarray  # [K, T, L, L]; ignored where not valid
    valid: np.ndarray  # [K, T] bool

    @property
    def steps(self) -> int:
        return self.w.shape[1]

    @property
    def latent(self) -> int:
        return self.m0.shape[0]

    @property
    def sensors(self) -> int:
        return self.w.shape[0]

    def present(self, t: int) -> list[int]:
        """Sensors with an observation at step t, in order."""
        return [k for k in range(self.sensors) if self.valid[k, t]]


@dataclass
class FilterReference:
    prior_mean: np.ndarray  # [T, L]; prior[0] is the initial belief (no predict at t = 0)
    prior_cov: np.ndarray  # [T, L, L]
    post_mean: np.ndarray  # [T, L]
    post_cov: np.ndarray  # [T, L, L]
    log_likelihood: np.ndarray  # [T]; log p(w_t | w_<t) over all present sensors, 0 if none


@dataclass
class SmootherReference:
    mean: np.ndarray  # [T, L]
    cov: np.ndarray  # [T, L, L]
    gain: np.ndarray  # [T-1, L, L]; J_t
    cross_cov: np.ndarray  # [T-1, L, L]; Cov(z_t, z_{t+1} | all w)


def _sym(m: np.ndarray) -> np.ndarray:
    return 0.5 * (m + m.T)


def mvn_logpdf(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> float:
    """log N(x | mean, cov) through a Cholesky factor."""
    chol = np.linalg.cholesky(cov)
    white = scipy.linalg.solve_triangular(chol, x - mean, lower=True)
    return float(-0.5 * (x.size * math.log(2.0 * math.pi)
                         + 2.0 * np.log(np.diag(chol)).sum() + white @ white))


# --------------------------------------------------------------------------- recursive


def dense_kalman_filter(model: LGSSM) -> FilterReference:
    """Textbook Kalman filter; missing observations are skipped.

    At every step all present sensors are stacked into one observation y = H z + v with
    H = [I; I; ...] and R = blockdiag(R^k): S = H P H^T + R, K = P H^T S^-1,
    m+ = m + K (y - H m), P+ = P - K S K^T. The step's log-likelihood is log N(y | H m, S).
    """
    steps, latent = model.steps, model.latent
    eye = np.eye(latent)
    prior_m = np.zeros((steps, latent))
    prior_p = np.zeros((steps, latent, latent))
    post_m = np.zeros((steps, latent))
    post_p = np.zeros((steps, latent, latent))
    loglik = np.zeros(steps)
    m, p = model.m0.astype(np.float64), model.P0.astype(np.float64)
    for t in range(steps):
        if t > 0:
            a = model.A[t - 1]
            m = a @ m + model.b[t - 1]
            p = _sym(a @ p @ a.T + model.Q[t - 1])
        prior_m[t], prior_p[t] = m, p
        ks = model.present(t)
        if ks:
            h = np.vstack([eye] * len(ks))
            y = np.concatenate([model.w[k, t] for k in ks])
            r = scipy.linalg.block_diag(*[model.R[k, t] for k in ks])
            s = _sym(h @ p @ h.T + r)
            gain = np.linalg.solve(s, h @ p).T  # P H^T S^-1 (S, P symmetric)
            loglik[t] = mvn_logpdf(y, h @ m, s)
            m = m + gain @ (y - h @ m)
            p = _sym(p - gain @ s @ gain.T)
        post_m[t], post_p[t] = m, p
    return FilterReference(prior_m, prior_p, post_m, post_p, loglik)


def dense_rts_smoother(model: LGSSM, filtered: FilterReference) -> SmootherReference:
    """Textbook RTS smoother, J_t = P_t A_t^T (P^-_{t+1})^-1:

    m^s_t = m_t + J_t (m^s_{t+1} - m^-_{t+1})
    P^s_t = P_t + J_t (P^s_{t+1} - P^-_{t+1}) J_t^T
    Cov(z_t, z_{t+1} | all) = J_t P^s_{t+1}
    """
    steps, latent = model.steps, model.latent
    mean = filtered.post_mean.copy()
    cov = filtered.post_cov.copy()
    gains = np.zeros((max(steps - 1, 0), latent, latent))
    cross = np.zeros((max(steps - 1, 0), latent, latent))
    for t in range(steps - 2, -1, -1):
        p, p_pred = filtered.post_cov[t], filtered.prior_cov[t + 1]
        j = np.linalg.solve(p_pred, model.A[t] @ p).T  # P A^T (P^-)^-1
        mean[t] = filtered.post_mean[t] + j @ (mean[t + 1] - filtered.prior_mean[t + 1])
        cov[t] = _sym(p + j @ (cov[t + 1] - p_pred) @ j.T)
        gains[t] = j
        cross[t] = j @ cov[t + 1]
    return SmootherReference(mean, cov, gains, cross)


# --------------------------------------------------------------------------- brute force


@dataclass
class JointGaussian:
    """A Gaussian over the stacked sequence z_0..z_{T-1} (vector of size T*L)."""

    mean_flat: np.ndarray  # [T*L]
    cov: np.ndarray  # [T*L, T*L]
    latent: int

    def _blk(self, t: int) -> slice:
        return slice(t * self.latent, (t + 1) * self.latent)

    @property
    def mean(self) -> np.ndarray:
        return self.mean_flat.reshape(-1, self.latent)

    def marginal_cov(self, t: int) -> np.ndarray:
        return self.cov[self._blk(t), self._blk(t)]

    def cross_cov(self, s: int, t: int) -> np.ndarray:
        """Cov(z_s, z_t)."""
        return self.cov[self._blk(s), self._blk(t)]

    def conditional_next(self, t: int, z_t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and covariance of z_{t+1} given z_t = z_t under this joint (Schur complement)."""
        s_tt = self.marginal_cov(t)
        s_nt = self.cross_cov(t + 1, t)
        s_nn = self.marginal_cov(t + 1)
        reg = np.linalg.solve(s_tt, s_nt.T).T  # S_nt S_tt^-1
        mean = self.mean[t + 1] + reg @ (z_t - self.mean[t])
        cov = s_nn - reg @ s_nt.T
        return mean, _sym(cov)


def joint_posterior_precision(model: LGSSM) -> JointGaussian:
    """p(z_0..z_{T-1} | all present w) from the assembled joint precision matrix.

    -log p(z, w) = 1/2 (z_0 - m0)^T P0^-1 (z_0 - m0)
                 + sum_t 1/2 (z_{t+1} - A_t z_t - b_t)^T Q_t^-1 (z_{t+1} - A_t z_t - b_t)
                 + sum_{k,t valid} 1/2 (w^k_t - z_t)^T (R^k_t)^-1 (w^k_t - z_t) + const
    gives precision Lambda and information vector eta; posterior N(Lambda^-1 eta, Lambda^-1).
    """
    steps, latent = model.steps, model.latent
    n = steps * latent
    lam = np.zeros((n, n))
    eta = np.zeros(n)

    def blk(t: int) -> slice:
        return slice(t * latent, (t + 1) * latent)

    p0_inv = np.linalg.inv(model.P0)
    lam[blk(0), blk(0)] += p0_inv
    eta[blk(0)] += p0_inv @ model.m0
    for t in range(steps - 1):
        a, b = model.A[t], model.b[t]
        q_inv = np.linalg.inv(model.Q[t])
        lam[blk(t), blk(t)] += a.T @ q_inv @ a
        lam[blk(t + 1), blk(t + 1)] += q_inv
        lam[blk(t), blk(t + 1)] -= a.T @ q_inv
        lam[blk(t + 1), blk(t)] -= q_inv @ a
        eta[blk(t)] -= a.T @ q_inv @ b
        eta[blk(t + 1)] += q_inv @ b
    for t in range(steps):
        for k in model.present(t):
            r_inv = np.linalg.inv(model.R[k, t])
            lam[blk(t), blk(t)] += r_inv
            eta[blk(t)] += r_inv @ model.w[k, t]
    cov = _sym(np.linalg.inv(lam))
    return JointGaussian(cov @ eta, cov, latent)


def joint_prior_moments(model: LGSSM) -> JointGaussian:
    """The prior p(z_0..z_{T-1}) (no observations), covariance form.

    z_t = Phi(t, 0) z_0 + sum_{s<t} Phi(t, s+1) (b_s + e_s) with Phi(t, s) = A_{t-1}...A_s,
    so z = F e + mean with e = (z_0 - m0, e_0, ..., e_{T-2}) ~ N(0, blockdiag(P0, Q_0, ...)).
    """
    steps, latent = model.steps, model.latent
    eye = np.eye(latent)
    mean = np.zeros((steps, latent))
    mean[0] = model.m0
    for t in range(steps - 1):
        mean[t + 1] = model.A[t] @ mean[t] + model.b[t]
    # phi[t][s] = Phi(t, s): the map from a perturbation entering at step s to z_t.
    f = np.zeros((steps * latent, steps * latent))
    for s in range(steps):
        phi = eye
        for t in range(s, steps):
            if t > s:
                phi = model.A[t - 1] @ phi
            f[t * latent:(t + 1) * latent, s * latent:(s + 1) * latent] = phi
    noise = scipy.linalg.block_diag(model.P0, *[model.Q[t] for t in range(steps - 1)])
    return JointGaussian(mean.reshape(-1), _sym(f @ noise @ f.T), latent)


def _stacked_observations(model: LGSSM) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Selection matrix S (w_stack = S z + v), stacked w, and blockdiag of the R's."""
    steps, latent = model.steps, model.latent
    rows, ys, rs = [], [], []
    for t in range(steps):
        for k in model.present(t):
            sel = np.zeros((latent, steps * latent))
            sel[:, t * latent:(t + 1) * latent] = np.eye(latent)
            rows.append(sel)
            ys.append(model.w[k, t])
            rs.append(model.R[k, t])
    if not rows:
        return np.zeros((0, steps * latent)), np.zeros(0), np.zeros((0, 0))
    return np.vstack(rows), np.concatenate(ys), scipy.linalg.block_diag(*rs)


def joint_posterior_covariance_form(model: LGSSM) -> JointGaussian:
    """p(z | w) by conditioning the joint Gaussian of (z, w_stack) (covariance form)."""
    prior = joint_prior_moments(model)
    sel, y, r = _stacked_observations(model)
    if y.size == 0:
        return prior
    cov_zw = prior.cov @ sel.T
    cov_w = _sym(sel @ cov_zw + r)
    gain = np.linalg.solve(cov_w, cov_zw.T).T
    mean = prior.mean_flat + gain @ (y - sel @ prior.mean_flat)
    cov = _sym(prior.cov - gain @ cov_zw.T)
    return JointGaussian(mean, cov, model.latent)


def log_marginal_likelihood_bruteforce(model: LGSSM) -> float:
    """log p(all present w) as ONE multivariate normal density (scipy.stats).

    w_stack = S z + v: mean S mu_z, covariance S Sigma_z S^T + blockdiag(R). 0 when no
    observation is present (the density of an empty set).
    """
    prior = joint_prior_moments(model)
    sel, y, r = _stacked_observations(model)
    if y.size == 0:
        return 0.0
    cov_w = _sym(sel @ prior.cov @ sel.T + r)
    return float(scipy.stats.multivariate_normal(sel @ prior.mean_flat, cov_w).logpdf(y))


# --------------------------------------------------------------------------- Gaussians


def kl_mvn(m_p: np.ndarray, s_p: np.ndarray, m_q: np.ndarray, s_q: np.ndarray) -> float:
    """KL(N(m_p, S_p) || N(m_q, S_q)), full-matrix formula:

    1/2 [tr(S_q^-1 S_p) + (m_q - m_p)^T S_q^-1 (m_q - m_p) - k + ln det S_q - ln det S_p].
    """
    k = m_p.size
    diff = m_q - m_p
    _, logdet_q = np.linalg.slogdet(s_q)
    _, logdet_p = np.linalg.slogdet(s_p)
    return float(0.5 * (np.trace(np.linalg.solve(s_q, s_p)) + diff @ np.linalg.solve(s_q, diff)
                        - k + logdet_q - logdet_p))
