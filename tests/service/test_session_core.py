"""The session core (server.session / server.timeline) without any transport: parity with
the offline runtime filter, arrival order, the history window, future messages, actions,
queries, reset and expiry."""

from __future__ import annotations

import numpy as np
import pytest

from proto.wire import BeliefDetail
from server.errors import InvalidArgument, NotFound, OutOfRange, ResourceExhausted
from server.runtime import OnlineFilter, Reading
from server.session import Limits, SessionRegistry
from tests.service.conftest import PERIOD, STATE_NAMES, random_stream

ATOL = 1e-5


def feed(registry, sid, event):
    kind, name, t, value = event
    if kind == "act":
        return registry.report_action(sid, t, value)
    session, _ = registry.prepare_observation(sid, name, t)
    w, var = session.model.encode(name, value[None])
    return registry.record_observation(session, name, t, session.next_seq(), w, var)


def offline_beliefs(model, events, ticks):
    """The runtime's OnlineFilter over the same messages, tick by tick."""
    f = OnlineFilter(model.bundle)
    by_tick = {}
    actions = {}
    for kind, name, t, value in events:
        k = int(np.floor(t / PERIOD + 1e-9))
        if kind == "act":
            actions[k] = value
        else:
            by_tick.setdefault(k, {})[name] = value
    beliefs, belief = [], None
    action = np.zeros(2, np.float32)
    for k in range(ticks):
        readings = {n: Reading(v[None], np.array([True])) for n, v in by_tick.get(k, {}).items()}
        belief = f.step(belief, None if belief is None else action[None], readings)
        beliefs.append(belief)
        action = actions.get(k, action)
    return beliefs


def registry_for(models, **limits):
    return SessionRegistry(models, Limits(**limits))


def test_beliefs_equal_the_offline_filter(models, model):
    events = random_stream(30, seed=1)
    expected = offline_beliefs(model, events, 30)
    reg = registry_for(models)
    sid = reg.create(start_time=0.0).id
    for event in events:
        feed(reg, sid, event)
        k = int(np.floor(event[2] / PERIOD))
        b = reg.belief(sid, event[2])
        assert b.tick == k and not b.predicted
        if event[0] == "act":  # the tick is complete: its belief is final
            np.testing.assert_allclose(b.mean, expected[k].mean[0], atol=ATOL)
            np.testing.assert_allclose(b.var, expected[k].var[0], atol=ATOL)
    b = reg.belief(sid)
    assert b.tick == 29
    # Decoded sensors and the physical state: the offline runtime's estimates, exactly.
    offline = OnlineFilter(model.bundle)
    decoded = offline.decoded("proprio", expected[29])
    np.testing.assert_allclose(b.decoded["proprio"], decoded.mean[0], atol=ATOL)
    np.testing.assert_allclose(b.decoded_var["proprio"], decoded.var[0], atol=ATOL)
    state = offline.state(expected[29])
    assert b.state.names == STATE_NAMES and b.detail is BeliefDetail.FULL
    np.testing.assert_allclose(b.state.mean, state.mean[0], atol=ATOL)
    np.testing.assert_allclose(b.state.var, state.var[0], atol=ATOL)
    assert (b.state.var > 0).all() and (b.decoded_var["proprio"] > 0).all()
    assert b.reward == pytest.approx(float(model.bundle.reward(expected[29].mean)[0]), abs=ATOL)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shuffled_arrival_inside_the_window_changes_no_belief(models, seed):
    events = random_stream(40, seed=seed)
    rng = np.random.default_rng(100 + seed)
    # Each message arrives up to 0.85 s late (the window is 1 s): arrival order shuffled.
    arrival = np.array([e[2] for e in events]) + rng.uniform(0, 0.85, len(events))
    shuffled = [events[i] for i in np.argsort(arrival)]
    assert shuffled != events
    regs = []
    for order in (events, shuffled):
        reg = registry_for(models)
        sid = reg.create(start_time=0.0).id
        for event in order:
            feed(reg, sid, event)
            reg.belief(sid)  # a controller querying as messages arrive forces replays
        regs.append((reg, sid))
    (a, sa), (b, sb) = regs
    assert a.describe(sa).refused == {} and b.describe(sb).refused == {}
    assert b.describe(sb).replayed_ticks > 0
    for k in range(40 - 20, 40):  # every tick still in the window
        t = k * PERIOD + 0.001
        np.testing.assert_allclose(a.belief(sa, t).mean, b.belief(sb, t).mean, atol=ATOL)
        np.testing.assert_allclose(a.belief(sa, t).var, b.belief(sb, t).var, atol=ATOL)


