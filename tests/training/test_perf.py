"""Speed levers: they change no model output beyond their stated precision. bf16 autocast
tolerance: 2e-2 relative on conv outputs (bf16 keeps 8 bits of mantissa)."""

from __future__ import annotations

import sys

import pytest
import torch

from estimator.networks import ImageDecoder, ImageEncoder, set_conv_speed
from tests.training.conftest import tiny_world_model
from tests.world_models.conftest import synthetic_data
from training.perf import tune_malloc


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_tune_malloc_is_accepted_by_glibc():
    assert tune_malloc() is True


def test_bf16_and_channels_last_keep_conv_outputs_close_and_float32():
    torch.manual_seed(0)
    enc, dec = ImageEncoder(), ImageDecoder(30)
    x, f = torch.rand(4, 3, 64, 64) - 0.5, torch.randn(4, 30)
    ref_e, ref_d = enc(x), dec(f)
    for bf16, channels_last in ((True, False), (False, True), (True, True)):
        set_conv_speed(enc, bf16, channels_last)
        set_conv_speed(dec, bf16, channels_last)
        e, d = enc(x), dec(f)
        assert e.dtype == d.dtype == torch.float32
        tol = 2e-2 if bf16 else 1e-5
        torch.testing.assert_close(e, ref_e, rtol=tol, atol=tol * ref_e.abs().max().item())
        torch.testing.assert_close(d, ref_d, rtol=tol, atol=tol * ref_d.abs().max().item())
    set_conv_speed(enc)
    torch.testing.assert_close(enc(x), ref_e)  # back to float32 exactly


@pytest.mark.parametrize("name", ["vrkn", "rssm"])
def test_loss_posterior_is_a_detached_filtered_belief(name):
    model = tiny_world_model(name, action_dim=2, proprio=3)
    batch = model.to_batch(synthetic_data("fusion", batch=2, steps=5))
    loss, _, posterior = model.loss_and_posterior(batch, torch.Generator().manual_seed(0))
    with torch.no_grad():
        observed = model.observe(batch, torch.Generator().manual_seed(0))
    assert loss.requires_grad
    for a, b in zip(posterior, observed, strict=True):
        assert a.shape == b.shape and not a.requires_grad
    assert bool((posterior[1] > 0).all())  # VRKN's variance, the RSSM's std
