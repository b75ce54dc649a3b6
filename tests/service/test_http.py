"""The HTTP transport on a real server: the same operations in JSON (base64 PNG, nested
lists, raw base64 arrays), status codes for bad input, auth, health, readiness, metrics
and OpenAPI."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

from tests.service.conftest import PERIOD, STATE_NAMES, TOKEN, png, png_header, random_stream
from tests.service.test_session_core import offline_beliefs

pytestmark = pytest.mark.slow
ATOL = 1e-5


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.http_url, timeout=30,
                      headers={"authorization": f"Bearer {TOKEN}"}) as client:
        yield client


def body_of(event, form="png"):
    _, name, t, value = event
    if name != "image":
        return {"sensor": name, "timestamp": t, "values": value.tolist()}
    if form == "png":
        return {"sensor": name, "timestamp": t,
                "image_base64": base64.b64encode(png(value)).decode()}
    if form == "nested":
        return {"sensor": name, "timestamp": t, "values": value.tolist()}
    return {"sensor": name, "timestamp": t, "raw": {
        "shape": list(value.shape), "dtype": "uint8",
        "data_base64": base64.b64encode(value.tobytes()).decode()}}


def create(http, **body):
    r = http.post("/v1/sessions", json={"start_time": 0.0, **body})
    assert r.status_code == 201, r.text
    return r.json()["session_id"]


@pytest.mark.parametrize("form", ["png", "nested", "raw"])
def test_beliefs_equal_the_offline_filter(http, model, form):
    events = random_stream(8, seed=11)
    expected = offline_beliefs(model, events, 8)
    sid = create(http)
    for seq, event in enumerate(events):
        if event[0] == "act":
            r = http.post(f"/v1/sessions/{sid}/actions",
                          json={"timestamp": event[2], "values": event[3].tolist()})
        else:
            r = http.post(f"/v1/sessions/{sid}/messages",
                          json={**body_of(event, form), "sequence": seq})
            assert r.json()["sequence"] == seq
        assert r.status_code == 200, r.text
    for k in range(8):
        b = http.get(f"/v1/sessions/{sid}/belief", params={"t": k * PERIOD}).json()
        assert b["tick"] == k
        np.testing.assert_allclose(b["mean"], expected[k].mean[0], atol=ATOL)
        np.testing.assert_allclose(b["var"], expected[k].var[0], atol=ATOL)
    http.delete(f"/v1/sessions/{sid}")


def test_operations(http, model):
    assert http.get("/v1/models").json()[0]["name"] == "tiny"
    sid = create(http)
    r = http.post(f"/v1/sessions/{sid}/messages", json={
        "sensor": "proprio", "timestamp": 0.01, "values": [0.1, 0.2, 0.3],
        "return_belief": True})
    ack = r.json()
    assert ack["tick"] == 0 and ack["applied"] and len(ack["belief"]["mean"]) == 12
    assert set(ack["belief"]["decoded"]) == {"proprio"}
    assert set(ack["belief"]["decoded_var"]) == {"proprio"}
    state = ack["belief"]["state"]
    assert state["names"] == list(STATE_NAMES) and len(state["mean"]) == len(state["var"]) == 3
    act = http.post(f"/v1/sessions/{sid}/policy", json={"timestamp": 0.02}).json()
    assert act["source"] == "policy" and act["recorded"] and len(act["values"]) == 2
    ahead = http.get(f"/v1/sessions/{sid}/belief", params={"t": 0.5}).json()
    assert ahead["predicted"] and ahead["tick"] == 10 and ahead["newest_tick"] == 0
    d = http.get(f"/v1/sessions/{sid}").json()
    assert d["accepted"] == {"proprio": 1} and d["actions"] == 1 and d["newest_tick"] == 0
    d = http.post(f"/v1/sessions/{sid}/reset", json={}).json()
    assert d["newest_tick"] == -1 and d["start_time"] is None
    b = http.get(f"/v1/sessions/{sid}/belief").json()
    np.testing.assert_array_equal(b["mean"], model.manifest.initial_mean)
    assert http.delete(f"/v1/sessions/{sid}").status_code == 204
    assert http.get(f"/v1/sessions/{sid}").status_code == 404


BAD = {
    "unknown sensor": ({"sensor": "lidar", "timestamp": 1.0, "values": [1, 2, 3]}, 404,
                       "unknown_sensor"),
    "wrong shape": ({"sensor": "proprio", "timestamp": 1.0, "values": [1, 2]}, 400,
                    "bad_shape"),
    # JSON bodies as text: NaN and a 400-digit integer are not what json.dumps writes.
    "nan": ('{"sensor": "proprio", "timestamp": 1.0, "values": [1, NaN, 2]}', 400,
            "not_finite"),
    "huge integer": ('{"sensor": "proprio", "timestamp": 1.0, "values": [1, 1%s, 2]}'
                     % ("0" * 400), 400, "not_finite"),
    "ragged": ({"sensor": "proprio", "timestamp": 1.0, "values": [1, [2], 3]}, 400,
               "bad_dtype"),
    # Strict types: a string or a boolean is not a number, a number not a boolean.
    "not numbers": ({"sensor": "proprio", "timestamp": 1.0, "values": ["a", 1, 2]}, 422,
                    "bad_request"),
    "string number": ({"sensor": "proprio", "timestamp": 1.0, "values": ["0.1", 1, 2]}, 422,
                      "bad_request"),
    "boolean number": ({"sensor": "proprio", "timestamp": 1.0, "values": [True, 1, 2]}, 422,
                       "bad_request"),
    "string timestamp": ({"sensor": "proprio", "timestamp": "0.043", "values": [1, 2, 3]},
                         422, "bad_request"),
    "number as boolean": ({"sensor": "proprio", "timestamp": 1.0, "values": [1, 2, 3],
                           "return_belief": 1}, 422, "bad_request"),
    "huge timestamp": ({"sensor": "proprio", "timestamp": 1e307, "values": [1, 2, 3]}, 400,
                       "bad_timestamp"),
    "lone surrogate dtype": ('{"sensor": "proprio", "timestamp": 1.0, "raw": {"shape": [3], '
                             '"dtype": "\\ud800", "data_base64": ""}}', 400, "bad_dtype"),
    "decompression bomb": ({"sensor": "image", "timestamp": 1.0,
                            "image_base64": base64.b64encode(png_header(20000, 20000)).decode()},
                           400, "too_large"),
    "image values": ({"sensor": "image", "timestamp": 1.0,
                      "values": np.full((64, 64, 3), 300).tolist()}, 400, "bad_dtype"),
    "wrong dtype": ({"sensor": "image", "timestamp": 1.0, "raw": {
        "shape": [64, 64, 3], "dtype": "float32", "data_base64": ""}}, 400, "bad_dtype"),
    "bad base64": ({"sensor": "image", "timestamp": 1.0, "image_base64": "%%%"}, 400,
                   "bad_encoding"),
    "encoding": ({"sensor": "image", "timestamp": 1.0,
                  "image_base64": base64.b64encode(b"not an image").decode()}, 400,
                 "bad_encoding"),
    "two payloads": ({"sensor": "proprio", "timestamp": 1.0, "values": [1, 2, 3],
                      "image_base64": "AAAA"}, 400, "bad_payload"),
    "no payload": ({"sensor": "proprio", "timestamp": 1.0}, 400, "no_payload"),
    "too old": ({"sensor": "proprio", "timestamp": 0.0, "values": [1, 2, 3]}, 400, "too_old"),
    "missing field": ({"timestamp": 1.0, "values": [1, 2, 3]}, 422, "bad_request"),
    "oversize": ({"sensor": "image", "timestamp": 1.0,
                  "image_base64": base64.b64encode(bytes(100_001)).decode()}, 400, "too_large"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_message_gets_its_status_and_changes_nothing(http, case):
    sid = create(http)
    for event in random_stream(30, seed=2):
        if event[0] == "obs" and event[1] == "proprio":
            http.post(f"/v1/sessions/{sid}/messages", json=body_of(event))
    before = (http.get(f"/v1/sessions/{sid}").json(),
              http.get(f"/v1/sessions/{sid}/belief").json())
    body, status, reason = BAD[case]
    if isinstance(body, str):
        r = http.post(f"/v1/sessions/{sid}/messages", content=body.encode(),
                      headers={"content-type": "application/json"})
    else:
        r = http.post(f"/v1/sessions/{sid}/messages", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["reason"] == reason and r.json()["error"]["message"]
    after = (http.get(f"/v1/sessions/{sid}").json(),
             http.get(f"/v1/sessions/{sid}/belief").json())
    for d in (before[0], after[0]):
        d.pop("refused"), d.pop("idle_s")
    assert after == before
    http.delete(f"/v1/sessions/{sid}")


def test_request_body_above_the_limit_is_413(http):
    sid = create(http)
    r = http.post(f"/v1/sessions/{sid}/messages", content=b"x" * 300_000,
                  headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["reason"] == "too_large"
    http.delete(f"/v1/sessions/{sid}")


def test_unknown_session_and_bad_actions(http):
    assert http.get("/v1/sessions/nope/belief").status_code == 404
    assert http.post("/v1/sessions/nope/policy", json={"timestamp": 0}).status_code == 404
    assert http.post("/v1/sessions", json={"model": "nope"}).status_code == 404
    sid = create(http)
    r = http.post(f"/v1/sessions/{sid}/actions", json={"timestamp": 0, "values": [5, 0]})
    assert r.status_code == 400 and "outside the bounds" in r.json()["error"]["message"]
    r = http.get(f"/v1/sessions/{sid}/belief", params={"t": -1})
    assert r.status_code == 400 and r.json()["error"]["code"] == "OUT_OF_RANGE"
    r = http.post("/v1/sessions", json={"history_window_s": 99})
    assert r.status_code == 400
    http.delete(f"/v1/sessions/{sid}")


def test_session_limit_is_429(http):
    created = []
    try:
        for _ in range(60):
            r = http.post("/v1/sessions", json={})
            if r.status_code != 201:
                break
            created.append(r.json()["session_id"])
        assert r.status_code == 429 and r.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
    finally:
        for sid in created:
            http.delete(f"/v1/sessions/{sid}")


def test_auth_health_and_docs(server):
    with httpx.Client(base_url=server.http_url) as anon:
        assert anon.get("/healthz").json() == {"status": "ok"}
        assert anon.get("/readyz").json()["status"] == "ready"
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
            for r in (anon.get("/v1/models", headers=headers),
                      anon.post("/v1/sessions", json={}, headers=headers),
                      anon.get("/metrics", headers=headers)):
                assert r.status_code == 401, r.text
                assert r.headers["www-authenticate"] == "Bearer"
        spec = anon.get("/openapi.json").json()
        assert "/v1/sessions/{session_id}/messages" in spec["paths"]
        assert anon.get("/docs").status_code == 200


def test_metrics(http, server):
    import grpc

    from proto.vrkn.estimator.v1 import estimator_pb2 as pb
    from proto.vrkn.estimator.v1 import estimator_pb2_grpc as pb_grpc

    sid = create(http)
    http.post(f"/v1/sessions/{sid}/messages", json={"sensor": "proprio", "timestamp": 0.0,
                                                    "values": [0, 0, 0]})
    http.post(f"/v1/sessions/{sid}/messages", json={"sensor": "proprio", "timestamp": -1.0,
                                                    "values": [0, 0, 0]})
    with grpc.insecure_channel(server.grpc_target) as ch:
        pb_grpc.EstimatorStub(ch).SendMessage(pb.SensorMessage(
            session_id=sid, sensor="image", timestamp=0.01,
            encoded_image=png(np.zeros((64, 64, 3), np.uint8))),
            metadata=(("authorization", f"Bearer {TOKEN}"),))
    text = http.get("/metrics").text
    assert 'vrkn_messages_total{sensor="proprio",transport="http"}' in text
    assert 'vrkn_messages_total{sensor="image",transport="grpc"}' in text
    assert 'vrkn_refused_total{reason="before_start"}' in text
    assert 'vrkn_refused_total{reason="wrong_token"}' in text
    assert 'vrkn_request_seconds_bucket{le="0.001",op="message",transport="http"}' in text
    assert 'vrkn_encoder_batch_size_count{encoder="tiny/image"}' in text
    for name in ("vrkn_batch_wait_seconds", "vrkn_batch_return_seconds"):
        assert f'{name}_count{{encoder="tiny/image"}}' in text
    sessions = [line for line in text.splitlines() if line.startswith("vrkn_active_sessions ")]
    assert float(sessions[0].split()[1]) >= 1
    http.delete(f"/v1/sessions/{sid}")
