"""Benchmark: a fleet on one box, in real time. 64 robots (``--sessions``), each on its own
gRPC stream, offer a proprio message every control period (50 Hz, with ``return_belief``
at ``--detail``: by default STATE, what a controller needs, or LATENT when the bundle has
no state head) and a camera frame (PNG) every 4th period (12.5 Hz), for ``--seconds``
(default 60):

- p50/p99 of proprio -> belief and of image -> ack; dropped answers (errors, or none by the
  end) and late ones (after the sensor's next message was due: 20 ms for proprio, 80 ms
  for images); how far the senders fell behind their schedule (the client's own limit);
- saturation: proprio messages/s with every stream pipelined (32 unanswered), against the
  server and against a bare gRPC stream (a trivial echo servicer of the same proto over
  the same transport), measured in the same run: the physical reference. It starts only
  once the server is idle (its CPU use below 10% for 0.5 s: the fleet phase's backlog
  worked off; the server is restarted if that takes over ``--idle-limit-s``);
- the floor: the same fleet, for ``--floor-seconds``, against the bare echo stream (its
  beliefs a latent mean and variance of the bundle's size): what the clients, gRPC and the
  shared cores cost before the server does anything; and the CPU per answered message of
  the server and of the echo, in the fleet and in saturation;
- where the server's batches spent the fleet phase (its ``/metrics``): per batcher, the
  batches, their mean size, and the mean and p90 of the wait before compute (the batch
  before it, the worker's wake-up), the compute, and the return to the event loop;
- the CPU use of the client processes (``--clients``, several, so the client is not the
  bottleneck) and of the server, and the load average before and after.

Writes bench/results/service_fleet.{json,md}. 127.0.0.1 only.

    python bench/service_fleet.py [--seconds 60] [--sessions 64] [--clients 4]
                                  [--detail LATENT|STATE|FULL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import service
from echo_server import start_echo
from results_io import machine_meta, write_results
from server_probe import batch_profile, cpu_seconds, loop_thread_seconds, scrape, wait_until_idle

from proto.vrkn.estimator.v1 import estimator_pb2 as pb
from proto.vrkn.estimator.v1 import estimator_pb2_grpc as pb_grpc
from proto.wire import BeliefDetail

IMAGE_EVERY = 4  # camera frames: every 4th control period (12.5 Hz at 50 Hz)


def default_detail(bundle: Path) -> BeliefDetail:
    """What a controller needs: the state estimate, or the latent without a state head."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    return BeliefDetail.STATE if manifest.get("state") else BeliefDetail.LATENT


# -- one client process ---------------------------------------------------------------------
@dataclass
class Part:
    """What one client process measured."""

    proprio_ms: list[float] = field(default_factory=list)
    image_ms: list[float] = field(default_factory=list)
    sent: int = 0
    answered: int = 0
    errors: int = 0
    late: int = 0
    send_lag_ms: list[float] = field(default_factory=list)
    saturation: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0


@dataclass(frozen=True)
class Job:
    target: str
    sessions: int
    seed: int
    start_at: float  # time.time() at which every client starts
    seconds: float
    mode: str  # "fleet" or "saturation"
    period: float
    proprio: int
    detail: int = 0  # BeliefDetail of the fleet's beliefs
    window: int = 32


