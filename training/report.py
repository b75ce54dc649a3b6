"""Aggregate training runs into learning curves and IQMs with stratified bootstrap CIs.

    python -m training.report RUN_DIR_OR_GLOB... [--out DIR] [--metric eval/return]
                              [--steps STEP...] [--scale 1000] [--reps 10000] [--seed 0]

A run directory holds ``config.json`` (with at least "agent", "model", "task", "seed") and
``metrics.jsonl`` (one JSON object per line with "step", the environment steps, and metric
keys such as "eval/return"). Runs are grouped by (agent, model), and split further where
their configs differ (``training.report_configs``; e.g. ``vrkn [replay.batch=16]``): they
are never pooled. Tasks are the strata of the bootstrap. Scores are the metric divided by
``--scale`` (DMC returns lie in [0, 1000]).

Step grid, one per agent: the evaluation steps shared by every run of that agent when all
runs evaluated at the same steps; otherwise the union of their evaluation steps within the
range that every run covers (``--points`` evenly spaced steps when that union is larger),
each run linearly interpolated onto it. ``--steps`` sets the grid for every agent; a run
that does not cover it is an error. The final step of the grid is the one the table
reports, so one unfinished run shortens its agent's curves (a warning says so).

Writes DIR/curves.png (IQM over steps, shaded CIs, a panel per agent and a line per
model), DIR/final.png (IQM at the final step with CIs), DIR/report.md and DIR/summary.json.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import math
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.report_configs import config_differences, config_label, flat_config
from training.stats import Interval, iqm, mean, median, pooled, stratified_bootstrap_ci

log = logging.getLogger(__name__)
REQUIRED_CONFIG = ("agent", "model", "task", "seed")


class ReportError(ValueError):
    """Bad input to the report: no runs, a missing metric, an unreadable file."""


@dataclass(frozen=True)
class Run:
    path: Path
    agent: str
    model: str
    task: str
    seed: object
    steps: np.ndarray  # [E] increasing environment steps
    values: np.ndarray  # [E] the metric at those steps
    config: dict[str, str] = field(default_factory=dict)  # dotted key -> JSON value


@dataclass(frozen=True)
class Summary:
    """One (agent, model): its tasks, its curve and its final-step statistics."""

    agent: str
    model: str
    runs_per_task: dict[str, int]
    steps: np.ndarray  # [G] the grid
    curve: Interval  # IQM per grid step
    final: Interval  # IQM at steps[-1]
    final_mean: float
    final_median: float
    config: str = ""  # the config differences that set this group apart, "key=value, ..."

    @property
    def runs(self) -> int:
        return sum(self.runs_per_task.values())

    @property
    def label(self) -> str:
        return f"{self.model} [{self.config}]" if self.config else self.model


# ---------------------------------------------------------------------------- loading

def is_run(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "metrics.jsonl").is_file()


def find_runs(patterns: Sequence[str | Path]) -> list[Path]:
    """Run directories named by ``patterns`` (paths or globs); others skipped, warned."""
    found: dict[Path, None] = {}
    for pattern in map(str, patterns):
        paths = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) \
            else [pattern]
        if not paths:
            log.warning("%s matched nothing", pattern)
        for p in map(Path, paths):
            if is_run(p):
                found.setdefault(p, None)
            else:
                log.warning("skipping %s: not a run directory (needs config.json and "
                            "metrics.jsonl; for the runs inside a folder pass DIR/*)", p)
    if not found:
        raise ReportError(f"no run directories among {list(map(str, patterns))}")
    return list(found)


def load_run(path: Path, metric: str) -> Run:
    """A run's config and its (step, metric) points, sorted, the last value per step."""
    config_file = path / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ReportError(f"{config_file}: cannot read the config: {e}") from e
    missing = [k for k in REQUIRED_CONFIG if k not in config] if isinstance(config, dict) \
        else list(REQUIRED_CONFIG)
    if missing:
        raise ReportError(f"{config_file}: missing {missing}")
    metrics_file = path / "metrics.jsonl"
    points: dict[float, float] = {}
    lines = metrics_file.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines):  # a line the training loop is still writing
                log.warning("%s:%d: ignoring an incomplete last line", metrics_file, number)
                continue
            raise ReportError(f"{metrics_file}:{number}: not JSON: {e}") from e
        if not isinstance(record, dict) or metric not in record:
            continue
        step, value = record.get("step"), record[metric]
        if not _is_number(step) or not _is_number(value) or not math.isfinite(value):
            raise ReportError(f"{metrics_file}:{number}: needs a numeric 'step' and a finite "
                              f"{metric!r}, got step={step!r}, {metric}={value!r}")
        points[float(step)] = float(value)
    if not points:
        raise ReportError(f"{metrics_file}: no {metric!r} values (metric missing)")
    steps = np.array(sorted(points))
    return Run(path, str(config["agent"]), str(config["model"]), str(config["task"]),
               config["seed"], steps, np.array([points[s] for s in steps]),
               flat_config(config))


