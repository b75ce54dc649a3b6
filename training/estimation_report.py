"""Tables and pictures of state-estimation quality from ``training.evaluation`` logs.

Per element: RMSE, nRMSE (over the pooled held-out ticks; 1.0 = "knows nothing"), Gaussian
NLL, coverage of the central 50/90/95% intervals, and the mean NEES of the whole state
against its chi-square band (independent ticks; a reference only). Groups: measured
elements (read by the proprio sensor) apart from hidden ones, and ticks since the last
camera frame (0, 1-3, 4+).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from server.runtime import calibration as cal
from training.evaluation import EpisodeLog

LEVELS = (0.5, 0.9, 0.95)
RELIABILITY_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
SINCE_BINS = (("0", 0, 0), ("1-3", 1, 3), ("4+", 4, 1 << 30))


def pooled(logs: Sequence[EpisodeLog], label: str) -> dict[str, np.ndarray]:
    return {"truth": np.concatenate([g.truth for g in logs]),
            "mean": np.concatenate([g.means[label] for g in logs]),
            "var": np.concatenate([g.vars[label] for g in logs]),
            "since": np.concatenate([g.since_frame for g in logs])}


def element_metrics(truth: np.ndarray, mean: np.ndarray, var: np.ndarray,
                    truth_std: np.ndarray) -> dict[str, list[float]]:
    out = {"rmse": cal.rmse(mean, truth).tolist(),
           "nrmse": cal.nrmse(mean, truth, truth_std).tolist(),
           "nll": cal.gaussian_nll(mean, var, truth).tolist()}
    for level in LEVELS:
        out[f"cov{round(level * 100)}"] = cal.coverage(mean, var, truth, level).tolist()
    return out


def summarise(logs: Sequence[EpisodeLog], label: str, measured: Sequence[str]
              ) -> dict[str, Any]:
    """Every figure of one estimator over the pooled ticks of ``logs``."""
    d = pooled(logs, label)
    names = list(logs[0].names)
    truth_std = np.std(d["truth"], axis=0)
    nees = cal.nees(d["mean"], d["var"], d["truth"])
    band = cal.nees_band(len(nees), len(names))
    out: dict[str, Any] = {
        "label": label, "names": names, "ticks": len(nees),
        "episodes": len(logs), "measured": [n for n in names if n in measured],
        "hidden": [n for n in names if n not in measured],
        "all": element_metrics(d["truth"], d["mean"], d["var"], truth_std),
        "nees_mean": float(nees.mean()), "nees_band_independent": band,
        "state_size": len(names), "by_since_frame": {},
        "reliability": {str(lv): cal.coverage(d["mean"], d["var"], d["truth"], lv).tolist()
                        for lv in RELIABILITY_LEVELS},
        "returns": [float(g.ret) for g in logs],
    }
    for key, lo, hi in SINCE_BINS:
        rows = (d["since"] >= lo) & (d["since"] <= hi)
        if rows.sum() < 2:
            continue
        out["by_since_frame"][key] = {
            "ticks": int(rows.sum()),
            **element_metrics(d["truth"][rows], d["mean"][rows], d["var"][rows], truth_std)}
    return out


def _row(name: str, m: dict[str, list[float]], i: int) -> list[str]:
    return [name, f"{m['rmse'][i]:.4f}", f"{m['nrmse'][i]:.3f}", f"{m['nll'][i]:.3f}",
            f"{m['cov50'][i]:.3f}", f"{m['cov90'][i]:.3f}", f"{m['cov95'][i]:.3f}"]


HEADER = ["element", "RMSE", "nRMSE", "NLL", "cov50", "cov90", "cov95"]


def markdown(summary: dict[str, Any], title: str) -> str:
    names = summary["names"]
    lines = [f"### {title}", "",
             f"{summary['episodes']} episodes, {summary['ticks']} ticks. Mean NEES "
             f"{summary['nees_mean']:.2f} for S = {summary['state_size']} (ratio "
             f"{summary['nees_mean'] / summary['state_size']:.2f}; band of independent ticks "
             f"{summary['nees_band_independent'][0]:.2f}-"
             f"{summary['nees_band_independent'][1]:.2f}, a reference only).", "",
             "| " + " | ".join(["group", *HEADER]) + " |", "|" + "---|" * (len(HEADER) + 1)]
    for i, name in enumerate(names):
        group = "measured" if name in summary["measured"] else "hidden"
        lines.append("| " + " | ".join([group, *_row(name, summary["all"], i)]) + " |")
    lines += ["", "By ticks since the last camera frame (cov90 / nRMSE per element):", "",
              "| since frame | ticks | " + " | ".join(names) + " |",
              "|" + "---|" * (len(names) + 2)]
    for key, m in summary["by_since_frame"].items():
        cells = [f"{m['cov90'][i]:.2f} / {m['nrmse'][i]:.2f}" for i in range(len(names))]
        lines.append(f"| {key} | {m['ticks']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_reliability(summaries: Sequence[dict[str, Any]], path: Path) -> Path:
    """Nominal against observed coverage, one line per element and estimator."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summaries), figsize=(4.2 * len(summaries), 4),
                             squeeze=False)
    for ax, s in zip(axes[0], summaries, strict=True):
        levels = np.array(RELIABILITY_LEVELS)
        observed = np.array([s["reliability"][str(lv)] for lv in RELIABILITY_LEVELS])
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
        for i, name in enumerate(s["names"]):
            ax.plot(levels, observed[:, i], "o-", ms=3, label=name)
        ax.set_title(s["label"], fontsize=9)
        ax.set_xlabel("nominal coverage")
        ax.set_ylabel("observed coverage")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_pole_trace(log: EpisodeLog, labels: Sequence[str], path: Path, ticks: int = 250,
                    period: float | None = None) -> Path:
    """The pole angle (from its cos/sin estimates) with the 90% band against the truth, and
    the angular velocity, with camera frames marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(log.names)
    ic, is_, iv = (names.index(n) for n in ("pole_angle_cos", "pole_angle_sin",
                                            "pole_angular_velocity"))
    n = min(ticks, len(log.truth))
    x = np.arange(n) * (period or 1.0)
    true_angle = np.arctan2(log.truth[:n, is_], log.truth[:n, ic])
    fig, axes = plt.subplots(2, 1, figsize=(10, 5.5), sharex=True)
    z = cal.z_value(0.9)
    for label, colour in zip(labels, ("tab:blue", "tab:orange", "tab:green"), strict=False):
        m, v = log.means[label][:n], log.vars[label][:n]
        angle, avar = cal.angle_from_cos_sin(m[:, ic], m[:, is_], v[:, ic], v[:, is_])
        angle = true_angle + cal.wrap_angle(angle - true_angle)  # no jumps at +-pi
        axes[0].plot(x, angle, color=colour, lw=1, label=f"{label} estimate")
        axes[0].fill_between(x, angle - z * np.sqrt(avar), angle + z * np.sqrt(avar),
                             color=colour, alpha=0.2, label=f"{label} 90% band")
        axes[1].plot(x, m[:, iv], color=colour, lw=1)
        axes[1].fill_between(x, m[:, iv] - z * np.sqrt(v[:, iv]),
                             m[:, iv] + z * np.sqrt(v[:, iv]), color=colour, alpha=0.2)
    axes[0].plot(x, true_angle, "k", lw=1.2, label="truth (simulator)")
    axes[1].plot(x, log.truth[:n, iv], "k", lw=1.2)
    for t in np.flatnonzero(log.camera[:n]):
        for ax in axes:
            ax.axvline(x[t], color="grey", lw=0.4, alpha=0.5)
    axes[0].set_ylabel("pole angle [rad]")
    axes[1].set_ylabel("pole angular velocity [rad/s]")
    axes[1].set_xlabel("time [s]" if period else "tick")
    axes[0].set_title("hidden state vs truth (grey lines: camera frames)", fontsize=9)
    axes[0].legend(fontsize=7, ncol=3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
