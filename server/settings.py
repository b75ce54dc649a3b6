"""Server settings: environment variables (prefix ``VRKN_``) or command-line flags
(``python -m server --help``); flags win. Read once through ``get_settings()``."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VRKN_", extra="ignore")

    bundle: list[str] = Field(default_factory=list,
                              description="bundle folders, NAME=PATH or PATH; the first is "
                                          "the default model (env: a JSON list)")
    host: str = Field("127.0.0.1", description="address both servers listen on")
    grpc_port: int = Field(50051, ge=-1, le=65535, description="0: any free port; -1: off")
    http_port: int = Field(8000, ge=-1, le=65535, description="0: any free port; -1: off")
    token: SecretStr | None = Field(None, description="bearer token; required when the "
                                                      "host is not a loopback address")
    providers: str = Field("cpu", description="ONNX Runtime providers: cpu, cuda or auto")
    ort_threads: int = Field(1, ge=0, description="ONNX Runtime intra-op threads (0: ORT "
                                                  "default)")
    # Sessions.
    max_sessions: int = Field(256, ge=1)
    history_window_s: float = Field(1.0, gt=0)
    max_history_window_s: float = Field(10.0, gt=0)
    max_gap_s: float = Field(10.0, gt=0)
    idle_timeout_s: float = Field(300.0, gt=0)
    expiry_interval_s: float = Field(5.0, gt=0)
    # Payloads and back-pressure.
    max_message_bytes: int = Field(1 << 20, ge=1)
    max_image_pixels: int = Field(1 << 20, ge=1)
    max_pending_per_session: int = Field(32, ge=1, description="messages of one session "
                                                               "waiting for an encoder")
    max_queue: int = Field(1024, ge=1, description="messages waiting per encoder")
    stream_inflight: int = Field(16, ge=1, description="messages of one gRPC stream being "
                                                       "processed at once")
    # Dynamic batching across sessions (docs/service.md, "Engine and batching").
    batch_max: int = Field(64, ge=1, description="image messages per encoder run")
    batch_window_ms: float = Field(0.0, ge=0, description="image encoders: wait this long "
                                   "for a batch to fill (0: batches form under load)")
    engine_batch_max: int = Field(256, ge=1, description="queries (beliefs, actions) per "
                                  "filter batch, and vector messages per encoder run")
    engine_window_ms: float = Field(0.0, ge=0, description="the filter and the vector "
                                    "encoders: wait this long for a batch to fill (0: "
                                    "batches form under load)")
    batch_window_adaptive: bool = Field(False, description="wait for a window only after a "
                                        "batch of several items (a lone robot never waits)")
    inline_ms: float = Field(1.0, ge=0, description="run a batch on the event loop when "
                             "its predicted compute is at most this (cheaper than the two "
                             "thread hops; 0: always in a worker) ...")
    inline_share: float = Field(0.5, ge=0, le=1, description="... and the loop's recent "
                                "time in such batches is under this share (under load: "
                                "the worker)")
    workers: int = Field(2, ge=1, description="worker threads for ONNX Runtime and image "
                                              "decoding (the event loop does I/O only)")
    # Slow, silent and dead connections.
    http_keepalive_s: float = Field(5.0, gt=0, description="HTTP: close a connection idle "
                                    "this long between requests (or before the first)")
    http_header_timeout_s: float = Field(10.0, gt=0, description="HTTP: a request's headers "
                                         "must be complete this long after its first byte")
    http_body_timeout_s: float = Field(30.0, gt=0, description="HTTP: a request's body must "
                                       "be complete this long after its headers")
    grpc_handshake_timeout_s: float = Field(10.0, gt=0, description="gRPC: close a "
                                            "connection that has not finished its handshake")
    grpc_max_idle_s: float = Field(300.0, gt=0, description="gRPC: close a connection "
                                   "without calls for this long (clients reconnect)")
    grpc_keepalive_s: float = Field(30.0, gt=0, description="gRPC: ping a silent "
                                    "connection after this long")
    grpc_keepalive_timeout_s: float = Field(10.0, gt=0, description="gRPC: close it when "
                                            "the ping is not answered within this")
    # Restart.
    snapshot_path: Path | None = Field(None, description="sessions are saved here on "
                                                         "shutdown and restored on start")
    snapshot_interval_s: float = Field(0.0, ge=0, description="also save the sessions this "
                                       "often (0: only on shutdown), so a crash loses less")
    # -- issue 14: a fleet of replicas sharing sessions (server/store.py) --------------------
    store: str | None = Field(None, description="shared session store of a fleet, "
                              "redis://HOST:PORT/DB (unset: none, one box); unreachable at "
                              "start: an error")
    replica_id: str | None = Field(None, description="this replica's name in the store "
                                   "(default: host-pid-random)")
    store_interval_s: float = Field(1.0, gt=0, description="write changed sessions to the "
                                    "store this often (a crash loses at most this)")
    store_lease_s: float = Field(3.0, gt=0, description="a replica's lease on a session; "
                                 "the longest a dead replica's sessions wait for takeover")
    store_handoff_s: float = Field(3.0, gt=0, description="hand a session without calls "
                                   "here for this long back to the store")
    store_timeout_s: float = Field(0.5, gt=0, description="timeout of one store call")
    # -- end of issue 14 ----------------------------------------------------------------------
    ready_file: Path | None = Field(None, description="written (JSON: ports, pid) once "
                                                      "serving")
    grace_s: float = Field(5.0, ge=0, description="shutdown grace for in-flight calls")
    log_level: str = "info"

    @model_validator(mode="after")
    def _needs_token_beyond_loopback(self) -> Settings:
        if not is_loopback(self.host) and self.token is None:
            raise ValueError(f"host {self.host!r} is not a loopback address: set a bearer "
                             "token (VRKN_TOKEN or --token)")
        if self.grpc_port == -1 and self.http_port == -1:
            raise ValueError("both servers are off (grpc_port and http_port are -1)")
        if self.store is not None and self.store_lease_s <= 2 * self.store_interval_s:
            raise ValueError(f"store_lease_s ({self.store_lease_s}) must be more than twice "
                             f"store_interval_s ({self.store_interval_s}): leases are renewed "
                             "by the write pass")  # issue 14
        return self

    @property
    def token_value(self) -> str | None:
        return self.token.get_secret_value() if self.token is not None else None


@lru_cache
def get_settings() -> Settings:
    return Settings()
