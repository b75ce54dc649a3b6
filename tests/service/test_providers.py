"""A requested ONNX Runtime provider must be the one in use: ``--providers cuda`` fails at
start when ONNX Runtime would quietly run on the CPU; /readyz reports the providers."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import httpx
import onnxruntime
import pytest

from server.runtime import BundleError, load_bundle

pytestmark = [pytest.mark.slow,  # ONNX Runtime warns when it falls back (the fake CUDA)
              pytest.mark.filterwarnings("ignore:Specified provider:UserWarning")]
ROOT = Path(__file__).resolve().parents[2]
CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


@pytest.fixture
def cuda_offered(monkeypatch):
    """ONNX Runtime says it offers CUDA (as onnxruntime-gpu does without a usable GPU or
    cuDNN); the sessions then fall back to the CPU, with a warning at most."""
    offered = [CUDA, *onnxruntime.get_available_providers()]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: offered)


@pytest.mark.parametrize("providers", ["cuda", [CUDA, CPU]])
def test_a_quiet_fallback_to_the_cpu_fails(bundle_dir, cuda_offered, providers):
    with pytest.raises(BundleError, match=r"asked for CUDAExecutionProvider but runs it on "
                                          r"\['CPUExecutionProvider'\]"):
        load_bundle(bundle_dir, providers=providers)


def test_auto_and_cpu_load_and_say_what_runs(bundle_dir, cuda_offered):
    assert load_bundle(bundle_dir, providers="auto").providers == [CPU]
    assert load_bundle(bundle_dir, providers="cpu").providers == [CPU]


FAKE_CUDA = """
import sys, onnxruntime
onnxruntime.get_available_providers = lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
from server.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def test_the_server_refuses_to_start_on_the_wrong_provider(bundle_dir):
    out = subprocess.run([sys.executable, "-c", FAKE_CUDA, "--bundle", str(bundle_dir),
                          "--providers", "cuda", "--grpc-port", "0", "--http-port", "-1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    assert "asked for CUDAExecutionProvider but runs it on" in out.stderr


def test_readyz_reports_the_providers_in_use(models):
    from server.http_app import create_app
    from server.service import EstimatorService
    from server.settings import Settings

    async def main():
        service = EstimatorService(models, Settings())
        transport = httpx.ASGITransport(app=create_app(service))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            r = await http.get("/readyz")  # not started: the error shape, 503
            assert r.status_code == 503 and r.json()["error"]["reason"] == "not_ready"
            await service.start()
            try:
                ready = (await http.get("/readyz")).json()
            finally:
                await service.stop()
        assert ready["providers"] == {"tiny": [CPU]} and ready["restore"] is None

    asyncio.run(main())
