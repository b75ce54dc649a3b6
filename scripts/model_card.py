"""Write the model card of a shipped bundle from its run, its closed-loop evaluation and the
estimation benchmark (every figure is read from those files, none typed in).

    python scripts/model_card.py --run runs/ship-vrkn --bundle models/cartpole_swingup-fusion \\
        --command "python -m training.dreamer ..." --commit 74e31db \\
        --closed-loop bench/results/closed_loop.json --estimation bench/results/estimation.json \\
        [--compare runs/ship-rssm] --out models/cartpole_swingup-fusion.md

Also draws the learning curve (evaluation return against environment steps, with the
random-policy line; ``--compare`` adds another run trained alike) beside the card.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
            if line.strip()]


def plot_curves(runs: dict[str, Path], random_return: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for label, run in runs.items():
        rows = [r for r in read_metrics(run) if "eval/return" in r]
        ax.plot([r["step"] for r in rows], [r["eval/return"] for r in rows], "o-", ms=2,
                lw=1, label=label)
    ax.axhline(random_return, color="grey", ls="--", lw=1, label="random policy")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("evaluation return (5 episodes)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def estimation_section(estimation: dict, key: str) -> list[str]:
    r = estimation["results"].get(key)
    if r is None:
        return [f"(no estimation result {key!r})"]
    out = []
    for label, s in r["estimation"].items():
        out += [f"**{label}** ({s['episodes']} held-out episodes, {s['ticks']} ticks; mean "
                f"NEES {s['nees_mean']:.2f} for S = {s['state_size']}, ratio "
                f"{s['nees_mean'] / s['state_size']:.2f}):", "",
                "| element | kind | RMSE | nRMSE | NLL | cov50 | cov90 | cov95 |",
                "|---|---|---|---|---|---|---|---|"]
        a = s["all"]
        for i, n in enumerate(s["names"]):
            kind = "measured" if n in s["measured"] else "hidden"
            out.append(f"| {n} | {kind} | {a['rmse'][i]:.4f} | {a['nrmse'][i]:.3f} | "
                       f"{a['nll'][i]:.3f} | {a['cov50'][i]:.3f} | {a['cov90'][i]:.3f} | "
                       f"{a['cov95'][i]:.3f} |")
        out.append("")
    return out


def ratio_history(rows: list[dict]) -> str:
    """Updates per collected episode over the run, from the logged update counter."""
    train = [r for r in rows if "train/updates" in r]
    parts: list[tuple[int, int]] = []  # (first env step, updates per episode)
    for prev, cur in itertools.pairwise(train):
        episodes = cur["train/episodes"] - prev["train/episodes"]
        if episodes <= 0:
            continue
        per = round((cur["train/updates"] - prev["train/updates"]) / episodes)
        if not parts or parts[-1][1] != per:
            parts.append((prev["step"], per))
    return "; ".join(f"{per} updates per episode from env step {step:,}"
                     for step, per in parts) or "n/a"


def hidden_cov90(state: dict) -> list[float]:
    return [state["cov90"][i] for i, n in enumerate(state["names"])
            if n not in state["measured"]]


def coverage_limits(estimation: dict, key: str, closed_state: dict) -> list[str]:
    """The calibration limits, with the figures of the two evaluations."""
    r = estimation["results"].get(key)
    if r is None:
        return []
    inproc = r["estimation"]["model"]
    inproc_cov = hidden_cov90({"cov90": inproc["all"]["cov90"], "names": inproc["names"],
                               "measured": inproc["measured"]})
    served = hidden_cov90(closed_state)
    out = [f"- Camera latency costs calibration: in process with every frame on time the "
           f"hidden elements' 90% intervals cover {min(inproc_cov):.0%}-{max(inproc_cov):.0%}"
           f"; through the service with camera latency the real-time belief of each tick "
           f"(before its late frames arrive) covers {min(served):.0%}-{max(served):.0%}."]
    withheld = r["estimation"].get("camera withheld")
    if withheld is not None:
        cov = hidden_cov90({"cov90": withheld["all"]["cov90"], "names": withheld["names"],
                            "measured": withheld["measured"]})
        out.append(f"- With the camera withheld entirely the hidden elements' 90% intervals "
                   f"cover {min(cov):.0%}-{max(cov):.0%}: the learned transition noise is "
                   "small, so the variance grows too slowly in gaps longer than training's "
                   "4-8 ticks.")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--command", required=True, action="append",
                   help="the exact training command; repeat for each resume, in order")
    p.add_argument("--commit", required=True, action="append",
                   help="the code commit each --command ran at, in the same order")
    p.add_argument("--closed-loop", type=Path, required=True)
    p.add_argument("--estimation", type=Path, required=True)
    p.add_argument("--compare", type=Path, help="a run trained alike (e.g. the RSSM)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    if len(args.command) != len(args.commit):
        p.error(f"{len(args.command)} --command but {len(args.commit)} --commit: give one "
                "commit per command")

    rows = read_metrics(args.run)
    last = [r for r in rows if "train/updates" in r][-1]
    evals = [r for r in rows if "eval/return" in r]
    manifest = json.loads((args.bundle / "manifest.json").read_text())
    size = sum(f.stat().st_size for f in args.bundle.iterdir())
    closed = json.loads(args.closed_loop.read_text())["rows"][0]
    estimation = json.loads(args.estimation.read_text())
    curve = args.out.with_name(args.out.stem + "-curve.png")
    runs = {f"{manifest['training_config']['model']} (shipped, {last['train/updates']:,} "
            "updates)": args.run}
    if args.compare:
        cfg = json.loads((args.compare / "config.json").read_text())
        other = [r for r in read_metrics(args.compare) if "train/updates" in r][-1]
        runs[f"{cfg['model']} (same settings, {other['train/updates']:,} updates)"] = \
            args.compare
    ret, rnd = closed["return"], closed["random_return"]
    plot_curves(runs, rnd["mean"], curve)
    st = closed["state"]
    lines = [
        f"# Model card: {args.bundle.name}",
        "",
        f"VRKN-Dreamer on `{manifest['training_config']['task']}` (cart position by proprio "
        "every 20 ms tick, a camera frame every 4-8 ticks), trained on the 2-core CPU this "
        "project is built on. Bundle: "
        f"`{args.bundle}` ({size / 1e6:.2f} MB, latent {manifest['latent_size']}, "
        f"state head over {', '.join(manifest['state']['names'])}).",
        "",
        "## Training",
        "",
        *[f"- {'command' if i == 0 else 'then resumed'}: `{c}` (code at commit `{k}`)"
          for i, (c, k) in enumerate(zip(args.command, args.commit, strict=True))],
        f"- replay ratio: {ratio_history(rows)}",
        f"- exported at commit `{manifest['code_version'][:12]}`",
        f"- environment steps: {manifest['training_config']['env_steps']:,}; world-model "
        f"updates: {last['train/updates']:,} (batch "
        f"{manifest['training_config']['replay']['batch']}x"
        f"{manifest['training_config']['replay']['length']}); wall time "
        f"{last['time/minutes']:.0f} min of training (evaluations included; other jobs "
        "shared the 2 cores)",
        f"- final training evaluation: return {evals[-1]['eval/return']:.1f} (5 episodes); "
        f"best {max(r['eval/return'] for r in evals):.1f}",
        "",
        f"![learning curve]({curve.name})",
        "",
        "## Closed loop through the service",
        "",
        f"`python bench/closed_loop.py --bundle {args.bundle} --episodes {closed['episodes']}`"
        f": seeds {closed['seeds'][0]}-{closed['seeds'][1]}, camera latency "
        f"{closed['camera_latency_s'][0] * 1e3:.0f}-{closed['camera_latency_s'][1] * 1e3:.0f}"
        " ms (frames late and out of order), over gRPC.",
        "",
        f"- return: mean **{ret['mean']:.1f}** [{ret['mean_ci95'][0]:.1f}, "
        f"{ret['mean_ci95'][1]:.1f}], IQM **{ret['iqm']:.1f}** [{ret['iqm_ci95'][0]:.1f}, "
        f"{ret['iqm_ci95'][1]:.1f}] (95% bootstrap CIs); random actions on the same seeds: "
        f"{rnd['mean']:.1f}",
        f"- control step (messages -> action): p50 {closed['control_step_ms']['p50']:.2f} ms,"
        f" p99 {closed['control_step_ms']['p99']:.2f} ms",
        "",
        "| element | kind | nRMSE | 90% coverage | NLL |",
        "|---|---|---|---|---|",
    ]
    for i, n in enumerate(st["names"]):
        kind = "measured" if n in st["measured"] else "hidden"
        lines.append(f"| {n} | {kind} | {st['nrmse'][i]:.3f} | {st['cov90'][i]:.3f} | "
                     f"{st['nll'][i]:.3f} |")
    task = manifest["training_config"]["task"]
    lines += ["", "## Estimation benchmark (`bench/estimation.py`, in-process, no latency)",
              "", *estimation_section(estimation, f"VRKN {task}"),
              "Full tables (RSSM, `-missing`, by ticks since the last frame): "
              "`bench/results/estimation.md`.", "",
              "## Limits", "",
              "- One seed, one training run: the return is over 20 evaluation seeds, not over "
              "training seeds.",
              "- Trained for the task's own settings (action repeat 2, 1000-step episodes, "
              "64x64 camera 0); other tasks, frame rates or cameras are out of distribution.",
              "- The state head is a probe (the world model's objective is the paper's); its "
              "variance is diagonal (cos and sin of the pole angle are estimated separately).",
              *coverage_limits(estimation, f"VRKN {task}", st),
              f"- Return {ret['mean']:.0f} of 1000 (DreamerV1 reaches 678 at 500k steps "
              f"from pixels): {last['train/updates']:,} updates of batch "
              f"{manifest['training_config']['replay']['batch']}x"
              f"{manifest['training_config']['replay']['length']} in "
              f"{last['time/minutes']:.0f} min on a shared 2-core CPU.",
              ""]
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out} and {curve}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
