"""Speed settings of a training process (none changes the model or its checkpoint).

Measured on the 2-core CPU by ``bench/training_speed.py``; the figures and which settings
are defaults are in docs/training.md ("Speed levers").

* ``tune_malloc``: glibc keeps freed memory instead of returning it to the kernel after
  every large tensor (``M_TRIM_THRESHOLD``, ``M_TOP_PAD``) and serves allocations up to
  32 MiB from the heap instead of fresh ``mmap`` pages (``M_MMAP_THRESHOLD``). Without it
  the page faults of re-allocated activations take a share of every update. Set with
  ``mallopt`` at start, so no environment variable is needed.
* bf16 autocast and channels-last of the conv encoder/decoder: ``estimator.networks``.
* ``torch.compile`` of the conv encoder/decoder (``compile_conv``).
* For GPUs (:func:`apply_speed`): bf16 autocast of every world-model network
  (``bf16_model``: encoders, decoders, observation heads, the transition network, the
  reward head; the RSSM's prior and posterior layers) and of the actor and critic
  (``bf16_actor_critic``), each network's output back in float32, so the Kalman
  arithmetic, the bounded activations and every loss stay float32; ``torch.compile`` of the
  same networks (``compile_model``, ``compile_actor_critic``), in place (the state dict and
  the checkpoint do not change). All off by default.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from estimator.networks import Bf16Autocast, ConvSpeed, set_bf16, set_conv_speed
from estimator.world_model import WorldModel


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class PerfConfig:
    malloc: bool = _opt(True, "raise glibc's malloc trim/mmap thresholds (training.perf)")
    bf16: bool = _opt(False, "bf16 autocast for the conv encoder and decoder (the Kalman "
                      "arithmetic stays float32)")
    channels_last: bool = _opt(False, "channels-last memory layout for the conv networks")
    compile_conv: bool = _opt(False, "torch.compile the conv encoder and decoder")
    bf16_model: bool = _opt(False, "bf16 autocast for every world-model network, convs "
                            "included; outputs, Kalman arithmetic and losses stay float32")
    bf16_actor_critic: bool = _opt(False, "bf16 autocast for the actor and critic networks")
    compile_model: bool = _opt(False, "torch.compile every world-model network (in place)")
    compile_actor_critic: bool = _opt(False, "torch.compile the actor and critic networks")
    compile_backend: str = _opt("inductor", "torch.compile backend of the compile_* options "
                                "(aot_eager: trace only, no code generation)")

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # the setting bench/training_speed.py measured


def tune_malloc() -> bool:
    """Raise glibc's trim / mmap thresholds for this process; False where not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
    ok &= mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    ok &= mallopt(M_TOP_PAD, 64 * 1024 * 1024)
    return bool(ok)


def apply_conv_speed(model: nn.Module, bf16: bool, channels_last: bool, compile_conv: bool,
                     backend: str = "inductor") -> None:
    """bf16 autocast / channels-last / torch.compile for the model's conv networks (compiled
    in place: the state dict keeps its keys)."""
    set_conv_speed(model, bf16, channels_last)
    if compile_conv:
        compile_in_place([m.net for m in model.modules() if isinstance(m, ConvSpeed)], backend)


def compile_in_place(modules: Sequence[nn.Module], backend: str) -> None:
    """``torch.compile`` each module in place (``nn.Module.compile``). The networks share
    their classes' code, and each shape and grad mode is one more compiled version: the
    recompile limit is raised from torch's 8 so that they stay compiled."""
    if not modules:
        return
    import torch._dynamo

    limit = torch._dynamo.config.recompile_limit
    torch._dynamo.config.recompile_limit = max(limit, 16 * len(modules))
    for module in modules:
        module.compile(dynamic=True, backend=backend)


def networks(module: nn.Module) -> list[nn.Module]:
    """The outermost :class:`Bf16Autocast` networks inside ``module`` (not a world model
    itself: the RSSM's own layers are autocast by it, not compiled)."""
    out: list[nn.Module] = []
    for child in module.children():
        if isinstance(child, Bf16Autocast) and not isinstance(child, WorldModel):
            out.append(child)
        else:
            out += networks(child)
    return out


def apply_speed(model: WorldModel, actor_critic: Sequence[nn.Module], perf: PerfConfig
                ) -> None:
    """Every speed setting of ``perf`` on the world model and the actor and critic."""
    apply_conv_speed(model, perf.bf16 or perf.bf16_model, perf.channels_last,
                     perf.compile_conv and not perf.compile_model, perf.compile_backend)
    if perf.bf16_model:
        set_bf16(model)
    for module in actor_critic:
        set_bf16(module, perf.bf16_actor_critic)
    targets = networks(model) if perf.compile_model else []
    if perf.compile_actor_critic:
        targets += [net for module in actor_critic for net in networks(module)]
    compile_in_place(targets, perf.compile_backend)
