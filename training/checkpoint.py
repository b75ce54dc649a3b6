"""Checkpoints: written atomically, read without unpickling arbitrary objects.

A checkpoint (``RUN_DIR/checkpoint.pt``) is a dict of tensors and plain data only:
the agent's parameters and optimiser states, step counters, the proprio normaliser and the
state of every random generator (torch generators as byte tensors, numpy generators as JSON
text). It is written to a temporary file, fsynced and renamed over the old one, so a kill at
any moment leaves the previous complete checkpoint. It is read with
``torch.load(weights_only=True)``, which refuses anything but tensors and primitive
containers.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.replay import write_atomic

FORMAT = 1
CHECKPOINT = "checkpoint.pt"

Generators = Mapping[str, torch.Generator | np.random.Generator]


def generator_states(generators: Generators) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, g in generators.items():
        if isinstance(g, torch.Generator):
            out[name] = g.get_state()
        else:
            out[name] = json.dumps(g.bit_generator.state)
    return out


def restore_generators(generators: Generators, states: Mapping[str, Any]) -> None:
    missing = sorted(set(generators) - set(states))
    if missing:
        raise ValueError(f"checkpoint has no state for generator(s) {missing}")
    for name, g in generators.items():
        if isinstance(g, torch.Generator):
            g.set_state(states[name].cpu())
        else:
            g.bit_generator.state = json.loads(states[name])


def save_checkpoint(path: Path, payload: Mapping[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **payload}, buffer)
    write_atomic(Path(path), buffer.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load on the CPU (tensors move to the device in ``load_state_dict``)."""
    data = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a checkpoint of format {FORMAT}")
    return data
