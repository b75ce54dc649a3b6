"""Real servers on 127.0.0.1 (free ports) for the client tests: the service tests' tiny
bundle, and a tiny untrained bundle with the shapes of ``cartpole_swingup-fusion`` for the
robot-sim."""

from __future__ import annotations

import numpy as np
import pytest

from tests.service.conftest import TOKEN, ServerProcess, export_tiny_bundle

CARTPOLE_PERIOD = 0.02  # cartpole control timestep 0.01 x action repeat 2


def export_cartpole_bundle(path):
    """An untrained tiny VRKN + actor with cartpole_swingup-fusion's sensors and action."""
    import torch

    from estimator.batch import image_sensor, vector_sensor
    from estimator.models import make_world_model
    from estimator.state_head import StateHead, StateHeadConfig
    from tests.world_models.conftest import tiny_overrides
    from training.actor_critic import Actor
    from training.envs.state import STATE_ALIASES
    from training.export import ExportInputs, export_bundle

    torch.manual_seed(0)  # parameter initialisation
    model = make_world_model("vrkn", (vector_sensor("proprio", 1), image_sensor()), 1,
                             **tiny_overrides("vrkn"))
    torch.manual_seed(1)
    actor = Actor(model.feature_dim, model.action_dim)
    head = StateHead(model.feature_dim, STATE_ALIASES["cartpole"], StateHeadConfig(hidden=16))
    head.set_scaling(torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0]),
                     torch.tensor([0.5, 0.7, 0.7, 1.0, 3.0]))
    info = ExportInputs(CARTPOLE_PERIOD, (-1.0,), (1.0,),
                        {"proprio": (np.zeros(1), np.full(1, 0.5))}, {"note": "test"})
    return export_bundle(model.eval(), actor.eval(), info, path, seed=0, state_head=head)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    return export_tiny_bundle(tmp_path_factory.mktemp("clients") / "tiny")


@pytest.fixture(scope="session")
def cartpole_bundle(tmp_path_factory):
    return export_cartpole_bundle(tmp_path_factory.mktemp("clients") / "cartpole")


@pytest.fixture(scope="module")
def server(tiny_bundle, tmp_path_factory):
    """The tiny bundle behind a token, with small limits."""
    proc = ServerProcess(tiny_bundle, tmp_path_factory.mktemp("server"), "--token", TOKEN,
                         "--max-message-bytes", "100000")
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="module")
def cartpole_server(cartpole_bundle, tmp_path_factory):
    proc = ServerProcess(cartpole_bundle, tmp_path_factory.mktemp("server"))
    yield proc
    assert proc.stop() == 0, proc.log()
