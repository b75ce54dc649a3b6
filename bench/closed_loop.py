"""A bundle in closed loop through the service: return and hidden-state tracking over seeds.

    python bench/closed_loop.py --bundle models/cartpole_swingup-fusion [--episodes 20]
        [--latency 0.02:0.25] [--task cartpole_swingup-fusion] [--seed 0]

Starts ``python -m server`` on the bundle (127.0.0.1, free ports), then runs one robot-sim
episode per seed (``seed``, ``seed + 1``, ...) through it over gRPC, with the camera frames
delayed by a seeded uniform latency (so they arrive late and out of order), and stops the
server. Reports the return as mean and IQM with 95% bootstrap intervals, the random-action
return on the same seeds, and per state element the nRMSE and the coverage of the central
90% interval pooled over all ticks (the truth is the simulator's; the service never sees
it). Writes bench/results/closed_loop.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results_io import machine_meta, write_results  # noqa: E402


def start_server(bundle: Path, workdir: Path) -> tuple[subprocess.Popen, int]:
    ready = workdir / "ready.json"
    log = open(workdir / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "server", "--bundle", f"model={bundle}",
                             "--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0",
                             "--ready-file", str(ready)], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT)
    for _ in range(600):
        if ready.exists():
            return proc, int(json.loads(ready.read_text())["grpc_port"])
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {(workdir / 'server.log').read_text()}")
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the server was not ready after 60 s")


def main() -> int:
    from clients.robot_sim import sim
    from clients.robot_sim.camera import Latency
    from server.runtime import calibration as cal
    from training.evaluate import return_stats

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--latency", type=Latency.parse, default=Latency(0.02, 0.25))
    p.add_argument("--task", default="cartpole_swingup-fusion")
    p.add_argument("--seed", type=int, default=1000, help="first episode seed")
    p.add_argument("--name", default="closed_loop", help="results file name")
    args = p.parse_args()
    load = os.getloadavg()
    started = time.time()
    recs, randoms = [], []
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_server(args.bundle.resolve(), Path(tmp))
        try:
            for i in range(args.episodes):
                seed = args.seed + i
                backend = sim.service_backend(server=f"127.0.0.1:{port}")
                rec = sim.simulate(args.task, backend, seed, args.latency)
                backend.client.close()
                recs.append(rec)
                randoms.append(sim.random_return(args.task, seed))
                print(f"episode {i + 1}/{args.episodes} seed {seed}: return "
                      f"{rec.episode_return:.1f} (random {randoms[-1]:.1f})", flush=True)
        finally:
            proc.terminate()
            proc.wait(30)
    returns = [r.episode_return for r in recs]
    stats = return_stats(returns, args.seed)
    random_stats = return_stats(randoms, args.seed)
    names = recs[0].state_names
    measured = recs[0].measured
    truth = np.concatenate([np.asarray(r.state) for r in recs])
    mean = np.concatenate([np.asarray(r.state_mean) for r in recs])
    var = np.concatenate([np.asarray(r.state_var) for r in recs])
    nrmse = cal.nrmse(mean, truth)
    cov90 = cal.coverage(mean, var, truth, 0.9)
    nll = cal.gaussian_nll(mean, var, truth)
    steps = np.concatenate([r.control_ms for r in recs])
    rows = {"task": args.task, "bundle": str(args.bundle), "episodes": args.episodes,
            "seeds": [args.seed, args.seed + args.episodes - 1],
            "camera_latency_s": [args.latency.low, args.latency.high],
            "return": stats, "random_return": random_stats,
            "state": {"names": list(names), "measured": list(measured),
                      "nrmse": nrmse.tolist(), "cov90": cov90.tolist(), "nll": nll.tolist(),
                      "ticks": len(truth)},
            "control_step_ms": {"p50": float(np.percentile(steps, 50)),
                                "p99": float(np.percentile(steps, 99))},
            "replayed_ticks": [r.counters.get("replayed_ticks", 0) for r in recs]}
    lines = [[n, "measured" if n in measured else "hidden", f"{nrmse[i]:.3f}",
              f"{cov90[i]:.3f}", f"{nll[i]:.3f}"] for i, n in enumerate(names)]
    title = (f"Closed loop through the service (python bench/closed_loop.py --bundle "
             f"{args.bundle} --episodes {args.episodes}): return mean {stats['mean']:.1f} "
             f"[{stats['mean_ci95'][0]:.1f}, {stats['mean_ci95'][1]:.1f}], IQM "
             f"{stats['iqm']:.1f} [{stats['iqm_ci95'][0]:.1f}, {stats['iqm_ci95'][1]:.1f}] "
             f"(random actions {random_stats['mean']:.1f}); camera latency "
             f"{args.latency.low}-{args.latency.high} s; {len(truth)} ticks")
    write_results(args.name, title, ["element", "kind", "nRMSE", "cov90", "NLL"], lines,
                  [rows], machine_meta(load, minutes=round((time.time() - started) / 60, 1)))
    print(title)
    for line in lines:
        print("  " + "  ".join(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
