"""CPU learning benchmark: does VRKN-Dreamer learn within a wall-clock budget?

    python bench/learning.py --minutes 30

Runs, one after the other on the same task and settings (``--preset cpu`` of
training.presets: cartpole_swingup-fusion, 1000-step episodes at action repeat 2, batch
32x32, 50 updates per episode, small nets):

1. the uniform random policy for ``--random-episodes`` episodes (the baseline);
2. Dreamer with each model of ``--models`` (default vrkn, rssm) for ``--minutes`` of
   wall-clock time each (prefill, updates, collection and evaluation all count).

The claim checked: VRKN's best evaluation return (the mean over ``loop.eval_episodes``
episodes, dropout off) reaches at least twice the random policy's mean return. Writes
``learning.md``, ``learning.json`` and ``learning.png`` (evaluation return over minutes and
over environment steps) into ``--out``; run directories go to ``--runs``. Also reports
world-model updates per second and environment steps per second (collection).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.logger import read_metrics  # noqa: E402
from training.loop import random_returns, train  # noqa: E402
from training.presets import resolve  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget per model")
    p.add_argument("--models", nargs="+", default=["vrkn", "rssm"])
    p.add_argument("--task", default=None, help="task (default: the cpu preset's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--random-episodes", type=int, default=20)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra config overrides (dotted keys, see python -m training.dreamer "
                   "--help)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench-learning",
                   help="run directories (replaced)")
    p.add_argument("--progress", action="store_true", help="show the progress bars")
    return p.parse_args(argv)


def summarise(run: Path, random_mean: float) -> dict:
    records = read_metrics(run)
    evals = [r for r in records if "eval/return" in r]
    train_records = [r for r in records if "train/return" in r]
    minutes = []
    for r in evals:
        before = [t for t in train_records if t["step"] <= r["step"]]
        minutes.append(before[-1]["time/minutes"] if before else 0.0)
    returns = [r["eval/return"] for r in evals]
    best = int(np.argmax(returns))
    last = train_records[-1] if train_records else {}
    return {
        "curve": {"step": [r["step"] for r in evals], "minutes": minutes, "return": returns},
        "final_return": returns[-1], "best_return": returns[best],
        "best_step": evals[best]["step"], "env_steps": last.get("step", 0),
        "updates": last.get("train/updates", 0), "minutes": last.get("time/minutes", 0.0),
        "updates_per_s": statistics.median(t["updates_per_s"] for t in train_records)
        if train_records else 0.0,
        "env_steps_per_s": statistics.median(t["fps"] for t in train_records)
        if train_records else 0.0,
        "ratio_best_to_random": returns[best] / random_mean if random_mean > 0 else float("nan"),
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    rand = results["random"]["mean"]
    for ax, x_key, label in ((axes[0], "minutes", "wall-clock minutes (2-core CPU)"),
                             (axes[1], "step", "environment steps")):
        for model, res in results["models"].items():
            ax.plot(res["curve"][x_key], res["curve"]["return"], marker="o", label=model)
        ax.axhline(rand, color="grey", linestyle="--", label="random policy")
        ax.axhline(2 * rand, color="red", linestyle=":", label="2 x random")
        ax.set_xlabel(label)
        ax.set_ylabel("evaluation return")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"Dreamer on {results['task']} (episode {results['episode_length']} env "
                 f"steps, action repeat {results['action_repeat']})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def table(results: dict) -> str:
    rand = results["random"]
    lines = [
        f"# CPU learning benchmark ({results['date']})", "",
        f"Task `{results['task']}`, episode {results['episode_length']} env steps, action "
        f"repeat {results['action_repeat']}, preset `cpu`, seed {results['seed']}, "
        f"{results['minutes_per_model']} min per model. Load average before "
        f"{results['load_before']}, after {results['load_after']}.", "",
        f"Random policy: {rand['mean']:.1f} ± {rand['std']:.1f} over {rand['episodes']} "
        f"episodes; target 2 x random = {2 * rand['mean']:.1f}.", "",
        "| model | best eval return | at env step | final eval return | best / random | "
        "env steps | updates | updates/s (WM+actor+critic) | env steps/s (collection) | minutes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for model, r in results["models"].items():
        lines.append(f"| {model} | {r['best_return']:.1f} | {r['best_step']} | "
                     f"{r['final_return']:.1f} | {r['ratio_best_to_random']:.2f} | "
                     f"{r['env_steps']} | {r['updates']} | {r['updates_per_s']:.2f} | "
                     f"{r['env_steps_per_s']:.0f} | {r['minutes']:.1f} |")
    verdict = results.get("vrkn_reaches_2x_random")
    if verdict is not None:
        lines += ["", f"VRKN reaches 2 x random: **{'yes' if verdict else 'no'}**."]
    lines += ["", f"Command: `{results['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides: dict = {"seed": args.seed, "loop.minutes": args.minutes,
                       "loop.steps": 10**9, "log.progress": args.progress}
    if args.task:
        overrides["task"] = args.task
    for item in args.set:
        key, value = item.split("=", 1)
        overrides[key] = value
    base = resolve(["cpu"], overrides)
    from training.config import agent_action_repeat

    results: dict = {"task": base.task, "episode_length": base.env.episode_length,
                     "action_repeat": agent_action_repeat(base), "seed": args.seed,
                     "minutes_per_model": args.minutes,
                     "date": time.strftime("%Y-%m-%d %H:%M"),
                     "load_before": [round(x, 2) for x in os.getloadavg()],
                     "command": "python bench/learning.py " + " ".join(argv or sys.argv[1:]),
                     "models": {}}
    t0 = time.perf_counter()
    rand = random_returns(base, args.random_episodes, seed=args.seed + 1000)
    results["random"] = {"mean": float(np.mean(rand)), "std": float(np.std(rand)),
                         "episodes": len(rand), "seconds": time.perf_counter() - t0}
    print(f"random policy: {results['random']['mean']:.1f} ± {results['random']['std']:.1f}",
          flush=True)
    for model in args.models:
        config = resolve(["cpu"], {**overrides, "model": model})
        run = args.runs / model
        shutil.rmtree(run, ignore_errors=True)
        print(f"training {model} for {args.minutes} min -> {run}", flush=True)
        train(config, run)
        results["models"][model] = summarise(run, results["random"]["mean"])
        r = results["models"][model]
        print(f"{model}: best eval {r['best_return']:.1f} (final {r['final_return']:.1f}), "
              f"{r['updates_per_s']:.2f} updates/s, {r['env_steps_per_s']:.0f} env steps/s",
              flush=True)
    if "vrkn" in results["models"]:
        results["vrkn_reaches_2x_random"] = bool(
            results["models"]["vrkn"]["best_return"] >= 2 * results["random"]["mean"])
    results["load_after"] = [round(x, 2) for x in os.getloadavg()]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "learning.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "learning.md").write_text(table(results))
    plot(results, args.out / "learning.png")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
