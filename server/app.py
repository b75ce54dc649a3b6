"""Run the service: load the bundles, start the session service, the gRPC server and the
HTTP server on one event loop, write the ready file, and on SIGTERM/SIGINT shut down
gracefully (health NOT_SERVING, servers drain, sessions saved to the snapshot)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
from pathlib import Path

from server.models import Model, load_models
from server.service import EstimatorService
from server.settings import Settings
from server.store import StoreError

log = logging.getLogger("server")
# The model shipped in the repository (models/), served when no --bundle is given.
SHIPPED_BUNDLE = Path(__file__).resolve().parent.parent / "models" / "cartpole_swingup-fusion"


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _write_ready(path: Path, info: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, path)


async def serve(settings: Settings, models: dict[str, Model] | None = None,
                stop: asyncio.Event | None = None) -> None:
    import uvicorn

    from server.grpc_service import build_grpc_server, set_serving
    from server.http_app import create_app
    from server.http_protocol import guarded_protocol
    from server.runtime import BundleError

    class _Uvicorn(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):  # we own the signals (uvicorn would re-raise them)
            yield

    if models is None:
        bundles = list(settings.bundle)
        if not bundles:  # the embedded default: the model shipped in the repository
            if not (SHIPPED_BUNDLE / "manifest.json").is_file():
                raise SystemExit(f"no bundle: pass --bundle DIR (or set VRKN_BUNDLE="
                                 f"'[\"DIR\"]'); the shipped model {SHIPPED_BUNDLE} is missing")
            bundles = [f"{SHIPPED_BUNDLE.name}={SHIPPED_BUNDLE}"]
            log.info("no --bundle given: serving the shipped model %s", SHIPPED_BUNDLE)
        try:  # a bundle that fails its checks, or providers not in use as requested
            models = load_models(bundles, settings.providers, settings.ort_threads)
        except BundleError as e:
            raise SystemExit(f"error: {e}") from None  # one line, no traceback
        for name, m in models.items():
            log.info("model %s runs on %s", name, m.bundle.providers)
    service = EstimatorService(models, settings)
    try:
        await service.start()
    except StoreError as e:  # issue 14: a configured store that does not answer
        raise SystemExit(f"error: {e}") from None
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    info: dict = {"pid": os.getpid(), "host": settings.host, "models": list(models)}
    grpc_server = health = http = http_task = None
    try:
        if settings.grpc_port >= 0:
            grpc_server, info["grpc_port"], health = await build_grpc_server(
                service, settings.host, settings.grpc_port)
            await grpc_server.start()
            await set_serving(health, True)
        if settings.http_port >= 0:
            sock = _listen(settings.host, settings.http_port)
            info["http_port"] = sock.getsockname()[1]
            protocol = guarded_protocol(settings.http_keepalive_s, settings.http_header_timeout_s,
                                        settings.http_body_timeout_s)
            config = uvicorn.Config(create_app(service), log_level="warning", access_log=False,
                                    lifespan="off", timeout_graceful_shutdown=settings.grace_s,
                                    http=protocol, timeout_keep_alive=settings.http_keepalive_s)
            http = _Uvicorn(config)
            http_task = loop.create_task(http.serve(sockets=[sock]))
            while not http.started and not http_task.done():
                await asyncio.sleep(0.01)
            if http_task.done():
                http_task.result()
        log.info("serving %s", info)
        if settings.ready_file is not None:
            _write_ready(Path(settings.ready_file), info)
        await stop.wait()
        log.info("shutting down")
    finally:
        service.ready = False
        if health is not None:
            await set_serving(health, False)
        if http is not None:
            http.should_exit = True
            with contextlib.suppress(Exception):
                await http_task
        if grpc_server is not None:
            await grpc_server.stop(settings.grace_s)
        await service.stop()
        if settings.ready_file is not None:
            with contextlib.suppress(OSError):
                Path(settings.ready_file).unlink()


def run(settings: Settings) -> None:
    """Block serving until SIGTERM/SIGINT; uvloop when installed."""
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop
        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(settings))
