"""Every world model through the one interface: shapes, dtypes, gradients, bad input."""

from __future__ import annotations

import pytest
import torch

from estimator.batch import SensorBatch
from estimator.models import make_world_model
from estimator.world_model import flatten_states
from tests.world_models.conftest import (
    ACTION_DIM,
    SENSOR_SETS,
    make_batch,
    synthetic_data,
    tiny_model,
)

B, T, H = 3, 6, 4


def one_step(batch, t: int) -> tuple[SensorBatch, ...]:
    return tuple(SensorBatch(s.value[:, t], s.valid[:, t],
                             None if s.mask is None else s.mask[:, t]) for s in batch.sensors)


@pytest.mark.parametrize("sensors", ["pixels", "fusion"])
def test_interface_shapes(model_name, sensors):
    model = tiny_model(model_name, sensors)
    batch = make_batch(model, synthetic_data(sensors, B, T))
    g = torch.Generator().manual_seed(0)
    loss, metrics = model.loss(batch, g)
    assert loss.shape == () and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert {"loss", "kl", "recon", "reward_nll"} <= set(metrics)
    assert all(isinstance(v, float) for v in metrics.values())

    posterior = model.observe(batch, g)
    feats = model.features(posterior)
    assert feats.shape == (B, T, model.feature_dim) and feats.dtype == torch.float32
    assert model.reward(feats).shape == (B, T)

    start = flatten_states(posterior)
    imagined = model.imagine(start, lambda f: torch.tanh(f[:, :ACTION_DIM]), H, g)
    assert imagined.features.shape == (H + 1, B * T, model.feature_dim)
    assert imagined.actions.shape == (H, B * T, ACTION_DIM)
    torch.testing.assert_close(imagined.features[0], model.features(start))

    state = model.filter_step(None, None, one_step(batch, 0), g)
    state = model.filter_step(state, batch.action[:, 0], one_step(batch, 1), g)
    assert model.features(state).shape == (B, model.feature_dim)
    assert model.features(model.init_state(B)).shape == (B, model.feature_dim)


@pytest.mark.parametrize("sensors", ["pixels", "fusion"])
def test_gradients_reach_every_parameter(model_name, sensors):
    # Free nats off: a KL under the free-nats floor passes no gradient to the prior.
    model = tiny_model(model_name, sensors, free_nats=0.0)
    batch = make_batch(model, synthetic_data(sensors, B, T, occlusion=True))
    loss, _ = model.loss(batch, torch.Generator().manual_seed(1))
    loss.backward()
    missing = [n for n, p in model.named_parameters()
               if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not missing, f"no gradient reaches {missing}"


def test_imagination_gradients_reach_the_policy(model_name):
    model = tiny_model(model_name, "proprio")
    batch = make_batch(model, synthetic_data("proprio", B, T))
    start = flatten_states(model.observe(batch))
    policy = torch.nn.Linear(model.feature_dim, ACTION_DIM)
    imagined = model.imagine(start, lambda f: torch.tanh(policy(f)), H)
    model.reward(imagined.features).sum().backward()
    assert policy.weight.grad is not None and bool(policy.weight.grad.abs().sum() > 0)


def test_encoders_run_only_on_valid_frames(model_name, monkeypatch):
    model = tiny_model(model_name, "fusion")
    data = synthetic_data("fusion", B, T, image_rate=0.3)
    batch = make_batch(model, data)
    seen = []
    encoder = model.sensors.encoders[1]
    monkeypatch.setattr(encoder, "forward",
                        lambda x, f=encoder.forward: seen.append(x.shape[0]) or f(x))
    model.loss(batch)
    assert seen == [int(data["valid/image"].sum())]


def test_missing_key_and_wrong_shape_are_named():
    model = tiny_model("vrkn", "fusion")
    data = synthetic_data("fusion", B, T)
    broken = dict(data)
    del broken["proprio"]
    with pytest.raises(ValueError, match=r"missing key 'proprio'.*\[3, 6, 3\]"):
        model.to_batch(broken)
    broken = {**data, "image": data["image"][:, :, :32]}
    with pytest.raises(ValueError,
                       match=r"batch\['image'\] has shape .*expected \[3, 6, 64, 64, 3\]"):
        model.to_batch(broken)
    broken = {**data, "action": data["action"][..., :1]}
    with pytest.raises(ValueError, match=r"batch\['action'\].*\[B, T, 2\]"):
        model.to_batch(broken)
    broken = {**data, "valid/image": data["valid/image"][:, :2]}
    with pytest.raises(ValueError, match=r"valid/image"):
        model.to_batch(broken)


def test_unknown_model_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"choose one of.*mcd_rssm.*vrkn"):
        make_world_model("transformer", SENSOR_SETS["pixels"], ACTION_DIM)


def test_masked_image_likelihood_ignores_occluded_pixels():
    from estimator.networks import masked_image_nll

    g = torch.Generator().manual_seed(0)
    pred = torch.rand(2, 3, 64, 64, generator=g)
    target = torch.rand(2, 3, 64, 64, generator=g)
    mask = torch.rand(2, 64, 64, generator=g) > 0.5
    changed = target.clone()
    changed[~mask.unsqueeze(1).expand_as(target)] += 10.0  # only occluded pixels change
    torch.testing.assert_close(masked_image_nll(pred, target, mask),
                               masked_image_nll(pred, changed, mask))
    # Scaled to the full pixel count: a fully visible mask equals no mask.
    full = torch.ones(2, 64, 64, dtype=torch.bool)
    torch.testing.assert_close(masked_image_nll(pred, target, full),
                               masked_image_nll(pred, target, None))
    assert not torch.allclose(masked_image_nll(pred, changed, None),
                              masked_image_nll(pred, target, None))
