"""``python -m server --bundle BAD`` says what is wrong with the bundle in one line and
exits non-zero, without a traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _serve(bundle: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server", "--bundle", str(bundle),
                           "--grpc-port", "0", "--http-port", "-1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


def test_missing_manifest_is_one_line(tmp_path):
    out = _serve(tmp_path)
    assert out.returncode != 0
    assert out.stderr == (f"error: {tmp_path / 'manifest.json'}: missing (a bundle folder "
                          "needs manifest.json)\n")


def test_altered_bundle_is_one_line(bundle_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(bundle_dir, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    (bad / next(iter(manifest["files"]))).write_bytes(b"altered")
    out = _serve(bad)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert out.stderr.startswith(f"error: {bad}") and out.stderr.count("\n") == 1
    assert "SHA-256 does not match" in out.stderr
