"""A small untrained bundle (exported once per test session) and helpers to feed it."""

from __future__ import annotations

import numpy as np
import pytest

PERIOD = 0.05
PROPRIO = 3  # tests.world_models.conftest.PROPRIO_DIM
STATE_NAMES = ("s_position", "s_angle_cos", "s_velocity")


def export_tiny_bundle(path, state_head: bool = True,
                       action_bounds: tuple[tuple[float, ...], tuple[float, ...]] = (
                           (-1.0, -1.0), (1.0, 1.0))):
    """The tiny bundle; ``state_head`` adds an (untrained) state head with STATE_NAMES;
    ``action_bounds`` (low, high) are the manifest's action bounds."""
    import torch

    from estimator.state_head import StateHead, StateHeadConfig
    from tests.world_models.conftest import tiny_model
    from training.actor_critic import Actor
    from training.export import ExportInputs, export_bundle

    model = tiny_model("vrkn", "fusion")
    torch.manual_seed(0)
    actor = Actor(model.feature_dim, model.action_dim)
    head = None
    if state_head:
        head = StateHead(model.feature_dim, STATE_NAMES, StateHeadConfig(hidden=16))
        head.set_scaling(torch.tensor([0.0, 0.5, 1.0]), torch.tensor([1.0, 0.2, 3.0]))
    info = ExportInputs(PERIOD, *action_bounds,
                        {"proprio": (np.zeros(PROPRIO), np.ones(PROPRIO))}, {"note": "test"})
    return export_bundle(model, actor, info, path, seed=0, state_head=head)


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory):
    return export_tiny_bundle(tmp_path_factory.mktemp("service") / "tiny")


@pytest.fixture(scope="session")
def models(bundle_dir):
    from server.models import load_models

    return load_models([f"tiny={bundle_dir}"], providers="cpu", threads=1)


@pytest.fixture(scope="session")
def model(models):
    return models["tiny"]


def random_stream(ticks: int, seed: int = 0, image_every: int = 3):
    """Messages of a robot: proprio every tick, an image every ``image_every`` ticks (late
    in the tick), an action per tick. Returns a list of (kind, name, t, value)."""
    rng = np.random.default_rng(seed)
    events = []
    for k in range(ticks):
        base = k * PERIOD
        events.append(("obs", "proprio", base + 0.011,
                       rng.standard_normal(PROPRIO).astype(np.float32)))
        if k % image_every == 0:
            events.append(("obs", "image", base + 0.023,
                           rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)))
        events.append(("act", "action", base + 0.04,
                       rng.uniform(-1, 1, 2).astype(np.float32)))
    return events


# -- real servers on 127.0.0.1 -----------------------------------------------------------
TOKEN = "test-token-3f9a"


class ServerProcess:
    """``python -m server`` in a subprocess on 127.0.0.1, free ports (port 0, reported in
    the ready file); ``bundle_dir`` None serves the embedded default (the shipped model)."""

    def __init__(self, bundle_dir, workdir, *args: str, env: dict | None = None):
        import json
        import os
        import subprocess
        import sys
        import time

        self.ready_file = workdir / f"ready-{time.monotonic_ns()}.json"
        self.log_path = workdir / f"server-{time.monotonic_ns()}.log"
        bundle = [] if bundle_dir is None else ["--bundle", f"tiny={bundle_dir}"]
        cmd = [sys.executable, "-m", "server", *bundle, "--host", "127.0.0.1",
               "--grpc-port", "0", "--http-port", "0",
               "--ready-file", str(self.ready_file), *args]
        self._log = self.log_path.open("w")
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("VRKN_")}
        full_env.update(env or {})
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=full_env, cwd=str(workdir))
        deadline = time.monotonic() + 60
        while not self.ready_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not start:\n{self.log()}")
            time.sleep(0.05)
        info = json.loads(self.ready_file.read_text())
        self.grpc_port, self.http_port = info["grpc_port"], info["http_port"]
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"
        self.http_url = f"http://127.0.0.1:{self.http_port}"

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def stop(self, timeout: float = 30) -> int:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def server(bundle_dir, tmp_path_factory):
    """A server that requires TOKEN, with small limits for the tests."""
    proc = ServerProcess(bundle_dir, tmp_path_factory.mktemp("server"), "--token", TOKEN,
                         "--max-sessions", "48", "--max-message-bytes", "100000",
                         "--max-image-pixels", "40000")
    yield proc
    assert proc.stop() == 0, proc.log()


def png(image: np.ndarray, fmt: str = "PNG") -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb
    for a decoder that trusts it)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
