"""Save every session to one file on shutdown and restore them on start, so a restart
loses no session. JSON with base64 float32 arrays (exact); written to a temporary file,
fsynced and renamed into place (then the folder fsynced), so a crash leaves the previous
snapshot or the new one.

Restoring reads the file and leaves it in place: it is only ever replaced by a newer
snapshot, so restoring is idempotent and a crash right after a restore restores it again.
Every session is checked whole before any is added. A session is restored only onto the
same bundle (manifest SHA-256) under the same model name; every session not restored is
reported with a reason (``RestoreReport``). The idle time carries over.
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
from server.timeline import ActionEntry, Observation, TickRecord, Timeline, time_problem

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


def session_state(s: Session, now: float) -> dict[str, Any]:
    tl = s.timeline
    return {
        "id": s.id, "model": s.model.name, "model_sha256": s.model.digest,
        "window_s": s.window_s, "created": s.created, "idle_s": now - s.last_active,
        "seq_next": s.seq_next, "accepted": dict(s.accepted), "refused": dict(s.refused),
        "superseded": s.superseded, "actions": s.actions,
        "timeline": {
            "t0": tl.t0, "period": tl.period, "window_ticks": tl.window_ticks,
            "max_gap_ticks": tl.max_gap_ticks, "head": tl.head, "valid_upto": tl.valid_upto,
            "computed_upto": tl.computed_upto, "replayed_ticks": tl.replayed_ticks,
            "records": [_record(tl.records[k]) for k in sorted(tl.records)],
        },
    }


def capture(registry: SessionRegistry) -> dict[str, Any]:
    """Every session's state as JSON-ready data (call on the thread that owns the registry)."""
    now = registry.clock()
    return {"format": FORMAT, "version": VERSION, "saved_at": time.time(),
            "sessions": [session_state(s, now) for s in registry.sessions.values()]}


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


def _check_shape(x: np.ndarray | None, shape: tuple[int, ...], what: str) -> None:
    if x is not None and x.shape != shape:
        raise ValueError(f"{what} has shape {list(x.shape)}, the model needs {list(shape)}")


def _check_record(rec: TickRecord, latent: int, actions: int) -> None:
    for name, o in rec.observations.items():
        _check_shape(o.w, (1, latent), f"tick {rec.tick} {name} w")
        _check_shape(o.var, (1, latent), f"tick {rec.tick} {name} var")
    if rec.action is not None:
        _check_shape(rec.action.value, (actions,), f"tick {rec.tick} action")
    if rec.belief is not None:
        _check_shape(rec.belief.mean, (1, latent), f"tick {rec.tick} belief mean")
        _check_shape(rec.belief.var, (1, latent), f"tick {rec.tick} belief var")
    _check_shape(rec.applied, (actions,), f"tick {rec.tick} applied action")


def _v1_actions_to_unit(rec: TickRecord, model) -> None:
    if rec.action is not None:
        rec.action.value = model.to_unit(rec.action.value)
    if rec.applied is not None:
        rec.applied = model.to_unit(rec.applied)


def _session(d: dict[str, Any], model, now: float, version: int = VERSION) -> Session:
    """One saved session, checked whole (ValueError, KeyError, TypeError... when corrupt)."""
    t = d["timeline"]
    t0 = None if t["t0"] is None else float(t["t0"])
    if t0 is not None and time_problem(t0) is not None:
        raise ValueError(f"start time {t0}: {time_problem(t0)}")
    tl = Timeline(model.engine, float(t["period"]), int(t["window_ticks"]),
                  int(t["max_gap_ticks"]), t0)
    tl.head, tl.valid_upto = int(t["head"]), int(t["valid_upto"])
    tl.computed_upto, tl.replayed_ticks = int(t["computed_upto"]), int(t["replayed_ticks"])
    tl.records = {r.tick: r for r in map(_unrecord, t["records"])}
    m = model.manifest
    for rec in tl.records.values():
        _check_record(rec, m.latent_size, m.action_size)
        if version == 1:
            _v1_actions_to_unit(rec, model)
    if tl.head >= 0 and any(k not in tl.records for k in range(tl.oldest_accepted, tl.head + 1)):
        raise ValueError("the records of the history window are incomplete")
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
