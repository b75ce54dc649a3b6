"""Bad input is refused with a ValueError whose message names the argument and its shape;
``validate=False`` skips every check."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torch

import estimator.kalman
import estimator.smoother
from estimator import (
    Belief,
    LatentObservation,
    LinearTransition,
    fuse,
    kalman_filter,
    log_marginal_likelihood,
    predict,
    rts_smoother,
    smoothed_dynamics,
    update,
)

# No numerical comparisons in this file: only whether (and with what message) inputs are
# refused. The one numerical assertion (validate=False gives the same result on valid
# input) is exact.
ATOL = 0.0

B, T, L = 2, 5, 3
F64 = torch.float64


def make_inputs():
    g = torch.Generator().manual_seed(0)
    initial = Belief(torch.zeros(B, L, dtype=F64), torch.ones(B, L, dtype=F64))
    observations = [
        LatentObservation(torch.randn(B, T, L, generator=g, dtype=F64),
                          torch.rand(B, T, L, generator=g, dtype=F64) + 0.1,
                          torch.rand(B, T, generator=g) < 0.7)
        for _ in range(2)
    ]
    transition = LinearTransition(torch.full((B, T - 1, L), 0.9, dtype=F64),
                                  torch.zeros(B, T - 1, L, dtype=F64),
                                  torch.full((B, T - 1, L), 0.1, dtype=F64))
    return initial, observations, transition


def _set(t: torch.Tensor, index, value) -> torch.Tensor:
    t = t.clone()
    t[index] = value
    return t


def _first_valid(obs: LatentObservation) -> tuple[int, int]:
    i, t = torch.nonzero(obs.valid)[0].tolist()
    return i, t


def _first_invalid(obs: LatentObservation) -> tuple[int, int]:
    i, t = torch.nonzero(~obs.valid)[0].tolist()
    return i, t


# Each case: (name, corrupt(initial, observations, transition) -> same triple, message regex).
Corruption = Callable[[Belief, list[LatentObservation], LinearTransition],
                      tuple[Belief, list[LatentObservation], LinearTransition]]


def _obs(k: int, **fields) -> Corruption:
    def corrupt(init, obs, trans):
        obs = list(obs)
        obs[k] = obs[k]._replace(**{name: f(obs[k]) for name, f in fields.items()})
        return init, obs, trans
    return corrupt


def _init(**fields) -> Corruption:
    def corrupt(init, obs, trans):
        return init._replace(**{name: f(init) for name, f in fields.items()}), obs, trans
    return corrupt


def _trans(**fields) -> Corruption:
    def corrupt(init, obs, trans):
        return init, obs, trans._replace(**{name: f(trans) for name, f in fields.items()})
    return corrupt


def esc(s: str) -> str:
    return re.escape(s)


FILTER_CASES: list[tuple[str, Corruption, str]] = [
    ("initial mean shape", _init(mean=lambda x: torch.zeros(B, L + 1, dtype=F64)),
     esc("initial.mean (shape (2, 4)") + ".*" + esc("expected shape (2, 3)")),
    ("initial var shape", _init(var=lambda x: torch.ones(B + 1, L, dtype=F64)),
     esc("initial.var (shape (3, 3)")),
    ("initial var zero", _init(var=lambda x: _set(x.var, (1, 2), 0.0)),
     esc("initial.var (shape (2, 3)") + ".*strictly positive"),
    ("initial var negative", _init(var=lambda x: -x.var),
     esc("initial.var (shape (2, 3)") + ".*strictly positive"),
    ("initial mean nan", _init(mean=lambda x: _set(x.mean, (0, 0), float("nan"))),
     esc("initial.mean (shape (2, 3)") + ".*NaN"),
    ("initial var inf", _init(var=lambda x: _set(x.var, (0, 1), float("inf"))),
     esc("initial.var (shape (2, 3)") + ".*inf"),
    ("initial int", _init(mean=lambda x: torch.zeros(B, L, dtype=torch.int64)),
     esc("initial.mean (shape (2, 3), dtype torch.int64)") + ".*floating-point"),
    ("obs mean shape", _obs(1, mean=lambda o: o.mean[:, :-1]),
     esc("observations[1].mean (shape (2, 4, 3)") + ".*" + esc("expected shape (2, 5, 3)")),
    ("obs var shape", _obs(0, var=lambda o: o.var[..., :-1]),
     esc("observations[0].var (shape (2, 5, 2)")),
    ("obs mean nan", _obs(0, mean=lambda o: _set(o.mean, (1, 3, 0), float("nan"))),
     esc("observations[0].mean (shape (2, 5, 3)") + ".*NaN"),
    ("obs mean nan where invalid",
     _obs(1, mean=lambda o: _set(o.mean, (*_first_invalid(o), 0), float("nan"))),
     esc("observations[1].mean (shape (2, 5, 3)") + ".*NaN"),
    ("obs var zero where valid", _obs(1, var=lambda o: _set(o.var, (*_first_valid(o), 1), 0.0)),
     esc("observations[1].var (shape (2, 5, 3)") + ".*strictly positive where valid"),
    ("obs var negative where valid",
     _obs(0, var=lambda o: _set(o.var, (*_first_valid(o), 2), -1.0)),
     esc("observations[0].var (shape (2, 5, 3)") + ".*strictly positive where valid"),
    ("obs valid float", _obs(0, valid=lambda o: o.valid.to(F64)),
     esc("observations[0].valid must be a bool tensor")),
    ("obs valid shape", _obs(1, valid=lambda o: o.valid[:, :-1]),
     esc("observations[1].valid (shape (2, 4)) must have shape (2, 5)")),
    ("transition T instead of T-1", _trans(a=lambda x: torch.ones(B, T, L, dtype=F64)),
     esc("transition.a (shape (2, 5, 3)") + ".*" + esc("expected shape (2, 4, 3)")),
    ("transition q shape", _trans(q=lambda x: x.q[..., :-1]),
     esc("transition.q (shape (2, 4, 2)")),
    ("transition q zero", _trans(q=lambda x: _set(x.q, (1, 3, 2), 0.0)),
     esc("transition.q (shape (2, 4, 3)") + ".*strictly positive"),
    ("transition b nan", _trans(b=lambda x: _set(x.b, (0, 0, 0), float("nan"))),
     esc("transition.b (shape (2, 4, 3)") + ".*NaN"),
    ("transition a inf", _trans(a=lambda x: _set(x.a, (0, 1, 0), float("-inf"))),
     esc("transition.a (shape (2, 4, 3)") + ".*inf"),
]


@pytest.mark.parametrize(("corrupt", "message"), [c[1:] for c in FILTER_CASES],
                         ids=[c[0] for c in FILTER_CASES])
def test_filter_refuses_bad_input(corrupt, message):
    initial, observations, transition = corrupt(*make_inputs())
    with pytest.raises(ValueError, match=message):
        kalman_filter(initial, observations, transition)
    with pytest.raises(ValueError, match=message):
        log_marginal_likelihood(initial, observations, transition)


def test_filter_refuses_structurally_bad_sequences():
    initial, observations, transition = make_inputs()
    with pytest.raises(ValueError, match="at least one sensor"):
        kalman_filter(initial, [], transition)
    flat = LatentObservation(observations[0].mean[:, 0], observations[0].var[:, 0],
                             observations[0].valid[:, 0])
    with pytest.raises(ValueError, match=esc("observations[0].mean (shape (2, 3))")
                       + ".*" + esc("[B, T, L]")):
        kalman_filter(initial, [flat], transition)
    # A single LatentObservation instead of a list of them (one per sensor).
    with pytest.raises(ValueError, match=r"observations must be a sequence"):
        kalman_filter(initial, observations[0], transition)
    with pytest.raises(ValueError, match=r"observations must be a sequence"):
        fuse(initial, observations[0])
    # No time steps at all, with fixed and with callable transitions.
    empty = [LatentObservation(o.mean[:, :0], o.var[:, :0], o.valid[:, :0]) for o in observations]
    no_steps = esc("observations[0].mean (shape (2, 0, 3))") + ".*at least one step"
    with pytest.raises(ValueError, match=no_steps):
        kalman_filter(initial, empty, LinearTransition(*(x[:, :0] for x in transition)))
    with pytest.raises(ValueError, match=no_steps):
        kalman_filter(initial, empty, lambda t, posterior: None)


def test_filter_refuses_bad_callable_transition():
    initial, observations, _ = make_inputs()

    def wrong_shape(t, posterior):
        return LinearTransition(posterior.mean[:, :1], posterior.mean[:, :1],
                                posterior.var[:, :1])

    def negative_q(t, posterior):
        return LinearTransition(torch.ones_like(posterior.mean), posterior.mean,
                                -posterior.var)

    with pytest.raises(ValueError, match=esc("transition(0, posterior_0).a (shape (2, 1)")):
        kalman_filter(initial, observations, wrong_shape)
    with pytest.raises(ValueError, match=esc("transition(0, posterior_0).q (shape (2, 3)")
                       + ".*strictly positive"):
        kalman_filter(initial, observations, negative_q)


def test_zero_variance_is_accepted_where_the_observation_is_missing():
    initial, observations, transition = make_inputs()
    obs = observations[0]
    observations[0] = obs._replace(var=torch.where(obs.valid[..., None], obs.var, 0.0))
    kalman_filter(initial, observations, transition)


def test_single_step_functions_refuse_bad_input():
    initial, observations, transition = make_inputs()
    post = Belief(initial.mean, initial.var)
    step = LinearTransition(*(x[:, 0] for x in transition))
    obs = LatentObservation(observations[0].mean[:, 0], observations[0].var[:, 0],
                            observations[0].valid[:, 0])
    with pytest.raises(ValueError, match=esc("posterior.var (shape (2, 3)") + ".*positive"):
        predict(post._replace(var=-post.var), step)
    with pytest.raises(ValueError, match=esc("transition.a (shape (2, 4)")):
        predict(post, step._replace(a=torch.ones(B, L + 1, dtype=F64)))
    with pytest.raises(ValueError, match=esc("prior.mean (shape (2, 3)") + ".*NaN"):
        update(post._replace(mean=_set(post.mean, (0, 0), float("nan"))), obs)
    with pytest.raises(ValueError, match=esc("observation.valid (shape (3,))")):
        update(post, obs._replace(valid=torch.ones(3, dtype=torch.bool)))
    with pytest.raises(ValueError, match=esc("observations[2].var (shape (2, 3)")):
        fuse(post, [obs, obs, obs._replace(var=-obs.var, valid=torch.ones(B, dtype=torch.bool))])


def test_smoother_refuses_bad_input():
    initial, observations, transition = make_inputs()
    filtered = kalman_filter(initial, observations, transition)
    bad_prior = filtered._replace(prior=filtered.prior._replace(
        var=_set(filtered.prior.var, (1, 2, 0), 0.0)))
    with pytest.raises(ValueError, match=esc("filtered.prior.var (shape (2, 5, 3)")):
        rts_smoother(bad_prior)
    bad_transition = filtered._replace(transition=transition._replace(
        a=torch.ones(B, T, L, dtype=F64)))
    with pytest.raises(ValueError, match=esc("filtered.transition.a (shape (2, 5, 3)")):
        rts_smoother(bad_transition)
    smoothed = rts_smoother(filtered)
    with pytest.raises(ValueError, match=esc("z_prev (shape (2, 5, 3)") + ".*"
                       + esc("(2, 4, 3)")):
        smoothed_dynamics(smoothed, smoothed.smoothed.mean)


def test_validate_false_skips_every_check(monkeypatch):
    """With validate=False no check function is called at all (they are replaced by ones
    that fail the test), and bad values go through unrefused."""
    def forbidden(*args, **kwargs):
        raise AssertionError("a check ran although validate=False")

    initial, observations, transition = make_inputs()
    expected = kalman_filter(initial, observations, transition, log_likelihood=True)
    expected_smoothed = rts_smoother(expected)
    for module in (estimator.kalman, estimator.smoother):
        for name in ("check_belief", "check_observation", "check_transition"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, forbidden)

    got = kalman_filter(initial, observations, transition, log_likelihood=True, validate=False)
    torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)
    torch.testing.assert_close(rts_smoother(got, validate=False), expected_smoothed,
                               rtol=0, atol=ATOL)
    log_marginal_likelihood(initial, observations, transition, validate=False)
    step = LinearTransition(*(x[:, 0] for x in transition))
    obs = LatentObservation(observations[0].mean[:, 0], observations[0].var[:, 0],
                            observations[0].valid[:, 0])
    predict(initial, step, validate=False)
    update(initial, obs, validate=False)
    fuse(initial, [obs, obs], validate=False)

    # Bad values are not refused (and propagate) when validation is off.
    nan_initial = initial._replace(mean=_set(initial.mean, (0, 0), float("nan")))
    out = kalman_filter(nan_initial, observations, transition, validate=False)
    assert bool(out.posterior.mean[0, :, 0].isnan().all())
    negative = initial._replace(var=-initial.var)
    kalman_filter(negative, observations, transition, validate=False)
