"""Speed levers: they change no model output beyond their stated precision. bf16 autocast
tolerance: 2e-2 relative on conv outputs (bf16 keeps 8 bits of mantissa)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from estimator.networks import ImageDecoder, ImageEncoder, set_conv_speed
from tests.training.conftest import tiny_world_model
from tests.world_models.conftest import synthetic_data
from training.perf import tune_malloc


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_tune_malloc_is_accepted_by_glibc():
    assert tune_malloc() is True


def test_bf16_and_channels_last_keep_conv_outputs_close_and_float32():
    torch.manual_seed(0)
    enc, dec = ImageEncoder(), ImageDecoder(30)
    x, f = torch.rand(4, 3, 64, 64) - 0.5, torch.randn(4, 30)
    ref_e, ref_d = enc(x), dec(f)
    for bf16, channels_last in ((True, False), (False, True), (True, True)):
        set_conv_speed(enc, bf16, channels_last)
        set_conv_speed(dec, bf16, channels_last)
        e, d = enc(x), dec(f)
        assert e.dtype == d.dtype == torch.float32
        tol = 2e-2 if bf16 else 1e-5
        torch.testing.assert_close(e, ref_e, rtol=tol, atol=tol * ref_e.abs().max().item())
        torch.testing.assert_close(d, ref_d, rtol=tol, atol=tol * ref_d.abs().max().item())
    set_conv_speed(enc)
    torch.testing.assert_close(enc(x), ref_e)  # back to float32 exactly


@pytest.mark.parametrize("name", ["vrkn", "rssm"])
def test_loss_posterior_is_a_detached_filtered_belief(name):
    model = tiny_world_model(name, action_dim=2, proprio=3)
    batch = model.to_batch(synthetic_data("fusion", batch=2, steps=5))
    loss, _, posterior = model.loss_and_posterior(batch, torch.Generator().manual_seed(0))
    with torch.no_grad():
        observed = model.observe(batch, torch.Generator().manual_seed(0))
    assert loss.requires_grad
    for a, b in zip(posterior, observed, strict=True):
        assert a.shape == b.shape and not a.requires_grad
    assert bool((posterior[1] > 0).all())  # VRKN's variance, the RSSM's std


# ---------------------------------------------------------------- GPU options on the CPU


def _agent(name: str, **perf):
    from tests.training.conftest import debug_config
    from tests.world_models.conftest import ACTION_DIM, SENSOR_SETS
    from training.loop import default_model_factory, make_agent
    from training.perf import apply_speed

    config = debug_config(model=name, **{f"perf.{k}": v for k, v in perf.items()})
    torch.manual_seed(0)
    model = default_model_factory(config, SENSOR_SETS["fusion"], ACTION_DIM)
    agent = make_agent(config, model)
    apply_speed(model, agent.actor_critic(), config.perf)
    return agent


def _updates(agent, count: int = 2) -> list[dict[str, float]]:
    out = []
    for k in range(count):
        batch = agent.model.to_batch(synthetic_data("fusion", batch=4, steps=6, seed=k))
        out.append(agent.update(batch, torch.Generator().manual_seed(k)))
    return out


@pytest.mark.parametrize("name", ["vrkn", "rssm"])
def test_bf16_world_model_and_actor_critic_update_with_float32_kalman(name, monkeypatch):
    agent = _agent(name, bf16_model=True, bf16_actor_critic=True)
    reference = _agent(name)
    features = torch.randn(8, agent.model.feature_dim)
    for net, ref in ((agent.model.reward_head, reference.model.reward_head),
                     (agent.actor.net, reference.actor.net),
                     (agent.critic.net, reference.critic.net)):
        out, exact = net(features), ref(features)
        assert out.dtype == torch.float32 and not torch.equal(out, exact)  # ran in bf16
        torch.testing.assert_close(out, exact, rtol=5e-2, atol=5e-2 * exact.abs().max().item())
    seen: list[torch.dtype] = []
    if name == "vrkn":  # every tensor that enters or leaves the Kalman filter is float32
        import estimator.vrkn

        real = estimator.vrkn.kalman_filter

        def spy(init, observations, transition, **kw):
            seen.extend(x.dtype for o in observations for x in (o.mean, o.var))

            def step(t, posterior):
                params = transition(t, posterior)
                seen.extend(x.dtype for x in params)
                return params

            result = real(init, observations, step, **kw)
            seen.extend(x.dtype for x in result.posterior)
            return result

        monkeypatch.setattr(estimator.vrkn, "kalman_filter", spy)
    metrics = _updates(agent)
    if name == "vrkn":
        assert seen and set(seen) == {torch.float32}
    exact = _updates(reference)
    for got, want in zip(metrics, exact, strict=True):
        for key in ("wm/loss", "actor/loss", "value/loss"):
            assert np.isfinite(got[key]), key
        assert got["wm/loss"] == pytest.approx(want["wm/loss"], rel=2e-2)


@pytest.mark.slow
def test_compiled_world_model_and_actor_critic_update_and_keep_the_state_dict():
    """torch.compile of every network, traced by dynamo and AOT autograd (backend aot_eager:
    the C++ code generation of inductor takes minutes on this CPU)."""
    agent = _agent("vrkn", compile_model=True, compile_actor_critic=True,
                   compile_backend="aot_eager")
    plain = _agent("vrkn")
    assert list(agent.state_dict()) == list(plain.state_dict())  # checkpoints unchanged
    assert agent.model.transition._compiled_call_impl is not None
    assert agent.actor.net._compiled_call_impl is not None
    for got, want in zip(_updates(agent), _updates(plain), strict=True):
        for key in ("wm/loss", "actor/loss", "value/loss"):
            assert np.isfinite(got[key]) and got[key] == pytest.approx(want[key], rel=1e-4)


def test_an_unknown_compile_backend_is_refused():
    from tests.training.conftest import debug_config
    from training.config import ConfigError

    with pytest.raises(ConfigError, match=r"perf\.compile_backend"):
        debug_config(**{"perf.compile_model": True, "perf.compile_backend": "nope"})
