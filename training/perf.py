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
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

from torch import nn

from estimator.networks import ConvSpeed, set_conv_speed

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


def apply_conv_speed(model: nn.Module, bf16: bool, channels_last: bool, compile_conv: bool
                     ) -> None:
    """bf16 autocast / channels-last / torch.compile for the model's conv networks."""
    set_conv_speed(model, bf16, channels_last)
    if compile_conv:
        import torch

        for module in model.modules():
            if isinstance(module, ConvSpeed):
                module.net = torch.compile(module.net, dynamic=True)
