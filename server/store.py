"""The shared session store of a fleet of replicas (Redis), beside the local snapshot file.

Every session a replica holds is written to Redis in the snapshot's per-session encoding
(``server.snapshot.encode_session``: exact float32) every ``store_interval_s`` (only the
sessions that changed), and the replica holds a **lease** on it: the key
``vrkn:owner:<id>`` names the replica, set with ``NX PX store_lease_s`` when the session is
created or taken over and renewed by every write pass. Writes and renewals are Lua scripts
that first check the owner is still this replica (a compare-and-set on the owner), so a
replica that lost its lease can never overwrite the session.

* A call for a session this replica does not hold (its owner died, or the balancer's ring
  changed) takes it over when no live lease names another replica: ``SET owner NX``, then
  the stored state is decoded and served. While another replica's lease is live the call
  is refused with UNAVAILABLE (``owned_elsewhere``), which clients retry.
* A replica serves a session only until its own lease deadline: the time it sent the last
  successful renewal plus 0.9 of the lease. Redis expires the key no earlier than the lease
  after it received that renewal, so the old owner has stopped before anyone can take over:
  never two diverging copies. When Redis does not answer, the deadline passes and the
  replica refuses the session (``lease_lapsed``) until a renewal succeeds again.
* A session without calls here for ``store_handoff_s`` is parked: written, its lease
  released and dropped locally, so that the replica the ring now names can take it at once.
* Stored sessions expire in Redis after ``idle_timeout_s`` without a write.

A crash loses at most the messages of the last ``store_interval_s`` (plus one write pass).
Blocking Redis calls on the event loop are only the rare ones (create, close, take over,
park), each bounded by ``store_timeout_s``; the periodic writes run in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from server import snapshot
from server.errors import AlreadyExists, ResourceExhausted, Unavailable, shown
from server.session import SESSION_ID, Session, SessionRegistry

log = logging.getLogger("server.store")
PREFIX = "vrkn"
LEASE_SAFETY = 0.9  # a replica stops serving at this fraction of its lease

# KEYS: owner, state. ARGV: replica, lease ms, state TTL ms, state ('' keeps the stored one)
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[3])
return 1
"""
_TAKE = """
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then return {-1, owner, redis.call('PTTL', KEYS[1])} end
local state = redis.call('GET', KEYS[2])
if not state then return {0} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, state}
"""
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if ARGV[4] ~= '' then redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[3])
else redis.call('PEXPIRE', KEYS[2], ARGV[3]) end
return 1
"""
# ARGV[5]: 'close' also deletes the state; else the state is written when given (parked).
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
if ARGV[5] == 'close' then redis.call('DEL', KEYS[2])
elseif ARGV[4] ~= '' then redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[3]) end
return 1
"""


class StoreError(RuntimeError):
    """The store is configured but cannot be used (raised at start: no silent fallback)."""


def default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


@dataclass(frozen=True)
class StoreConfig:
    url: str
    replica_id: str
    interval_s: float = 1.0
    lease_s: float = 3.0
    handoff_s: float = 3.0
    timeout_s: float = 0.5
    idle_timeout_s: float = 300.0

    @classmethod
    def from_settings(cls, s: Any) -> StoreConfig:
        return cls(s.store, s.replica_id or default_replica_id(), s.store_interval_s,
                   s.store_lease_s, s.store_handoff_s, s.store_timeout_s, s.idle_timeout_s)


def keys(session_id: str) -> list[str]:
    return [f"{PREFIX}:owner:{session_id}", f"{PREFIX}:session:{session_id}"]


def fingerprint(s: Session) -> tuple[int, ...]:
    """Changes whenever the session's stored state would (messages, actions, resets,
    refusals); a lazy replay does not count: it recomputes the same beliefs."""
    return (s.generation, s.seq_next, s.superseded, s.actions, sum(s.accepted.values()),
            sum(s.refused.values()))


def _encode(s: Session, now: float) -> bytes:
    return json.dumps(snapshot.encode_session(s, now)).encode()


def _encode_copy(c: snapshot.SessionCopy | None) -> bytes:
    return b"" if c is None else json.dumps(snapshot.encode_copy(c)).encode()


