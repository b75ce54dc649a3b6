"""The shared session store (server/store.py) on a real redis-server: a session round-trips
bit-exactly between replicas, a live lease keeps it on its owner (never two copies), a
lost or lapsed lease stops the old owner, idle sessions are handed back, ids are unique
fleet-wide, and a configured store that does not answer is an error at start."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import numpy as np
import pytest

from server import snapshot
from server.deploy.local import free_port
from server.errors import AlreadyExists, Unavailable
from server.payloads import Payload
from server.service import EstimatorService, SensorMessageIn
from server.settings import Settings
from server.store import StoreError, keys

pytestmark = pytest.mark.scale
PERIOD = 0.02  # the shipped model's control period
FAST = {"store_interval_s": 0.1, "store_lease_s": 0.5, "store_handoff_s": 30.0}


def settings(url: str, replica: str, **kw) -> Settings:
    return Settings(store=url, replica_id=replica, **{**FAST, **kw})


async def replica(models, url, name, **kw) -> EstimatorService:
    service = EstimatorService(models, settings(url, name, **kw))
    await service.start()
    return service


async def feed(service, sid, ticks, start=0):
    rng = np.random.default_rng(start)
    for k in range(start, start + ticks):
        await service.send_message(SensorMessageIn(
            sid, "proprio", k * PERIOD + 0.005, Payload("values", values=[float(rng.normal())])),
            "test")
        await service.send_message(SensorMessageIn(
            sid, "image", k * PERIOD + 0.011, Payload("raw", data=rng.integers(
                0, 256, (64, 64, 3), dtype=np.uint8).tobytes(), shape=(64, 64, 3),
                dtype="uint8")), "test")
        service.report_action(sid, k * PERIOD + 0.015, [float(rng.uniform(-1, 1))])


def state(service, sid) -> dict:
    s = snapshot.session_state(service.registry.sessions[sid], service.registry.clock())
    s.pop("idle_s")
    return s


def crash(service) -> None:
    """Stop a replica's store without its last write or releasing its leases (as kill -9)."""
    service.store._task.cancel()
    service.store.client.close()
    service.registry.shared = None


def test_a_session_round_trips_bit_exactly_and_the_lease_keeps_one_copy(shipped_models,
                                                                        redis_server):
    async def main():
        a = await replica(shipped_models, redis_server.url, "a")
        b = await replica(shipped_models, redis_server.url, "b")
        try:
            sid = a.create_session(start_time=0.0, session_id="robot-1").id
            await feed(a, sid, 12)
            await a.belief(sid, 5 * PERIOD)  # a lazy replay: not a change to store
            assert await a.store.sync()
            saved, belief = state(a, sid), await a.belief(sid)
            with pytest.raises(Unavailable) as refused:  # a's lease is live
                b.describe_session(sid)
            assert refused.value.reason == "owned_elsewhere" and "'a'" in refused.value.message
            with pytest.raises(AlreadyExists):  # ids are unique in the fleet
                b.create_session(session_id="robot-1")
            crash(a)
            deadline = time.monotonic() + 5
            while True:  # b takes over once a's lease has expired in Redis
                try:
                    b.describe_session(sid)
                    break
                except Unavailable:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
            assert state(b, sid) == saved  # every record, cached encoding, belief, counter
            got = await b.belief(sid)
            assert np.array_equal(got.mean, belief.mean) and np.array_equal(got.var, belief.var)
            assert got.tick == belief.tick
            await feed(b, sid, 3, start=12)  # and it goes on
            assert b.describe_session(sid).accepted == {"proprio": 15, "image": 15}
            assert b.store.takeovers._value.get() == 1
        finally:
            await b.stop()

    asyncio.run(main())


def test_a_replica_that_lost_its_lease_drops_the_session(shipped_models, redis_server):
    async def main():
        a = await replica(shipped_models, redis_server.url, "a")
        try:
            sid = a.create_session(start_time=0.0).id
            await feed(a, sid, 2)
            owner, _ = keys(sid)
            redis_server.client().set(owner, "b", px=5000)  # another replica took it over
            assert await a.store.sync()
            assert sid not in a.registry.sessions and a.store.lost._value.get() == 1
            with pytest.raises(Unavailable, match="held by replica 'b'"):
                a.describe_session(sid)
        finally:
            await a.stop()

    asyncio.run(main())


