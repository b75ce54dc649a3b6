"""`python -m training.export RUN_DIR --out BUNDLE` on a real (tiny, debug-preset) run."""

from __future__ import annotations

import subprocess
import sys

import pytest

from server.runtime import OnlineFilter, load_bundle

pytestmark = [pytest.mark.slow, pytest.mark.render]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          check=False, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    runs = {}
    for model in ("vrkn", "rssm"):
        out = run("training.dreamer", "--preset", "debug", "--task",
                  "cartpole_swingup-fusion", "--model", model, "--logdir", str(base / model))
        assert out.returncode == 0, out.stderr[-2000:]
        runs[model] = base / model
    return runs


def test_export_a_run_directory_and_its_checkpoint(trained, tmp_path):
    out = run("training.export", str(trained["vrkn"]), "--out", str(tmp_path / "bundle"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "verified with ONNX Runtime" in out.stdout
    bundle = load_bundle(tmp_path / "bundle")
    m = bundle.manifest
    assert [s.name for s in m.sensors] == ["proprio", "image"]
    assert m.action_size == 1 and m.control_period > 0
    assert m.sensors[0].normalisation is not None  # proprio statistics from the run
    assert m.training_config["task"] == "cartpole_swingup-fusion"
    OnlineFilter(bundle).initial(2)
    # The checkpoint file itself works as the source too.
    out = run("training.export", str(trained["vrkn"] / "checkpoint.pt"), "--out",
              str(tmp_path / "again"))
    assert out.returncode == 0, out.stderr[-2000:]


def test_export_refuses_what_it_cannot_export(trained, tmp_path):
    out = run("training.export", str(trained["rssm"]), "--out", str(tmp_path / "b"))
    assert out.returncode == 2
    assert "cannot be exported" in out.stderr and "rssm" in out.stderr
    out = run("training.export", str(tmp_path / "missing"), "--out", str(tmp_path / "b"))
    assert out.returncode == 2 and "no checkpoint" in out.stderr
    assert not (tmp_path / "b").exists()


def test_training_exports_at_the_end_when_asked(tmp_path):
    out = run("training.dreamer", "--preset", "debug", "--task", "cartpole_swingup-fusion",
              "--model", "vrkn", "--logdir", str(tmp_path / "run"), "--log.export",
              str(tmp_path / "bundle"), "--log.progress", "false")
    assert out.returncode == 0, out.stderr[-2000:]
    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.manifest.training_config["log"]["export"] == str(tmp_path / "bundle")


def test_export_option_refused_before_work_for_rssm(tmp_path):
    out = run("training.dreamer", "--preset", "debug", "--model", "rssm", "--logdir",
              str(tmp_path / "run"), "--log.export", str(tmp_path / "bundle"))
    assert out.returncode != 0 and "log.export needs a Dreamer run with a VRKN model" in out.stderr
    assert not (tmp_path / "run").exists()
