"""The filter work of the sessions of one model, as batches: belief queries (each at its
``BeliefDetail``: the output heads run only on the rows that asked for them), vector
messages that want their belief (encoded, recorded and answered in one batch: one thread
hop), the policy's actions and settling (bringing a timeline that nobody queries up to
date, so its old records can go), for any number of sessions at once.

A batch runs in three phases, so the arithmetic can leave the event loop:

1. ``prepare`` (the thread that owns the sessions): each timeline's ``plan``, one per
   timeline however many of its queries are in the batch, and one per ``ObserveJob`` (as
   if its message were recorded);
2. ``compute`` (any thread; it reads only the plans, never a timeline): the encoders of
   the ``ObserveJob`` messages (one call per sensor), ``OnlineFilter.run_chains`` on every
   plan in lockstep, then each output head once on the stacked beliefs of the queries that
   asked for it;
3. ``finish`` (the owning thread): each ``ObserveJob``'s ``record`` (the message enters its
   timeline), each timeline's ``commit``; the answers.

``run_inline`` runs the three at once (the synchronous registry, one query at a time).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from proto.wire import Ack, BeliefDetail
from server.runtime.filter import OnlineFilter
from server.runtime.kalman import Belief
from server.runtime.uncertainty import StateEstimate
from server.timeline import Pending, Replay, Timeline


@dataclass(frozen=True)
class BeliefJob:
    """The belief at ``tick`` with the outputs ``detail`` asks for (reward always; the state
    from STATE on, the decoded sensors at FULL)."""

    timeline: Timeline
    tick: int
    detail: BeliefDetail = BeliefDetail.FULL


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


@dataclass(frozen=True)
class ObserveJob:
    """A vector sensor's message ``x`` ``[1, *shape]`` (decoded, not encoded yet) and the
    belief at its tick: ``compute`` encodes it and runs the filter as if it were recorded;
    ``finish`` calls ``record(w, var)`` on the owning thread (it records the message, or
    raises the refusal that answers the job) and commits the beliefs only when the
    timeline took the message as planned."""

    timeline: Timeline
    pending: Pending
    x: np.ndarray
    record: Callable[[np.ndarray, np.ndarray], Ack]
    detail: BeliefDetail = BeliefDetail.FULL

    @property
    def tick(self) -> int:
        return self.pending.tick


Job = BeliefJob | ActJob | SettleJob | ObserveJob


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
    detail: BeliefDetail = BeliefDetail.FULL  # what the job asked for (what is computed)


@dataclass(frozen=True)
class Policy:
    """An ``ActJob``'s answer: the actor's mode ``unit`` ``[A]`` on the belief mean."""

    tick: int
    unit: np.ndarray


@dataclass(frozen=True)
class Settled:
    tick: int


@dataclass(frozen=True)
class Observed:
    """An ``ObserveJob``'s answer: the message's ack and the belief at its tick."""

    ack: Ack
    estimate: Estimate


Answer = Estimate | Policy | Settled | Observed


def _tick(job: Job) -> int:
    if isinstance(job, SettleJob):
        return max(0, job.timeline.head - job.timeline.window_ticks)
    return job.tick


@dataclass(frozen=True)
class Prepared:
    """The plans of a batch (one per timeline, plus one per ``ObserveJob``) and, per job,
    which plan answers it."""

    jobs: tuple[Job, ...]
    timelines: tuple[Timeline, ...]  # per plan
    replays: tuple[Replay, ...]
    plan_of: tuple[int, ...]  # per job: the index of its plan (-1: refused)
    ticks: tuple[int, ...]  # per job: the tick it asks about (as planned)
    refused: dict[int, Exception]  # ObserveJobs refused when planned: why


@dataclass(frozen=True)
class Computed:
    results: tuple[list[Belief], ...]  # per plan: run_chains' beliefs
    answers: tuple[Answer | None, ...]  # per job (ObserveJob: its Estimate until finish)
    encoded: dict[int, tuple[np.ndarray, np.ndarray]]  # ObserveJob index -> (w, var)


def _located(job: ObserveJob) -> ObserveJob:
    """The job with its tick located again, as the timeline is now (between submit and
    plan other messages may have moved the newest tick or set the start): OutOfRange when
    its time is no longer accepted."""
    tick = job.timeline.locate(job.pending.timestamp)
    return job if tick == job.pending.tick else replace(
        job, pending=job.pending._replace(tick=tick))


def prepare(jobs: list[Job]) -> Prepared:
    index: dict[int, int] = {}
    timelines: list[Timeline] = []
    ticks: list[list[int]] = []
    pending: list[Pending | None] = []
    plan_of, job_ticks, planned = [], [], []
    refused: dict[int, Exception] = {}
    for i, job in enumerate(jobs):
        observe = isinstance(job, ObserveJob)
        if observe:
            try:
                job = _located(job)
            except Exception as e:  # answered by the refusal, never recorded
                refused[i] = e
                plan_of.append(-1)
                job_ticks.append(-1)
                planned.append(job)
                continue
        key = id(job) if observe else id(job.timeline)  # an observation plans alone
        if key not in index:
            index[key] = len(timelines)
            timelines.append(job.timeline)
            ticks.append([])
            pending.append(job.pending if observe else None)
        plan_of.append(index[key])
        job_ticks.append(_tick(job))
        ticks[index[key]].append(job_ticks[-1])
        planned.append(job)
    replays = tuple(tl.plan(t, p) for tl, t, p in zip(timelines, ticks, pending, strict=True))
    return Prepared(tuple(planned), tuple(timelines), replays, tuple(plan_of),
                    tuple(job_ticks), refused)


def _encode(engine: OnlineFilter, work: Prepared) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """The encoder outputs of every ``ObserveJob``, one encoder call per sensor."""
    by_sensor: dict[str, list[int]] = {}
    for i, job in enumerate(work.jobs):
        if isinstance(job, ObserveJob) and i not in work.refused:
            by_sensor.setdefault(job.pending.sensor, []).append(i)
    out = {}
    for sensor, rows in by_sensor.items():
        w, var = engine.bundle.encode(sensor, np.concatenate([work.jobs[i].x for i in rows]))
        for r, i in enumerate(rows):
            out[i] = (w[r:r + 1], var[r:r + 1])
    return out


def _rows(b: Belief, rows: list[int]) -> Belief:
    return Belief(b.mean[rows], b.var[rows])


def compute(engine: OnlineFilter, work: Prepared) -> Computed:
    encoded = _encode(engine, work)
    chains = [r.chain for r in work.replays]
    for i, (w, var) in encoded.items():
        p = work.plan_of[i]
        if np.isfinite(w).all() and np.isfinite(var).all():  # else refused in finish
            chains[p] = work.replays[p].with_update(w, var)
    results = tuple(engine.run_chains(chains))
    beliefs = [None if p < 0 else work.replays[p].belief(tick, results[p])
               for tick, p in zip(work.ticks, work.plan_of, strict=True)]
    asked = [i for i, job in enumerate(work.jobs)
             if isinstance(job, BeliefJob | ObserveJob) and i not in work.refused]
    acting = [i for i, job in enumerate(work.jobs) if isinstance(job, ActJob)]
    answers: list[Answer | None] = [None] * len(work.jobs)
    if asked:
        b = Belief(np.concatenate([beliefs[i].mean for i in asked]),
                   np.concatenate([beliefs[i].var for i in asked]))
        reward = engine.reward(b.mean)
        # the expensive heads (2n + 1 sigma points each) only on the rows that asked
        with_state = [r for r, i in enumerate(asked) if work.jobs[i].detail.state]
        with_decoded = [r for r, i in enumerate(asked) if work.jobs[i].detail.decoded]
        state = engine.state(_rows(b, with_state)) if with_state else None
        decoded = {name: engine.decoded(name, _rows(b, with_decoded))
                   for name in engine.vector_decoders} if with_decoded else {}
        state_row = {r: j for j, r in enumerate(with_state)}
        decoded_row = {r: j for j, r in enumerate(with_decoded)}
        for r, i in enumerate(asked):
            head = work.replays[work.plan_of[i]].head
            tick = work.ticks[i]
            j, s = decoded_row.get(r), state_row.get(r)
            answers[i] = Estimate(
                tick, head, tick > head, beliefs[i],
                {} if j is None else {n: StateEstimate(d.mean[j], d.var[j])
                                      for n, d in decoded.items()},
                float(reward[r]),
                None if s is None or state is None else StateEstimate(state.mean[s],
                                                                      state.var[s]),
                work.jobs[i].detail)
    if acting:
        units = engine.act(np.concatenate([beliefs[i].mean for i in acting]))
        for r, i in enumerate(acting):
            answers[i] = Policy(work.ticks[i], units[r].copy())
    for i, job in enumerate(work.jobs):
        if isinstance(job, SettleJob):
            answers[i] = Settled(work.ticks[i])
    return Computed(results, tuple(answers), encoded)


def _observed(work: Prepared, out: Computed, i: int) -> Observed | Exception:
    """Record an ``ObserveJob``'s message, then commit its plan. When the timeline took the
    message as planned (inserted, and nothing else changed since the plan: the insert is
    the only edit), the plan's edit number moves past it; otherwise ``commit``'s checks keep
    what the insert or other changes made stale. A refused message commits nothing (the
    plan assumed it). The answer is the belief as planned."""
    job, p = work.jobs[i], work.plan_of[i]
    tl, replay = work.timelines[p], work.replays[p]
    before = tl.edits
    try:
        ack = job.record(*out.encoded[i])
    except Exception as e:  # the refusal answers this message
        return e
    exact = replay.pending is not None and ack.applied and before == replay.edits \
        and tl.edits == before + 1
    tl.commit(replace(replay, edits=tl.edits) if exact else replay, out.results[p])
    return Observed(ack, out.answers[i])


def finish(work: Prepared, out: Computed) -> tuple[Answer | Exception, ...]:
    observing = {work.plan_of[i] for i in out.encoded}
    for p, (tl, replay, results) in enumerate(zip(work.timelines, work.replays, out.results,
                                                  strict=True)):
        if p not in observing:
            tl.commit(replay, results)
    answers: list[Answer | Exception] = list(out.answers)
    for i in out.encoded:
        answers[i] = _observed(work, out, i)
    for i, e in work.refused.items():
        answers[i] = e
    return tuple(answers)


def run_inline(engine: OnlineFilter, jobs: list[Job]) -> tuple[Answer | Exception, ...]:
    work = prepare(jobs)
    return finish(work, compute(engine, work))
