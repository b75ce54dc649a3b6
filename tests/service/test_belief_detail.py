"""What a belief carries (``proto.wire.BeliefDetail``) and what the engine runs for it: the
decoders' and the state head's sigma points only for the rows that asked; and the fused
path of a vector message with ``return_belief`` (encoded, recorded and answered in one
filter batch) answering what the synchronous registry answers."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from proto.vrkn.estimator.v1 import estimator_pb2 as pb
from proto.wire import BeliefDetail
from server.engine import BeliefJob, run_inline
from server.errors import InvalidArgument
from server.payloads import Payload
from server.runtime.filter import OnlineFilter
from server.service import EstimatorService, SensorMessageIn
from server.session import Limits, SessionRegistry
from server.settings import Settings
from tests.service.conftest import PERIOD, PROPRIO, STATE_NAMES
from tests.service.test_engine_batching import TOL

LEVELS = (BeliefDetail.LATENT, BeliefDetail.STATE, BeliefDetail.FULL)


def test_the_levels_are_the_proto_enum():
    names = {v.name: v.number for v in pb.DESCRIPTOR.enum_types_by_name["BeliefDetail"].values}
    assert names == {f"BELIEF_DETAIL_{d.name}": int(d) for d in BeliefDetail}
    assert BeliefDetail.of(0) is BeliefDetail.of(None) is BeliefDetail.FULL
    assert [d.state for d in LEVELS] == [False, True, True]
    assert [d.decoded for d in LEVELS] == [False, False, True]
    with pytest.raises(ValueError, match="belief detail 7 is not one of"):
        BeliefDetail.of(7)


class CountingBundle:
    """A bundle that counts the rows through the decoders and the state head."""

    def __init__(self, bundle):
        self._bundle = bundle
        self.decoded_rows = 0
        self.state_rows = 0

    def __getattr__(self, name):
        return getattr(self._bundle, name)

    def decode(self, sensor, z):
        self.decoded_rows += z.shape[0]
        return self._bundle.decode(sensor, z)

    def state_head(self, z):
        self.state_rows += z.shape[0]
        return self._bundle.state_head(z)


def timeline_with_messages(models, model, ticks: int = 3):
    reg = SessionRegistry(models, Limits())
    s = reg.create(start_time=0.0)
    rng = np.random.default_rng(0)
    for k in range(ticks):
        session, _ = reg.prepare_observation(s.id, "proprio", k * PERIOD + 0.01)
        w, var = model.encode("proprio", rng.standard_normal((1, PROPRIO)).astype(np.float32))
        reg.record_observation(session, "proprio", k * PERIOD + 0.01, session.next_seq(), w,
                               var)
    return s.timeline


def test_each_level_runs_only_its_heads(models, model):
    bundle = CountingBundle(model.bundle)
    engine = OnlineFilter(bundle)
    latent = model.manifest.latent_size
    answers = {}
    for detail in LEVELS:
        bundle.decoded_rows = bundle.state_rows = 0
        (est,) = run_inline(engine, [BeliefJob(timeline_with_messages(models, model), 2,
                                               detail)])
        answers[detail] = est
        assert bundle.state_rows == (2 * latent + 1 if detail.state else 0), detail
        assert bundle.decoded_rows == (2 * latent + 1 if detail.decoded else 0), detail
        assert (est.state is not None) == detail.state
        assert set(est.decoded) == ({"proprio"} if detail.decoded else set())
    full = answers[BeliefDetail.FULL]
    for est in answers.values():  # the same belief whatever it carries
        np.testing.assert_array_equal(est.belief.mean, full.belief.mean)
        np.testing.assert_array_equal(est.belief.var, full.belief.var)
        assert est.reward == full.reward
    np.testing.assert_array_equal(answers[BeliefDetail.STATE].state.var, full.state.var)


def test_a_mixed_batch_runs_each_head_on_the_rows_that_asked(models, model):
    bundle = CountingBundle(model.bundle)
    engine = OnlineFilter(bundle)
    latent = model.manifest.latent_size
    jobs = [BeliefJob(timeline_with_messages(models, model), 2, d)
            for d in (BeliefDetail.LATENT, BeliefDetail.FULL, BeliefDetail.STATE,
                      BeliefDetail.LATENT)]
    answers = run_inline(engine, jobs)
    assert bundle.decoded_rows == 2 * latent + 1  # one row asked for FULL
    assert bundle.state_rows == 2 * (2 * latent + 1)  # two rows asked for the state
    (alone,) = run_inline(model.engine, [BeliefJob(timeline_with_messages(models, model), 2)])
    full, state = answers[1], answers[2]
    np.testing.assert_allclose(full.decoded["proprio"].var, alone.decoded["proprio"].var,
                               atol=TOL, rtol=0)
    np.testing.assert_allclose(state.state.mean, alone.state.mean, atol=TOL, rtol=0)
    assert answers[0].state is None and answers[0].decoded == {}


# -- the fused path: message -> belief in one filter batch -----------------------------
def events_of(seed: int, ticks: int):
    """Proprio messages that ask for their belief at a random level (some late, in an
    earlier tick), images in between, reported actions and plain queries."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(ticks):
        t = k * PERIOD
        late = max(0, k - int(rng.integers(0, 3)))
        detail = LEVELS[int(rng.integers(0, 3))]
        out.append(("obs", "proprio", late * PERIOD + 0.011 + 0.001 * rng.random(),
                    rng.standard_normal(PROPRIO).tolist(), detail))
        if rng.random() < 0.4:
            out.append(("obs", "image", t + 0.02,
                        rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), None))
        if rng.random() < 0.4:
            out.append(("report", None, t + 0.04, rng.uniform(-1, 1, 2).tolist(), None))
        out.append(("belief", None, t + 0.012, None, BeliefDetail.STATE))
    return out


