#!/usr/bin/env bash
# The closed-loop demo (`make demo`): train a small VRKN-Dreamer on a fusion task (or reuse
# the bundle of a previous demo run), export it, start the service on 127.0.0.1 (free
# ports), run the robot-sim through it with camera latency, stop the service (always, also
# on failure), and print the summary.
#
# Settings (environment): PY (python, default .venv/bin/python), DEMO_OUT (runs/demo),
# DEMO_TASK (cartpole_swingup-fusion), DEMO_STEPS (training budget in environment steps,
# 24000: about 6 min on 2 shared cores), DEMO_MINUTES (wall-clock cap, 10), DEMO_SEED (0),
# DEMO_LATENCY (camera latency LOW:HIGH seconds, 0.02:0.25), DEMO_EPISODE_LENGTH (1000).
# Delete DEMO_OUT (or DEMO_OUT/bundle) to train again.
set -euo pipefail

PY=${PY:-.venv/bin/python}
OUT=${DEMO_OUT:-runs/demo}
TASK=${DEMO_TASK:-cartpole_swingup-fusion}
STEPS=${DEMO_STEPS:-24000}
MINUTES=${DEMO_MINUTES:-10}
SEED=${DEMO_SEED:-0}
LATENCY=${DEMO_LATENCY:-0.02:0.25}
EPISODE_LENGTH=${DEMO_EPISODE_LENGTH:-1000}
RUN=$OUT/run
BUNDLE=$OUT/bundle
SIM=$OUT/sim
READY=$OUT/server.ready.json
SERVER_LOG=$OUT/server.log
START=$(date +%s)
mkdir -p "$OUT"

# 1. The bundle: a previous demo's when it loads and verifies, else train and export.
if [ -f "$BUNDLE/manifest.json" ] && "$PY" -c "import sys; from server.runtime import \
load_bundle; load_bundle(sys.argv[1], providers='cpu')" "$BUNDLE" 2>/dev/null; then
  echo "== 1/4 reusing the bundle of a previous demo run: $BUNDLE (delete $OUT to retrain)"
else
  echo "== 1/4 training VRKN-Dreamer on $TASK (preset cpu): $STEPS env steps or $MINUTES min," \
    "whichever comes first -> $RUN"
  "$PY" -m training.dreamer --preset cpu --task "$TASK" --seed "$SEED" --loop.steps "$STEPS" \
    --loop.minutes "$MINUTES" --loop.eval_episodes 1 --logdir "$RUN"
  echo "== 2/4 exporting the bundle -> $BUNDLE"
  "$PY" -m training.export "$RUN" --out "$BUNDLE"
fi

# 2. The service, in the background; stopped on any exit from here on.
rm -f "$READY"
echo "== 3/4 starting the service (127.0.0.1, free ports; log: $SERVER_LOG)"
"$PY" -m server --bundle "demo=$BUNDLE" --host 127.0.0.1 --grpc-port 0 --http-port 0 \
  --ready-file "$READY" >"$SERVER_LOG" 2>&1 &
SERVER_PID=$!
stop_service() {
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  wait "$SERVER_PID" 2>/dev/null || true
  echo "== service stopped (pid $SERVER_PID)"
}
trap stop_service EXIT
trap 'exit 130' INT TERM

for _ in $(seq 600); do  # up to 60 s
  [ -f "$READY" ] && break
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "error: the service exited while starting:" >&2; cat "$SERVER_LOG" >&2; exit 1
  fi
  sleep 0.1
done
[ -f "$READY" ] || { echo "error: the service was not ready after 60 s" >&2; exit 1; }
GRPC_PORT=$("$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))['grpc_port'])" \
  "$READY")

# 3. The robot in closed loop through the service, with camera latency.
echo "== 4/4 robot-sim: $TASK through 127.0.0.1:$GRPC_PORT, camera latency $LATENCY s"
"$PY" -m clients.robot_sim --task "$TASK" --server "127.0.0.1:$GRPC_PORT" \
  --camera-latency "$LATENCY" --seed "$SEED" --episode-length "$EPISODE_LENGTH" \
  --out "$SIM" --bundle "$BUNDLE" --compare-in-process --compare-random \
  | tee "$OUT/summary.txt"

stop_service
trap - EXIT
echo
echo "== demo done in $(( $(date +%s) - START )) s"
if [ -f "$RUN/metrics.jsonl" ]; then
  "$PY" - "$RUN/metrics.jsonl" <<'PYEOF'
import json, sys
evals = [json.loads(l) for l in open(sys.argv[1]) if '"eval/return"' in l]
if evals:
    last = evals[-1]
    print(f"training: evaluation return {last['eval/return']:.1f} after {last['step']} "
          f"env steps (run: {sys.argv[1].rsplit('/', 1)[0]})")
PYEOF
fi
echo "video (camera | frame the service has | decoded belief): $SIM/video.gif"
echo "plot (true vs estimated proprio, actions): $SIM/tracking.png"
echo "summary: $SIM/summary.json and $OUT/summary.txt"
