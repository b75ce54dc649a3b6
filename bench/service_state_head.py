"""What the state estimate costs the service: a proprio message's round trip on the gRPC
stream (one session) with a bundle's state head against a copy of the bundle without it,
alternating the two servers over several rounds in one run.

    python bench/service_state_head.py --bundle models/cartpole_swingup-fusion \\
        [--messages 1500] [--rounds 3]

Writes bench/results/service_state_head.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import service
from results_io import machine_meta, write_results


def without_state_head(bundle: Path, out: Path) -> Path:
    """A copy of ``bundle`` without its state head (same networks otherwise)."""
    shutil.copytree(bundle, out)
    manifest = json.loads((out / "manifest.json").read_text())
    state = manifest.pop("state", None)
    if state is None:
        raise SystemExit(f"{bundle} has no state head to compare against")
    entry = manifest["networks"].pop(state["network"])
    manifest["files"].pop(entry["file"])
    (out / entry["file"]).unlink()
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out


def state_head_cost(bundle: Path, messages: int, rounds: int, limit_s: float) -> None:
    """p50/p99 of proprio -> belief on the gRPC stream with and without the state head,
    alternating servers over ``rounds`` (same run, same machine)."""
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        plain = without_state_head(bundle, tmp / "no-head")
        rows, images = [], [service.png(np.random.default_rng(0))]
        for r in range(rounds):
            for label, b in (("with state head", bundle), ("without state head", plain)):
                work = tmp / f"{label.replace(' ', '-')}-{r}"
                work.mkdir()
                proc, info = service.start_server(b, work)
                try:
                    g = service.grpc_single(f"127.0.0.1:{info['grpc_port']}", "proprio", messages,
                                    images, limit_s)
                finally:
                    proc.terminate()
                    proc.wait(30)
                p50, p99 = service.stats(g["stream"])
                rows.append({"bundle": label, "round": r, "p50_ms": round(p50, 3),
                             "p99_ms": round(p99, 3), "messages": len(g["stream"]),
                             "loadavg": os.getloadavg()[0]})
                print(rows[-1], flush=True)
    med = {lab: float(np.median([x["p50_ms"] for x in rows if x["bundle"] == lab]))
           for lab in ("with state head", "without state head")}
    p99 = {lab: float(np.median([x["p99_ms"] for x in rows if x["bundle"] == lab]))
           for lab in med}
    added = med["with state head"] - med["without state head"]
    print(f"state head adds {added:.3f} ms to the p50 (median over {rounds} rounds)")
    write_results("service_state_head", f"Cost of the state estimate: gRPC stream, 1 session, "
                  f"proprio -> belief (python bench/service_state_head.py --bundle {bundle} "
                  f"--rounds {rounds}); the head adds {added:.3f} ms to the p50",
                  ["bundle", "p50 ms (median of rounds)", "p99 ms (median of rounds)"],
                  [[k, f"{med[k]:.3f}", f"{p99[k]:.3f}"] for k in med], rows,
                  machine_meta(load_before, bundle=str(bundle), rounds=rounds,
                               added_p50_ms=added))



def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", type=Path, required=True, help="a bundle with a state head")
    p.add_argument("--messages", type=int, default=1500)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--limit-s", type=float, default=30.0, help="time cap per case")
    args = p.parse_args()
    service.use_bundle_sizes(args.bundle)
    state_head_cost(args.bundle, args.messages, args.rounds, args.limit_s)


if __name__ == "__main__":
    main()
