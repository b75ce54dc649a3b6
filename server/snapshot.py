"""Save every session to one file on shutdown and restore them on start, so a restart
loses no session. JSON with base64 float32 arrays (exact); written to a temporary file and
renamed into place, so a crash leaves the previous snapshot or the new one.

A session is restored only onto the same bundle (manifest SHA-256) under the same model
name; others are skipped with a reason. The idle time carries over.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from server.runtime.kalman import Belief
from server.session import Session, SessionRegistry
from server.timeline import ActionEntry, Observation, TickRecord, Timeline

FORMAT, VERSION = "vrkn-sessions", 1


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


def save(registry: SessionRegistry, path: Path) -> int:
    data = capture(registry)
    write(data, path)
    return len(data["sessions"])


def write(data: dict[str, Any], path: Path) -> None:
    """Atomically: a temporary file, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def restore(registry: SessionRegistry, path: Path) -> tuple[int, list[str]]:
    """Restore the sessions saved in ``path``; returns (restored, reasons for skipped)."""
    data = json.loads(Path(path).read_text())
    if data.get("format") != FORMAT or data.get("version") != VERSION:
        raise ValueError(f"{path}: not a {FORMAT} v{VERSION} snapshot")
    restored, skipped = 0, []
    now = registry.clock()
    for d in data["sessions"]:
        model = registry.models.get(d["model"])
        if model is None or model.digest != d["model_sha256"]:
            skipped.append(f"session {d['id']}: model {d['model']!r} is not loaded with the "
                           "same bundle")
            continue
        if d["id"] in registry.sessions or len(registry.sessions) >= registry.limits.max_sessions:
            skipped.append(f"session {d['id']}: id taken or session limit reached")
            continue
        t = d["timeline"]
        tl = Timeline(model.engine, t["period"], t["window_ticks"], t["max_gap_ticks"], t["t0"])
        tl.head, tl.valid_upto = int(t["head"]), int(t["valid_upto"])
        tl.computed_upto, tl.replayed_ticks = int(t["computed_upto"]), int(t["replayed_ticks"])
        tl.records = {r.tick: r for r in map(_unrecord, t["records"])}
        registry.sessions[d["id"]] = Session(
            d["id"], model, float(d["window_s"]), tl, created=float(d["created"]),
            last_active=now - float(d["idle_s"]), seq_next=int(d["seq_next"]),
            accepted=Counter(d["accepted"]), refused=Counter(d["refused"]),
            superseded=int(d["superseded"]), actions=int(d["actions"]))
        restored += 1
    return restored, skipped
