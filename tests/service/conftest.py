"""A small untrained bundle (exported once per test session) and helpers to feed it."""

from __future__ import annotations

import numpy as np
import pytest

PERIOD = 0.05
PROPRIO = 3  # tests.world_models.conftest.PROPRIO_DIM


def export_tiny_bundle(path):
    import torch

    from tests.world_models.conftest import tiny_model
    from training.actor_critic import Actor
    from training.export import ExportInputs, export_bundle

    model = tiny_model("vrkn", "fusion")
    torch.manual_seed(0)
    actor = Actor(model.feature_dim, model.action_dim)
    info = ExportInputs(PERIOD, (-1.0, -1.0), (1.0, 1.0),
                        {"proprio": (np.zeros(PROPRIO), np.ones(PROPRIO))}, {"note": "test"})
    return export_bundle(model, actor, info, path, seed=0)


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory):
    return export_tiny_bundle(tmp_path_factory.mktemp("service") / "tiny")


@pytest.fixture(scope="session")
def models(bundle_dir):
    from server.models import load_models

    return load_models([f"tiny={bundle_dir}"], providers="cpu", threads=1)


@pytest.fixture(scope="session")
def model(models):
    return models["tiny"]


def random_stream(ticks: int, seed: int = 0, image_every: int = 3):
    """Messages of a robot: proprio every tick, an image every ``image_every`` ticks (late
    in the tick), an action per tick. Returns a list of (kind, name, t, value)."""
    rng = np.random.default_rng(seed)
    events = []
    for k in range(ticks):
        base = k * PERIOD
        events.append(("obs", "proprio", base + 0.011,
                       rng.standard_normal(PROPRIO).astype(np.float32)))
        if k % image_every == 0:
            events.append(("obs", "image", base + 0.023,
                           rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)))
        events.append(("act", "action", base + 0.04,
                       rng.uniform(-1, 1, 2).astype(np.float32)))
    return events
