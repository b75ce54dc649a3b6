"""Benchmark: one world-model training update (forward, backward, Adam) per model.

For every model of ``estimator.models.MODELS`` at B=16, T=50 and B=50, T=50, on a pixel
batch (every frame valid) and a fusion batch (proprio every step, a frame every 4-8
steps, as the fusion tasks have), with the paper's default sizes. Each configuration
runs in its own subprocess so that its peak memory (ru_maxrss) is its own. Prints median
seconds per update and peak memory, and writes bench/results/world_model.{json,md}.

    python bench/world_model.py [--repeats 3] [--models vrkn,rssm] [--sizes 16,50]

The subprocesses run with glibc's malloc thresholds raised (MALLOC_MMAP_THRESHOLD_,
MALLOC_TRIM_THRESHOLD_; docs/design.md §6: page faults otherwise take ~40% of the update), and one
extra row measures the default allocator on the same configuration for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from results_io import machine_meta, write_results

ROOT = Path(__file__).resolve().parent.parent
TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 32)}
PROPRIO_DIM, ACTION_DIM = 6, 6


def make_data(kind: str, batch: int, steps: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    data = {
        "image": torch.randint(0, 256, (batch, steps, 64, 64, 3), dtype=torch.uint8, generator=g),
        "action": torch.rand(batch, steps, ACTION_DIM, generator=g) * 2 - 1,
        "reward": torch.rand(batch, steps, generator=g),
    }
    if kind == "fusion":
        valid = torch.zeros(batch, steps, dtype=torch.bool)
        for b in range(batch):  # the missing-frame schedule: next frame 4..8 steps later
            t = 0
            while t < steps:
                valid[b, t] = True
                t += int(torch.randint(4, 9, (1,), generator=g))
        data["valid/image"] = valid
        data["image"] = data["image"] * valid[..., None, None, None].to(torch.uint8)
        data["proprio"] = torch.randn(batch, steps, PROPRIO_DIM, generator=g)
    return data


def child(model_name: str, kind: str, batch: int, steps: int, repeats: int) -> dict:
    """Time one configuration in this process and return its row."""
    import torch

    from estimator.batch import image_sensor, vector_sensor
    from estimator.models import make_world_model

    specs = (image_sensor(),) if kind == "pixels" else (vector_sensor("proprio", PROPRIO_DIM),
                                                        image_sensor())
    torch.manual_seed(0)  # parameter initialisation
    model = make_world_model(model_name, specs, ACTION_DIM)
    opt = torch.optim.Adam(model.parameters(), lr=6e-4, eps=1e-8)
    sample = model.to_batch(make_data(kind, batch, steps))
    g = torch.Generator().manual_seed(0)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for i in range(repeats + 1):  # the first update is a warm-up
        start = time.perf_counter()
        loss, _ = model.loss(sample, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 100.0)
        opt.step()
        if i:
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"model": model_name, "batch": kind, "B": batch, "T": steps,
            "median_s": statistics.median(times), "min_s": min(times),
            "peak_rss_mb": peak / 1024, "update_rss_mb": (peak - base_rss) / 1024,
            "threads": torch.get_num_threads(), "repeats": repeats,
            "valid_frames": int(sample.sensors[-1].valid.sum())}


def run_child(args: list[str], env_extra: dict[str, str]) -> dict:
    env = {**os.environ, **env_extra, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, __file__, "--child", *args], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from estimator.models import MODELS

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="timed updates per config")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated names")
    parser.add_argument("--sizes", default="16,50", help="batch sizes (T=50)")
    parser.add_argument("--kinds", default="pixels,fusion", help="pixels and/or fusion")
    parser.add_argument("--child", nargs=4, metavar=("MODEL", "KIND", "B", "T"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, kind, b, t = args.child
        print(json.dumps(child(name, kind, int(b), int(t), args.repeats)))
        return

    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores "
          "(other jobs slow these figures; compare rows of one run)", flush=True)
    rows = []
    configs = [(m, k, int(b)) for b in args.sizes.split(",") for k in args.kinds.split(",")
               for m in args.models.split(",")]
    for name, kind, batch in configs:
        row = run_child([name, kind, str(batch), "50", "--repeats", str(args.repeats)],
                        TUNED_MALLOC)
        row["malloc"] = "tuned"
        row["loadavg"] = os.getloadavg()[0]
        rows.append(row)
        print(f"{name:16s} {kind:6s} B={batch:3d} T=50  median {row['median_s']:7.2f} s  "
              f"peak RSS {row['peak_rss_mb']:7.0f} MB (+{row['update_rss_mb']:.0f} MB in the "
              f"updates)  load {row['loadavg']:.1f}", flush=True)
    # The allocator comparison, in alternation on one configuration.
    first = configs[0]
    for env, label in [({}, "default"), (TUNED_MALLOC, "tuned")]:
        row = run_child([first[0], first[1], str(first[2]), "50", "--repeats",
                         str(args.repeats)], env)
        row["malloc"] = f"{label} (allocator comparison)"
        row["loadavg"] = os.getloadavg()[0]
        rows.append(row)
        print(f"{first[0]:16s} {first[1]:6s} B={first[2]:3d} T=50  malloc {label:7s} median "
              f"{row['median_s']:7.2f} s", flush=True)

    write_results(
        "world_model", "One world-model update: forward, backward, Adam (bench/world_model.py)",
        ["model", "batch", "B", "T", "valid frames", "median s/update", "peak RSS MB", "malloc"],
        [[r["model"], r["batch"], r["B"], r["T"], r["valid_frames"], f"{r['median_s']:.2f}",
          f"{r['peak_rss_mb']:.0f}", r["malloc"]] for r in rows], rows, machine_meta(load))

if __name__ == "__main__":
    main()
