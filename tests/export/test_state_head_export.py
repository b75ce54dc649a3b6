"""The state head in the bundle: exported, verified, estimated by the runtime exactly as in
training, refused when its names disagree, and optional. Tolerance: 1e-4 (ONNX vs torch)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from server.runtime import BundleError, OnlineFilter, Reading, load_bundle
from tests.service.conftest import PROPRIO, STATE_NAMES, export_tiny_bundle

TOL = 1e-4


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("state-head")
    return export_tiny_bundle(root / "with"), export_tiny_bundle(root / "without", False)


def _belief(f: OnlineFilter, n: int = 3):
    rng = np.random.default_rng(0)
    readings = {"proprio": Reading(rng.standard_normal((n, PROPRIO)).astype(np.float32),
                                   np.ones(n, bool))}
    return f.step(None, None, readings)


def test_runtime_estimate_equals_the_training_estimate(bundles):
    from estimator.state_head import StateHead, StateHeadConfig
    from training.state_eval import estimate_states

    bundle = load_bundle(bundles[0], providers="cpu")
    assert bundle.manifest.state.names == STATE_NAMES
    f = OnlineFilter(bundle)
    belief = _belief(f)
    est = f.state(belief)
    assert est.mean.shape == est.var.shape == (3, len(STATE_NAMES))
    # The same head in torch (rebuilt as the export fixture builds it) through the same
    # divided differences: equal to ONNX precision.
    torch.manual_seed(0)
    from tests.world_models.conftest import tiny_model
    from training.actor_critic import Actor

    model = tiny_model("vrkn", "fusion")
    torch.manual_seed(0)
    Actor(model.feature_dim, model.action_dim)
    head = StateHead(model.feature_dim, STATE_NAMES, StateHeadConfig(hidden=16))
    head.set_scaling(torch.tensor([0.0, 0.5, 1.0]), torch.tensor([1.0, 0.2, 3.0]))
    ref = estimate_states(head.eval(), belief.mean, belief.var)
    np.testing.assert_allclose(est.mean, ref.mean, atol=TOL, rtol=TOL)
    np.testing.assert_allclose(est.var, ref.var, atol=TOL, rtol=TOL)
    decoded = f.decoded("proprio", belief)
    assert decoded.mean.shape == (3, PROPRIO) and bool((decoded.var > 0).all())


def test_a_bundle_without_a_state_head_loads_and_estimates_nothing(bundles):
    bundle = load_bundle(bundles[1], providers="cpu")
    assert bundle.manifest.state is None
    f = OnlineFilter(bundle)
    assert f.state(_belief(f)) is None


def _edit_manifest(src, dst, edit):
    import shutil

    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    edit(manifest)
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m["state"].update(names=["a", "b"]), "names and head disagree"),
    (lambda m: m["state"].update(names=["a", "a", "b"]), "unique"),
    (lambda m: m["state"].update(network="nope"), "not in 'networks'"),
    (lambda m: m.update(state=[1]), "must be an object"),
])
def test_state_names_that_disagree_with_the_head_are_refused(bundles, tmp_path, edit,
                                                             message):
    bad = _edit_manifest(bundles[0], tmp_path / "bad", edit)
    with pytest.raises(BundleError, match=message):
        load_bundle(bad, providers="cpu")


def test_a_head_graph_of_another_width_is_refused(bundles, tmp_path):
    # The manifest claims 2 outputs (and 2 names) while the ONNX graph gives 3.
    def edit(m):
        m["state"]["names"] = ["a", "b"]
        for out in m["networks"]["state_head"]["outputs"].values():
            out["shape"] = ["N", 2]

    bad = _edit_manifest(bundles[0], tmp_path / "bad", edit)
    with pytest.raises(BundleError, match=r"state_head\.onnx"):
        load_bundle(bad, providers="cpu")