def view_of(view, detail):
    assert view.detail is detail, (view.detail, detail)  # the belief says what it carries
    decoded = {k: (v, view.decoded_var[k]) for k, v in view.decoded.items()}
    state = None if view.state is None else (view.state.mean, view.state.var)
    return (view.tick, view.predicted, detail, view.mean, view.var, view.reward, decoded,
            state)


def sync_answers(models, events):
    """The registry, one step at a time: record, then the belief at the message's time."""
    reg = SessionRegistry(models, Limits())
    sid = reg.create(start_time=0.0).id
    out = []
    for kind, sensor, t, value, detail in events:
        if kind == "obs":
            session, _ = reg.prepare_observation(sid, sensor, t)
            x = np.asarray(value, np.float32)[None] if sensor == "proprio" else value[None]
            w, var = session.model.encode(sensor, x)
            ack = reg.record_observation(session, sensor, t, session.next_seq(), w, var)
            if sensor == "proprio":
                (est,) = run_inline(session.model.engine,
                                    [BeliefJob(session.timeline, ack.tick, detail)])
                out.append((ack.tick, ack.applied, view_of(reg.belief_view(session, t, est),
                                                           detail)))
        elif kind == "report":
            reg.report_action(sid, t, value)
        else:
            session, tick = reg.locate_query(sid, t)
            (est,) = run_inline(session.model.engine,
                                [BeliefJob(session.timeline, tick, detail)])
            out.append(view_of(reg.belief_view(session, t, est), detail))
    return out, reg.describe(sid)


def payload(value) -> Payload:
    if isinstance(value, np.ndarray):
        return Payload("raw", value.tobytes(), value.shape, "uint8")
    return Payload("values", values=value)


async def robot(service, events, rng):
    sid = service.create_session(start_time=0.0).id
    out = []
    for kind, sensor, t, value, detail in events:
        for _ in range(int(rng.integers(0, 3))):  # the interleaving with other robots
            await asyncio.sleep(0)
        if kind == "obs":
            asks = sensor == "proprio"
            ack, view = await service.send_message(SensorMessageIn(
                sid, sensor, t, payload(value), asks, detail or BeliefDetail.FULL), "test")
            if asks:
                out.append((ack.tick, ack.applied, view_of(view, detail)))
        elif kind == "report":
            service.report_action(sid, t, value)
        else:
            out.append(view_of(await service.belief(sid, t, detail), detail))
    return out, service.describe_session(sid)


