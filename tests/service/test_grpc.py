"""The gRPC transport on a real server (127.0.0.1, free port): parity with the offline
filter, arrival order, bad input (status + unchanged session), the stream surviving bad
messages, isolation under concurrent load, health, reflection and auth."""

from __future__ import annotations

import asyncio
import re

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from proto.vrkn.estimator.v1 import estimator_pb2 as pb
from proto.vrkn.estimator.v1 import estimator_pb2_grpc as pb_grpc
from server.runtime import OnlineFilter
from tests.service.conftest import PERIOD, STATE_NAMES, TOKEN, png, random_stream
from tests.service.test_session_core import offline_beliefs

pytestmark = pytest.mark.slow
AUTH = (("authorization", f"Bearer {TOKEN}"),)
ATOL = 1e-5


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.grpc_target) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel):
    return pb_grpc.EstimatorStub(channel)


def message(sid, event, seq=0, return_belief=False) -> pb.SensorMessage:
    _, name, t, value = event
    m = pb.SensorMessage(session_id=sid, sensor=name, timestamp=t, sequence=seq,
                         return_belief=return_belief)
    if name == "image":
        m.encoded_image = png(value)
    else:
        m.vector.values[:] = value.tolist()
    return m


def send_all(stub, sid, events):
    """Sensor messages through the stream, actions unary, in the given order."""
    for event in events:
        if event[0] == "act":
            stub.ReportAction(pb.ActionReport(session_id=sid, timestamp=event[2],
                                              values=event[3].tolist()), metadata=AUTH)
        else:
            acks = list(stub.StreamMessages(iter([message(sid, event)]), metadata=AUTH))
            assert len(acks) == 1 and not acks[0].HasField("error"), acks


def belief(stub, sid, t=None):
    req = pb.BeliefRequest(session_id=sid)
    if t is not None:
        req.timestamp = t
    return stub.GetBelief(req, metadata=AUTH)


def new_session(stub, **kw) -> str:
    return stub.CreateSession(pb.CreateSessionRequest(start_time=0.0, **kw),
                              metadata=AUTH).session_id


def test_beliefs_equal_the_offline_filter(stub, model):
    events = random_stream(24, seed=3)
    expected = offline_beliefs(model, events, 24)
    sid = new_session(stub)
    send_all(stub, sid, events)
    for k in range(4, 24):  # the ticks inside the 1 s window
        b = belief(stub, sid, k * PERIOD + 0.001)
        assert b.tick == k and not b.predicted
        np.testing.assert_allclose(b.mean, expected[k].mean[0], atol=ATOL)
        np.testing.assert_allclose(b.var, expected[k].var[0], atol=ATOL)
    b = belief(stub, sid)
    offline = OnlineFilter(model.bundle)
    decoded = offline.decoded("proprio", expected[23])
    np.testing.assert_allclose(b.decoded["proprio"].values, decoded.mean[0], atol=ATOL)
    np.testing.assert_allclose(b.decoded_var["proprio"].values, decoded.var[0], atol=ATOL)
    state = offline.state(expected[23])
    assert tuple(b.state.names) == STATE_NAMES
    np.testing.assert_allclose(b.state.mean, state.mean[0], atol=ATOL)
    np.testing.assert_allclose(b.state.var, state.var[0], atol=ATOL)


def test_one_round_trip_message_to_belief(stub, model):
    sid = new_session(stub)
    event = ("obs", "proprio", 0.01, np.ones(3, np.float32))
    ack = stub.SendMessage(message(sid, event, seq=7, return_belief=True), metadata=AUTH)
    assert ack.sequence == 7 and ack.tick == 0 and ack.applied and ack.newest_tick == 0
    expected = offline_beliefs(model, [event], 1)[0]
    np.testing.assert_allclose(ack.belief.mean, expected.mean[0], atol=ATOL)


