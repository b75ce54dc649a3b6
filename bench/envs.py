"""Benchmark: agent steps per second of the DMC tasks, with 64x64 rendering.

Variants, timed in alternation within one run (the order flips every repeat) so
that machine load hits them alike:
  default   dm_control's default render settings and a new camera per frame
            (``physics.render(64, 64, camera_id=0)``, what common DMC wrappers do)
  settings  our offscreen settings (no multisampling, 64x64 buffer, 256 shadow
            maps) but still a new camera per frame: isolates the settings' share
  ours      the settings plus one camera (and scene) reused for every frame
            (what ``make_task`` does)
  physics   no rendering at all (``step(render=False)``): the physics share
Each measurement runs ``--steps`` agent steps (action repeat 2, seeded uniform
random actions) after a warm-up. Reports medians over ``--repeats`` and the load
average before and after, and writes bench/results/envs.{json,md}.

    python bench/envs.py [--steps 60] [--repeats 5] [--tasks cheetah_run walker_walk]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from training.envs import BASE_TASKS, Task, make_task
from training.envs.rendering import apply_fast_render_settings, configure_headless_rendering

RESULTS = Path(__file__).resolve().parent / "results"
GOAL = 3.0
VARIANTS = ("default", "settings", "ours", "physics")


def build(name: str, variant: str) -> Task:
    if variant in ("default", "settings"):
        task = make_task(name, 0, fast_render=False)
        if variant == "settings":
            apply_fast_render_settings(task.unwrapped.physics, 64)
        return task
    return make_task(name, 0)


def steps_per_second(task: Task, steps: int, render: bool, rng: np.random.Generator) -> float:
    space = task.act_space
    actions = rng.uniform(space.low, space.high, (steps, *space.shape))
    start = time.perf_counter()
    for action in actions:
        if task.step(action, render=render)["is_last"]:
            task.reset()
    return steps / (time.perf_counter() - start)


def measure(tasks: list[str], steps: int, repeats: int) -> dict[str, dict[str, list[float]]]:
    rates = {name: {v: [] for v in VARIANTS} for name in tasks}
    bar = tqdm(total=len(tasks) * repeats * len(VARIANTS), desc="bench envs", unit="run")
    for name in tasks:
        built = {v: build(name, v) for v in VARIANTS if v != "physics"}
        built["physics"] = built["ours"]
        runners: dict[str, Callable[[], float]] = {}
        for variant, task in built.items():
            task.reset()
            render = variant != "physics"
            rng = np.random.default_rng(0)
            steps_per_second(task, 5, render, rng)  # warm-up: GL context, caches
            runners[variant] = lambda t=task, r=render, g=rng: steps_per_second(t, steps, r, g)
        for repeat in range(repeats):
            order = VARIANTS if repeat % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                bar.set_postfix_str(f"{name} {variant}")
                rates[name][variant].append(runners[variant]())
                bar.update()
        for variant, task in built.items():
            if variant != "physics":
                task.close()
    bar.close()
    return rates


def summarise(rates: dict[str, dict[str, list[float]]]) -> list[dict[str, float | str]]:
    rows = []
    for name, by_variant in rates.items():
        med = {v: statistics.median(r) for v, r in by_variant.items()}
        physics_ms = 1000 / med["physics"]
        rows.append(
            {
                "task": name,
                **{f"{v}_steps_per_s": med[v] for v in VARIANTS},
                "speedup": med["ours"] / med["default"],
                "speedup_settings_only": med["settings"] / med["default"],
                "render_ms_default": 1000 / med["default"] - physics_ms,
                "render_ms_ours": 1000 / med["ours"] - physics_ms,
                "physics_ms": physics_ms,
            }
        )
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        f"# DMC task steps per second ({meta['date']})",
        "",
        f"Machine: {meta['machine']}, {meta['cpus']} CPUs, MUJOCO_GL={meta['backend']}. "
        f"Load average (1/5/15 min) before {meta['load_before']}, after {meta['load_after']}.",
        f"{meta['steps']} agent steps (action repeat 2) per measurement, median of "
        f"{meta['repeats']} alternated repeats. Goal: ours >= {GOAL:g}x default.",
        "",
        "| task | default steps/s | settings only | ours | physics only | ours / default "
        "| render ms default | render ms ours | physics ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        flag = "" if r["speedup"] >= GOAL else " (below goal)"
        lines.append(
            f"| {r['task']} | {r['default_steps_per_s']:.0f} | {r['settings_steps_per_s']:.0f} "
            f"| {r['ours_steps_per_s']:.0f} | {r['physics_steps_per_s']:.0f} "
            f"| {r['speedup']:.1f}x{flag} | {r['render_ms_default']:.1f} "
            f"| {r['render_ms_ours']:.1f} | {r['physics_ms']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tasks", nargs="+", default=list(BASE_TASKS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    backend = configure_headless_rendering()
    load_before = tuple(round(x, 2) for x in os.getloadavg())
    cpus = os.cpu_count() or 1
    print(f"load average before: {load_before} on {cpus} CPUs")
    if load_before[0] > 0.5 * cpus:
        print("warning: the machine is busy; absolute rates are unreliable, ratios less so")
    rates = measure(args.tasks, args.steps, args.repeats)
    load_after = tuple(round(x, 2) for x in os.getloadavg())
    rows = summarise(rates)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": platform.processor() or platform.machine(),
        "cpus": cpus,
        "backend": backend,
        "load_before": load_before,
        "load_after": load_after,
        "steps": args.steps,
        "repeats": args.repeats,
    }
    table = markdown(rows, meta)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "envs.md").write_text(table)
    raw = {"meta": meta, "rows": rows, "raw_steps_per_s": rates}
    (args.out / "envs.json").write_text(json.dumps(raw, indent=2))
    below = [r["task"] for r in rows if r["speedup"] < GOAL]
    print(f"below the {GOAL:g}x goal: {', '.join(below)}" if below else f"all >= {GOAL:g}x")


if __name__ == "__main__":
    main()
