"""Restores are crash-safe and idempotent (the snapshot stays until a newer one is written:
two kill -9 within one snapshot interval lose nothing beyond it), and a failed or partial
restore is loud: logged, counted in a metric, shown on /readyz, the file kept."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import numpy as np
import pytest

from server.service import EstimatorService
from server.settings import Settings
from tests.service.conftest import PERIOD, ServerProcess
from tests.service.test_http import body_of

pytestmark = pytest.mark.slow


def _saved(path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _state(http, sid):
    d = http.get(f"/v1/sessions/{sid}").json()
    d.pop("idle_s")
    beliefs = [http.get(f"/v1/sessions/{sid}/belief", params={"t": k * PERIOD}).json()
               for k in range(10)]
    return d, beliefs


def test_two_kill_9_within_one_snapshot_interval_lose_nothing_beyond_it(bundle_dir, tmp_path):
    snap = tmp_path / "sessions.json"
    args = ("--snapshot-path", str(snap), "--snapshot-interval-s", "3")
    first = ServerProcess(bundle_dir, tmp_path, *args)
    try:
        with httpx.Client(base_url=first.http_url) as http:
            sid = http.post("/v1/sessions", json={"start_time": 0.0}).json()["session_id"]
            for k in range(10):
                r = http.post(f"/v1/sessions/{sid}/messages", json=body_of(
                    ("obs", "proprio", k * PERIOD + 0.01, np.full(3, k, np.float32))))
                assert r.status_code == 200, r.text
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:  # until a periodic snapshot holds them
                data = _saved(snap)
                if data and data["sessions"] and \
                        data["sessions"][0]["accepted"] == {"proprio": 10}:
                    break
                time.sleep(0.05)
            else:
                pytest.fail("no periodic snapshot with the 10 messages")
            expected = _state(http, sid)
    finally:
        first.proc.kill()  # crash 1
        first.stop()
    written = snap.read_bytes()
    second = ServerProcess(bundle_dir, tmp_path, *args)
    try:
        with httpx.Client(base_url=second.http_url) as http:
            assert _state(http, sid) == expected  # restored
    finally:
        second.proc.kill()  # crash 2, well before its first periodic snapshot (3 s)
        second.stop()
    assert "restored 1 sessions" in second.log()
    assert snap.read_bytes() == written  # nothing written in between: the same snapshot
    third = ServerProcess(bundle_dir, tmp_path, *args)
    try:
        with httpx.Client(base_url=third.http_url) as http:
            assert _state(http, sid) == expected
            assert http.get("/readyz").json()["restore"]["ok"] is True
    finally:
        assert third.stop() == 0, third.log()


def run(coro):
    return asyncio.run(coro)


async def _service(models, snap, **kw) -> EstimatorService:
    service = EstimatorService(models, Settings(snapshot_path=snap, **kw))
    await service.start()
    return service


async def _readyz(service) -> dict:
    from server.http_app import create_app

    transport = httpx.ASGITransport(app=create_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        return (await http.get("/readyz")).json()


def _two_sessions(models, snap) -> list[str]:
    async def main():
        service = await _service(models, snap)
        from server.payloads import Payload
        from server.service import SensorMessageIn

        sids = [service.create_session(start_time=0.0).id for _ in range(2)]
        for sid in sids:
            await service.send_message(SensorMessageIn(
                sid, "proprio", 0.01, Payload("values", values=[1.0, 2.0, 3.0])), "test")
        await service.stop()
        return sids

    return run(main())


def test_a_partial_restore_is_loud_and_keeps_the_file(models, tmp_path, caplog):
    snap = tmp_path / "sessions.json"
    good, bad = _two_sessions(models, snap)
    data = json.loads(snap.read_text())
    damaged = next(d for d in data["sessions"] if d["id"] == bad)
    damaged["timeline"]["records"][0]["obs"]["proprio"]["w"]["f32"] = "AAAA"  # 1 float, not L
    snap.write_text(json.dumps(data))
    original = snap.read_bytes()

    async def main():
        service = await _service(models, snap)
        try:
            report = service.restore_report
            assert (report.restored, [r for r, _ in report.failures]) == (1, ["corrupt"])
            assert set(service.registry.sessions) == {good}
            ready = await _readyz(service)
            assert ready["status"] == "ready"
            assert ready["restore"]["ok"] is False and ready["restore"]["failed"] == 1
            assert bad in ready["restore"]["failures"][0]["message"]
            assert b'vrkn_restore_failures_total{reason="corrupt"} 1.0' in \
                service.metrics.render()
            copy = tmp_path / ready["restore"]["kept_copy"]
            assert copy.read_bytes() == original and snap.read_bytes() == original
        finally:
            await service.stop()  # writes a snapshot of the one restored session
        return copy

    with caplog.at_level("ERROR", logger="server"):
        copy = run(main())
    assert any("not restored (corrupt)" in r.getMessage() for r in caplog.records)
    assert [d["id"] for d in json.loads(snap.read_text())["sessions"]] == [good]
    assert copy.read_bytes() == original  # the unrestored session is still on disk


def test_an_unreadable_or_foreign_snapshot_is_loud(models, tmp_path):
    snap = tmp_path / "sessions.json"

    async def main(expected_reason):
        service = await _service(models, snap)
        try:
            report = service.restore_report
            assert [r for r, _ in report.failures] == [expected_reason]
            assert report.restored == 0 and not service.registry.sessions
            assert (await _readyz(service))["restore"]["ok"] is False
            text = service.metrics.render().decode()
            assert f'vrkn_restore_failures_total{{reason="{expected_reason}"}} 1.0' in text
        finally:
            await service.stop()

    snap.write_bytes(b"\x00not json")
    run(main("unreadable"))
    assert len(list(tmp_path.glob("sessions.json.unrestored-*"))) == 1
    _two_sessions(models, snap)
    data = json.loads(snap.read_text())
    data["sessions"] = data["sessions"][:1]
    data["sessions"][0]["model_sha256"] = "0" * 64  # saved with another bundle
    snap.write_text(json.dumps(data))
    run(main("model_changed"))
    assert len(list(tmp_path.glob("sessions.json.unrestored-*"))) == 2


def test_without_a_copy_the_snapshot_is_never_overwritten(models, tmp_path, monkeypatch):
    from server import snapshot

    snap = tmp_path / "sessions.json"
    snap.write_text("garbage")

    def cannot_copy(path):
        raise OSError("disk full")

    monkeypatch.setattr(snapshot, "keep_copy", cannot_copy)

    async def main():
        service = await _service(models, snap)
        try:
            assert service.snapshot_blocked and "disk full" in service.snapshot_blocked
            assert (await _readyz(service))["snapshots_blocked"] == service.snapshot_blocked
            service.create_session()
            assert await service.save_snapshot() is None
        finally:
            await service.stop()
        assert b"vrkn_snapshot_failures_total 2.0" in service.metrics.render()

    run(main())
    assert snap.read_text() == "garbage"


def test_an_older_snapshot_never_replaces_a_newer_one(models, tmp_path):
    snap = tmp_path / "sessions.json"
    service = EstimatorService(models, Settings(snapshot_path=snap))
    assert service._write_snapshot({"n": 2}, 2, snap)
    assert not service._write_snapshot({"n": 1}, 1, snap)  # captured earlier, wrote later
    assert json.loads(snap.read_text()) == {"n": 2}