def test_shuffled_arrival_over_the_stream(stub):
    events = random_stream(16, seed=5)
    rng = np.random.default_rng(5)
    shuffled = [events[i] for i in rng.permutation(len(events))]  # all within 0.8 s
    a, b = new_session(stub), new_session(stub)
    send_all(stub, a, events)
    send_all(stub, b, shuffled)
    for k in range(16):
        ba, bb = belief(stub, a, k * PERIOD), belief(stub, b, k * PERIOD)
        np.testing.assert_allclose(ba.mean, bb.mean, atol=ATOL)
        np.testing.assert_allclose(ba.var, bb.var, atol=ATOL)


T = 1.43  # inside the window of busy_session (newest tick 29 at 1.45 s, window 0.5 s)


def _bad_messages(sid):
    img = np.zeros((64, 64, 3), np.uint8)
    vec = pb.FloatVector(values=[0.0, 0.0, 0.0])
    M = pb.SensorMessage
    return {
        "unknown session": (M(session_id="nope", sensor="proprio", timestamp=T, vector=vec),
                            "NOT_FOUND", "unknown session"),
        "unknown sensor": (M(session_id=sid, sensor="lidar", timestamp=T, vector=vec),
                           "NOT_FOUND", "unknown sensor 'lidar'"),
        "wrong shape": (M(session_id=sid, sensor="proprio", timestamp=T,
                          vector=pb.FloatVector(values=[1.0, 2.0])),
                        "INVALID_ARGUMENT", r"shape \[2\], expected \[3\]"),
        "wrong dtype": (M(session_id=sid, sensor="proprio", timestamp=T,
                          raw=pb.Tensor(shape=[3], dtype="float64", data=bytes(24))),
                        "INVALID_ARGUMENT", "dtype float64, expected float32"),
        "raw bytes": (M(session_id=sid, sensor="image", timestamp=T,
                        raw=pb.Tensor(shape=[64, 64, 3], dtype="uint8", data=bytes(100))),
                      "INVALID_ARGUMENT", "100 bytes of data"),
        "encoding": (M(session_id=sid, sensor="image", timestamp=T, encoded_image=b"GIF89a"),
                     "INVALID_ARGUMENT", "not a PNG or JPEG"),
        "image size": (M(session_id=sid, sensor="image", timestamp=T,
                         encoded_image=png(np.zeros((32, 48, 3), np.uint8))),
                       "INVALID_ARGUMENT", r"48x32 \(WxH\), expected 64x64"),
        "image pixels": (M(session_id=sid, sensor="image", timestamp=T,
                           encoded_image=png(np.zeros((256, 256, 3), np.uint8))),
                         "INVALID_ARGUMENT", "above the limit of 40000 pixels"),
        "vector as image": (M(session_id=sid, sensor="proprio", timestamp=T,
                              encoded_image=png(img)), "INVALID_ARGUMENT", "is a vector"),
        "nan": (M(session_id=sid, sensor="proprio", timestamp=T,
                  vector=pb.FloatVector(values=[0.0, float("nan"), 0.0])),
                "INVALID_ARGUMENT", "NaN or infinite"),
        "inf": (M(session_id=sid, sensor="proprio", timestamp=T,
                  raw=pb.Tensor(shape=[3], dtype="float32",
                                data=np.array([0, np.inf, 0], "<f4").tobytes())),
                "INVALID_ARGUMENT", "NaN or infinite"),
        "oversize": (M(session_id=sid, sensor="image", timestamp=T,
                       encoded_image=bytes(100_001)), "INVALID_ARGUMENT",
                     "100001 bytes, above the limit of 100000"),
        "no payload": (M(session_id=sid, sensor="proprio", timestamp=T),
                       "INVALID_ARGUMENT", "no payload"),
        "too old": (M(session_id=sid, sensor="proprio", timestamp=0.0, vector=vec),
                    "OUT_OF_RANGE", "older than the newest tick"),
        "before start": (M(session_id=sid, sensor="proprio", timestamp=-5.0, vector=vec),
                         "OUT_OF_RANGE", "before the session's start"),
        "far future": (M(session_id=sid, sensor="proprio", timestamp=1e6, vector=vec),
                       "OUT_OF_RANGE", "beyond the newest tick"),
        "nan time": (M(session_id=sid, sensor="proprio", timestamp=float("nan"), vector=vec),
                     "OUT_OF_RANGE", "not a finite number"),
    }


