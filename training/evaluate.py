"""Evaluate a training run or an exported bundle on held-out seeded episodes, no training.

    python -m training.evaluate RUN_DIR|BUNDLE [--task T] [--episodes N] [--video]
                                [--out DIR] [--seed S] [--no-camera-baseline]

A bundle runs through the torch-free runtime (the service's arithmetic); a run directory
through its torch world model (VRKN and the RSSM family alike). It reports the return as
mean and IQM with 95% bootstrap intervals, and the state-estimation figures of
``training.estimation_report`` (unless the source has no state head), for the model and,
on the same trajectories, for the model with camera frames withheld. Writes
``eval.json``, ``eval.md``, ``reliability.png``, ``pole.png`` (cartpole) and, with
``--video``, ``episode0.gif`` to ``--out`` (default ``runs/eval/<source>-<task>-<time>``);
an existing ``--out`` is refused unless it holds an ``eval.json`` (an earlier evaluation).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

EXIT_USAGE = 2


class EvaluationError(ValueError):
    """A source, task or output folder that cannot be evaluated; one line for the user."""


def check_out(out: Path) -> Path:
    if out.exists() and (not out.is_dir() or (any(out.iterdir())
                                               and not (out / "eval.json").is_file())):
        raise EvaluationError(f"--out {out} exists and is not an earlier evaluation (no "
                              "eval.json): refusing to write into it")
    return out


def open_source(source: Path, seed: int) -> tuple[Any, dict[str, Any]]:
    """(make_estimator(camera) -> estimator, facts) for a bundle folder or a run directory,
    loaded once: every estimator made shares the bundle or the trained agent."""
    if (source / "manifest.json").is_file():
        from server.runtime import BundleError, load_bundle
        from training.evaluation import BundleEstimator

        try:
            bundle = load_bundle(source, providers="cpu")
        except BundleError as e:
            raise EvaluationError(str(e)) from None
        config = bundle.manifest.training_config
        return (lambda camera: BundleEstimator(bundle, camera)), {
            "kind": "bundle", "config": config, "model": "vrkn"}
    if (source / "config.json").is_file() or source.is_file():
        from training.config import to_json
        from training.evaluation import TorchEstimator
        from training.export_run import load_run

        try:
            run = load_run(source)
        except (FileNotFoundError, ValueError) as e:
            raise EvaluationError(str(e)) from None
        return (lambda camera: TorchEstimator(run, camera, seed)), {
            "kind": "run", "config": to_json(run.config), "model": run.config.model,
            "env_steps": run.env_steps, "updates": run.updates}
    raise EvaluationError(f"{source}: neither a bundle (manifest.json) nor a run directory "
                          "(config.json + checkpoint.pt)")


def make_eval_task(task: str, config: dict[str, Any], seed: int):
    from training.config import from_json, task_overrides
    from training.envs import make_task

    overrides = {}
    if config:
        clean = {k: v for k, v in config.items() if k not in ("env_steps", "updates",
                                                                "run_dir")}
        try:
            overrides = task_overrides(from_json(clean))
        except ValueError:
            overrides = {}
    try:
        return make_task(task, seed, **overrides)
    except (ValueError, TypeError) as e:
        raise EvaluationError(str(e)) from None


def return_stats(returns: list[float], seed: int) -> dict[str, Any]:
    from training.stats import iqm, mean, stratified_bootstrap_ci

    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"returns": returns, "episodes": len(returns)}
    for name, stat in (("mean", mean), ("iqm", iqm)):
        ci = stratified_bootstrap_ci([np.asarray(returns)[:, None]], stat, reps=5000, rng=rng)
        out[name] = float(np.asarray(ci.point).reshape(-1)[0])
        out[f"{name}_ci95"] = [float(np.asarray(ci.lower).reshape(-1)[0]),
                               float(np.asarray(ci.upper).reshape(-1)[0])]
    return out


def evaluate(source: Path, task: str | None, episodes: int, seed: int, video: bool,
             out: Path, camera_baseline: bool = True) -> dict[str, Any]:
    from tqdm import tqdm

    from training.envs.proprio import measured_state_names
    from training.estimation_report import markdown, plot_pole_trace, plot_reliability, summarise
    from training.evaluation import held_out_seeds, run_episode, save_video

    make, facts = open_source(source, seed)
    main = make(True)
    estimators = {"model": main}
    if camera_baseline:
        estimators["camera withheld"] = make(False)
    task = task or str(facts["config"].get("task", ""))
    if not task:
        raise EvaluationError(f"{source}: no task recorded; give --task")
    logs = []
    # One task, seeded from a branch training never uses; its episodes follow each other
    # (a new simulator per episode costs seconds of start-up).
    env = make_eval_task(task, facts["config"], held_out_seeds(seed, 1)[0])
    try:
        if tuple(getattr(env, "state_names", ())) != tuple(main.state_names):
            raise EvaluationError(f"task {task} has state {env.state_names}, the model "
                                  f"estimates {main.state_names}")
        measured = measured_state_names(env)
        for i in tqdm(range(episodes), desc=f"evaluate {task}", unit="episode"):
            logs.append(run_episode(env, "model", estimators, video=video and i == 0))
    finally:
        env.close()
    result: dict[str, Any] = {"source": str(source), "task": task, "seed": seed,
                              "source_kind": facts["kind"], "model": facts["model"],
                              "return": return_stats([g.ret for g in logs], seed),
                              "estimation": {k: summarise(logs, k, measured)
                                             for k in estimators}}
    for key in ("env_steps", "updates"):
        if key in facts:
            result[key] = facts[key]
    out.mkdir(parents=True, exist_ok=True)
    r = result["return"]
    text = [f"# Evaluation of {source} on {task}", "",
            f"Return over {r['episodes']} held-out episodes: mean {r['mean']:.1f} "
            f"[{r['mean_ci95'][0]:.1f}, {r['mean_ci95'][1]:.1f}], IQM {r['iqm']:.1f} "
            f"[{r['iqm_ci95'][0]:.1f}, {r['iqm_ci95'][1]:.1f}] (95% bootstrap CIs)", ""]
    for label, summary in result["estimation"].items():
        text.append(markdown(summary, label))
    (out / "eval.md").write_text("\n".join(text))
    (out / "eval.json").write_text(json.dumps(result, indent=1))
    plot_reliability(list(result["estimation"].values()), out / "reliability.png")
    if {"pole_angle_cos", "pole_angle_sin", "pole_angular_velocity"} <= set(main.state_names):
        period = getattr(main, "period", None)
        plot_pole_trace(logs[0], list(estimators), out / "pole.png", period=period)
    if video and logs[0].frames:
        save_video(logs[0].frames, out / "episode0.gif")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a run directory or a bundle folder")
    parser.add_argument("--task", help="task name (default: the one it was trained on)")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out episodes")
    parser.add_argument("--video", action="store_true", help="GIF of the first episode")
    parser.add_argument("--out", type=Path, help="output folder")
    parser.add_argument("--no-camera-baseline", action="store_true",
                        help="skip the same model with camera frames withheld")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        print("error: --episodes must be >= 1", file=sys.stderr)
        return EXIT_USAGE
    out = args.out or Path("runs/eval") / (f"{args.source.resolve().name}-{args.task or 'own'}"
                                           f"-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        check_out(out)
        result = evaluate(args.source, args.task, args.episodes, args.seed, args.video, out,
                          not args.no_camera_baseline)
    except EvaluationError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    r = result["return"]
    print(f"return: mean {r['mean']:.1f} [{r['mean_ci95'][0]:.1f}, {r['mean_ci95'][1]:.1f}], "
          f"IQM {r['iqm']:.1f} [{r['iqm_ci95'][0]:.1f}, {r['iqm_ci95'][1]:.1f}] over "
          f"{r['episodes']} episodes")
    model = result["estimation"]["model"]
    for i, name in enumerate(model["names"]):
        kind = "measured" if name in model["measured"] else "hidden"
        print(f"  {name:24s} ({kind:8s}) nRMSE {model['all']['nrmse'][i]:.3f}  "
              f"90% coverage {model['all']['cov90'][i]:.3f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
