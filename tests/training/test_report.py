"""IQM and stratified bootstrap against brute force; the report CLI end to end."""

from __future__ import annotations

import itertools
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from training.report import ReportError, load_run, main, step_grid, summarise
from training.stats import iqm, pooled, stratified_bootstrap, stratified_bootstrap_ci


def brute_force_iqm(x) -> float:
    """rliable's aggregate_iqm = scipy.stats.trim_mean(x, 0.25): drop floor(n/4) per end."""
    x = sorted(np.ravel(x))
    k = len(x) // 4
    return float(np.mean(x[k:len(x) - k]))


# ---------------------------------------------------------------------------- IQM

@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=41))
def test_iqm_matches_brute_force_and_scipy(values):
    assert iqm(values) == pytest.approx(brute_force_iqm(values), rel=1e-12, abs=1e-9)
    assert iqm(values) == pytest.approx(scipy.stats.trim_mean(values, 0.25), abs=1e-9)


def test_iqm_over_runs_and_tasks_and_along_an_axis():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(5, 3))  # runs x tasks: aggregated over all of them
    assert iqm(scores) == pytest.approx(brute_force_iqm(scores))
    curves = rng.normal(size=(7, 4))  # runs x steps: one IQM per step
    np.testing.assert_allclose(iqm(curves, axis=0), [brute_force_iqm(c) for c in curves.T])
    assert iqm([1.0, 2.0, 3.0, 100.0]) == 2.5  # n=4: one dropped at each end
    with pytest.raises(ValueError, match="empty"):
        iqm([])


# ------------------------------------------------------------------ the bootstrap

def test_bootstrap_matches_the_exact_stratified_distribution():
    # 2 tasks x 3 runs: 27 x 27 equally likely resamples, enumerated.
    tasks = [np.array([0.1, 0.4, 0.35]), np.array([0.7, 0.95, 0.5])]
    exact = np.array([brute_force_iqm(np.concatenate([tasks[0][list(a)], tasks[1][list(b)]]))
                      for a in itertools.product(range(3), repeat=3)
                      for b in itertools.product(range(3), repeat=3)])
    boot = stratified_bootstrap(tasks, reps=40_000, rng=np.random.default_rng(1))
    assert boot.shape == (40_000,)
    assert boot.mean() == pytest.approx(exact.mean(), abs=0.002)
    assert scipy.stats.ks_2samp(boot, exact).statistic < 0.02
    # Not the unstratified bootstrap, whose resamples can take 6 runs of one task:
    everything = np.concatenate(tasks)
    assert boot.min() >= exact.min() > brute_force_iqm(np.full(6, everything.min()))


def test_resamples_runs_within_each_task():
    tasks = [np.zeros(3), np.ones(5)]  # every replicate keeps 3 of task 0 and 5 of task 1
    ones = stratified_bootstrap(tasks, lambda x, axis: x.sum(axis), reps=500,
                                rng=np.random.default_rng(0))
    assert (ones == 5).all()


def test_ci_covers_the_true_iqm_at_about_the_nominal_rate():
    rng = np.random.default_rng(0)
    mus, sigmas = np.array([0.2, 0.5, 0.6, 0.9]), np.array([0.05, 0.15, 0.1, 0.05])
    # the population IQM: the trimmed mean of the equal-weight mixture of the tasks
    truth = iqm(rng.normal(mus, sigmas, size=(250_000, 4)))
    sims, hits = 300, 0
    for _ in range(sims):
        tasks = list(rng.normal(mus, sigmas, size=(10, 4)).T)  # 10 runs of each task
        ci = stratified_bootstrap_ci(tasks, reps=1000, rng=rng)
        hits += bool(ci.lower <= truth <= ci.upper)
    assert 0.88 <= hits / sims <= 0.99, hits / sims


def test_curves_bootstrap_each_step_like_a_bootstrap_of_that_step():
    rng = np.random.default_rng(3)
    tasks = [rng.uniform(size=(3, 6)), rng.uniform(size=(4, 6))]  # ragged: 3 and 4 runs
    curve = stratified_bootstrap_ci(tasks, reps=2000, rng=np.random.default_rng(7))
    assert curve.point.shape == curve.lower.shape == (6,)
    assert (curve.lower <= curve.point).all() and (curve.point <= curve.upper).all()
    last = stratified_bootstrap_ci([t[:, -1] for t in tasks], reps=2000,
                                   rng=np.random.default_rng(7))
    np.testing.assert_allclose([last.point, last.lower, last.upper],
                               [curve.point[-1], curve.lower[-1], curve.upper[-1]])
    assert curve.point[2] == pytest.approx(brute_force_iqm(pooled(tasks)[:, 2]))


