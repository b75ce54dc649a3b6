"""The filter work of the sessions of one model, as batches: belief queries, the policy's
actions and settling (bringing a timeline that nobody queries up to date, so its old
records can go), for any number of sessions at once.

A batch runs in three phases, so the arithmetic can leave the event loop:

1. ``prepare`` (the thread that owns the sessions): each timeline's ``plan``, one per
   timeline however many of its queries are in the batch;
2. ``compute`` (any thread; it reads only the plans, never a timeline):
   ``OnlineFilter.run_chains`` on every plan in lockstep, then each output head once on
   the stacked beliefs of all queries;
3. ``finish`` (the owning thread): each timeline's ``commit``; the answers.

``run_inline`` runs the three at once (the synchronous registry, one query at a time).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from server.runtime.filter import OnlineFilter
from server.runtime.kalman import Belief
from server.runtime.uncertainty import StateEstimate
from server.timeline import Replay, Timeline


@dataclass(frozen=True)
class BeliefJob:
    """The belief at ``tick`` with its outputs (decoded sensors, reward, state)."""

    timeline: Timeline
    tick: int


@dataclass(frozen=True)
class ActJob:
    """The policy's action (unit range) on the mean of the belief at ``tick``."""

    timeline: Timeline
    tick: int


@dataclass(frozen=True)
class SettleJob:
    """Bring the beliefs up to the tick before the window, so the records older than the
    window can be dropped."""

    timeline: Timeline


Job = BeliefJob | ActJob | SettleJob


@dataclass(frozen=True)
class Estimate:
    """A ``BeliefJob``'s answer: ``predicted`` when ``tick`` is beyond the newest tick
    ``head`` (as planned)."""

    tick: int
    head: int
    predicted: bool
    belief: Belief  # [1, L]
    decoded: dict[str, StateEstimate]  # [P] each
    reward: float
    state: StateEstimate | None  # [S]


@dataclass(frozen=True)
class Policy:
    """An ``ActJob``'s answer: the actor's mode ``unit`` ``[A]`` on the belief mean."""

    tick: int
    unit: np.ndarray


@dataclass(frozen=True)
class Settled:
    tick: int


Answer = Estimate | Policy | Settled


def _tick(job: Job) -> int:
    if isinstance(job, SettleJob):
        return max(0, job.timeline.head - job.timeline.window_ticks)
    return job.tick


@dataclass(frozen=True)
class Prepared:
    """The plans of a batch (one per timeline) and, per job, which plan answers it."""

    jobs: tuple[Job, ...]
    timelines: tuple[Timeline, ...]
    replays: tuple[Replay, ...]
    plan_of: tuple[int, ...]  # per job: the index of its timeline's plan
    ticks: tuple[int, ...]  # per job: the tick it asks about (as planned)


@dataclass(frozen=True)
class Computed:
    results: tuple[list[Belief], ...]  # per plan: run_chains' beliefs
    answers: tuple[Answer, ...]  # per job


def prepare(jobs: list[Job]) -> Prepared:
    index: dict[int, int] = {}
    timelines: list[Timeline] = []
    ticks: list[list[int]] = []
    plan_of, job_ticks = [], []
    for job in jobs:
        key = id(job.timeline)
        if key not in index:
            index[key] = len(timelines)
            timelines.append(job.timeline)
            ticks.append([])
        plan_of.append(index[key])
        job_ticks.append(_tick(job))
        ticks[index[key]].append(job_ticks[-1])
    replays = tuple(tl.plan(t) for tl, t in zip(timelines, ticks, strict=True))
    return Prepared(tuple(jobs), tuple(timelines), replays, tuple(plan_of), tuple(job_ticks))


def compute(engine: OnlineFilter, work: Prepared) -> Computed:
    results = tuple(engine.run_chains([r.chain for r in work.replays]))
    beliefs = [work.replays[p].belief(tick, results[p])
               for tick, p in zip(work.ticks, work.plan_of, strict=True)]
    asked = [i for i, job in enumerate(work.jobs) if isinstance(job, BeliefJob)]
    acting = [i for i, job in enumerate(work.jobs) if isinstance(job, ActJob)]
    answers: list[Answer | None] = [None] * len(work.jobs)
    if asked:
        b = Belief(np.concatenate([beliefs[i].mean for i in asked]),
                   np.concatenate([beliefs[i].var for i in asked]))
        decoded = {name: engine.decoded(name, b) for name in engine.vector_decoders}
        reward = engine.reward(b.mean)
        state = engine.state(b)
        for r, i in enumerate(asked):
            head = work.replays[work.plan_of[i]].head
            tick = work.ticks[i]
            answers[i] = Estimate(
                tick, head, tick > head, beliefs[i],
                {n: StateEstimate(d.mean[r], d.var[r]) for n, d in decoded.items()},
                float(reward[r]),
                None if state is None else StateEstimate(state.mean[r], state.var[r]))
    if acting:
        units = engine.act(np.concatenate([beliefs[i].mean for i in acting]))
        for r, i in enumerate(acting):
            answers[i] = Policy(work.ticks[i], units[r].copy())
    for i, job in enumerate(work.jobs):
        if isinstance(job, SettleJob):
            answers[i] = Settled(work.ticks[i])
    return Computed(results, tuple(answers))


def finish(work: Prepared, out: Computed) -> tuple[Answer, ...]:
    for tl, replay, results in zip(work.timelines, work.replays, out.results, strict=True):
        tl.commit(replay, results)
    return out.answers


def run_inline(engine: OnlineFilter, jobs: list[Job]) -> tuple[Answer, ...]:
    work = prepare(jobs)
    return finish(work, compute(engine, work))
