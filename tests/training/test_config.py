"""Config, presets and the command line: bad input fails before any work, naming choices."""

from __future__ import annotations

import json

import pytest

from training.cli import build_parser, main, resolve_run
from training.config import (
    ConfigError,
    RunConfig,
    field_types,
    from_json,
    incompatible,
    to_json,
)
from training.presets import PRESETS, VARIANTS, resolve


def test_defaults_are_the_reference_settings():
    c = RunConfig()
    assert (c.replay.batch, c.replay.length) == (50, 50)
    d = c.dreamer
    assert (d.horizon, d.lam, d.discount) == (15, 0.95, 0.99)
    assert (d.model_lr, d.actor_lr, d.value_lr, d.eps, d.grad_clip) == (6e-4, 8e-5, 8e-5,
                                                                          1e-8, 100.0)
    assert (d.hidden, d.layers, d.act, d.expl_noise) == (300, 3, "elu", 0.3)
    loop = c.loop
    assert (loop.train_steps, loop.collect_episodes, loop.prefill_episodes) == (100, 1, 5)
    assert (loop.eval_every, loop.eval_episodes) == (20, 10)
    assert c.env.episode_length == 1000
    p = c.planet
    assert (p.horizon, p.iterations, p.candidates, p.top_k, p.model_lr) == (12, 10, 1000, 100,
                                                                          1e-3)


def test_json_round_trip_and_required_keys():
    c = resolve(["debug", "fusion-noise"], {"model": "rssm", "seed": 3}, {"deter": 20})
    data = to_json(c)
    assert {"task", "model", "seed", "agent"} <= set(data)
    assert from_json(json.loads(json.dumps(data))) == c
    assert c.wm["deter"] == 20 and c.wm["stoch"] == 8  # preset family overrides + explicit


def test_presets_cover_the_paper_experiments():
    for variant in VARIANTS:
        for name in (variant, f"{variant}-noise"):
            c = resolve([name])
            assert name in PRESETS
            assert c.task.endswith("-noise") == name.endswith("-noise")
    assert resolve(["occlusion_walls"]).task == "cartpole_swingup-occlusion_walls"
    for model in ("vrkn", "vrkn_no_dropout", "rssm", "smooth_rssm", "mcd_rssm"):
        assert resolve(["fusion"], {"model": model}).model == model


def test_planet_preset():
    c = resolve(["planet"], {"task": "cheetah_run"})
    assert c.agent == "planet" and c.wm == {"hidden": 200, "act": "elu"}
    from training.config import agent_action_repeat

    assert agent_action_repeat(c) == 4
    assert agent_action_repeat(resolve(["planet"], {"task": "cartpole_swingup"})) == 8
    assert agent_action_repeat(resolve([], {"task": "cartpole_swingup"})) == 2


@pytest.mark.parametrize("kwargs, words", [
    ({"presets": ["nope"]}, ["unknown preset 'nope'", "debug", "fusion"]),
    ({"overrides": {"task": "cartpole_swingupp"}}, ["unknown task", "cartpole_swingup"]),
    ({"overrides": {"model": "lstm"}}, ["unknown model 'lstm'", "rssm", "vrkn"]),
    ({"overrides": {"agent": "sac"}}, ["unknown agent", "dreamer"]),
    ({"overrides": {"replay.bach": 3}}, ["replay.bach", "replay.batch"]),
    ({"wm": {"latnt": 3}}, ["wm.latnt", "latent"]),
    ({"overrides": {"replay.batch": 0}}, ["replay.batch must be >= 1"]),
    ({"overrides": {"replay.length": 600}}, ["longer than an episode"]),
])
def test_bad_input_names_the_choices(kwargs, words):
    with pytest.raises(ConfigError) as error:
        resolve(**kwargs)
    for word in words:
        assert word in str(error.value)


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        build_parser("dreamer").parse_args(["--help"])
    text = capsys.readouterr().out
    for key in field_types():
        if key != "wm":
            assert f"--{key}" in text, key
    for name in PRESETS:
        assert name in text
    assert "--wm" in text and "--resume" in text and "--logdir" in text
    for key in ("latent=230", "conv.depth=32", "deter=200", "backward_units=300"):
        assert key in text, key  # world-model keys with their defaults


def test_unknown_option_fails_before_work(tmp_path, capsys):
    code = main(["--replay.bach", "3", "--logdir", str(tmp_path / "run")], "dreamer")
    assert code == 2
    err = capsys.readouterr().err
    assert "--replay.bach" in err and "--replay.batch" in err
    assert not (tmp_path / "run").exists()


def test_bad_value_fails(capsys):
    assert main(["--replay.batch", "many", "--print-config"], "dreamer") == 2
    assert "replay.batch" in capsys.readouterr().err


def test_print_config(capsys):
    assert main(["--preset", "debug", "--task", "cartpole_swingup-fusion", "--wm",
                 "latent=8", "--print-config"], "dreamer") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["task"] == "cartpole_swingup-fusion" and data["wm"]["latent"] == 8
    assert data["agent"] == "dreamer"


def test_existing_run_with_other_config_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    saved = resolve(["debug"])
    (run / "config.json").write_text(json.dumps(to_json(saved)))
    (run / "checkpoint.pt").write_bytes(b"")  # it holds a run
    # Same config: continued. Other config: refused with the difference shown.
    config, run_dir, _ = resolve_run(["--preset", "debug", "--logdir", str(run)], "dreamer")
    assert config == saved and run_dir == run
    with pytest.raises(ConfigError) as error:
        resolve_run(["--preset", "debug", "--model", "rssm", "--logdir", str(run)], "dreamer")
    assert "model: 'vrkn' (run) -> 'rssm' (now)" in str(error.value)
    with pytest.raises(ConfigError, match=r"replay\.batch"):
        resolve_run(["--resume", str(run), "--replay.batch", "7"], "dreamer")
    # Resumable keys may change.
    config, _, _ = resolve_run(["--resume", str(run), "--loop.steps", "900"], "dreamer")
    assert config.loop.steps == 900 and not incompatible(saved, config)
    with pytest.raises(ConfigError, match="dreamer run"):
        resolve_run(["--resume", str(run)], "planet")