@pytest.fixture(scope="module")
def busy_session(stub):
    sid = new_session(stub, history_window_s=0.5)
    send_all(stub, sid, random_stream(30, seed=9))
    return sid


def _state(stub, sid):
    d = stub.DescribeSession(pb.SessionRef(session_id=sid), metadata=AUTH)
    b = belief(stub, sid)
    return (d.newest_tick, dict(d.accepted), d.actions, list(b.mean), list(b.var))


@pytest.mark.parametrize("case", list(_bad_messages("x")))
def test_bad_message_gets_its_status_and_changes_nothing(stub, busy_session, case):
    sid = busy_session
    msg, code, pattern = _bad_messages(sid)[case]
    before = _state(stub, sid)
    with pytest.raises(grpc.RpcError) as e:
        stub.SendMessage(msg, metadata=AUTH)
    assert e.value.code() == getattr(grpc.StatusCode, code)
    assert re.search(pattern, e.value.details()), e.value.details()
    assert _state(stub, sid) == before
    # The stream answers the same refusal in an ack and goes on.
    good = message(sid, ("obs", "proprio", 29 * PERIOD + 0.01, np.zeros(3, np.float32)), 2)
    # (an image message runs concurrently with the stream's others: acks match by sequence)
    acks = sorted(stub.StreamMessages(iter([msg, good]), metadata=AUTH),
                  key=lambda a: a.sequence)
    assert [a.sequence for a in acks] == [msg.sequence, 2]
    assert [a.error.code for a in acks] == [code, ""]
    assert re.search(pattern, acks[0].error.message)


def test_bad_action_and_unknown_ids(stub, busy_session):
    before = _state(stub, busy_session)
    for values, pattern in (([0.5], "action size is 2"), ([float("nan"), 0.0], "NaN"),
                            ([3.0, 0.0], "outside the bounds")):
        with pytest.raises(grpc.RpcError) as e:
            stub.ReportAction(pb.ActionReport(session_id=busy_session, timestamp=1.45,
                                              values=values), metadata=AUTH)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and pattern in e.value.details()
    assert _state(stub, busy_session) == before
    for call, req in ((stub.GetBelief, pb.BeliefRequest(session_id="nope")),
                      (stub.GetAction, pb.ActionRequest(session_id="nope")),
                      (stub.DescribeSession, pb.SessionRef(session_id="nope")),
                      (stub.CloseSession, pb.SessionRef(session_id="nope")),
                      (stub.CreateSession, pb.CreateSessionRequest(model="nope"))):
        with pytest.raises(grpc.RpcError) as e:
            call(req, metadata=AUTH)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        belief(stub, busy_session, 0.0)
    assert e.value.code() == grpc.StatusCode.OUT_OF_RANGE


def test_message_above_the_transport_limit_is_resource_exhausted(stub, busy_session):
    msg = pb.SensorMessage(session_id=busy_session, sensor="image", timestamp=1.45,
                           encoded_image=bytes(400_000))
    with pytest.raises(grpc.RpcError) as e:
        stub.SendMessage(msg, metadata=AUTH)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_session_lifecycle(stub, model):
    sid = new_session(stub)
    send_all(stub, sid, random_stream(3))
    act = stub.GetAction(pb.ActionRequest(session_id=sid, timestamp=0.16), metadata=AUTH)
    assert act.source == "policy" and act.recorded and act.tick == 3 and len(act.values) == 2
    d = stub.ResetSession(pb.ResetSessionRequest(session_id=sid, start_time=5.0), metadata=AUTH)
    assert d.newest_tick == -1 and d.start_time == 5.0
    np.testing.assert_array_equal(belief(stub, sid).mean, model.manifest.initial_mean)
    stub.CloseSession(pb.SessionRef(session_id=sid), metadata=AUTH)
    with pytest.raises(grpc.RpcError) as e:
        belief(stub, sid)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    models = stub.ListModels(pb.ListModelsRequest(), metadata=AUTH).models
    assert [m.name for m in models] == ["tiny"] and models[0].is_default
    assert [s.name for s in models[0].sensors] == ["proprio", "image"]


