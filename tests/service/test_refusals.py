"""Inputs that used to be a 500 / UNKNOWN are refused with a 4xx / INVALID_ARGUMENT or
OUT_OF_RANGE and a clear message, on gRPC and HTTP, and leave the session unchanged:
times whose tick overflows, a PNG header claiming 20000x20000 pixels, bad UTF-8, a
400-digit integer, long strings (echoed truncated). A refused HTTP request leaves the
keep-alive connection usable."""

from __future__ import annotations

import base64
import json
import socket

import grpc
import httpx
import pytest

from proto.vrkn.estimator.v1 import estimator_pb2 as pb
from proto.vrkn.estimator.v1 import estimator_pb2_grpc as pb_grpc
from tests.service.conftest import PERIOD, TOKEN, png_header

pytestmark = pytest.mark.slow
AUTH = (("authorization", f"Bearer {TOKEN}"),)
HUGE = [1e307, -1.79e308, 2e12]  # (t - t0) / P overflows, or beyond the ±1e12 s bound


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.http_url, timeout=30,
                      headers={"authorization": f"Bearer {TOKEN}"}) as client:
        yield client


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.grpc_target) as ch:
        yield pb_grpc.EstimatorStub(ch)


def http_session(http) -> str:
    sid = http.post("/v1/sessions", json={"start_time": 0.0}).json()["session_id"]
    for k in range(5):
        r = http.post(f"/v1/sessions/{sid}/messages", json={
            "sensor": "proprio", "timestamp": k * PERIOD + 0.01, "values": [k, 0, 0]})
        assert r.status_code == 200, r.text
    return sid


def http_state(http, sid):
    d = http.get(f"/v1/sessions/{sid}").json()
    d.pop("idle_s"), d.pop("refused")
    return d, http.get(f"/v1/sessions/{sid}/belief").json()


@pytest.mark.parametrize("t", HUGE)
@pytest.mark.parametrize("op", ["create", "reset", "message", "action", "policy", "belief"])
def test_http_huge_times_are_refused_on_every_operation(http, op, t):
    sid = http_session(http)
    before = http_state(http, sid)
    request = {
        "create": ("POST", "/v1/sessions", {"start_time": t}),
        "reset": ("POST", f"/v1/sessions/{sid}/reset", {"start_time": t}),
        "message": ("POST", f"/v1/sessions/{sid}/messages",
                    {"sensor": "proprio", "timestamp": t, "values": [0, 0, 0]}),
        "action": ("POST", f"/v1/sessions/{sid}/actions", {"timestamp": t, "values": [0, 0]}),
        "policy": ("POST", f"/v1/sessions/{sid}/policy", {"timestamp": t}),
        "belief": ("GET", f"/v1/sessions/{sid}/belief", None),
    }[op]
    method, url, body = request
    r = http.request(method, url, json=body, params={"t": repr(t)} if op == "belief" else None)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["reason"] in ("bad_timestamp", "bad_start_time")
    assert "1e+12" in r.json()["error"]["message"]
    assert http_state(http, sid) == before
    http.delete(f"/v1/sessions/{sid}")


def grpc_session(stub) -> str:
    sid = stub.CreateSession(pb.CreateSessionRequest(start_time=0.0), metadata=AUTH).session_id
    for k in range(5):
        stub.SendMessage(pb.SensorMessage(session_id=sid, sensor="proprio",
                                          timestamp=k * PERIOD + 0.01,
                                          vector=pb.FloatVector(values=[k, 0, 0])),
                         metadata=AUTH)
    return sid


def grpc_state(stub, sid):
    d = stub.DescribeSession(pb.SessionRef(session_id=sid), metadata=AUTH)
    b = stub.GetBelief(pb.BeliefRequest(session_id=sid), metadata=AUTH)
    return d.newest_tick, d.start_time, dict(d.accepted), d.actions, list(b.mean), list(b.var)


@pytest.mark.parametrize("t", HUGE)
@pytest.mark.parametrize("op", ["create", "reset", "message", "stream", "action", "policy",
                                "belief"])
