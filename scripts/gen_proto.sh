#!/usr/bin/env bash
# Generate the Python code for proto/ (committed). Usage: scripts/gen_proto.sh [OUT_DIR]
# OUT_DIR defaults to the repository root; tests/service/test_proto.py generates into a
# temporary folder and compares byte for byte, so CI fails when the committed code is stale.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root}"
python="${PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python=python3
cd "$root"
mkdir -p "$out/proto/vrkn/estimator/v1"
"$python" -m grpc_tools.protoc -I . \
  --python_out="$out" --grpc_python_out="$out" \
  proto/vrkn/estimator/v1/estimator.proto