def test_message_older_than_the_window_is_refused_and_counted(models, model):
    reg = registry_for(models, history_window_s=0.5)
    sid = reg.create(start_time=0.0).id
    for event in random_stream(20):
        feed(reg, sid, event)
    before = reg.belief(sid)
    late = ("obs", "proprio", 0.3, np.ones(3, np.float32))  # tick 6, newest 19, window 10
    with pytest.raises(OutOfRange, match="older than the newest tick") as e:
        feed(reg, sid, late)
    assert e.value.reason == "too_old"
    inside = 19 * PERIOD - 0.45 + 1e-6  # tick 10: the oldest still accepted
    assert reg.sessions[sid].timeline.locate(inside) == 10
    after = reg.belief(sid)
    np.testing.assert_array_equal(before.mean, after.mean)
    assert reg.describe(sid).refused == {"too_old": 1}


def test_tick_boundaries_and_start_rules(models):
    reg = registry_for(models)
    s = reg.create(start_time=10.0)
    tl = s.timeline
    assert [tl.tick_of(10.0 + k * PERIOD) for k in range(50)] == list(range(50))
    assert tl.tick_of(10.0 + PERIOD - 1e-6) == 0
    with pytest.raises(OutOfRange, match="before the session's start") as e:
        reg.prepare_observation(s.id, "proprio", 9.99)
    assert e.value.reason == "before_start"
    with pytest.raises(OutOfRange, match="beyond the newest tick") as e:
        reg.prepare_observation(s.id, "proprio", 10.0 + 60.0)
    assert e.value.reason == "too_far_ahead"
    # Without a start time, the first message starts the clock.
    s2 = reg.create()
    feed(reg, s2.id, ("obs", "proprio", 123.456, np.zeros(3, np.float32)))
    assert s2.timeline.t0 == 123.456 and s2.timeline.head == 0


def test_latest_message_per_sensor_and_tick_wins(models, model):
    reg = registry_for(models)
    x_old, x_new = np.zeros(3, np.float32), np.ones(3, np.float32)
    results = []
    for order in ((0.01, 0.02), (0.02, 0.01)):
        sid = reg.create(start_time=0.0).id
        for t in order:
            ack = feed(reg, sid, ("obs", "proprio", t, x_new if t == 0.02 else x_old))
        assert ack.applied == (order[-1] == 0.02)
        results.append(reg.belief(sid).mean)
    ref = reg.create(start_time=0.0).id
    feed(reg, ref, ("obs", "proprio", 0.02, x_new))
    for r in results:
        np.testing.assert_array_equal(r, reg.belief(ref).mean)
    # Equal timestamps: the later arrival wins.
    sid = reg.create(start_time=0.0).id
    feed(reg, sid, ("obs", "proprio", 0.02, x_old))
    assert feed(reg, sid, ("obs", "proprio", 0.02, x_new)).applied
    np.testing.assert_array_equal(reg.belief(sid).mean, reg.belief(ref).mean)
    assert reg.describe(sid).superseded == 0 and reg.describe(sid).accepted == {"proprio": 2}


