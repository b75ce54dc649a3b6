"""The fleet on loopback: redis-server and HAProxy from Debian (``make test`` installs them,
Makefile APT_PACKAGES), the shipped model, every port free on 127.0.0.1."""

from __future__ import annotations

import subprocess

import pytest

from server.deploy.local import _binary, free_port, missing_binaries, wait_port

pytestmark = pytest.mark.scale


def need(*binaries: str) -> None:
    missing = missing_binaries(*binaries)
    if missing:
        pytest.skip(f"not installed: {' '.join(missing)} ('make test' installs them when "
                    f"run as root; else: apt-get install {' '.join(missing)})")


class RedisProcess:
    def __init__(self, folder):
        need("redis-server")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [_binary("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_port(self.port, self.proc, "redis-server")
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def client(self):
        import redis

        return redis.Redis.from_url(self.url)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def redis_server(tmp_path):
    server = RedisProcess(tmp_path)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def shipped_models():
    from server.app import SHIPPED_BUNDLE
    from server.models import load_models

    return load_models([f"{SHIPPED_BUNDLE.name}={SHIPPED_BUNDLE}"], providers="cpu",
                       threads=1)
