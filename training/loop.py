"""The training loop shared by Dreamer and PlaNet: prefill, then iterations of
(``train_steps`` updates, collect ``collect_episodes`` episodes), evaluation every
``eval_every`` iterations with dropout off, checkpoints, metrics and videos.

Resumable at any point: episodes are on disk as soon as they finish, the checkpoint is
replaced atomically after each ``checkpoint_every`` iterations, and a restarted run
reloads both. Environment steps are counted from the episodes on disk, so episodes that
finished after the last checkpoint still count (and train, and get their metric row back);
metric rows written after the checkpoint are dropped and redone (``training.logger``).

The environments and the world model come from factories (``training.driver.make_envs``,
:func:`default_model_factory`), so tests can substitute either.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from estimator.batch import SensorSpec
from estimator.models import make_world_model
from estimator.state_head import StateHead, fit_scaling
from estimator.world_model import WorldModel
from training.agent import Agent, AgentPolicy, RandomPolicy
from training.checkpoint import (
    CHECKPOINT,
    generator_states,
    load_checkpoint,
    restore_generators,
    save_checkpoint,
)
from training.config import RunConfig, agent_action_repeat, model_config, task_overrides, to_json
from training.driver import EnvFactory, Envs, episode_return, make_envs, run_episodes
from training.logger import Logger, log_episode_files
from training.perf import apply_conv_speed, tune_malloc
from training.replay import EpisodeReplay, Normalizer
from training.state_eval import Observers, StateRecorder
from training.video import VideoRecorder

ModelFactory = Callable[[RunConfig, tuple[SensorSpec, ...], int], WorldModel]
TRAIN_ENVS, EVAL_ENVS = 0, 1


def default_model_factory(config: RunConfig, specs: tuple[SensorSpec, ...], action_dim: int
                          ) -> WorldModel:
    return make_world_model(config.model, specs, action_dim, config=model_config(config))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def sensor_specs(envs: Envs) -> tuple[SensorSpec, ...]:
    """The model's sensors in the task's update order (proprio first)."""
    specs = []
    for name in envs.sensors:
        shape = tuple(envs.obs_space[name].shape)
        specs.append(SensorSpec(name, "image" if len(shape) == 3 else "vector", shape))
    return tuple(specs)


def env_seeds(seed: int, kind: int, index: int, count: int) -> list[int]:
    state = np.random.SeedSequence([seed, kind, index]).generate_state(count)
    return [int(s % (2**31 - 1)) for s in state]


def make_agent(config: RunConfig, model: WorldModel) -> Agent:
    if config.agent == "planet":
        from training.planet_agent import PlanetAgent

        return PlanetAgent(model, config.planet)
    from training.dreamer_agent import DreamerAgent

    return DreamerAgent(model, config.dreamer)


@dataclasses.dataclass
class Counters:
    iteration: int = 0
    updates: int = 0
    evals: int = 0
    last_eval_iteration: int = -1
    seconds: float = 0.0  # wall-clock time trained, over all restarts
    restarts: int = 0


class Trainer:
    def __init__(self, config: RunConfig, run_dir: Path, env_factory: EnvFactory = make_envs,
                 model_factory: ModelFactory = default_model_factory):
        self.config, self.run_dir = config, Path(run_dir)
        self.env_factory, self.model_factory = env_factory, model_factory
        self.device = pick_device(config.device)
        self.repeat = agent_action_repeat(config)
        self.overrides = task_overrides(config)
        self.counters = Counters()
        seq = np.random.SeedSequence(config.seed)
        s_train, s_act, s_replay, s_prefill = (int(x) for x in seq.generate_state(4))
        self.g_train = torch.Generator(self.device).manual_seed(s_train)
        self.g_act = torch.Generator(self.device).manual_seed(s_act)
        self.rng_replay = np.random.default_rng(s_replay)
        self.rng_prefill = np.random.default_rng(s_prefill)
        self.envs: Envs | None = None
        self.eval_envs: Envs | None = None
        self.last: dict[str, float] = {}

    # ------------------------------------------------------------------ setup

    def generators(self) -> dict[str, Any]:
        return {"train": self.g_train, "act": self.g_act, "replay": self.rng_replay,
                "prefill": self.rng_prefill}

    @property
    def env_steps(self) -> int:
        return self.replay.total_steps * self.repeat

    def setup(self) -> None:
        c = self.config
        if c.perf.malloc:
            tune_malloc()
        if c.threads:
            torch.set_num_threads(c.threads)
        elif self.device.type == "cpu":
            torch.set_num_threads(1)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(to_json(c), indent=2) + "\n")
        self.replay = EpisodeReplay(self.run_dir / "episodes", c.replay.capacity,
                                    c.replay.compress)
        self.replay.load()
        self.envs = self.env_factory(c.task, env_seeds(c.seed, TRAIN_ENVS,
                                                       self.replay.total_episodes,
                                                       c.env.num_envs), self.overrides)
        self.specs = sensor_specs(self.envs)
        self.action_dim = int(self.envs.act_space.shape[0])
        torch.manual_seed(c.seed)  # parameter initialisation
        model = self.model_factory(c, self.specs, self.action_dim).to(self.device)
        self.agent = make_agent(c, model)
        self.state_names = tuple(getattr(self.envs, "state_names", ()))
        if self.state_names and "state" in self.envs.obs_space:
            self.agent.attach_state_head(StateHead(model.feature_dim, self.state_names, c.state))
        self.agent.to(self.device)
        apply_conv_speed(model, c.perf.bf16, c.perf.channels_last, c.perf.compile_conv)
        self.normalizer: Normalizer | None = None
        self.checkpoint_steps: int | None = None
        self.checkpoint_episodes = 0
        self.metric_rows: int | None = 0  # records of metrics.jsonl a restart keeps
        path = self.run_dir / CHECKPOINT
        if path.exists():
            self.restore(load_checkpoint(path))
        self.logger = Logger(self.run_dir, c.log.tensorboard, self.checkpoint_steps,
                             self.metric_rows)
        if self.checkpoint_steps is not None:  # episodes kept past the checkpoint: their rows
            log_episode_files(self.logger, self.replay.files()[self.checkpoint_episodes:],
                              self.checkpoint_steps, self.checkpoint_episodes, self.repeat)

    def restore(self, data: dict[str, Any]) -> None:
        rates = {k: [g["lr"] for g in o.param_groups] for k, o in self.agent.optimisers().items()}
        self.agent.load_full_state(data["agent"])
        for key, optimiser in self.agent.optimisers().items():  # the config's (resumable) rates
            for group, lr in zip(optimiser.param_groups, rates[key], strict=True):
                group["lr"] = lr
        self.counters = Counters(**data["counters"])
        self.counters.restarts += 1
        self.normalizer = Normalizer.from_state_dict(data["normalizer"])
        restore_generators(self.generators(), data["rng"])
        if self.replay.total_episodes < data["train_episodes"]:
            raise RuntimeError(f"{self.replay.directory} holds {self.replay.total_episodes} "
                               f"episodes but the checkpoint counted "
                               f"{data['train_episodes']}: episodes were removed")
        self.checkpoint_steps = int(data["env_steps"])
        self.checkpoint_episodes = int(data["train_episodes"])
        self.metric_rows = data.get("metric_rows")  # None: older checkpoints, keep by step

    def save(self) -> None:
        save_checkpoint(self.run_dir / CHECKPOINT, {
            "agent": self.agent.full_state(),
            "counters": dataclasses.asdict(self.counters),
            "env_steps": self.env_steps,
            "train_episodes": self.replay.total_episodes,
            "normalizer": self.normalizer.state_dict() if self.normalizer else {},
            "rng": generator_states(self.generators()),
            "config": json.dumps(to_json(self.config)),
            "metric_rows": self.logger.rows,
        })

    # ------------------------------------------------------------------ pieces

    def done(self) -> bool:
        c = self.config.loop
        over_time = c.minutes > 0 and self.counters.seconds >= 60 * c.minutes
        return self.env_steps >= c.steps or over_time

    def collect(self, policy: Callable, count: int) -> list:
        """At least ``count`` episodes, every one into replay: each environment finishes one
        per round, so with N environments the count rounds up to a multiple of N."""
        episodes: list = []
        while len(episodes) < count:
            for episode in run_episodes(self.envs, policy, self.action_dim):
                self.replay.add(episode)
                episodes.append(episode)
        return episodes

    def prefill(self) -> None:
        c = self.config
        missing = c.loop.prefill_episodes - self.replay.total_episodes
        if missing > 0:
            self.collect(RandomPolicy(self.action_dim, self.rng_prefill), missing)
        if self.checkpoint_steps is None:  # a start (or one killed before its checkpoint)
            self.logger.write(self.env_steps, {"prefill/return": float(np.mean(
                [episode_return(e) for e in self.replay.episodes])), "train/episodes":
                self.replay.total_episodes})
        if self.normalizer is None:
            vectors = [s.name for s in self.specs if s.kind == "vector"]
            self.normalizer = Normalizer.fit(self.replay.episodes[:c.loop.prefill_episodes],
                                             vectors)
            head = self.agent.state_head
            if head is not None:  # normalise the state head's targets (once, checkpointed)
                states = np.concatenate([e["state"] for e in
                                         self.replay.episodes[:c.loop.prefill_episodes]])
                loc, scale = fit_scaling(torch.as_tensor(states))
                head.set_scaling(loc.to(self.device), scale.to(self.device))

    def train(self, steps: int) -> dict[str, float]:
        c = self.config.replay
        totals: dict[str, float] = {}
        self.agent.model.train()
        for _ in range(steps):
            data = self.normalizer(self.replay.sample(c.batch, c.length, self.rng_replay))
            for key in ("is_last", "is_terminal"):
                data.pop(key, None)
            # The privileged state goes to the state head only; the model never sees it.
            state = data.pop("state", None)
            if state is not None and self.agent.state_head is not None:
                state = torch.as_tensor(state, device=self.device)
            else:
                state = None
            batch = self.agent.model.to_batch(data)
            metrics = self.agent.update(batch, self.g_train, state)
            self.counters.updates += 1
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + v
        return {k: v / max(steps, 1) for k, v in totals.items()}

    def evaluate(self) -> dict[str, float]:
        c = self.config
        if self.eval_envs is None:
            seeds = env_seeds(c.seed, EVAL_ENVS, self.counters.evals,
                              min(c.env.num_envs, c.loop.eval_episodes))
            self.eval_envs = self.env_factory(c.task, seeds, self.overrides)
        model = self.agent.model
        recorder = VideoRecorder(model, c.log.video_steps) if c.log.video else None
        states = StateRecorder(model) if self.agent.state_head is not None else None
        policy = AgentPolicy(self.agent, self.normalizer, self.device, False, self.g_act,
                             Observers(recorder, states))
        model.set_dropout(False)
        episodes: list = []
        try:
            while len(episodes) < c.loop.eval_episodes:
                episodes += run_episodes(self.eval_envs, policy, self.action_dim)
                policy.observer = Observers(states)  # video of the first episode only
        finally:
            model.set_dropout(True)
        returns = [episode_return(e) for e in episodes[:c.loop.eval_episodes]]
        self.counters.evals += 1
        self.counters.last_eval_iteration = self.counters.iteration
        if recorder is not None:
            recorder.save(self.run_dir / "videos" / f"eval_{self.env_steps:09d}.gif")
        state_metrics = {} if states is None else states.metrics(self.agent.state_head)
        return {**state_metrics,
                "eval/return": float(np.mean(returns)), "eval/return_std": float(np.std(returns)),
                "eval/return_min": float(np.min(returns)),
                "eval/return_max": float(np.max(returns)), "eval/episodes": len(returns),
                "eval/length": float(np.mean([len(e["reward"]) - 1 for e in episodes]))}

    # ------------------------------------------------------------------ the loop

    def run(self) -> dict[str, float]:
        """Train until ``loop.steps`` (or ``loop.minutes``); returns the last metrics."""
        self.setup()
        c = self.config
        bar = tqdm(total=c.loop.steps, initial=min(self.env_steps, c.loop.steps),
                   unit="step", dynamic_ncols=True, disable=not c.log.progress,
                   desc=f"{c.agent}/{c.model} {c.task}")
        try:
            start = time.perf_counter()
            self.prefill()
            if self.counters.iteration == 0 and self.counters.evals == 0:
                self.log_eval(bar)
                self.save()
            self.counters.seconds += time.perf_counter() - start
            bar.update(max(0, min(self.env_steps, c.loop.steps) - bar.n))
            while not self.done():
                self.iteration(bar)
            if self.counters.last_eval_iteration != self.counters.iteration:
                self.log_eval(bar)
            self.save()
        finally:
            bar.close()
            self.close()
        return self.last

    def iteration(self, bar: tqdm) -> None:
        c = self.config
        t0 = time.perf_counter()
        metrics = self.train(c.loop.train_steps)
        t1 = time.perf_counter()
        self.agent.model.set_dropout(True)
        policy = AgentPolicy(self.agent, self.normalizer, self.device, True, self.g_act)
        steps_before = self.env_steps
        episodes = self.collect(policy, c.loop.collect_episodes)
        t2 = time.perf_counter()
        self.counters.iteration += 1
        self.counters.seconds += t2 - t0
        collected = self.env_steps - steps_before
        metrics.update({
            "train/return": float(np.mean([episode_return(e) for e in episodes])),
            "train/length": float(np.mean([len(e["reward"]) - 1 for e in episodes])),
            "train/episodes": self.replay.total_episodes, "train/updates": self.counters.updates,
            "train/iteration": self.counters.iteration,
            "fps": collected / max(t2 - t1, 1e-9),
            "updates_per_s": c.loop.train_steps / max(t1 - t0, 1e-9),
            "time/minutes": self.counters.seconds / 60})
        self.last.update(metrics)
        self.logger.write(self.env_steps, metrics)
        bar.update(max(0, min(self.env_steps, c.loop.steps) - bar.n))
        bar.set_postfix(self.postfix(), refresh=False)
        if self.counters.iteration % c.loop.eval_every == 0:
            self.log_eval(bar)
        if self.counters.iteration % c.loop.checkpoint_every == 0:
            self.save()

    def log_eval(self, bar: tqdm) -> None:
        t0 = time.perf_counter()
        metrics = self.evaluate()
        metrics["time/eval_s"] = time.perf_counter() - t0
        self.counters.seconds += metrics["time/eval_s"]
        self.last.update(metrics)
        self.logger.write(self.env_steps, metrics)
        bar.set_postfix(self.postfix(), refresh=True)

    def postfix(self) -> dict[str, str]:
        out = {}
        for key, label, fmt in (("fps", "fps", ".0f"), ("updates_per_s", "upd/s", ".2f"),
                                ("train/return", "ret", ".1f"), ("eval/return", "eval", ".1f")):
            if key in self.last and math.isfinite(self.last[key]):
                out[label] = format(self.last[key], fmt)
        return out

    def close(self) -> None:
        for envs in (self.envs, self.eval_envs):
            if envs is not None:
                envs.close()
        self.envs = self.eval_envs = None
        logger = getattr(self, "logger", None)
        if logger is not None:
            logger.close()


def random_returns(config: RunConfig, episodes: int, seed: int = 12345,
                   env_factory: EnvFactory = make_envs) -> list[float]:
    """Returns of the uniform random policy on the run's task and episode settings."""
    envs = env_factory(config.task, env_seeds(seed, EVAL_ENVS, 0, 1), task_overrides(config))
    try:
        policy = RandomPolicy(int(envs.act_space.shape[0]), np.random.default_rng(seed))
        out: list[float] = []
        while len(out) < episodes:
            out += [episode_return(e) for e in run_episodes(envs, policy,
                                                            int(envs.act_space.shape[0]))]
        return out[:episodes]
    finally:
        envs.close()


def train(config: RunConfig, run_dir: Path, env_factory: EnvFactory = make_envs,
          model_factory: ModelFactory = default_model_factory) -> dict[str, float]:
    return Trainer(config, run_dir, env_factory, model_factory).run()


__all__: Sequence[str] = ("Trainer", "random_returns", "train")
