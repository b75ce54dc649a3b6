"""Benchmark: what each belief detail (``proto.wire.BeliefDetail``) costs the engine, per
belief, on the default-size untrained bundle of bench/service.py (L = 230, proprio 6) and
on the shipped bundle (models/cartpole_swingup-fusion, L = 64, with a state head), in one
run. One belief = the filter's compute of one ``BeliefJob`` whose tick is stale (predict +
update + the reward head + the heads its level asks for), in batches of 1 and of 64
sessions (``server.engine.compute``, one thread, ONNX Runtime with one intra-op thread as
the server runs it). Writes bench/results/belief_detail.{json,md}.

    python bench/belief_detail.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from results_io import machine_meta, write_results  # noqa: E402

from proto.wire import BeliefDetail  # noqa: E402
from server import engine  # noqa: E402
from server.models import Model, load_models  # noqa: E402
from server.session import Limits, SessionRegistry  # noqa: E402

LEVELS = (BeliefDetail.LATENT, BeliefDetail.STATE, BeliefDetail.FULL)


def stale_timelines(model: Model, n: int) -> list:
    """``n`` sessions with two recorded ticks, the second not computed yet."""
    reg = SessionRegistry({model.name: model}, Limits(max_sessions=n))
    size = model.manifest.sensor("proprio").shape[0]
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        s = reg.create(start_time=0.0)
        for k in range(2):
            t = k * model.manifest.control_period + 1e-3
            w, var = model.encode("proprio", rng.standard_normal((1, size)).astype(np.float32))
            reg.record_observation(s, "proprio", t, s.next_seq(), w, var)
            if k == 0:
                reg.belief(s.id)
        out.append(s.timeline)
    return out


def per_belief_ms(model: Model, detail: BeliefDetail, batch: int, seconds: float) -> float:
    work = engine.prepare([engine.BeliefJob(tl, 1, detail)
                           for tl in stale_timelines(model, batch)])
    engine.compute(model.engine, work)  # warm-up
    runs, start = 0, time.perf_counter()
    while runs < 3 or time.perf_counter() - start < seconds:
        engine.compute(model.engine, work)
        runs += 1
    return (time.perf_counter() - start) / runs / batch * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=2.0, help="per case")
    p.add_argument("--shipped", type=Path, default=ROOT / "models/cartpole_swingup-fusion")
    args = p.parse_args()
    import service  # bench/service.py: the default-size bundle

    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        bundles = {"default-size (L=230, no state head)":
                   service.export_default_bundle(Path(tmp) / "bundle"),
                   "cartpole_swingup-fusion (L=64, state head)": args.shipped}
        for label, path in bundles.items():
            model = next(iter(load_models([f"m={path}"], providers="cpu",
                                          threads=1).values()))
            for detail in LEVELS:
                row = {"bundle": label, "detail": detail.name,
                       **{f"batch_{b}_ms": round(per_belief_ms(model, detail, b, args.seconds),
                                                 3) for b in (1, 64)}}
                rows.append(row)
                print(row, flush=True)
    meta = machine_meta(load_before, note="per belief: predict + update + reward + the "
                        "level's heads; one thread")
    header = ["bundle", "detail", "ms/belief (batch 1)", "ms/belief (batch 64)"]
    lines = [[r["bundle"], r["detail"], r["batch_1_ms"], r["batch_64_ms"]] for r in rows]
    write_results("belief_detail", "Engine cost per belief by BeliefDetail "
                  "(bench/belief_detail.py)", header, lines, rows, meta)


if __name__ == "__main__":
    main()
