"""Held-out episodes through an online filter: returns, and the state estimate vs the truth.

An ``Estimator`` is one online filter with its policy: ``BundleEstimator`` runs a bundle
with the torch-free runtime (``server.runtime.OnlineFilter``: the arithmetic the service
runs), ``TorchEstimator`` a training run's world model and state head (any model family,
the RSSMs included). ``run_episode`` drives a task with one estimator's actions and can run
more estimators on the same trajectory (e.g. the same model with the camera withheld), so
their estimates are compared on identical ticks. ``EpisodeLog`` keeps per tick the truth,
each estimator's mean and variance, and whether a camera frame arrived.

Used by ``python -m training.evaluate`` and ``bench/estimation.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from server.runtime.uncertainty import StateEstimate
from training.envs.base import Obs, Task


class Estimator(Protocol):
    state_names: tuple[str, ...]

    def reset(self) -> None: ...

    def observe(self, obs: Obs) -> StateEstimate:
        """Filter one tick's observation (after the last ``act``); the estimate [1, S]."""

    def act(self) -> np.ndarray:
        """The policy's action [A] on the current belief (in [-1, 1])."""

    def set_action(self, action: np.ndarray) -> None:
        """The action applied after this tick when another estimator drives."""


class BundleEstimator:
    """A bundle's online filter and actor (mode on the belief mean, as the service acts).
    ``camera`` False withholds image frames (the proprio-only baseline)."""

    def __init__(self, bundle, camera: bool = True):
        from server.runtime import OnlineFilter

        if bundle.manifest.state is None:
            raise ValueError(f"{bundle.path}: the bundle has no state head to evaluate")
        self.filter = OnlineFilter(bundle)
        self.camera = camera
        self.state_names = bundle.manifest.state.names
        self.sensors = bundle.manifest.sensors
        self.period = bundle.manifest.control_period
        self.reset()

    def reset(self) -> None:
        self.belief = None
        self.action: np.ndarray | None = None

    def observe(self, obs: Obs) -> StateEstimate:
        from server.runtime import Reading

        readings = {}
        for s in self.sensors:
            if s.name not in obs:
                continue
            valid = bool(obs.get(f"valid/{s.name}", True)) and (self.camera or
                                                                s.kind != "image")
            value = np.asarray(obs[s.name], s.dtype)[None]
            readings[s.name] = Reading(value, np.array([valid]))
        action = None if self.action is None else self.action[None]
        self.belief = self.filter.step(None if obs["is_first"] else self.belief,
                                       None if obs["is_first"] else action, readings)
        estimate = self.filter.state(self.belief)
        assert estimate is not None
        return estimate

    def act(self) -> np.ndarray:
        # The filter works in the unit range, like the torch actor and the task's actions.
        self.action = self.filter.act(self.filter.features(self.belief))[0]
        return self.action

    def set_action(self, action: np.ndarray) -> None:
        self.action = np.asarray(action, np.float32)


