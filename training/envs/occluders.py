"""Procedural occluders drawn over the camera image (paper §4.2.1, Fig. 6).

Both patterns are generated from a seeded ``np.random.Generator`` (no downloaded
videos) and move once per agent step. Sizes and speeds are fractions of the image
width W, so they mean the same at any resolution.

* Disks: ``count`` opaque disks with radius uniform in ``radius`` x W, moving in a
  uniformly random direction at a speed uniform in ``speed`` x W per step, and
  bouncing off the image borders (each disk stays wholly inside the image).
* Walls: full-height walls sliding right to left at a constant ``speed`` x W per
  step; each wall's width is uniform in ``width`` x W (default [W/2, W]) and the
  gap before the next wall uniform in ``gap`` x W. The pattern starts at a random
  phase, so the first frame may be occluded or clear.

``draw()`` returns the visibility mask (True = the true pixel is visible) and the
occluder colours; :func:`composite` puts them over a frame.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np


def _check_range(name: str, bounds: tuple[float, float], upper: float) -> None:
    low, high = bounds
    if not 0 < low <= high <= upper:
        raise ValueError(f"{name} must satisfy 0 < low <= high <= {upper}, got {bounds}")


@dataclass(frozen=True)
class DiskParams:
    """Disk occlusion; defaults cover about 40% of the image on average."""

    count: int = 5
    radius: tuple[float, float] = (0.125, 0.25)
    speed: tuple[float, float] = (0.008, 0.024)

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"disk count must be >= 1, got {self.count}")
        _check_range("disk radius", self.radius, 0.5)
        _check_range("disk speed", self.speed, 0.5)


@dataclass(frozen=True)
class WallParams:
    """Wall occlusion; defaults cover 60% of the image on average (E[width]/E[width+gap])."""

    width: tuple[float, float] = (0.5, 1.0)
    gap: tuple[float, float] = (0.25, 0.75)
    speed: float = 1 / 32

    def __post_init__(self) -> None:
        _check_range("wall width", self.width, 1.0)
        _check_range("wall gap", self.gap, 2.0)
        if not 0 < self.speed <= 1:
            raise ValueError(f"wall speed must be in (0, 1], got {self.speed}")

    @property
    def mean_coverage(self) -> float:
        mean_width = sum(self.width) / 2
        return mean_width / (mean_width + sum(self.gap) / 2)


class OcclusionFrame(NamedTuple):
    visible: np.ndarray  # bool [H, W], True where the true pixel shows
    color: np.ndarray  # uint8 [H, W, 3], the occluder's colour where not visible


def composite(image: np.ndarray, frame: OcclusionFrame) -> np.ndarray:
    """The image with occluder colours where the mask says not visible (a new array)."""
    return np.where(frame.visible[..., None], image, frame.color)


def _random_colors(rng: np.random.Generator, count: int) -> np.ndarray:
    # Mid-range colours, distinct from DMC's sky and floor but not pure black
    # (black is how the preview shows missing frames).
    return rng.integers(40, 216, size=(count, 3)).astype(np.uint8)


class Occluders(ABC):
    """A moving occlusion pattern over a square image of ``size`` pixels."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"image size must be positive, got {size}")
        self.size = size
        centers = np.arange(size) + 0.5  # pixel centres
        self._cols = centers[None, :]
        self._rows = centers[:, None]

    @abstractmethod
    def reset(self, rng: np.random.Generator) -> None:
        """Start a new pattern drawn from ``rng``."""

    @abstractmethod
    def advance(self) -> None:
        """Move the pattern by one agent step."""

    @abstractmethod
    def draw(self) -> OcclusionFrame:
        """The current mask and colours."""


