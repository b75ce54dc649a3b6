"""HAProxy, as configured for a fleet (server/deploy/haproxy.cfg.template), in front of
three stub replicas on 127.0.0.1: each answers gRPC (any method) and HTTP with its own
name, so the test sees where the balancer sent every call.

* One ring for both transports: 300 seeded session ids reach the same replica over gRPC
  (metadata) and over HTTP (the header, or the id in the path), and every replica gets
  some.
* Consistent: when a replica goes away only its sessions move (both transports alike);
  when it is back they return to it.
* A create or a stream without the header is refused by the balancer (gRPC
  INVALID_ARGUMENT, HTTP 400 ``no_session_header``), before any replica sees it.
"""

from __future__ import annotations

import random
import subprocess
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import httpx
import pytest

from server.deploy import balancer
from server.deploy.local import _binary, free_port, wait_port
from tests.scale.conftest import need

pytestmark = pytest.mark.scale
SERVICE = "/vrkn.estimator.v1.Estimator"


class Stub:
    """A replica that answers every gRPC unary call and every HTTP request with its name
    (gRPC initial metadata / HTTP header ``x-stub``)."""

    def __init__(self, name: str):
        self.name, self.grpc_port, self.http_port = name, free_port(), free_port()
        self.calls: list[str] = []
        self.grpc: grpc.Server | None = None
        self.http: ThreadingHTTPServer | None = None

    def start(self) -> None:
        stub = self

        class Handler(grpc.GenericRpcHandler):
            def service(self, details):
                def answer(request: bytes, context) -> bytes:
                    stub.calls.append(details.method)
                    context.send_initial_metadata((("x-stub", stub.name),))
                    return b""
                return grpc.unary_unary_rpc_method_handler(answer)

        class Http(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                self.rfile.read(int(self.headers.get("content-length") or 0))
                stub.calls.append(self.path)
                self.send_response(200)
                self.send_header("x-stub", stub.name)
                self.send_header("content-length", "0")
                self.end_headers()

            do_POST = do_GET

            def log_message(self, *args):
                pass

        self.grpc = grpc.server(futures.ThreadPoolExecutor(4), handlers=[Handler()])
        assert self.grpc.add_insecure_port(f"127.0.0.1:{self.grpc_port}") == self.grpc_port
        self.grpc.start()
        self.http = ThreadingHTTPServer(("127.0.0.1", self.http_port), Http)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.grpc is not None:
            self.grpc.stop(None).wait(5)
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
        self.grpc = self.http = None


@pytest.fixture
def fleet(tmp_path):
    need("haproxy")
    stubs = [Stub(f"s{i}") for i in range(3)]
    for s in stubs:
        s.start()
    grpc_port, http_port = free_port(), free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(balancer.config(
        [balancer.Replica(s.name, i + 1, f"127.0.0.1:{s.grpc_port}",
                          f"127.0.0.1:{s.http_port}") for i, s in enumerate(stubs)],
        f"127.0.0.1:{grpc_port}", f"127.0.0.1:{http_port}"))
    log = tmp_path / "haproxy.log"
    with log.open("w") as out:
        proc = subprocess.Popen([_binary("haproxy"), "-db", "-f", str(cfg)], stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        try:
            wait_port(grpc_port, proc, "haproxy")
            wait_port(http_port, proc, "haproxy")
        except RuntimeError as e:
            raise RuntimeError(f"{e}:\n{log.read_text()}") from None
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel, \
                httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=5) as http:
            yield stubs, channel, http
    finally:
        proc.terminate()
        proc.wait(10)
        for s in stubs:
            s.stop()


def via_grpc(channel, sid: str) -> str:
    _, call = channel.unary_unary(f"{SERVICE}/DescribeSession").with_call(
        b"", metadata=(("x-session-id", sid),), timeout=5)
    meta = dict(call.initial_metadata())
    assert meta["x-stub"] == meta["x-vrkn-replica"]  # the balancer names who answered
    return meta["x-stub"]


def via_http(http, sid: str, header: bool) -> str:
    r = (http.get("/v1/models", headers={"x-session-id": sid}) if header
         else http.get(f"/v1/sessions/{sid}/belief"))
    assert r.status_code == 200
    assert r.headers["x-stub"] == r.headers["x-vrkn-replica"]
    return r.headers["x-stub"]


def mapping(channel, http, sids) -> dict[str, tuple[str, str, str]]:
    return {s: (via_grpc(channel, s), via_http(http, s, True), via_http(http, s, False))
            for s in sids}


def test_one_consistent_ring_for_both_transports(fleet):
    stubs, channel, http = fleet
    rng = random.Random(14)
    sids = [f"{rng.getrandbits(128):032x}" for _ in range(300)]
    before = mapping(channel, http, sids)
    assert all(len(set(v)) == 1 for v in before.values()), \
        {s: v for s, v in before.items() if len(set(v)) != 1}
    owner = {s: v[0] for s, v in before.items()}
    counts = {s.name: list(owner.values()).count(s.name) for s in stubs}
    assert min(counts.values()) >= 30, counts  # every replica holds a fair share
    # s1 goes away: only its sessions move, to the same replica on both transports.
    stubs[1].stop()
    deadline = time.monotonic() + 15
    while True:
        now = mapping(channel, http, sids)
        moved = {s for s in sids if now[s][0] != owner[s]}
        if all(len(set(v)) == 1 for v in now.values()) and \
                moved == {s for s in sids if owner[s] == "s1"}:
            break
        assert time.monotonic() < deadline, (len(moved), counts)
        time.sleep(0.2)
    # Back (same ports): its sessions return to it, the others never moved.
    stubs[1].start()
    deadline = time.monotonic() + 15
    while mapping(channel, http, sids) != before:
        assert time.monotonic() < deadline, "s1's sessions did not return to it"
        time.sleep(0.2)


def test_create_and_stream_without_the_header_are_refused(fleet):
    stubs, channel, http = fleet
    for method in ("CreateSession", "StreamMessages"):
        call = channel.stream_unary(f"{SERVICE}/{method}")
        with pytest.raises(grpc.RpcError) as e:
            call(iter([b""]), timeout=5)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value
        assert "x-session-id" in e.value.details()
    r = http.post("/v1/sessions", json={})
    assert r.status_code == 400 and r.json()["error"]["reason"] == "no_session_header"
    assert all(s.calls == [] for s in stubs)  # refused by the balancer itself
    r = http.post("/v1/sessions", json={}, headers={"x-session-id": "abc"})
    assert r.status_code == 200 and r.headers["x-stub"] in {s.name for s in stubs}
    _, call = channel.unary_unary(f"{SERVICE}/CreateSession").with_call(
        b"", metadata=(("x-session-id", "abc"),), timeout=5)
    assert dict(call.initial_metadata())["x-stub"] == r.headers["x-stub"]
