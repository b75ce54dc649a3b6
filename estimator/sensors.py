"""Per-sensor encoders and decoders that only ever touch the steps where a sensor is present.

Missing frames cost nothing: a sensor's valid steps are gathered once (``prepare``), the
encoder and decoder run on those rows only, and results are scattered back into
``[B, T, ...]`` tensors. Shared by every world model.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from estimator.batch import SensorBatch, SensorSpec
from estimator.networks import (
    ConvConfig,
    MLPConfig,
    gaussian_nll_unit,
    masked_image_nll,
    preprocess_image,
    sensor_decoder,
    sensor_encoder,
)


class PreparedSensor(NamedTuple):
    """One sensor's present steps, preprocessed."""

    index: Tensor  # [N] long, flat indices into B*T
    value: Tensor  # [N, 3, H, W] float images or [N, P] vectors
    mask: Tensor | None  # [N, H, W] bool visibility, or None
    valid: Tensor  # [B, T] bool


def scatter_rows(rows: Tensor, index: Tensor, total: int, fill: float) -> Tensor:
    """Place ``rows`` [N, D] at ``index`` of a [total, D] tensor filled with ``fill``
    (differentiable with respect to ``rows``)."""
    out = rows.new_full((total, *rows.shape[1:]), fill)
    return out.index_copy(0, index, rows)


class SensorStack(nn.Module):
    """Feature extractors and decoders for an ordered tuple of sensors."""

    def __init__(self, specs: tuple[SensorSpec, ...], decoder_in: int,
                 conv: ConvConfig = ConvConfig(), vector: MLPConfig = MLPConfig()):
        super().__init__()
        if not specs:
            raise ValueError("a world model needs at least one sensor")
        self.specs = tuple(specs)
        encoders, dims, decoders = [], [], []
        for spec in self.specs:
            enc, dim = sensor_encoder(spec.kind, spec.shape[0], conv, vector)
            encoders.append(enc)
            dims.append(dim)
            decoders.append(sensor_decoder(spec.kind, decoder_in, spec.shape[0], conv, vector))
        self.encoders = nn.ModuleList(encoders)
        self.decoders = nn.ModuleList(decoders)
        self.feature_dims = tuple(dims)

    def prepare(self, sensors: tuple[SensorBatch, ...], generator: torch.Generator | None = None,
                dequantize: bool = True) -> tuple[PreparedSensor, ...]:
        """Gather and preprocess the present steps of every sensor (once per batch)."""
        if len(sensors) != len(self.specs):
            raise ValueError(f"got {len(sensors)} sensors, the model has "
                             f"{[s.name for s in self.specs]}")
        out = []
        for spec, sb in zip(self.specs, sensors, strict=True):
            valid = sb.valid
            index = valid.reshape(-1).nonzero().squeeze(1)
            rows = sb.value.reshape(-1, *spec.shape).index_select(0, index)
            if spec.kind == "image":
                value = preprocess_image(rows, generator, dequantize)
            else:
                value = rows if rows.is_floating_point() else rows.float()
            mask = None
            if sb.mask is not None:
                mask = sb.mask.reshape(-1, *spec.shape[:2]).index_select(0, index)
            out.append(PreparedSensor(index, value, mask, valid))
        return tuple(out)

    def encode(self, k: int, prepared: PreparedSensor) -> Tensor:
        """Features of sensor ``k`` at its present steps, ``[N, feature_dims[k]]``."""
        return self.encoders[k](prepared.value)

    def reconstruction_nll(self, features: Tensor, prepared: tuple[PreparedSensor, ...]
                           ) -> tuple[Tensor, list[Tensor]]:
        """Unit-variance Gaussian NLL of every present observation, decoded from
        ``features`` ``[B*T, F]``. Returns the per-step total ``[B*T]`` (missing sensors add
        0) and each sensor's mean NLL over its present steps (for metrics)."""
        total = features.new_zeros(features.shape[0])
        per_sensor = []
        for spec, dec, p in zip(self.specs, self.decoders, prepared, strict=True):
            if p.index.numel() == 0:
                per_sensor.append(features.new_zeros(()))
                continue
            pred = dec(features.index_select(0, p.index))
            if spec.kind == "image":
                nll = masked_image_nll(pred, p.value, p.mask)
            else:
                nll = gaussian_nll_unit(pred, p.value, 1)
            total = total.index_add(0, p.index, nll)
            per_sensor.append(nll.mean())
        return total, per_sensor

    def decode_mean(self, k: int, features: Tensor) -> Tensor:
        """Decoded mean of sensor ``k`` (images in the preprocessed [-0.5, 0.5] scale)."""
        return self.decoders[k](features)
