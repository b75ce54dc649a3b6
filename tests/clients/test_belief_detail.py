"""What a belief carries, asked through each transport and client (``belief_detail`` on a
message, ``detail`` on GetBelief): LATENT has no state and no decoded estimates, STATE the
state only, FULL (and a request that does not say) both; bad levels are refused."""

from __future__ import annotations

import asyncio

import grpc
import httpx
import numpy as np
import pytest

from clients import (
    AsyncEstimatorClient,
    BeliefDetail,
    EstimatorClient,
    HttpEstimatorClient,
    Message,
)
from proto.vrkn.estimator.v1 import estimator_pb2 as pb
from proto.vrkn.estimator.v1 import estimator_pb2_grpc as pb_grpc
from tests.service.conftest import PERIOD, PROPRIO, STATE_NAMES, TOKEN

pytestmark = pytest.mark.slow
LEVELS = [None, BeliefDetail.LATENT, BeliefDetail.STATE, BeliefDetail.FULL]
AUTH = (("authorization", f"Bearer {TOKEN}"),)


def assert_carries(belief, detail):
    """What a belief of ``detail`` (None: not said, so FULL) holds, and what it lacks."""
    level = BeliefDetail.of(detail)
    assert belief.mean.shape == belief.var.shape == (12,) and np.isfinite(belief.reward)
    if level.state:
        assert belief.state is not None and belief.state.names == STATE_NAMES
    else:
        assert belief.state is None
    if level.decoded:
        assert set(belief.decoded) == set(belief.decoded_var) == {"proprio"}
        assert belief.decoded_var["proprio"].shape == (PROPRIO,)
    else:
        assert belief.decoded == {} and belief.decoded_var == {}


@pytest.fixture(scope="module", params=["grpc", "http"])
def client(request, server):
    c = (EstimatorClient(server.grpc_target, token=TOKEN) if request.param == "grpc" else
         HttpEstimatorClient(server.http_url, token=TOKEN))
    yield c
    c.close()


@pytest.mark.parametrize("detail", LEVELS, ids=lambda d: "unsaid" if d is None else d.name)
def test_each_level_through_each_client(client, detail):
    sid = client.create_session(start_time=0.0).session_id
    ack = client.send_message(sid, "proprio", 0.01, np.ones(PROPRIO, np.float32),
                              return_belief=True, belief_detail=detail)
    assert ack.ok and ack.belief.tick == 0
    assert_carries(ack.belief, detail)
    # an image message asking for its belief takes the other path: the same levels
    image = np.zeros((64, 64, 3), np.uint8)
    ack = client.send_message(sid, "image", 0.02, image, return_belief=True,
                              belief_detail=detail, encoding="raw")
    assert_carries(ack.belief, detail)
    assert_carries(client.get_belief(sid, 0.01, detail=detail), detail)
    assert_carries(client.get_belief(sid, 5 * PERIOD, detail=detail), detail)  # predicted
    client.close_session(sid)


def test_levels_agree_with_each_other_and_across_transports(server):
    with EstimatorClient(server.grpc_target, token=TOKEN) as g, \
            HttpEstimatorClient(server.http_url, token=TOKEN) as h:
        sid = g.create_session(start_time=0.0).session_id
        g.send_message(sid, "proprio", 0.01, np.full(PROPRIO, 0.5, np.float32))
        full = g.get_belief(sid)
        for c in (g, h):
            for detail in LEVELS[1:]:
                b = c.get_belief(sid, detail=detail)
                np.testing.assert_array_equal(b.mean, full.mean)
                np.testing.assert_array_equal(b.var, full.var)
                if detail.state:
                    np.testing.assert_array_equal(b.state.var, full.state.var)


def test_async_client_and_the_stream(server):
    async def run():
        async with AsyncEstimatorClient(server.grpc_target, token=TOKEN) as c:
            sid = (await c.create_session(start_time=0.0)).session_id
            ack = await c.send_message(sid, "proprio", 0.01, np.ones(PROPRIO, np.float32),
                                       return_belief=True, belief_detail=BeliefDetail.STATE)
            assert_carries(ack.belief, BeliefDetail.STATE)
            assert_carries(await c.get_belief(sid, detail=BeliefDetail.LATENT),
                           BeliefDetail.LATENT)
            msgs = [Message(sid, "proprio", k * PERIOD + 0.01, np.ones(PROPRIO, np.float32),
                            sequence=k, return_belief=True, belief_detail=LEVELS[k])
                    for k in range(4)]
            acks = {a.sequence: a async for a in c.stream_messages(msgs)}
            for k, detail in enumerate(LEVELS):
                assert_carries(acks[k].belief, detail)

    asyncio.run(run())


def test_a_level_that_is_none_is_refused(server):
    with grpc.insecure_channel(server.grpc_target) as ch:
        stub = pb_grpc.EstimatorStub(ch)
        sid = stub.CreateSession(pb.CreateSessionRequest(start_time=0.0),
                                 metadata=AUTH).session_id
        with pytest.raises(grpc.RpcError) as e:
            stub.GetBelief(pb.BeliefRequest(session_id=sid, detail=9), metadata=AUTH)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "belief detail 9 is not one of" in e.value.details()
        [ack] = stub.StreamMessages(iter([pb.SensorMessage(
            session_id=sid, sensor="proprio", timestamp=0.01, sequence=4, return_belief=True,
            belief_detail=9, vector=pb.FloatVector(values=[0.0] * PROPRIO))]), metadata=AUTH)
        assert ack.error.code == "INVALID_ARGUMENT" and ack.error.reason == "bad_detail"
    headers = {"authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=server.http_url, headers=headers) as h:
        r = h.get(f"/v1/sessions/{sid}/belief", params={"detail": "everything"})
        assert r.status_code == 422 and "latent" in r.text
        r = h.post(f"/v1/sessions/{sid}/messages", json={
            "sensor": "proprio", "timestamp": 0.01, "values": [0.0] * PROPRIO,
            "return_belief": True, "belief_detail": 1})
        assert r.status_code == 422
        r = h.post(f"/v1/sessions/{sid}/messages", json={
            "sensor": "proprio", "timestamp": 0.01, "values": [0.0] * PROPRIO,
            "return_belief": True, "belief_detail": "latent"})
        assert r.status_code == 200 and r.json()["belief"]["state"] is None
