"""Outputs of the toy experiment: a Markdown table, results.json and a Fig.-2-style PNG."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator

from training.lgssm.experiment import LABELS, METHODS, REFERENCES
from training.lgssm.model import TRANSITION_VAR

_COLORS = {"rssm": "#d95f02", "ssm_cf": "#1b9e77", "ssm_nn": "#7570b3"}
_SHORT = {"rssm": "RSSM\n(Eq. 3)", "ssm_cf": "SSM CF\n(Eq. 4)", "ssm_nn": "SSM NN\n(Eq. 4)"}


def _cell(entry: dict | None, fmt: str) -> str:
    if entry is None:
        return "-"
    lo, hi = entry["ci95"]
    return f"{entry['mean']:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


def format_table(results: dict) -> str:
    """Markdown table of the summary: mean [95% bootstrap CI] over seeds."""
    summary = results["summary"]
    n = results["config"]["seeds"]
    header = ("| Belief / learned model | log p(z_GT) per step | ||A~ - A||_F | sigma~ "
              "| held-out log p(o) per step | bound per step |")
    lines = [header, "|" + "---|" * 6]
    for row in (*REFERENCES, *METHODS):
        s = summary[row]
        is_ref = row in REFERENCES
        lines.append("| " + " | ".join([
            LABELS[row],
            _cell(s["log_prob"], ".3f"),
            "0 (truth)" if is_ref else _cell(s["a_error"], ".4f"),
            f"{TRANSITION_VAR} (truth)" if is_ref else _cell(s["sigma"], ".4f"),
            _cell(s["log_lik"], ".4f"),
            "-" if is_ref else _cell(s.get("bound"), ".4f"),
        ]) + " |")
    lines.append("")
    lines.append(f"Mean [95% percentile-bootstrap CI of the mean] over {n} seed(s); "
                 f"{results['config']['eval_sequences']} held-out sequences per seed. "
                 "sigma~ is the learned transition variance (truth 0.01).")
    return "\n".join(lines)


def format_claims(results: dict) -> str:
    """One line per qualitative claim: PASS/FAIL, the claim and the measured value."""
    out = []
    for c in results["claims"].values():
        out.append(f"[{'PASS' if c['holds'] else 'FAIL'}] {c['claim']} (measured {c['value']:.3g})")
    return "\n".join(out)


def save_json(results: dict, path: Path) -> None:
    path.write_text(json.dumps(results, indent=2) + "\n")


def _errorbar(entry: dict) -> tuple[float, list[list[float]]]:
    mean = entry["mean"]
    lo, hi = entry["ci95"]
    return mean, [[mean - lo], [hi - mean]]


def save_figure(results: dict, path: Path) -> None:
    """Three panels like paper Fig. 2: (a) log-prob of the true states, with GT smoothed and
    GT filtered as horizontal lines; (b) ||A~ - A||_F (log scale); (c) sigma~ with the truth.
    Bars are means over seeds, error bars 95% bootstrap CIs, dots the individual seeds."""
    summary = results["summary"]
    fig = Figure(figsize=(12.5, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    x = np.arange(len(METHODS))
    panels = [("log_prob", "(a) log-prob of ground-truth states\n(per step, held-out)"),
              ("a_error", "(b) $\\|\\tilde A - A\\|_F$"),
              ("sigma", "(c) transition variance $\\tilde\\sigma$")]
    for ax, (metric, title) in zip(axes, panels, strict=True):
        for i, m in enumerate(METHODS):
            mean, err = _errorbar(summary[m][metric])
            ax.bar(i, mean, color=_COLORS[m], width=0.6, yerr=err, capsize=4, zorder=2)
            vals = summary[m][metric]["values"]
            jitter = np.linspace(-0.12, 0.12, len(vals)) if len(vals) > 1 else [0.0]
            ax.scatter(i + np.asarray(jitter), vals, s=9, color="black", zorder=3, alpha=0.6)
        ax.set_xticks(x, [_SHORT[m] for m in METHODS])
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3, zorder=0)
    ax_lp, ax_a, ax_s = axes
    smooth = summary["gt_smoothed"]["log_prob"]["mean"]
    filt = summary["gt_filtered"]["log_prob"]["mean"]
    ax_lp.axhline(smooth, color="black", ls="--", lw=1.2, label=f"GT smoothed ({smooth:.2f})")
    ax_lp.axhline(filt, color="grey", ls=":", lw=1.5, label=f"GT filtered ({filt:.2f})")
    lows = [summary[m]["log_prob"]["ci95"][0] for m in METHODS] + [filt]
    ax_lp.set_ylim(min(lows) - 0.3 * (smooth - min(lows)) - 0.05,
                   smooth + 0.25 * (smooth - min(lows)) + 0.05)
    ax_lp.legend(loc="center left", fontsize=8)
    ax_lp.set_ylabel("nats")
    ax_a.set_yscale("log")
    plain = FuncFormatter(lambda v, _pos: f"{v:g}")
    ax_a.yaxis.set_major_formatter(plain)
    ax_a.yaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
    ax_a.yaxis.set_minor_formatter(plain)
    ax_a.tick_params(axis="y", which="minor", labelsize=7)
    ax_s.axhline(TRANSITION_VAR, color="black", ls="--", lw=1.2,
                 label=f"ground truth ({TRANSITION_VAR})")
    ax_s.legend(loc="upper right", fontsize=8)
    n = results["config"]["seeds"]
    fig.suptitle(f"Toy LGSSM (paper Sec. 2.2): mean over {n} seeds, 95% bootstrap CIs",
                 fontsize=11)
    fig.savefig(path, dpi=120)


def write_outputs(results: dict, out: Path) -> dict[str, Path]:
    """results.json, figure.png and table.md into ``out`` (created); returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "figure": out / "figure.png",
             "table": out / "table.md"}
    save_json(results, paths["json"])
    save_figure(results, paths["figure"])
    paths["table"].write_text(format_table(results) + "\n\n" + format_claims(results) + "\n")
    return paths
