#!/usr/bin/env bash
# The closed-loop demo (`make demo`), in two parts:
#   A. the shipped model (models/cartpole_swingup-fusion, trained for about 100 minutes on
#      this kind of machine) served on 127.0.0.1 (free ports), the robot-sim driving
#      cartpole through it with camera latency: return, hidden-state tracking with 90%
#      coverage, latencies, video and plot;
#   B. the training path: a short VRKN-Dreamer run (or the bundle of a previous demo run),
#      its export, and the same robot-sim on that fresh bundle; then both side by side.
# The service is always stopped, also on failure.
#
# Settings (environment): PY (python, default .venv/bin/python), DEMO_OUT (runs/demo),
# DEMO_SHIPPED (the shipped bundle, models/cartpole_swingup-fusion), DEMO_TASK
# (cartpole_swingup-fusion), DEMO_STEPS (training budget in environment steps, 24000),
# DEMO_MINUTES (wall-clock cap of the training, 3), DEMO_SEED (0), DEMO_LATENCY (camera
# latency LOW:HIGH seconds, 0.02:0.25), DEMO_EPISODE_LENGTH (1000), DEMO_SKIP_TRAINING (1:
# part A only). Delete DEMO_OUT (or DEMO_OUT/bundle) to train again.
set -euo pipefail

PY=${PY:-.venv/bin/python}
OUT=${DEMO_OUT:-runs/demo}
TASK=${DEMO_TASK:-cartpole_swingup-fusion}
STEPS=${DEMO_STEPS:-24000}
MINUTES=${DEMO_MINUTES:-3}
SHIPPED=${DEMO_SHIPPED:-models/cartpole_swingup-fusion}
SKIP_TRAINING=${DEMO_SKIP_TRAINING:-0}
SEED=${DEMO_SEED:-0}
LATENCY=${DEMO_LATENCY:-0.02:0.25}
EPISODE_LENGTH=${DEMO_EPISODE_LENGTH:-1000}
RUN=$OUT/run
BUNDLE=$OUT/bundle
START=$(date +%s)
mkdir -p "$OUT"

# Serve BUNDLE, drive the robot through it, stop the service. drive LABEL BUNDLE SIMDIR [ARGS]
drive() {
  local label=$1 bundle=$2 sim=$3
  shift 3
  local ready=$OUT/server-$label.ready.json log=$OUT/server-$label.log
  rm -f "$ready"
  echo "== $label: starting the service on $bundle (127.0.0.1, free ports; log: $log)"
  "$PY" -m server --bundle "$label=$bundle" --host 127.0.0.1 --grpc-port 0 --http-port 0 \
    --ready-file "$ready" >"$log" 2>&1 &
  SERVER_PID=$!
  trap stop_service EXIT
  for _ in $(seq 600); do  # up to 60 s
    [ -f "$ready" ] && break
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      echo "error: the service exited while starting:" >&2; cat "$log" >&2; exit 1
    fi
    sleep 0.1
  done
  [ -f "$ready" ] || { echo "error: the service was not ready after 60 s" >&2; exit 1; }
  local port
  port=$("$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))['grpc_port'])" \
    "$ready")
  echo "== $label: robot-sim $TASK through 127.0.0.1:$port, camera latency $LATENCY s"
  "$PY" -m clients.robot_sim --task "$TASK" --server "127.0.0.1:$port" \
    --camera-latency "$LATENCY" --seed "$SEED" --episode-length "$EPISODE_LENGTH" \
    --out "$sim" --bundle "$bundle" "$@" | tee "$sim.txt"
  stop_service
  trap - EXIT
  rm -f "$ready"
}

stop_service() {
  if [ -n "${SERVER_PID:-}" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  [ -n "${SERVER_PID:-}" ] && { wait "$SERVER_PID" 2>/dev/null || true
    echo "== service stopped (pid $SERVER_PID)"; }
  SERVER_PID=
}
trap 'exit 130' INT TERM

# A. The shipped model.
if ! "$PY" -c "import sys; from server.runtime import load_bundle; \
load_bundle(sys.argv[1], providers='cpu')" "$SHIPPED"; then
  echo "error: the shipped bundle $SHIPPED does not load (see above)" >&2; exit 1
fi
echo "== A. the shipped model: $SHIPPED (model card: $SHIPPED.md)"
mkdir -p "$OUT/shipped"
drive shipped "$SHIPPED" "$OUT/shipped/sim" --compare-in-process --compare-random

if [ "$SKIP_TRAINING" = "1" ]; then
  echo "== demo done in $(( $(date +%s) - START )) s (training part skipped)"
  exit 0
fi

# B. The training path.
# 1. The bundle: a previous demo's when it loads and verifies, else train and export.
if [ -f "$BUNDLE/manifest.json" ] && "$PY" -c "import sys; from server.runtime import \
load_bundle; load_bundle(sys.argv[1], providers='cpu')" "$BUNDLE" 2>/dev/null; then
  echo "== B.1 reusing the bundle of a previous demo run: $BUNDLE (delete $OUT to retrain)"
else
  echo "== B.1 training VRKN-Dreamer on $TASK (preset cpu): $STEPS env steps or $MINUTES min," \
    "whichever comes first -> $RUN"
  "$PY" -m training.dreamer --preset cpu --task "$TASK" --seed "$SEED" --loop.steps "$STEPS" \
    --loop.minutes "$MINUTES" --loop.eval_episodes 1 --logdir "$RUN"
  echo "== B.2 exporting the bundle -> $BUNDLE"
  "$PY" -m training.export "$RUN" --out "$BUNDLE"
fi

mkdir -p "$OUT/fresh"
drive fresh "$BUNDLE" "$OUT/fresh/sim"
echo
echo "== demo done in $(( $(date +%s) - START )) s"
"$PY" - "$OUT/shipped/sim/summary.json" "$OUT/fresh/sim/summary.json" "$RUN/metrics.jsonl" <<'PYEOF'
import json, os, sys

rows = []
for label, path in (("shipped", sys.argv[1]), ("fresh (this demo)", sys.argv[2])):
    s = json.load(open(path))
    st = s.get("state") or {}
    c = s["control_step_ms"]
    rows.append((label, s["return"], s.get("random_return"), st.get("hidden_nrmse"),
                 st.get("hidden_cov90"), c["p50"], c["p99"]))
print(f"{'model':<20}{'return':>8}{'random':>8}{'hidden nRMSE':>14}{'hidden cov90':>14}"
      f"{'step p50 ms':>13}{'p99 ms':>8}")
def fmt(v, f):
    return format(v, f) if v is not None else "-".rjust(int(f.split(".")[0]))
for r in rows:
    print(f"{r[0]:<20}{fmt(r[1], '8.1f')}{fmt(r[2], '8.1f')}{fmt(r[3], '14.3f')}"
          f"{fmt(r[4] and 100 * r[4], '13.0f')}%{fmt(r[5], '13.2f')}{fmt(r[6], '8.2f')}")
if os.path.exists(sys.argv[3]):
    evals = [json.loads(l) for l in open(sys.argv[3]) if '"eval/return"' in l]
    if evals:
        print(f"fresh training: evaluation return {evals[-1]['eval/return']:.1f} after "
              f"{evals[-1]['step']} env steps ({os.path.dirname(sys.argv[3])})")
PYEOF
for part in shipped fresh; do
  echo "$part: video (camera | frame the service has | decoded belief): $OUT/$part/sim/video.gif"
  echo "$part: plot (estimated state with 90% bands vs truth, actions): $OUT/$part/sim/tracking.png"
done