def test_grpc_huge_times_are_refused_on_every_operation(stub, op, t):
    sid = grpc_session(stub)
    before = grpc_state(stub, sid)
    vec = pb.FloatVector(values=[0, 0, 0])
    msg = pb.SensorMessage(session_id=sid, sensor="proprio", timestamp=t, vector=vec)
    if op == "stream":
        acks = list(stub.StreamMessages(iter([msg]), metadata=AUTH))
        assert acks[0].error.code == "OUT_OF_RANGE" and "1e+12" in acks[0].error.message
    else:
        call = {
            "create": lambda: stub.CreateSession(pb.CreateSessionRequest(start_time=t),
                                                 metadata=AUTH),
            "reset": lambda: stub.ResetSession(pb.ResetSessionRequest(
                session_id=sid, start_time=t), metadata=AUTH),
            "message": lambda: stub.SendMessage(msg, metadata=AUTH),
            "action": lambda: stub.ReportAction(pb.ActionReport(
                session_id=sid, timestamp=t, values=[0, 0]), metadata=AUTH),
            "policy": lambda: stub.GetAction(pb.ActionRequest(session_id=sid, timestamp=t),
                                             metadata=AUTH),
            "belief": lambda: stub.GetBelief(pb.BeliefRequest(session_id=sid, timestamp=t),
                                             metadata=AUTH),
        }[op]
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() in (grpc.StatusCode.OUT_OF_RANGE,
                                  grpc.StatusCode.INVALID_ARGUMENT), e.value.details()
        assert "1e+12" in e.value.details()
    assert grpc_state(stub, sid) == before
    stub.CloseSession(pb.SessionRef(session_id=sid), metadata=AUTH)


def test_grpc_bad_payloads_and_long_strings(stub):
    sid = grpc_session(stub)
    before = grpc_state(stub, sid)
    long = "x" * 16384
    cases = [
        (pb.SensorMessage(session_id=sid, sensor="image", timestamp=0.21,
                          encoded_image=png_header(20000, 20000)),
         grpc.StatusCode.INVALID_ARGUMENT, "image header claims more than"),
        (pb.SensorMessage(session_id=long, sensor="proprio", timestamp=0.21,
                          vector=pb.FloatVector(values=[0, 0, 0])),
         grpc.StatusCode.NOT_FOUND, "unknown session 'xxx"),
        (pb.SensorMessage(session_id=sid, sensor=long, timestamp=0.21,
                          vector=pb.FloatVector(values=[0, 0, 0])),
         grpc.StatusCode.NOT_FOUND, "(16384 characters)"),
        (pb.SensorMessage(session_id=sid, sensor="proprio", timestamp=0.21,
                          raw=pb.Tensor(shape=[3] * 5000, dtype="float32")),
         grpc.StatusCode.INVALID_ARGUMENT, "expected [3]"),
        (pb.SensorMessage(session_id=sid, sensor="proprio", timestamp=0.21,
                          raw=pb.Tensor(shape=[3], dtype=long, data=bytes(12))),
         grpc.StatusCode.INVALID_ARGUMENT, "unknown dtype"),
    ]
    for msg, code, text in cases:
        with pytest.raises(grpc.RpcError) as e:
            stub.SendMessage(msg, metadata=AUTH)
        assert e.value.code() == code and text in e.value.details(), e.value.details()
        assert len(e.value.details()) < 1100
    for call, req in ((stub.DescribeSession, pb.SessionRef(session_id=long)),
                      (stub.CreateSession, pb.CreateSessionRequest(model=long))):
        with pytest.raises(grpc.RpcError) as e:  # was "metadata too large" on the client
            call(req, metadata=AUTH)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND and "characters)" in \
            e.value.details()
    assert grpc_state(stub, sid) == before


def test_grpc_requests_that_are_not_protobuf_are_invalid_argument(server, stub):
    sid = grpc_session(stub)
    before = grpc_state(stub, sid)
    bad_utf8 = b"\x0a" + bytes([len(sid)]) + sid.encode() + b"\x12\x02\xff\xfe"  # sensor
    with grpc.insecure_channel(server.grpc_target) as ch:
        for method, data in (("DescribeSession", b"\x0a\x02\xff\xfe"),
                             ("SendMessage", bad_utf8), ("GetBelief", b"\xff\xff\xff"),
                             ("ReportAction", b"\x0a\x80")):  # truncated
            raw = ch.unary_unary(f"/vrkn.estimator.v1.Estimator/{method}")
            with pytest.raises(grpc.RpcError) as e:
                raw(data, metadata=AUTH)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
            assert "is not a valid vrkn.estimator.v1." in e.value.details()
        good = pb.SensorMessage(session_id=sid, sensor="proprio", timestamp=0.21, sequence=5,
                                vector=pb.FloatVector(values=[0, 0, 0])).SerializeToString()
        stream = ch.stream_stream("/vrkn.estimator.v1.Estimator/StreamMessages")
        acks = [pb.Ack.FromString(a) for a in stream(iter([bad_utf8, good]), metadata=AUTH)]
        assert acks[0].error.code == "INVALID_ARGUMENT" and "bad UTF-8" in acks[0].error.message
        assert not acks[1].HasField("error") and acks[1].sequence == 5  # the stream went on
    assert grpc_state(stub, sid)[2] == {"proprio": before[2]["proprio"] + 1}  # the good one


