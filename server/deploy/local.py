"""A fleet on loopback, without Docker: redis-server, N ``python -m server`` replicas
sharing it (``--store``), HAProxy in front (``haproxy.cfg.template``), every port free and
on 127.0.0.1, every file in one folder. The scale tests and ``bench/service_replicas.py`` run
it; by hand:

    python -m server.deploy.local --replicas 2 [--folder DIR] [-- SERVER FLAGS...]

prints the balancer's addresses and runs until Ctrl-C (then stops everything).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from server.deploy import balancer

# For tests on a loaded machine: writes every 0.2 s (loss <= 0.2 s), a 3 s lease (the
# default: a replica stalled for a second by other jobs keeps its sessions; failover
# <= 3 s), hand-back after 10 s idle (longer than any pause between a test's calls of a
# session, failover included: a hand-back there would count as a second take-over).
STORE_FLAGS = ("--store-interval-s", "0.2", "--store-lease-s", "3.0",
               "--store-handoff-s", "10.0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} is not listening on {port} after {timeout:.0f} s")


def missing_binaries(*names: str) -> list[str]:
    return [n for n in names if shutil.which(n) is None and
            not Path("/usr/sbin", n).exists()]


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


@dataclass
class Replica:
    name: str
    proc: subprocess.Popen
    grpc_port: int
    http_port: int
    log: Path

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


MARKER = ".vrkn-fleet"  # in every folder a Fleet writes to


def claim_folder(folder: Path) -> None:
    """Use ``folder`` only if it is new, empty or an earlier fleet's (its files are
    replaced: logs, ready files, the balancer's config); refuse anything else."""
    if folder.exists() and any(folder.iterdir()) and not (folder / MARKER).is_file():
        raise RuntimeError(f"{folder} is not empty and holds no {MARKER}: not a fleet folder, "
                           "refusing to write into it")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text("written by server.deploy.local; its files may be replaced\n")


class Fleet:
    """``with Fleet(folder, replicas=2) as fleet:`` starts everything, stops it on exit."""

    def __init__(self, folder: Path, replicas: int = 2, server_args: tuple[str, ...] = (),
                 store_flags: tuple[str, ...] = STORE_FLAGS, env: dict | None = None):
        self.folder = Path(folder)
        self.count, self.server_args, self.store_flags = replicas, server_args, store_flags
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("VRKN_")}
        self.env.update(env or {})
        self.redis: subprocess.Popen | None = None
        self.haproxy: subprocess.Popen | None = None
        self.replicas: list[Replica] = []
        self.redis_port = self.grpc_port = self.http_port = 0

    @property
    def store_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def __enter__(self) -> Fleet:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        claim_folder(self.folder)
        self.start_redis()
        for i in range(self.count):
            self.replicas.append(self.start_replica(f"r{i}"))
        self.start_haproxy()

    def start_redis(self) -> None:
        self.redis_port = free_port()
        self.redis = subprocess.Popen(
            [_binary("redis-server"), "--port", str(self.redis_port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.folder),
             "--logfile", str(self.folder / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_port(self.redis_port, self.redis, "redis-server")

    def start_replica(self, name: str, extra: tuple[str, ...] = ()) -> Replica:
        ready, log = self.folder / f"ready-{name}.json", self.folder / f"{name}.log"
        ready.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "server", "--host", "127.0.0.1", "--grpc-port", "0",
               "--http-port", "0", "--ready-file", str(ready), "--store", self.store_url,
               "--replica-id", name, *self.store_flags, *self.server_args, *extra]
        with log.open("a") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                    cwd=str(self.folder))
        deadline = time.monotonic() + 90
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                raise RuntimeError(f"replica {name} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        return Replica(name, proc, info["grpc_port"], info["http_port"], log)

    @property
    def ring(self) -> list[balancer.Replica]:
        """The replicas as the balancer knows them: ring ids 1..N in start order."""
        return [balancer.Replica(r.name, i + 1, r.grpc_target, f"127.0.0.1:{r.http_port}")
                for i, r in enumerate(self.replicas)]

    def start_haproxy(self) -> None:
        self.grpc_port, self.http_port = free_port(), free_port()
        cfg = self.folder / "haproxy.cfg"
        cfg.write_text(balancer.config(self.ring, f"127.0.0.1:{self.grpc_port}",
                                       f"127.0.0.1:{self.http_port}"))
        check = subprocess.run([_binary("haproxy"), "-c", "-q", "-f", str(cfg)],
                               capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy refuses {cfg}:\n{check.stdout}{check.stderr}")
        with (self.folder / "haproxy.log").open("a") as out:  # -db: foreground, no daemon
            self.haproxy = subprocess.Popen([_binary("haproxy"), "-db", "-f", str(cfg)],
                                            stdout=out, stderr=subprocess.STDOUT)
        wait_port(self.grpc_port, self.haproxy, "haproxy")
        wait_port(self.http_port, self.haproxy, "haproxy")

    def kill(self, index: int) -> None:
        """``kill -9`` of one replica."""
        proc = self.replicas[index].proc
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop(self) -> dict[str, int | None]:
        """SIGTERM everything (replicas first: they write their last state), wait, kill
        what is left; the exit codes."""
        codes: dict[str, int | None] = {}
        named = [(r.name, r.proc) for r in self.replicas]
        named += [("haproxy", self.haproxy), ("redis", self.redis)]
        for name, proc in named:
            if proc is None:
                continue
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM if name != "haproxy" else signal.SIGUSR1)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            codes[name] = proc.returncode
        self.replicas, self.haproxy, self.redis = [], None, None
        return codes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m server.deploy.local", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--folder", type=Path, default=None, help="default: a temporary one")
    p.add_argument("server_args", nargs="*", help="after --: flags for every replica")
    args = p.parse_args(argv)
    missing = missing_binaries("redis-server", "haproxy")
    if missing:
        print(f"error: not installed: {' '.join(missing)} (apt-get install redis-server "
              "haproxy)", file=sys.stderr)
        return 2
    folder = args.folder or Path(tempfile.mkdtemp(prefix="vrkn-fleet-"))
    try:
        claim_folder(folder)
    except RuntimeError as e:
        print(f"error: --folder {e}", file=sys.stderr)
        return 2
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    with Fleet(folder, args.replicas, tuple(args.server_args), store_flags=()) as fleet:
        print(f"gRPC {fleet.grpc_target}  HTTP {fleet.http_url}  store {fleet.store_url}  "
              f"replicas {[r.grpc_target for r in fleet.replicas]}  files {folder}",
              flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while not stop:
                time.sleep(0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
