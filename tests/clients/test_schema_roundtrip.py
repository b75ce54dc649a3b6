"""One schema, live: every resource from a real server through gRPC and HTTP, and through
the three clients, is the same to the bit whichever way it came, and decoding then
re-encoding an answer gives back exactly what the server sent (``proto.wire`` and its
codecs; the codec-level round trips with random values are in
``tests/service/test_schema.py``)."""

from __future__ import annotations

import asyncio
import dataclasses

import grpc
import httpx
import numpy as np
import pytest

from clients import AsyncEstimatorClient, EstimatorClient, HttpEstimatorClient, Message
from clients import grpc_common as common
from clients.errors import InvalidArgumentError
from proto import wire
from proto.json_codec import from_json, to_json
from proto.pb_codec import from_pb, to_pb
from proto.vrkn.estimator.v1 import estimator_pb2 as pb
from proto.vrkn.estimator.v1 import estimator_pb2_grpc as pb_grpc
from tests.service.conftest import PERIOD, PROPRIO, TOKEN
from tests.service.wire_samples import assert_identical

pytestmark = pytest.mark.slow
METADATA = (("authorization", f"Bearer {TOKEN}"),)


@pytest.fixture(scope="module")
def both(server):
    """The sync gRPC client and the HTTP client."""
    g = EstimatorClient(server.grpc_target, token=TOKEN, timeout=10.0)
    h = HttpEstimatorClient(server.http_url, token=TOKEN, timeout=10.0)
    yield g, h
    g.close()
    h.close()


@pytest.fixture(scope="module")
def raw(server):
    """A bare gRPC stub and a bare HTTP client: the answers as the server sent them."""
    channel = grpc.insecure_channel(server.grpc_target)
    http = httpx.Client(base_url=server.http_url, timeout=10.0,
                        headers={"authorization": f"Bearer {TOKEN}"})
    yield pb_grpc.EstimatorStub(channel), http
    channel.close()
    http.close()


@pytest.fixture(scope="module")
def session(both):
    """A session with a few ticks of messages and actions, and its id."""
    g, _ = both
    sid = g.create_session(start_time=0.0).session_id
    rng = np.random.default_rng(0)
    for k in range(5):
        g.send_message(sid, "proprio", k * PERIOD + 0.01,
                       rng.standard_normal(PROPRIO).astype(np.float32))
        g.report_action(sid, k * PERIOD + 0.04, rng.uniform(-1, 1, 2))
    return sid


def test_models(both, raw):
    g, h = both
    stub, http = raw
    models = g.list_models()
    assert_identical(models, h.list_models())
    assert [to_pb(m) for m in models] == list(stub.ListModels(pb.ListModelsRequest(),
                                                              metadata=METADATA).models)
    answer = http.get("/v1/models").json()
    assert [to_json(from_json(wire.ModelInfo, m)) for m in answer] == answer
    assert models[0].state_names and models[0].sensor("proprio").decoded


def test_session(both, raw, session):
    g, h = both
    stub, http = raw
    a, b = g.describe_session(session), h.describe_session(session)
    assert a.created > 1e9 and a.newest_tick == 4 and a.accepted == {"proprio": 5}
    assert_identical(dataclasses.replace(a, idle_s=0.0), dataclasses.replace(b, idle_s=0.0))
    message = stub.DescribeSession(pb.SessionRef(session_id=session), metadata=METADATA)
    assert to_pb(common.session_from_pb(message)) == message
    answer = http.get(f"/v1/sessions/{session}").json()
    assert to_json(from_json(wire.SessionInfo, answer)) == answer


@pytest.mark.parametrize("t", [None, 2 * PERIOD, 20 * PERIOD])  # newest, observed, ahead
def test_belief(both, raw, session, t):
    g, h = both
    stub, http = raw
    belief = g.get_belief(session, t)
    assert belief.state is not None and set(belief.decoded) == set(belief.decoded_var)
    assert_identical(belief, h.get_belief(session, t))

    async def via_asyncio():
        async with AsyncEstimatorClient(g.target, token=TOKEN, timeout=10.0) as client:
            return await client.get_belief(session, t)

    assert_identical(belief, asyncio.run(via_asyncio()))
    request = pb.BeliefRequest(session_id=session)
    if t is not None:
        request.timestamp = t
    message = stub.GetBelief(request, metadata=METADATA)
    assert to_pb(common.belief_from_pb(message)) == message
    answer = http.get(f"/v1/sessions/{session}/belief",
                      params=None if t is None else {"t": repr(t)}).json()
    assert to_json(from_json(wire.Belief, answer)) == answer


def test_ack_and_action(both, session):
    g, h = both
    value = np.array([0.25, -1.5, 3.0], np.float32)
    acks = [c.send_message(session, "proprio", 3 * PERIOD + 0.02, value, sequence=2 ** 63 + 1,
                           return_belief=True) for c in (g, h)]
    assert acks[0].ok and acks[0].sequence == 2 ** 63 + 1 and acks[0].timestamp == 3 * PERIOD + 0.02
    assert acks[0].belief is not None and acks[0].belief.tick == 3
    assert_identical(*acks)
    actions = [c.report_action(session, 3 * PERIOD + 0.04, [0.5, -0.25]) for c in (g, h)]
    assert actions[0].source == "reported" and actions[0].values.dtype == np.float32
    assert_identical(*actions)


def test_a_refused_streamed_message_round_trips_with_its_error(both, raw, session):
    g, _ = both
    stub, _ = raw
    bad = Message(session, "proprio", 0.3, np.zeros(PROPRIO + 1, np.float32), sequence=5)
    [ack] = list(g.stream_messages([bad]))
    assert isinstance(ack.error, InvalidArgumentError) and ack.error.reason == "bad_shape"
    assert (ack.sequence, ack.session_id, ack.sensor, ack.timestamp) == (5, session,
                                                                         "proprio", 0.3)
    from clients.messages import to_pb as message_pb

    [message] = list(stub.StreamMessages(iter([message_pb(bad)]), metadata=METADATA))
    assert to_pb(from_pb(wire.Ack, message)) == message
    assert from_pb(wire.Ack, message).error == wire.Error(
        "INVALID_ARGUMENT", "bad_shape", ack.error.message)
