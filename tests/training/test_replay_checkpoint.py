"""Episodes on disk, sampling, normalisation, and weights-only checkpoints."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from training.checkpoint import (
    generator_states,
    load_checkpoint,
    restore_generators,
    save_checkpoint,
)
from training.replay import EpisodeBuilder, EpisodeReplay, Normalizer, episode_length


def fake_episode(steps: int = 10, seed: int = 0, proprio: bool = True):
    rng = np.random.default_rng(seed)
    builder = EpisodeBuilder()
    for t in range(steps + 1):
        obs = {"image": rng.integers(0, 255, (64, 64, 3), dtype=np.uint8),
               "valid/image": np.bool_(t % 3 == 0), "time/image": np.float64(t),
               "reward": np.float32(t), "is_first": np.bool_(t == 0),
               "is_last": np.bool_(t == steps), "is_terminal": np.bool_(False)}
        if proprio:
            obs["proprio"] = rng.normal(5.0, 2.0, 2).astype(np.float32)
            obs["valid/proprio"] = np.bool_(True)
        builder.add(obs)
        if t < steps:
            builder.set_action(rng.uniform(-1, 1, 1))
    return builder.finish(1)


def test_episode_format():
    e = fake_episode(10)
    assert episode_length(e) == 10
    assert e["image"].shape == (11, 64, 64, 3) and e["action"].shape == (11, 1)
    assert "time/image" not in e
    assert np.all(e["action"][-1] == 0)


def test_store_reload_and_sample(tmp_path):
    replay = EpisodeReplay(tmp_path / "episodes")
    for i in range(3):
        replay.add(fake_episode(10 + i, seed=i))
    (tmp_path / "episodes" / "000003-9.npz.tmp").write_bytes(b"half written")
    names = sorted(p.name for p in replay.files())
    assert names == ["000000-10.npz", "000001-11.npz", "000002-12.npz"]
    again = EpisodeReplay(tmp_path / "episodes")
    assert again.load() == 3 and again.total_steps == 33
    assert not list((tmp_path / "episodes").glob("*.tmp"))
    for a, b in zip(replay.episodes, again.episodes, strict=True):
        assert all(np.array_equal(a[k], b[k]) for k in a)
    batch = again.sample(4, 8, np.random.default_rng(0))
    assert batch["image"].shape == (4, 8, 64, 64, 3) and batch["action"].shape == (4, 8, 1)
    # Consecutive steps of one episode: rewards count up by one.
    assert np.all(np.diff(batch["reward"], axis=1) == 1)
    with pytest.raises(ValueError, match="no episode"):
        again.sample(1, 50, np.random.default_rng(0))


def test_capacity_drops_from_memory_not_disk(tmp_path):
    replay = EpisodeReplay(tmp_path, capacity=25)
    for i in range(4):
        replay.add(fake_episode(10, seed=i))
    assert len(replay) == 2 and replay.total_episodes == 4 and len(replay.files()) == 4


def test_normalizer():
    episodes = [fake_episode(50, seed=i) for i in range(3)]
    norm = Normalizer.fit(episodes, ["proprio"])
    out = norm({k: v for k, v in episodes[0].items()})
    assert abs(out["proprio"].mean()) < 0.5 and 0.5 < out["proprio"].std() < 1.5
    data = dict(episodes[0])
    data["valid/proprio"] = np.zeros(51, bool)
    assert np.all(norm(data)["proprio"] == 0)  # missing readings stay zero
    again = Normalizer.from_state_dict(norm.state_dict())
    assert np.allclose(again(data)["proprio"], norm(data)["proprio"])


def test_generators_round_trip(tmp_path):
    gens = {"t": torch.Generator().manual_seed(3), "n": np.random.default_rng(4)}
    save_checkpoint(tmp_path / "c.pt", {"rng": generator_states(gens),
                                        "weights": {"w": torch.ones(2)}, "step": 5})
    expected = (torch.rand(3, generator=gens["t"]), gens["n"].random(3))
    data = load_checkpoint(tmp_path / "c.pt")
    restore_generators(gens, data["rng"])
    assert torch.equal(torch.rand(3, generator=gens["t"]), expected[0])
    assert np.array_equal(gens["n"].random(3), expected[1])
    assert data["step"] == 5


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_checkpoint_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "x": Evil()}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"step": 1})

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("training.replay.os.replace", fail)
    with pytest.raises(OSError):
        save_checkpoint(path, {"step": 2})
    assert load_checkpoint(path)["step"] == 1
