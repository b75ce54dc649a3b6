"""Episode replay: every finished episode is one .npz on disk, and batches of sequences.

Files are written atomically (temporary file, fsync, ``os.replace``) into
``RUN_DIR/episodes/`` as ``{index:06d}-{length}.npz``: a run killed at any moment leaves only
whole episodes, and ``EpisodeReplay.load`` re-reads them on resume (stale temporary files are
removed). An episode holds the observation dict of docs/design.md §1 with a leading time axis
``[T+1]`` (the reset observation and one per agent step; ``time/*`` stamps are dropped) and
``action`` ``[T+1, A]``: ``action[t]`` is the action applied after observing step t (the
last one is zeros).

Sampling (Dreamer V1): a uniform episode among those long enough, a uniform start in it.
Proprioceptive sensors are normalised with statistics of the prefill episodes
(:class:`Normalizer`), applied to batches and to online observations alike.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

Episode = dict[str, np.ndarray]
EPISODE_FILE = re.compile(r"^(\d{6})-(\d+)\.npz$")
DROPPED_PREFIXES = ("time/",)


def episode_length(episode: Mapping[str, np.ndarray]) -> int:
    """Agent steps of an episode (observations minus the reset observation)."""
    return len(episode["reward"]) - 1


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the whole new one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class EpisodeBuilder:
    """Accumulates one environment's observations and actions into an episode."""

    def __init__(self) -> None:
        self.steps: list[dict[str, np.ndarray]] = []

    def add(self, obs: Mapping[str, np.ndarray]) -> None:
        """The observation of step t; ``set_action`` then records the action applied after it."""
        step = {k: np.asarray(v) for k, v in obs.items() if not k.startswith(DROPPED_PREFIXES)}
        self.steps.append(step)

    def set_action(self, action: np.ndarray) -> None:
        self.steps[-1]["action"] = np.asarray(action, np.float32)

    def finish(self, action_dim: int) -> Episode:
        if len(self.steps) < 2:
            raise ValueError("an episode needs the reset observation and at least one step")
        last = self.steps[-1]
        if "action" not in last:
            last["action"] = np.zeros(action_dim, np.float32)
        keys = self.steps[0].keys()
        return {k: np.stack([s[k] for s in self.steps]) for k in keys}


class EpisodeReplay:
    """Episodes on disk and in memory; uniform sampling of fixed-length sequences."""

    def __init__(self, directory: Path, capacity: int = 0, compress: bool = True):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.capacity = capacity
        self.compress = compress
        self.episodes: list[Episode] = []
        self.total_episodes = 0  # on disk, including those dropped from memory
        self.total_steps = 0  # agent steps on disk

    def __len__(self) -> int:
        return len(self.episodes)

    @property
    def steps_in_memory(self) -> int:
        return sum(episode_length(e) for e in self.episodes)

    def files(self) -> list[Path]:
        return sorted(p for p in self.directory.iterdir() if EPISODE_FILE.match(p.name))

    def load(self) -> int:
        """Read every complete episode on disk (after a restart); returns how many."""
        for stale in self.directory.glob("*.tmp"):
            stale.unlink()
        for path in self.files():
            with np.load(path) as data:
                episode = {k: data[k] for k in data.files}
            self._insert(episode)
        return self.total_episodes

    def add(self, episode: Episode) -> Path:
        """Store a finished episode on disk (atomically), then in memory."""
        length = episode_length(episode)
        path = self.directory / f"{self.total_episodes:06d}-{length}.npz"
        buffer = io.BytesIO()
        (np.savez_compressed if self.compress else np.savez)(buffer, **episode)
        write_atomic(path, buffer.getvalue())
        self._insert(episode)
        return path

    def _insert(self, episode: Episode) -> None:
        self.episodes.append(episode)
        self.total_episodes += 1
        self.total_steps += episode_length(episode)
        if self.capacity:
            while len(self.episodes) > 1 and self.steps_in_memory > self.capacity:
                self.episodes.pop(0)

    def sample(self, batch: int, length: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``batch`` sequences of ``length`` observations ``[B, T, ...]``."""
        candidates = [e for e in self.episodes if len(e["reward"]) >= length]
        if not candidates:
            raise ValueError(f"no episode in replay has {length} observations")
        rows = []
        for _ in range(batch):
            episode = candidates[int(rng.integers(len(candidates)))]
            start = int(rng.integers(len(episode["reward"]) - length + 1))
            rows.append({k: v[start:start + length] for k, v in episode.items()})
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


class Normalizer:
    """Per-dimension mean/std of vector sensors over their valid steps."""

    def __init__(self, stats: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None):
        self.stats = {k: (np.asarray(m, np.float32), np.asarray(s, np.float32))
                      for k, (m, s) in (stats or {}).items()}

    @classmethod
    def fit(cls, episodes: Sequence[Episode], keys: Sequence[str], min_std: float = 1e-3
            ) -> Normalizer:
        stats = {}
        for key in keys:
            values = []
            for e in episodes:
                valid = e.get(f"valid/{key}", np.ones(len(e[key]), bool))
                values.append(e[key][valid])
            data = np.concatenate(values).astype(np.float64)
            if len(data) == 0:
                raise ValueError(f"no valid {key!r} readings to normalise with")
            stats[key] = (data.mean(0), np.maximum(data.std(0), min_std))
        return cls(stats)

    def __call__(self, data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Normalised copy of a dict (any leading axes); missing readings stay zero."""
        out = dict(data)
        for key, (mean, std) in self.stats.items():
            value = (data[key].astype(np.float32) - mean) / std
            valid = data.get(f"valid/{key}")
            if valid is not None:
                value = np.where(np.asarray(valid)[..., None], value, 0.0).astype(np.float32)
            out[key] = value
        return out

    def state_dict(self) -> dict[str, list[list[float]]]:
        return {k: [m.tolist(), s.tolist()] for k, (m, s) in self.stats.items()}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Sequence[Sequence[float]]]) -> Normalizer:
        return cls({k: (np.asarray(v[0]), np.asarray(v[1])) for k, v in state.items()})
