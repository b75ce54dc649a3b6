"""Diagonal Kalman filtering in a learned latent space: pure, batched, elementwise.

Every function here implements one equation of docs/design.md §2 (the VRKN of
paper Sec. 3.1-3.2 and 3.6) on diagonal Gaussians. Observation model is the identity
(w_t ~ N(z_t, diag(sigma_w^2)), paper Sec. 3.2), so all algebra is elementwise over the
latent axis and vectorised over batch. Shapes: one step ``[B, L]``, a sequence
``[B, T, L]``; masks ``[B]`` / ``[B, T]``.

The smoother and the smoothed dynamics live in ``estimator.smoother``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from estimator.gaussian import (
    Belief,
    LatentObservation,
    LinearTransition,
    check_belief,
    check_observation,
    check_transition,
    stack_beliefs,
)

_LOG_2PI = math.log(2.0 * math.pi)

# A transition function gets the step index t and the posterior at t and returns the
# transition parameters for t -> t+1 (VRKN: phi(mu+_t, a_t), paper Sec. 3.1).
TransitionFn = Callable[[int, Belief], LinearTransition]


class FilterResult(NamedTuple):
    """Output of :func:`kalman_filter` over a sequence of T steps."""

    prior: Belief  # [B, T, L]; prior[:, 0] is the initial belief (no predict at t = 0)
    posterior: Belief  # [B, T, L]
    transition: LinearTransition  # [B, T-1, L]; entry t maps step t to step t+1
    log_likelihood: Tensor | None  # [B, T] log p(w_t | w_<t) summed over sensors, or None


def predict(posterior: Belief, transition: LinearTransition, validate: bool = True) -> Belief:
    """Time update (docs/design.md §2.2): mu- = A mu+ + b, var- = A^2 var+ + q.

    Paper Sec. 3.2, the closed-form marginalisation
    q(z_{t+1} | o_<=t) = integral q(z_{t+1} | z_t, a_t) q(z_t | o_<=t) dz_t.
    """
    if validate:
        check_belief("posterior", posterior)
        check_transition("transition", transition, posterior.mean.shape)
    a = transition.a
    return Belief(a * posterior.mean + transition.b, a * a * posterior.var + transition.q)


def update(prior: Belief, observation: LatentObservation, validate: bool = True) -> Belief:
    """Masked Joseph-form measurement update with H = I (docs/design.md §2.3).

    K = var- / (var- + sigma_w^2); mu+ = mu- + K (w - mu-);
    var+ = (1 - K)^2 var- + K^2 sigma_w^2  (Joseph form: a sum of positive terms, so the
    variance stays positive in float32). 1 - K is computed as sigma_w^2 / (var- + sigma_w^2),
    not by subtraction. Where ``observation.valid`` is False the gain is zero, so the
    prior passes through exactly (a missing sensor skips its update, paper Sec. 3.6).
    """
    if validate:
        check_belief("prior", prior)
        check_observation("observation", observation, prior.mean.shape)
    denom = prior.var + observation.var
    present = observation.valid.unsqueeze(-1).to(prior.var.dtype)
    gain = present * (prior.var / denom)
    one_minus_gain = present * (observation.var / denom) + (1.0 - present)
    mean = prior.mean + gain * (observation.mean - prior.mean)
    var = one_minus_gain.square() * prior.var + gain.square() * observation.var
    return Belief(mean, var)


def predictive_log_prob(prior: Belief, observation: LatentObservation) -> Tensor:
    """log N(w | mu-, var- + sigma_w^2), summed over the latent axis; 0 where not valid.

    The one-step predictive density of a latent observation, the term of the
    prediction-error decomposition of the marginal likelihood. Shape ``prior.mean.shape[:-1]``.
    """
    total_var = prior.var + observation.var
    per_dim = -0.5 * (_LOG_2PI + torch.log(total_var)
                      + (observation.mean - prior.mean).square() / total_var)
    return per_dim.sum(-1) * observation.valid.to(per_dim.dtype)


def _check_sensor_list(observations: Sequence[LatentObservation]) -> None:
    # A LatentObservation is itself a tuple (of tensors): passing one where a list of
    # them is expected would otherwise fail later with an unrelated AttributeError.
    if isinstance(observations, LatentObservation):
        raise ValueError("observations must be a sequence of LatentObservation (one per "
                         "sensor), got a single LatentObservation: wrap it in a list")


def fuse(prior: Belief, observations: Sequence[LatentObservation], validate: bool = True
         ) -> Belief:
    """Sequential multi-sensor fusion (paper Sec. 3.6): one masked update per sensor, in order.

    With identity observation models the result equals a single update with the
    combined precision of the present sensors, whatever the order.
    """
    _check_sensor_list(observations)
    belief = prior
    for k, obs in enumerate(observations):
        if validate:
            check_observation(f"observations[{k}]", obs, prior.mean.shape)
        belief = update(belief, obs, validate=validate and k == 0)
    return belief


def _filter_step(belief: Belief, params: LinearTransition | None,
                 observations: list[LatentObservation], log_likelihood: bool
                 ) -> tuple[Belief, Belief, Tensor | None]:
    """One filter step: predict (unless ``params`` is None, the first step), then fuse
    every sensor. Returns (prior, posterior, summed predictive log-likelihood or None)."""
    prior = belief if params is None else predict(belief, params, validate=False)
    belief, total = prior, None
    for obs in observations:
        if log_likelihood:
            ll = predictive_log_prob(belief, obs)
            total = ll if total is None else total + ll
        belief = update(belief, obs, validate=False)
    return prior, belief, total


@functools.cache
def _compiled_filter_step() -> Callable[..., tuple[Belief, Belief, Tensor | None]]:
    """``_filter_step`` through torch.compile, created on first use (no import-time work)."""
    return torch.compile(_filter_step, dynamic=False)


def kalman_filter(
    initial: Belief,
    observations: Sequence[LatentObservation],
    transition: LinearTransition | TransitionFn,
    *,
    log_likelihood: bool = False,
    validate: bool = True,
    compiled: bool = False,
) -> FilterResult:
    """Filter a sequence: step 0 updates the initial belief without predicting
    (docs/design.md §2.1); each later step predicts then fuses every sensor.

    Args:
        initial: belief over z_0 before any observation, ``[B, L]``.
        observations: one LatentObservation per sensor, each ``[B, T, L]`` with
            ``valid`` ``[B, T]``; fused in this order at every step.
        transition: either per-step parameters ``[B, T-1, L]`` (entry t maps step t to
            t+1), or a function ``(t, posterior_t) -> LinearTransition [B, L]`` called
            after each update (VRKN's phi(mu+_t, a_t) depends on the posterior mean).
        log_likelihood: also return log p(w_t | w_<t) per step, summed over sensors.
        validate: check shapes and values of the inputs (off on hot paths).
        compiled: run the per-step sensor fusion through ``torch.compile`` (about 1.7x
            faster forward + backward once compiled, but the first call per shape
            compiles for ~20 s; worth it for long training runs, see bench/kalman.py).
    """
    _check_sensor_list(observations)
    if not observations:
        raise ValueError("observations must hold at least one sensor")
    shape = observations[0].mean.shape
    if len(shape) != 3:
        raise ValueError(f"observations[0].mean (shape {tuple(shape)}) must be [B, T, L]")
    batch, steps, latent = shape
    if steps == 0:
        raise ValueError(f"observations[0].mean (shape {tuple(shape)}) must have at least one "
                         "step (T >= 1)")
    if validate:
        check_belief("initial", initial, (batch, latent))
        for k, obs in enumerate(observations):
            check_observation(f"observations[{k}]", obs, shape)
        if isinstance(transition, LinearTransition):
            check_transition("transition", transition, (batch, steps - 1, latent))

    # Unbind once: indexing x[:, t] inside the loop makes the backward quadratic in T.
    per_sensor = [
        [LatentObservation(m, v, ok) for m, v, ok in
         zip(obs.mean.unbind(1), obs.var.unbind(1), obs.valid.unbind(1), strict=True)]
        for obs in observations
    ]
    if isinstance(transition, LinearTransition):
        steps_params = [LinearTransition(*p) for p in zip(
            transition.a.unbind(1), transition.b.unbind(1), transition.q.unbind(1), strict=True)]

        def transition_at(t: int, _posterior: Belief) -> LinearTransition:
            return steps_params[t]
    else:
        transition_at = transition

    step = _compiled_filter_step() if compiled else _filter_step
    priors: list[Belief] = []
    posteriors: list[Belief] = []
    used: list[LinearTransition] = []
    log_liks: list[Tensor] = []
    belief = initial
    for t in range(steps):
        params = None
        if t > 0:
            params = transition_at(t - 1, belief)
            if validate and t == 1:
                check_transition("transition(0, posterior_0)", params, (batch, latent))
            used.append(params)
        prior, belief, step_ll = step(belief, params, [sensor[t] for sensor in per_sensor],
                                      log_likelihood)
        priors.append(prior)
        posteriors.append(belief)
        if log_likelihood:
            log_liks.append(step_ll)

    if used:
        trans_seq = LinearTransition(*(torch.stack(x, 1) for x in zip(*used, strict=True)))
    else:
        empty = initial.mean.new_zeros(batch, 0, latent)
        trans_seq = LinearTransition(empty, empty, empty)
    return FilterResult(
        prior=stack_beliefs(priors),
        posterior=stack_beliefs(posteriors),
        transition=trans_seq,
        log_likelihood=torch.stack(log_liks, 1) if log_likelihood else None,
    )


def log_marginal_likelihood(
    initial: Belief,
    observations: Sequence[LatentObservation],
    transition: LinearTransition,
    validate: bool = True,
) -> Tensor:
    """log p(w_0:T-1) of the latent observations under fixed transitions, shape ``[B]``.

    Prediction-error decomposition: sum_t log N(w_t | mu-_t, var-_t + sigma_w^2),
    with sequential sensors each predicted from the belief after the previous ones.
    Only a true marginal likelihood when the transitions do not depend on the data.
    """
    result = kalman_filter(initial, observations, transition, log_likelihood=True,
                           validate=validate)
    assert result.log_likelihood is not None
    return result.log_likelihood.sum(1)


def kl_divergence(p: Belief, q: Belief) -> Tensor:
    """Analytic KL(p || q) between diagonal Gaussians, summed over the latent axis.

    KL = 1/2 sum_i [ log(var_q/var_p) + (var_p + (mu_p - mu_q)^2) / var_q - 1 ].
    """
    ratio = p.var / q.var
    return 0.5 * (ratio - torch.log(ratio) + (p.mean - q.mean).square() / q.var - 1.0).sum(-1)


def gaussian_log_prob(x: Tensor, belief: Belief) -> Tensor:
    """log N(x | mean, diag(var)) summed over the latent axis."""
    return -0.5 * (_LOG_2PI + torch.log(belief.var)
                   + (x - belief.mean).square() / belief.var).sum(-1)


def sample(belief: Belief, generator: torch.Generator | None = None) -> Tensor:
    """A reparameterised sample mean + sqrt(var) * eps, eps ~ N(0, I) from ``generator``."""
    eps = torch.randn(belief.mean.shape, generator=generator, dtype=belief.mean.dtype,
                      device=belief.mean.device)
    return belief.mean + belief.var.sqrt() * eps


def transition_given(transition: LinearTransition, z: Tensor) -> Belief:
    """The prior dynamics p(z_{t+1} | z_t = z) = N(a z + b, diag(q)) (paper Sec. 3.1)."""
    return Belief(transition.a * z + transition.b, transition.q)