def test_http_long_strings_are_echoed_truncated(http):
    long = "x" * 16384
    r = http.get(f"/v1/sessions/{long}")
    assert r.status_code == 404 and "(16384 characters)" in r.json()["error"]["message"]
    assert len(r.content) < 1500
    r = http.post("/v1/sessions", json={"model": long})
    assert r.status_code == 404 and len(r.content) < 1500
    sid = http_session(http)
    r = http.post(f"/v1/sessions/{sid}/messages", json={"sensor": "proprio", "timestamp": 0.2,
                                                        "raw": {"shape": [3] * 5000,
                                                                "dtype": "float32",
                                                                "data_base64": ""}})
    assert r.status_code == 400 and len(r.content) < 1500
    http.delete(f"/v1/sessions/{sid}")


def _exchange(sock: socket.socket, method: str, path: str, body: bytes = b"") -> tuple[int, dict]:
    """One HTTP/1.1 request on an open connection; the status and the JSON body."""
    head = (f"{method} {path} HTTP/1.1\r\nhost: test\r\nauthorization: Bearer {TOKEN}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n")
    sock.sendall(head.encode() + body)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    header, rest = data.split(b"\r\n\r\n", 1)
    lines = header.decode("latin-1").split("\r\n")
    length = next(int(v) for k, _, v in (x.partition(": ") for x in lines[1:])
                  if k.lower() == "content-length")
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        rest += chunk
    return int(lines[0].split()[1]), json.loads(rest) if rest else {}


def test_a_refused_request_keeps_the_connection(http, server):
    sid = http_session(http)
    bomb = base64.b64encode(png_header(20000, 20000)).decode()
    refused = [  # each was a 500, after which the server dropped the connection
        {"sensor": "proprio", "timestamp": 1e307, "values": [0, 0, 0]},
        {"sensor": "image", "timestamp": 0.21, "image_base64": bomb},
        '{"sensor": "proprio", "timestamp": 0.21, "raw": {"shape": [3], "dtype": "\\ud800", '
        '"data_base64": ""}}',
        '{"sensor": "proprio", "timestamp": 0.21, "values": [1%s, 0, 0]}' % ("0" * 400),
    ]
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as sock:
        for n, body in enumerate(refused):
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            status, out = _exchange(sock, "POST", f"/v1/sessions/{sid}/messages", data)
            assert 400 <= status < 500 and out["error"]["message"], (n, status, out)
            good = json.dumps({"sensor": "proprio", "timestamp": 0.21 + 0.001 * n,
                               "values": [1, 2, 3]}).encode()
            status, out = _exchange(sock, "POST", f"/v1/sessions/{sid}/messages", good)
            assert status == 200 and out["tick"] == 4, out
    http.delete(f"/v1/sessions/{sid}")


def test_http_errors_have_one_shape(http):
    for method, path in (("GET", "/nope"), ("PUT", "/v1/models"), ("GET", "/v1/sessions/x"),
                         ("POST", "/v1/sessions")):
        r = http.request(method, path, content=b"{not json" if method == "POST" else None)
        assert r.status_code in (404, 405, 422), r.text
        assert set(r.json()) == {"error"}
        assert set(r.json()["error"]) == {"code", "reason", "message"}
    spec = http.get("/openapi.json").json()
    for path, ops in spec["paths"].items():
        if not path.startswith("/v1"):
            continue
        for op in ops.values():
            statuses = set(op["responses"])
            assert {"400", "401", "404", "413", "422", "429"} <= statuses, (path, statuses)
            for status in statuses - {"200", "201", "204"}:
                schema = op["responses"][status]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorOut"}, (path, status)
            assert op["security"] == [{"bearer": []}]