class SessionStore:
    """The registry's ``shared`` hooks (``SessionRegistry.get``, ``create``, ``close``)
    and the periodic write pass. Use ``connect``; call on the registry's event loop."""

    def __init__(self, client: Any, config: StoreConfig, registry: SessionRegistry,
                 metrics: CollectorRegistry):
        import redis

        self._redis_errors = (redis.RedisError, OSError)
        self.client, self.config, self.registry = client, config, registry
        self.replica = config.replica_id
        self._lease_ms = max(1, round(config.lease_s * 1000))
        self._ttl_ms = max(1, round(config.idle_timeout_s * 1000))
        self._create, self._take, self._renew, self._release = (
            client.register_script(s) for s in (_CREATE, _TAKE, _RENEW, _RELEASE))
        self._deadline: dict[str, float] = {}  # held sessions: local lease deadline
        self._written: dict[str, tuple[int, ...]] = {}  # fingerprint of the stored state
        self._task: asyncio.Task | None = None
        self.takeovers = Counter("vrkn_store_takeovers", "Sessions taken over from the "
                                 "shared store", registry=metrics)
        self.lost = Counter("vrkn_store_lost_leases", "Sessions dropped here because "
                            "another replica holds their lease", registry=metrics)
        self.parked = Counter("vrkn_store_parked", "Idle sessions handed back to the store",
                              registry=metrics)
        self.errors = Counter("vrkn_store_errors", "Store calls that failed", ["op"],
                              registry=metrics)

    @classmethod
    def connect(cls, config: StoreConfig, registry: SessionRegistry,
                metrics: CollectorRegistry) -> SessionStore:
        """Connect and check Redis answers (StoreError when not), take over or publish the
        sessions already in the registry (restored from the local file), attach."""
        import redis

        try:
            client = redis.Redis.from_url(config.url, socket_timeout=config.timeout_s,
                                          socket_connect_timeout=config.timeout_s)
            client.ping()
        except (redis.RedisError, OSError, ValueError) as e:
            raise StoreError(f"the session store {config.url} is not usable: "
                             f"{type(e).__name__}: {e} (--store / VRKN_STORE)") from None
        store = cls(client, config, registry, metrics)
        store._adopt_restored()
        registry.shared = store
        log.info("replica %s: sessions shared through %s", store.replica, config.url)
        return store

    # -- registry hooks -------------------------------------------------------------------
    def lookup(self, session_id: str, session: Session | None) -> Session | None:
        """``session`` held here (None: not): it if the lease is still ours, else refused;
        not held: taken over from the store (None when the store has no such session)."""
        if session is None:  # an id no client or server could have made is not asked for
            return self._take_over(session_id) if SESSION_ID.fullmatch(session_id) else None
        if time.monotonic() > self._deadline.get(session_id, 0.0):
            raise Unavailable(f"session {shown(session_id)}: this replica's lease on it has "
                              "lapsed (the session store did not answer); retry",
                              "lease_lapsed")
        return session

    def claim(self, session: Session) -> None:
        """A new session, before it is added: its id must be free in the whole fleet."""
        sent = time.monotonic()
        state = _encode(session, self.registry.clock())
        if not self._call("create", self._create, session.id, state):
            raise AlreadyExists(f"session id {shown(session.id)} is taken", "id_taken")
        self._hold(session, sent)

    def release(self, session_id: str) -> None:
        """Closed here: its lease and stored state go (UNAVAILABLE, and the session stays,
        when Redis does not answer)."""
        self._call("close", self._release, session_id, "", "close")
        self._forget(session_id)

    # -- the periodic write pass ----------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.config.interval_s)
            await self.sync()

    async def sync(self, final: bool = False) -> bool:
        """Write the sessions that changed and renew every lease (in a thread); drop those
        whose lease another replica holds now; then park the idle ones (not when
        ``final``). False when Redis did not answer (the leases are then not extended)."""
        reg, now = self.registry, self.registry.clock()
        for sid in set(self._deadline) - set(reg.sessions):  # expired here meanwhile
            self._forget(sid)
        items = [(sid, fingerprint(s), s) for sid, s in reg.sessions.items()]
        # copied here (cheap: the arrays are shared), encoded in the thread
        copies = [(sid, fp, snapshot.copy_session(s, now) if fp != self._written.get(sid)
                   else None) for sid, fp, s in items]
        sent = time.monotonic()
        try:
            results = await asyncio.to_thread(self._renew_all, copies)
        except self._redis_errors as e:
            self.errors.labels("sync").inc()
            log.error("session store: write pass failed (%s); leases not renewed", e)
            return False
        for (sid, fp, state), ok in zip(copies, results, strict=True):
            if sid not in self._deadline:
                continue  # closed or dropped meanwhile
            if ok:
                self._deadline[sid] = sent + LEASE_SAFETY * self.config.lease_s
                if state is not None:
                    self._written[sid] = fp
            else:
                self._drop_lost(sid)
        if not final:
            for sid, _, s in items:
                if reg.sessions.get(sid) is s and s.pending == 0 and \
                        reg.clock() - s.last_active > self.config.handoff_s:
                    self._park(s)
        return True

    def _renew_all(self, copies: list[tuple[str, tuple, snapshot.SessionCopy | None]]
                   ) -> list[int]:
        pipe = self.client.pipeline(transaction=False)
        for sid, _, copy in copies:
            self._renew(keys=keys(sid), args=[self.replica, self._lease_ms, self._ttl_ms,
                                              _encode_copy(copy)], client=pipe)
        return [int(r) for r in pipe.execute()] if copies else []

    async def stop(self) -> None:
        """Last write pass, then release every lease (the state stays) so that another
        replica takes the sessions over at once; close the connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if await self.sync(final=True):
            for sid in list(self._deadline):
                with contextlib.suppress(Unavailable):
                    self._call("release", self._release, sid, "", "keep")
        self.registry.shared = None
        self.client.close()

    # -- internals ------------------------------------------------------------------------
    def _call(self, op: str, script: Any, session_id: str, state: bytes | str = "",
              mode: str = "") -> Any:
        try:
            return script(keys=keys(session_id), args=[self.replica, self._lease_ms,
                                                       self._ttl_ms, state, mode])
        except self._redis_errors as e:
            self.errors.labels(op).inc()
            raise Unavailable(f"the session store did not answer ({type(e).__name__}: "
                              f"{e}); retry", "store_unavailable") from None

    def _hold(self, session: Session, sent: float) -> None:
        self._deadline[session.id] = sent + LEASE_SAFETY * self.config.lease_s
        self._written[session.id] = fingerprint(session)

    def _forget(self, session_id: str) -> None:
        self._deadline.pop(session_id, None)
        self._written.pop(session_id, None)

    def _take_over(self, session_id: str) -> Session | None:
        sent = time.monotonic()
        found = self._call("take", self._take, session_id)
        if found[0] == -1:
            owner = found[1].decode(errors="replace")
            raise Unavailable(f"session {shown(session_id)} is held by replica {owner!r} "
                              f"(its lease ends within {found[2]} ms); calls are routed by "
                              "the x-session-id header; retry", "owned_elsewhere")
        if found[0] == 0:
            return None
        reg = self.registry
        try:
            if len(reg.sessions) >= reg.limits.max_sessions:
                raise ResourceExhausted(f"the server holds its limit of "
                                        f"{reg.limits.max_sessions} sessions", "max_sessions")
            session = snapshot.decode_session(json.loads(found[1]), reg.models, reg.clock())
        except Exception as e:
            with contextlib.suppress(Unavailable):
                self._call("release", self._release, session_id, "", "keep")
            if isinstance(e, ResourceExhausted):
                raise
            self.errors.labels("decode").inc()
            log.error("session %s in the store cannot be restored here: %s", session_id, e)
            raise Unavailable(f"session {shown(session_id)} cannot be restored on this "
                              f"replica: {e}", "store_corrupt") from None
        session.last_active = reg.clock()
        reg.sessions[session.id] = session
        self._hold(session, sent)
        self.takeovers.inc()
        log.info("took over session %s from the store", session_id)
        return session

    def _drop_lost(self, session_id: str) -> None:
        self._forget(session_id)
        if self.registry.sessions.pop(session_id, None) is not None:
            self.lost.inc()
            log.warning("session %s: another replica holds its lease now; dropped here",
                        session_id)

    def _park(self, session: Session) -> None:
        try:
            self._call("park", self._release, session.id,
                       _encode(session, self.registry.clock()), "park")
        except Unavailable:
            return  # kept here; the next pass tries again
        self._forget(session.id)
        del self.registry.sessions[session.id]
        self.parked.inc()

    def _adopt_restored(self) -> None:
        """Sessions restored from the local file at start: the store's copy wins; one the
        store does not have is published; one another replica holds is dropped here."""
        reg = self.registry
        for sid, local in list(reg.sessions.items()):
            del reg.sessions[sid]
            try:
                if self._take_over(sid) is None:
                    self.claim(local)
                    reg.sessions[sid] = local
            except (Unavailable, AlreadyExists, ResourceExhausted) as e:
                log.warning("restored session %s not kept: %s", sid, e.message)
