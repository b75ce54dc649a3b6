"""The loaded models (bundles) a session can choose, and the filter engine on each.

numpy + ONNX Runtime only (through ``server.runtime``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server.runtime import Bundle, OnlineFilter, load_bundle
from server.runtime.manifest import SensorInfo


@dataclass
class Model:
    """A verified bundle under a name, with its filter engine (``server.runtime.OnlineFilter``,
    the one batched engine the offline runtime uses too)."""

    name: str
    bundle: Bundle
    digest: str  # SHA-256 of manifest.json: identifies the bundle in snapshots

    def __post_init__(self) -> None:
        self.engine = OnlineFilter(self.bundle)

    @property
    def manifest(self):
        return self.bundle.manifest

    def sensor(self, name: str) -> SensorInfo | None:
        for s in self.manifest.sensors:
            if s.name == name:
                return s
        return None

    def encode(self, sensor: str, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Encoder outputs (w, var) ``[N, L]`` for a batch of raw observations."""
        return self.bundle.encode(sensor, batch)

    @property
    def state_names(self) -> tuple[str, ...]:
        state = self.manifest.state
        return () if state is None else state.names


def parse_bundle_spec(spec: str) -> tuple[str, Path]:
    """``NAME=PATH`` or ``PATH`` (the name is then the folder's name)."""
    if "=" in spec:
        name, path = spec.split("=", 1)
        return name.strip(), Path(path)
    path = Path(spec)
    return path.resolve().name, path


def load_models(specs: Sequence[str], providers: str = "cpu", threads: int = 1
                ) -> dict[str, Model]:
    """Load and verify every bundle; the first is the default model. BundleError on any."""
    models: dict[str, Model] = {}
    for spec in specs:
        name, path = parse_bundle_spec(spec)
        if not name or name in models:
            raise ValueError(f"bundle {spec!r}: the model name {name!r} is empty or repeated")
        bundle = load_bundle(path, providers=providers, threads=threads)
        digest = hashlib.sha256((path / "manifest.json").read_bytes()).hexdigest()
        models[name] = Model(name, bundle, digest)
    return models
