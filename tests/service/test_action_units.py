"""Action units: the transition network and the actor work in [-1, 1]; a robot's actions
(reported, and the policy's answer) are in the bundle's units. One conversion
(``server.runtime.actions``), at the robot boundary: the service, the robot-sim's
in-process reference and the evaluation estimator. And the actor's features: the manifest
says "mean", the runtime acts on the belief mean and refuses anything else."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from server.runtime import BundleError, OnlineFilter, Reading, load_bundle
from server.runtime.actions import from_unit, to_unit
from server.session import Limits, SessionRegistry
from tests.service.conftest import PERIOD, PROPRIO, export_tiny_bundle

LOW, HIGH = (-2.0, 0.0), (2.0, 10.0)


@pytest.fixture(scope="module")
def bounded_dir(tmp_path_factory):
    return export_tiny_bundle(tmp_path_factory.mktemp("units") / "bounded",
                              action_bounds=(LOW, HIGH))


@pytest.fixture(scope="module")
def bounded_models(bounded_dir):
    from server.models import load_models

    return load_models([f"bounded={bounded_dir}"], providers="cpu", threads=1)


@pytest.fixture(scope="module")
def bounded(bounded_models):
    return bounded_models["bounded"]


def proprio(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(PROPRIO).astype(np.float32)


def observe(reg, sid, t, value):
    session, _ = reg.prepare_observation(sid, "proprio", t)
    w, var = session.model.encode("proprio", value[None])
    return reg.record_observation(session, "proprio", t, session.next_seq(), w, var)


def reading(value):
    return {"proprio": Reading(value[None], np.array([True]))}


# -- the conversion ---------------------------------------------------------------------
def test_conversion_maps_bounds_to_unit_and_back():
    a = np.array([[-2.0, 0.0], [2.0, 10.0], [1.0, 7.5]], np.float32)
    u = to_unit(a, LOW, HIGH)
    np.testing.assert_allclose(u, [[-1, -1], [1, 1], [0.5, 0.5]], atol=1e-7)
    np.testing.assert_allclose(from_unit(u, LOW, HIGH), a, atol=1e-6)
    # [-1, 1] bounds: the identity, bit for bit.
    x = np.random.default_rng(0).uniform(-1, 1, (50, 2)).astype(np.float32)
    np.testing.assert_array_equal(to_unit(x, (-1.0, -1.0), (1.0, 1.0)), x)
    np.testing.assert_array_equal(from_unit(x, (-1.0, -1.0), (1.0, 1.0)), x)


@pytest.mark.parametrize("fn", [to_unit, from_unit])
def test_conversion_refuses_bad_values(fn):
    with pytest.raises(ValueError, match="NaN or infinite"):
        fn(np.array([np.nan, 0.0]), LOW, HIGH)
    with pytest.raises(ValueError, match="NaN or infinite"):
        fn(np.array([np.inf, 0.0]), LOW, HIGH)
    with pytest.raises(ValueError, match="action size 2"):
        fn(np.zeros(3), LOW, HIGH)
    with pytest.raises(ValueError, match="finite"):
        fn(np.zeros(2), (-np.inf, 0.0), (np.inf, 1.0))
    with pytest.raises(ValueError, match="low < high"):
        fn(np.zeros(2), (1.0, 0.0), (1.0, 1.0))


# -- the service ------------------------------------------------------------------------
def test_reported_action_is_predicted_in_unit(bounded_models, bounded):
    """The belief after a reported action (bundle units) equals the offline filter fed the
    unit action, and not the one fed the raw bundle-unit values."""
    reg = SessionRegistry(bounded_models, Limits())
    sid = reg.create(start_time=0.0).id
    p0, p1 = proprio(0), proprio(1)
    observe(reg, sid, 0.01, p0)
    view = reg.report_action(sid, 0.02, [1.0, 7.5])
    np.testing.assert_array_equal(view.values, np.float32([1.0, 7.5]))  # as reported
    observe(reg, sid, PERIOD + 0.01, p1)
    got = reg.belief(sid, PERIOD + 0.01)

    f = OnlineFilter(bounded.bundle)
    b0 = f.step(None, None, reading(p0))
    want = f.step(b0, np.float32([[0.5, 0.5]]), reading(p1))
    np.testing.assert_allclose(got.mean, want.mean[0], atol=1e-6, rtol=0)
    np.testing.assert_allclose(got.var, want.var[0], atol=1e-6, rtol=0)
    raw = f.step(b0, np.float32([[1.0, 7.5]]), reading(p1))
    assert np.abs(raw.mean[0] - got.mean).max() > 1e-4  # the bundle units would differ


def test_held_default_action_is_the_middle_of_the_bounds(bounded_models, bounded):
    reg = SessionRegistry(bounded_models, Limits())
    sid = reg.create(start_time=0.0).id
    observe(reg, sid, 0.01, proprio(0))
    got = reg.belief(sid, PERIOD + 0.01)  # predicted with the held action
    f = OnlineFilter(bounded.bundle)
    want = f.predict(f.step(None, None, reading(proprio(0))), np.zeros((1, 2), np.float32))
    np.testing.assert_allclose(got.mean, want.mean[0], atol=1e-6, rtol=0)
    # The middle of the bounds in bundle units is unit 0.
    np.testing.assert_array_equal(bounded.engine.to_unit(np.float32([0.0, 5.0])), [0.0, 0.0])


def test_policy_action_is_from_unit_of_the_mode(bounded_models, bounded):
    reg = SessionRegistry(bounded_models, Limits())
    sid = reg.create(start_time=0.0).id
    p0 = proprio(2)
    observe(reg, sid, 0.01, p0)
    act = reg.policy_action(sid, 0.02)
    f = OnlineFilter(bounded.bundle)
    b0 = f.step(None, None, reading(p0))
    mode = f.act(f.features(b0))  # unit, the actor's mode on the belief mean
    assert np.all(np.abs(mode) <= 1)
    np.testing.assert_allclose(act.values, from_unit(mode, LOW, HIGH)[0], atol=1e-6, rtol=0)
    assert np.all(act.values >= np.float32(LOW)) and np.all(act.values <= np.float32(HIGH))
    tl = reg.sessions[sid].timeline
    np.testing.assert_allclose(tl.records[0].action.value, mode[0], atol=1e-6, rtol=0)
    # The next tick is predicted with the unit mode.
    got = reg.belief(sid, PERIOD + 0.01)
    want = f.predict(b0, mode)
    np.testing.assert_allclose(got.mean, want.mean[0], atol=1e-6, rtol=0)


def test_unit_bounds_policy_action_is_the_mode_exactly(models, model):
    """A [-1, 1] bundle: the policy's action is the actor's mode, bit for bit, and a
    reported action is recorded as given."""
    reg = SessionRegistry(models, Limits())
    sid = reg.create(start_time=0.0).id
    observe(reg, sid, 0.01, proprio(3))
    act = reg.policy_action(sid, 0.02)
    mean = reg.belief(sid, 0.02).mean[None]
    np.testing.assert_array_equal(act.values, model.engine.act(mean)[0])
    reported = reg.report_action(sid, PERIOD + 0.02, [0.25, -0.75])
    rec = reg.sessions[sid].timeline.records[reported.tick]
    np.testing.assert_array_equal(rec.action.value, np.float32([0.25, -0.75]))


def test_out_of_bounds_report_is_refused_in_bundle_units(bounded_models):
    from server.errors import InvalidArgument

    reg = SessionRegistry(bounded_models, Limits())
    sid = reg.create(start_time=0.0).id
    reg.report_action(sid, 0.01, [-2.0, 10.0])  # the bounds themselves
    with pytest.raises(InvalidArgument, match="outside the bounds"):
        reg.report_action(sid, 0.02, [0.0, -0.5])  # within [-1, 1] but below low[1] = 0


def test_snapshot_keeps_unit_actions_and_converts_v1(bounded_models, bounded, tmp_path):
    from server import snapshot

    reg = SessionRegistry(bounded_models, Limits())
    sid = reg.create(start_time=0.0).id
    observe(reg, sid, 0.01, proprio(4))
    reg.report_action(sid, 0.02, [1.0, 7.5])
    data = snapshot.capture(reg)
    assert data["version"] == snapshot.VERSION == 2
    path = tmp_path / "s.json"
    snapshot.write(data, path)
    again = SessionRegistry(bounded_models, Limits())
    assert snapshot.restore(again, path).ok
    rec = again.sessions[sid].timeline.records[0]
    np.testing.assert_allclose(rec.action.value, [0.5, 0.5], atol=1e-7)

    # A v1 snapshot held the bundle's units: restored as unit.
    v1 = {**data, "version": 1}
    rec = v1["sessions"][0]["timeline"]["records"][0]
    rec["action"]["value"] = snapshot._arr(np.float32([1.0, 7.5]))
    rec["applied"] = snapshot._arr(np.float32([1.0, 7.5]))
    snapshot.write(v1, path)
    restored = SessionRegistry(bounded_models, Limits())
    assert snapshot.restore(restored, path).ok
    rec = restored.sessions[sid].timeline.records[0]
    np.testing.assert_allclose(rec.action.value, [0.5, 0.5], atol=1e-7)
    np.testing.assert_allclose(rec.applied, [0.5, 0.5], atol=1e-7)


# -- the robot-sim's in-process reference and the evaluation estimator ------------------
def test_in_process_backend_matches_the_service(bounded_models, bounded):
    from clients.robot_sim.backends import InProcessBackend

    backend = InProcessBackend(bounded.bundle)
    backend.start(0.0)
    reg = SessionRegistry(bounded_models, Limits())
    sid = reg.create(start_time=0.0).id
    for k in range(6):
        t = k * PERIOD
        p = proprio(10 + k)
        mine = backend.send("proprio", t + 0.01, p, return_belief=True)
        observe(reg, sid, t + 0.01, p)
        np.testing.assert_allclose(mine.mean, reg.belief(sid, t + 0.01).mean, atol=1e-5,
                                   rtol=0)
        a = backend.action(t + 0.02)
        served = reg.policy_action(sid, t + 0.02)
        np.testing.assert_allclose(a, served.values, atol=1e-5, rtol=0)
        assert np.all(a >= np.float32(LOW)) and np.all(a <= np.float32(HIGH))
        np.testing.assert_allclose(backend.actions[k], bounded.engine.to_unit(a), atol=1e-5)


def test_bundle_estimator_acts_and_predicts_in_unit(bounded_dir):
    from training.evaluation import BundleEstimator

    bundle = load_bundle(bounded_dir)
    est = BundleEstimator(bundle)
    p0, p1 = proprio(20), proprio(21)
    est.observe({"proprio": p0, "is_first": True})
    a = est.act()
    f = OnlineFilter(bundle)
    b0 = f.step(None, None, reading(p0))
    np.testing.assert_allclose(a, f.act(f.features(b0))[0], atol=1e-6, rtol=0)
    assert np.all(np.abs(a) <= 1)  # the task's (training's) unit actions
    est.observe({"proprio": p1, "is_first": False})
    want = f.step(b0, a[None], reading(p1))
    np.testing.assert_allclose(est.belief.mean, want.mean, atol=1e-6, rtol=0)


# -- actor features -----------------------------------------------------------------------
def test_manifest_says_mean_and_the_policy_acts_on_the_mean(bounded_dir, bounded):
    manifest = json.loads((bounded_dir / "manifest.json").read_text())
    assert manifest["actor_features"] == "mean" == bounded.manifest.actor_features
    f = OnlineFilter(bounded.bundle)
    belief = f.step(None, None, reading(proprio(5)))
    np.testing.assert_array_equal(f.features(belief), belief.mean)


def test_older_bundles_saying_sample_still_load_and_act_on_the_mean(bounded_dir, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(bounded_dir, copy)
    path = copy / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["actor_features"] = "sample"  # what exports before format 1.1 wrote
    path.write_text(json.dumps(manifest))
    assert load_bundle(copy).manifest.actor_features == "mean"


@pytest.mark.parametrize("value", ["mode", 3])
def test_unsupported_actor_features_refused_at_load(bounded_dir, tmp_path, value):
    copy = tmp_path / "b"
    shutil.copytree(bounded_dir, copy)
    path = copy / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["actor_features"] = value
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"manifest\.json: actor_features .* is not "
                                          r"supported.*belief mean.*re-export"):
        load_bundle(copy)


def test_non_finite_action_bounds_refused_at_load(bounded_dir, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(bounded_dir, copy)
    path = copy / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["action"]["low"] = [-1e39, 0.0]  # -inf as float32
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="action bounds must be 2 finite values"):
        load_bundle(copy)


def test_export_refuses_features_the_runtime_does_not_honour(tmp_path):
    from tests.world_models.conftest import tiny_model
    from training.actor_critic import Actor
    from training.export import ExportInputs, export_bundle

    model = tiny_model("vrkn", "fusion")
    info = ExportInputs(PERIOD, LOW, HIGH, {"proprio": (np.zeros(PROPRIO), np.ones(PROPRIO))},
                        {}, features="sample")
    with pytest.raises(ValueError, match="only supported value is 'mean'"):
        export_bundle(model, Actor(model.feature_dim, model.action_dim), info, tmp_path / "b")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("inline_ms", [0.0, 0.5], ids=["worker", "inline"])
def test_batched_service_converts_actions_at_the_one_boundary(bounded_models, bounded,
                                                              inline_ms):
    """Several sessions of a [-2, 2] x [0, 10] bundle through the service at once (policy
    actions batched in one actor call): the answers are in bundle units and equal the
    registry's one at a time; the timelines hold the unit actions."""
    import asyncio

    from server.payloads import Payload
    from server.service import EstimatorService, SensorMessageIn
    from server.settings import Settings

    def inputs(j: int, k: int):
        return proprio(100 * j + k), [float(np.float32(-1.5 + 0.2 * j)), float(k)]

    reg = SessionRegistry(bounded_models, Limits())
    want = []
    for j in range(5):
        sid = reg.create(start_time=0.0).id
        for k in range(4):
            p, reported = inputs(j, k)
            observe(reg, sid, k * PERIOD + 0.01, p)
            want.append(reg.policy_action(sid, k * PERIOD + 0.02).values)
            reg.report_action(sid, k * PERIOD + 0.03, reported)

    async def robot(service, j: int):
        sid = service.create_session(start_time=0.0).id
        got = []
        for k in range(4):
            p, reported = inputs(j, k)
            await service.send_message(SensorMessageIn(sid, "proprio", k * PERIOD + 0.01,
                                                       Payload("values", values=p.tolist())),
                                       "test")
            got.append((await service.policy_action(sid, k * PERIOD + 0.02)).values)
            service.report_action(sid, k * PERIOD + 0.03, reported)
        return sid, got

    async def main():
        service = EstimatorService(bounded_models, Settings(inline_ms=inline_ms))
        await service.start()
        try:
            out = await asyncio.gather(*(robot(service, j) for j in range(5)))
            tl = service.registry.sessions[out[0][0]].timeline
            return [v for _, got in out for v in got], tl, service.engines["bounded"]
        finally:
            await service.stop()

    got, tl, filt = asyncio.run(main())
    if inline_ms == 0:
        assert filt.items > filt.batches  # some actions were computed together
    np.testing.assert_allclose(np.array(got), np.array(want), atol=1e-6, rtol=0)
    for a in got:
        assert np.all(a >= np.float32(LOW)) and np.all(a <= np.float32(HIGH))
    # The reported [-1.5, 3.0] (bundle units) is held as unit [-0.75, -0.4].
    np.testing.assert_allclose(tl.records[3].action.value, to_unit(np.float32([-1.5, 3.0]),
                                                                   LOW, HIGH), atol=1e-7)
