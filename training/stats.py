"""Aggregate metrics with stratified bootstrap confidence intervals (Agarwal et al., 2021).

The paper reports interquartile means (IQM) of normalised scores over all runs x tasks
with 95% stratified bootstrap intervals, computed with the rliable library. These are
the same definitions in numpy:

- ``iqm``: rliable's ``aggregate_iqm``, i.e. ``scipy.stats.trim_mean(x, 0.25)`` over the
  flattened scores: sort, drop ``floor(n / 4)`` scores at each end, average the rest (no
  fractional weighting of the boundary scores).
- ``stratified_bootstrap``: the tasks are the strata; a replicate redraws, within each
  task independently, as many runs as that task has, with replacement, and applies the
  statistic to the pooled redrawn scores (rliable's ``StratifiedBootstrap`` with
  ``task_bootstrap=False``). Tasks may have different numbers of runs.
- ``stratified_bootstrap_ci``: the percentile interval of those replicates (rliable's
  default ``method='percentile'``).

Trailing axes (e.g. evaluation steps) are carried along: one replicate redraws runs once
and applies to every step, so each step's marginal interval is what a separate bootstrap
at that step would give.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

# statistic(x, axis) reduces the pooled-run axis of x
Statistic = Callable[..., np.ndarray]


def iqm(scores: ArrayLike, axis: int | None = None) -> np.ndarray:
    """Interquartile mean: the 25% trimmed mean (``scipy.stats.trim_mean(x, 0.25)``)."""
    x = np.asarray(scores, dtype=float)
    if axis is None:
        x, axis = x.reshape(-1), 0
    x = np.moveaxis(x, axis, -1)
    n = x.shape[-1]
    if n == 0:
        raise ValueError("iqm of an empty set of scores")
    cut = n // 4
    if cut:
        x = np.partition(x, (cut, n - cut - 1), axis=-1)
    return x[..., cut:n - cut].mean(axis=-1)


def mean(scores: ArrayLike, axis: int | None = None) -> np.ndarray:
    return np.mean(np.asarray(scores, dtype=float), axis=axis)


def median(scores: ArrayLike, axis: int | None = None) -> np.ndarray:
    return np.median(np.asarray(scores, dtype=float), axis=axis)


STATISTICS: dict[str, Statistic] = {"iqm": iqm, "mean": mean, "median": median}


def _strata(scores_by_task: Sequence[ArrayLike]) -> list[np.ndarray]:
    strata = [np.asarray(s, dtype=float) for s in scores_by_task]
    if not strata:
        raise ValueError("no tasks to aggregate")
    for i, s in enumerate(strata):
        if s.ndim == 0 or s.shape[0] == 0:
            raise ValueError(f"task {i} has no runs (scores of shape {s.shape})")
        if s.shape[1:] != strata[0].shape[1:]:
            raise ValueError(f"tasks disagree on the trailing shape: {s.shape[1:]} vs "
                             f"{strata[0].shape[1:]}")
        if not np.isfinite(s).all():
            raise ValueError(f"task {i} has non-finite scores")
    return strata


def pooled(scores_by_task: Sequence[ArrayLike]) -> np.ndarray:
    """All runs of all tasks ``[runs, ...]``, the sample the statistics are taken over."""
    return np.concatenate(_strata(scores_by_task), axis=0)


def stratified_bootstrap(scores_by_task: Sequence[ArrayLike], statistic: Statistic = iqm, *,
                         reps: int = 10_000, rng: np.random.Generator,
                         chunk: int = 1000) -> np.ndarray:
    """Bootstrap replicates ``[reps, ...]`` of ``statistic`` over the pooled runs.

    ``scores_by_task``: one array ``[runs_t, ...]`` per task (the strata).
    """
    strata = _strata(scores_by_task)
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    out = []
    for start in range(0, reps, chunk):
        n = min(chunk, reps - start)
        resampled = [s[rng.integers(0, s.shape[0], size=(n, s.shape[0]))] for s in strata]
        out.append(statistic(np.concatenate(resampled, axis=1), axis=1))
    return np.concatenate(out, axis=0)


@dataclass(frozen=True)
class Interval:
    """A point estimate and its confidence interval (arrays for per-step estimates)."""

    point: np.ndarray
    lower: np.ndarray
    upper: np.ndarray


def stratified_bootstrap_ci(scores_by_task: Sequence[ArrayLike], statistic: Statistic = iqm,
                            *, reps: int = 10_000, confidence: float = 0.95,
                            rng: np.random.Generator) -> Interval:
    """Point estimate over the pooled runs and its percentile stratified bootstrap CI."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    point = statistic(pooled(scores_by_task), axis=0)
    replicates = stratified_bootstrap(scores_by_task, statistic, reps=reps, rng=rng)
    tail = 100.0 * (1.0 - confidence) / 2.0
    lower, upper = np.percentile(replicates, [tail, 100.0 - tail], axis=0)
    return Interval(np.asarray(point), lower, upper)
