"""A robot controller through the service, in a few dozen lines.

    python -m clients.example_controller --server 127.0.0.1:50051 --ticks 50

The "robot" here is a stand-in (random sensor readings of the model's shapes): replace
``read_sensors`` and ``apply`` by your robot's drivers. Proprio goes out every tick, the
camera every third tick; the service fuses them and answers with the policy's action.
"""

from __future__ import annotations

import argparse

import numpy as np

from clients import EstimatorClient


def read_sensors(model, tick: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    readings = {}
    for s in model.sensors:
        if s.kind == "image" and tick % 3 == 0:
            readings[s.name] = rng.integers(0, 256, s.shape, dtype=np.uint8)
        elif s.kind == "vector":
            readings[s.name] = rng.standard_normal(s.shape).astype(np.float32)
    return readings


def apply(action: np.ndarray) -> None:
    pass  # send the command to the motors


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", default="127.0.0.1:50051")
    p.add_argument("--ticks", type=int, default=50)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    with EstimatorClient(args.server, timeout=2.0) as client:  # token: $VRKN_TOKEN
        model = client.model()  # the server's default model
        period = model.control_period_s
        session = client.create_session(start_time=0.0).session_id
        try:
            for tick in range(min(args.ticks, 10_000)):
                t = tick * period + 0.5 * period  # the robot's clock, mid-tick
                for sensor, value in read_sensors(model, tick, rng).items():
                    client.send_message(session, sensor, t, value)  # images as PNG
                action = client.get_action(session, t)  # recorded as applied
                apply(action.values)
            belief = client.get_belief(session)
            estimate = {k: np.round(v, 3).tolist() for k, v in belief.decoded.items()}
            print(f"tick {belief.tick}: action {np.round(action.values, 3).tolist()}, "
                  f"decoded {estimate}, predicted reward {belief.reward:.3f}")
        finally:
            client.close_session(session)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