def split_by_config(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """"key=value, ..." of the differing config keys -> its runs (one group "" when the
    configs agree)."""
    keys = config_differences([r.config for r in runs])
    groups: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        groups[config_label(r.config, keys)].append(r)
    return dict(groups)


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def load_runs(patterns: Sequence[str | Path], metric: str) -> list[Run]:
    runs = [load_run(p, metric) for p in find_runs(patterns)]
    seen: dict[tuple, Path] = {}
    for r in runs:
        key = (r.agent, r.model, r.task, str(r.seed))
        if key in seen:
            log.warning("%s and %s are both %s/%s/%s seed %s", seen[key], r.path, *key)
        seen[key] = r.path
    return runs


# --------------------------------------------------------------------------- grouping

def step_grid(runs: Sequence[Run], steps: Sequence[float] | None = None,
              points: int = 100) -> np.ndarray:
    """The common evaluation steps of ``runs`` (module docstring)."""
    if steps is not None:
        grid = np.unique(np.asarray(steps, dtype=float))
        for r in runs:
            if grid[0] < r.steps[0] or grid[-1] > r.steps[-1]:
                raise ReportError(f"{r.path}: evaluated at steps {r.steps[0]:g}..."
                                  f"{r.steps[-1]:g}, which does not cover --steps "
                                  f"{grid[0]:g}...{grid[-1]:g}")
        return grid
    if all(np.array_equal(r.steps, runs[0].steps) for r in runs):
        return runs[0].steps.copy()
    lo, hi = max(r.steps[0] for r in runs), min(r.steps[-1] for r in runs)
    if lo > hi:
        raise ReportError(f"the runs' evaluation steps do not overlap (latest first "
                          f"evaluation {lo:g} > earliest last {hi:g}); pass --steps")
    longer = [str(r.path) for r in runs if r.steps[-1] > hi]
    if longer:
        log.warning("curves end at step %g, the last one every run reached; %d runs go "
                    "further (e.g. %s)", hi, len(longer), longer[0])
    union = np.unique(np.concatenate([r.steps for r in runs]))
    union = union[(union >= lo) & (union <= hi)]
    return union if len(union) <= points else np.linspace(lo, hi, points)


def scores_by_task(runs: Sequence[Run], grid: np.ndarray, scale: float
                   ) -> dict[str, np.ndarray]:
    """task -> normalised scores ``[runs, G]`` on the grid."""
    tasks: dict[str, list[np.ndarray]] = defaultdict(list)
    for r in sorted(runs, key=lambda r: (r.task, str(r.seed), str(r.path))):
        tasks[r.task].append(np.interp(grid, r.steps, r.values) / scale)
    return {t: np.stack(v) for t, v in sorted(tasks.items())}


def summarise(runs: Sequence[Run], *, steps: Sequence[float] | None = None,
              points: int = 100, scale: float = 1000.0, reps: int = 10_000,
              confidence: float = 0.95, seed: int = 0) -> list[Summary]:
    """One Summary per (agent, model); every bootstrap starts from ``default_rng(seed)``."""
    by_agent: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        by_agent[r.agent].append(r)
    out = []
    for agent, agent_runs in sorted(by_agent.items()):
        grid = step_grid(agent_runs, steps, points)
        by_model: dict[str, list[Run]] = defaultdict(list)
        for r in agent_runs:
            by_model[r.model].append(r)
        task_sets = {m: sorted({r.task for r in rs}) for m, rs in by_model.items()}
        if len({tuple(t) for t in task_sets.values()}) > 1:
            log.warning("%s: the models ran on different tasks %s; their IQMs are not "
                        "comparable", agent, task_sets)
        groups = []
        for model, model_runs in sorted(by_model.items()):
            differences = config_differences([r.config for r in model_runs])
            if differences:
                log.warning("%s/%s: the runs' configs differ in %s; they are reported as "
                            "separate groups, not pooled", agent, model, ", ".join(differences))
            groups += [(model, config, rs) for config, rs in
                       sorted(split_by_config(model_runs).items())]
        for model, config, model_runs in groups:
            scores = scores_by_task(model_runs, grid, scale)
            if any(len(s) < 2 for s in scores.values()):
                log.warning("%s/%s: a task with one run; its CI shows no seed variation",
                            agent, model)
            strata = list(scores.values())
            final = [s[:, -1] for s in strata]
            kw = {"reps": reps, "confidence": confidence}
            out.append(Summary(
                agent, model, {t: len(s) for t, s in scores.items()}, grid,
                stratified_bootstrap_ci(strata, iqm, rng=np.random.default_rng(seed), **kw),
                stratified_bootstrap_ci(final, iqm, rng=np.random.default_rng(seed), **kw),
                float(mean(pooled(final))), float(median(pooled(final))), config))
    return out


# ------------------------------------------------------------------------ the outputs

def _colours(summaries: Sequence[Summary]) -> dict[str, tuple]:
    from matplotlib import colormaps  # matplotlib only when plotting

    models = sorted({s.label for s in summaries})
    cmap = colormaps["tab10"]
    return {m: cmap(i % 10) for i, m in enumerate(models)}


def plot_curves(summaries: Sequence[Summary], path: Path, ylabel: str) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter

    agents = sorted({s.agent for s in summaries})
    colours = _colours(summaries)
    fig = Figure(figsize=(5.5 * len(agents), 4.0), layout="constrained")
    axes = fig.subplots(1, len(agents), squeeze=False)[0]
    for ax, agent in zip(axes, agents, strict=True):
        rows = [s for s in summaries if s.agent == agent]
        for s in rows:
            c = colours[s.label]
            ax.plot(s.steps, s.curve.point, color=c, lw=2, label=f"{s.label} ({s.runs} runs)")
            ax.fill_between(s.steps, s.curve.lower, s.curve.upper, color=c, alpha=0.2, lw=0)
        tasks = sorted({t for s in rows for t in s.runs_per_task})
        ax.set_title(f"{agent}: {len(tasks)} task{'s' * (len(tasks) != 1)}")
        ax.set_xlabel("environment steps")
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    fig.savefig(path, dpi=120)


def plot_final(summaries: Sequence[Summary], path: Path, xlabel: str) -> None:
    from matplotlib.figure import Figure

    colours = _colours(summaries)
    fig = Figure(figsize=(6.5, 1.0 + 0.45 * len(summaries)), layout="constrained")
    ax = fig.subplots()
    for y, s in enumerate(reversed(summaries)):
        lo, hi = float(s.final.lower), float(s.final.upper)
        ax.plot([lo, hi], [y, y], color=colours[s.label], lw=6, alpha=0.35,
                solid_capstyle="butt")
        ax.plot(float(s.final.point), y, "o", color=colours[s.label], ms=7)
    ax.set_yticks(range(len(summaries)),
                  [f"{s.agent} / {s.label}  (step {s.steps[-1]:,.0f})"
                   for s in reversed(summaries)])
    ax.set_ylim(-0.6, len(summaries) - 0.4)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(path, dpi=120)


def markdown(summaries: Sequence[Summary], *, metric: str, scale: float, reps: int,
             confidence: float, seed: int) -> str:
    pct = f"{100 * confidence:g}%"
    lines = [
        f"# Report: {metric}", "",
        f"Scores are `{metric}` / {scale:g}. IQM: the 25% trimmed mean over all runs x "
        f"tasks at the agent's final grid step; {pct} CI: percentile stratified bootstrap "
        f"(runs resampled within each task, {reps} replicates, seed {seed}; Agarwal et "
        f"al., 2021). Mean and median over the same scores.", "",
        f"| agent | model | tasks | runs | step | IQM | {pct} CI | mean | median |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    if any(s.config for s in summaries):
        lines[2:2] = ["Runs whose configs differ are not pooled: each `model [key=value, ...]` "
                      "is a group of its own (`-`: the key is not set).", ""]
    for s in summaries:
        lines.append(f"| {s.agent} | {s.label} | {len(s.runs_per_task)} | {s.runs} | "
                     f"{s.steps[-1]:.0f} | {float(s.final.point):.3f} | "
                     f"[{float(s.final.lower):.3f}, {float(s.final.upper):.3f}] | "
                     f"{s.final_mean:.3f} | {s.final_median:.3f} |")
    lines += ["", "Runs per task:", ""]
    lines += [f"- {s.agent} / {s.label}: "
              + ", ".join(f"{t} ({n})" for t, n in s.runs_per_task.items()) for s in summaries]
    lines += ["", "![learning curves](curves.png)", "", "![final performance](final.png)", ""]
    return "\n".join(lines)


def summary_json(summaries: Sequence[Summary]) -> list[dict]:
    def interval(i: Interval) -> dict:
        return {k: np.asarray(getattr(i, k)).tolist() for k in ("point", "lower", "upper")}

    return [{"agent": s.agent, "model": s.model, "config": s.config,
             "runs_per_task": s.runs_per_task,
             "steps": s.steps.tolist(), "curve": interval(s.curve),
             "final": interval(s.final), "final_mean": s.final_mean,
             "final_median": s.final_median} for s in summaries]


def write_report(summaries: Sequence[Summary], out: Path, *, metric: str, scale: float,
                 reps: int, confidence: float, seed: int) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    label = f"IQM of {metric} / {scale:g}"
    paths = [out / "curves.png", out / "final.png", out / "report.md", out / "summary.json"]
    plot_curves(summaries, paths[0], label)
    plot_final(summaries, paths[1], f"{label}, final step ({100 * confidence:g}% CI)")
    paths[2].write_text(markdown(summaries, metric=metric, scale=scale, reps=reps,
                                 confidence=confidence, seed=seed))
    paths[3].write_text(json.dumps(summary_json(summaries), indent=1) + "\n")
    return paths


# -------------------------------------------------------------------------------- CLI

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.report",
                                description=__doc__.split("\n\n")[0].strip())
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="run directories or globs of them (quote a glob to use ** )")
    d = " (default: %(default)s)"
    p.add_argument("--out", type=Path, default=Path("report"), help="output directory" + d)
    p.add_argument("--metric", default="eval/return", help="metrics.jsonl key" + d)
    p.add_argument("--steps", type=float, nargs="+", default=None,
                   help="evaluate at these environment steps (default: each agent's "
                        "evaluation steps, see the module docstring)")
    p.add_argument("--points", type=int, default=100,
                   help="most grid points when the runs' steps differ" + d)
    p.add_argument("--scale", type=float, default=1000.0,
                   help="divide the metric by this (default: %(default)g, for DMC returns)")
    p.add_argument("--reps", type=int, default=10_000, help="bootstrap replicates" + d)
    p.add_argument("--confidence", type=float, default=0.95, help="CI coverage" + d)
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed" + d)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        runs = load_runs(args.runs, args.metric)
        summaries = summarise(runs, steps=args.steps, points=args.points, scale=args.scale,
                              reps=args.reps, confidence=args.confidence, seed=args.seed)
        paths = write_report(summaries, args.out, metric=args.metric, scale=args.scale,
                             reps=args.reps, confidence=args.confidence, seed=args.seed)
    except ValueError as e:  # ReportError, or a bad setting such as --reps 0
        print(f"error: {e}", file=sys.stderr)
        return 2
    split = ", config differences" if any(s.config for s in summaries) else ""
    print(f"{len(runs)} runs, {len(summaries)} (agent, model{split}) groups -> "
          + ", ".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
