"""Benchmark: the exported bundle in ONNX Runtime against torch eager, in one run.

Per-call latency of every network and of a whole online filter step (proprio only;
proprio + image) at batch 1 and 64, median and p99, for a default-size VRKN (L = 230,
conv depth 32, fusion sensors: proprio 6 + image 64x64). Calls of the two back-ends are
interleaved so that machine load hits both alike. Writes bench/results/runtime.{json,md}.

    python bench/runtime.py [--calls 200] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from results_io import machine_meta, write_results

from estimator.batch import SensorBatch, image_sensor, vector_sensor
from estimator.models import make_world_model
from server.runtime import OnlineFilter, Reading, load_bundle
from training.actor_critic import Actor
from training.export import ExportInputs, export_bundle

P, A = 6, 6


def percentiles(times: list[float]) -> tuple[float, float]:
    arr = np.asarray(times) * 1e3
    return float(np.median(arr)), float(np.percentile(arr, 99))


def make_cases(bundle, runtime, model, actor, belief, state, n, proprio, image, latent, action,
               noise) -> dict:
    """name -> (ONNX Runtime call, torch call) on the same inputs."""
    t = {k: torch.from_numpy(v) for k, v in dict(proprio=proprio, image=image, latent=latent,
                                                   action=action).items()}
    ones, zeros = torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
    return {
        "encoder_image": (lambda: bundle.encode("image", image),
                          lambda: model.heads[1](model.sensors.encoders[1](
                              (t["image"] // 8).float().div(32).sub(0.5).movedim(-1, -3)))),
        "encoder_proprio": (lambda: bundle.encode("proprio", proprio),
                            lambda: model.heads[0](model.sensors.encoders[0](t["proprio"]))),
        "transition": (lambda: bundle.transition(latent, action),
                       lambda: model.transition(t["latent"], t["action"], False)),
        "actor": (lambda: bundle.actor(latent, noise), lambda: actor.mode(t["latent"])),
        "reward": (lambda: bundle.reward(latent), lambda: model.reward(t["latent"])),
        "step proprio": (
            lambda: runtime.step(belief, action, {"proprio": Reading(proprio,
                                                                     np.ones(n, bool))}),
            lambda: model.filter_step(state, t["action"], (
                SensorBatch(t["proprio"], ones, None), SensorBatch(t["image"], zeros,
                                                                   None)))),
        "step proprio+image": (
            lambda: runtime.step(belief, action, {
                "proprio": Reading(proprio, np.ones(n, bool)),
                "image": Reading(image, np.ones(n, bool))}),
            lambda: model.filter_step(state, t["action"], (
                SensorBatch(t["proprio"], ones, None), SensorBatch(t["image"], ones,
                                                                   None)))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200, help="timed calls per case")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads for both back-ends (1 suits a server that "
                             "runs many sessions; 0 = library default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = make_world_model("vrkn", (vector_sensor("proprio", P), image_sensor()), A).eval()
    model.set_dropout(False)
    actor = Actor(model.feature_dim, A).eval()
    tmp = Path(tempfile.mkdtemp())
    info = ExportInputs(0.02, (-1.0,) * A, (1.0,) * A, {"proprio": (np.zeros(P), np.ones(P))},
                        {"bench": True})
    bundle = load_bundle(export_bundle(model, actor, info, tmp / "bundle"), providers="cpu",
                         threads=args.threads)
    runtime = OnlineFilter(bundle)
    rng = np.random.default_rng(0)
    load = os.getloadavg()
    print(f"ONNX Runtime providers {bundle.providers}; torch {torch.__version__}; "
          f"{args.threads or 'default'} thread(s); load average {load[0]:.2f} on "
          f"{os.cpu_count()} cores", flush=True)

    rows = []
    for n in (1, 64):
        proprio = rng.standard_normal((n, P)).astype(np.float32)
        image = rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
        latent = rng.standard_normal((n, 230)).astype(np.float32)
        action = rng.uniform(-1, 1, (n, A)).astype(np.float32)
        noise = np.zeros((n, A), np.float32)
        t = {k: torch.from_numpy(v) for k, v in dict(proprio=proprio, image=image).items()}
        belief = runtime.step(None, None, {"proprio": Reading(proprio, np.ones(n, bool))})
        with torch.no_grad():
            state = model.filter_step(None, None, (
                SensorBatch(t["proprio"], torch.ones(n, dtype=torch.bool), None),
                SensorBatch(t["image"], torch.zeros(n, dtype=torch.bool), None)))
        cases = make_cases(bundle, runtime, model, actor, belief, state, n, proprio, image,
                           latent, action, noise)
        for name, (ort_fn, torch_fn) in cases.items():
            times = {"onnxruntime": [], "torch": []}
            with torch.no_grad():
                for _ in range(5):
                    ort_fn()
                    torch_fn()
                for _ in range(args.calls):
                    for backend, fn in (("onnxruntime", ort_fn), ("torch", torch_fn)):
                        start = time.perf_counter()
                        fn()
                        times[backend].append(time.perf_counter() - start)
            (om, op), (tm, tp) = percentiles(times["onnxruntime"]), percentiles(times["torch"])
            rows.append({"case": name, "batch": n, "ort_median_ms": om, "ort_p99_ms": op,
                         "torch_median_ms": tm, "torch_p99_ms": tp, "speedup": tm / om})
            print(f"{name:20s} N={n:3d}  ORT median {om:7.3f} ms p99 {op:7.3f} | torch median "
                  f"{tm:7.3f} ms p99 {tp:7.3f} | torch/ORT {tm / om:5.1f}x", flush=True)
    meta = machine_meta(load, providers=bundle.providers, threads=args.threads,
                        calls=args.calls)
    write_results("runtime", "Bundle runtime vs torch eager (bench/runtime.py)",
                  ["call", "N", "ORT median ms", "ORT p99 ms", "torch median ms", "torch p99 ms",
                   "torch / ORT"],
                  [[r["case"], r["batch"], f"{r['ort_median_ms']:.3f}", f"{r['ort_p99_ms']:.3f}",
                    f"{r['torch_median_ms']:.3f}", f"{r['torch_p99_ms']:.3f}",
                    f"{r['speedup']:.1f}x"] for r in rows], rows, meta)

if __name__ == "__main__":
    main()
