"""Exact replay with minimal work: an action invalidates only the ticks after it, every
tick is computed once when nothing arrives late, ``replayed_ticks`` counts only the
recomputation of beliefs already computed, a plan commits only what did not change while
it was computed, records stay bounded without queries, and the timeline saves and
restores itself.

Tolerance: TOL = 1e-6 (absolute) where beliefs from different computations meet."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from server.runtime.kalman import Belief
from server.session import Limits, SessionRegistry
from server.timeline import ActionEntry, Layout, Observation, Timeline
from tests.service.conftest import PERIOD, PROPRIO

TOL = 1e-6


def observe(reg, sid, sensor, t, rng):
    session, _ = reg.prepare_observation(sid, sensor, t)
    x = (rng.standard_normal((1, PROPRIO)).astype(np.float32) if sensor == "proprio" else
         rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8))
    w, var = session.model.encode(sensor, x)
    return reg.record_observation(session, sensor, t, session.next_seq(), w, var)


@pytest.fixture
def counted(model, monkeypatch):
    """The number of rows the transition network predicted (one per computed tick)."""
    rows = [0]
    original = model.bundle.transition

    def transition(mean, action):
        rows[0] += mean.shape[0]
        return original(mean, action)

    monkeypatch.setattr(model.bundle, "transition", transition)
    return rows


@pytest.mark.parametrize("source", ["policy", "reported"])
def test_a_control_loop_computes_every_tick_once(models, counted, source):
    """Per tick: proprio -> belief, then the action for the tick (the robot-sim's loop)."""
    reg = SessionRegistry(models, Limits())
    sid = reg.create(start_time=0.0).id
    rng = np.random.default_rng(0)
    ticks = 30
    for k in range(ticks):
        observe(reg, sid, "proprio", k * PERIOD + 0.01, rng)
        reg.belief(sid, k * PERIOD + 0.01)
        if source == "policy":
            reg.policy_action(sid, k * PERIOD + 0.02)
        else:
            reg.report_action(sid, k * PERIOD + 0.02, rng.uniform(-1, 1, 2))
    reg.belief(sid)
    assert reg.describe(sid).replayed_ticks == 0
    assert counted[0] == ticks - 1  # tick 0 predicts nothing; each later tick once


def test_late_data_replays_exactly_the_ticks_it_changes(models, counted):
    reg = SessionRegistry(models, Limits())
    sid = reg.create(start_time=0.0).id
    rng = np.random.default_rng(1)
    for k in range(10):
        observe(reg, sid, "proprio", k * PERIOD + 0.01, rng)
        reg.belief(sid)
        reg.policy_action(sid, k * PERIOD + 0.02)
    before = counted[0]
    observe(reg, sid, "image", 5 * PERIOD + 0.03, rng)  # a late frame of tick 5
    observe(reg, sid, "image", 7 * PERIOD + 0.03, rng)  # and of tick 7: one replay for both
    reg.belief(sid)
    assert reg.describe(sid).replayed_ticks == 5  # ticks 5..9, once
    assert counted[0] - before == 5


def test_an_action_replaces_another_only_the_later_ticks_replay(models):
    reg = SessionRegistry(models, Limits())
    sid = reg.create(start_time=0.0).id
    rng = np.random.default_rng(2)
    for k in range(4):
        observe(reg, sid, "proprio", k * PERIOD + 0.01, rng)
        reg.policy_action(sid, k * PERIOD + 0.02)
    tick2 = reg.belief(sid, 2 * PERIOD).mean
    reg.belief(sid)
    assert reg.describe(sid).replayed_ticks == 0
    reg.report_action(sid, 2 * PERIOD + 0.03, [0.5, -0.5])  # replaces tick 2's policy action
    np.testing.assert_array_equal(reg.belief(sid, 2 * PERIOD).mean, tick2)  # unchanged
    reg.belief(sid)
    assert reg.describe(sid).replayed_ticks == 1  # tick 3 only
    # The same action again changes nothing: nothing is replayed.
    reg.report_action(sid, 2 * PERIOD + 0.04, [0.5, -0.5])
    reg.belief(sid)
    assert reg.describe(sid).replayed_ticks == 1


def test_a_future_action_beyond_the_computed_ticks_replays_nothing(models):
    reg = SessionRegistry(models, Limits())
    sid = reg.create(start_time=0.0).id
    rng = np.random.default_rng(3)
    observe(reg, sid, "proprio", 0.01, rng)
    reg.belief(sid, 3 * PERIOD)  # a prediction ahead: nothing beyond tick 0 is stored
    reg.report_action(sid, 3 * PERIOD, [0.1, 0.2])
    reg.belief(sid)
    assert reg.describe(sid).replayed_ticks == 0


def test_a_plan_commits_only_what_did_not_change_while_it_ran(model):
    m = model.manifest
    tl = Timeline(Layout.of(m), PERIOD, window_ticks=20, max_gap_ticks=100, t0=0.0)
    for k in range(6):
        tl.insert_observation("proprio", Observation(k * PERIOD + 0.01, k,
                                                     *model.encode("proprio", np.full(
                                                         (1, PROPRIO), k, np.float32))))
    replay = tl.plan([5])
    results = model.engine.run_chains([replay.chain])[0]
    # Meanwhile: a late message at tick 3, an action at tick 1.
    tl.insert_observation("proprio", Observation(3 * PERIOD + 0.02, 10,
                                                 *model.encode("proprio", np.ones(
                                                     (1, PROPRIO), np.float32))))
    tl.commit(replay, results)
    assert tl.valid_upto == 2  # ticks 0-2 stand; 3 changed
    replay = tl.plan([5])
    assert replay.start == 3
    results = model.engine.run_chains([replay.chain])[0]
    tl.record_action(ActionEntry(1 * PERIOD + 0.03, 11, np.float32([0.3, 0.3]), "reported"))
    assert tl.valid_upto == 1  # tick 1's belief stands, what follows it does not
    tl.commit(replay, results)  # planned from tick 2's belief, which is stale now
    assert tl.valid_upto == 1
    # Then every belief equals a timeline built at once.
    ref = Timeline(Layout.of(m), PERIOD, window_ticks=20, max_gap_ticks=100, t0=0.0)
    for k in range(6):
        ref.insert_observation("proprio", tl.records[k].observations["proprio"])
    ref.record_action(tl.records[1].action)
    for tline in (tl, ref):
        r = tline.plan([5])
        tline.commit(r, model.engine.run_chains([r.chain])[0])
    for k in range(6):
        np.testing.assert_allclose(tl.records[k].belief.mean, ref.records[k].belief.mean,
                                   atol=TOL, rtol=0)
    assert tl.replayed_ticks == 1  # tick 2 was committed, then recomputed; 3-5 never were


def test_an_action_while_computing_keeps_its_own_tick(model):
    m = model.manifest
    tl = Timeline(Layout.of(m), PERIOD, window_ticks=20, max_gap_ticks=100, t0=0.0)
    for k in range(4):
        tl.insert_observation("proprio", Observation(
            k * PERIOD, k, *model.encode("proprio", np.full((1, PROPRIO), k, np.float32))))
    replay = tl.plan([3])
    results = model.engine.run_chains([replay.chain])[0]
    tl.record_action(ActionEntry(2 * PERIOD + 0.01, 9, np.float32([0.7, -0.7]), "reported"))
    tl.commit(replay, results)
    assert tl.valid_upto == 2  # tick 2 (and its applied action) committed, tick 3 not
    np.testing.assert_array_equal(tl.records[2].applied, np.float32([0.7, -0.7]))


def test_records_stay_bounded_without_queries(models, model):
    reg = SessionRegistry(models, Limits(history_window_s=0.25))
    s = reg.create(start_time=0.0)
    rng = np.random.default_rng(4)
    window = s.timeline.window_ticks
    for k in range(120):
        observe(reg, s.id, "proprio", k * PERIOD + 0.01, rng)
        assert len(s.timeline.records) <= 2 * window + 2
    assert s.timeline.valid_upto >= 120 - 2 * window - 1


def test_timeline_state_round_trips_and_is_checked(models, model):
    reg = SessionRegistry(models, Limits(history_window_s=0.2))
    s = reg.create(start_time=0.0)
    rng = np.random.default_rng(5)
    for k in range(12):
        observe(reg, s.id, "proprio", k * PERIOD + 0.01, rng)
        reg.report_action(s.id, k * PERIOD + 0.02, rng.uniform(-1, 1, 2))
        if k % 3 == 0:
            reg.belief(s.id)
    layout = Layout.of(model.manifest)
    state = s.timeline.to_state()
    again = Timeline.from_state(layout, state)
    copy = again.to_state()
    scalars = ("t0", "period", "window_ticks", "max_gap_ticks", "head", "valid_upto",
               "computed_upto", "replayed_ticks")
    assert [getattr(copy, f) for f in scalars] == [getattr(state, f) for f in scalars]
    assert [r.tick for r in copy.records] == [r.tick for r in state.records]
    for a, b in zip(copy.records, state.records, strict=True):
        assert (a.belief is None) == (b.belief is None) and a.observations.keys() == \
            b.observations.keys()
        if a.belief is not None:
            np.testing.assert_array_equal(a.belief.mean, b.belief.mean)
            np.testing.assert_array_equal(a.applied, b.applied)
    for k in (again.head - 1, again.head):
        r1 = again.plan([k])
        r2 = s.timeline.plan([k])
        b1 = r1.belief(k, model.engine.run_chains([r1.chain])[0])
        b2 = r2.belief(k, model.engine.run_chains([r2.chain])[0])
        np.testing.assert_array_equal(b1.mean, b2.mean)
    missing = replace(state, records=state.records[:-1])
    with pytest.raises(ValueError, match="incomplete"):
        Timeline.from_state(layout, missing)
    bad = state.records[-1]
    wrong = replace(bad, belief=Belief(np.zeros((1, 3), np.float32),
                                       np.ones((1, 3), np.float32)))
    with pytest.raises(ValueError, match="belief mean has shape"):
        Timeline.from_state(layout, replace(state, records=(*state.records[:-1], wrong)))
    with pytest.raises(ValueError, match="beyond the newest tick"):
        Timeline.from_state(layout, replace(state, valid_upto=state.head + 1))


def test_the_service_settles_unqueried_sessions_in_its_batches(models):
    import asyncio

    from server.payloads import Payload
    from server.service import EstimatorService, SensorMessageIn
    from server.settings import Settings

    async def main():
        service = EstimatorService(models, Settings(history_window_s=0.25))
        await service.start()
        try:
            sid = service.create_session(start_time=0.0).id
            tl = service.registry.sessions[sid].timeline
            sizes = []
            for k in range(120):
                await service.send_message(SensorMessageIn(
                    sid, "proprio", k * PERIOD + 0.01, Payload("values", values=[k] * 3)),
                    "test")
                sizes.append(len(tl.records))
                await asyncio.sleep(0.001)  # a robot sends every 20 ms; 1 ms here
            for _ in range(100):  # the last settle job, if one is still running
                if not service._settling:
                    break
                await asyncio.sleep(0.01)
            return sizes, len(tl.records), tl.window_ticks, service.engines["tiny"].items
        finally:
            await service.stop()

    sizes, final, window, jobs = asyncio.run(main())
    assert jobs > 0 and final <= 2 * window + 2, (final, window, sizes)
    assert max(sizes) < 60  # settled along the way (a settle job runs while messages come)
