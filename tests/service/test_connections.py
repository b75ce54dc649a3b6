"""Connections on loopback (raw sockets, bounded in time): the HTTP body limit holds for
chunked bodies too, the token is checked before the body is read, and silent, slow-loris
and dead connections are closed by the HTTP and gRPC timeouts."""

from __future__ import annotations

import json
import socket
import struct
import time

import pytest

from tests.service.conftest import TOKEN, ServerProcess

pytestmark = pytest.mark.slow
TIMEOUT = 0.5  # every connection timeout of the server below
SLACK = 3.0  # closed within TIMEOUT + SLACK, else the test fails (no timeout would mean never)
LIMIT = 100_000 * 4 // 3 + (64 << 10)  # the HTTP body limit for --max-message-bytes 100000


@pytest.fixture(scope="module")
def server(bundle_dir, tmp_path_factory):
    t = str(TIMEOUT)
    proc = ServerProcess(bundle_dir, tmp_path_factory.mktemp("connections"), "--token", TOKEN,
                         "--max-message-bytes", "100000",
                         "--http-keepalive-s", t, "--http-header-timeout-s", t,
                         "--http-body-timeout-s", t, "--grpc-handshake-timeout-s", t,
                         "--grpc-max-idle-s", t, "--grpc-keepalive-s", t,
                         "--grpc-keepalive-timeout-s", t)
    yield proc
    assert proc.stop() == 0, proc.log()


def seconds_until_closed(sock: socket.socket, drip: bytes = b"", limit: float = TIMEOUT + SLACK
                         ) -> float | None:
    """Read (and send ``drip`` every 0.1 s) until the server closes; None if it did not."""
    start = time.monotonic()
    sock.settimeout(0.1)
    while time.monotonic() - start < limit:
        try:
            if not sock.recv(65536):
                return time.monotonic() - start
        except TimeoutError:
            pass
        except ConnectionResetError:
            return time.monotonic() - start
        if drip:
            try:
                sock.sendall(drip)
            except OSError:
                return time.monotonic() - start
    return None


def read_response(sock: socket.socket) -> tuple[int, dict, dict]:
    sock.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed without a response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, _, v in (x.partition(": ") for x in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        body += sock.recv(65536)
    return int(lines[0].split()[1]), headers, json.loads(body) if body else {}


def test_a_chunked_body_above_the_limit_is_413_while_it_streams(server):
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as sock:
        sock.sendall(b"POST /v1/sessions HTTP/1.1\r\nhost: t\r\nauthorization: Bearer "
                     + TOKEN.encode() + b"\r\ncontent-type: application/json\r\n"
                     b"transfer-encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (1 << 16, b" " * (1 << 16))
        sent = 0
        try:
            while sent < 40 * LIMIT:  # the server must answer long before this
                sock.sendall(chunk)
                sent += 1 << 16
                sock.settimeout(0.01)
                try:
                    if sock.recv(1, socket.MSG_PEEK):
                        break
                except TimeoutError:
                    pass
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, headers, body = read_response(sock)
    assert status == 413, body
    assert body["error"]["reason"] == "too_large" and str(LIMIT) in body["error"]["message"]
    assert headers.get("connection") == "close"
    assert sent < 4 * LIMIT  # refused while streaming, not after reading it whole


def test_the_token_is_checked_before_the_body_is_read(server):
    for extra in (b"content-length: 150000\r\n",  # below the limit, never sent
                  b"content-length: 99999999\r\n",  # above it: 401 first
                  b"transfer-encoding: chunked\r\n"):
        with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as sock:
            sock.sendall(b"POST /v1/sessions HTTP/1.1\r\nhost: t\r\n"
                         b"content-type: application/json\r\n" + extra + b"\r\n")
            status, headers, body = read_response(sock)  # without sending any body
        assert status == 401 and body["error"]["reason"] == "missing_token", body
        assert headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("case", ["silent", "slow-loris headers", "slow body",
                                  "idle after a response"])
def test_slow_and_silent_http_connections_are_closed(server, case):
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as sock:
        drip = b""
        if case == "slow-loris headers":  # a header byte every 0.1 s: activity, no request
            sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: t\r\nx-slow: ")
            drip = b"x"
        elif case == "slow body":
            sock.sendall(b"POST /v1/sessions HTTP/1.1\r\nhost: t\r\nauthorization: Bearer "
                         + TOKEN.encode() + b"\r\ncontent-length: 10000\r\n\r\n")
            drip = b" "
        elif case == "idle after a response":
            sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
            assert read_response(sock)[0] == 200
        took = seconds_until_closed(sock, drip)
    assert took is not None, f"{case}: not closed within {TIMEOUT + SLACK} s"


def test_many_half_open_http_connections_are_reclaimed(server):
    socks = [socket.create_connection(("127.0.0.1", server.http_port), timeout=5)
             for _ in range(64)]
    try:
        time.sleep(TIMEOUT + 0.5)
        assert all(seconds_until_closed(s, limit=SLACK) is not None for s in socks)
    finally:
        for s in socks:
            s.close()
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
        assert read_response(sock)[0] == 200  # still serving


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + \
        struct.pack(">I", stream) + payload


def _header(name: bytes, value: bytes) -> bytes:  # HPACK literal, not indexed, no Huffman
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0)  # + empty SETTINGS
OPEN_STREAM = _frame(4, 1, 0) + _frame(1, 4, 1, b"".join(_header(k, v) for k, v in (
    (b":method", b"POST"), (b":scheme", b"http"),
    (b":path", b"/vrkn.estimator.v1.Estimator/StreamMessages"), (b":authority", b"t"),
    (b"content-type", b"application/grpc"), (b"te", b"trailers"),
    (b"authorization", b"Bearer " + TOKEN.encode()))))


@pytest.mark.parametrize("case", ["silent", "no calls", "a stream, pings unanswered"])
def test_silent_idle_and_dead_grpc_connections_are_closed(server, case):
    """Silent: no HTTP/2 preface (handshake timeout). No calls: max idle. A stream whose
    peer never answers the server's keepalive ping: what a half-open connection looks
    like (the peer is gone), closed after the keepalive time and timeout."""
    with socket.create_connection(("127.0.0.1", server.grpc_port), timeout=5) as sock:
        if case != "silent":
            sock.sendall(PREFACE + (OPEN_STREAM if case.startswith("a stream") else b""))
        took = seconds_until_closed(sock)
    assert took is not None, f"{case}: not closed within {TIMEOUT + SLACK} s"


def test_a_working_grpc_stream_outlives_the_timeouts(server):
    import grpc

    from proto.vrkn.estimator.v1 import estimator_pb2 as pb
    from proto.vrkn.estimator.v1 import estimator_pb2_grpc as pb_grpc

    auth = (("authorization", f"Bearer {TOKEN}"),)
    with grpc.insecure_channel(server.grpc_target) as ch:
        stub = pb_grpc.EstimatorStub(ch)
        sid = stub.CreateSession(pb.CreateSessionRequest(start_time=0.0),
                                 metadata=auth).session_id

        def slow_messages():
            for k in range(4):
                time.sleep(2 * TIMEOUT)  # silent for longer than every timeout
                yield pb.SensorMessage(session_id=sid, sensor="proprio", timestamp=k * 0.05,
                                       sequence=k, vector=pb.FloatVector(values=[0, 0, 0]))

        acks = list(stub.StreamMessages(slow_messages(), metadata=auth))
        assert [a.sequence for a in acks] == [0, 1, 2, 3]
        assert not any(a.HasField("error") for a in acks)
