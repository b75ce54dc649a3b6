"""A fleet behind HAProxy on this machine (server/deploy/local.py: redis-server, N
replicas of ``python -m server`` on the shipped model, HAProxy; loopback only, bounded in count and
time): throughput with 1 and with 2 replicas, the balancer's added latency (direct to the
replica vs through HAProxy), and failover time (``kill -9`` of a session's replica to the
first belief served by the other). Results in bench/results/service_replicas.{md,json}.

    python bench/service_replicas.py [--sessions 32] [--seconds 5] [--round-trips 500]
        [--failovers 3]

The client runs on the same cores as the replicas and HAProxy: on a 2-core machine the
ratio of 2 replicas to 1 is bounded by the cores, not by the design.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_io import machine_meta, write_results

from clients import AsyncEstimatorClient, EstimatorClient, RetryPolicy
from server.deploy.local import Fleet, missing_binaries
from server.store import keys

PERIOD = 0.02  # the shipped model's control period
FAILOVER_POLICY = RetryPolicy(max_attempts=1000, initial_backoff_s=0.005, max_backoff_s=0.02)


def stats(lat: list[float]) -> tuple[float, float]:
    a = np.asarray(lat) * 1000
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


async def throughput(target: str, sessions: int, seconds: float) -> tuple[float, list[float]]:
    """Closed loop: each session sends proprio messages asking for their belief, one at a
    time (unary, so each call is routed by its own header), for ``seconds``."""
    async with AsyncEstimatorClient(target, timeout=10) as client:
        sids = [(await client.create_session(start_time=0.0)).session_id
                for _ in range(sessions)]
        for sid in sids:  # warm-up: connections, first ONNX runs
            await client.send_message(sid, "proprio", 0.005, [0.1], return_belief=True)
        lat: list[float] = []
        end = time.monotonic() + seconds

        async def robot(sid: str) -> int:
            k = 1
            while time.monotonic() < end:
                t0 = time.perf_counter()
                await client.send_message(sid, "proprio", k * PERIOD + 0.005, [0.1],
                                          return_belief=True)
                lat.append(time.perf_counter() - t0)
                k += 1
            return k

        start = time.monotonic()
        counts = await asyncio.gather(*(robot(s) for s in sids))
        rate = (sum(counts) - len(sids)) / (time.monotonic() - start)
        for sid in sids:
            await client.close_session(sid)
    return rate, lat


def round_trips(target: str, sid: str, n: int, start: int) -> list[float]:
    lat = []
    with EstimatorClient(target, timeout=10) as client:
        for k in range(start, start + n):
            t0 = time.perf_counter()
            client.send_message(sid, "proprio", k * PERIOD + 0.005, [0.1], return_belief=True)
            lat.append(time.perf_counter() - t0)
    return lat


def owner(fleet: Fleet, sid: str) -> int:
    import httpx

    held = [i for i, r in enumerate(fleet.replicas)
            if httpx.get(f"{r.http_url}/v1/sessions/{sid}", timeout=5).status_code == 200]
    assert len(held) == 1, held
    return held[0]


def failover(folder: Path, flags: tuple[str, ...]) -> float:
    """Seconds from ``kill -9`` of a session's replica to its first belief served by the
    other (mostly the dead replica's lease running out: up to --lease-s)."""
    import redis

    with Fleet(folder, replicas=2, store_flags=flags) as fleet, \
            EstimatorClient(fleet.grpc_target, timeout=30, retry=FAILOVER_POLICY) as client:
        sid = client.create_session(start_time=0.0).session_id
        for k in range(10):
            client.send_message(sid, "proprio", k * PERIOD + 0.005, [0.1])
        store = redis.Redis.from_url(fleet.store_url)
        deadline = time.monotonic() + 10
        while b'"proprio": 10' not in (store.get(keys(sid)[1]) or b""):
            assert time.monotonic() < deadline, "the store never caught up"
            time.sleep(0.02)
        fleet.kill(owner(fleet, sid))
        t0 = time.monotonic()
        client.get_belief(sid)
        return time.monotonic() - t0


def plain_server(folder: Path):
    """One ``python -m server`` without store or balancer (the baseline); (proc, target)."""
    import json
    import subprocess

    folder.mkdir(parents=True, exist_ok=True)
    ready = folder / "ready.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VRKN_")}
    proc = subprocess.Popen([sys.executable, "-m", "server", "--grpc-port", "0",
                             "--http-port", "-1", "--ready-file", str(ready)], env=env,
                            cwd=str(folder), stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the plain server did not start")
        time.sleep(0.05)
    return proc, f"127.0.0.1:{json.loads(ready.read_text())['grpc_port']}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=32)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--round-trips", type=int, default=500)
    p.add_argument("--failovers", type=int, default=3)
    p.add_argument("--interval-s", type=float, default=1.0, help="--store-interval-s")
    p.add_argument("--lease-s", type=float, default=3.0, help="--store-lease-s")
    args = p.parse_args()
    missing = missing_binaries("redis-server", "haproxy")
    if missing:
        sys.exit(f"error: not installed: {' '.join(missing)} (apt-get install {' '.join(missing)})")
    load_before = os.getloadavg()
    rows, lines = [], []
    work = Path(tempfile.mkdtemp(prefix="vrkn-bench-fleet-"))
    rates = {}
    flags = ("--store-interval-s", str(args.interval_s), "--store-lease-s", str(args.lease_s),
             "--store-handoff-s", str(args.lease_s))
    proc, target = plain_server(work / "plain")
    try:
        rate, lat = asyncio.run(throughput(target, args.sessions, args.seconds))
    finally:
        proc.terminate()
        proc.wait(30)
    rates[0] = rate
    p50, p99 = stats(lat)
    rows.append({"case": "throughput", "replicas": 1, "path": "direct, no store",
                 "sessions": args.sessions, "msgs_per_s": rate, "p50_ms": p50, "p99_ms": p99})
    lines.append([f"proprio → belief, {args.sessions} sessions, closed loop", 1,
                  "direct, no store", f"{p50:.2f}", f"{p99:.2f}", f"{rate:,.0f}"])
    print(lines[-1], flush=True)
    for n in (1, 2):
        with Fleet(work / f"fleet{n}", replicas=n, store_flags=flags) as fleet:
            rate, lat = asyncio.run(throughput(fleet.grpc_target, args.sessions, args.seconds))
            rates[n] = rate
            p50, p99 = stats(lat)
            rows.append({"case": "throughput", "replicas": n, "sessions": args.sessions,
                         "msgs_per_s": rate, "p50_ms": p50, "p99_ms": p99})
            lines.append([f"proprio → belief, {args.sessions} sessions, closed loop", n,
                          "haproxy + store", f"{p50:.2f}", f"{p99:.2f}", f"{rate:,.0f}"])
            print(lines[-1], flush=True)
            if n == 2:
                with EstimatorClient(fleet.grpc_target) as client:
                    sid = client.create_session(start_time=0.0).session_id
                direct = fleet.replicas[owner(fleet, sid)].grpc_target
                half = args.round_trips
                for label, target, start in (("direct", direct, 0),
                                             ("haproxy", fleet.grpc_target, half),
                                             ("direct", direct, 2 * half),
                                             ("haproxy", fleet.grpc_target, 3 * half)):
                    lat = round_trips(target, sid, half, start)
                    p50, p99 = stats(lat)
                    rows.append({"case": "round trip", "path": label, "p50_ms": p50,
                                 "p99_ms": p99, "n": half})
                    lines.append(["proprio → belief, 1 session, unary", 2, label,
                                  f"{p50:.2f}", f"{p99:.2f}", ""])
                    print(lines[-1], flush=True)
    times = [failover(work / f"failover{i}", flags) for i in range(args.failovers)]
    for i, s in enumerate(times):
        rows.append({"case": "failover", "run": i, "seconds": s})
    lines.append([f"failover: kill -9 → first belief elsewhere (lease {args.lease_s:g} s)",
                  "2 → 1", "haproxy",
                  f"{np.median(times):.3f} s (median of {len(times)})",
                  f"max {max(times):.3f} s", ""])
    print(lines[-1], flush=True)
    meta = machine_meta(load_before, ratio_2_to_1=rates[2] / rates[1],
                        store_flags=" ".join(flags),
                        args=vars(args))
    print(f"2 replicas / 1 replica throughput: {rates[2] / rates[1]:.2f}x; "
          f"load {load_before} -> {meta['loadavg_after']}")
    write_results("service_replicas", "Replicas behind HAProxy (gRPC, shipped model)",
                  ["case", "replicas", "path", "p50 ms", "p99 ms", "msgs/s"], lines, rows, meta)


if __name__ == "__main__":
    main()
