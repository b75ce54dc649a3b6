"""A bad bundle is refused at load time with a message naming the file and the problem."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

from server.runtime import BundleError, OnlineFilter, Reading, load_bundle
from tests.world_models.conftest import tiny_model
from training.actor_critic import Actor
from training.export import ExportInputs, export_bundle

pytestmark = pytest.mark.slow


def _export(path, seed=0):
    model = tiny_model("vrkn", "fusion")
    torch.manual_seed(seed)
    actor = Actor(model.feature_dim, model.action_dim)
    info = ExportInputs(0.05, (-1.0, -1.0), (1.0, 1.0), {"proprio": (np.zeros(3), np.ones(3))},
                        {"note": "test"})
    return export_bundle(model, actor, info, path, seed=seed)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("bundles") / "good")


@pytest.fixture
def bundle_dir(pristine, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(pristine, dst)
    return dst


def edit_manifest(path, **changes):
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.update(changes)
    (path / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def test_good_bundle_loads(bundle_dir):
    bundle = load_bundle(bundle_dir)
    assert set(bundle.manifest.networks) >= {"transition", "actor", "reward", "encoder_image",
                                             "encoder_proprio", "decoder_proprio"}
    assert bundle.manifest.control_period == 0.05
    assert bundle.providers == ["CPUExecutionProvider"]


def test_missing_file(bundle_dir):
    (bundle_dir / "transition.onnx").unlink()
    with pytest.raises(BundleError, match=r"transition\.onnx: missing"):
        load_bundle(bundle_dir)


def test_missing_manifest(bundle_dir):
    (bundle_dir / "manifest.json").unlink()
    with pytest.raises(BundleError, match=r"manifest\.json: missing"):
        load_bundle(bundle_dir)


def test_altered_file(bundle_dir):
    with (bundle_dir / "actor.onnx").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match=r"actor\.onnx: SHA-256 does not match"):
        load_bundle(bundle_dir)


def test_wrong_format_version(bundle_dir):
    edit_manifest(bundle_dir, format_version=99)
    with pytest.raises(BundleError, match=r"manifest\.json: format_version 99 is not supported"):
        load_bundle(bundle_dir)


def test_shapes_that_do_not_fit(bundle_dir):
    manifest = edit_manifest(bundle_dir, latent_size=7)
    manifest["initial_belief"] = {"mean": [0.0] * 7, "var": [1.0] * 7}
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"\.onnx: input 'mean' has shape|\.onnx: .*\[N, 7\]"):
        load_bundle(bundle_dir)


def test_network_swapped_in_from_another_model(bundle_dir, tmp_path):
    other = _export(tmp_path / "other", seed=5)
    shutil.copy(other / "actor.onnx", bundle_dir / "actor.onnx")
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest["files"]["actor.onnx"] = hashlib.sha256(
        (bundle_dir / "actor.onnx").read_bytes()).hexdigest()  # hashes updated to match
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"actor\.onnx: output '\w+' differs from the parity"):
        load_bundle(bundle_dir)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="not a bundle directory"):
        load_bundle(tmp_path / "nowhere")
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(tmp_path)


def test_cuda_requested_without_cuda(bundle_dir):
    with pytest.raises(BundleError, match="CUDA was requested"):
        load_bundle(bundle_dir, providers="cuda")


def test_bad_readings_are_refused(bundle_dir):
    runtime = OnlineFilter(load_bundle(bundle_dir))
    good = Reading(np.zeros((1, 3), np.float32), np.ones(1, bool))
    with pytest.raises(ValueError, match="unknown sensor 'lidar'"):
        runtime.step(None, None, {"lidar": good})
    with pytest.raises(ValueError, match=r"sensor 'proprio': shape \[1, 4\], expected \[1, 3\]"):
        runtime.step(None, None, {"proprio": Reading(np.zeros((1, 4), np.float32),
                                                     np.ones(1, bool))})
    with pytest.raises(ValueError, match="sensor 'proprio': NaN"):
        runtime.step(None, None, {"proprio": Reading(np.full((1, 3), np.nan, np.float32),
                                                     np.ones(1, bool))})
    with pytest.raises(ValueError, match="sensor 'image': dtype float32, expected uint8"):
        runtime.step(None, None, {"image": Reading(np.zeros((1, 64, 64, 3), np.float32),
                                                   np.ones(1, bool))})
    belief = runtime.step(None, None, {"proprio": good})
    with pytest.raises(ValueError, match=r"action: float32 \[1, 3\], expected float32 \[1, 2\]"):
        runtime.step(belief, np.zeros((1, 3), np.float32), {"proprio": good})
    # A missing sensor is not an error: the prior passes through.
    after = runtime.step(belief, np.zeros((1, 2), np.float32),
                         {"proprio": Reading(np.zeros((1, 3), np.float32), np.zeros(1, bool))})
    expected = runtime.predict(belief, np.zeros((1, 2), np.float32))
    np.testing.assert_array_equal(after.mean, expected.mean)
