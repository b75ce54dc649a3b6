"""Hostile values and request builders for tests/service/test_fuzz.py: hypothesis
strategies that take a valid request of either transport and malform one field (any JSON
type, a wrong protobuf value, bytes that are not JSON or protobuf), and the fixed sweeps
of every field."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote

import numpy as np
from hypothesis import strategies as st

from proto.vrkn.estimator.v1 import estimator_pb2 as pb
from tests.service.conftest import PERIOD, png, png_header

T = 3 * PERIOD + 0.01  # a valid time in the fuzz session (newest tick 3)
PNG = png(np.zeros((64, 64, 3), np.uint8))

# -- hostile values ----------------------------------------------------------------------
HUGE_INT = json.loads("1" + "0" * 400)
SPECIAL = [None, True, False, 0, -1, 2**63, -(2**64), HUGE_INT, 1e307, -1.79e308, 2e12,
           5e-324, -0.0, float("nan"), float("inf"), float("-inf"), "", "0.043", "NaN",
           "true", "\ud800", "x" * 16384, "proprio", "image", "uint8", "float32", [], {},
           [[]], ["0.1"], [True], [None], [HUGE_INT], [float("nan")] * 3, [1e307] * 3,
           [[[0] * 3] * 64] * 64, [3] * 5000, {"a": 1}, base64.b64encode(PNG).decode(),
           base64.b64encode(png_header(20000, 20000)).decode(), base64.b64encode(PNG[:60])
           .decode(), "%%%", "=" * 8]
JSON_VALUES = st.recursive(
    st.one_of(st.sampled_from(SPECIAL), st.none(), st.booleans(), st.integers(),
              st.floats(), st.text(max_size=40)),
    lambda inner: st.one_of(st.lists(inner, max_size=6),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
NOT_JSON = st.one_of(st.binary(max_size=64), st.sampled_from([
    b"", b"{", b"[", b"null", b"\xff\xfe\x00", b'{"sensor": "proprio"', b"{}" * 1000,
    b"[" * 5000 + b"]" * 5000, b'{"timestamp": 1e999999}', b'"\\ud800"']))

# -- HTTP ---------------------------------------------------------------------------------
HTTP_OPS = {  # method, path (under /v1), body or query
    "create": ("POST", "/sessions", {"model": "tiny", "start_time": 0.0,
                                     "history_window_s": 0.5}),
    "describe": ("GET", "/sessions/{sid}", None),
    "reset": ("POST", "/sessions/{sid}/reset", {"start_time": 0.0}),
    "close": ("DELETE", "/sessions/{sid}", None),
    "values": ("POST", "/sessions/{sid}/messages", {
        "sensor": "proprio", "timestamp": T, "sequence": 7, "values": [0.1, 0.2, 0.3],
        "return_belief": True}),
    "image": ("POST", "/sessions/{sid}/messages", {
        "sensor": "image", "timestamp": T, "image_base64": base64.b64encode(PNG).decode()}),
    "raw": ("POST", "/sessions/{sid}/messages", {
        "sensor": "image", "timestamp": T, "raw": {
            "shape": [64, 64, 3], "dtype": "uint8",
            "data_base64": base64.b64encode(bytes(64 * 64 * 3)).decode()}}),
    "action": ("POST", "/sessions/{sid}/actions", {"timestamp": T, "values": [0.5, -0.5]}),
    "policy": ("POST", "/sessions/{sid}/policy", {"timestamp": T}),
    "belief": ("GET", "/sessions/{sid}/belief", {"t": T}),
}


def slots(op: str) -> list[tuple[str, ...]]:
    """What can be malformed: each body field (raw's too), the id, the whole body."""
    method, path, body = HTTP_OPS[op]
    slots: list[tuple[str, ...]] = [("body",)] if method == "POST" else []
    if "{sid}" in path:
        slots.append(("sid",))
    for key, value in (body or {}).items():
        slots.append((key,))
        if isinstance(value, dict):
            slots += [(key, sub) for sub in value]
    return slots


@st.composite
def http_cases(draw):
    op = draw(st.sampled_from(sorted(HTTP_OPS)))
    slot = draw(st.sampled_from(slots(op)))
    drop = slot[0] not in ("body", "sid") and draw(st.integers(0, 5)) == 0
    if slot == ("body",):
        value = draw(st.one_of(NOT_JSON, JSON_VALUES))
    elif slot == ("sid",):
        value = draw(st.one_of(st.text(max_size=30), st.sampled_from(
            ["x" * 16384, "\ud800", "..", "%00", " ", "a/b", "\x00"])))
    else:
        value = draw(JSON_VALUES)
    return op, slot, drop, value


def http_request(op: str, sid: str, slot, drop: bool, value):
    method, path, template = HTTP_OPS[op]
    body = json.loads(json.dumps(template)) if template is not None else None
    if slot == ("sid",):
        sid = quote(value, safe="", errors="surrogatepass")
    elif slot != ("body",):
        target = body
        for key in slot[:-1]:
            target = target[key]
        if drop:
            target.pop(slot[-1])
        else:
            target[slot[-1]] = value
    url = "/v1" + path.format(sid=sid)
    if method == "GET":  # the query by hand: httpx would refuse a lone surrogate
        query = "&".join(f"{k}=" + quote(v if isinstance(v, str) else json.dumps(v), safe="",
                                         errors="surrogatepass")
                         for k, v in (body or {}).items())
        return method, url + (f"?{query}" if query else ""), {}
    if slot == ("body",):
        content = value if isinstance(value, bytes) else json.dumps(value).encode()
    else:
        content = json.dumps(body).encode() if body is not None else b""
    return method, url, {"content": content, "headers": {"content-type": "application/json"}}


SWEEP = [None, True, "0.043", "\ud800", "x" * 16384, 1e307, -1.79e308, HUGE_INT, [],
         {"a": [1]}, float("nan")]


# -- gRPC ---------------------------------------------------------------------------------
def grpc_templates(sid: str) -> dict[str, tuple[str, object]]:
    vec = pb.FloatVector(values=[0.1, 0.2, 0.3])
    return {
        "CreateSession": ("unary", pb.CreateSessionRequest(model="tiny", start_time=0.0,
                                                           history_window_s=0.5)),
        "DescribeSession": ("unary", pb.SessionRef(session_id=sid)),
        "ResetSession": ("unary", pb.ResetSessionRequest(session_id=sid, start_time=0.0)),
        "CloseSession": ("unary", pb.SessionRef(session_id=sid)),
        "SendMessage": ("unary", pb.SensorMessage(session_id=sid, sensor="proprio",
                                                  timestamp=T, sequence=3, vector=vec,
                                                  return_belief=True)),
        "StreamMessages": ("stream", pb.SensorMessage(
            session_id=sid, sensor="image", timestamp=T, encoded_image=PNG)),
        "StreamRaw": ("stream", pb.SensorMessage(
            session_id=sid, sensor="image", timestamp=T,
            raw=pb.Tensor(shape=[64, 64, 3], dtype="uint8", data=bytes(64 * 64 * 3)))),
        "ReportAction": ("unary", pb.ActionReport(session_id=sid, timestamp=T,
                                                  values=[0.5, -0.5])),
        "GetAction": ("unary", pb.ActionRequest(session_id=sid, timestamp=T)),
        "GetBelief": ("unary", pb.BeliefRequest(session_id=sid, timestamp=T)),
    }


FD = pb.SensorMessage.DESCRIPTOR.fields_by_name["timestamp"].__class__
SCALARS = {
    FD.TYPE_DOUBLE: st.one_of(st.floats(), st.sampled_from([1e307, -1.79e308, 2e12, 5e-324])),
    FD.TYPE_FLOAT: st.floats(width=32),
    FD.TYPE_STRING: st.one_of(st.text(st.characters(codec="utf-8"), max_size=40),
                              st.sampled_from(["", "x" * 16384, "proprio", "image", "float32",
                                               "uint8", "\x00", "f4,f4", "O", "(2,2)f4"])),
    FD.TYPE_BYTES: st.one_of(st.binary(max_size=200), st.sampled_from(
        [png_header(20000, 20000), PNG[:60], PNG, png(np.zeros((8, 8, 3), np.uint8)),
         bytes(64 * 64 * 3), bytes(64 * 64 * 3 + 1)])),
    FD.TYPE_UINT64: st.integers(0, 2**64 - 1),
    FD.TYPE_INT64: st.integers(-(2**63), 2**63 - 1),
    FD.TYPE_BOOL: st.booleans(),
    FD.TYPE_ENUM: st.integers(-(2**31), 2**31 - 1),  # open enums: any int32 parses
}
WIRE_JUNK = st.one_of(st.binary(min_size=1, max_size=40), st.sampled_from(
    [b"\x0a\x02\xff\xfe", b"\x12\x03\xed\xa0\x80", b"\x0a\x80", b"\x0d\x00", b"\xff" * 10,
     b"\x1a\xff\xff\xff\xff\x0f"]))


@st.composite
def grpc_cases(draw):
    method = draw(st.sampled_from(sorted(grpc_templates("x"))))
    kind = draw(st.sampled_from(["field", "field", "field", "wire"]))
    if kind == "wire":
        return method, ("wire", draw(st.sampled_from(["append", "truncate", "replace"])),
                        draw(WIRE_JUNK), draw(st.integers(0, 1000)))
    template = grpc_templates("x")[method][1]
    path, desc = [], template.DESCRIPTOR
    while True:  # a field, going into Tensor / FloatVector
        field = draw(st.sampled_from(list(desc.fields)))
        path.append(field.name)
        if field.type != FD.TYPE_MESSAGE:
            break
        desc = field.message_type
    element = SCALARS[field.type]
    repeated = field.is_repeated
    value = draw(st.one_of(st.lists(element, max_size=8), st.sampled_from([[3] * 5000])
                           if field.type != FD.TYPE_STRING else st.nothing())
                 if repeated else element)
    return method, ("field", tuple(path), value, draw(st.booleans()))


CLEARABLE = ("session_id", "timestamp", "sensor", "start_time")


def grpc_request(method: str, sid: str, change) -> bytes:
    msg = grpc_templates(sid)[method][1]
    if change[0] == "wire":
        _, how, junk, cut = change
        data = msg.SerializeToString()
        return {"append": data + junk, "truncate": data[:cut % max(1, len(data))],
                "replace": junk}[how]
    _, path, value, clear = change
    target = msg
    for name in path[:-1]:
        target = getattr(target, name)
    if clear and path[-1] in CLEARABLE:
        target.ClearField(path[-1])
    elif isinstance(value, list):
        getattr(target, path[-1])[:] = value
    else:
        setattr(target, path[-1], value)
    return msg.SerializeToString()


def fields(desc, prefix=()):
    for field in desc.fields:
        if field.type == FD.TYPE_MESSAGE:
            yield from fields(field.message_type, (*prefix, field.name))
        else:
            yield (*prefix, field.name), field


GRPC_SWEEP = {FD.TYPE_DOUBLE: [float("nan"), float("inf"), 1e307, -1.79e308],
              FD.TYPE_FLOAT: [float("nan"), 3e38], FD.TYPE_STRING: ["", "x" * 16384, "\x00"],
              FD.TYPE_BYTES: [png_header(20000, 20000), PNG[:60], b"\xff"],
              FD.TYPE_UINT64: [2**64 - 1], FD.TYPE_INT64: [-(2**63)], FD.TYPE_BOOL: [True],
              FD.TYPE_ENUM: [-(2**31), 4, 2**31 - 1]}
