"""docker-compose.yml: valid for Debian's ``docker-compose config`` (no engine needed), the
services and profiles the issue asks for, health checks, no secret in the file, the
Dockerfiles' commands equal to the compose commands, and those commands are the ones the
tests run: they parse with the programs' own parsers, and the estimator's and
robot-sim's commands run here (ports, paths and the episode length adapted)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
TOKEN = "compose-test-token"
pytestmark = pytest.mark.skipif(
    shutil.which("docker-compose") is None,
    reason="Debian's docker-compose is not installed ('make test' installs it when run as "
           "root; else: apt-get install docker-compose)")


def compose_config(env: dict[str, str]) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("VRKN_")}
    full.update(env)
    return subprocess.run(["docker-compose", "-f", str(COMPOSE), "config"], cwd=ROOT,
                          env=full, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def config():
    yaml = pytest.importorskip("yaml")
    r = compose_config({"VRKN_TOKEN": TOKEN})
    assert r.returncode == 0, r.stderr
    return yaml.safe_load(r.stdout)


def dockerfile_cmd(name: str) -> list[str]:
    text = (ROOT / "docker" / f"Dockerfile.{name}").read_text().replace("\\\n", " ")
    [cmd] = re.findall(r"^CMD (\[.*\])\s*$", text, re.M)
    return json.loads(cmd)


def test_services_profiles_and_health(config):
    services = config["services"]
    assert set(services) == {"estimator", "estimator-gpu", "trainer", "robot-sim", "redis",
                             "estimator-1", "estimator-2", "balancer", "robot-sim-fleet"}
    assert "profiles" not in services["estimator"]  # CPU by default
    assert services["estimator-gpu"]["profiles"] == ["gpu"]
    assert services["trainer"]["profiles"] == ["train"]
    gpu = services["estimator-gpu"]
    assert gpu["build"]["args"]["ORT_PACKAGE"] == "onnxruntime-gpu"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "cuda" in gpu["command"]
    for name in ("estimator", "estimator-gpu"):
        assert "readyz" in " ".join(services[name]["healthcheck"]["test"])
        assert all(p.startswith("127.0.0.1:") for p in services[name]["ports"])
    assert services["robot-sim"]["depends_on"]["estimator"]["condition"] == "service_healthy"
    # The trainer and the service share the demo folder: the bundle goes from one to the
    # other.
    mounts = {n: [v.split(":")[1] for v in s["volumes"]] for n, s in services.items()}
    assert "/demo" in mounts["trainer"] and "/demo" in mounts["estimator"]


def test_no_secret_in_the_file():
    yaml = pytest.importorskip("yaml")
    raw = yaml.safe_load(COMPOSE.read_text())  # before interpolation
    for name, service in raw["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search("token|secret|password|key", key, re.I):
                assert str(value).startswith("${VRKN_TOKEN:?"), (name, key, value)
    r = compose_config({})
    assert r.returncode != 0 and "set VRKN_TOKEN" in r.stderr


def test_dockerfiles_run_the_compose_commands(config):
    services = config["services"]
    assert dockerfile_cmd("server") == services["estimator"]["command"]
    assert dockerfile_cmd("robot-sim") == services["robot-sim"]["command"]
    assert dockerfile_cmd("trainer") == services["trainer"]["command"]


def test_commands_parse_with_the_programs_parsers(config):
    from clients.robot_sim.__main__ import build_parser
    from server.__main__ import parse_args
    from server.settings import Settings
    from training.cli import resolve_run

    services = config["services"]
    for name in ("estimator", "estimator-gpu"):
        cmd = services[name]["command"]
        assert cmd[:3] == ["python", "-m", "server"]
        Settings(**parse_args(cmd[3:]), token=TOKEN)  # validates (0.0.0.0 needs the token)
    cmd = services["robot-sim"]["command"]
    assert cmd[:3] == ["python", "-m", "clients.robot_sim"]
    build_parser().parse_args(cmd[3:])
    shell = services["trainer"]["command"]
    assert shell[:2] == ["sh", "-c"]
    train, export = (shlex.split(part) for part in shell[2].split("&&"))
    assert train[:3] == ["python", "-m", "training.dreamer"]
    cfg, run_dir, _ = resolve_run(train[3:], "dreamer")
    assert cfg.task == "cartpole_swingup-fusion" and str(run_dir) == "/demo/run"
    assert export[:3] == ["python", "-m", "training.export"]
    assert export[3] == "/demo/run" and export[-2:] == ["--out", "/demo/bundle"]


def _replace(cmd: list[str], flag: str, value: str) -> list[str]:
    cmd = list(cmd)
    cmd[cmd.index(flag) + 1] = value
    return cmd


@pytest.mark.slow
@pytest.mark.render
def test_estimator_and_robot_sim_commands_run_here(config, cartpole_bundle, tmp_path):
    services = config["services"]
    ready = tmp_path / "ready.json"
    server = services["estimator"]["command"]
    server = _replace(server, "--bundle", f"demo={cartpole_bundle}")
    server = _replace(server, "--host", "127.0.0.1")
    server = _replace(_replace(server, "--grpc-port", "0"), "--http-port", "0")
    server = _replace(server, "--snapshot-path", str(tmp_path / "sessions.json"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("VRKN_")}
    env["VRKN_TOKEN"] = TOKEN
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, *server[1:], "--ready-file", str(ready)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, \
                (tmp_path / "server.log").read_text()
            time.sleep(0.05)
        port = json.loads(ready.read_text())["grpc_port"]
        sim = services["robot-sim"]["command"]
        sim = _replace(sim, "--server", f"127.0.0.1:{port}")
        sim = _replace(sim, "--bundle", str(cartpole_bundle))
        sim = _replace(sim, "--out", str(tmp_path / "sim"))
        r = subprocess.run([sys.executable, *sim[1:], "--episode-length", "60",
                            "--video-ticks", "5"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=120, check=False)
        assert r.returncode == 0, r.stderr
        assert "episode return" in r.stdout and (tmp_path / "sim" / "video.gif").exists()
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
        log.close()
    assert (tmp_path / "sessions.json").exists()  # the snapshot path of the command


# -- the fleet (profile scale, issue 14) ---------------------------------------------------
FLEET = ("redis", "estimator-1", "estimator-2", "balancer", "robot-sim-fleet")


def test_the_scale_profile_runs_replicas_a_balancer_and_redis(config, tmp_path):
    from server.__main__ import parse_args
    from server.deploy import balancer
    from server.settings import Settings

    services = config["services"]
    assert all(services[n]["profiles"] == ["scale"] for n in FLEET)
    replicas = ("estimator-1", "estimator-2")
    for name in replicas:
        cmd = services[name]["command"]
        s = Settings(**parse_args(cmd[3:]), token=TOKEN)
        assert s.store == "redis://redis:6379/0" and s.replica_id == name
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "ports" not in services[name]  # reached through the balancer only
        assert "readyz" in " ".join(services[name]["healthcheck"]["test"])
    lb = services["balancer"]
    assert lb["image"].startswith("haproxy:")  # the stock image
    assert {n: d["condition"] for n, d in lb["depends_on"].items()} == \
        dict.fromkeys(replicas, "service_healthy")
    [mount] = lb["volumes"]
    source, target = mount.split(":")[:2]
    assert Path(source) == balancer.COMPOSE_CONFIG
    assert target == "/usr/local/etc/haproxy/haproxy.cfg"
    # The mounted file is the template rendered for these replicas (regenerate it with
    # python -m server.deploy.balancer), on the ports the replicas' commands serve.
    for name in replicas:
        cmd = services[name]["command"]
        assert (cmd[cmd.index("--grpc-port") + 1], cmd[cmd.index("--http-port") + 1]) == \
            ("50051", "8000")
    text = balancer.COMPOSE_CONFIG.read_text()
    assert text == balancer.compose_config(replicas, 50051, 8000)
    assert {p.split(":")[-1].split("/")[0] for p in lb["ports"]} == {"50051", "8000"}
    assert all(p.startswith("127.0.0.1:") for p in lb["ports"])
    sim = services["robot-sim-fleet"]["command"]
    assert sim[sim.index("--server") + 1] == "balancer:50051"
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if Path(haproxy).exists():  # HAProxy accepts the file (service names made local)
        local = text.replace("estimator-1:", "127.0.0.1:").replace("estimator-2:",
                                                                    "127.0.0.2:")
        local = local.replace("bind :50051", "bind 127.0.0.1:1").replace(
            "bind :8000", "bind 127.0.0.1:2")
        (tmp_path / "haproxy.cfg").write_text(local)
        r = subprocess.run([haproxy, "-c", "-f", str(tmp_path / "haproxy.cfg")],
                           capture_output=True, text=True, timeout=30, check=False)
        assert r.returncode == 0 and "WARNING" not in r.stdout + r.stderr, \
            r.stdout + r.stderr
