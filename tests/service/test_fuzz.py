"""Fuzz every operation of both transports, bounded (a fixed number of seeded cases): take a
valid request, malform one field (a hostile value of any JSON type, a wrong protobuf value,
bytes that are not protobuf or JSON at all), send it, and check that the answer is never
INTERNAL / UNKNOWN / 5xx, that a refusal left the session unchanged, and that the next
valid request succeeds."""

from __future__ import annotations

import json

import grpc
import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from proto.vrkn.estimator.v1 import estimator_pb2 as pb
from tests.service.conftest import PERIOD, TOKEN
from tests.service.fuzzing import (
    CLEARABLE,
    FD,
    GRPC_SWEEP,
    HTTP_OPS,
    SWEEP,
    T,
    fields,
    grpc_cases,
    grpc_request,
    grpc_templates,
    http_cases,
    http_request,
    slots,
)

pytestmark = pytest.mark.slow
CASES = 300  # random cases per transport (and a sweep of every field)
AUTH = {"authorization": f"Bearer {TOKEN}"}
FUZZ = settings(max_examples=CASES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
COUNTS: dict[str, int] = {}


def count(key: str) -> None:
    COUNTS[key] = COUNTS.get(key, 0) + 1


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.http_url, headers=AUTH, timeout=30) as client:
        yield client


def http_session(http) -> str:
    sid = http.post("/v1/sessions", json={"start_time": 0.0}).json()["session_id"]
    for k in range(4):
        assert http.post(f"/v1/sessions/{sid}/messages", json={
            "sensor": "proprio", "timestamp": k * PERIOD + 0.01, "values": [k, 1, 2]}
        ).status_code == 200
    http.post(f"/v1/sessions/{sid}/actions", json={"timestamp": T, "values": [0.1, 0.2]})
    return sid


def http_state(http, sid):
    d = http.get(f"/v1/sessions/{sid}")
    if d.status_code == 404:
        return None
    d = d.json()
    d.pop("idle_s"), d.pop("refused")
    return d, http.get(f"/v1/sessions/{sid}/belief").json()


@FUZZ
@given(case=http_cases())
def test_http_fuzz(http, case):
    check_http(http, case)


def test_http_every_field_malformed_in_turn(http):
    ids = [v for v in SWEEP if isinstance(v, str)] + ["", "..", "a/b"]
    cases = [(op, slot, False, value) for op in sorted(HTTP_OPS) for slot in slots(op)
             for value in {("body",): [b"{", b"\xff"], ("sid",): ids}.get(slot, SWEEP)]
    cases += [(op, slot, True, None) for op in sorted(HTTP_OPS) for slot in slots(op)
              if slot[0] not in ("body", "sid")]  # the field left out
    for case in cases:
        check_http(http, case, "http sweep")
    assert len(cases) > 250


def check_http(http, case, label: str = "http"):
    op, slot, drop, value = case
    sid = http_session(http)
    try:
        before = http_state(http, sid)
        method, url, kw = http_request(op, sid, slot, drop, value)
        r = http.request(method, url, **kw)
        count(f"{label} {r.status_code // 100}xx")
        assert r.status_code < 500, (op, slot, r.status_code, r.text[:300])
        if r.status_code >= 400:
            error = r.json()["error"]
            assert set(error) == {"code", "reason", "message"} and error["message"]
            assert len(r.content) < 1500
            assert http_state(http, sid) == before, (op, slot, r.text[:300])
        if r.status_code == 201:  # a session was created
            http.delete(f"/v1/sessions/{r.json()['session_id']}")
        state = http_state(http, sid)
        if state is not None:  # the next valid request succeeds
            d = state[0]
            t = (d["newest_time"] if d["newest_time"] is not None else d["start_time"] or 0.0)
            ok = http.post(f"/v1/sessions/{sid}/messages", json={
                "sensor": "proprio", "timestamp": t + 0.01, "values": [1, 2, 3]})
            assert ok.status_code == 200, ok.text
    finally:
        http.delete(f"/v1/sessions/{sid}")


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.grpc_target, options=[
            ("grpc.max_receive_message_length", 16 << 20)]) as ch:
        yield ch


