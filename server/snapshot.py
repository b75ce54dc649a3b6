"""Save every session to one file on shutdown and restore them on start, so a restart
loses no session. JSON with base64 float32 arrays (exact); written to a temporary file,
fsynced and renamed into place (then the folder fsynced), so a crash leaves the previous
snapshot or the new one.

Restoring reads the file and leaves it in place: it is only ever replaced by a newer
snapshot, so restoring is idempotent and a crash right after a restore restores it again.
Every session is checked whole before any is added. A session is restored only onto the
same bundle (manifest SHA-256) under the same model name; every session not restored is
reported with a reason (``RestoreReport``). The idle time carries over.

The timeline saves and restores itself (``Timeline.to_state`` / ``from_state``, which
checks what it is given); this module only maps that state to JSON and back. Capturing
(``take``) is a cheap copy on the thread that owns the sessions; encoding (``to_json``) and
writing can then run in another thread.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from server.runtime.kalman import Belief
from server.session import Session, SessionRegistry
from server.timeline import ActionEntry, Layout, Observation, TickRecord, Timeline, TimelineState

# v2: actions (recorded and applied) in the unit range the transition network works in;
# v1 held them in the bundle's units and is converted on restore (the same for [-1, 1]).
FORMAT, VERSION = "vrkn-sessions", 2
READABLE = (1, 2)


def _arr(x: np.ndarray) -> dict[str, Any]:
    x = np.ascontiguousarray(x, dtype="<f4")
    return {"shape": list(x.shape), "f32": base64.b64encode(x.tobytes()).decode()}


def _unarr(d: dict[str, Any]) -> np.ndarray:
    raw = base64.b64decode(d["f32"])
    return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(d["shape"])


def _record(rec: TickRecord) -> dict[str, Any]:
    a = rec.action
    return {
        "tick": rec.tick,
        "obs": {name: {"t": o.timestamp, "seq": o.seq, "w": _arr(o.w), "var": _arr(o.var)}
                for name, o in rec.observations.items()},
        "action": None if a is None else {"t": a.timestamp, "seq": a.seq, "value": _arr(a.value),
                                          "source": a.source},
        "belief": None if rec.belief is None else {"mean": _arr(rec.belief.mean),
                                                   "var": _arr(rec.belief.var)},
        "applied": None if rec.applied is None else _arr(rec.applied),
    }


def _unrecord(d: dict[str, Any]) -> TickRecord:
    a = d["action"]
    return TickRecord(
        tick=int(d["tick"]),
        observations={n: Observation(float(o["t"]), int(o["seq"]), _unarr(o["w"]),
                                     _unarr(o["var"])) for n, o in d["obs"].items()},
        action=None if a is None else ActionEntry(float(a["t"]), int(a["seq"]),
                                                  _unarr(a["value"]), a["source"]),
        belief=None if d["belief"] is None else Belief(_unarr(d["belief"]["mean"]),
                                                       _unarr(d["belief"]["var"])),
        applied=None if d["applied"] is None else _unarr(d["applied"]))


@dataclass(frozen=True)
class SessionCopy:
    """One session as captured: its fields and its timeline's state (``Timeline.to_state``)."""

    id: str
    model: str
    model_sha256: str
    window_s: float
    created: float
    idle_s: float
    seq_next: int
    accepted: dict[str, int]
    refused: dict[str, int]
    superseded: int
    actions: int
    timeline: TimelineState


@dataclass(frozen=True)
class Taken:
    saved_at: float
    sessions: tuple[SessionCopy, ...]


def copy_session(s: Session, now: float) -> SessionCopy:
    return SessionCopy(s.id, s.model.name, s.model.digest, s.window_s, s.created,
                       now - s.last_active, s.seq_next, dict(s.accepted), dict(s.refused),
                       s.superseded, s.actions, s.timeline.to_state())


def session_json(c: SessionCopy) -> dict[str, Any]:
    t = c.timeline
    return {
        "id": c.id, "model": c.model, "model_sha256": c.model_sha256,
        "window_s": c.window_s, "created": c.created, "idle_s": c.idle_s,
        "seq_next": c.seq_next, "accepted": c.accepted, "refused": c.refused,
        "superseded": c.superseded, "actions": c.actions,
        "timeline": {
            "t0": t.t0, "period": t.period, "window_ticks": t.window_ticks,
            "max_gap_ticks": t.max_gap_ticks, "head": t.head, "valid_upto": t.valid_upto,
            "computed_upto": t.computed_upto, "replayed_ticks": t.replayed_ticks,
            "records": [_record(r) for r in t.records],
        },
    }


def session_state(s: Session, now: float) -> dict[str, Any]:
    """One session as JSON-ready data (the snapshot's per-session entry)."""
    return session_json(copy_session(s, now))


def take(registry: SessionRegistry) -> Taken:
    """Every session, copied (call on the thread that owns the registry; cheap: the arrays
    are shared, never modified)."""
    now = registry.clock()
    return Taken(time.time(), tuple(copy_session(s, now) for s in registry.sessions.values()))


def to_json(taken: Taken) -> dict[str, Any]:
    """``take``'s copy as the snapshot's JSON-ready data (any thread)."""
    return {"format": FORMAT, "version": VERSION, "saved_at": taken.saved_at,
            "sessions": [session_json(c) for c in taken.sessions]}


def capture(registry: SessionRegistry) -> dict[str, Any]:
    """Every session's state as JSON-ready data (call on the thread that owns the registry)."""
    return to_json(take(registry))