def test_future_message_is_held_until_its_tick(models, model):
    reg = registry_for(models)
    sid = reg.create(start_time=0.0).id
    feed(reg, sid, ("obs", "proprio", 0.01, np.zeros(3, np.float32)))
    feed(reg, sid, ("act", "action", 0.02, np.array([0.5, -0.5], np.float32)))
    ahead = reg.belief(sid, 5 * PERIOD)  # predicted, nothing changes
    assert ahead.predicted and ahead.newest_tick == 0
    feed(reg, sid, ("obs", "proprio", 5 * PERIOD + 0.01, np.ones(3, np.float32)))
    assert reg.describe(sid).newest_tick == 5
    # Ticks 1..4 are predicted with the held action: the future message is not in them.
    for k in range(1, 5):
        b = reg.belief(sid, k * PERIOD)
        assert not b.predicted and b.tick == k
    np.testing.assert_allclose(reg.belief(sid, 4 * PERIOD).mean,
                               reg.belief(sid, 4 * PERIOD).mean)
    f = OnlineFilter(model.bundle)
    b = f.step(None, None, {"proprio": Reading(np.zeros((1, 3), np.float32), np.array([True]))})
    for _ in range(4):
        b = f.step(b, np.array([[0.5, -0.5]], np.float32), {})
    np.testing.assert_allclose(reg.belief(sid, 4 * PERIOD).mean, b.mean[0], atol=ATOL)
    np.testing.assert_allclose(ahead.mean, f.step(b, np.array([[0.5, -0.5]], np.float32),
                                                  {}).mean[0], atol=ATOL)


def test_belief_query_changes_nothing(models):
    reg = registry_for(models)
    sid = reg.create(start_time=0.0).id
    for event in random_stream(5):
        feed(reg, sid, event)
    info = reg.describe(sid)
    a = reg.belief(sid, 2.0)
    b = reg.belief(sid, 2.0)
    np.testing.assert_array_equal(a.mean, b.mean)
    assert a.predicted and a.tick == 40 and a.newest_tick == 4
    assert reg.describe(sid).newest_tick == info.newest_tick
    with pytest.raises(OutOfRange):
        reg.belief(sid, -1.0)


def test_policy_action_recorded_unless_reported(models, model):
    reg = registry_for(models)
    sid = reg.create(start_time=0.0).id
    feed(reg, sid, ("obs", "proprio", 0.01, np.ones(3, np.float32)))
    act = reg.policy_action(sid, 0.03)
    assert act.source == "policy" and act.recorded and act.tick == 0
    assert np.all(np.abs(act.values) <= 1)
    mean = reg.belief(sid, 0.03).mean[None]
    np.testing.assert_allclose(act.values, model.engine.act(mean)[0])
    tl = reg.sessions[sid].timeline
    np.testing.assert_array_equal(tl.records[0].action.value, act.values)
    # The controller's own action replaces the policy's, and a later policy action for the
    # same tick does not replace the reported one.
    reported = reg.report_action(sid, 0.035, [0.25, 0.75])
    assert reported.recorded
    again = reg.policy_action(sid, 0.04)
    assert not again.recorded
    np.testing.assert_allclose(tl.records[0].action.value, [0.25, 0.75])
    feed(reg, sid, ("obs", "proprio", PERIOD + 0.01, np.ones(3, np.float32)))
    ref = reg.create(start_time=0.0).id
    feed(reg, ref, ("obs", "proprio", 0.01, np.ones(3, np.float32)))
    reg.report_action(ref, 0.01, [0.25, 0.75])
    feed(reg, ref, ("obs", "proprio", PERIOD + 0.01, np.ones(3, np.float32)))
    np.testing.assert_array_equal(reg.belief(sid).mean, reg.belief(ref).mean)


@pytest.mark.parametrize("values, reason", [([0.1], "bad_shape"), ([np.nan, 0.0], "not_finite"),
                                            ([2.0, 0.0], "bad_action"), (["x", 1], "bad_action")])
def test_bad_actions_are_refused(models, values, reason):
    reg = registry_for(models)
    sid = reg.create(start_time=0.0).id
    with pytest.raises(InvalidArgument) as e:
        reg.report_action(sid, 0.0, values)
    assert e.value.reason == reason
    assert reg.describe(sid).newest_tick == -1 and reg.describe(sid).actions == 0