def assert_same(got, want):
    assert type(got) is type(want)
    if isinstance(got, tuple | list):
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert_same(g, w)
    elif isinstance(got, dict):
        assert got.keys() == want.keys()
        for k in got:
            assert_same(got[k], want[k])
    elif isinstance(got, np.ndarray | float):
        np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    else:
        assert got == want


@pytest.mark.parametrize("inline_ms", [0.0, 0.5], ids=["worker", "inline"])
@pytest.mark.parametrize("seed", [0, 1])
def test_fused_messages_answer_what_the_registry_answers(models, seed, inline_ms):
    robots = [events_of(100 * seed + j, 10) for j in range(5)]
    want = [sync_answers(models, ev) for ev in robots]

    async def main():
        service = EstimatorService(models, Settings(inline_ms=inline_ms))
        await service.start()
        try:
            rng = np.random.default_rng(seed)
            got = await asyncio.gather(*(robot(service, ev, np.random.default_rng(
                rng.integers(1 << 30))) for ev in robots))
            return got, service.engines["tiny"], service.batchers["tiny", "proprio"]
        finally:
            await service.stop()

    got, filt, proprio_encoder = asyncio.run(main())
    assert proprio_encoder.items == 0, "a proprio message with its belief took two hops"
    if inline_ms == 0:
        assert filt.items > filt.batches, "nothing was batched together: the test tests nothing"
    for (g, g_info), (w, w_info) in zip(got, want, strict=True):
        assert_same(g, w)
        assert (g_info.replayed_ticks, g_info.accepted, g_info.refused) == \
            (w_info.replayed_ticks, w_info.accepted, w_info.refused)


def test_a_fused_message_refused_when_recorded_leaves_the_session_as_it_was(models):
    async def main():
        # in the worker: the race needs a batch that is computing (inline ones cannot race)
        service = EstimatorService(models, Settings(inline_ms=0))
        await service.start()
        try:
            sid = service.create_session(start_time=0.0).id
            await service.send_message(SensorMessageIn(
                sid, "proprio", 0.01, payload([0.1] * PROPRIO), True), "test")
            session = service.registry.sessions[sid]
            msg = SensorMessageIn(sid, "proprio", 0.06, payload([0.2] * PROPRIO), True,
                                  BeliefDetail.LATENT)
            task = asyncio.create_task(service.send_message(msg, "test"))
            await asyncio.sleep(0)  # queued in the filter batch, planned with the message
            service.reset_session(sid, 0.0)  # the message now belongs to the old time axis
            with pytest.raises(Exception, match="was reset while") as e:
                await task
            info = service.describe_session(sid)
            return e.value.reason, info, session.observing
        finally:
            await service.stop()

    reason, info, observing = asyncio.run(main())
    assert reason == "reset_during_encode" and info.refused == {reason: 1}
    assert info.newest_tick == -1 and not observing


def test_a_fused_message_with_a_non_finite_encoding_is_refused_once(models, monkeypatch):
    async def main():
        service = EstimatorService(models, Settings())
        await service.start()
        try:
            sid = service.create_session(start_time=0.0).id
            bundle = service.models["tiny"].bundle
            real = bundle.encode
            monkeypatch.setattr(bundle, "encode", lambda s, x: tuple(
                np.full_like(a, np.inf) for a in real(s, x)))
            with pytest.raises(InvalidArgument, match="not finite"):
                await service.send_message(SensorMessageIn(
                    sid, "proprio", 0.01, payload([0.1] * PROPRIO), True), "test")
            monkeypatch.setattr(bundle, "encode", real)
            ack, view = await service.send_message(SensorMessageIn(
                sid, "proprio", 0.03, payload([0.1] * PROPRIO), True), "test")
            return service.describe_session(sid), ack, view
        finally:
            await service.stop()

    info, ack, view = asyncio.run(main())
    assert info.refused == {"not_finite": 1} and info.accepted == {"proprio": 1}
    assert ack.tick == 0 and view.tick == 0 and np.isfinite(view.mean).all()
    assert view.state.names == STATE_NAMES


