"""The one batched engine: chains of many sessions in lockstep equal one chain at a time,
and the service (queries batched across sessions, in worker threads) answers what the
synchronous registry answers, for any interleaving of the sessions' messages and queries.

Tolerance (the networks see other batch sizes): TOL = 1e-6, absolute; arithmetic without
a network (tick 0: the initial belief and the updates) is compared bit for bit."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from server.engine import BeliefJob, run_inline
from server.payloads import Payload
from server.runtime.filter import Chain, Step, Update
from server.runtime.kalman import Belief
from server.service import EstimatorService, SensorMessageIn
from server.session import Limits, SessionRegistry
from server.settings import Settings
from tests.service.conftest import PERIOD, PROPRIO

TOL = 1e-6


def encoded(model, rng, sensor: str):
    if sensor == "proprio":
        x = rng.standard_normal((1, PROPRIO)).astype(np.float32)
    else:
        x = rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    return model.encode(sensor, x)


def random_chain(model, rng, first: bool) -> Chain:
    """A chain of 0-7 steps with random actions and random sensors present."""
    f = model.engine
    steps = []
    for i in range(int(rng.integers(0, 8))):
        updates = tuple(Update(j, *encoded(model, rng, name))
                        for j, name in enumerate(f.sensor_order) if rng.random() < 0.6)
        action = None if first and i == 0 else \
            rng.uniform(-1, 1, f.manifest.action_size).astype(np.float32)
        steps.append(Step(action, updates))
    prior = None
    if not first:
        w, var = encoded(model, rng, "proprio")
        prior = f.update(f.initial(1), w, var)
    return Chain(prior, tuple(steps))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chains_in_lockstep_equal_one_at_a_time(model, seed):
    rng = np.random.default_rng(seed)
    chains = [random_chain(model, rng, first=bool(rng.random() < 0.4)) for _ in range(9)]
    together = model.engine.run_chains(chains)
    for chain, got in zip(chains, together, strict=True):
        alone = model.engine.run_chains([chain])[0]
        assert len(got) == len(alone) == len(chain.steps)
        for a, b in zip(got, alone, strict=True):
            assert a.mean.shape == (1, model.manifest.latent_size)
            np.testing.assert_allclose(a.mean, b.mean, atol=TOL, rtol=0)
            np.testing.assert_allclose(a.var, b.var, atol=TOL, rtol=0)
        if chain.prior is None and got:  # tick 0: no network, bit for bit
            np.testing.assert_array_equal(got[0].mean, alone[0].mean)
            np.testing.assert_array_equal(got[0].var, alone[0].var)


def test_chain_rules_are_checked(model):
    f = model.engine
    action = np.zeros(f.manifest.action_size, np.float32)
    with pytest.raises(ValueError, match="first tick has an action"):
        f.run_chains([Chain(None, (Step(action),))])
    with pytest.raises(ValueError, match="without an action follows a belief"):
        f.run_chains([Chain(f.initial(1), (Step(None),))])
    with pytest.raises(ValueError, match="chain prior: shape"):
        f.run_chains([Chain(f.initial(2), (Step(action),))])
    with pytest.raises(ValueError, match="update: w"):
        f.update(f.initial(2), np.zeros((1, f.manifest.latent_size), np.float32),
                 np.ones((1, f.manifest.latent_size), np.float32))


def test_update_rows_without_a_reading_keep_the_prior_bit_for_bit(model):
    f = model.engine
    rng = np.random.default_rng(3)
    latent = f.manifest.latent_size
    prior = Belief(rng.standard_normal((4, latent)).astype(np.float32),
                   rng.uniform(0.1, 2, (4, latent)).astype(np.float32))
    w = rng.standard_normal((4, latent)).astype(np.float32)
    var = rng.uniform(0.1, 2, (4, latent)).astype(np.float32)
    valid = np.array([True, False, True, False])
    post = f.update(prior, w, var, valid)
    np.testing.assert_array_equal(post.mean[~valid], prior.mean[~valid])
    np.testing.assert_array_equal(post.var[~valid], prior.var[~valid])
    one = f.update(prior.rows(np.array([2])), w[2:3], var[2:3])
    np.testing.assert_array_equal(post.mean[2:3], one.mean)  # batch size changes no bit


def events_of(seed: int, ticks: int):
    """One robot's events in its own order: messages, reported or policy actions, belief
    queries (some late: a frame of an earlier tick; some ahead of the newest tick)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(ticks):
        t = k * PERIOD
        out.append(("obs", "proprio", t + 0.011, rng.standard_normal(PROPRIO).tolist()))
        if rng.random() < 0.4:
            late = max(0, k - int(rng.integers(0, 4)))
            out.append(("obs", "image", late * PERIOD + 0.02,
                        rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)))
        r = rng.random()
        if r < 0.3:
            out.append(("report", None, t + 0.04, rng.uniform(-1, 1, 2).tolist()))
        elif r < 0.7:
            out.append(("policy", None, t + 0.04, None))
        out.append(("belief", None, t + float(rng.choice([0.012, 0.0, 3 * PERIOD])), None))
    out.append(("belief", None, None, None))
    return out