class DiskOccluders(Occluders):
    def __init__(self, size: int, params: DiskParams) -> None:
        super().__init__(size)
        self.params = params
        self.centers = np.zeros((params.count, 2))  # (x, y) in pixels
        self.velocities = np.zeros((params.count, 2))
        self.radii = np.zeros(params.count)
        self.colors = np.zeros((params.count, 3), np.uint8)

    def reset(self, rng: np.random.Generator) -> None:
        p, w = self.params, self.size
        self.radii = rng.uniform(*p.radius, size=p.count) * w
        low = self.radii[:, None]
        self.centers = rng.uniform(low, w - low, size=(p.count, 2))
        angle = rng.uniform(0, 2 * np.pi, size=p.count)
        speed = rng.uniform(*p.speed, size=p.count) * w
        self.velocities = np.stack([np.cos(angle), np.sin(angle)], axis=1) * speed[:, None]
        self.colors = _random_colors(rng, p.count)

    def advance(self) -> None:
        self.centers = self.centers + self.velocities
        low = self.radii[:, None]
        high = self.size - low
        below, above = self.centers < low, self.centers > high
        # Reflect off the borders: mirror the position and flip that velocity component.
        self.centers = np.where(below, 2 * low - self.centers, self.centers)
        self.centers = np.where(above, 2 * high - self.centers, self.centers)
        self.velocities = np.where(below | above, -self.velocities, self.velocities)

    def draw(self) -> OcclusionFrame:
        visible = np.ones((self.size, self.size), bool)
        color = np.zeros((self.size, self.size, 3), np.uint8)
        for (x, y), radius, rgb in zip(self.centers, self.radii, self.colors, strict=True):
            inside = (self._cols - x) ** 2 + (self._rows - y) ** 2 <= radius**2
            visible &= ~inside
            color[inside] = rgb  # later disks are drawn on top
        return OcclusionFrame(visible, color)


class WallOccluders(Occluders):
    def __init__(self, size: int, params: WallParams) -> None:
        super().__init__(size)
        self.params = params
        self.walls: list[tuple[float, float, np.ndarray]] = []  # (left, width, rgb) in pixels
        self._frontier = 0.0  # left edge of the next wall to create
        self._rng: np.random.Generator | None = None

    def reset(self, rng: np.random.Generator) -> None:
        p, w = self.params, self.size
        self._rng = rng
        self.walls = []
        # A random phase: start up to one wall-plus-gap period left of the image.
        self._frontier = -rng.uniform(0, (p.width[1] + p.gap[1]) * w)
        self._fill()

    def _fill(self) -> None:
        """Create walls until the pattern reaches past the right border."""
        assert self._rng is not None, "reset() first"
        p, w = self.params, self.size
        while self._frontier < w:
            width = self._rng.uniform(*p.width) * w
            rgb = _random_colors(self._rng, 1)[0]
            self.walls.append((self._frontier, width, rgb))
            self._frontier += width + self._rng.uniform(*p.gap) * w
        self.walls = [wall for wall in self.walls if wall[0] + wall[1] > 0]

    def advance(self) -> None:
        shift = self.params.speed * self.size
        self.walls = [(left - shift, width, rgb) for left, width, rgb in self.walls]
        self._frontier -= shift
        self._fill()

    def draw(self) -> OcclusionFrame:
        covered = np.zeros(self.size, bool)
        column_color = np.zeros((self.size, 3), np.uint8)
        cols = self._cols[0]
        for left, width, rgb in self.walls:
            inside = (cols >= left) & (cols < left + width)
            covered |= inside
            column_color[inside] = rgb
        visible = np.broadcast_to(~covered, (self.size, self.size)).copy()
        color = np.broadcast_to(column_color, (self.size, self.size, 3)).copy()
        return OcclusionFrame(visible, color)


def make_occluders(kind: str, size: int, disks: DiskParams, walls: WallParams) -> Occluders:
    if kind == "disks":
        return DiskOccluders(size, disks)
    if kind == "walls":
        return WallOccluders(size, walls)
    raise ValueError(f"unknown occluder kind {kind!r}; expected 'disks' or 'walls'")