def _raw(channel, method):
    name = "StreamMessages" if method.startswith("Stream") else method
    make = channel.stream_stream if method.startswith("Stream") else channel.unary_unary
    return make(f"/vrkn.estimator.v1.Estimator/{name}")


META = tuple(AUTH.items())
BAD_CODES = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS)


def grpc_state(channel, sid):
    try:
        d = pb.Session.FromString(_raw(channel, "DescribeSession")(
            pb.SessionRef(session_id=sid).SerializeToString(), metadata=META))
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND
        return None
    b = pb.Belief.FromString(_raw(channel, "GetBelief")(
        pb.BeliefRequest(session_id=sid).SerializeToString(), metadata=META))
    return (d.newest_tick, d.start_time, dict(d.accepted), d.actions, d.superseded,
            d.replayed_ticks, list(b.mean), list(b.var)), d


@FUZZ
@given(case=grpc_cases())
def test_grpc_fuzz(channel, http, case):
    check_grpc(channel, http, case)


def test_grpc_every_field_malformed_in_turn(channel, http):
    cases = []
    for method, (_, template) in sorted(grpc_templates("x").items()):
        for path, field in fields(template.DESCRIPTOR):
            for v in GRPC_SWEEP[field.type]:
                value = ([v] * 3 if field.type != FD.TYPE_STRING else [v]) \
                    if field.is_repeated else v
                cases.append((method, ("field", path, value, False)))
            if field.is_repeated and field.type != FD.TYPE_STRING:
                cases.append((method, ("field", path, [3] * 5000, False)))
            if path[-1] in CLEARABLE:  # the field left out
                cases.append((method, ("field", path, None, True)))
        cases += [(method, ("wire", how, b"\x12\x03\xed\xa0\x80", 7))
                  for how in ("append", "truncate", "replace")]
    for case in cases:
        check_grpc(channel, http, case, "grpc sweep")
    assert len(cases) > 150


def check_grpc(channel, http, case, label: str = "grpc"):
    method, change = case
    sid = http_session(http)
    try:
        before = grpc_state(channel, sid)
        data = grpc_request(method, sid, change)
        refused = False
        try:
            if method.startswith("Stream"):
                acks = [pb.Ack.FromString(a) for a in _raw(channel, method)(
                    iter([data]), metadata=META)]
                assert len(acks) == 1, acks
                code = acks[0].error.code
                assert code not in ("INTERNAL", "UNKNOWN"), acks[0]
                refused = bool(code)
                count(f"{label} stream {code or 'OK'}")
            else:
                out = _raw(channel, method)(data, metadata=META)
                count(f"{label} OK")
                if method == "CreateSession":
                    http.delete(f"/v1/sessions/{pb.Session.FromString(out).session_id}")
        except grpc.RpcError as e:
            count(f"{label} {e.code().name}")
            assert e.code() not in BAD_CODES, (method, change, e.code(), e.details())
            assert len(e.details() or "") < 1100
            refused = True
        if refused:
            after = grpc_state(channel, sid)
            assert after is not None and after[0] == before[0], (method, change)
        state = grpc_state(channel, sid)
        if state is not None:  # the next valid request succeeds
            d = state[1]
            t = d.newest_time if d.HasField("newest_time") else (d.start_time or 0.0)
            _raw(channel, "SendMessage")(pb.SensorMessage(
                session_id=sid, sensor="proprio", timestamp=t + 0.01,
                vector=pb.FloatVector(values=[1, 2, 3])).SerializeToString(), metadata=META)
    finally:
        http.delete(f"/v1/sessions/{sid}")


def test_zz_fuzz_counts(http):
    """After both fuzz tests (file order): how many cases got which answer; no session
    was left behind."""
    print("fuzz:", json.dumps(COUNTS, sort_keys=True))
    for transport in ("http", "grpc"):
        random = sum(v for k, v in COUNTS.items() if k.startswith(f"{transport} ")
                     and not k.startswith(f"{transport} sweep"))
        assert random >= CASES // 2, COUNTS
    assert not any(k.endswith(("5xx", "INTERNAL", "UNKNOWN")) for k in COUNTS)
    assert "vrkn_active_sessions 0.0" in http.get("/metrics").text