def test_resume_needs_a_run_directory(tmp_path):
    with pytest.raises(ConfigError, match="not a run directory"):
        resolve_run(["--resume", str(tmp_path)], "dreamer")


BAD_VALUES = [
    (["--dreamer.act", "relux"], "dreamer.act: unknown activation 'relux'"),
    (["--wm", "dropout=1.5"], "wm.dropout is a dropout probability"),
    (["--wm", "latent=-3"], "wm.latent must be >= 1"),
    (["--wm", "conv.act=relux"], "wm.conv.act: unknown activation"),
    (["--wm", "reward.layers=-1"], "wm.reward.layers must be >= 0"),
    (["--task", "finger_spin-fusion"], "no proprioception defined for domain 'finger'"),
    (["--loop.steps", "-5"], "loop.steps must be >= 1"),
    (["--dreamer.init_std", "0"], "dreamer.init_std must be > 0"),
    (["--device", "cuda"], "CUDA is not available"),
    (["--device", "tpu"], "device must be auto, cpu, cuda[:N] or mps"),
]


@pytest.mark.parametrize("argv, words", BAD_VALUES)
def test_bad_values_fail_in_one_line_before_the_run_directory(tmp_path, capsys, monkeypatch,
                                                              argv, words):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    run = tmp_path / "run"
    assert main(["--preset", "debug", *argv, "--logdir", str(run)], "dreamer") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and words in err, err
    assert not run.exists()


def test_cuda_index_must_exist(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"'cuda:1': there is only 1 CUDA device"):
        resolve(["debug"], {"device": "cuda:1"})
    assert resolve(["debug"], {"device": "cuda:0"}).device == "cuda:0"


def test_a_start_that_failed_before_any_work_does_not_block_the_corrected_command(tmp_path):
    # A start that died after writing config.json but before any episode, metric or
    # checkpoint (e.g. an error that validation did not foresee): nothing to continue.
    run = tmp_path / "run"
    run.mkdir()
    (run / "episodes").mkdir()
    (run / "config.json").write_text(json.dumps(to_json(resolve(["debug"], {"seed": 5}))))
    config, run_dir, _ = resolve_run(["--preset", "debug", "--logdir", str(run)], "dreamer")
    assert config.seed == 0 and run_dir == run
    (run / "episodes" / "000000-50.npz").write_bytes(b"")  # now it holds a run
    with pytest.raises(ConfigError, match=r"seed: 5 \(run\) -> 0 \(now\)"):
        resolve_run(["--preset", "debug", "--logdir", str(run)], "dreamer")


def test_experiment_presets_pick_their_variant_of_the_given_base_task():
    assert resolve(["fusion"], {"task": "walker_walk"}).task == "walker_walk-fusion"
    assert resolve(["fusion-noise"], {"task": "walker_walk"}).task == "walker_walk-fusion-noise"
    assert resolve(["missing"], {"task": "cup_catch"}).task == "cup_catch-missing"
    assert resolve(["standard"], {"task": "walker_walk"}).task == "walker_walk"
    assert resolve(["fusion"], {"task": "walker_walk-fusion"}).task == "walker_walk-fusion"
    assert resolve(["fusion"]).task == "cartpole_swingup-fusion"
    with pytest.raises(ConfigError, match=r"preset 'fusion' picks the variant 'fusion'.*"
                                          r"--task walker_walk -> walker_walk-fusion"):
        resolve(["fusion"], {"task": "walker_walk-missing"})
    # No experiment preset, or a later preset that sets the task itself: the name as given.
    assert resolve([], {"task": "walker_walk"}).task == "walker_walk"
    assert resolve(["fusion", "cpu"], {"task": "walker_walk"}).task == "walker_walk"
    config, _, _ = resolve_run(["--preset", "fusion", "--task", "walker_walk",
                                "--print-config"], "dreamer")
    assert config.task == "walker_walk-fusion"


def test_reward_head_is_3x300_elu_but_the_small_presets_keep_theirs():
    from estimator.models import MODELS, default_config
    from estimator.networks import MLPConfig
    from training.config import model_config

    for name in MODELS:
        assert default_config(name).reward == MLPConfig(hidden=300, layers=3, act="elu"), name
    # Runs in flight with these presets must still load their checkpoints.
    for model, hidden, layers in (("vrkn", 128, 2), ("rssm", 128, 2)):
        assert model_config(resolve(["cpu"], {"model": model})).reward == MLPConfig(
            hidden, layers, "elu")
    for model in ("vrkn", "rssm"):
        assert model_config(resolve(["debug"], {"model": model})).reward == MLPConfig(
            32, 1, "elu")


def test_learning_rates_are_resumable(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"")  # holds a run
    (run / "config.json").write_text(json.dumps(to_json(resolve(["debug"]))))
    config, _, _ = resolve_run(["--resume", str(run), "--dreamer.model_lr", "3e-4",
                                "--dreamer.actor_lr", "4e-5", "--dreamer.value_lr", "4e-5"],
                               "dreamer")
    assert (config.dreamer.model_lr, config.dreamer.actor_lr) == (3e-4, 4e-5)
