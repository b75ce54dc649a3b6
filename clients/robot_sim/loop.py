"""One episode of a task of the suite driven in closed loop through a backend.

The task is "the robot": each control tick its proprioception is sent (with
``return_belief``, so the ack carries the belief the controller acts on), camera frames
go out when the camera link delivers them (on the task's missing-frames schedule, late
when a latency is set), then the policy's action is asked for and applied. Timestamps are
the robot's clock (physics time); the session's tick 0 starts half a period before the
first observation, so every stamp sits mid-tick.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clients.robot_sim.camera import NO_LATENCY, CameraLink, Latency


@dataclass
class EpisodeRecord:
    times: list[float] = field(default_factory=list)
    proprio: list[np.ndarray] = field(default_factory=list)  # the sensor reading sent
    decoded: list[np.ndarray] = field(default_factory=list)  # belief's decoded proprio
    state: list[np.ndarray] = field(default_factory=list)  # the simulator's true state
    state_mean: list[np.ndarray] = field(default_factory=list)  # the service's estimate
    state_var: list[np.ndarray] = field(default_factory=list)
    state_names: tuple[str, ...] = ()
    measured: tuple[str, ...] = ()  # state elements the proprio reads directly
    means: list[np.ndarray] = field(default_factory=list)  # belief mean the action used
    actions: list[np.ndarray] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    views: list[np.ndarray] = field(default_factory=list)  # the camera's view (video only)
    received: list[int] = field(default_factory=list)  # newest frame delivered (index), -1
    control_ms: list[float] = field(default_factory=list)  # first send -> action, per tick
    camera: CameraLink | None = None
    counters: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def episode_return(self) -> float:
        return float(np.sum(self.rewards))

    def arrays(self) -> dict[str, np.ndarray]:
        n = len(self.actions)
        out = {"time": np.asarray(self.times), "proprio": np.asarray(self.proprio),
               "decoded": np.asarray(self.decoded), "mean": np.asarray(self.means),
               "action": np.asarray(self.actions).reshape(n, -1),
               "reward": np.asarray(self.rewards, np.float32)}
        if self.state_mean:
            out.update(state=np.asarray(self.state), state_mean=np.asarray(self.state_mean),
                       state_var=np.asarray(self.state_var))
        return out


def check_compatible(task: Any, backend: Any) -> None:
    """The bundle must have been trained on this task's period, sensors and shapes."""
    period = backend.control_period
    if abs(period - task.control_period) > 1e-9:
        raise ValueError(f"the model's control period is {period} s but the task's is "
                         f"{task.control_period} s (set --action-repeat to match training)")
    space = task.obs_space
    for name, shape in backend.sensors().items():
        if name not in space:
            raise ValueError(f"the model expects sensor {name!r}; the task has "
                             f"{list(task.sensors)} (use a -fusion task)")
        if tuple(space[name].shape) != tuple(shape):
            raise ValueError(f"sensor {name!r}: the model expects shape {list(shape)}, the "
                             f"task gives {list(space[name].shape)}")


def run_episode(task: Any, backend: Any, latency: Latency = NO_LATENCY, seed: int = 0,
                video_ticks: int = 0, max_ticks: int = 100_000,
                realtime: bool = False) -> EpisodeRecord:
    """Run one episode (the task must be freshly made or finished). ``video_ticks``: keep
    the camera's view of the first that many ticks (rendered for the video only)."""
    check_compatible(task, backend)
    from training.envs.proprio import measured_state_names

    rec = EpisodeRecord(camera=CameraLink(latency, seed), measured=measured_state_names(task))
    period = task.control_period
    obs = task.reset()
    start = float(obs["time/proprio"])
    backend.start(start - period / 2)
    t_wall = time.perf_counter()
    try:
        _loop(task, backend, rec, obs, period, video_ticks, max_ticks, realtime)
    except BaseException:
        if hasattr(backend, "abort"):
            backend.abort()
        raise
    rec.wall_s = time.perf_counter() - t_wall
    rec.counters = backend.finish()
    return rec


def _loop(task: Any, backend: Any, rec: EpisodeRecord, obs: dict, period: float,
          video_ticks: int, max_ticks: int, realtime: bool) -> None:
    newest = -1  # the newest (latest-captured) frame delivered so far
    for k in range(max_ticks):
        t = float(obs["time/proprio"])
        tick_start = time.perf_counter()
        if obs["valid/image"]:
            rec.camera.capture(float(obs["time/image"]), obs["image"])
        for frame in rec.camera.due(t):
            backend.send("image", frame.captured, frame.image)
            newest = max(newest, frame.index)
        belief = backend.send("proprio", t, obs["proprio"], return_belief=True)
        if belief is None:
            raise RuntimeError(f"tick {k}: the proprio message at t={t} was refused")
        action = None if obs["is_last"] else backend.action(t)
        rec.control_ms.append(1e3 * (time.perf_counter() - tick_start))
        rec.times.append(t)
        rec.proprio.append(np.asarray(obs["proprio"], np.float32))
        rec.decoded.append(belief.decoded.get("proprio", np.full_like(obs["proprio"], np.nan)))
        rec.means.append(belief.mean)
        if belief.state is not None and "state" in obs:  # the truth never goes to the service
            rec.state_names = belief.state.names
            rec.state.append(np.asarray(obs["state"], np.float32))
            rec.state_mean.append(belief.state.mean)
            rec.state_var.append(belief.state.var)
        rec.received.append(newest)
        if k < video_ticks:
            rec.views.append(task.unwrapped.render_frame())
        if action is None:
            rec.actions.append(np.full(task.act_space.shape, np.nan, np.float32))
            break
        rec.actions.append(np.asarray(action, np.float32))
        obs = task.step(np.asarray(action, np.float64))
        rec.rewards.append(float(obs["reward"]))
        if realtime:
            time.sleep(max(0.0, period - (time.perf_counter() - tick_start)))