def test_reset_returns_to_the_initial_belief(models, model):
    reg = registry_for(models)
    s = reg.create(start_time=0.0)
    for event in random_stream(5):
        feed(reg, s.id, event)
    reg.reset(s.id, start_time=100.0)
    b = reg.belief(s.id)
    np.testing.assert_array_equal(b.mean, model.manifest.initial_mean)
    np.testing.assert_array_equal(b.var, model.manifest.initial_var)
    assert reg.describe(s.id).newest_tick == -1 and reg.describe(s.id).start_time == 100.0


def test_idle_sessions_expire_and_unknown_ids_are_not_found(models):
    now = [0.0]
    reg = SessionRegistry(models, Limits(idle_timeout_s=10), clock=lambda: now[0])
    a, b = reg.create(), reg.create()
    now[0] = 6.0
    reg.describe(a.id)  # activity
    now[0] = 12.0
    assert reg.expire_idle() == [b.id]
    with pytest.raises(NotFound, match="unknown session"):
        reg.belief(b.id)
    with pytest.raises(NotFound, match="unknown sensor 'lidar'"):
        reg.prepare_observation(a.id, "lidar", 0.0)
    with pytest.raises(NotFound, match="unknown model"):
        reg.create(model="nope")


def test_session_limit(models):
    reg = registry_for(models, max_sessions=2)
    reg.create()
    reg.create()
    with pytest.raises(ResourceExhausted, match="limit of 2 sessions"):
        reg.create()


def test_refused_queries_and_resets_are_counted_per_session(models):
    reg = registry_for(models, history_window_s=0.2)
    sid = reg.create(start_time=0.0).id
    for event in random_stream(10):
        feed(reg, sid, event)
    for query in (lambda: reg.belief(sid, 0.0), lambda: reg.policy_action(sid, -1.0),
                  lambda: reg.belief(sid, 1e307), lambda: reg.policy_action(sid, 100.0)):
        with pytest.raises(OutOfRange):
            query()
    with pytest.raises(InvalidArgument, match="start_time"):
        reg.reset(sid, start_time=-1.79e308)
    assert reg.describe(sid).refused == {"too_old": 1, "before_start": 1, "bad_timestamp": 1,
                                         "too_far_ahead": 1, "bad_start_time": 1}
    assert reg.describe(sid).newest_tick == 9  # nothing changed


def test_a_reset_while_an_image_is_encoded_drops_the_frame(models, model):
    import asyncio

    from server.errors import Aborted
    from server.payloads import Payload
    from server.service import EstimatorService, SensorMessageIn
    from server.settings import Settings

    async def main():
        # A 100 ms batching window holds the image in the encoder queue.
        service = EstimatorService(models, Settings(batch_window_ms=100))
        await service.start()
        try:
            sid = service.create_session(start_time=0.0).id
            for k in range(10):
                await service.send_message(SensorMessageIn(sid, "proprio", k * PERIOD + 0.01,
                                                           Payload("values", values=[k] * 3)),
                                           "test")
            img = np.zeros((64, 64, 3), np.uint8)
            encoding = asyncio.ensure_future(service.send_message(SensorMessageIn(
                sid, "image", 9 * PERIOD + 0.02, Payload("raw", img.tobytes(), (64, 64, 3),
                                                         "uint8")), "test"))
            await asyncio.sleep(0.02)
            service.reset_session(sid, start_time=0.0)  # the same t0: tick 9 exists again
            with pytest.raises(Aborted, match="was reset while"):
                await encoding
            info = service.describe_session(sid)
            assert info.newest_tick == -1, "the old frame landed on the new time axis"
            assert info.refused == {"reset_during_encode": 1}
            assert info.accepted == {"proprio": 10}
            np.testing.assert_array_equal((await service.belief(sid)).mean,
                                          model.manifest.initial_mean)
            assert b'vrkn_refused_total{reason="reset_during_encode"} 1.0' in \
                service.metrics.render()
        finally:
            await service.stop()

    asyncio.run(main())
