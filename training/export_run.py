"""Rebuild a trained Dreamer agent from a run directory (or its checkpoint) for export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from estimator.vrkn import VRKN
from training.checkpoint import CHECKPOINT, load_checkpoint
from training.config import from_json, task_overrides, to_json
from training.export import ExportInputs
from training.loop import default_model_factory, make_agent
from training.replay import Normalizer


def resolve_source(source: Path) -> tuple[Path, Path]:
    """(run directory, checkpoint file) from either of them."""
    source = Path(source)
    if source.is_dir():
        run_dir, ckpt = source, source / CHECKPOINT
    else:
        run_dir, ckpt = source.parent, source
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt}: no checkpoint (train first, or point at a run "
                                "directory that holds checkpoint.pt)")
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir / 'config.json'}: missing; the checkpoint must sit "
                                "in its run directory")
    return run_dir, ckpt


def load_run_for_export(source: Path) -> tuple[VRKN, nn.Module, ExportInputs]:
    """The world model, actor and bundle facts of a finished (or running) Dreamer run."""
    from training.envs import make_task
    from training.loop import sensor_specs

    run_dir, ckpt = resolve_source(source)
    data = load_checkpoint(ckpt)
    # The checkpoint's own copy of the config is authoritative (config.json is rewritten
    # by every start of the run).
    config = from_json(json.loads(data["config"]))
    if config.agent != "dreamer":
        raise ValueError(f"{run_dir}: a {config.agent} run has no actor to export; bundles "
                         "hold a Dreamer policy")
    if not config.model.startswith("vrkn"):
        raise ValueError(f"{run_dir}: model {config.model!r} cannot be exported; the service "
                         "runs Kalman arithmetic on VRKN models")
    task = make_task(config.task, config.seed, **task_overrides(config))
    try:
        specs = sensor_specs(task)
        action_dim = int(task.act_space.shape[0])
        period = float(task.control_period)
        low = tuple(float(x) for x in np.broadcast_to(task.act_space.low, (action_dim,)))
        high = tuple(float(x) for x in np.broadcast_to(task.act_space.high, (action_dim,)))
    finally:
        task.close()
    torch.manual_seed(config.seed)
    model = default_model_factory(config, specs, action_dim)
    agent = make_agent(config, model)
    agent.load_full_state(data["agent"])
    normalizer = Normalizer.from_state_dict(data["normalizer"])
    norm = {k: (np.asarray(m), np.asarray(s)) for k, (m, s) in normalizer.stats.items()}
    info = ExportInputs(control_period=period, action_low=low, action_high=high,
                        normalisation=norm,
                        training_config={**to_json(config), "env_steps": int(data["env_steps"]),
                                         "run_dir": str(run_dir.resolve())})
    assert isinstance(agent.model, VRKN)
    return agent.model, agent.actor, info