async def fleet_stream(stub, sid: str, job: Job, j: int, images: list[bytes], part: Part,
                       t0: float) -> None:
    import grpc

    rng = np.random.default_rng(job.seed * 1000 + j)
    call = stub.StreamMessages()
    sent: dict[int, tuple[float, str]] = {}
    phase = rng.uniform(0, job.period)  # robots are not in step with each other
    ticks = int(job.seconds / job.period)

    async def reader():
        while (ack := await call.read()) is not grpc.aio.EOF:
            t_sent, kind = sent.pop(ack.sequence)
            ms = (time.perf_counter() - t_sent) * 1e3
            part.answered += 1
            if ack.HasField("error"):
                part.errors += 1
                continue
            (part.proprio_ms if kind == "proprio" else part.image_ms).append(ms)
            part.late += ms > job.period * 1e3 * (1 if kind == "proprio" else IMAGE_EVERY)

    task = asyncio.create_task(reader())
    seq = 0
    for k in range(ticks):
        due = t0 + phase + k * job.period
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        part.send_lag_ms.append(max(0.0, time.perf_counter() - due) * 1e3)
        msgs = []
        if k % IMAGE_EVERY == 0:
            msgs.append(("image", pb.SensorMessage(
                session_id=sid, sensor="image", timestamp=k * job.period + 0.001, sequence=seq,
                encoded_image=images[k % len(images)])))
            seq += 1
        msgs.append(("proprio", pb.SensorMessage(
            session_id=sid, sensor="proprio", timestamp=k * job.period + 0.002, sequence=seq,
            vector=pb.FloatVector(values=rng.standard_normal(job.proprio).tolist()),
            return_belief=True, belief_detail=job.detail)))
        seq += 1
        for kind, m in msgs:
            sent[m.sequence] = (time.perf_counter(), kind)
            await call.write(m)
            part.sent += 1
    await call.done_writing()
    try:
        await asyncio.wait_for(task, 5.0)  # what has not come by then is dropped
    except TimeoutError:
        call.cancel()


async def saturation_stream(stub, sid: str, job: Job, part: Part, stop_at: float) -> None:
    import grpc

    rng = np.random.default_rng(job.seed)
    call = stub.StreamMessages()
    credit = asyncio.Semaphore(job.window)
    msgs = [pb.SensorMessage(session_id=sid, sensor="proprio", sequence=i, vector=pb.FloatVector(
        values=rng.standard_normal(job.proprio).tolist())) for i in range(64)]

    async def reader():
        while (ack := await call.read()) is not grpc.aio.EOF:
            part.errors += ack.HasField("error")
            part.answered += 1
            if time.perf_counter() < stop_at:
                part.saturation += 1
            credit.release()

    task = asyncio.create_task(reader())
    i = 0
    while time.perf_counter() < stop_at:
        await credit.acquire()
        m = msgs[i % len(msgs)]
        m.timestamp = i * job.period  # a new tick per message: the head advances
        await call.write(m)
        i += 1
    await call.done_writing()
    await task


async def client_main(job: Job) -> Part:
    import grpc

    part = Part()
    images = [service.png(np.random.default_rng(job.seed * 100 + i)) for i in range(8)]
    async with grpc.aio.insecure_channel(job.target) as ch:
        stub = pb_grpc.EstimatorStub(ch)
        sids = [(await stub.CreateSession(pb.CreateSessionRequest(start_time=0.0))).session_id
                for _ in range(job.sessions)]
        await asyncio.sleep(max(0.0, job.start_at - time.time()))
        cpu, wall = time.process_time(), time.perf_counter()
        if job.mode == "fleet":
            await asyncio.gather(*(fleet_stream(stub, sid, job, j, images, part, wall)
                                   for j, sid in enumerate(sids)))
        else:
            stop_at = wall + job.seconds
            await asyncio.gather(*(saturation_stream(stub, sid, job, part, stop_at)
                                   for sid in sids))
        part.cpu_s, part.wall_s = time.process_time() - cpu, time.perf_counter() - wall
        for sid in sids:
            await stub.CloseSession(pb.SessionRef(session_id=sid))
    return part


def run_client(job: Job) -> dict:
    return asdict(asyncio.run(client_main(job)))


