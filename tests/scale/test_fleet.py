"""A fleet on loopback, real processes: redis-server, 2 ``python -m server`` replicas
(the shipped model, ``--store``) and HAProxy in front (server/deploy/haproxy.cfg.template),
every port free on 127.0.0.1, everything stopped at the end. Deterministic: the session
ids are seeded and the ring depends on the replicas' ring ids only (not their ports), so
the same sessions land on the same replicas on every run; the test still only relies on
having two sessions on each.

* Every message of a session lands on one replica, also for a session driven over both
  transports (the replica answering the session directly, the balancer's
  ``x-vrkn-replica`` on gRPC and HTTP, its own counters, and each replica's message metric
  add up).
* After ``kill -9`` of a replica, each of its sessions continues on the other one with the
  belief of the stored snapshot, bit for bit, and counters intact; the other replica's
  sessions are untouched; nothing else is lost.
* The balancer refuses a create or a stream without the affinity header, and a replica
  refuses a message of a session another replica holds (a multi-session stream).
"""

from __future__ import annotations

import json
import random
import re
import time

import grpc
import httpx
import numpy as np
import pytest

from clients import EstimatorClient, HttpEstimatorClient, Message, RetryPolicy
from server.deploy.local import STORE_FLAGS, Fleet
from server.store import keys
from tests.scale.conftest import need

pytestmark = [pytest.mark.scale, pytest.mark.slow]
PERIOD = 0.02
TICKS = 12
# Failover waits for the dead replica's lease (3 s in the fleet's test flags): retry long
# enough (about 10 s of pauses), with a bound.
POLICY = RetryPolicy(max_attempts=100, initial_backoff_s=0.02, max_backoff_s=0.1)
LEASE_S = float(STORE_FLAGS[STORE_FLAGS.index("--store-lease-s") + 1])


def messages_metric(replica) -> float:
    text = httpx.get(f"{replica.http_url}/metrics", timeout=5).text
    return sum(float(v) for v in re.findall(r"^vrkn_messages_total\{[^}]*\} (\S+)$", text,
                                            re.M))


def owner_of(fleet, sid) -> int:
    """The replica that answers the session when asked directly (the other one refuses:
    the owner's lease is live)."""
    answers = [httpx.get(f"{r.http_url}/v1/sessions/{sid}", timeout=5) for r in fleet.replicas]
    held = [i for i, a in enumerate(answers) if a.status_code == 200]
    assert len(held) == 1, [a.text for a in answers]
    other = answers[1 - held[0]].json()["error"]
    assert other["reason"] == "owned_elsewhere", other
    return held[0]


def served_by(fleet, sid) -> tuple[str, str]:
    """The replica the balancer sends the session's calls to, over gRPC and over HTTP (its
    ``x-vrkn-replica`` answer header)."""
    from proto.vrkn.estimator.v1 import estimator_pb2, estimator_pb2_grpc

    with grpc.insecure_channel(fleet.grpc_target) as channel:
        _, call = estimator_pb2_grpc.EstimatorStub(channel).DescribeSession.with_call(
            estimator_pb2.SessionRef(session_id=sid), metadata=(("x-session-id", sid),),
            timeout=10)
        via_grpc = dict(call.initial_metadata())["x-vrkn-replica"]
    r = httpx.get(f"{fleet.http_url}/v1/sessions/{sid}", timeout=10)
    assert r.status_code == 200, r.text
    return via_grpc, r.headers["x-vrkn-replica"]


def feed(client, http, sid, ticks, start, rng) -> int:
    """Proprio (unary, or HTTP for the HTTP session), images (a stream), actions; returns
    the number of sensor messages."""
    stream = []
    for k in range(start, start + ticks):
        t = k * PERIOD
        if http is not None:
            http.send_message(sid, "proprio", t + 0.004, [float(rng.normal())])
        else:
            client.send_message(sid, "proprio", t + 0.004, [float(rng.normal())])
        stream.append(Message(sid, "image", t + 0.011,
                              rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
                              sequence=k, encoding="raw"))
        client.report_action(sid, t + 0.016, [float(rng.uniform(-1, 1))])
    acks = list(client.stream_messages(stream, timeout=60))
    assert [a.error for a in acks] == [None] * ticks
    return 2 * ticks


def stored_accepted(store, sid) -> int:
    raw = store.get(keys(sid)[1])
    return 0 if raw is None else sum(json.loads(raw)["session"]["accepted"].values())


