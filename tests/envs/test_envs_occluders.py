"""Procedural occluders: seeding, motion, sizes and coverage (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from training.envs.occluders import (
    DiskOccluders,
    DiskParams,
    OcclusionFrame,
    WallOccluders,
    WallParams,
    composite,
    make_occluders,
)

W = 64


def coverage_trace(occluders, seed: int, steps: int) -> np.ndarray:
    occluders.reset(np.random.default_rng(seed))
    trace = []
    for _ in range(steps):
        trace.append(1.0 - occluders.draw().visible.mean())
        occluders.advance()
    return np.array(trace)


@pytest.mark.parametrize("kind", ["disks", "walls"])
def test_same_seed_same_masks_and_colours(kind):
    def frames(seed):
        occluders = make_occluders(kind, W, DiskParams(), WallParams())
        occluders.reset(np.random.default_rng(seed))
        out = []
        for _ in range(30):
            out.append(occluders.draw())
            occluders.advance()
        return out

    first, again, other = frames(1), frames(1), frames(2)
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a.visible, b.visible) and np.array_equal(a.color, b.color)
    assert any(not np.array_equal(a.visible, c.visible) for a, c in zip(first, other, strict=True))


def test_disks_stay_inside_bounce_and_keep_their_speed():
    params = DiskParams()
    disks = DiskOccluders(W, params)
    disks.reset(np.random.default_rng(0))
    speed = np.linalg.norm(disks.velocities, axis=1)
    assert np.all(speed >= params.speed[0] * W) and np.all(speed <= params.speed[1] * W)
    assert np.all(disks.radii >= params.radius[0] * W) and np.all(
        disks.radii <= params.radius[1] * W
    )
    flips = 0
    for _ in range(2000):
        before = np.sign(disks.velocities)
        disks.advance()
        flips += int(np.sum(before != np.sign(disks.velocities)))
        r = disks.radii[:, None]
        assert np.all(disks.centers >= r - 1e-9) and np.all(disks.centers <= W - r + 1e-9)
    np.testing.assert_allclose(np.linalg.norm(disks.velocities, axis=1), speed)
    assert flips > 0, "disks must bounce off the borders"


def test_disks_move_slowly():
    disks = DiskOccluders(W, DiskParams())
    disks.reset(np.random.default_rng(5))
    before = disks.draw().visible
    disks.advance()
    changed = np.mean(before != disks.draw().visible)
    assert 0 < changed < 0.05, "one step changes only a thin rim of each disk"


def test_disk_coverage_range():
    params = DiskParams()
    trace = np.concatenate([coverage_trace(DiskOccluders(W, params), s, 200) for s in range(10)])
    # Every disk lies wholly inside: at least the smallest possible disk is covered,
    # at most the sum of the largest possible areas.
    smallest = np.pi * (params.radius[0] * W) ** 2 / W**2
    largest = params.count * np.pi * (params.radius[1] * W) ** 2 / W**2
    assert trace.min() >= smallest * 0.95 and trace.max() <= min(1.0, largest)
    assert 0.3 <= trace.mean() <= 0.5, f"documented ~40% average, got {trace.mean():.3f}"


def test_walls_slide_right_to_left_at_constant_speed():
    params = WallParams()
    walls = WallOccluders(W, params)
    walls.reset(np.random.default_rng(0))
    for _ in range(300):
        tracked = walls.walls[-1]
        walls.advance()
        moved = [w for w in walls.walls if w[1] == tracked[1]]
        assert moved, "the right-most wall cannot leave in one step"
        assert moved[0][0] == pytest.approx(tracked[0] - params.speed * W)


def test_wall_widths_lie_in_half_to_full_image_width():
    walls = WallOccluders(W, WallParams())
    widths = set()
    for seed in range(20):
        walls.reset(np.random.default_rng(seed))
        for _ in range(100):
            widths.update(w[1] for w in walls.walls)
            walls.advance()
    widths = np.array(sorted(widths))
    assert widths.min() >= W / 2 and widths.max() <= W
    assert widths.max() - widths.min() > W / 4, "widths are spread over the range"


def test_walls_are_full_height_columns():
    walls = WallOccluders(W, WallParams())
    walls.reset(np.random.default_rng(1))
    for _ in range(50):
        visible = walls.draw().visible
        assert np.all(visible == visible[0]), "every row has the same mask"
        walls.advance()


def test_wall_coverage_range():
    params = WallParams()
    trace = np.concatenate([coverage_trace(WallOccluders(W, params), s, 300) for s in range(20)])
    # A window of width W always overlaps a wall unless a gap is wider than W.
    assert trace.min() >= 1 - params.gap[1] - 1 / W and trace.max() <= 1.0
    assert abs(trace.mean() - params.mean_coverage) < 0.07
    assert trace.max() > 0.9, "a wide wall covers (nearly) the whole image at times"


def test_composite_replaces_only_occluded_pixels():
    image = np.full((4, 4, 3), 7, np.uint8)
    visible = np.ones((4, 4), bool)
    visible[1:3, 2] = False
    color = np.full((4, 4, 3), 200, np.uint8)
    out = composite(image, OcclusionFrame(visible, color))
    assert np.all(out[~visible] == 200) and np.all(out[visible] == 7)
    assert np.all(image == 7), "the input is not modified"


@pytest.mark.parametrize(
    "build",
    [
        lambda: DiskParams(count=0),
        lambda: DiskParams(radius=(0.3, 0.2)),
        lambda: DiskParams(radius=(0.1, 0.6)),
        lambda: WallParams(width=(0.0, 1.0)),
        lambda: WallParams(speed=0.0),
        lambda: make_occluders("clouds", W, DiskParams(), WallParams()),
    ],
)
def test_bad_parameters_are_refused(build):
    with pytest.raises(ValueError):
        build()
