"""Restart keeps sessions (snapshot on SIGTERM, restore on start), idle expiry, encoder
batching and back-pressure, the generated proto code is fresh, and the server imports no
torch."""

from __future__ import annotations

import asyncio
import filecmp
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from server.errors import ResourceExhausted
from server.service import EstimatorService, SensorMessageIn
from server.settings import Settings
from tests.service.conftest import PERIOD, ServerProcess, random_stream
from tests.service.test_http import body_of

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_restart_keeps_sessions(bundle_dir, tmp_path):
    snap = tmp_path / "sessions.json"
    events = random_stream(30, seed=21)
    first, rest = events[:40], events[40:]
    server = ServerProcess(bundle_dir, tmp_path, "--snapshot-path", str(snap))
    try:
        with httpx.Client(base_url=server.http_url) as http:
            sids = [http.post("/v1/sessions", json={"start_time": 0.0}).json()["session_id"]
                    for _ in range(3)]
            for sid in sids:
                for e in first:
                    if e[0] == "obs":
                        http.post(f"/v1/sessions/{sid}/messages", json=body_of(e))
                    else:
                        http.post(f"/v1/sessions/{sid}/actions",
                                  json={"timestamp": e[2], "values": e[3].tolist()})
            # A late message left un-replayed (lazy) must survive too.
            late = ("obs", "proprio", 12 * PERIOD + 0.02, np.ones(3, np.float32))
            http.post(f"/v1/sessions/{sids[0]}/messages", json=body_of(late))
            before = {sid: (http.get(f"/v1/sessions/{sid}").json(),
                            [http.get(f"/v1/sessions/{sid}/belief",
                                      params={"t": k * PERIOD}).json() for k in range(2, 22)])
                      for sid in sids}
    finally:
        assert server.stop() == 0, server.log()
    assert snap.is_file() and "saved 3 sessions" in server.log()
    again = ServerProcess(bundle_dir, tmp_path, "--snapshot-path", str(snap))
    try:
        assert "restored 3 sessions" in again.log()
        assert snap.exists()  # left in place until a newer snapshot replaces it
        with httpx.Client(base_url=again.http_url) as http:
            for sid in sids:
                d = http.get(f"/v1/sessions/{sid}").json()
                beliefs = [http.get(f"/v1/sessions/{sid}/belief", params={"t": k * PERIOD}
                                    ).json() for k in range(2, 22)]
                old_d, old_beliefs = before[sid]
                for x in (d, old_d):
                    x.pop("idle_s")
                assert d == old_d and beliefs == old_beliefs
                for e in rest:  # the sessions go on
                    r = (http.post(f"/v1/sessions/{sid}/messages", json=body_of(e))
                         if e[0] == "obs" else
                         http.post(f"/v1/sessions/{sid}/actions",
                                   json={"timestamp": e[2], "values": e[3].tolist()}))
                    assert r.status_code == 200, r.text
                assert http.get(f"/v1/sessions/{sid}").json()["newest_tick"] == 29
    finally:
        assert again.stop() == 0, again.log()


def run(coro):
    return asyncio.run(coro)


def test_idle_sessions_expire(models):
    async def main():
        service = EstimatorService(models, Settings(idle_timeout_s=0.3, expiry_interval_s=0.05))
        await service.start()
        try:
            keep = service.create_session().id
            gone = service.create_session().id
            for _ in range(8):
                await asyncio.sleep(0.1)
                service.describe_session(keep)
            assert set(service.registry.sessions) == {keep}
            assert gone not in service.registry.sessions
            assert b"vrkn_sessions_expired_total 1.0" in service.metrics.render()
        finally:
            await service.stop()

    run(main())


def _image_message(sid, t, rng):
    from server.payloads import Payload

    img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return SensorMessageIn(sid, "image", t, Payload("raw", img.tobytes(), (64, 64, 3), "uint8"))


def test_images_are_batched_across_sessions_and_equal_unbatched(models, model):
    rng = np.random.default_rng(0)

    async def main():
        service = EstimatorService(models, Settings(batch_window_ms=5))
        await service.start()
        try:
            sids = [service.create_session(start_time=0.0).id for _ in range(12)]
            msgs = [_image_message(sid, 0.01, rng) for sid in sids]
            await asyncio.gather(*(service.send_message(m, "test") for m in msgs))
            batcher = service.batchers["tiny", "image"]
            assert batcher.items == 12 and batcher.batches < 12
            for sid, m in zip(sids, msgs, strict=True):
                img = np.frombuffer(m.payload.data, np.uint8).reshape(1, 64, 64, 3)
                w, var = model.encode("image", img)
                expected = model.engine.update(model.engine.initial(1), w, var)
                np.testing.assert_allclose((await service.belief(sid)).mean, expected.mean[0],
                                           atol=1e-5)
        finally:
            await service.stop()

    run(main())


