"""The client library against a real local server (gRPC sync, gRPC asyncio, HTTP): every
operation, images encoded and raw, the stream, and errors mapped to exceptions that carry
the server's message."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from clients import (
    AsyncEstimatorClient,
    EstimatorClient,
    HttpEstimatorClient,
    InvalidArgumentError,
    Message,
    NotFoundError,
    OutOfRangeError,
    UnauthenticatedError,
)
from tests.service.conftest import PERIOD, PROPRIO, TOKEN

pytestmark = pytest.mark.slow
RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)


@pytest.fixture(scope="module", params=["grpc", "http"])
def client(request, server):
    if request.param == "grpc":
        c = EstimatorClient(server.grpc_target, token=TOKEN, timeout=5.0)
    else:
        c = HttpEstimatorClient(server.http_url, token=TOKEN, timeout=5.0)
    yield c
    c.close()


def test_models(client):
    [model] = client.list_models()
    assert model.name == "tiny" and model.is_default
    assert model.control_period_s == pytest.approx(PERIOD)
    assert [s.name for s in model.sensors] == ["proprio", "image"]
    assert model.sensor("proprio").decoded and model.sensor("image").shape == (64, 64, 3)
    assert model.action_size == 2 and np.all(model.action_low == -1)
    assert client.model().name == client.model("tiny").name == "tiny"
    with pytest.raises(KeyError, match="no model 'other'"):
        client.model("other")


def test_session_lifecycle(client):
    s = client.create_session(start_time=0.0, history_window_s=0.5)
    assert s.model == "tiny" and s.start_time == 0.0 and s.history_window_s == 0.5
    assert s.newest_tick == -1 and s.newest_time is None
    client.send_message(s.session_id, "proprio", 0.01, np.ones(PROPRIO, np.float32))
    info = client.describe_session(s.session_id)
    assert info.accepted == {"proprio": 1} and info.newest_tick == 0
    reset = client.reset_session(s.session_id, start_time=1.0)
    assert reset.start_time == 1.0 and reset.newest_tick == -1
    client.close_session(s.session_id)
    with pytest.raises(NotFoundError, match=s.session_id) as e:
        client.describe_session(s.session_id)
    assert e.value.code == "NOT_FOUND"


@pytest.mark.parametrize("encoding", ["png", "jpeg", "raw", "bytes"])
def test_images_encoded_or_raw(client, encoding):
    from clients.messages import encode_image

    sid = client.create_session(start_time=0.0).session_id
    value = encode_image(IMAGE, "png") if encoding == "bytes" else IMAGE
    ack = client.send_message(sid, "image", 0.02, value, sequence=7,
                              encoding=None if encoding == "bytes" else encoding,
                              return_belief=True)
    assert ack.sequence == 7 and ack.tick == 0 and ack.applied and ack.ok
    assert ack.belief is not None and ack.belief.tick == 0
    assert ack.belief.mean.shape == ack.belief.var.shape == (12,)
    assert ack.belief.decoded["proprio"].shape == (PROPRIO,)
    client.close_session(sid)


def test_png_and_raw_give_the_same_belief(client):
    beliefs = []
    for encoding in ("png", "raw"):
        sid = client.create_session(start_time=0.0).session_id
        beliefs.append(client.send_message(sid, "image", 0.01, IMAGE, encoding=encoding,
                                           return_belief=True).belief)
        client.close_session(sid)
    np.testing.assert_array_equal(beliefs[0].mean, beliefs[1].mean)


def test_actions_and_beliefs(client):
    sid = client.create_session(start_time=0.0).session_id
    client.send_message(sid, "proprio", 0.01, [0.1, 0.2, 0.3])
    reported = client.report_action(sid, 0.01, np.array([0.5, -0.5]))
    assert reported.source == "reported" and reported.recorded and reported.tick == 0
    np.testing.assert_allclose(reported.values, [0.5, -0.5])
    policy = client.get_action(sid, 0.01)  # the reported action of the tick stays
    assert policy.source == "policy" and not policy.recorded
    policy = client.get_action(sid, PERIOD + 0.01)
    assert policy.recorded and policy.tick == 1 and policy.values.shape == (2,)
    assert np.all(np.abs(policy.values) <= 1)
    now = client.get_belief(sid)
    assert now.tick == 1 and not now.predicted and now.newest_tick == 1
    ahead = client.get_belief(sid, 5 * PERIOD + 0.01)
    assert ahead.predicted and ahead.tick == 5 and np.isfinite(ahead.reward)
    assert set(ahead.decoded) == {"proprio"}
    client.close_session(sid)


def test_grpc_and_http_agree(server):
    events = [("proprio", 0.01, np.array([0.3, -0.1, 0.2], np.float32)),
              ("image", 0.03, IMAGE), ("proprio", 0.06, np.array([0.1, 0.0, -0.2], np.float32))]
    beliefs = []
    with EstimatorClient(server.grpc_target, token=TOKEN) as g, \
            HttpEstimatorClient(server.http_url, token=TOKEN) as h:
        for c in (g, h):
            sid = c.create_session(start_time=0.0).session_id
            for sensor, t, value in events:
                c.send_message(sid, sensor, t, value)
            c.report_action(sid, 0.04, [0.25, -0.75])
            beliefs.append(c.get_belief(sid, 0.06))
            c.close_session(sid)
    np.testing.assert_allclose(beliefs[0].mean, beliefs[1].mean, atol=1e-6)
    np.testing.assert_allclose(beliefs[0].decoded["proprio"], beliefs[1].decoded["proprio"],
                               atol=1e-6)


def test_errors_carry_the_servers_message(client):
    sid = client.create_session(start_time=0.0).session_id
    with pytest.raises(NotFoundError, match="no-such-session"):
        client.get_belief("no-such-session")
    with pytest.raises(NotFoundError, match="lidar"):
        client.send_message(sid, "lidar", 0.01, [1.0])
    with pytest.raises(InvalidArgumentError, match="shape") as e:
        client.send_message(sid, "proprio", 0.01, [1.0, 2.0])
    assert e.value.code == "INVALID_ARGUMENT"
    with pytest.raises(InvalidArgumentError, match="bound"):
        client.report_action(sid, 0.01, [2.0, 0.0])
    client.send_message(sid, "proprio", 5.0, [0.0] * PROPRIO)
    with pytest.raises(OutOfRangeError, match="window") as e:
        client.send_message(sid, "proprio", 0.01, [0.0] * PROPRIO)
    if isinstance(client, HttpEstimatorClient):
        assert e.value.reason == "too_old" and e.value.http_status == 400
    info = client.describe_session(sid)
    assert info.accepted == {"proprio": 1}  # refusals changed nothing
    assert sum(info.refused.values()) == 4
    client.close_session(sid)


@pytest.mark.parametrize("kind", ["grpc", "http"])
def test_wrong_token(server, kind):
    cls, target = ((EstimatorClient, server.grpc_target) if kind == "grpc" else
                   (HttpEstimatorClient, server.http_url))
    with cls(target, token="wrong") as c, pytest.raises(UnauthenticatedError, match="token"):
        c.list_models()
    with cls(target, token="") as c, pytest.raises(UnauthenticatedError):
        c.list_models()
    with cls(target, token="wrong") as c:
        assert c.health()  # health checks are open


def test_stream(server):
    with EstimatorClient(server.grpc_target, token=TOKEN) as c:
        sid = c.create_session(start_time=0.0).session_id
        msgs = [Message(sid, "proprio", k * PERIOD + 0.01, np.full(PROPRIO, k, np.float32),
                        sequence=k) for k in range(5)]
        msgs.insert(2, Message(sid, "proprio", 0.02, [1.0], sequence=99))  # bad shape
        msgs.append(Message(sid, "image", 0.03, IMAGE, sequence=5, return_belief=True))
        acks = {a.sequence: a for a in c.stream_messages(msgs)}
        assert sorted(acks) == [0, 1, 2, 3, 4, 5, 99]
        assert isinstance(acks[99].error, InvalidArgumentError) and not acks[99].ok
        assert "shape" in acks[99].error.message and acks[99].error.reason == "bad_shape"
        assert all(acks[k].ok and acks[k].tick == k for k in range(5))
        assert acks[5].belief is not None and acks[5].belief.tick == 0
        assert c.describe_session(sid).accepted == {"proprio": 5, "image": 1}


def test_async_client(server):
    async def run():
        async with AsyncEstimatorClient(server.grpc_target, token=TOKEN, timeout=5.0) as c:
            assert await c.health()
            await c.wait_until_ready(5.0)
            assert (await c.model()).name == "tiny"
            s = await c.create_session(start_time=0.0)
            sid = s.session_id
            ack = await c.send_message(sid, "image", 0.01, IMAGE, encoding="raw",
                                       return_belief=True)
            assert ack.belief.tick == 0
            assert (await c.report_action(sid, 0.01, [0.0, 0.1])).source == "reported"
            assert (await c.get_action(sid, PERIOD + 0.01)).tick == 1
            assert (await c.get_belief(sid, 0.2)).predicted
            assert (await c.describe_session(sid)).actions == 2
            assert (await c.reset_session(sid)).newest_tick == -1

            async def msgs():
                for k in range(3):
                    yield Message(sid, "proprio", 0.01 + k * PERIOD, [0.0, 1.0, 2.0],
                                  sequence=k)
                yield Message(sid, "nope", 0.01, [0.0], sequence=3)

            acks = [a async for a in c.stream_messages(msgs())]
            assert sorted(a.sequence for a in acks) == [0, 1, 2, 3]
            assert isinstance(next(a for a in acks if a.sequence == 3).error, NotFoundError)
            await c.close_session(sid)
            with pytest.raises(NotFoundError, match=sid):
                await c.get_belief(sid)
        async with AsyncEstimatorClient(server.grpc_target, token="bad") as c:
            with pytest.raises(UnauthenticatedError):
                await c.list_models()

    asyncio.run(run())


def test_example_controller(server, capsys, monkeypatch):
    from clients import example_controller

    monkeypatch.setenv("VRKN_TOKEN", TOKEN)
    assert example_controller.main(["--server", server.grpc_target, "--ticks", "12"]) == 0
    out = capsys.readouterr().out
    assert "tick 11: action" in out and "decoded {'proprio'" in out