def payload(value) -> Payload:
    if isinstance(value, np.ndarray):
        return Payload("raw", value.tobytes(), value.shape, "uint8")
    return Payload("values", values=value)


def answer_of(view):
    if hasattr(view, "mean"):
        decoded = {k: (v, view.decoded_var[k]) for k, v in view.decoded.items()}
        return ("belief", view.tick, view.predicted, view.mean, view.var, decoded,
                view.reward, (view.state.mean, view.state.var))
    return ("action", view.tick, view.recorded, view.values)


def sync_answers(models, events) -> list:
    reg = SessionRegistry(models, Limits())
    sid = reg.create(start_time=0.0).id
    out = []
    for kind, sensor, t, value in events:
        if kind == "obs":
            session, _ = reg.prepare_observation(sid, sensor, t)
            x = np.asarray(value, np.float32)[None] if sensor == "proprio" else value[None]
            w, var = session.model.encode(sensor, x)
            reg.record_observation(session, sensor, t, session.next_seq(), w, var)
        elif kind == "report":
            reg.report_action(sid, t, value)
        elif kind == "policy":
            out.append(answer_of(reg.policy_action(sid, t)))
        else:
            out.append(answer_of(reg.belief(sid, t)))
    return out, reg.describe(sid).replayed_ticks


async def robot(service, events, rng) -> list:
    sid = service.create_session(start_time=0.0).id
    out = []
    for kind, sensor, t, value in events:
        for _ in range(int(rng.integers(0, 3))):  # the interleaving with other robots
            await asyncio.sleep(0)
        if kind == "obs":
            await service.send_message(SensorMessageIn(sid, sensor, t, payload(value)), "test")
        elif kind == "report":
            service.report_action(sid, t, value)
        elif kind == "policy":
            out.append(answer_of(await service.policy_action(sid, t)))
        else:
            out.append(answer_of(await service.belief(sid, t)))
    return out, service.describe_session(sid).replayed_ticks


def assert_answers_equal(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g[:3] == w[:3]
        for a, b in zip(g[3:], w[3:], strict=True):
            if isinstance(a, dict):
                assert a.keys() == b.keys()
                for k in a:
                    np.testing.assert_allclose(a[k], b[k], atol=TOL, rtol=0)
            else:
                np.testing.assert_allclose(a, b, atol=TOL, rtol=0)


@pytest.mark.parametrize("inline_ms", [0.0, 0.5], ids=["worker", "inline"])
@pytest.mark.parametrize("seed", [0, 1])
def test_batched_service_equals_the_registry_for_any_interleaving(models, seed, inline_ms):
    """In the worker (batches form while one runs) and with cheap batches on the loop."""
    robots = [events_of(100 * seed + j, 12) for j in range(6)]
    want = [sync_answers(models, ev) for ev in robots]

    async def main():
        service = EstimatorService(models, Settings(inline_ms=inline_ms))
        await service.start()
        try:
            rng = np.random.default_rng(seed)
            got = await asyncio.gather(*(robot(service, ev, np.random.default_rng(
                rng.integers(1 << 30))) for ev in robots))
            filt = service.engines["tiny"]
            return got, filt.items, filt.batches
        finally:
            await service.stop()

    got, items, batches = asyncio.run(main())
    if inline_ms == 0:
        assert items > batches, "no query was batched with another: the test tests nothing"
    for (g, g_replayed), (w, w_replayed) in zip(got, want, strict=True):
        assert_answers_equal(g, w)
        assert g_replayed == w_replayed


def test_a_lone_query_does_not_wait_for_the_adaptive_window(models):
    async def timed(settings: Settings) -> float:
        service = EstimatorService(models, settings)
        await service.start()
        try:
            sid = service.create_session(start_time=0.0).id
            await service.belief(sid)  # warm-up
            start = time.perf_counter()
            await service.belief(sid)
            return time.perf_counter() - start
        finally:
            await service.stop()

    window = dict(engine_window_ms=200.0)
    assert asyncio.run(timed(Settings(**window, batch_window_adaptive=True))) < 0.1
    assert asyncio.run(timed(Settings(**window))) >= 0.19  # a fixed window always waits


def test_registry_inline_and_batched_jobs_share_one_plan_per_timeline(models, model):
    reg = SessionRegistry(models, Limits())
    s = reg.create(start_time=0.0)
    for k in range(5):
        session, _ = reg.prepare_observation(s.id, "proprio", k * PERIOD + 0.01)
        w, var = model.encode("proprio", np.full((1, PROPRIO), k, np.float32))
        reg.record_observation(session, "proprio", k * PERIOD + 0.01, session.next_seq(), w,
                               var)
    tl = s.timeline
    a, b, c = run_inline(model.engine, [BeliefJob(tl, 2), BeliefJob(tl, 4), BeliefJob(tl, 7)])
    assert (a.tick, b.tick, c.tick) == (2, 4, 7) and c.predicted and not b.predicted
    assert tl.valid_upto == 4 and tl.replayed_ticks == 0
    for est in (a, b, c):
        again = reg.belief(s.id, est.tick * PERIOD + 0.01)
        np.testing.assert_array_equal(again.mean, est.belief.mean[0])
