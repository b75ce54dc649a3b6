"""Rebuild a trained Dreamer agent from a run directory (or its checkpoint) for export."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from estimator.state_head import StateHead
from estimator.vrkn import VRKN
from training.agent import Agent
from training.checkpoint import CHECKPOINT, load_checkpoint
from training.config import RunConfig, from_json, task_overrides, to_json
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


@dataclass(frozen=True)
class LoadedRun:
    """A trained agent rebuilt from its checkpoint, with the facts of its task."""

    run_dir: Path
    config: RunConfig
    agent: Agent
    normalizer: Normalizer
    env_steps: int
    updates: int
    specs: tuple
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    control_period: float
    state_names: tuple[str, ...]


def load_run(source: Path) -> LoadedRun:
    """Any run (Dreamer or PlaNet, any world model) from its directory or checkpoint."""
    from training.envs import make_task
    from training.loop import sensor_specs

    run_dir, ckpt = resolve_source(source)
    data = load_checkpoint(ckpt)
    # The checkpoint's own copy of the config is authoritative (config.json is rewritten
    # by every start of the run).
    config = from_json(json.loads(data["config"]))
    task = make_task(config.task, config.seed, **task_overrides(config))
    try:
        specs = sensor_specs(task)
        action_dim = int(task.act_space.shape[0])
        period = float(task.control_period)
        low = tuple(float(x) for x in np.broadcast_to(task.act_space.low, (action_dim,)))
        high = tuple(float(x) for x in np.broadcast_to(task.act_space.high, (action_dim,)))
        state_names = tuple(task.state_names)
    finally:
        task.close()
    torch.manual_seed(config.seed)
    model = default_model_factory(config, specs, action_dim)
    agent = make_agent(config, model)
    modules = data["agent"]["modules"]
    if any(k.startswith("state_head.") for k in modules):
        agent.attach_state_head(StateHead(model.feature_dim, state_names, config.state))
    agent.load_full_state(data["agent"])
    agent.eval()
    return LoadedRun(run_dir, config, agent, Normalizer.from_state_dict(data["normalizer"]),
                     int(data["env_steps"]), int(data["counters"].get("updates", 0)), specs,
                     low, high, period, state_names)


def load_run_for_export(source: Path) -> tuple[VRKN, nn.Module, ExportInputs,
                                                StateHead | None]:
    """The world model, actor, bundle facts and state head of a Dreamer VRKN run."""
    run = load_run(source)
    config, run_dir = run.config, run.run_dir
    if config.agent != "dreamer":
        raise ValueError(f"{run_dir}: a {config.agent} run has no actor to export; bundles "
                         "hold a Dreamer policy")
    if not config.model.startswith("vrkn"):
        raise ValueError(f"{run_dir}: model {config.model!r} cannot be exported; the service "
                         "runs Kalman arithmetic on VRKN models")
    norm = {k: (np.asarray(m), np.asarray(s)) for k, (m, s) in run.normalizer.stats.items()}
    info = ExportInputs(control_period=run.control_period, action_low=run.action_low,
                        action_high=run.action_high, normalisation=norm,
                        training_config={**to_json(config), "env_steps": run.env_steps,
                                         "updates": run.updates,
                                         "run_dir": str(run_dir.resolve())})
    agent = run.agent
    assert isinstance(agent.model, VRKN)
    return agent.model, agent.actor, info, agent.state_head