def test_without_redis_the_lease_lapses_and_the_owner_stops_serving(shipped_models,
                                                                    redis_server):
    async def main():
        a = await replica(shipped_models, redis_server.url, "a")
        sid = a.create_session(start_time=0.0).id
        await feed(a, sid, 1)
        redis_server.stop()
        assert not await a.store.sync()  # not renewed
        await asyncio.sleep(0.5)  # the lease (0.5 s) has run out here
        with pytest.raises(Unavailable) as refused:
            await a.belief(sid)
        assert refused.value.reason == "lease_lapsed"
        with pytest.raises(Unavailable, match="did not answer"):
            a.create_session()
        a.store.client.close()
        a.registry.shared = a.store = None
        await a.stop()

    asyncio.run(main())


def test_an_idle_session_is_handed_back_and_taken_at_once(shipped_models, redis_server):
    async def main():
        a = await replica(shipped_models, redis_server.url, "a", store_handoff_s=0.2)
        b = await replica(shipped_models, redis_server.url, "b")
        try:
            sid = a.create_session(start_time=0.0).id
            await feed(a, sid, 3)
            saved = state(a, sid)
            await asyncio.sleep(0.3)
            await a.store.sync()
            assert sid not in a.registry.sessions and a.store.parked._value.get() == 1
            b.describe_session(sid)  # no lease to wait for
            got = state(b, sid)
            assert got == saved
            b.close_session(sid)
            assert not redis_server.client().exists(*keys(sid))
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(main())


def test_a_configured_store_that_does_not_answer_is_an_error_at_start(shipped_models):
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there

    async def main():
        service = EstimatorService(shipped_models, settings(url, "a"))
        with pytest.raises(StoreError, match=f"session store {url} is not usable"):
            await service.start()
        await service.stop()

    asyncio.run(main())
    r = subprocess.run([sys.executable, "-m", "server", "--store", url, "--grpc-port", "0",
                        "--http-port", "0"], capture_output=True, text=True, timeout=120,
                       check=False)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(
        f"error: the session store {url} is not usable"), r.stderr
    with pytest.raises(ValueError, match="more than twice"):
        Settings(store=url, store_interval_s=1.0, store_lease_s=1.5)


def test_a_graceful_stop_hands_the_sessions_over_at_once(shipped_models, redis_server):
    async def main():
        a = await replica(shipped_models, redis_server.url, "a", store_lease_s=30.0)
        b = await replica(shipped_models, redis_server.url, "b", store_lease_s=30.0)
        try:
            sid = a.create_session(start_time=0.0).id
            await feed(a, sid, 4)  # after the last write pass: the stop writes them
            saved = state(a, sid)
            await a.stop()  # last write, leases released (a 30 s lease is not waited for)
            b.describe_session(sid)
            assert state(b, sid) == saved
        finally:
            await b.stop()

    asyncio.run(main())


def test_sessions_restored_from_the_file_defer_to_the_store(shipped_models, redis_server,
                                                            tmp_path):
    snap = tmp_path / "sessions.json"

    async def main():
        a = await replica(shipped_models, redis_server.url, "a", snapshot_path=snap)
        shared = a.create_session(start_time=0.0).id
        local = a.create_session(start_time=0.0).id
        await feed(a, shared, 2)
        await a.stop()  # the file and the store hold both
        redis_server.client().delete(*keys(local))  # the store lost one (say, flushed)
        b = await replica(shipped_models, redis_server.url, "b")
        await feed(b, shared, 2, start=2)  # the shared one went on elsewhere
        newer = state(b, shared)
        await b.stop()
        again = await replica(shipped_models, redis_server.url, "a2", snapshot_path=snap)
        try:  # the store's newer copy wins over the file's; the one it lost is published
            assert state(again, shared) == newer
            assert again.describe_session(local).accepted == {}
            assert redis_server.client().get(keys(local)[0]) == b"a2"
        finally:
            await again.stop()

    asyncio.run(main())
