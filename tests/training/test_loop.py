"""End to end: ``--preset debug`` for every model family and PlaNet; non-finite losses."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from tests.training.conftest import debug_config
from training.agent import AgentPolicy, NonFiniteError, RandomPolicy
from training.checkpoint import load_checkpoint
from training.cli import main, resolve_run
from training.logger import read_metrics
from training.loop import Trainer

MODELS = ["vrkn", "vrkn_no_dropout", "rssm", "smooth_rssm", "mcd_rssm"]


def _check_run(run, config, seconds):
    assert seconds < 60, f"debug run took {seconds:.1f} s"
    saved = json.loads((run / "config.json").read_text())
    assert {"task", "model", "seed", "agent"} <= set(saved)
    records = read_metrics(run)
    assert all("step" in r for r in records)
    train = [r for r in records if "train/return" in r]
    evals = [r for r in records if "eval/return" in r]
    assert len(train) == 2 and len(evals) == 3  # 2 iterations; eval at start and each one
    for key in ("wm/loss", "wm/kl", "fps", "updates_per_s"):
        assert np.isfinite(train[-1][key]), key
    if saved["agent"] == "dreamer":
        for key in ("actor/loss", "value/loss", "imag/return"):
            assert np.isfinite(train[-1][key]), key
    assert [r["step"] for r in train] == [300, 400]  # 2 prefill + 2 episodes of 100 steps
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert ckpt["env_steps"] == 400 and ckpt["counters"]["updates"] == 6
    assert len(list((run / "episodes").glob("*.npz"))) == 4
    assert list((run / "videos").glob("eval_*.gif"))


@pytest.mark.parametrize("model", MODELS)
def test_debug_preset_end_to_end(tmp_path, model):
    run = tmp_path / "run"
    start = time.perf_counter()
    code = main(["--preset", "debug", "--model", model, "--task", "cartpole_swingup-fusion",
                 "--logdir", str(run), "--log.progress", "false"], "dreamer")
    assert code == 0
    _check_run(run, model, time.perf_counter() - start)


def test_debug_preset_pixels_with_tensorboard(tmp_path):
    run = tmp_path / "run"
    assert main(["--preset", "debug", "--task", "cartpole_swingup-occlusion_disks", "--logdir",
                 str(run), "--log.progress", "false"], "dreamer") == 0
    assert list((run / "tb").iterdir())
    ep = np.load(sorted((run / "episodes").glob("*.npz"))[0])
    assert ep["mask/image"].shape[1:] == (64, 64)


def test_planet_debug_end_to_end(tmp_path):
    pytest.importorskip("training.cem")
    run = tmp_path / "run"
    start = time.perf_counter()
    code = main(["--preset", "debug", "--task", "cartpole_swingup-fusion", "--logdir",
                 str(run), "--log.progress", "false"], "planet")
    assert code == 0
    _check_run(run, "vrkn", time.perf_counter() - start)
    assert json.loads((run / "config.json").read_text())["agent"] == "planet"


def test_nonfinite_loss_stops_and_keeps_the_checkpoint(tmp_path):
    trainer = Trainer(debug_config(), tmp_path)
    trainer.setup()
    try:
        trainer.prefill()
        trainer.save()
        before = (tmp_path / "checkpoint.pt").read_bytes()
        params = [p.detach().clone() for p in trainer.agent.model.parameters()]

        def nan_loss(batch, generator=None):
            return (torch.tensor(float("nan"), requires_grad=True), {"recon": float("nan")},
                    None)

        trainer.agent.model.loss_and_posterior = nan_loss
        with pytest.raises(NonFiniteError, match="world-model loss is nan"):
            trainer.train(1)
        assert (tmp_path / "checkpoint.pt").read_bytes() == before
        assert all(torch.equal(a, b) for a, b in zip(params, trainer.agent.model.parameters(),
                                                     strict=True))
    finally:
        trainer.close()


def test_cli_reports_nonfinite(tmp_path, monkeypatch, capsys):
    def boom(self, steps):
        raise NonFiniteError("world-model loss is nan (not finite)")

    monkeypatch.setattr(Trainer, "train", boom)
    code = main(["--preset", "debug", "--logdir", str(tmp_path), "--log.progress", "false"],
                "dreamer")
    assert code == 3
    err = capsys.readouterr().err
    assert "world-model loss is nan" in err and "checkpoint.pt" in err
    assert (tmp_path / "checkpoint.pt").exists()  # the one written after prefill
    # The advice is a command that works: resume with half the world model's rate.
    advice = f"python -m training.dreamer --resume {tmp_path} --dreamer.model_lr 0.0003"
    assert advice in err
    config, _, _ = resolve_run(advice.split()[3:], "dreamer")
    assert config.dreamer.model_lr == 3e-4


def test_collect_keeps_every_episode_of_parallel_envs(tmp_path):
    from training.driver import LocalEnvs
    from training.envs import make_task

    def two_local_envs(task, seeds, overrides):
        return LocalEnvs([make_task(task, s, **overrides) for s in seeds])

    trainer = Trainer(debug_config(**{"env.num_envs": 2}), tmp_path, env_factory=two_local_envs)
    trainer.setup()
    try:
        episodes = trainer.collect(RandomPolicy(1, np.random.default_rng(0)), 1)
        assert len(episodes) == 2  # both environments finished one: both are kept
        assert trainer.replay.total_episodes == 2 and trainer.env_steps == 200
        assert len(list((tmp_path / "episodes").glob("*.npz"))) == 2
        assert len(trainer.collect(RandomPolicy(1, np.random.default_rng(1)), 3)) == 4
        assert trainer.replay.total_episodes == 6
    finally:
        trainer.close()


def test_policy_restarts_the_filter_on_first_rows(tmp_path):
    trainer = Trainer(debug_config(task="cartpole_swingup-fusion"), tmp_path)
    trainer.setup()
    try:
        trainer.prefill()
        model = trainer.agent.model
        policy = AgentPolicy(trainer.agent, trainer.normalizer, trainer.device, True,
                             torch.Generator().manual_seed(0))
        ep = trainer.replay.episodes[0]
        a0 = policy({k: np.stack([v[0], v[0]]) for k, v in ep.items()})
        assert a0.shape == (2, 1) and np.all(np.abs(a0) <= 1)
        obs = {k: np.stack([v[1], v[0]]) for k, v in ep.items()}  # env 1 starts over
        policy(obs)
        from training.agent import sensor_batch

        sensors = sensor_batch(model, trainer.normalizer(obs), trainer.device)
        with torch.no_grad():
            fresh = model.filter_step(None, None, sensors)
        # VRKN means do not depend on random draws: row 1 restarted, row 0 continued.
        assert torch.allclose(policy.state.mean[1], fresh.mean[1])
        assert not torch.allclose(policy.state.mean[0], fresh.mean[0])
        assert RandomPolicy(2, np.random.default_rng(0))(obs).shape == (2, 2)
    finally:
        trainer.close()


@pytest.mark.slow
def test_parallel_collection(tmp_path):
    run = tmp_path / "run"
    assert main(["--preset", "debug", "--task", "cartpole_swingup-fusion", "--env.num_envs",
                 "2", "--loop.collect_episodes", "2", "--loop.eval_episodes", "3",
                 "--log.video", "false", "--logdir", str(run), "--log.progress", "false"],
                "dreamer") == 0
    records = read_metrics(run)
    assert [r["train/episodes"] for r in records if "train/return" in r] == [4]
    assert all(r["eval/episodes"] == 3 for r in records if "eval/return" in r)
    assert len(list((run / "episodes").glob("*.npz"))) == 4


def test_wall_clock_budget_stops_the_run(tmp_path):
    run = tmp_path / "run"
    assert main(["--preset", "debug", "--loop.steps", "100000", "--loop.minutes", "0.0001",
                 "--loop.eval_every", "5", "--log.video", "false", "--logdir", str(run),
                 "--log.progress", "false"], "dreamer") == 0
    records = read_metrics(run)
    # The budget is spent by the prefill: no iteration, the start evaluation, a checkpoint.
    assert not [r for r in records if "train/return" in r]
    assert [r["step"] for r in records if "eval/return" in r] == [200]
    assert (run / "checkpoint.pt").exists()


def test_restart_during_prefill_keeps_its_episodes(tmp_path):
    from training.loop import Trainer as T

    config = debug_config(**{"loop.prefill_episodes": 3, "log.video": False})
    first = T(config, tmp_path)
    first.setup()
    try:  # one prefill episode, then "killed" before any checkpoint
        from training.agent import RandomPolicy

        first.collect(RandomPolicy(1, np.random.default_rng(0)), 1)
    finally:
        first.close()
    assert not (tmp_path / "checkpoint.pt").exists()
    again = T(config, tmp_path)
    again.setup()
    try:
        again.prefill()
        assert again.replay.total_episodes == 3
        assert len(list((tmp_path / "episodes").glob("*.npz"))) == 3
    finally:
        again.close()


def test_cli_refuses_an_incompatible_run_directory(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["--preset", "debug", "--loop.steps", "200", "--log.video", "false",
                 "--logdir", str(run), "--log.progress", "false"], "dreamer") == 0
    before = (run / "checkpoint.pt").read_bytes()
    code = main(["--preset", "debug", "--replay.batch", "5", "--logdir", str(run)], "dreamer")
    assert code == 2
    err = capsys.readouterr().err
    assert "replay.batch: 4 (run) -> 5 (now)" in err
    assert (run / "checkpoint.pt").read_bytes() == before