def write(data: dict[str, Any], path: Path) -> None:
    """Atomically and durably: a temporary file, fsync, rename, fsync of the folder (so the
    rename itself survives a power cut). One writer at a time (``EstimatorService``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


@dataclass
class RestoreReport:
    """What a restore did: sessions restored, and each one not restored as (reason,
    message); reason ``unreadable`` means the file as a whole."""

    path: str
    restored: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    kept_copy: str | None = None  # a copy of the file, kept when something failed

    @property
    def ok(self) -> bool:
        return not self.failures


def keep_copy(path: Path) -> Path:
    """Copy ``path`` beside itself as ``NAME.unrestored-TIME`` (the original stays, until a
    newer snapshot replaces it), so sessions that could not be restored are never lost."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    copy = path.with_name(f"{path.name}.unrestored-{stamp}")
    n = 1
    while copy.exists():
        n += 1
        copy = path.with_name(f"{path.name}.unrestored-{stamp}-{n}")
    shutil.copy2(path, copy)
    return copy


def _v1_actions_to_unit(rec: TickRecord, model) -> None:
    if rec.action is not None:
        rec.action.value = model.engine.to_unit(rec.action.value)
    if rec.applied is not None:
        rec.applied = model.engine.to_unit(rec.applied)


def _session(d: dict[str, Any], model, now: float, version: int = VERSION) -> Session:
    """One saved session, checked whole (ValueError, KeyError, TypeError... when corrupt)."""
    t = d["timeline"]
    records = tuple(map(_unrecord, t["records"]))
    m = model.manifest
    if version == 1:
        for rec in records:
            _v1_actions_to_unit(rec, model)
    state = TimelineState(
        None if t["t0"] is None else float(t["t0"]), float(t["period"]),
        int(t["window_ticks"]), int(t["max_gap_ticks"]), int(t["head"]), int(t["valid_upto"]),
        int(t["computed_upto"]), int(t["replayed_ticks"]), records)
    tl = Timeline.from_state(Layout.of(m), state)
    return Session(str(d["id"]), model, float(d["window_s"]), tl, created=float(d["created"]),
                   last_active=now - float(d["idle_s"]), seq_next=int(d["seq_next"]),
                   accepted=Counter({str(k): int(v) for k, v in d["accepted"].items()}),
                   refused=Counter({str(k): int(v) for k, v in d["refused"].items()}),
                   superseded=int(d["superseded"]), actions=int(d["actions"]))


def restore(registry: SessionRegistry, path: Path) -> RestoreReport:
    """Add the sessions saved in ``path`` to ``registry``; the file is left as it is. A
    session that cannot be restored is reported, never half-added."""
    report = RestoreReport(str(path))
    try:
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or data.get("format") != FORMAT or \
                data.get("version") not in READABLE:
            raise ValueError(f"not a {FORMAT} v{'/v'.join(map(str, READABLE))} snapshot")
        saved = list(data["sessions"])
    except Exception as e:  # unreadable, not JSON, not a snapshot: the whole file failed
        report.failures.append(("unreadable", f"{path}: {type(e).__name__}: {e}"))
        return report
    now = registry.clock()
    for i, d in enumerate(saved):
        sid = d.get("id") if isinstance(d, dict) else None
        what = f"session {sid!r}" if isinstance(sid, str) else f"session #{i}"
        try:
            model = registry.models.get(d["model"])
            if model is None or model.digest != d["model_sha256"]:
                report.failures.append(("model_changed", f"{what}: model {d['model']!r} is "
                                        "not loaded with the same bundle"))
                continue
            session = _session(d, model, now, data["version"])
        except Exception as e:  # anything wrong in one session's data
            report.failures.append(("corrupt", f"{what}: {type(e).__name__}: {e}"))
            continue
        if session.id in registry.sessions:
            report.failures.append(("id_taken", f"{what}: the id is taken"))
        elif len(registry.sessions) >= registry.limits.max_sessions:
            report.failures.append(("max_sessions", f"{what}: the session limit of "
                                    f"{registry.limits.max_sessions} is reached"))
        else:
            registry.sessions[session.id] = session
            report.restored += 1
    return report


# -- one session on its own: the shared store's encoding (server/store.py, issue 14) -------
def encode_session(s: Session, now: float) -> dict[str, Any]:
    """One session as JSON-ready data, in the snapshot's per-session encoding (exact
    float32); ``now`` is the registry's clock (the idle time carries over)."""
    return encode_copy(copy_session(s, now))


def encode_copy(c: SessionCopy) -> dict[str, Any]:
    """``encode_session`` of a ``copy_session`` copy (taken on the loop; this, any thread)."""
    return {"format": FORMAT, "version": VERSION, "session": session_json(c)}


def decode_session(data: dict[str, Any], models: dict, now: float) -> Session:
    """The session of ``encode_session``'s data, checked whole; ValueError when it is not
    one, or was saved with another bundle than the one loaded under its model name."""
    if not isinstance(data, dict) or data.get("format") != FORMAT or \
            data.get("version") not in READABLE:
        raise ValueError(f"not a {FORMAT} session")
    d = data["session"]
    model = models.get(d["model"])
    if model is None or model.digest != d["model_sha256"]:
        raise ValueError(f"model {d['model']!r} is not loaded with the same bundle")
    return _session(d, model, now, data["version"])
# -- end of the shared store's encoding ------------------------------------------------------
