"""Each world model overfits a fixed small fusion batch within a few hundred CPU steps.

The images are learnable on purpose (a moving colour blob on a plain background), so
the decoders can fit them with tiny networks. The unit-variance Gaussian NLL has a
constant floor (0.5 log 2 pi per pixel), so the margin is stated on the excess above it:
the image NLL's excess falls below EXCESS_LEFT of its start, and the total loss falls."""

from __future__ import annotations

import math

import pytest
import torch

from tests.world_models.conftest import make_batch, synthetic_data, tiny_model

STEPS = 150
EXCESS_LEFT = 0.25
IMAGE_FLOOR = 64 * 64 * 3 * 0.5 * math.log(2 * math.pi)


def blob_images(batch: int, steps: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    centre = torch.rand(batch, 1, 2, generator=g) * 40 + 12
    velocity = torch.randn(batch, 1, 2, generator=g)
    pos = centre + velocity * torch.arange(steps).view(1, steps, 1)
    d2 = (yy - pos[..., 0, None, None]).square() + (xx - pos[..., 1, None, None]).square()
    blob = (d2 < 64).float()  # [B, T, 64, 64]
    colour = torch.tensor([220.0, 60.0, 30.0])
    img = 40 + blob[..., None] * (colour - 40)
    return img.to(torch.uint8)


@pytest.mark.slow
def test_each_model_overfits_a_small_batch(model_name):
    model = tiny_model(model_name, "fusion")
    data = synthetic_data("fusion", batch=4, steps=10, seed=3)
    data["image"] = blob_images(4, 10, seed=3) * data["valid/image"][..., None, None, None]
    batch = make_batch(model, data)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses, image_excess = [], []
    for _ in range(STEPS):
        loss, metrics = model.loss(batch, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        image_excess.append(metrics["nll/image"] - IMAGE_FLOOR)
    final_excess = sum(image_excess[-10:]) / 10
    assert final_excess < EXCESS_LEFT * image_excess[0], \
        f"{model_name}: image NLL excess {image_excess[0]:.1f} -> {final_excess:.1f}"
    assert sum(losses[-10:]) / 10 < losses[0]
