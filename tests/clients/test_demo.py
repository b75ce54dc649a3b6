"""``make demo``'s script (scripts/demo.sh) with a tiny untrained bundle standing in for
both the shipped model and the bundle of a "previous run": it serves the shipped one and
runs the robot-sim through it with camera latency, reuses the previous bundle for the
training part, serves that one too, prints both side by side and stops the service, also
when the robot-sim fails."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.render]


def run_demo(out: Path, bundle: Path, **env: str) -> subprocess.CompletedProcess:
    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(bundle, out / "bundle")
    full = {k: v for k, v in os.environ.items() if not k.startswith(("VRKN_", "DEMO_"))}
    full.update(PY=sys.executable, DEMO_OUT=str(out), DEMO_EPISODE_LENGTH="100",
                DEMO_SHIPPED=str(bundle), **env)
    return subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh")], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=300, check=False)


def assert_stopped(stdout: str) -> None:
    m = re.search(r"service stopped \(pid (\d+)\)", stdout)
    assert m, stdout
    with pytest.raises(ProcessLookupError):
        os.kill(int(m.group(1)), 0)


def test_demo_reuses_a_bundle_and_stops_the_service(cartpole_bundle, tmp_path):
    out = tmp_path / "demo"
    r = run_demo(out, cartpole_bundle)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "reusing the bundle of a previous demo run" in r.stdout
    for text in ("== A. the shipped model", "episode return", "state tracking",
                 "pole_angular_velocity", "90% interval covers", "camera latency 0.02:0.25",
                 "out of order", "p99", "in-process reference", "random actions",
                 "demo done in", "hidden nRMSE", "fresh (this demo)",
                 "video (camera | frame the service has | decoded belief)"):
        assert text in r.stdout, r.stdout
    assert r.stdout.count("service stopped (pid") == 2
    assert_stopped(r.stdout)
    for part in ("shipped", "fresh"):
        for name in ("video.gif", "tracking.png", "summary.json"):
            assert (out / part / "sim" / name).stat().st_size > 0
    assert not list(out.glob("*.ready.json"))


def test_demo_stops_the_service_when_the_robot_fails(cartpole_bundle, tmp_path):
    r = run_demo(tmp_path / "demo", cartpole_bundle, DEMO_TASK="cartpole_swingup")
    assert r.returncode != 0
    assert "the model expects sensor 'proprio'" in r.stderr
    assert_stopped(r.stdout)
