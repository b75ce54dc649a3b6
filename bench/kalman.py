"""Benchmark: diagonal Kalman filter + RTS smoother, forward and backward.

Sizes from the issue: B=50, T=50, L=230 (a Dreamer batch) and B=16, T=1000, L=230
(long sequences). Variants, timed in alternation within one run so that machine load
hits them alike:
  sequential  kalman_filter + rts_smoother (a Python loop over time, vectorised over B, L)
  compiled    the same with kalman_filter(compiled=True): the per-step predict + update
              through torch.compile (the first call compiles; reported separately)
  seq+scan    sequential filter + associative-scan smoother (VRKN training: its transition
              network needs mu+_t, so only the smoother can be parallel)
  scan        parallel_filter + parallel_smoother (fixed transitions; O(log T) depth)
Prints a table of medians and writes it to bench/results/kalman.{json,md}.

    python bench/kalman.py [--repeats N] [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from results_io import machine_meta, write_results

from estimator import Belief, LatentObservation, LinearTransition, kalman_filter, rts_smoother
from estimator.parallel import parallel_filter, parallel_smoother


def make_inputs(batch: int, steps: int, latent: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)

    def leaf(x: torch.Tensor) -> torch.Tensor:
        return x.to(device).requires_grad_()

    obs_mean = leaf(torch.randn(batch, steps, latent, generator=g))
    obs_var = leaf(torch.rand(batch, steps, latent, generator=g) + 0.01)
    valid = (torch.rand(batch, steps, generator=g) > 0.25).to(device)
    a = leaf(0.1 + 0.89 * torch.rand(batch, steps - 1, latent, generator=g))
    b = leaf(0.1 * torch.randn(batch, steps - 1, latent, generator=g))
    q = leaf(0.001 + 0.099 * torch.rand(batch, steps - 1, latent, generator=g))
    init = Belief(torch.zeros(batch, latent, device=device),
                  torch.ones(batch, latent, device=device))
    return init, [LatentObservation(obs_mean, obs_var, valid)], LinearTransition(a, b, q)


def variants() -> dict[str, Callable]:
    def sequential(init, obs, trans):
        f = kalman_filter(init, obs, trans, validate=False)
        return rts_smoother(f, validate=False)

    def compiled(init, obs, trans):
        f = kalman_filter(init, obs, trans, validate=False, compiled=True)
        return rts_smoother(f, validate=False)

    def seq_scan(init, obs, trans):
        return parallel_smoother(kalman_filter(init, obs, trans, validate=False))

    def scan(init, obs, trans):
        return parallel_smoother(parallel_filter(init, obs, trans, validate=False))

    return {"sequential": sequential, "compiled": compiled, "seq+scan": seq_scan, "scan": scan}


def step(fn: Callable, inputs, device: str) -> float:
    start = time.perf_counter()
    result = fn(*inputs)
    loss = result.smoothed.mean.square().mean() + result.smoothed.var.mean()
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def run(sizes: list[tuple[int, int, int]], repeats: int, device: str) -> list[dict]:
    rows = []
    fns = variants()
    for batch, steps, latent in sizes:
        inputs = make_inputs(batch, steps, latent, device)
        times: dict[str, list[float]] = {name: [] for name in fns}
        for name, fn in fns.items():  # warm-up (and, for "compiled", compilation)
            first = step(fn, inputs, device)
            print(f"{device:5s} B={batch:3d} T={steps:5d} L={latent}  {name:11s} "
                  f"first call {first:6.1f} s", flush=True)
        for _ in range(repeats):  # alternate variants so load affects all alike
            for name, fn in fns.items():
                times[name].append(step(fn, inputs, device))
        base = statistics.median(times["sequential"])
        for name, ts in times.items():
            med = statistics.median(ts)
            rows.append({"device": device, "B": batch, "T": steps, "L": latent, "variant": name,
                         "median_s": med, "min_s": min(ts), "speedup_vs_sequential": base / med,
                         "repeats": repeats})
            print(f"{device:5s} B={batch:3d} T={steps:5d} L={latent}  {name:11s} "
                  f"median {med * 1e3:9.1f} ms  min {min(ts) * 1e3:9.1f} ms  "
                  f"x{base / med:5.2f} vs sequential", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per variant")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (both if CUDA)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if args.device != "auto":
        devices = [args.device]
    load = os.getloadavg()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    sizes = [(50, 50, 230), (16, 1000, 230)]
    rows = [r for d in devices for r in run(sizes, args.repeats, d)]
    meta = machine_meta(load, torch=torch.__version__, threads=torch.get_num_threads(),
                        cpu=platform.processor() or platform.machine())
    write_results("kalman", "Filter + RTS smoother, forward + backward (bench/kalman.py)",
                  ["device", "B", "T", "L", "variant", "median (ms)", "vs sequential"],
                  [[r["device"], r["B"], r["T"], r["L"], r["variant"],
                    f"{r['median_s'] * 1e3:.1f}", f"{r['speedup_vs_sequential']:.2f}x"]
                   for r in rows], rows, meta)

if __name__ == "__main__":
    main()