def test_a_message_recorded_while_a_fused_one_computes_is_not_lost(models, model):
    image = np.random.default_rng(3).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    proprio = [np.full(PROPRIO, 0.1, np.float32), np.full(PROPRIO, -0.3, np.float32)]

    def sync():
        reg = SessionRegistry(models, Limits())
        session = reg.create(start_time=0.0)
        for sensor, t, x in (("proprio", 0.01, proprio[0][None]),
                             ("proprio", 0.06, proprio[1][None])):
            reg.record_observation(session, sensor, t, session.next_seq(),
                                   *model.encode(sensor, x))
        without = reg.belief(session.id, 0.06)
        reg.record_observation(session, "image", 0.07, session.next_seq(),
                               *model.encode("image", image))
        return without, reg.belief(session.id, 0.06)

    async def main():
        # in the worker: the race needs a batch that is computing (inline ones cannot race)
        service = EstimatorService(models, Settings(inline_ms=0))
        await service.start()
        try:
            sid = service.create_session(start_time=0.0).id
            await service.send_message(SensorMessageIn(
                sid, "proprio", 0.01, payload(proprio[0].tolist()), True), "test")
            task = asyncio.create_task(service.send_message(SensorMessageIn(
                sid, "proprio", 0.06, payload(proprio[1].tolist()), True), "test"))
            while not service.engines["tiny"].computing:  # planned and computing
                await asyncio.sleep(0)
            session = service.registry.sessions[sid]
            assert session.observing
            # an image of the same tick recorded meanwhile (its encoder batch finished)
            service.registry.record_observation(session, "image", 0.07, session.next_seq(),
                                                *model.encode("image", image))
            _, answered = await task
            return answered, await service.belief(sid, 0.06)
        finally:
            await service.stop()

    answered, after = asyncio.run(main())
    without, with_image = sync()
    np.testing.assert_allclose(answered.mean, without.mean, atol=TOL, rtol=0)  # as planned
    np.testing.assert_allclose(after.mean, with_image.mean, atol=TOL, rtol=0)
    assert not np.allclose(without.mean, with_image.mean, atol=1e-3)


def test_a_fused_message_whose_tick_left_the_window_before_its_batch_is_refused(models, model):
    """Queued behind another batch while a later message moves the newest tick on (and the
    records it would replay from are dropped): refused as too old, the batch's other jobs
    answered."""
    x = np.zeros((1, PROPRIO), np.float32)

    async def main():
        # in the worker: queued behind a running batch (inline ones never queue)
        service = EstimatorService(models, Settings(inline_ms=0))
        await service.start()
        try:
            reg = service.registry
            a, b = (service.create_session(start_time=0.0).id for _ in range(2))
            session = reg.sessions[a]
            for k in range(25):  # ticks 0..24, computed: the window holds ticks 5..24
                reg.record_observation(session, "proprio", k * PERIOD + 0.01,
                                       session.next_seq(), *model.encode("proprio", x))
            await service.belief(a)
            other = asyncio.create_task(service.belief(b))  # the batch that runs
            await asyncio.sleep(0)
            late = asyncio.create_task(service.send_message(SensorMessageIn(
                a, "proprio", 5 * PERIOD + 0.02, payload([0.0] * PROPRIO), True), "test"))
            await asyncio.sleep(0)  # accepted (tick 5) and queued
            reg.record_observation(session, "proprio", 60 * PERIOD + 0.01, session.next_seq(),
                                   *model.encode("proprio", x))  # tick 60: 5..39 leave
            with pytest.raises(Exception, match="older than the newest tick") as e:
                await late
            await other
            ack, view = await service.send_message(SensorMessageIn(
                a, "proprio", 60 * PERIOD + 0.02, payload([0.0] * PROPRIO), True), "test")
            return e.value.reason, service.describe_session(a), ack, view
        finally:
            await service.stop()

    reason, info, ack, view = asyncio.run(main())
    assert reason == "too_old" and info.refused == {"too_old": 1}
    assert ack.tick == view.tick == 60 and np.isfinite(view.mean).all()
