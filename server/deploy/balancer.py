"""Render the HAProxy configuration of a fleet (``haproxy.cfg.template``): one gRPC and
one HTTP backend listing the same replicas under the same names and numeric ids, so that
the consistent-hash ring (built from the ids, not the addresses) is the same on both
transports. Compose mounts the file this module writes for its two replicas
(``haproxy-compose.cfg``); regenerate it for another fleet with

    python -m server.deploy.balancer estimator-1 estimator-2 estimator-3 > haproxy.cfg
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

TEMPLATE = Path(__file__).with_name("haproxy.cfg.template")
COMPOSE_CONFIG = Path(__file__).with_name("haproxy-compose.cfg")
COMPOSE_REPLICAS = ("estimator-1", "estimator-2")
PLACEHOLDER = re.compile(r"\$\{(VRKN_[A-Z_]+)\}")
GRPC_BACKEND = "vrkn_grpc_replicas"
NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Replica:
    """One replica behind the balancer: its name (also the server's name in HAProxy and
    the ``x-vrkn-replica`` answer header), its ring id (unique, positive: the ring
    position; keep a replica's id when others join or leave) and its two addresses."""

    name: str
    id: int
    grpc: str  # HOST:PORT
    http: str  # HOST:PORT

    def __post_init__(self) -> None:
        if not NAME.fullmatch(self.name):
            raise ValueError(f"replica name {self.name!r}: letters, digits, '_.-' only")
        if self.id < 1:
            raise ValueError(f"replica {self.name}: the id must be positive, not {self.id}")
        for address in (self.grpc, self.http):
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"replica {self.name}: {address!r} is not HOST:PORT")


def server_lines(replicas: Sequence[Replica]) -> tuple[str, str]:
    """The two backends' ``server`` lines: the gRPC ones speak HTTP/2 (``proto h2``) and
    are health-checked; the HTTP ones track them (same state on both rings)."""
    if not replicas:
        raise ValueError("a fleet needs at least one replica")
    for what in ("name", "id"):
        values = [getattr(r, what) for r in replicas]
        if len(set(values)) != len(values):
            raise ValueError(f"replica {what}s must be unique: {values}")
    grpc = "\n".join(f"    server {r.name} {r.grpc} id {r.id} proto h2" for r in replicas)
    http = "\n".join(f"    server {r.name} {r.http} id {r.id} no-check "
                     f"track {GRPC_BACKEND}/{r.name}" for r in replicas)
    return grpc, http


def render(values: dict[str, str], template: Path = TEMPLATE) -> str:
    """The template with every ``${VRKN_*}`` replaced; KeyError names a missing one."""
    text = template.read_text()
    missing = sorted(set(PLACEHOLDER.findall(text)) - set(values))
    if missing:
        raise KeyError(f"{template.name}: no value for {', '.join(missing)}")
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def config(replicas: Sequence[Replica], grpc_bind: str, http_bind: str) -> str:
    grpc, http = server_lines(replicas)
    return render({"VRKN_GRPC_SERVERS": grpc, "VRKN_HTTP_SERVERS": http,
                   "VRKN_GRPC_BIND": grpc_bind, "VRKN_HTTP_BIND": http_bind})


def compose_config(names: Sequence[str] = COMPOSE_REPLICAS, grpc_port: int = 50051,
                   http_port: int = 8000) -> str:
    """The configuration for replicas reached by their compose service names (ids 1..N in
    the order given)."""
    return config([Replica(n, i + 1, f"{n}:{grpc_port}", f"{n}:{http_port}")
                   for i, n in enumerate(names)], f":{grpc_port}", f":{http_port}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m server.deploy.balancer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("replicas", nargs="+", help="the replicas' host names, in ring-id order")
    p.add_argument("--grpc-port", type=int, default=50051)
    p.add_argument("--http-port", type=int, default=8000)
    args = p.parse_args(argv)
    sys.stdout.write(compose_config(args.replicas, args.grpc_port, args.http_port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
