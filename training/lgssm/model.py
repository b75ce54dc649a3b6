"""Ground-truth system of the toy experiment (paper Sec. 2.2) and data generation.

p(z_0) = N(0, I),  p(z_{t+1} | z_t) = N(A z_t, 0.01 I),  p(o_t | z_t) = N(z_t, 0.025 I),
state dimension 4; 1,000 sequences of length 50 in the paper.

The paper's exact A lives in its Appendix B, which our copy does not contain, so we choose
one with the stated properties ("slightly damped, oscillating"): two 2x2 damped rotation
blocks (radius 0.98 and 0.95, angles 0.2 and 0.1 rad, i.e. periods of ~31 and ~63 steps
and e-folding times of ~50 and ~20 steps) mixed by a fixed orthogonal matrix so that A is
a full 4x4 matrix with no zero entries. The orthogonal matrix comes from a QR
decomposition of a Gaussian matrix drawn with a fixed seed (``A_SEED``), so A is the same
on every machine and run; it is printed by the CLI and stored in results.json.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from training.lgssm.dense_kalman import LGSSM

STATE_DIM = 4
TRANSITION_VAR = 0.01  # sigma of the paper (a variance: the noise is N(0, sigma I))
OBSERVATION_VAR = 0.025
INITIAL_VAR = 1.0
BLOCKS = ((0.98, 0.2), (0.95, 0.1))  # (radius, angle in rad) of the two rotation blocks
A_SEED = 20231


def rotation_block(radius: float, angle: float) -> Tensor:
    """radius * [[cos, -sin], [sin, cos]] in float64."""
    c, s = math.cos(angle), math.sin(angle)
    return radius * torch.tensor([[c, -s], [s, c]], dtype=torch.float64)


def ground_truth_A() -> Tensor:
    """The ground-truth 4x4 transition matrix A = U blockdiag(B1, B2) U^T (float64).

    Its eigenvalues are radius * exp(+-i angle) of the two blocks, so it is stable,
    slightly damped and oscillating whatever the orthogonal U.
    """
    g = torch.Generator().manual_seed(A_SEED)
    u, r = torch.linalg.qr(torch.randn(STATE_DIM, STATE_DIM, generator=g, dtype=torch.float64))
    u = u * torch.sign(torch.diagonal(r))  # make the QR factor unique
    blocks = torch.block_diag(*(rotation_block(rad, ang) for rad, ang in BLOCKS))
    return u @ blocks @ u.T


def make_lgssm(A: Tensor, transition_var: Tensor | float) -> LGSSM:
    """The toy LGSSM with transition matrix ``A``, isotropic transition variance, and the
    observation and initial-state models fixed to the ground truth (as in the paper).

    ``transition_var`` may be a (differentiable) 0-d tensor; the result follows A's dtype.
    """
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    q = torch.as_tensor(transition_var, dtype=A.dtype, device=A.device)
    return LGSSM(A=A, Q=q * eye, R=OBSERVATION_VAR * eye,
                 m0=torch.zeros(A.shape[-1], dtype=A.dtype, device=A.device),
                 P0=INITIAL_VAR * eye)


def ground_truth() -> LGSSM:
    """The ground-truth generative model."""
    return make_lgssm(ground_truth_A(), TRANSITION_VAR)


def sample_sequences(model: LGSSM, num: int, length: int, generator: torch.Generator
                     ) -> tuple[Tensor, Tensor]:
    """Draw ``num`` sequences of ``length`` steps: (states, observations), ``[num, length, D]``.

    All randomness comes from ``generator``; the dtype follows ``model.A``.
    """
    if num < 1 or length < 2:
        raise ValueError(f"need num >= 1 and length >= 2, got num={num}, length={length}")
    dim, dtype = model.A.shape[-1], model.A.dtype

    def noise(cov: Tensor) -> Tensor:
        eps = torch.randn(num, dim, generator=generator, dtype=dtype)
        return eps @ torch.linalg.cholesky(cov).mT

    z = model.m0 + noise(model.P0)
    states = [z]
    for _ in range(length - 1):
        z = z @ model.A.mT + noise(model.Q)
        states.append(z)
    zs = torch.stack(states, 1)
    eps = torch.randn(zs.shape, generator=generator, dtype=dtype)
    obs = zs + eps @ torch.linalg.cholesky(model.R).mT
    return zs, obs
