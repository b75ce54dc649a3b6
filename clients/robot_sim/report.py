"""The robot-sim's summary (return, hidden-state tracking with coverage, camera delivery,
round-trip latency percentiles) and its files: summary.json, episode.npz, tracking.png
(the estimated physical state with its 90% band against the simulator's truth) and
video.gif (camera view | frame the service has | decoded image).

Tracking is judged on the simulator's state, which the service never receives. A state
element the proprio sensor reads directly (e.g. the cart position) is labelled *measured*:
its small error is the sensor's, not estimation quality. The decoded proprio is reported
the same way, as a check of the decoder, never as tracking."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from clients.robot_sim.loop import EpisodeRecord


def _pct(values, scale: float = 1.0) -> dict[str, float]:
    v = np.asarray(values, float) * scale
    if v.size == 0:
        return {}
    return {"p50": float(np.percentile(v, 50)), "p90": float(np.percentile(v, 90)),
            "p99": float(np.percentile(v, 99)), "max": float(v.max())}


def state_tracking(rec: EpisodeRecord) -> dict[str, Any] | None:
    """Per state element: RMSE, nRMSE (against the truth's std over the episode), NLL and
    coverage of the central 90% interval; None when the model has no state head."""
    if not rec.state_mean:
        return None
    from server.runtime import calibration as cal

    truth = np.asarray(rec.state, np.float64)
    mean = np.asarray(rec.state_mean, np.float64)
    var = np.maximum(np.asarray(rec.state_var, np.float64), 1e-12)
    out: dict[str, Any] = {"names": list(rec.state_names), "measured": list(rec.measured),
                           "rmse": cal.rmse(mean, truth).tolist(),
                           "nrmse": cal.nrmse(mean, truth).tolist(),
                           "nll": cal.gaussian_nll(mean, var, truth).tolist(),
                           "cov90": cal.coverage(mean, var, truth, 0.9).tolist()}
    hidden = [i for i, n in enumerate(rec.state_names) if n not in rec.measured]
    if hidden:
        out["hidden_cov90"] = float(np.mean([out["cov90"][i] for i in hidden]))
        out["hidden_nrmse"] = float(np.mean([out["nrmse"][i] for i in hidden]))
    return out


def summarise(rec: EpisodeRecord, period: float, info: dict[str, Any]) -> dict[str, Any]:
    a = rec.arrays()
    err = a["decoded"] - a["proprio"]
    cam = rec.camera
    lat = cam.latencies()
    acts = a["action"][np.isfinite(a["action"]).all(axis=1)]
    return {
        **info,
        "ticks": len(rec.times), "return": rec.episode_return,
        "state": state_tracking(rec),
        "decoded_proprio": {"rmse": float(np.sqrt(np.mean(err ** 2))),
                            "rmse_per_dim": np.sqrt(np.mean(err ** 2, axis=0)).tolist(),
                            "max_abs": float(np.abs(err).max()),
                            "proprio_std": np.std(a["proprio"], axis=0).tolist()},
        "actions": {"mean": acts.mean(axis=0).tolist(), "std": acts.std(axis=0).tolist(),
                    "at_bound": float(np.mean(np.abs(acts) > 0.99))},
        "camera": {"captured": cam.captured, "delivered": len(cam.delivered),
                   "late": int(np.sum(lat >= period / 2)), "out_of_order": cam.out_of_order(),
                   "in_flight_at_end": len(cam.in_flight), "latency_ms": _pct(lat, 1e3)},
        "session": rec.counters,
        "control_step_ms": _pct(rec.control_ms),
        "round_trips_ms": info.get("timings", {}),
        "wall_s": rec.wall_s,
    }


def format_summary(s: dict[str, Any]) -> str:
    dec, cam, st = s["decoded_proprio"], s["camera"], s["state"]
    lines = [
        f"task {s['task']}  seed {s['seed']}  backend {s['backend']}  ticks {s['ticks']}  "
        f"({s['wall_s']:.1f} s)",
        f"episode return       {s['return']:.1f}",
    ]
    if st is None:
        lines.append("state tracking       none: the model has no state head")
    else:
        lines.append("state tracking       estimate vs the simulator's truth (never sent to "
                     "the service):")
        for i, name in enumerate(st["names"]):
            kind = "measured" if name in st["measured"] else "hidden"
            lines.append(f"  {name:<23}({kind:8s}) nRMSE {st['nrmse'][i]:.3f}  RMSE "
                         f"{st['rmse'][i]:.4f}  90% interval covers {100 * st['cov90'][i]:.0f}%")
    lines.append(f"decoded proprio      measured, echoed by the decoder: RMSE {dec['rmse']:.4f} "
                 f"(the reading's std is {np.round(dec['proprio_std'], 4).tolist()})")
    act = s["actions"]
    lines.append(f"actions              mean {np.round(act['mean'], 3).tolist()}, std "
                 f"{np.round(act['std'], 3).tolist()}, {100 * act['at_bound']:.0f}% at the "
                 "bounds")
    lat = cam["latency_ms"]
    lat_text = (f"latency p50 {lat['p50']:.0f} ms, max {lat['max']:.0f} ms" if lat else
                "no frame delivered")
    lines.append(f"camera               {cam['captured']} frames, {cam['delivered']} delivered "
                 f"({cam['late']} late, {cam['out_of_order']} out of order, "
                 f"{cam['in_flight_at_end']} still in flight at the end); {lat_text}")
    sess = s["session"]
    refused = sum(sess.get("refused", {}).values())
    lines.append(f"service              accepted {sess.get('accepted')}, refused {refused}, "
                 f"replayed ticks {sess.get('replayed_ticks', 0)}")
    c = s["control_step_ms"]
    lines.append(f"control step         messages -> action p50 {c['p50']:.2f} ms, "
                 f"p90 {c['p90']:.2f} ms, p99 {c['p99']:.2f} ms")
    for kind, t in s["round_trips_ms"].items():
        lines.append(f"  {kind:<19}p50 {t['p50_ms']:.2f} ms, p90 {t['p90_ms']:.2f} ms, "
                     f"p99 {t['p99_ms']:.2f} ms (n={t['n']})")
    if "random_return" in s:
        lines.append(f"random actions       same seed: return {s['random_return']:.1f}")
    if "reference" in s:
        r = s["reference"]
        text = f"in-process reference same seed, no latency: return {r['return']:.1f}"
        if r.get("hidden_nrmse") is not None:
            text += (f", hidden-state nRMSE {r['hidden_nrmse']:.3f}, 90% coverage "
                     f"{100 * r['hidden_cov90']:.0f}%")
        lines.append(text)
    return "\n".join(lines)


def _panels(rec: EpisodeRecord) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(label, truth, mean, var) per plotted quantity: the pole angle (from its cos/sin
    estimates) when the state has one, then every other element."""
    from server.runtime import calibration as cal

    names = list(rec.state_names)
    truth = np.asarray(rec.state, np.float64)
    mean = np.asarray(rec.state_mean, np.float64)
    var = np.asarray(rec.state_var, np.float64)
    panels, used = [], set()
    if {"pole_angle_cos", "pole_angle_sin"} <= set(names):
        ic, is_ = names.index("pole_angle_cos"), names.index("pole_angle_sin")
        true_angle = np.arctan2(truth[:, is_], truth[:, ic])
        angle, avar = cal.angle_from_cos_sin(mean[:, ic], mean[:, is_], var[:, ic], var[:, is_])
        angle = true_angle + cal.wrap_angle(angle - true_angle)
        panels.append(("pole angle [rad] (hidden)", true_angle, angle, avar))
        used |= {ic, is_}
    for i, name in enumerate(names):
        if i not in used:
            kind = "measured" if name in rec.measured else "hidden"
            panels.append((f"{name} ({kind})", truth[:, i], mean[:, i], var[:, i]))
    return panels


def plot_tracking(rec: EpisodeRecord, path: Path, title: str) -> None:
    """The physical state estimate with its 90% band against the simulator's truth (or, for
    a model without a state head, the decoded proprio against the reading)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = rec.arrays()
    t = a["time"]
    if rec.state_mean:
        panels = _panels(rec)
    else:
        panels = [(f"proprio[{d}] (measured; decoded)", a["proprio"][:, d], a["decoded"][:, d],
                   None) for d in range(a["proprio"].shape[1])]
    rows = len(panels) + 1
    fig, axes = plt.subplots(rows, 1, figsize=(9, 2.1 * rows), sharex=True, squeeze=False)
    z90 = 1.6448536269514722
    for d, (label, truth, mean, var) in enumerate(panels):
        ax = axes[d, 0]
        ax.plot(t, truth, "k-", lw=1.2, label="truth (simulator)")
        ax.plot(t, mean, "C1-", lw=1.0, label="estimate")
        if var is not None:
            std = np.sqrt(np.maximum(var, 0))
            ax.fill_between(t, mean - z90 * std, mean + z90 * std, color="C1", alpha=0.25,
                            label="90% interval")
        ax.set_ylabel(label, fontsize=7)
        for f in rec.camera.delivered:
            ax.axvline(f.captured, color="C0", alpha=0.15, lw=0.8)
        if d == 0:
            ax.legend(loc="upper right", fontsize=7)
            ax.set_title(title + "  (blue lines: camera frames received, at capture time)",
                         fontsize=9)
    axes[-1, 0].plot(t, a["action"], lw=1)
    axes[-1, 0].set_ylim(-1.1, 1.1)  # the suite's action bounds
    axes[-1, 0].set_ylabel("action")
    axes[-1, 0].set_xlabel("robot time [s]")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_video(rec: EpisodeRecord, path: Path, period: float,
                decode_image: Callable[[np.ndarray], np.ndarray] | None = None,
                scale: int = 2) -> None:
    """One GIF frame per tick: the camera's view | the newest frame the service has | the
    image decoded from the belief mean (when a decoder is given)."""
    from PIL import Image, ImageDraw

    n = len(rec.views)
    if n == 0:
        return
    received = {f.index: f.image for f in rec.camera.delivered}
    decoded = None
    if decode_image is not None:
        decoded = np.clip(decode_image(np.stack(rec.means[:n]).astype(np.float32)), 0, 255)
        decoded = decoded.astype(np.uint8)
    size = rec.views[0].shape[0]
    blank = np.full_like(rec.views[0], 40)
    labels = ["camera", "service has", "belief (decoded)"]
    frames = []
    for k in range(n):
        panels = [rec.views[k], received.get(rec.received[k], blank)]
        if decoded is not None:
            panels.append(decoded[k])
        row = np.concatenate(panels, axis=1)
        img = Image.fromarray(row).resize((row.shape[1] * scale, size * scale),
                                          Image.Resampling.NEAREST)
        canvas = Image.new("RGB", (img.width, img.height + 14), (0, 0, 0))
        canvas.paste(img, (0, 14))
        draw = ImageDraw.Draw(canvas)
        for i in range(len(panels)):
            draw.text((i * size * scale + 3, 1), labels[i], fill=(255, 255, 255))
        frames.append(canvas)
    frames[0].save(path, save_all=True, append_images=frames[1:],
                   duration=max(20, int(1000 * period)), loop=0)


def write_outputs(rec: EpisodeRecord, summary: dict[str, Any], out: Path, period: float,
                  decode_image: Callable[[np.ndarray], np.ndarray] | None = None
                  ) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"summary": out / "summary.json", "episode": out / "episode.npz",
             "plot": out / "tracking.png"}
    paths["summary"].write_text(json.dumps(summary, indent=1, default=float))
    np.savez_compressed(paths["episode"], **rec.arrays())
    plot_tracking(rec, paths["plot"], f"{summary['task']} seed {summary['seed']}")
    if rec.views:
        paths["video"] = out / "video.gif"
        write_video(rec, paths["video"], period, decode_image)
    return paths
