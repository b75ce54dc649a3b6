"""Speed levers of a training update on this CPU: full agent updates per second.

    python bench/training_speed.py [--updates 8] [--rounds 2] [--preset cpu]

One update is what the training loop runs per gradient step: the world-model step, the
state-head probe and the actor/critic step on imagined rollouts (``DreamerAgent.update``),
at the preset's sizes (``cpu``: batch 32x32, VRKN latent 64, conv depth 16, 256 imagination
starts) on cartpole_swingup-fusion shaped data (a frame every 4-8 steps, 1-d proprio, 5-d
state). Each lever runs in its own process (the allocator setting must be made before the
first large allocation) and the levers alternate over ``--rounds`` so that a change of load
hits all of them. Reports the median seconds per update and the ratio to the baseline
(the ``cpu`` preset as it was before the levers: default allocator, float32, one thread).
Writes bench/results/training_speed.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.results_io import machine_meta, write_results

# "_second_pass": the update as it was before: imagination starts from a second filter
# pass (``observe``) instead of the loss's own posterior.
LEVERS: dict[str, dict[str, object]] = {
    "before (second filter pass, default malloc, fp32)": {"_second_pass": True},
    "posterior reuse (default malloc, fp32)": {},
    "malloc": {"perf.malloc": True},
    "malloc + bf16": {"perf.malloc": True, "perf.bf16": True},
    "malloc + channels-last": {"perf.malloc": True, "perf.channels_last": True},
    "malloc + bf16 + channels-last": {"perf.malloc": True, "perf.bf16": True,
                                      "perf.channels_last": True},
    "malloc + compile conv": {"perf.malloc": True, "perf.compile_conv": True},
    "malloc + bf16 + 2 threads": {"perf.malloc": True, "perf.bf16": True, "threads": 2},
    "malloc + bf16 every world-model net": {"perf.malloc": True, "perf.bf16_model": True},
    "malloc + bf16 world model + actor-critic": {"perf.malloc": True, "perf.bf16_model": True,
                                                 "perf.bf16_actor_critic": True},
    # Levers that change what one update learns from (not at equal work): their cost only.
    "malloc + bf16 / batch 16x32": {"perf.malloc": True, "perf.bf16": True, "replay.batch": 16},
    "malloc + bf16 / sequence 32x16": {"perf.malloc": True, "perf.bf16": True,
                                      "replay.length": 16},
    "malloc + bf16 / 128 imagination starts": {"perf.malloc": True, "perf.bf16": True,
                                              "dreamer.imag_starts": 128},
    "malloc + bf16 / nets hidden 64": {"perf.malloc": True, "perf.bf16": True,
                                      "wm": {"hidden": 64, "vector.hidden": 64,
                                             "reward.hidden": 64},
                                      "dreamer.hidden": 64},
}


def synthetic_batch(batch: int, length: int, seed: int = 0) -> dict:
    import numpy as np

    rng = np.random.default_rng(seed)
    valid = np.zeros((batch, length), bool)
    for b in range(batch):  # the missing-frame schedule: next frame 4..8 steps later
        t = int(rng.integers(0, 4))
        while t < length:
            valid[b, t] = True
            t += int(rng.integers(4, 9))
    image = rng.integers(0, 256, (batch, length, 64, 64, 3), dtype=np.uint8)
    return {"image": image * valid[..., None, None, None].astype(np.uint8),
            "valid/image": valid, "proprio": rng.normal(size=(batch, length, 1)).astype(
                np.float32), "valid/proprio": np.ones((batch, length), bool),
            "action": rng.uniform(-1, 1, (batch, length, 1)).astype(np.float32),
            "reward": rng.uniform(0, 1, (batch, length)).astype(np.float32),
            "is_first": np.zeros((batch, length), bool),
            "state": rng.normal(size=(batch, length, 5)).astype(np.float32)}


def child(preset: str, overrides: dict, updates: int) -> dict:
    import torch

    from estimator.batch import image_sensor, vector_sensor
    from estimator.state_head import StateHead
    from training.loop import default_model_factory, make_agent
    from training.perf import apply_speed, tune_malloc
    from training.presets import resolve

    overrides = dict(overrides)
    second_pass = bool(overrides.pop("_second_pass", False))
    config = resolve(["dreamer", preset], {"perf.malloc": False, "perf.bf16": False,
                                           **overrides})
    if config.perf.malloc:
        tune_malloc()
    torch.set_num_threads(config.threads or 1)
    specs = (vector_sensor("proprio", 1), image_sensor())
    torch.manual_seed(0)
    model = default_model_factory(config, specs, 1)
    if second_pass:
        own = model.loss_and_posterior

        def loss_then_observe(batch, generator=None):
            loss, metrics, _ = own(batch, generator)
            with torch.no_grad():
                return loss, metrics, model.observe(batch, generator)

        model.loss_and_posterior = loss_then_observe
    agent = make_agent(config, model)
    agent.attach_state_head(StateHead(model.feature_dim, tuple(f"s{i}" for i in range(5)),
                                      config.state))
    apply_speed(model, agent.actor_critic(), config.perf)
    data = synthetic_batch(config.replay.batch, config.replay.length)
    state = torch.as_tensor(data.pop("state"))
    batch = model.to_batch(data)
    g = torch.Generator().manual_seed(0)
    warmup = 4 if config.perf.compile_conv else 2
    times = []
    for i in range(warmup + updates):
        start = time.perf_counter()
        agent.update(batch, g, state)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times),
            "threads": torch.get_num_threads(), "updates": updates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=8, help="timed updates per process")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--levers", default="",
                        help="semicolon-separated subset (default all); the baseline is the "
                        "first selected in the order of LEVERS")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.preset, json.loads(args.child), args.updates)))
        return
    names = [n for n in LEVERS if not args.levers or n in args.levers.split(";")]
    load = os.getloadavg()
    times: dict[str, list[float]] = {n: [] for n in names}
    loads: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names:
            out = subprocess.run(
                [sys.executable, __file__, "--preset", args.preset, "--updates",
                 str(args.updates), "--child", json.dumps(LEVERS[name])],
                check=True, capture_output=True, text=True, env={**os.environ})
            row = json.loads(out.stdout.strip().splitlines()[-1])
            times[name].append(row["median_s"])
            loads[name].append(os.getloadavg()[0])
            print(f"round {r + 1}  {name:42s} {row['median_s']:.3f} s/update  "
                  f"load {loads[name][-1]:.2f}", flush=True)
    base = statistics.median(times[names[0]])
    rows, lines = [], []
    for name in names:
        med = statistics.median(times[name])
        rows.append({"lever": name, "median_s": med, "runs": times[name],
                     "updates_per_min": 60 / med, "speedup": base / med,
                     "loadavg": loads[name]})
        lines.append([name, f"{med:.3f}", f"{60 / med:.0f}", f"{base / med:.2f}x",
                      f"{statistics.median(loads[name]):.2f}"])
        print(f"{name:42s} median {med:.3f} s  {60 / med:6.0f} updates/min  "
              f"{base / med:.2f}x")
    write_results("training_speed", f"Full agent updates, preset {args.preset} "
                  f"(python bench/training_speed.py --rounds {args.rounds} --updates "
                  f"{args.updates})", ["lever", "s/update (median)", "updates/min",
                                       "vs baseline", "load"], lines, rows,
                  machine_meta(load, preset=args.preset))


if __name__ == "__main__":
    main()
