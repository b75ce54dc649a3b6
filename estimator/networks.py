"""Encoders, decoders and heads shared by the world models (docs/design.md §3.1).

Each network owns its defaults in a frozen dataclass. Images enter as uint8 ``[N, H, W, 3]``
and are preprocessed here (5 bits, dequantisation noise in training).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

ACTIVATIONS = {"relu": nn.ReLU, "elu": nn.ELU, "silu": nn.SiLU, "tanh": nn.Tanh}


def activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")\
            from None


def preprocess_image(image: Tensor, generator: torch.Generator | None = None,
                     dequantize: bool = True) -> Tensor:
    """uint8 [..., H, W, 3] -> float [..., 3, H, W] in [-0.5, 0.5): 5 bits, floor(x/8)/32 - 0.5,
    plus U[0, 1/32) dequantisation noise when ``dequantize`` (training), docs/design.md §3.1."""
    if image.dtype != torch.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype} (shape {tuple(image.shape)})")
    x = torch.div(image, 8, rounding_mode="floor").float() / 32.0 - 0.5
    if dequantize:
        x = x + torch.rand(x.shape, generator=generator, device=x.device) / 32.0
    return x.movedim(-1, -3)


def to_float32(out: Any) -> Any:
    """A tensor, or a (named) tuple of tensors, in float32."""
    if isinstance(out, Tensor):
        return out.float()
    values = [to_float32(x) for x in out]
    return type(out)(*values) if hasattr(out, "_fields") else type(out)(values)


class Bf16Autocast:
    """A network that may run under bf16 autocast: a training speed setting (``set_bf16``),
    off by default; export and the runtime keep float32. Inside the network the matmuls and
    convolutions run in bf16; its outputs return as float32, so the Kalman arithmetic, the
    bounded activations and the losses downstream stay float32."""

    bf16: bool = False

    def autocast_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if not self.bf16:
            return fn(*args)
        device = next(a for a in args if isinstance(a, Tensor)).device.type
        with torch.autocast(device, dtype=torch.bfloat16):
            return to_float32(fn(*args))


def set_bf16(module: nn.Module, on: bool = True) -> None:
    """bf16 autocast for every :class:`Bf16Autocast` network inside ``module``."""
    for m in module.modules():
        if isinstance(m, Bf16Autocast):
            m.bf16 = on


class MLP(Bf16Autocast, nn.Sequential):
    """``nn.Sequential`` of Linear + activation blocks (same parameters and state dict)."""

    def forward(self, x: Tensor) -> Tensor:
        return self.autocast_call(super().forward, x)


def mlp(in_dim: int, hidden: int, layers: int, out_dim: int | None, act: str) -> MLP:
    """``layers`` hidden Linear+activation blocks, then an optional linear output."""
    mods: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers):
        mods += [nn.Linear(dim, hidden), activation(act)]
        dim = hidden
    if out_dim is not None:
        mods.append(nn.Linear(dim, out_dim))
    return MLP(*mods)


@dataclass(frozen=True)
class ConvConfig:
    """Image encoder/decoder: 4 (transposed) conv layers, channels depth * (1, 2, 4, 8)."""

    depth: int = 32
    act: str = "relu"


class ConvSpeed(Bf16Autocast):
    """Speed settings of a conv network (not part of the model; training sets them with
    ``set_conv_speed``, export and the runtime keep the float32 defaults).

    ``bf16``: run the convolutions under CPU/CUDA bf16 autocast and return float32 (the
    Kalman arithmetic downstream stays float32). ``channels_last``: NHWC memory layout."""

    channels_last: bool = False

    def _run(self, net: nn.Module, x: Tensor) -> Tensor:
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.autocast_call(net, x)


def set_conv_speed(module: nn.Module, bf16: bool = False, channels_last: bool = False) -> None:
    """Apply the speed settings to every conv encoder and decoder inside ``module``."""
    for m in module.modules():
        if isinstance(m, ConvSpeed):
            m.bf16, m.channels_last = bf16, channels_last
            if channels_last:
                m.to(memory_format=torch.channels_last)


class ImageEncoder(ConvSpeed, nn.Module):
    """4 conv layers, kernel 4, stride 2: 64x64x3 -> 8*depth*2*2 features (1024 at depth 32)."""

    def __init__(self, config: ConvConfig = ConvConfig()):
        super().__init__()
        d = config.depth
        chans = [3, d, 2 * d, 4 * d, 8 * d]
        mods: list[nn.Module] = []
        for cin, cout in itertools.pairwise(chans):
            mods += [nn.Conv2d(cin, cout, 4, 2), activation(config.act)]
        self.net = nn.Sequential(*mods, nn.Flatten())
        self.out_dim = 8 * d * 2 * 2

    def forward(self, image: Tensor) -> Tensor:  # [N, 3, 64, 64] -> [N, out_dim]
        if image.shape[-3:] != (3, 64, 64):
            raise ValueError(f"ImageEncoder expects [N, 3, 64, 64], got {tuple(image.shape)}")
        return self._run(self.net, image)


class ImageDecoder(ConvSpeed, nn.Module):
    """Linear to 32*depth, then transposed convs (5, 5, 6, 6; stride 2) to a 64x64x3 mean."""

    def __init__(self, in_dim: int, config: ConvConfig = ConvConfig()):
        super().__init__()
        d = config.depth
        self.fc = nn.Linear(in_dim, 32 * d)
        act = config.act
        self.net = nn.Sequential(
            nn.ConvTranspose2d(32 * d, 4 * d, 5, 2), activation(act),
            nn.ConvTranspose2d(4 * d, 2 * d, 5, 2), activation(act),
            nn.ConvTranspose2d(2 * d, d, 6, 2), activation(act),
            nn.ConvTranspose2d(d, 3, 6, 2),
        )

    def forward(self, features: Tensor) -> Tensor:  # [N, F] -> [N, 3, 64, 64]
        x = self.fc(features)
        return self._run(self.net, x.reshape(*x.shape, 1, 1))


# softplus(0 + c) + 0.01 = 1.0 for the observation variance head (docs/design.md §3.1).
OBS_VAR_OFFSET = math.log(math.expm1(0.99))


class LatentObservationHead(Bf16Autocast, nn.Module):
    """w = linear(x) (no activation) and var = softplus(linear(x) + c) + 0.01
    (docs/design.md §3.1)."""

    def __init__(self, in_dim: int, latent: int):
        super().__init__()
        self.mean = nn.Linear(in_dim, latent)
        self.var = nn.Linear(in_dim, latent)

    def _linear(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.mean(x), self.var(x)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, var = self.autocast_call(self._linear, x)
        return mean, F.softplus(var + OBS_VAR_OFFSET) + 0.01


@dataclass(frozen=True)
class MLPConfig:
    """Proprio encoder / vector decoders: ``layers`` x ``hidden`` units."""

    hidden: int = 300
    layers: int = 3
    act: str = "elu"


def sensor_encoder(kind: str, dim: int, conv: ConvConfig, vector: MLPConfig
                   ) -> tuple[nn.Module, int]:
    """The feature extractor of one sensor and its output width."""
    if kind == "image":
        enc = ImageEncoder(conv)
        return enc, enc.out_dim
    return mlp(dim, vector.hidden, vector.layers, None, vector.act), vector.hidden


def sensor_decoder(kind: str, in_dim: int, out_dim: int, conv: ConvConfig, vector: MLPConfig
                   ) -> nn.Module:
    if kind == "image":
        return ImageDecoder(in_dim, conv)
    return mlp(in_dim, vector.hidden, vector.layers, out_dim, vector.act)


def gaussian_nll_unit(pred: Tensor, target: Tensor, event_dims: int) -> Tensor:
    """-log N(target | pred, I) summed over the last ``event_dims`` axes."""
    per = 0.5 * (pred - target).square() + 0.5 * math.log(2 * math.pi)
    return per.flatten(-event_dims).sum(-1)


def masked_image_nll(pred: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
    """Unit-variance image NLL per image ``[N]``; with a visibility mask ``[N, H, W]`` the sum
    over visible pixels is divided by their count and multiplied by the pixel count
    (docs/design.md §3.2, occlusion tasks)."""
    per = 0.5 * (pred - target).square() + 0.5 * math.log(2 * math.pi)  # [N, 3, H, W]
    if mask is None:
        return per.flatten(1).sum(-1)
    m = mask.unsqueeze(1).to(per.dtype)
    visible = (per * m).flatten(1).sum(-1)
    count = m.flatten(1).sum(-1) * per.shape[1]
    total = per[0].numel()
    return visible / count.clamp(min=1.0) * total
