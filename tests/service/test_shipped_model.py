"""The model shipped in models/: small, verified at load, and what ``python -m server``
serves when no bundle is given; one session through it estimates the cartpole's state."""

from __future__ import annotations

import numpy as np

from proto.vrkn.estimator.v1 import estimator_pb2 as pb
from server.app import SHIPPED_BUNDLE
from tests.service.conftest import ServerProcess

CARTPOLE = ("cart_position", "pole_angle_cos", "pole_angle_sin", "cart_velocity",
            "pole_angular_velocity")
MAX_BYTES = 10 * 1024 * 1024


def test_the_shipped_bundle_is_small_and_verifies():
    from server.runtime import load_bundle

    files = [p for p in SHIPPED_BUNDLE.iterdir() if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= MAX_BYTES
    bundle = load_bundle(SHIPPED_BUNDLE, providers="cpu")  # hashes, shapes, parity
    assert bundle.manifest.state.names == CARTPOLE
    assert bundle.manifest.training_config["task"] == "cartpole_swingup-fusion"


def test_python_m_server_without_a_bundle_serves_the_shipped_model(tmp_path):
    import grpc

    from proto.vrkn.estimator.v1 import estimator_pb2_grpc as pb_grpc

    proc = ServerProcess(None, tmp_path)
    try:
        with grpc.insecure_channel(proc.grpc_target) as channel:
            stub = pb_grpc.EstimatorStub(channel)
            models = stub.ListModels(pb.ListModelsRequest()).models
            assert [m.name for m in models] == [SHIPPED_BUNDLE.name]
            assert tuple(models[0].state_names) == CARTPOLE
            sid = stub.CreateSession(pb.CreateSessionRequest(start_time=0.0)).session_id
            ack = stub.SendMessage(pb.SensorMessage(
                session_id=sid, sensor="proprio", timestamp=0.01, sequence=1,
                vector=pb.FloatVector(values=[0.05]), return_belief=True))
            state = ack.belief.state
            assert tuple(state.names) == CARTPOLE
            mean, var = np.asarray(state.mean), np.asarray(state.var)
            assert np.isfinite(mean).all() and (var > 0).all()
            # The cart position is measured: the estimate follows the reading, confidently.
            assert abs(mean[0] - 0.05) < 3 * np.sqrt(var[0]) and np.sqrt(var[0]) < 0.1
            # No camera frame yet: the pole angle is unknown, and the service says so.
            assert np.sqrt(var[1]) > 0.3 and np.sqrt(var[2]) > 0.3
            action = stub.GetAction(pb.ActionRequest(session_id=sid, timestamp=0.01))
            assert len(action.values) == 1 and -1.0 <= action.values[0] <= 1.0
    finally:
        assert proc.stop() == 0, proc.log()
    assert "serving the shipped model" in proc.log()
