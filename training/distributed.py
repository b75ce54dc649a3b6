"""Multi-process training under ``torchrun``: the process group and the few collectives the
loop needs (docs/training.md, "Distributed training").

``torchrun --nproc_per_node=N -m training.dreamer ...`` starts N processes and sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and ``MASTER_ADDR`` / ``MASTER_PORT``) in each;
:func:`topology_from_env` reads them. Without them the process is a single one
(:data:`SINGLE`, world size 1), and every method of :class:`Distributed` returns at once
without communicating: the single-process run is unchanged.

Gradients are averaged explicitly (:meth:`Distributed.average_gradients`, one all-reduce of
the flattened gradients of a parameter list, called by the agent before each clipped
optimiser step) instead of wrapping modules in ``DistributedDataParallel``: DDP's reducer
is armed only by the wrapper's own ``forward``, and an agent update is no single forward of
one module: the world-model loss is a method, the actor's gradient flows through imagined
rollouts of the (frozen) world model and critic, the state-head probe has its own Adam, and
a sensor absent from a batch leaves its encoder without a gradient. One averaging step in
the one place every optimiser steps covers each of them by construction. NCCL carries the
CUDA gradients, gloo the CPU ones and the small control values.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import distributed as dist
from torch import nn

if TYPE_CHECKING:
    from training.config import RunConfig

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistConfig:
    timeout: float = field(default=600.0, metadata={
        "help": "seconds a rank waits in a collective for the others (the gloo / NCCL "
                "timeout) before it fails; a rank that dies is noticed at once. Must exceed "
                "rank 0's evaluation, which the other ranks wait for"})


class DistributedError(ValueError):
    """A distributed launch that cannot run: torchrun variables missing or inconsistent, a
    batch not divisible by the world size, a resume with another world size."""


class PeerLostError(RuntimeError):
    """A collective failed: another rank died, or did not answer within the timeout."""


@dataclass(frozen=True)
class Topology:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def topology_from_env(environ: Mapping[str, str] | None = None) -> Topology:
    """The rank, world size and local rank torchrun set; a single process without them."""
    environ = os.environ if environ is None else environ
    present = [k for k in ENV_KEYS if k in environ]
    if not present:
        return Topology()
    missing = [k for k in ENV_KEYS if k not in environ]
    if missing:
        raise DistributedError(f"the environment sets {', '.join(present)} but not "
                               f"{', '.join(missing)}: launch with torchrun, which sets all "
                               f"of {', '.join(ENV_KEYS)}")
    try:
        rank, world, local = (int(environ[k]) for k in ENV_KEYS)
    except ValueError:
        raise DistributedError(f"{', '.join(f'{k}={environ[k]!r}' for k in ENV_KEYS)}: "
                               "expected integers") from None
    if not (world >= 1 and 0 <= rank < world and local >= 0):
        raise DistributedError(f"RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}: need "
                               "WORLD_SIZE >= 1, 0 <= RANK < WORLD_SIZE, LOCAL_RANK >= 0")
    return Topology(rank, world, local)


def rank_config(config: RunConfig, world: int) -> RunConfig:
    """What one of ``world`` ranks trains with: the global ``replay.batch`` and
    ``dreamer.imag_starts`` divided by the world size (the saved config keeps the global
    values). Refused when they do not divide."""
    if world == 1:
        return config
    batch, starts = config.replay.batch, config.dreamer.imag_starts
    if batch % world:
        raise DistributedError(f"replay.batch={batch} is the global batch and must be "
                               f"divisible by the world size {world} (each rank trains on "
                               f"batch / {world} sequences); try --replay.batch "
                               f"{max(world, batch // world * world)}")
    if starts % world:
        raise DistributedError(f"dreamer.imag_starts={starts} must be divisible by the world "
                               f"size {world} (each rank imagines from a share)")
    return dataclasses.replace(
        config, replay=dataclasses.replace(config.replay, batch=batch // world),
        dreamer=dataclasses.replace(config.dreamer, imag_starts=starts // world))


def rank_dir(run_dir: Path, rank: int) -> Path:
    """Where a rank keeps its own files (its episodes): the run directory for rank 0,
    ``RUN_DIR/rank<r>/`` for the others."""
    return Path(run_dir) if rank == 0 else Path(run_dir) / f"rank{rank}"


class Distributed:
    """The process group of a run, or nothing (world size 1)."""

    def __init__(self, topology: Topology = Topology()):
        self.topology = topology
        self.started = False

    @property
    def rank(self) -> int:
        return self.topology.rank

    @property
    def world(self) -> int:
        return self.topology.world

    @property
    def is_main(self) -> bool:
        return self.topology.is_main

    @property
    def active(self) -> bool:
        return self.topology.world > 1

    def local_device(self, device: torch.device) -> torch.device:
        """A CUDA device becomes this rank's GPU (``cuda:LOCAL_RANK``)."""
        if not self.active or device.type != "cuda":
            return device
        if device.index is not None and device.index != self.topology.local_rank:
            raise DistributedError(f"--device {device} under torchrun: each rank uses the GPU "
                                   f"of its LOCAL_RANK; give --device cuda or auto")
        return torch.device("cuda", self.topology.local_rank)

    # ------------------------------------------------------------------ lifetime

    def start(self, device: torch.device, timeout: float) -> None:
        """Join the process group (``env://``: torchrun's MASTER_ADDR / MASTER_PORT)."""
        if not self.active or self.started:
            return
        backend = "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(self.local_device(device))
            backend = "cpu:gloo,cuda:nccl"
        dist.init_process_group(backend, rank=self.rank, world_size=self.world,
                                timeout=datetime.timedelta(seconds=timeout))
        self.started = True

    def close(self) -> None:
        if self.started:
            dist.destroy_process_group()
            self.started = False

    def _collective(self, name: str, run: Any, *args: Any) -> Any:
        try:
            return run(*args)
        except RuntimeError as error:
            raise PeerLostError(f"{name} failed on rank {self.rank} of {self.world} (another "
                                f"rank died or did not answer in time): "
                                f"{str(error).splitlines()[0]}") from error

    # ------------------------------------------------------------------ collectives

    def average_gradients(self, params: Sequence[nn.Parameter]) -> None:
        """Replace every gradient by its mean over the ranks (one all-reduce). A parameter
        without a gradient on every rank keeps none, as in a single process whose batch
        never reached it; one with a gradient somewhere takes zeros where it has none."""
        if not self.active or not params:
            return
        flags = torch.tensor([float(p.grad is not None) for p in params],
                             device=params[0].device)
        flat = torch.cat([flags] + [(p.grad if p.grad is not None else torch.zeros_like(p))
                                    .reshape(-1).float() for p in params])
        self._collective("gradient all-reduce", dist.all_reduce, flat)
        counts, values = flat[:len(params)], flat[len(params):] / self.world
        offset = 0
        for p, count in zip(params, counts.tolist(), strict=True):
            value = values[offset:offset + p.numel()].view_as(p).to(p.dtype)
            offset += p.numel()
            if count == 0:
                continue
            if p.grad is None:
                p.grad = value.clone()
            else:
                p.grad.copy_(value)

    def broadcast_module(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank (in place)."""
        if not self.active:
            return
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                self._collective("parameter broadcast", dist.broadcast, tensor.data, 0)

    def sum(self, values: Sequence[int]) -> list[int]:
        """Element-wise sums of integer counters over the ranks."""
        if not self.active:
            return list(values)
        total = torch.tensor(list(values), dtype=torch.float64)
        self._collective("counter all-reduce", dist.all_reduce, total)
        return [round(v) for v in total.tolist()]

    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on one."""
        if not self.active:
            return flag
        value = torch.tensor([float(flag)])
        self._collective("flag all-reduce", dist.all_reduce, value, dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        self._collective("object all-gather", dist.all_gather_object, out, obj)
        return out

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` in rank order on rank 0 (None elsewhere)."""
        if not self.active:
            return [obj]
        out: list[Any] | None = [None] * self.world if self.is_main else None
        self._collective("object gather", dist.gather_object, obj, out, 0)
        return out


SINGLE = Distributed()


@contextlib.contextmanager
def process_group(topology: Topology, device: torch.device, timeout: float
                  ) -> Iterator[Distributed]:
    """The run's :class:`Distributed`, joined to its group for the block (a single process:
    no group)."""
    group = Distributed(topology)
    group.start(device, timeout)
    try:
        yield group
    finally:
        group.close()

