"""CPU learning benchmark: what a wall-clock budget buys, VRKN against RSSM, over seeds.

    python bench/learning.py --minutes 10 --seeds 0 1 --parallel 2
    python bench/learning.py --summarise runs/ship-vrkn runs/ship-rssm   # runs that exist

Every (model, seed) pair trains Dreamer with ``--preset cpu`` (cartpole_swingup-fusion,
1000-step episodes at action repeat 2, batch 32x32, small nets) for ``--minutes`` of wall
clock (prefill, updates, collection and the loop's evaluations all count), in its own
process with ``--threads`` threads; ``--parallel`` runs share the machine at once, so
each model gets the same share of it. Then the final policy of every run is evaluated on
``--final-episodes`` held-out seeded episodes (``python -m training.evaluate``), the
same episodes for every run.

Reported per model: the final return pooled over seeds x episodes as mean and IQM with
95% two-level bootstrap intervals (seeds, then episodes), each seed's final mean, and the
loop's last in-training evaluation (never the best one); per run: updates, environment
steps, updates/s and the load average sampled every 10 s while it ran. ``learning.png``
draws every run's in-training curve with the random-policy line. Writes ``learning.md``,
``learning.json`` and ``learning.png`` to ``--out``. Run directories go to ``--runs``; an
existing one is replaced only if this script created it (it leaves a marker file).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.logger import read_metrics  # noqa: E402
from training.stats import iqm, mean  # noqa: E402

MARKER = ".bench-learning"  # written into every run directory this script creates
EVAL_SEED = 2000  # held-out evaluation episodes: the same for every run


@dataclass
class Job:
    model: str
    seed: int
    run: Path
    proc: subprocess.Popen | None = None
    load: list[float] = field(default_factory=list)  # 1-min load average samples
    seconds: float = 0.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget per run")
    p.add_argument("--models", nargs="+", default=["vrkn", "rssm"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--parallel", type=int, default=2, help="runs at once")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--final-episodes", type=int, default=10)
    p.add_argument("--random-episodes", type=int, default=20)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra training overrides (dotted keys, python -m training.dreamer "
                   "--help)")
    p.add_argument("--summarise", nargs="+", type=Path, default=None, metavar="RUN_DIR",
                   help="no training: evaluate and report these finished runs")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench-learning")
    return p.parse_args(argv)


def claim_run_dir(run: Path) -> None:
    """Refuse a folder this script did not create; empty one it did (marker inside)."""
    if run.exists():
        if not (run / MARKER).is_file():
            raise SystemExit(f"error: {run} exists and was not created by bench/learning.py "
                             f"(no {MARKER}); choose another --runs")
        import shutil

        shutil.rmtree(run)
    run.mkdir(parents=True)
    (run / MARKER).write_text("created by bench/learning.py; may be replaced by it\n")


def train_command(job: Job, args: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, "-m", "training.dreamer", "--preset", "cpu", "--model", job.model,
           "--seed", str(job.seed), "--loop.minutes", str(args.minutes),
           "--loop.steps", str(10**9), "--threads", str(args.threads), "--logdir",
           str(job.run), "--log.progress", "false", "--log.video", "false"]
    for item in args.set:
        key, value = item.split("=", 1)
        cmd += [f"--{key}", value]
    return cmd


def run_jobs(jobs: list[Job], args: argparse.Namespace) -> None:
    """Train every job, ``--parallel`` at a time, sampling the load while they run."""
    waiting, running = list(jobs), []
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    while waiting or running:
        while waiting and len(running) < args.parallel:
            job = waiting.pop(0)
            claim_run_dir(job.run)
            log = open(job.run / "train.log", "w")
            print(f"training {job.model} seed {job.seed} for {args.minutes} min -> {job.run}",
                  flush=True)
            job.proc = subprocess.Popen(train_command(job, args), cwd=ROOT, env=env,
                                        stdout=log, stderr=subprocess.STDOUT)
            job.seconds = time.perf_counter()
            running.append(job)
        time.sleep(10)
        for job in list(running):
            job.load.append(os.getloadavg()[0])
            if job.proc.poll() is not None:
                running.remove(job)
                job.seconds = time.perf_counter() - job.seconds
                write_bench_facts(job, args)
                if job.proc.returncode != 0:
                    tail = (job.run / "train.log").read_text()[-2000:]
                    raise SystemExit(f"error: {job.model} seed {job.seed} failed "
                                     f"(exit {job.proc.returncode}):\n{tail}")


def write_bench_facts(job: Job, args: argparse.Namespace) -> None:
    """How the run was trained (budget, sharing, load), so ``--summarise`` can report it."""
    load = job.load or [float("nan")]
    facts = {"budget": budget_text(args), "command": " ".join(train_command(job, args)),
             "load": {"min": min(load), "median": float(np.median(load)), "max": max(load)}}
    (job.run / "bench.json").write_text(json.dumps(facts, indent=1) + "\n")


def budget_text(args: argparse.Namespace) -> str:
    return (f"{args.minutes} min per run, {args.parallel} at once, {args.threads} thread(s) "
            f"each, seeds {args.seeds}")


def final_returns(run: Path, eval_root: Path, episodes: int) -> list[float]:
    """The run's final policy on the held-out episodes (training.evaluate, no baseline)."""
    out = eval_root / run.name
    done = out / "eval.json"
    if not (done.is_file() and json.loads(done.read_text())["return"]["episodes"] == episodes):
        subprocess.run([sys.executable, "-m", "training.evaluate", str(run), "--episodes",
                        str(episodes), "--seed", str(EVAL_SEED), "--out", str(out),
                        "--no-camera-baseline"], cwd=ROOT, check=True,
                       env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")})
    return [float(x) for x in json.loads(done.read_text())["return"]["returns"]]


def summarise_run(job: Job, returns: list[float]) -> dict:
    records = read_metrics(job.run)
    evals = [r for r in records if "eval/return" in r]
    trains = [r for r in records if "train/return" in r]
    minutes = []
    for r in evals:
        before = [t for t in trains if t["step"] <= r["step"]]
        minutes.append(before[-1]["time/minutes"] if before else 0.0)
    last = trains[-1] if trains else {}
    facts_file = job.run / "bench.json"
    facts = json.loads(facts_file.read_text()) if facts_file.is_file() else {}
    nan = float("nan")
    load = facts.get("load", {"min": nan, "median": nan, "max": nan})
    return {
        "model": job.model, "seed": job.seed, "run": str(job.run),
        "curve": {"step": [r["step"] for r in evals], "minutes": minutes,
                  "return": [r["eval/return"] for r in evals]},
        "final_returns": returns, "final_mean": float(np.mean(returns)),
        "last_training_eval": evals[-1]["eval/return"] if evals else float("nan"),
        "env_steps": last.get("step", 0), "updates": last.get("train/updates", 0),
        "minutes": last.get("time/minutes", 0.0),
        "updates_per_s": float(np.median([t["updates_per_s"] for t in trains]))
        if trains else 0.0,
        "load": load, "budget": facts.get("budget", "not trained by this script"),
    }


def aggregate(runs: list[dict], seed: int = 0, reps: int = 5000) -> dict:
    """Mean and IQM of the final returns pooled over seeds x episodes, with a two-level
    percentile bootstrap: each replicate redraws the seeds (training runs), then episodes
    within each drawn seed, so the interval carries the spread between training seeds (with
    2 seeds it is wide; an episode-only bootstrap would hide that spread)."""
    per_seed = [np.asarray(r["final_returns"], float) for r in runs]
    rng = np.random.default_rng(seed)
    out: dict = {"seeds": [r["seed"] for r in runs], "episodes": sum(len(s) for s in per_seed)}
    for name, stat in (("mean", mean), ("iqm", iqm)):
        reps_out = np.empty(reps)
        for k in range(reps):
            drawn = rng.integers(0, len(per_seed), len(per_seed))
            pooled = np.concatenate([rng.choice(per_seed[i], len(per_seed[i]))
                                     for i in drawn])
            reps_out[k] = float(np.asarray(stat(pooled)).reshape(-1)[0])
        out[name] = float(np.asarray(stat(np.concatenate(per_seed))).reshape(-1)[0])
        out[f"{name}_ci95"] = [float(x) for x in np.percentile(reps_out, [2.5, 97.5])]
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colours = {m: f"C{i}" for i, m in enumerate(results["models"])}
    styles = ["-", "--", ":", "-."]
    for ax, key, label in ((axes[0], "minutes", "wall-clock minutes (2-core CPU)"),
                           (axes[1], "step", "environment steps")):
        for run in results["runs"]:
            seeds = sorted({r["seed"] for r in results["runs"] if r["model"] == run["model"]})
            ax.plot(run["curve"][key], run["curve"]["return"], marker=".",
                    color=colours[run["model"]], linestyle=styles[seeds.index(run["seed"]) % 4],
                    label=f"{run['model']} seed {run['seed']}")
        ax.axhline(results["random"]["mean"], color="grey", linestyle="--",
                   label="random policy")
        ax.set_xlabel(label)
        ax.set_ylabel("evaluation return (loop, 5 episodes)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Dreamer on {results['task']}: in-training evaluations of every run")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def table(results: dict) -> str:
    rand = results["random"]
    lines = [f"# CPU learning benchmark ({results['date']})", "",
             f"Task `{results['task']}`, preset `cpu`, {results['budget']}. Final returns: "
             f"{results['final_episodes']} held-out episodes per run (evaluation seed "
             f"{EVAL_SEED}), pooled over seeds; 95% bootstrap CIs redrawing seeds, then "
             "episodes.", "",
             f"Random policy: {rand['mean']:.1f} ± {rand['std']:.1f} over {rand['episodes']} "
             "episodes.", "",
             "| model | seeds | final return mean [95% CI] | final IQM [95% CI] | "
             "per-seed final means |", "|---|---|---:|---:|---|"]
    for model, agg in results["models"].items():
        per_seed = ", ".join(f"{r['final_mean']:.1f}" for r in results["runs"]
                             if r["model"] == model)
        lines.append(f"| {model} | {agg['seeds']} | {agg['mean']:.1f} [{agg['mean_ci95'][0]:.1f}, "
                     f"{agg['mean_ci95'][1]:.1f}] | {agg['iqm']:.1f} [{agg['iqm_ci95'][0]:.1f}, "
                     f"{agg['iqm_ci95'][1]:.1f}] | {per_seed} |")
    lines += ["", "| run | last in-training eval | env steps | updates | updates/s | minutes "
              "| load avg min / median / max |", "|---|---:|---:|---:|---:|---:|---|"]
    for r in results["runs"]:
        ld = r["load"]
        load = ("not recorded" if np.isnan(ld["median"]) else
                f"{ld['min']:.2f} / {ld['median']:.2f} / {ld['max']:.2f}")
        lines.append(f"| {r['model']} seed {r['seed']} | {r['last_training_eval']:.1f} | "
                     f"{r['env_steps']} | {r['updates']} | {r['updates_per_s']:.2f} | "
                     f"{r['minutes']:.1f} | {load} |")
    lines += ["", "![curves](learning.png)", "", f"Command: `{results['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from training.config import agent_action_repeat
    from training.loop import random_returns
    from training.presets import resolve

    if args.summarise:
        jobs = []
        for run in args.summarise:
            config = json.loads((run / "config.json").read_text())
            jobs.append(Job(config["model"], int(config["seed"]), run))
        base = resolve(["cpu"], {"task": json.loads(
            (args.summarise[0] / "config.json").read_text())["task"]})
        budget = ""  # from each run's bench.json, below
    else:
        jobs = [Job(m, s, args.runs / f"{m}-s{s}") for m in args.models for s in args.seeds]
        base = resolve(["cpu"], {})
        budget = budget_text(args)
    results: dict = {"task": base.task, "action_repeat": agent_action_repeat(base),
                     "budget": budget, "final_episodes": args.final_episodes,
                     "date": time.strftime("%Y-%m-%d %H:%M"),
                     "load_before": [round(x, 2) for x in os.getloadavg()],
                     "command": "python bench/learning.py " + " ".join(argv or sys.argv[1:])}
    rand = random_returns(base, args.random_episodes, seed=EVAL_SEED)
    results["random"] = {"mean": float(np.mean(rand)), "std": float(np.std(rand)),
                         "episodes": len(rand)}
    print(f"random policy: {results['random']['mean']:.1f}", flush=True)
    if not args.summarise:
        run_jobs(jobs, args)
    runs = [summarise_run(j, final_returns(j.run, args.runs / "final-eval",
                                           args.final_episodes)) for j in jobs]
    results["runs"] = runs
    results["budget"] = budget or "; ".join(dict.fromkeys(r["budget"] for r in runs))
    results["models"] = {m: aggregate([r for r in runs if r["model"] == m])
                         for m in dict.fromkeys(r["model"] for r in runs)}
    results["load_after"] = [round(x, 2) for x in os.getloadavg()]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "learning.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "learning.md").write_text(table(results))
    plot(results, args.out / "learning.png")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