def test_back_pressure_per_session_and_queue(models):
    rng = np.random.default_rng(1)

    async def main():
        service = EstimatorService(models, Settings(max_pending_per_session=2, max_queue=3,
                                                    batch_window_ms=50))
        await service.start()
        try:
            a, b = (service.create_session(start_time=0.0).id for _ in range(2))
            tasks = [asyncio.ensure_future(service.send_message(
                _image_message(a, 0.01 * i, rng), "test")) for i in range(3)]
            tasks += [asyncio.ensure_future(service.send_message(
                _image_message(b, 0.01 * i, rng), "test")) for i in range(2)]
            results = await asyncio.gather(*tasks, return_exceptions=True)
            errors = [r for r in results if isinstance(r, Exception)]
            assert all(isinstance(e, ResourceExhausted) for e in errors), errors
            reasons = sorted(e.reason for e in errors)
            assert reasons == ["queue_full", "session_queue_full"]
            info = service.describe_session(a)
            assert info.refused == {"session_queue_full": 1} and info.accepted == {"image": 2}
        finally:
            await service.stop()

    run(main())


def test_generated_proto_code_is_fresh(tmp_path):
    subprocess.run(["bash", str(ROOT / "scripts" / "gen_proto.sh"), str(tmp_path)], check=True,
                   env={**os.environ, "PYTHON": sys.executable})
    generated = tmp_path / "proto/vrkn/estimator/v1"
    names = sorted(p.name for p in generated.glob("*_pb2*.py"))
    assert names == ["estimator_pb2.py", "estimator_pb2_grpc.py"]
    committed = ROOT / "proto/vrkn/estimator/v1"
    stale = [n for n in names if not filecmp.cmp(generated / n, committed / n, shallow=False)]
    assert not stale, f"regenerate with scripts/gen_proto.sh: {stale} are stale"


NO_TORCH = r"""
import asyncio, sys
import grpc, httpx, numpy as np
from server.app import serve
from server.settings import Settings
from proto.vrkn.estimator.v1 import estimator_pb2 as pb, estimator_pb2_grpc as pb_grpc

async def main():
    stop = asyncio.Event()
    settings = Settings(bundle=[sys.argv[1]], grpc_port=0, http_port=0,
                        ready_file=sys.argv[2])
    task = asyncio.create_task(serve(settings, stop=stop))
    import json, os
    while not os.path.exists(sys.argv[2]):
        await asyncio.sleep(0.05)
    info = json.load(open(sys.argv[2]))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{info['http_port']}") as http:
        sid = (await http.post("/v1/sessions", json={})).json()["session_id"]
        r = await http.post(f"/v1/sessions/{sid}/messages",
                            json={"sensor": "image", "timestamp": 0.0,
                                  "values": np.zeros((64, 64, 3), int).tolist()})
        assert r.status_code == 200, r.text
    async with grpc.aio.insecure_channel(f"127.0.0.1:{info['grpc_port']}") as ch:
        stub = pb_grpc.EstimatorStub(ch)
        await stub.SendMessage(pb.SensorMessage(session_id=sid, sensor="proprio",
                                                timestamp=0.06,
                                                vector=pb.FloatVector(values=[0, 0, 0])))
        await stub.GetAction(pb.ActionRequest(session_id=sid, timestamp=0.07))
        await stub.GetBelief(pb.BeliefRequest(session_id=sid, timestamp=0.5))
    stop.set()
    await task

asyncio.run(main())
print("torch loaded:", "torch" in sys.modules)
"""


def test_the_server_imports_no_torch(bundle_dir, tmp_path):
    out = subprocess.run([sys.executable, "-c", NO_TORCH, str(bundle_dir),
                          str(tmp_path / "ready.json")], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "torch loaded: False" in out.stdout, out.stdout + out.stderr


def test_settings_refuse_a_non_loopback_host_without_token():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="not a loopback address"):
        Settings(host="0.0.0.0")
    assert Settings(host="0.0.0.0", token="x").token_value == "x"
    assert Settings(host="::1").token is None


def test_periodic_snapshot_survives_a_crash(bundle_dir, tmp_path):
    import time

    snap = tmp_path / "sessions.json"
    server = ServerProcess(bundle_dir, tmp_path, "--snapshot-path", str(snap),
                           "--snapshot-interval-s", "0.1")
    try:
        with httpx.Client(base_url=server.http_url) as http:
            sid = http.post("/v1/sessions", json={"start_time": 0.0}).json()["session_id"]
            http.post(f"/v1/sessions/{sid}/messages", json=body_of(
                ("obs", "proprio", 0.01, np.ones(3, np.float32))))
            expected = http.get(f"/v1/sessions/{sid}/belief").json()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until a snapshot holds the message
            time.sleep(0.1)
            if snap.is_file() and '"proprio": 1' in snap.read_text():
                break
    finally:
        server.proc.kill()  # a crash: no graceful shutdown
        server.stop()
    again = ServerProcess(bundle_dir, tmp_path, "--snapshot-path", str(snap))
    try:
        with httpx.Client(base_url=again.http_url) as http:
            assert http.get(f"/v1/sessions/{sid}/belief").json() == expected
    finally:
        assert again.stop() == 0, again.log()
