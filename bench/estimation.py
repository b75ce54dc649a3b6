"""State estimation on held-out seeded episodes: VRKN against an RSSM trained alike.

    python bench/estimation.py --vrkn models/cartpole_swingup-fusion \\
        --rssm runs/ship-rssm [--episodes 20] [--tasks T1,T2,...] [--seed 0]

Each source is a bundle (run with the torch-free runtime, the service's arithmetic) or a
training run directory (its torch model: the RSSM family cannot be exported, the service
runs Kalman arithmetic). On every task, each model acts with its own policy; the same model
with camera frames withheld filters the same trajectory as a baseline. Per state element:
RMSE, nRMSE, NLL, coverage of the 50/90/95% intervals; mean NEES against its chi-square
band; split into measured and hidden elements and by ticks since the last camera frame.
Tasks other than the training task use the training model as it is (e.g. ``-missing``: the
fusion model without its proprio sensor). Writes bench/results/estimation.{md,json},
estimation_reliability.png and estimation_pole.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.results_io import RESULTS, machine_meta

DEFAULT_TASKS = "cartpole_swingup-fusion,cartpole_swingup-missing"


def main() -> int:
    from training.estimation_report import markdown, plot_reliability
    from training.evaluate import EvaluationError, evaluate

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vrkn", type=Path, required=True, help="VRKN bundle or run dir")
    parser.add_argument("--rssm", type=Path, required=True, help="RSSM run dir (or bundle)")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--tasks", default=DEFAULT_TASKS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    load = os.getloadavg()
    started = time.time()
    results: dict = {}
    work = Path("runs") / "bench-estimation" / time.strftime("%Y%m%d-%H%M%S")
    for task in args.tasks.split(","):
        for label, source in (("VRKN", args.vrkn), ("RSSM", args.rssm)):
            print(f"{label} on {task} ({args.episodes} episodes) ...", flush=True)
            out = work / f"{label.lower()}-{task}"
            try:
                results[f"{label} {task}"] = evaluate(source, task, args.episodes, args.seed,
                                                      False, out)
            except EvaluationError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
    meta = machine_meta(load, minutes=round((time.time() - started) / 60, 1),
                        episodes=args.episodes, seed=args.seed, vrkn=str(args.vrkn),
                        rssm=str(args.rssm))
    lines = [f"# State estimation (python bench/estimation.py --vrkn {args.vrkn} --rssm "
             f"{args.rssm} --episodes {args.episodes} --tasks {args.tasks})", "",
             "NLL per element (nats, lower is better) and mean 90% coverage, on the same "
             "held-out seeds:", "",
             "| task | model | return (mean) | mean NLL | mean cov90 | NEES / S |",
             "|---|---|---|---|---|---|"]
    for key, r in results.items():
        m = r["estimation"]["model"]
        nll = sum(m["all"]["nll"]) / len(m["names"])
        cov = sum(m["all"]["cov90"]) / len(m["names"])
        lines.append(f"| {r['task']} | {key.split()[0]} | {r['return']['mean']:.1f} | "
                     f"{nll:.3f} | {cov:.3f} | {m['nees_mean'] / m['state_size']:.2f} |")
    lines.append("")
    for key, r in results.items():
        for label, summary in r["estimation"].items():
            lines.append(markdown(summary, f"{key}: {label}"))
    lines.append(json.dumps(meta))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "estimation.md").write_text("\n".join(lines) + "\n")
    (out / "estimation.json").write_text(json.dumps({"meta": meta, "results": results},
                                                    indent=1))
    first_task = args.tasks.split(",")[0]
    summaries = [r["estimation"]["model"] | {"label": k} for k, r in results.items()
                 if r["task"] == first_task]
    plot_reliability(summaries, out / "estimation_reliability.png")
    pole = work / f"vrkn-{first_task}" / "pole.png"
    if pole.is_file():
        shutil.copyfile(pole, out / "estimation_pole.png")
    print("\n".join(lines[:8 + len(results)]))
    print(f"wrote {out / 'estimation.md'} (per-run folders: {work})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
