"""``python -m clients.robot_sim --task cartpole_swingup-fusion --server 127.0.0.1:50051``

Runs one episode of the task as the robot, in closed loop through the service, and prints
a summary: return, hidden-state tracking with coverage, camera delivery, latency percentiles.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from clients.robot_sim.camera import Latency


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m clients.robot_sim", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="cartpole_swingup-fusion",
                   help="a task of the suite with the model's sensors (a -fusion task)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--server", metavar="HOST:PORT", help="the service's gRPC address")
    where.add_argument("--http", metavar="URL", help="the service's HTTP address")
    where.add_argument("--in-process", metavar="BUNDLE", dest="in_process",
                       help="no service: the bundle's online filter in this process")
    p.add_argument("--token", default=None, help="bearer token (default: $VRKN_TOKEN)")
    p.add_argument("--model", default=None, help="model name on the server (default: its "
                   "default model)")
    p.add_argument("--encoding", choices=["png", "jpeg", "raw"], default="png",
                   help="how camera frames are sent")
    p.add_argument("--camera-latency", type=Latency.parse, default=Latency(),
                   metavar="S|LO:HI", help="camera latency in seconds, fixed or uniform "
                   "(e.g. 0.02:0.2); frames then arrive late and out of order [0]")
    p.add_argument("--seed", type=int, default=0, help="task, frame schedule and latency seed")
    p.add_argument("--episode-length", type=int, default=None,
                   help="environment steps (default: the task's, 1000)")
    p.add_argument("--action-repeat", type=int, default=None,
                   help="must match training (default: the task's, 2)")
    p.add_argument("--out", type=Path, default=None, help="write summary.json, episode.npz, "
                   "tracking.png and video.gif here")
    p.add_argument("--video-ticks", type=int, default=150,
                   help="ticks in the video (with --out; 0: no video)")
    p.add_argument("--bundle", type=Path, default=None,
                   help="a local copy of the served bundle: decoded images in the video, "
                   "and the reference for --compare-in-process")
    p.add_argument("--compare-in-process", action="store_true",
                   help="also run the same seed without latency on --bundle in this "
                   "process and report its return")
    p.add_argument("--compare-random", action="store_true",
                   help="also report the return of random actions on the same seed")
    p.add_argument("--timeout", type=float, default=5.0, help="deadline per call, seconds")
    p.add_argument("--wait-s", type=float, default=30.0,
                   help="wait this long for the server to be ready")
    p.add_argument("--realtime", action="store_true", help="pace ticks at the control period")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from clients.errors import EstimatorError
    from clients.robot_sim import report, sim

    if args.compare_in_process and args.bundle is None and args.in_process is None:
        print("error: --compare-in-process needs --bundle", file=sys.stderr)
        return 2
    if args.in_process and not args.camera_latency.none:
        print("error: the in-process reference takes messages in order; camera latency "
              "needs the service (--server or --http)", file=sys.stderr)
        return 2
    try:
        if args.in_process:
            backend = sim.in_process_backend(args.in_process)
            name = "in-process"
        else:
            backend = sim.service_backend(args.server, args.http, args.token, args.model,
                                          args.encoding, args.timeout, args.wait_s)
            name = f"grpc {args.server}" if args.server else f"http {args.http}"
        rec = sim.simulate(args.task, backend, args.seed, args.camera_latency,
                           args.episode_length, args.action_repeat,
                           args.video_ticks if args.out else 0, args.realtime)
        timings = backend.timings.percentiles()
        if hasattr(backend, "client"):
            backend.client.close()
        info = {"task": args.task, "seed": args.seed, "backend": name,
                "camera_latency_s": [args.camera_latency.low, args.camera_latency.high],
                "encoding": args.encoding, "timings": timings}
        summary = report.summarise(rec, backend.control_period, info)
        ref_dir = args.bundle or args.in_process
        if args.compare_in_process:
            ref = sim.simulate(args.task, sim.in_process_backend(str(ref_dir)), args.seed,
                               Latency(), args.episode_length, args.action_repeat)
            rs = report.summarise(ref, backend.control_period, {**info, "timings": {}})
            st = rs["state"] or {}
            summary["reference"] = {"return": rs["return"],
                                    "hidden_nrmse": st.get("hidden_nrmse"),
                                    "hidden_cov90": st.get("hidden_cov90")}
        if args.compare_random:
            summary["random_return"] = sim.random_return(args.task, args.seed,
                                                         args.episode_length,
                                                         args.action_repeat)
        paths = {}
        if args.out:
            decode = None
            if ref_dir is not None:
                from server.runtime import load_bundle

                bundle = load_bundle(ref_dir, providers="cpu", threads=1)
                if bundle.has_decoder("image"):
                    def decode(means):
                        return bundle.decode("image", means)
            paths = report.write_outputs(rec, summary, args.out, backend.control_period,
                                         decode)
    except (EstimatorError, KeyError, ValueError, OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary, indent=1, default=float))
    else:
        print(report.format_summary(summary))
        for kind, path in paths.items():
            print(f"{kind + ':':<21}{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
