"""A few Dreamer updates on fixed batches, in one process or as one rank of several
(``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` / ``MASTER_*`` set as torchrun sets them): the
worker of tests/training/test_distributed.py.

    python -m tests.training.ddp_worker OUT_FILE [UPDATES]

The same global batches every time (seeded); a rank takes its rows. Phase one runs with
the update's random draws replaced by constants (``torch.rand`` -> 0.5, ``torch.randn``
-> 0: dropout keeps every unit, samples are means, dequantisation is a constant offset),
so an update is a function of the data alone and one process can be compared with the
ranks. Phase two runs two updates with real draws from each rank's own generator (seed +
rank). Writes the parameters after each phase, the metrics of phase one, and the averaged
gradients of two parameters, one with a gradient on rank 0 only, one with none.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from estimator.state_head import StateHead
from tests.training.conftest import debug_config
from tests.world_models.conftest import ACTION_DIM, SENSOR_SETS, synthetic_data
from training.distributed import process_group, rank_config, topology_from_env
from training.loop import default_model_factory, make_agent

GLOBAL_BATCH, STEPS, STATE_DIM = 4, 6, 3


@contextlib.contextmanager
def constant_draws() -> Iterator[None]:
    rand, randn = torch.rand, torch.randn

    def const(value: float):
        def draw(*size, generator=None, device=None, dtype=None, **_):
            shape = size[0] if len(size) == 1 and not isinstance(size[0], int) else size
            return torch.full(tuple(shape), value, device=device, dtype=dtype or torch.float32)
        return draw

    torch.rand, torch.randn = const(0.5), const(0.0)
    try:
        yield
    finally:
        torch.rand, torch.randn = rand, randn


def global_batch(index: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    data = synthetic_data("fusion", batch=GLOBAL_BATCH, steps=STEPS, seed=100 + index)
    state = torch.randn(GLOBAL_BATCH, STEPS, STATE_DIM,
                        generator=torch.Generator().manual_seed(200 + index))
    return data, state


def main(out: Path, updates: int) -> None:
    torch.set_num_threads(1)
    topology = topology_from_env()
    config = debug_config()
    with process_group(topology, torch.device("cpu"), timeout=60.0) as dist:
        torch.manual_seed(config.seed)
        model = default_model_factory(config, SENSOR_SETS["fusion"], ACTION_DIM)
        agent = make_agent(rank_config(config, dist.world), model)
        agent.attach_state_head(StateHead(model.feature_dim, ("a", "b", "c"), config.state))
        if dist.active:
            agent.grad_sync = dist.average_gradients
            dist.broadcast_module(agent)
        rows = slice(dist.rank * GLOBAL_BATCH // dist.world,
                     (dist.rank + 1) * GLOBAL_BATCH // dist.world)
        batches = []
        for k in range(updates + 2):
            data, state = global_batch(k)
            batches.append((model.to_batch({key: v[rows] for key, v in data.items()}),
                            state[rows]))
        metrics = []
        with constant_draws():
            for batch, state in batches[:updates]:
                metrics.append(agent.update(batch, torch.Generator(), state))
        exact = {k: v.clone() for k, v in agent.state_dict().items()}
        generator = torch.Generator().manual_seed(config.seed + dist.rank)
        for batch, state in batches[updates:]:
            agent.update(batch, generator, state)
        # A gradient on rank 0 only, and a parameter without any.
        sparse = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))]
        if dist.is_main:
            sparse[0].grad = torch.full((2,), 2.0)
        dist.average_gradients(sparse)
        torch.save({"exact": exact, "metrics": metrics, "noisy": agent.state_dict(),
                    "world": dist.world, "sparse": [p.grad for p in sparse]}, out)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 3)