def run_clients(pool, target: str, sessions: int, clients: int, mode: str, seconds: float,
                period: float, proprio: int, detail: int = 0) -> tuple[Part, list[dict]]:
    start_at = time.time() + 3.0  # every client has created its sessions by then
    per = [sessions // clients + (i < sessions % clients) for i in range(clients)]
    jobs = [Job(target, n, i, start_at, seconds, mode, period, proprio, detail)
            for i, n in enumerate(per) if n]
    parts = pool.map(run_client, jobs)
    total = Part()
    for p in parts:
        for k, v in p.items():
            if isinstance(v, list):
                getattr(total, k).extend(v)
            elif k not in ("cpu_s", "wall_s"):
                setattr(total, k, getattr(total, k) + v)
    return total, [{"cpu_s": round(p["cpu_s"], 2), "wall_s": round(p["wall_s"], 2),
                    "cpu_pct": round(100 * p["cpu_s"] / max(p["wall_s"], 1e-9), 1)}
                   for p in parts]


def pct(x: list[float], q: float) -> float | None:
    return round(float(np.percentile(x, q)), 3) if x else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", type=Path, help="default: export an untrained default-size VRKN")
    p.add_argument("--seconds", type=float, default=60.0, help="fleet run length")
    p.add_argument("--sat-seconds", type=float, default=5.0, help="each saturation run")
    p.add_argument("--floor-seconds", type=float, default=15.0,
                   help="the same fleet against the bare echo stream (the latency floor)")
    p.add_argument("--sessions", type=int, default=64)
    p.add_argument("--clients", type=int, default=4, help="client processes")
    p.add_argument("--server-arg", action="append", default=[],
                   help="extra server flag, e.g. --server-arg=--engine-window-ms=1")
    p.add_argument("--detail", choices=[d.name for d in BeliefDetail if d],
                   help="what the fleet's beliefs carry (default: STATE with a state head, "
                        "else LATENT)")
    p.add_argument("--idle-limit-s", type=float, default=120.0,
                   help="before saturation: wait this long for the server to go idle, "
                        "then restart it")
    args = p.parse_args()
    if args.bundle is not None:
        service.use_bundle_sizes(args.bundle)
    load_before = os.getloadavg()
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp, ctx.Pool(args.clients) as pool:
        tmp = Path(tmp)
        bundle = args.bundle or service.export_default_bundle(tmp / "bundle")
        detail = BeliefDetail[args.detail] if args.detail else default_detail(bundle)
        proc, info = service.start_server(bundle, tmp, *args.server_arg)
        latent = int(json.loads((bundle / "manifest.json").read_text())["latent_size"])
        echo, echo_target = start_echo(tmp, latent)
        target = f"127.0.0.1:{info['grpc_port']}"
        common = dict(period=service.PERIOD, proprio=service.P)
        try:
            cpu0, loop0 = cpu_seconds(proc.pid), loop_thread_seconds(proc.pid)
            scraped = scrape(info)
            fleet, fleet_cpu = run_clients(pool, target, args.sessions, args.clients, "fleet",
                                           args.seconds, **common, detail=int(detail))
            server_cpu = (cpu_seconds(proc.pid) - cpu0) / (args.seconds + 3.0)
            loop_cpu = (loop_thread_seconds(proc.pid) - loop0) / (args.seconds + 3.0)
            profile = batch_profile(scraped, scrape(info))
            idle_wait = wait_until_idle(proc.pid, args.idle_limit_s)
            if idle_wait is None:  # still busy with the fleet's backlog: a fresh server
                print(f"the server was not idle after {args.idle_limit_s:g} s: restarted",
                      flush=True)
                proc.terminate()
                proc.wait(30)
                proc, info = service.start_server(bundle, tmp, *args.server_arg)
                target = f"127.0.0.1:{info['grpc_port']}"
            sat0 = cpu_seconds(proc.pid)
            sat, sat_cpu = run_clients(pool, target, args.sessions, args.clients,
                                       "saturation", args.sat_seconds, **common)
            sat_server_s = cpu_seconds(proc.pid) - sat0
            echo0 = cpu_seconds(echo.pid)
            floor, floor_cpu = run_clients(pool, echo_target, args.sessions, args.clients,
                                           "fleet", args.floor_seconds, **common,
                                           detail=int(detail))
            echo_cpu = (cpu_seconds(echo.pid) - echo0) / (args.floor_seconds + 3.0)
            bare0 = cpu_seconds(echo.pid)
            bare, bare_cpu = run_clients(pool, echo_target, args.sessions, args.clients,
                                         "saturation", args.sat_seconds, **common)
            sat_echo_s = cpu_seconds(echo.pid) - bare0
        finally:
            for pr in (proc, echo):
                pr.terminate()
                pr.wait(30)
    served, reference = sat.saturation / args.sat_seconds, bare.saturation / args.sat_seconds
    dropped = fleet.sent - fleet.answered + fleet.errors
    rows = [
        {"case": "proprio -> belief (50 Hz each)", "p50_ms": pct(fleet.proprio_ms, 50),
         "p99_ms": pct(fleet.proprio_ms, 99), "answers": len(fleet.proprio_ms)},
        {"case": "image (PNG) -> ack (12.5 Hz each)", "p50_ms": pct(fleet.image_ms, 50),
         "p99_ms": pct(fleet.image_ms, 99), "answers": len(fleet.image_ms)},
        {"case": "floor: proprio -> echo (same fleet)", "p50_ms": pct(floor.proprio_ms, 50),
         "p99_ms": pct(floor.proprio_ms, 99), "answers": len(floor.proprio_ms)},
        {"case": "floor: image -> echo (same fleet)", "p50_ms": pct(floor.image_ms, 50),
         "p99_ms": pct(floor.image_ms, 99), "answers": len(floor.image_ms)},
        {"case": "saturation, proprio (pipelined)", "msgs_per_s": round(served)},
        {"case": "saturation, bare gRPC echo stream", "msgs_per_s": round(reference)},
    ]
    summary = {
        "sessions": args.sessions, "seconds": args.seconds, "belief_detail": detail.name,
        "idle_wait_s": idle_wait if idle_wait is not None else "restarted",
        "sent": fleet.sent,
        "dropped": dropped, "late": fleet.late, "errors": fleet.errors,
        "send_lag_p99_ms": pct(fleet.send_lag_ms, 99),
        "saturation_vs_bare": round(served / max(reference, 1e-9), 3),
        "server_cpu_pct_fleet": round(100 * server_cpu, 1),
        "server_loop_thread_cpu_pct_fleet": round(100 * loop_cpu, 1),  # of server_cpu
        "floor_dropped": floor.sent - floor.answered + floor.errors, "floor_late": floor.late,
        "echo_cpu_pct_floor": round(100 * echo_cpu, 1),
        "server_cpu_ms_per_message": round(1e3 * server_cpu * (args.seconds + 3.0)
                                           / max(fleet.answered, 1), 3),
        "echo_cpu_ms_per_message": round(1e3 * echo_cpu * (args.floor_seconds + 3.0)
                                         / max(floor.answered, 1), 3),
        # saturation: CPU seconds of the whole phase per message answered in it
        "saturation_server_cpu_ms_per_message": round(1e3 * sat_server_s
                                                      / max(sat.answered, 1), 3),
        "saturation_echo_cpu_ms_per_message": round(1e3 * sat_echo_s
                                                    / max(bare.answered, 1), 3),
        "client_cpu": {"fleet": fleet_cpu, "saturation": sat_cpu, "bare": bare_cpu,
                       "floor": floor_cpu},
    }
    summary["batches_fleet"] = profile
    for r in rows:
        print(r, flush=True)
    for r in profile:
        print(r, flush=True)
    print(summary, flush=True)
    meta = machine_meta(load_before, **summary, server_args=args.server_arg,
                        clients=args.clients,
                        bundle="default-size untrained VRKN fusion (L=230, proprio 6, image "
                        "64x64)" if args.bundle is None else str(args.bundle))
    header = ["case", "p50 ms", "p99 ms", "answers", "msgs/s"]
    lines = [[r["case"], r.get("p50_ms") or "", r.get("p99_ms") or "", r.get("answers") or "",
              r.get("msgs_per_s") or ""] for r in rows]
    write_results("service_fleet", f"A fleet of {args.sessions} robots in real time for "
                  f"{args.seconds:g} s over loopback (bench/service_fleet.py), beliefs at "
                  f"{detail.name}: dropped "
                  f"{dropped}, late {fleet.late}; saturation {served / max(reference, 1e-9):.0%}"
                  " of the bare gRPC stream", header, lines, rows, meta)


if __name__ == "__main__":
    main()
