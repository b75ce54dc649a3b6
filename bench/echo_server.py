"""The bare reference of the service benchmarks: an echo servicer of the estimator's proto
over the same transport (grpc.aio), answering every message at once; one that asks for a
belief gets a latent mean and variance of the bundle's size. What gRPC, the clients and
the shared cores cost before a server does any work.

    python bench/echo_server.py PORT_FILE LATENT_SIZE   (127.0.0.1, a free port)
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proto.vrkn.estimator.v1 import estimator_pb2 as pb
from proto.vrkn.estimator.v1 import estimator_pb2_grpc as pb_grpc


class Echo(pb_grpc.EstimatorServicer):
    """Acks every message; one asking for a belief gets a latent mean and variance of the
    bundle's size (``latent``), so the answer's bytes match a LATENT belief."""

    def __init__(self, latent: int = 0):
        zeros = [0.0] * latent
        self.belief = pb.Belief(mean=zeros, var=zeros, detail=pb.BELIEF_DETAIL_LATENT)

    async def CreateSession(self, request, context):
        return pb.Session(session_id=os.urandom(8).hex())

    async def CloseSession(self, request, context):
        return pb.CloseSessionResponse()

    async def StreamMessages(self, request_iterator, context):
        async for req in request_iterator:
            ack = pb.Ack(sequence=req.sequence, session_id=req.session_id, sensor=req.sensor)
            if req.return_belief:
                ack.belief.CopyFrom(self.belief)
            yield ack


def echo_server(port_file: str, latent: int) -> None:
    import grpc

    async def main():
        server = grpc.aio.server()
        pb_grpc.add_EstimatorServicer_to_server(Echo(latent), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        Path(port_file).write_text(str(port))
        await server.wait_for_termination()

    asyncio.run(main())


def start_echo(workdir: Path, latent: int) -> tuple[subprocess.Popen, str]:
    port_file = workdir / "echo.port"
    proc = subprocess.Popen([sys.executable, __file__, str(port_file), str(latent)])
    deadline = time.monotonic() + 60
    while not port_file.exists() or not port_file.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the echo server did not start")
        time.sleep(0.05)
    return proc, f"127.0.0.1:{port_file.read_text()}"


if __name__ == "__main__":
    echo_server(sys.argv[1], int(sys.argv[2]))