class TorchEstimator:
    """A training run's model, state head and actor (evaluation mode: dropout off, no
    exploration). ``camera`` False withholds image frames."""

    def __init__(self, run, camera: bool = True, seed: int = 0):
        import torch

        if run.agent.state_head is None:
            raise ValueError(f"{run.run_dir}: the run has no state head to evaluate")
        self.run, self.camera = run, camera
        self.agent = run.agent
        self.model = run.agent.model
        self.model.set_dropout(False)
        self.device = next(self.model.parameters()).device
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.state_names = run.agent.state_head.names
        self.period = run.control_period
        self.reset()

    def reset(self) -> None:
        self.state = None
        self.action = None

    def observe(self, obs: Obs) -> StateEstimate:
        import torch

        from training.agent import sensor_batch
        from training.state_eval import estimate_states

        row = {k: np.asarray(v)[None] for k, v in obs.items()}
        for s in self.model.specs:  # a sensor this task lacks never arrives
            if s.name not in row:
                row[s.name] = np.zeros((1, *s.shape), np.uint8 if s.kind == "image"
                                       else np.float32)
                row[f"valid/{s.name}"] = np.zeros(1, bool)
        if not self.camera:
            for s in self.model.specs:
                if s.kind == "image":
                    row[f"valid/{s.name}"] = np.zeros(1, bool)
        with torch.no_grad():
            sensors = sensor_batch(self.model, self.run.normalizer(row), self.device)
            first = bool(obs["is_first"]) or self.state is None
            self.state = self.model.filter_step(None if first else self.state,
                                                None if first else self.action, sensors,
                                                self.generator)
            mean, var = self.model.feature_moments(self.state)
        head = self.agent.state_head
        return estimate_states(head, mean.float().cpu().numpy(), var.float().cpu().numpy())

    def act(self) -> np.ndarray:
        import torch

        with torch.no_grad():
            self.action = self.agent.act(self.state, False, self.generator)
        return self.action[0].float().cpu().numpy()

    def set_action(self, action: np.ndarray) -> None:
        import torch

        self.action = torch.as_tensor(np.asarray(action, np.float32)[None], device=self.device)


@dataclass
class EpisodeLog:
    """One episode: per tick the truth and each estimator's estimate."""

    names: tuple[str, ...]
    truth: np.ndarray  # [T, S]
    means: dict[str, np.ndarray]  # estimator label -> [T, S]
    vars: dict[str, np.ndarray]
    camera: np.ndarray  # [T] bool: a camera frame arrived at this tick
    ret: float
    frames: list[np.ndarray] = field(default_factory=list)

    @property
    def since_frame(self) -> np.ndarray:
        """Ticks since the last camera frame [T] (0 at a frame; counted from the start
        before the first one)."""
        out = np.zeros(len(self.camera), np.int64)
        count = 0
        for t, frame in enumerate(self.camera):
            count = 0 if frame else count + 1
            out[t] = count
        return out


def run_episode(task: Task, driver: str, estimators: dict[str, Estimator],
                video: bool = False) -> EpisodeLog:
    """One episode on ``task`` acting with ``estimators[driver]``; every estimator filters
    the same observations. ``video`` keeps [true view | delivered frame] per tick."""
    for e in estimators.values():
        e.reset()
    names = estimators[driver].state_names
    obs = task.reset()
    truth, camera, frames = [], [], []
    means = {k: [] for k in estimators}
    variances = {k: [] for k in estimators}
    ret = 0.0
    while True:
        if "state" not in obs:
            raise ValueError("the task exposes no 'state' to evaluate against")
        truth.append(np.asarray(obs["state"], np.float32))
        camera.append(bool(obs.get("valid/image", False)))
        for label, est in estimators.items():
            e = est.observe(obs)
            means[label].append(e.mean[0])
            variances[label].append(e.var[0])
        if video:
            base = task.unwrapped
            view = base.render_frame() if hasattr(base, "render_frame") else obs["image"]
            frames.append(np.concatenate([view, obs["image"]], axis=1))
        if obs["is_last"]:
            break
        action = estimators[driver].act()
        for label, est in estimators.items():
            if label != driver:
                est.set_action(action)
        obs = task.step(action)
        ret += float(obs["reward"])
    return EpisodeLog(names, np.stack(truth), {k: np.stack(v) for k, v in means.items()},
                      {k: np.stack(v) for k, v in variances.items()}, np.asarray(camera), ret,
                      frames)


def held_out_seeds(seed: int, count: int) -> list[int]:
    """Episode seeds disjoint from training's (a different SeedSequence branch)."""
    state = np.random.SeedSequence([seed, 9001]).generate_state(count)
    return [int(s % (2**31 - 1)) for s in state]


def save_video(frames: list[np.ndarray], path: Path, fps: int = 25) -> Path:
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimsave(path, frames, duration=1000.0 / fps, loop=0)
    return path
