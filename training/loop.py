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

Under torchrun (``training.distributed``) every rank runs this loop on its own episodes
(seed + rank, its own replay under ``rank_dir``) with batch / world size, the gradients
averaged over the ranks; the step counts are summed over the ranks, and rank 0 alone
evaluates and writes the config, metrics, videos and checkpoint.
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

from estimator.state_head import StateHead, fit_scaling
from training.agent import AgentPolicy, RandomPolicy
from training.checkpoint import (
    CHECKPOINT,
    generator_states,
    load_checkpoint,
    restore_generators,
    save_checkpoint,
)
from training.config import RunConfig, agent_action_repeat, task_overrides, to_json
from training.distributed import SINGLE, Distributed, DistributedError, rank_config, rank_dir
from training.driver import EnvFactory, Envs, episode_return, make_envs, run_episodes
from training.logger import Logger, log_episode_files
from training.perf import apply_speed, tune_malloc
from training.replay import EpisodeReplay, Normalizer, write_atomic
from training.run_parts import (
    EVAL_ENVS,
    TRAIN_ENVS,
    ModelFactory,
    default_model_factory,
    env_seeds,
    make_agent,
    pick_device,
    random_returns,
    sensor_specs,
)
from training.state_eval import Observers, StateRecorder
from training.video import VideoRecorder


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
                 model_factory: ModelFactory = default_model_factory,
                 dist: Distributed = SINGLE):
        self.config, self.run_dir = config, Path(run_dir)
        self.env_factory, self.model_factory, self.dist = env_factory, model_factory, dist
        self.local = rank_config(config, dist.world)  # batch / world size on each rank
        self.device = dist.local_device(pick_device(config.device))
        self.repeat = agent_action_repeat(config)
        self.overrides = task_overrides(config)
        self.counters = Counters()
        self.seed = config.seed + dist.rank  # a rank's episodes and draws
        self.synced = (0, 0)  # env steps and episodes of every rank (distributed)
        seq = np.random.SeedSequence(self.seed)
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
        """Environment steps of the run (of every rank: as of the last ``sync_counts``)."""
        return self.synced[0] if self.dist.active else self.replay.total_steps * self.repeat

    @property
    def total_episodes(self) -> int:
        return self.synced[1] if self.dist.active else self.replay.total_episodes

    def sync_counts(self) -> None:
        """Sum the ranks' step and episode counts (every rank calls it at the same points)."""
        if self.dist.active:
            steps, episodes = self.dist.sum([self.replay.total_steps * self.repeat,
                                             self.replay.total_episodes])
            self.synced = (steps, episodes)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if self.logger is not None:  # rank 0 only
            self.logger.write(step, metrics)

    def setup(self) -> None:
        c = self.config
        if c.perf.malloc:
            tune_malloc()
        if c.threads:
            torch.set_num_threads(c.threads)
        elif self.device.type == "cpu":
            torch.set_num_threads(1)
        main = self.dist.is_main
        path = self.run_dir / CHECKPOINT
        saved = load_checkpoint(path) if path.exists() else None
        if saved is not None:
            self.check_world(int(saved.get("world_size", 1)))
        own = rank_dir(self.run_dir, self.dist.rank)
        own.mkdir(parents=True, exist_ok=True)
        if main:  # atomic: the other ranks may be reading it
            write_atomic(self.run_dir / "config.json",
                         (json.dumps(to_json(c), indent=2) + "\n").encode())
        self.replay = EpisodeReplay(own / "episodes", c.replay.capacity, c.replay.compress)
        self.replay.load()
        self.envs = self.env_factory(c.task, env_seeds(self.seed, TRAIN_ENVS,
                                                       self.replay.total_episodes,
                                                       c.env.num_envs), self.overrides)
        self.specs = sensor_specs(self.envs)
        self.action_dim = int(self.envs.act_space.shape[0])
        torch.manual_seed(c.seed)  # parameter initialisation (the same on every rank)
        model = self.model_factory(c, self.specs, self.action_dim).to(self.device)
        self.agent = make_agent(self.local, model)
        self.state_names = tuple(getattr(self.envs, "state_names", ()))
        if self.state_names and "state" in self.envs.obs_space:
            self.agent.attach_state_head(StateHead(model.feature_dim, self.state_names, c.state))
        self.agent.to(self.device)
        apply_speed(model, self.agent.actor_critic(), c.perf)
        self.normalizer: Normalizer | None = None
        self.checkpoint_steps: int | None = None
        self.checkpoint_episodes = 0
        self.metric_rows: int | None = 0  # records of metrics.jsonl a restart keeps
        if saved is not None:
            self.restore(saved)
        if self.dist.active:
            self.agent.grad_sync = self.dist.average_gradients
            self.dist.broadcast_module(self.agent)  # rank 0's weights everywhere
        self.sync_counts()
        self.logger = Logger(self.run_dir, c.log.tensorboard, self.checkpoint_steps,
                             self.metric_rows) if main else None
        if self.checkpoint_steps is not None and not self.dist.active:
            # Episodes kept past the checkpoint: their rows (a distributed run's steps are
            # the sum over the ranks, which no rank's files give: it leaves them out).
            log_episode_files(self.logger, self.replay.files()[self.checkpoint_episodes:],
                              self.checkpoint_steps, self.checkpoint_episodes, self.repeat)

    def restore(self, data: dict[str, Any]) -> None:
        rates = {k: [g["lr"] for g in o.param_groups] for k, o in self.agent.optimisers().items()}
        self.agent.load_full_state(data["agent"])
        for key, optimiser in self.agent.optimisers().items():  # the config's (resumable) rates
            for group, lr in zip(optimiser.param_groups, rates[key], strict=True):
                group["lr"] = lr
        mine = data["ranks"][self.dist.rank] if self.dist.active else data
        self.counters = Counters(**data["counters"])
        self.counters.restarts += 1
        self.normalizer = Normalizer.from_state_dict(data["normalizer"])
        restore_generators(self.generators(), mine["rng"])
        if self.replay.total_episodes < mine["train_episodes"]:
            raise RuntimeError(f"{self.replay.directory} holds {self.replay.total_episodes} "
                               f"episodes but the checkpoint counted "
                               f"{mine['train_episodes']}: episodes were removed")
        self.checkpoint_steps = int(data["env_steps"])
        self.checkpoint_episodes = int(mine["train_episodes"])
        self.metric_rows = data.get("metric_rows")  # None: older checkpoints, keep by step

    def check_world(self, world: int) -> None:
        """A run is resumed by as many processes as trained it (each has its own replay)."""
        if world != self.dist.world:
            how = f"torchrun --nproc_per_node={world} -m" if world > 1 else "python -m"
            raise DistributedError(f"{self.run_dir} was trained by {world} process(es), not "
                                   f"{self.dist.world}: each rank's replay is its own; resume "
                                   f"it with {how} training.{self.config.agent} --resume")

    def save(self) -> None:
        """Rank 0 writes; a distributed run adds each rank's generators and episode count."""
        ranks = self.dist.gather({"rng": generator_states(self.generators()),
                                  "train_episodes": self.replay.total_episodes})
        if not self.dist.is_main:
            return
        extra = {"world_size": self.dist.world, "ranks": ranks} if self.dist.active else {}
        save_checkpoint(self.run_dir / CHECKPOINT, {
            **extra,
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
        return self.env_steps >= c.steps or self.dist.any(over_time)

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
        self.sync_counts()
        if self.checkpoint_steps is None:  # a start (or one killed before its checkpoint)
            self.log(self.env_steps, {"prefill/return": float(np.mean(
                [episode_return(e) for e in self.replay.episodes])), "train/episodes":
                self.total_episodes})
        if self.normalizer is None:
            vectors = [s.name for s in self.specs if s.kind == "vector"]
            head = self.agent.state_head
            keys = vectors + (["state"] if head is not None else [])
            prefill = self.replay.episodes[:c.loop.prefill_episodes]
            if self.dist.active:  # the same statistics on every rank: of all ranks' prefill
                mine = [{k: e[k] for k in keys} for e in prefill]
                prefill = [e for rank in self.dist.all_gather(mine) for e in rank]
            self.normalizer = Normalizer.fit(prefill, vectors)
            if head is not None:  # normalise the state head's targets (once, checkpointed)
                states = np.concatenate([e["state"] for e in prefill])
                loc, scale = fit_scaling(torch.as_tensor(states))
                head.set_scaling(loc.to(self.device), scale.to(self.device))

    def train(self, steps: int) -> dict[str, float]:
        c = self.config.replay
        totals: dict[str, float] = {}
        self.agent.model.train()
        for _ in range(steps):
            data = self.normalizer(self.replay.sample(self.local.replay.batch, c.length,
                                                      self.rng_replay))
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
                   unit="step", dynamic_ncols=True,
                   disable=not (c.log.progress and self.dist.is_main),
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
        self.sync_counts()
        t2 = time.perf_counter()
        self.counters.iteration += 1
        self.counters.seconds += t2 - t0
        collected = self.env_steps - steps_before
        metrics.update({
            "train/return": float(np.mean([episode_return(e) for e in episodes])),
            "train/length": float(np.mean([len(e["reward"]) - 1 for e in episodes])),
            "train/episodes": self.total_episodes, "train/updates": self.counters.updates,
            "train/iteration": self.counters.iteration,
            "fps": collected / max(t2 - t1, 1e-9),
            "updates_per_s": c.loop.train_steps / max(t1 - t0, 1e-9),
            "time/minutes": self.counters.seconds / 60})
        self.last.update(metrics)
        self.log(self.env_steps, metrics)
        bar.update(max(0, min(self.env_steps, c.loop.steps) - bar.n))
        bar.set_postfix(self.postfix(), refresh=False)
        if self.counters.iteration % c.loop.eval_every == 0:
            self.log_eval(bar)
        if self.counters.iteration % c.loop.checkpoint_every == 0:
            self.save()

    def log_eval(self, bar: tqdm) -> None:
        if not self.dist.is_main:  # rank 0 alone evaluates; the others count it
            self.counters.evals += 1
            self.counters.last_eval_iteration = self.counters.iteration
            return
        t0 = time.perf_counter()
        metrics = self.evaluate()
        metrics["time/eval_s"] = time.perf_counter() - t0
        self.counters.seconds += metrics["time/eval_s"]
        self.last.update(metrics)
        self.log(self.env_steps, metrics)
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


def train(config: RunConfig, run_dir: Path, env_factory: EnvFactory = make_envs,
          model_factory: ModelFactory = default_model_factory,
          dist: Distributed = SINGLE) -> dict[str, float]:
    return Trainer(config, run_dir, env_factory, model_factory, dist).run()


__all__: Sequence[str] = ("Trainer", "random_returns", "train")