def test_affinity_failover_and_nothing_lost(tmp_path):
    need("redis-server", "haproxy")
    import redis

    rng, ids = np.random.default_rng(0), random.Random(14)
    with Fleet(tmp_path / "fleet", replicas=2) as fleet, \
            EstimatorClient(fleet.grpc_target, retry=POLICY, timeout=30) as client, \
            HttpEstimatorClient(fleet.http_url, retry=POLICY, timeout=30) as http:
        store = redis.Redis.from_url(fleet.store_url)
        # Sessions until each replica holds at least two (the ring decides; bounded).
        sessions: dict[str, int] = {}
        while min(list(sessions.values()).count(i) for i in (0, 1)) < 2:
            assert len(sessions) < 40, sessions
            sid = client.create_session(start_time=0.0,
                                        session_id=f"{ids.getrandbits(128):032x}").session_id
            sessions[sid] = owner_of(fleet, sid)
        # One session on r0 is driven over both transports (proprio over HTTP, the rest
        # over gRPC); r0 is the replica killed below.
        via_http = next(s for s, o in sessions.items() if o == 0)
        for sid, owner in sessions.items():  # one ring: both transports reach the owner
            assert served_by(fleet, sid) == (fleet.replicas[owner].name,) * 2, sid
        sent = {sid: feed(client, http if sid == via_http else None, sid, TICKS, 0, rng)
                for sid in sessions}
        # Every message of a session landed on its one replica.
        for sid, owner in sessions.items():
            info = client.describe_session(sid)
            assert sum(info.accepted.values()) == sent[sid] and info.refused == {}
            assert owner_of(fleet, sid) == owner
        for i, replica in enumerate(fleet.replicas):
            assert messages_metric(replica) == sum(sent[s] for s, o in sessions.items()
                                                   if o == i)
        # A multi-session stream: a message of a session the other replica holds is
        # refused there (the stream is routed by its first message's session).
        a = next(s for s, o in sessions.items() if o == 0)
        b = next(s for s, o in sessions.items() if o == 1)
        acks = list(client.stream_messages([Message(a, "proprio", 0.5, [0.0]),
                                            Message(b, "proprio", 0.5, [0.0])], timeout=30))
        assert [x.error.reason if x.error else None for x in acks] == [None, "owned_elsewhere"]
        sent[a] += 1
        # The balancer refuses a create or a stream without the header.
        r = httpx.post(f"{fleet.http_url}/v1/sessions", json={}, timeout=5)
        assert r.status_code == 400 and r.json()["error"]["reason"] == "no_session_header"
        from proto.vrkn.estimator.v1 import estimator_pb2, estimator_pb2_grpc

        with grpc.insecure_channel(fleet.grpc_target) as channel:
            stub = estimator_pb2_grpc.EstimatorStub(channel)
            with pytest.raises(grpc.RpcError) as e:
                stub.CreateSession(estimator_pb2.CreateSessionRequest(), timeout=10)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(grpc.RpcError) as e:
                list(stub.StreamMessages(iter([estimator_pb2.SensorMessage(session_id=a)]),
                                         timeout=10))
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "x-session-id" in e.value.details()
        # Wait until the store holds every message (the write pass: 0.2 s), then note
        # what each session answers.
        deadline = time.monotonic() + 20
        while any(stored_accepted(store, s) != sent[s] for s in sessions):
            assert time.monotonic() < deadline, "the store never caught up"
            time.sleep(0.05)
        expected = {s: client.get_belief(s) for s in sessions}
        counts = {s: client.describe_session(s).accepted for s in sessions}
        victim = sessions[via_http]  # the replica of the HTTP session: both transports
        survivors = [s for s, o in sessions.items() if o != victim]
        fleet.kill(victim)
        killed = time.monotonic()
        moved = [s for s, o in sessions.items() if o == victim]
        first = client.get_belief(moved[0])
        failover_s = time.monotonic() - killed
        assert failover_s < LEASE_S + 5  # the lease runs out, then the retry pause
        for sid in sessions:  # beliefs of the snapshot, bit for bit; counters intact
            got = first if sid == moved[0] else (http if sid == via_http else client
                                                 ).get_belief(sid)
            want = expected[sid]
            assert (got.tick, got.newest_tick) == (want.tick, want.newest_tick), sid
            assert np.array_equal(got.mean, want.mean) and np.array_equal(got.var, want.var)
            assert client.describe_session(sid).accepted == counts[sid]
        survivor = fleet.replicas[1 - victim]
        for sid in moved:  # the sessions go on, on the surviving replica
            before = messages_metric(survivor)
            sent[sid] += feed(client, http if sid == via_http else None, sid, 3, TICKS, rng)
            assert messages_metric(survivor) - before == 6
            assert served_by(fleet, sid) == (survivor.name,) * 2
            assert sum(client.describe_session(sid).accepted.values()) == sent[sid]
        for sid in survivors:  # untouched
            assert sum(client.describe_session(sid).accepted.values()) == sent[sid]
        takeovers = httpx.get(f"{survivor.http_url}/metrics", timeout=5).text
        assert f"vrkn_store_takeovers_total {float(len(moved))}" in takeovers
        print(f"failover {failover_s:.3f} s; {len(moved)} sessions moved, "
              f"{len(survivors)} untouched")
        codes = fleet.stop()
    assert codes[fleet_name(1 - victim)] == 0 and codes["redis"] == 0


def fleet_name(i: int) -> str:
    return f"r{i}"
