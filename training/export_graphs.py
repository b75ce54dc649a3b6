"""The networks of an exported bundle, as small export-ready torch modules.

Each wraps a trained VRKN part with its pre- and post-processing baked in, so the serving
runtime feeds raw sensor values and gets results in sensor units:

- ``encoder_<sensor>``: raw observation -> (w, var). Images: uint8 [N, H, W, 3], 5-bit
  preprocessing without dequantisation noise. Vectors: float32 [N, P], normalised with the
  training statistics inside the graph.
- ``transition``: (posterior mean [N, L], action [N, A]) -> (A, b, q), MC dropout off.
- ``actor``: (features [N, L], noise [N, A]) -> (mode, sample) with
  sample = tanh(mean + std * noise): the caller draws the noise (zeros give the mode).
- ``reward``: features -> reward [N].
- ``decoder_<sensor>``: features -> reconstruction in sensor units (images: float
  [N, H, W, 3] in 0..255; vectors de-normalised).
- ``state_head`` (when the run has one): features -> (mean, var) of the simulator state in
  physical units; the runtime propagates a belief through it (``server.runtime.uncertainty``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from estimator.batch import SensorSpec
from estimator.networks import preprocess_image
from estimator.vrkn import VRKN


class EncoderGraph(nn.Module):
    def __init__(self, model: VRKN, index: int, norm_mean: Tensor | None,
                 norm_std: Tensor | None):
        super().__init__()
        self.spec: SensorSpec = model.specs[index]
        self.encoder = model.sensors.encoders[index]
        self.head = model.heads[index]
        self.register_buffer("norm_mean", norm_mean if norm_mean is not None else torch.zeros(0))
        self.register_buffer("norm_std", norm_std if norm_std is not None else torch.zeros(0))

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        if self.spec.kind == "image":
            x = preprocess_image(obs, dequantize=False)
        else:
            x = obs
            if self.norm_mean.numel():
                x = (x - self.norm_mean) / self.norm_std
        return self.head(self.encoder(x))


class TransitionGraph(nn.Module):
    def __init__(self, model: VRKN):
        super().__init__()
        self.net = model.transition

    def forward(self, mean: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.net(mean, action, dropout=False)
        return out.a, out.b, out.q


class ActorGraph(nn.Module):
    """Needs an actor with ``distribution(features) -> (mean, std)`` before a tanh."""

    def __init__(self, actor: nn.Module):
        super().__init__()
        self.actor = actor

    def forward(self, features: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        mean, std = self.actor.distribution(features)
        return torch.tanh(mean), torch.tanh(mean + std * noise)


class RewardGraph(nn.Module):
    def __init__(self, model: VRKN):
        super().__init__()
        self.head = model.reward_head

    def forward(self, features: Tensor) -> Tensor:
        return self.head(features).squeeze(-1)


class StateHeadGraph(nn.Module):
    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        mean, var = self.head(features)
        return mean, var


class DecoderGraph(nn.Module):
    def __init__(self, model: VRKN, index: int, norm_mean: Tensor | None,
                 norm_std: Tensor | None):
        super().__init__()
        self.spec: SensorSpec = model.specs[index]
        self.decoder = model.sensors.decoders[index]
        self.register_buffer("norm_mean", norm_mean if norm_mean is not None else torch.zeros(0))
        self.register_buffer("norm_std", norm_std if norm_std is not None else torch.zeros(0))

    def forward(self, features: Tensor) -> Tensor:
        x = self.decoder(features)
        if self.spec.kind == "image":
            return ((x + 0.5) * 256.0).clamp(0.0, 255.0).movedim(-3, -1)
        if self.norm_mean.numel():
            x = x * self.norm_std + self.norm_mean
        return x