def test_session_limit_is_resource_exhausted(stub, server):
    created = []
    try:
        with pytest.raises(grpc.RpcError) as e:
            for _ in range(60):
                created.append(new_session(stub))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "limit of 48 sessions" in e.value.details()
    finally:
        for sid in created:
            stub.CloseSession(pb.SessionRef(session_id=sid), metadata=AUTH)


def test_sessions_are_isolated_under_concurrent_load(server, model):
    """16 robots stream concurrently (images batched across them) while a bad client sends
    garbage to its own session and to theirs; every robot's beliefs equal the offline
    filter on its own messages."""
    n, ticks = 16, 12
    streams = [random_stream(ticks, seed=100 + i, image_every=2) for i in range(n)]

    async def robot(stub, i):
        sid = (await stub.CreateSession(pb.CreateSessionRequest(start_time=0.0),
                                        metadata=AUTH)).session_id
        events = streams[i]
        obs = [message(sid, e, seq) for seq, e in enumerate(events) if e[0] == "obs"]
        call = stub.StreamMessages(iter(obs), metadata=AUTH)
        acks = [a async for a in call]
        assert len(acks) == len(obs) and not any(a.HasField("error") for a in acks)
        for e in events:
            if e[0] == "act":
                await stub.ReportAction(pb.ActionReport(session_id=sid, timestamp=e[2],
                                                        values=e[3].tolist()), metadata=AUTH)
        return sid

    async def vandal(stub, victims):
        bad = [pb.SensorMessage(session_id=v, sensor="image", timestamp=0.1,
                                encoded_image=b"\x89PNG garbage") for v in victims]
        bad += [pb.SensorMessage(session_id=v, sensor="proprio", timestamp=0.1,
                                 vector=pb.FloatVector(values=[np.nan, 0, 0]))
                for v in victims]
        acks = [a async for a in stub.StreamMessages(iter(bad), metadata=AUTH)]
        assert all(a.error.code for a in acks)

    async def main():
        async with grpc.aio.insecure_channel(server.grpc_target) as ch:
            stub = pb_grpc.EstimatorStub(ch)
            sids = await asyncio.gather(*(robot(stub, i) for i in range(n)))
            await vandal(stub, sids)
            out = []
            for sid in sids:
                out.append([await stub.GetBelief(pb.BeliefRequest(
                    session_id=sid, timestamp=k * PERIOD), metadata=AUTH) for k in range(ticks)])
                await stub.CloseSession(pb.SessionRef(session_id=sid), metadata=AUTH)
            return out

    results = asyncio.run(main())
    for i, beliefs in enumerate(results):
        expected = offline_beliefs(model, streams[i], ticks)
        for k, b in enumerate(beliefs):
            np.testing.assert_allclose(b.mean, expected[k].mean[0], atol=ATOL)


def test_health_needs_no_token(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "vrkn.estimator.v1.Estimator"):
        r = health.Check(health_pb2.HealthCheckRequest(service=name))
        assert r.status == health_pb2.HealthCheckResponse.SERVING


def _reflect(channel, metadata):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    reqs = [reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="vrkn.estimator.v1.Estimator")]
    return list(stub.ServerReflectionInfo(iter(reqs), metadata=metadata))


def test_reflection_lists_the_service(channel):
    services, files = _reflect(channel, AUTH)
    names = {s.name for s in services.list_services_response.service}
    assert {"vrkn.estimator.v1.Estimator", "grpc.health.v1.Health"} <= names
    assert files.file_descriptor_response.file_descriptor_proto


@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer wrong"),),
                                      (("authorization", TOKEN),)])
def test_missing_or_wrong_token_is_unauthenticated(stub, channel, metadata):
    for call in (lambda: stub.ListModels(pb.ListModelsRequest(), metadata=metadata),
                 lambda: stub.CreateSession(pb.CreateSessionRequest(), metadata=metadata),
                 lambda: list(stub.StreamMessages(iter([pb.SensorMessage()]),
                                                  metadata=metadata)),
                 lambda: _reflect(channel, metadata)):
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
