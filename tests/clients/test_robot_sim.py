"""The robot-sim in closed loop: without latency the service gives the same actions, hence
the same return, as the in-process evaluation of the same bundle and seed (gRPC with PNG
frames, HTTP with raw frames); with camera latency (late, out-of-order frames) the
service replays and the return stays close; the CLI writes its summary, plot and video."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from clients.robot_sim import sim
from clients.robot_sim.camera import CameraLink, Latency

TASK = "cartpole_swingup-fusion"
LENGTH = 200  # environment steps: 100 ticks at action repeat 2
pytestmark = [pytest.mark.slow, pytest.mark.render]


@pytest.fixture(scope="module")
def reference(cartpole_bundle):
    return {seed: sim.simulate(TASK, sim.in_process_backend(str(cartpole_bundle)), seed,
                               episode_length=LENGTH) for seed in (1, 2)}


@pytest.mark.parametrize("transport,encoding", [("grpc", "png"), ("http", "raw")])
def test_no_latency_equals_in_process(cartpole_server, reference, transport, encoding):
    backend = (sim.service_backend(server=cartpole_server.grpc_target, encoding=encoding)
               if transport == "grpc" else
               sim.service_backend(http=cartpole_server.http_url, encoding=encoding))
    rec = sim.simulate(TASK, backend, 1, episode_length=LENGTH)
    backend.client.close()
    ref = reference[1]
    got, want = rec.arrays(), ref.arrays()
    assert len(rec.times) == len(ref.times) == 101
    np.testing.assert_allclose(got["action"][:-1], want["action"][:-1], atol=1e-5, rtol=0)
    np.testing.assert_allclose(got["mean"], want["mean"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(got["decoded"], want["decoded"], atol=1e-5, rtol=0)
    # The physical state: the service's estimate equals the offline runtime's; the truth
    # comes from the simulator (never sent) and is the same trajectory.
    np.testing.assert_allclose(got["state_mean"], want["state_mean"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(got["state_var"], want["state_var"], atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(got["state"], want["state"])
    assert rec.state_names[1:3] == ("pole_angle_cos", "pole_angle_sin")
    assert rec.measured == ("cart_position",)
    assert rec.episode_return == pytest.approx(ref.episode_return, abs=1e-6)
    assert rec.counters["accepted"] == {"proprio": 101, "image": rec.camera.captured}
    assert rec.counters["refused"] == {}


def test_latency_stays_close(cartpole_server, reference):
    backend = sim.service_backend(server=cartpole_server.grpc_target)
    rec = sim.simulate(TASK, backend, 2, Latency(0.02, 0.3), episode_length=LENGTH)
    backend.client.close()
    ref = reference[2]
    cam = rec.camera
    assert cam.out_of_order() > 0 and np.all(cam.latencies() >= 0.02)  # late, reordered
    assert rec.counters["replayed_ticks"] > 0 and rec.counters["refused"] == {}
    got, want = rec.arrays(), ref.arrays()
    # Measured: mean |action difference| 0.003 (actions ~0.13), return 4.5% apart.
    assert np.mean(np.abs(got["action"][:-1] - want["action"][:-1])) < 0.02
    assert abs(rec.episode_return - ref.episode_return) <= 0.1 * abs(ref.episode_return)
    # The proprio (every tick, on time) keeps the decoded estimate as close as without
    # latency.
    rmse = [float(np.sqrt(np.mean((a["decoded"] - a["proprio"]) ** 2))) for a in (got, want)]
    assert rmse[0] < 1.5 * rmse[1] + 0.05


def test_camera_link_is_seeded_and_reorders():
    def deliveries(seed):
        link = CameraLink(Latency(0.0, 0.5), seed)
        out = []
        for k in range(40):
            if k % 4 == 0:
                link.capture(k * 0.02, np.zeros((2, 2, 3), np.uint8))
            out += [(f.index, round(f.arrival, 9)) for f in link.due(k * 0.02)]
        return out, link

    a, link = deliveries(0)
    assert a == deliveries(0)[0] and a != deliveries(1)[0]
    assert link.out_of_order() > 0
    assert all(0 <= x <= 0.5 for x in link.latencies())
    assert [f.arrival for f in link.delivered] == sorted(f.arrival for f in link.delivered)
    assert Latency.parse("0.05") == Latency(0.05, 0.05) and Latency.parse("0:0.2").high == 0.2
    with pytest.raises(ValueError):
        Latency.parse("0.3:0.1")
    with pytest.raises(ValueError):
        Latency.parse("fast")


def test_cli(cartpole_server, cartpole_bundle, tmp_path):
    out = tmp_path / "sim"
    cmd = [sys.executable, "-m", "clients.robot_sim", "--task", TASK, "--server",
           cartpole_server.grpc_target, "--camera-latency", "0.02:0.2", "--seed", "3",
           "--episode-length", "100", "--out", str(out), "--video-ticks", "20", "--bundle",
           str(cartpole_bundle), "--compare-in-process"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    for text in ("episode return", "state tracking", "pole_angular_velocity", "(hidden",
                 "cart_position          (measured", "90% interval covers", "control step",
                 "p99", "in-process reference", "video:"):
        assert text in r.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["state"]["cov90"]) == 5 and summary["state"]["measured"] == [
        "cart_position"]
    assert summary["ticks"] == 51 and summary["camera"]["captured"] > 0
    assert summary["session"]["refused"] == {}
    assert (out / "tracking.png").stat().st_size > 0
    from PIL import Image

    with Image.open(out / "video.gif") as gif:
        assert gif.n_frames == 20 and gif.size[0] == 3 * 64 * 2  # three panels


def test_cli_errors(cartpole_server):
    cmd = [sys.executable, "-m", "clients.robot_sim", "--server", cartpole_server.grpc_target,
           "--action-repeat", "4", "--episode-length", "40"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 1 and "control period" in r.stderr
    r = subprocess.run([sys.executable, "-m", "clients.robot_sim", "--server", "127.0.0.1:1",
                        "--wait-s", "0.5"], capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == 1 and "not ready" in r.stderr