def test_bootstrap_rejects_bad_input():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="no tasks"):
        stratified_bootstrap([], rng=rng)
    with pytest.raises(ValueError, match="no runs"):
        stratified_bootstrap([np.zeros(3), np.zeros(0)], rng=rng)
    with pytest.raises(ValueError, match="non-finite"):
        stratified_bootstrap([np.array([0.0, np.nan])], rng=rng)
    with pytest.raises(ValueError, match="confidence"):
        stratified_bootstrap_ci([np.zeros(3)], confidence=95, rng=rng)


# -------------------------------------------------------------- synthetic runs

def write_run(root: Path, agent: str, model: str, task: str, seed: int, steps,
              level: float, rng: np.random.Generator, metric: str = "eval/return",
              config: dict | None = None, name: str = "") -> Path:
    """A run directory as the training loop writes it: a noisy saturating curve."""
    path = root / (name or f"{agent}-{model}-{task}-{seed}")
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(
        {"agent": agent, "model": model, "task": task, "seed": seed, "lr": 6e-4,
         **(config or {})}))
    lines = []
    for step in steps:
        lines.append({"step": int(step), "train/loss": float(rng.normal())})
        value = level * (1 - np.exp(-step / 2e5)) + rng.normal(0, 60)
        lines.append({"step": int(step), metric: float(np.clip(value, 0, 1000))})
    (path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


STEPS = np.arange(0, 500_001, 50_000)
LEVELS = {("vrkn", "cartpole_swingup"): 850, ("vrkn", "walker_walk"): 900,
          ("rssm", "cartpole_swingup"): 700, ("rssm", "walker_walk"): 750}


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    for (model, task), level in LEVELS.items():
        for seed in range(3):
            write_run(tmp_path / "runs", "dreamer", model, task, seed, STEPS, level, rng)
    return tmp_path / "runs"


def table_rows(markdown: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split("|") for line in markdown.splitlines()
            if line.startswith("| dreamer") or line.startswith("| planet")]
    return {f"{r[0].strip()}/{r[1].strip()}": [c.strip() for c in r[2:]] for r in rows}


def test_cli_end_to_end(runs_dir, tmp_path, capsys):
    out = tmp_path / "report"
    assert main([str(runs_dir / "*"), "--out", str(out), "--reps", "2000"]) == 0
    assert "12 runs, 2 (agent, model) groups" in capsys.readouterr().out
    for name in ("curves.png", "final.png", "report.md", "summary.json"):
        assert (out / name).stat().st_size > 0
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"

    rows = table_rows((out / "report.md").read_text())
    assert set(rows) == {"dreamer/vrkn", "dreamer/rssm"}
    for model in ("vrkn", "rssm"):
        # recomputed from the raw files, independently of the report's loading code
        final = []
        for task in ("cartpole_swingup", "walker_walk"):
            vals = []
            for seed in range(3):
                lines = (runs_dir / f"dreamer-{model}-{task}-{seed}" / "metrics.jsonl"
                         ).read_text().splitlines()
                vals.append([json.loads(x)["eval/return"] for x in lines
                             if "eval/return" in x][-1] / 1000)
            final.append(np.array(vals))
        ci = stratified_bootstrap_ci(final, reps=2000, rng=np.random.default_rng(0))
        tasks, runs, step, point, interval, mean, median = rows[f"dreamer/{model}"]
        assert (tasks, runs, step) == ("2", "6", "500000")
        assert point == f"{float(ci.point):.3f}"
        assert interval == f"[{float(ci.lower):.3f}, {float(ci.upper):.3f}]"
        assert mean == f"{np.mean(pooled(final)):.3f}"
        assert median == f"{np.median(pooled(final)):.3f}"
    summary = {(s["agent"], s["model"]): s for s in json.loads((out / "summary.json")
                                                                .read_text())}
    vrkn = summary["dreamer", "vrkn"]
    assert vrkn["steps"] == STEPS.tolist() and len(vrkn["curve"]["point"]) == len(STEPS)
    assert vrkn["final"]["point"] > summary["dreamer", "rssm"]["final"]["point"]


def test_step_grid_interpolates_differing_schedules(runs_dir, tmp_path, caplog):
    rng = np.random.default_rng(1)
    # PlaNet evaluated every 30k steps, one seed stopped early at 420k.
    for task in ("cartpole_swingup", "walker_walk"):
        for seed in range(2):
            steps = np.arange(0, 421_000 if seed else 600_001, 30_000)
            write_run(runs_dir, "planet", "vrkn", task, seed, steps, 800, rng)
    with caplog.at_level(logging.WARNING):
        assert main([str(runs_dir / "*"), "--out", str(tmp_path / "r"), "--reps", "500"]) == 0
    assert "curves end at step 420000" in caplog.text
    assert "a task with one run" not in caplog.text
    rows = table_rows((tmp_path / "r" / "report.md").read_text())
    assert rows["planet/vrkn"][:3] == ["2", "4", "420000"]
    assert rows["dreamer/vrkn"][2] == "500000"  # each agent has its own grid

    run = load_run(next(runs_dir.glob("planet-vrkn-walker_walk-0")), "eval/return")
    grid = step_grid([run], steps=[15_000, 45_000])
    np.testing.assert_allclose(grid, [15_000, 45_000])
    [s] = summarise([run], steps=[15_000], reps=10)
    assert float(s.final.point) == pytest.approx((run.values[0] + run.values[1]) / 2 / 1000)
    with pytest.raises(ReportError, match=r"planet-vrkn-walker_walk-0.*does not cover"):
        step_grid([run], steps=[700_000])


def test_skips_non_runs_with_a_warning(runs_dir, tmp_path, caplog):
    (runs_dir / "notes").mkdir()
    with caplog.at_level(logging.WARNING):
        assert main([str(runs_dir / "*"), str(tmp_path / "nowhere-*"), "--out",
                     str(tmp_path / "r"), "--reps", "100"]) == 0
    assert "skipping" in caplog.text and "notes" in caplog.text
    assert "nowhere-* matched nothing" in caplog.text


def test_clear_errors_for_bad_input(runs_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty / "*"), str(empty), "--out", str(tmp_path / "r")]) == 2
    assert "error: no run directories" in capsys.readouterr().err

    assert main([str(runs_dir / "*"), "--metric", "eval/success", "--out",
                 str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "metrics.jsonl" in err and "'eval/success'" in err and "missing" in err

    run = next(iter(sorted(runs_dir.iterdir())))
    (run / "config.json").write_text(json.dumps({"agent": "dreamer", "model": "vrkn"}))
    assert main([str(run), "--out", str(tmp_path / "r")]) == 2
    assert re.search(r"config\.json: missing \['task', 'seed'\]", capsys.readouterr().err)

    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    assert "--metric" in capsys.readouterr().out


def test_tolerates_a_half_written_last_line(runs_dir, caplog):
    run = next(iter(sorted(runs_dir.iterdir())))
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 550000, "eval/ret')
    with caplog.at_level(logging.WARNING):
        loaded = load_run(run, "eval/return")
    assert loaded.steps[-1] == 500_000 and "incomplete last line" in caplog.text
    with open(run / "metrics.jsonl", "a") as f:
        f.write('\n{"step": 600000, "eval/return": 1.0}\n')
    with pytest.raises(ReportError, match=r"metrics\.jsonl:\d+: not JSON"):
        load_run(run, "eval/return")


def test_runs_whose_configs_differ_are_not_pooled(tmp_path, capsys, caplog):
    rng = np.random.default_rng(2)
    root = tmp_path / "runs"
    for batch, level in ((50, 850), (16, 300)):
        for task in ("cartpole_swingup", "walker_walk"):
            for seed in range(2):
                # device, logging and run length differ too: they do not split groups
                write_run(root, "dreamer", "vrkn", task, seed, STEPS, level, rng,
                          config={"device": f"cuda:{seed}", "log": {"video": bool(seed)},
                                  "replay": {"batch": batch, "length": 50},
                                  "loop": {"steps": 500_000 + seed}},
                          name=f"vrkn-b{batch}-{task}-{seed}")
    write_run(root, "dreamer", "rssm", "walker_walk", 0, STEPS, 700, rng,
              config={"replay": {"batch": 50}}, name="rssm-0")
    out = tmp_path / "report"
    with caplog.at_level(logging.WARNING):
        assert main([str(root / "*"), "--out", str(out), "--reps", "500"]) == 0
    assert "9 runs, 3 (agent, model, config differences) groups" in capsys.readouterr().out
    assert "dreamer/vrkn: the runs' configs differ in replay.batch" in caplog.text
    markdown = (out / "report.md").read_text()
    assert "Runs whose configs differ are not pooled" in markdown
    rows = table_rows(markdown)
    assert set(rows) == {"dreamer/vrkn [replay.batch=16]", "dreamer/vrkn [replay.batch=50]",
                         "dreamer/rssm"}
    assert rows["dreamer/vrkn [replay.batch=16]"][:2] == ["2", "4"]  # 2 tasks, 4 runs
    assert float(rows["dreamer/vrkn [replay.batch=16]"][3]) < float(
        rows["dreamer/vrkn [replay.batch=50]"][3])
    configs = {(s["model"], s["config"]) for s in json.loads((out / "summary.json").read_text())}
    assert configs == {("vrkn", "replay.batch=16"), ("vrkn", "replay.batch=50"), ("rssm", "")}
