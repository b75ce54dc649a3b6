"""The camera link of the simulated robot: frames are captured on the task's schedule and
delivered after a random latency on the robot's own (simulated) clock, so they arrive late
and, when latencies differ by more than the gap between frames, out of order.

Deterministic: the latencies come from a seeded generator and delivery is decided on the
simulated clock, never by wall-clock sleeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Latency:
    """Uniform latency in ``[low, high]`` seconds (0, 0: frames arrive when captured)."""

    low: float = 0.0
    high: float = 0.0

    def __post_init__(self) -> None:
        if not (0 <= self.low <= self.high) or not np.isfinite(self.high):
            raise ValueError(f"latency must satisfy 0 <= low <= high, got {self.low}:{self.high}")

    @classmethod
    def parse(cls, text: str) -> Latency:
        """``"0.05"`` (fixed) or ``"0.02:0.2"`` (uniform), in seconds."""
        try:
            parts = [float(p) for p in text.split(":")]
        except ValueError:
            raise ValueError(f"latency {text!r}: expected SECONDS or LOW:HIGH") from None
        if len(parts) == 1:
            return cls(parts[0], parts[0])
        if len(parts) == 2:
            return cls(parts[0], parts[1])
        raise ValueError(f"latency {text!r}: expected SECONDS or LOW:HIGH")

    @property
    def none(self) -> bool:
        return self.high == 0.0

    def draw(self, rng: np.random.Generator) -> float:
        return float(self.low if self.low == self.high else rng.uniform(self.low, self.high))


@dataclass
class Frame:
    captured: float  # the robot's clock when the frame was taken (its timestamp)
    arrival: float  # when it reaches the sender
    image: np.ndarray
    index: int  # capture order


@dataclass
class CameraLink:
    latency: Latency
    seed: int = 0
    in_flight: list[Frame] = field(default_factory=list)
    captured: int = 0
    delivered: list[Frame] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def capture(self, t: float, image: np.ndarray) -> None:
        self.in_flight.append(Frame(t, t + self.latency.draw(self._rng), image, self.captured))
        self.captured += 1

    def due(self, now: float) -> list[Frame]:
        """Frames that have arrived by ``now``, in arrival order (ties: capture order)."""
        ready = sorted((f for f in self.in_flight if f.arrival <= now + 1e-12),
                       key=lambda f: (f.arrival, f.index))
        if ready:
            done = {id(f) for f in ready}
            self.in_flight = [f for f in self.in_flight if id(f) not in done]
            self.delivered.extend(ready)
        return ready

    def out_of_order(self) -> int:
        """Delivered frames that arrived after a frame captured later than them."""
        count, newest = 0, -1
        for f in self.delivered:
            if f.index < newest:
                count += 1
            newest = max(newest, f.index)
        return count

    def latencies(self) -> np.ndarray:
        return np.array([f.arrival - f.captured for f in self.delivered])


NO_LATENCY = Latency()
