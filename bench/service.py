"""Benchmark: the estimation service over loopback (127.0.0.1 only; bounded in count and
time). Starts ``python -m server`` on a default-size untrained VRKN fusion bundle (L = 230,
proprio 6 + 64x64 image; or ``--bundle DIR``) and measures, from a client process:

- round-trip latency p50/p99 of a proprio message -> belief (the message carries
  ``return_belief``: one round trip), and of an image message (PNG) -> ack, over gRPC
  (unary and bidirectional stream) and HTTP, with 1 and 64 concurrent sessions;
- the floor of the one-robot stream: the same client and messages against a trivial echo
  servicer of the same proto, in the same run;
- messages/s at saturation: 64 sessions streaming proprio messages over gRPC, pipelined.

Writes bench/results/service.{json,md}. The machine is shared: the load average before and
after is recorded with the results.

    python bench/service.py [--bundle DIR] [--messages 2000] [--seconds 4]

What the state estimate adds to a round trip: bench/service_state_head.py.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import queue
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from results_io import machine_meta, write_results

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from proto.vrkn.estimator.v1 import estimator_pb2 as pb  # noqa: E402
from proto.vrkn.estimator.v1 import estimator_pb2_grpc as pb_grpc  # noqa: E402
from proto.wire import BeliefDetail  # noqa: E402

P, A, PERIOD = 6, 6, 0.02
DETAIL = BeliefDetail.FULL  # what a proprio message's belief carries (--detail)


def export_default_bundle(path: Path) -> Path:
    import torch

    from estimator.batch import image_sensor, vector_sensor
    from estimator.models import make_world_model
    from training.actor_critic import Actor
    from training.export import ExportInputs, export_bundle

    torch.manual_seed(0)
    model = make_world_model("vrkn", (vector_sensor("proprio", P), image_sensor()), A).eval()
    actor = Actor(model.feature_dim, model.action_dim)
    info = ExportInputs(PERIOD, (-1.0,) * A, (1.0,) * A,
                        {"proprio": (np.zeros(P), np.ones(P))}, {"note": "bench, untrained"})
    return export_bundle(model, actor, info, path)


def use_bundle_sizes(bundle: Path) -> None:
    """Proprio size and control period of a given bundle (the messages must fit it)."""
    global P, PERIOD
    manifest = json.loads((bundle / "manifest.json").read_text())
    PERIOD = float(manifest["control_period_s"])
    for s in manifest["sensors"]:
        if s["name"] == "proprio":
            P = int(s["shape"][0])


def start_server(bundle: Path, workdir: Path, *args: str) -> tuple[subprocess.Popen, dict]:
    ready = workdir / "ready.json"
    cmd = [sys.executable, "-m", "server", "--bundle", str(bundle), "--host", "127.0.0.1",
           "--grpc-port", "0", "--http-port", "0", "--ready-file", str(ready),
           "--log-level", "warning", "--max-sessions", "512", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT)
    deadline = time.monotonic() + 120
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    return proc, json.loads(ready.read_text())


def stats(lat: list[float]) -> tuple[float, float]:
    arr = np.asarray(lat) * 1e3
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def png(rng: np.random.Generator) -> bytes:
    from PIL import Image

    # A smooth image with a little noise: compresses like a camera frame, not like noise.
    y, x = np.mgrid[0:64, 0:64]
    base = np.stack([x * 4, y * 4, (x + y) * 2], -1) + rng.integers(0, 16, (64, 64, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def proprio_msg(sid: str, i: int, rng, belief: bool) -> pb.SensorMessage:
    return pb.SensorMessage(session_id=sid, sensor="proprio", timestamp=i * PERIOD, sequence=i,
                            vector=pb.FloatVector(values=rng.standard_normal(P).tolist()),
                            return_belief=belief, belief_detail=int(DETAIL))


def image_msg(sid: str, i: int, images: list[bytes], belief: bool = False) -> pb.SensorMessage:
    return pb.SensorMessage(session_id=sid, sensor="image", timestamp=i * PERIOD + 0.001,
                            sequence=i, encoded_image=images[i % len(images)],
                            return_belief=belief)


class RawHTTP:
    """A minimal HTTP/1.1 keep-alive JSON client on asyncio streams: httpx's own CPU cost
    (about 2 ms per request with 64 connections) would otherwise be what is measured."""

    async def open(self, url: str) -> RawHTTP:
        host, port = url.removeprefix("http://").split(":")
        self.reader, self.writer = await asyncio.open_connection(host, int(port))
        return self

    async def request(self, method: str, path: str, body: dict | None = None
                      ) -> tuple[int, dict]:
        data = b"" if body is None else json.dumps(body).encode()
        self.writer.write(f"{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: "
                          f"application/json\r\nContent-Length: {len(data)}\r\n\r\n"
                          .encode() + data)
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        payload = await self.reader.readexactly(length)
        return status, (json.loads(payload) if payload else {})

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


# -- one session, synchronous clients -------------------------------------------------------
def grpc_single(target: str, kind: str, n: int, images: list[bytes], limit_s: float):
    import grpc

    rng = np.random.default_rng(0)
    with grpc.insecure_channel(target) as ch:
        stub = pb_grpc.EstimatorStub(ch)
        sid = stub.CreateSession(pb.CreateSessionRequest(start_time=0.0)).session_id
        make = {"proprio": lambda i: proprio_msg(sid, i, rng, True),
                "image": lambda i: image_msg(sid, i, images)}
        lat = {"unary": [], "stream": []}
        deadline = time.monotonic() + limit_s
        for i in range(n):  # unary
            m = make[kind](i)
            t = time.perf_counter()
            stub.SendMessage(m)
            lat["unary"].append(time.perf_counter() - t)
            if time.monotonic() > deadline:
                break
        stub.ResetSession(pb.ResetSessionRequest(session_id=sid, start_time=0.0))
        q: queue.Queue = queue.Queue()
        acks = stub.StreamMessages(iter(q.get, None))
        deadline = time.monotonic() + limit_s
        for i in range(n):  # ping-pong on one bidirectional stream
            m = make[kind](i)
            t = time.perf_counter()
            q.put(m)
            ack = next(acks)
            lat["stream"].append(time.perf_counter() - t)
            assert not ack.HasField("error"), ack.error
            if time.monotonic() > deadline:
                break
        q.put(None)
        stub.CloseSession(pb.SessionRef(session_id=sid))
    return {k: v[len(v) // 10:] for k, v in lat.items()}  # drop the warm-up tenth


def bare_stream(target: str, n: int, limit_s: float) -> list[float]:
    """The physical floor of the one-robot stream: the same client and messages against a
    trivial echo servicer of the same proto (``bench/echo_server.py``)."""
    import grpc

    rng = np.random.default_rng(0)
    with grpc.insecure_channel(target) as ch:
        stub = pb_grpc.EstimatorStub(ch)
        q: queue.Queue = queue.Queue()
        acks = stub.StreamMessages(iter(q.get, None))
        lat, deadline = [], time.monotonic() + limit_s
        for i in range(n):
            m = proprio_msg("bare", i, rng, True)
            t = time.perf_counter()
            q.put(m)
            next(acks)
            lat.append(time.perf_counter() - t)
            if time.monotonic() > deadline:
                break
        q.put(None)
    return lat[len(lat) // 10:]


def http_single(url: str, kind: str, n: int, images: list[bytes], limit_s: float):
    lat, _ = asyncio.run(http_many(url, kind, 1, n, images, limit_s))
    return lat


# -- many sessions, asyncio clients -----------------------------------------------------
async def grpc_many(target: str, kind: str, sessions: int, per_session: int,
                    images: list[bytes], limit_s: float):
    import grpc

    async with grpc.aio.insecure_channel(target) as ch:
        stub = pb_grpc.EstimatorStub(ch)
        sids = [(await stub.CreateSession(pb.CreateSessionRequest(start_time=0.0))).session_id
                for _ in range(sessions)]
        deadline = time.monotonic() + limit_s

        async def robot(j: int, sid: str) -> list[float]:
            rng = np.random.default_rng(j)
            call = stub.StreamMessages()
            lat = []
            for i in range(per_session):
                m = (proprio_msg(sid, i, rng, True) if kind == "proprio" else
                     image_msg(sid, i, images))
                t = time.perf_counter()
                await call.write(m)
                ack = await call.read()
                lat.append(time.perf_counter() - t)
                assert not ack.HasField("error"), ack.error
                if time.monotonic() > deadline:
                    break
            await call.done_writing()
            return lat[len(lat) // 10:]

        start = time.perf_counter()
        lats = await asyncio.gather(*(robot(j, s) for j, s in enumerate(sids)))
        elapsed = time.perf_counter() - start
        for sid in sids:
            await stub.CloseSession(pb.SessionRef(session_id=sid))
    flat = [x for lat in lats for x in lat]
    return flat, sum(len(x) for x in lats) / 0.9 / elapsed


async def http_many(url: str, kind: str, sessions: int, per_session: int,
                    images: list[bytes], limit_s: float):
    """Each session on its own keep-alive connection (RawHTTP), closed loop."""
    b64 = [base64.b64encode(x).decode() for x in images]
    clients = [await RawHTTP().open(url) for _ in range(sessions)]
    sids = [(await c.request("POST", "/v1/sessions", {"start_time": 0.0}))[1]["session_id"]
            for c in clients]
    deadline = time.monotonic() + limit_s

    async def robot(j: int, sid: str) -> list[float]:
        rng = np.random.default_rng(j)
        lat = []
        for i in range(per_session):
            body = ({"sensor": "proprio", "timestamp": i * PERIOD, "return_belief": True,
                     "belief_detail": DETAIL.name.lower(),
                     "values": rng.standard_normal(P).tolist()} if kind == "proprio" else
                    {"sensor": "image", "timestamp": i * PERIOD + 0.001,
                     "image_base64": b64[i % len(b64)]})
            t = time.perf_counter()
            status, reply = await clients[j].request("POST", f"/v1/sessions/{sid}/messages",
                                                     body)
            lat.append(time.perf_counter() - t)
            assert status == 200, reply
            if time.monotonic() > deadline:
                break
        return lat[len(lat) // 10:]

    start = time.perf_counter()
    lats = await asyncio.gather(*(robot(j, s) for j, s in enumerate(sids)))
    elapsed = time.perf_counter() - start
    for c, sid in zip(clients, sids, strict=True):
        await c.request("DELETE", f"/v1/sessions/{sid}")
        await c.close()
    flat = [x for lat in lats for x in lat]
    return flat, sum(len(x) for x in lats) / 0.9 / elapsed


async def grpc_saturation(target: str, sessions: int, seconds: float, window: int = 32
                          ) -> float:
    """Proprio messages/s: every session streams with up to ``window`` unanswered."""
    import grpc

    async with grpc.aio.insecure_channel(target) as ch:
        stub = pb_grpc.EstimatorStub(ch)
        sids = [(await stub.CreateSession(pb.CreateSessionRequest(start_time=0.0))).session_id
                for _ in range(sessions)]
        msgs = [[proprio_msg(sid, i, np.random.default_rng(i), False) for i in range(200)]
                for sid in sids]
        stop_at = time.monotonic() + seconds
        counts = [0] * sessions

        async def robot(j: int, sid: str) -> None:
            call = stub.StreamMessages()
            credit = asyncio.Semaphore(window)

            async def reader():
                while (ack := await call.read()) is not grpc.aio.EOF:
                    assert not ack.HasField("error"), ack.error
                    counts[j] += 1
                    credit.release()

            task = asyncio.create_task(reader())
            i = 0
            while time.monotonic() < stop_at:
                await credit.acquire()
                m = msgs[j][i % 200]
                m.timestamp = i * PERIOD  # a new tick per message: the head advances
                await call.write(m)
                i += 1
            await call.done_writing()
            await task

        await asyncio.gather(*(robot(j, s) for j, s in enumerate(sids)))
        for sid in sids:
            await stub.CloseSession(pb.SessionRef(session_id=sid))
    return sum(counts) / seconds


def encoder_batches(url: str) -> dict[str, float]:
    """Image encoder runs and mean messages per run over the whole benchmark (/metrics)."""
    import httpx

    values = {}
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith("vrkn_encoder_batch_size_") and "image" in line:
            name = line.split("{")[0].removeprefix("vrkn_encoder_batch_size_")
            values[name] = float(line.split()[-1])
    runs = values.get("count", 0.0)
    return {"runs": runs, "mean_batch": round(values.get("sum", 0.0) / max(runs, 1), 2)}


def main() -> None:
    if "--replicas" in sys.argv[1:]:  # the fleet figures: bench/service_replicas.py
        import service_replicas

        sys.argv = [sys.argv[0]] + [a for a in sys.argv[1:] if a != "--replicas"]
        service_replicas.main()
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                epilog="--replicas: 1 and 2 replicas behind HAProxy, the "
                                "balancer's added latency and failover time (the options of "
                                "bench/service_replicas.py)")
    p.add_argument("--bundle", type=Path, help="default: export an untrained default-size VRKN")
    p.add_argument("--messages", type=int, default=2000, help="per single-session case")
    p.add_argument("--per-session", type=int, default=60, help="per session, 64 sessions")
    p.add_argument("--sessions", type=int, default=64)
    p.add_argument("--seconds", type=float, default=4.0, help="saturation run length")
    p.add_argument("--limit-s", type=float, default=30.0, help="time cap per case")
    p.add_argument("--server-arg", action="append", default=[],
                   help="extra server flag, e.g. --server-arg=--batch-window-ms=1")
    p.add_argument("--detail", choices=[d.name for d in BeliefDetail if d], default="FULL",
                   help="what a proprio message's belief carries (default FULL)")
    args = p.parse_args()
    global DETAIL
    DETAIL = BeliefDetail[args.detail]
    if args.bundle is not None:
        use_bundle_sizes(args.bundle)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = args.bundle or export_default_bundle(tmp / "bundle")
        proc, info = start_server(bundle, tmp, *args.server_arg)
        target, url = f"127.0.0.1:{info['grpc_port']}", f"http://127.0.0.1:{info['http_port']}"
        rng = np.random.default_rng(0)
        images = [png(rng) for _ in range(16)]
        rows = []

        def add(case, transport, sessions, lat, rate=None):
            p50, p99 = stats(lat)
            rows.append({"case": case, "transport": transport, "sessions": sessions,
                         "messages": len(lat), "p50_ms": round(p50, 3), "p99_ms": round(p99, 3),
                         "msgs_per_s": None if rate is None else round(rate)})
            print(rows[-1], flush=True)

        try:
            n, lim = args.messages, args.limit_s
            g = grpc_single(target, "proprio", n, images, lim)
            add("proprio -> belief", "gRPC unary", 1, g["unary"])
            add("proprio -> belief", "gRPC stream", 1, g["stream"])
            from echo_server import start_echo

            latent = int(json.loads((bundle / "manifest.json").read_text())["latent_size"])
            echo, echo_target = start_echo(tmp, latent)
            try:
                add("proprio -> ack, bare echo servicer (floor)", "gRPC stream", 1,
                    bare_stream(echo_target, n, lim))
            finally:
                echo.kill()
                echo.wait(30)
            g = grpc_single(target, "image", n // 4, images, lim)
            add("image (PNG) -> ack", "gRPC unary", 1, g["unary"])
            add("image (PNG) -> ack", "gRPC stream", 1, g["stream"])
            add("proprio -> belief", "HTTP", 1, http_single(url, "proprio", n, images, lim))
            add("image (PNG) -> ack", "HTTP", 1,
                http_single(url, "image", n // 4, images, lim))
            s, k = args.sessions, args.per_session
            lat, rate = asyncio.run(grpc_many(target, "proprio", s, k, images, lim))
            add("proprio -> belief", "gRPC stream", s, lat, rate)
            lat, rate = asyncio.run(grpc_many(target, "image", s, max(k // 2, 10), images,
                                              lim))
            add("image (PNG) -> ack", "gRPC stream", s, lat, rate)
            lat, rate = asyncio.run(http_many(url, "proprio", s, k, images, lim))
            add("proprio -> belief", "HTTP", s, lat, rate)
            lat, rate = asyncio.run(http_many(url, "image", s, max(k // 2, 10), images, lim))
            add("image (PNG) -> ack", "HTTP", s, lat, rate)
            rate = asyncio.run(grpc_saturation(target, s, args.seconds))
            rows.append({"case": "proprio, saturation (pipelined)", "transport": "gRPC stream",
                         "sessions": s, "messages": None, "p50_ms": None, "p99_ms": None,
                         "msgs_per_s": round(rate)})
            print(rows[-1], flush=True)
            batch = encoder_batches(url)
            print("image encoder batches:", batch, flush=True)
        finally:
            proc.terminate()
            proc.wait(30)
    meta = machine_meta(load_before, image_encoder_batches=batch,
                        bundle="default-size untrained VRKN fusion (L=230, proprio 6, image "
                        "64x64)" if args.bundle is None else str(args.bundle),
                        server_args=args.server_arg, client="one process, same machine",
                        belief_detail=DETAIL.name)
    header = ["case", "transport", "sessions", "messages", "p50 ms", "p99 ms", "msgs/s"]
    lines = [[r["case"], r["transport"], r["sessions"], r["messages"] or "",
              r["p50_ms"] if r["p50_ms"] is not None else "",
              r["p99_ms"] if r["p99_ms"] is not None else "", r["msgs_per_s"] or ""]
             for r in rows]
    write_results("service", "Estimation service over loopback (bench/service.py)", header,
                  lines, rows, meta)


if __name__ == "__main__":
    main()
