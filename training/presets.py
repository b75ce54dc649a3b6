"""Named presets: dotted-key overrides applied in order on top of the defaults.

The defaults are the paper's Dreamer reference settings (docs/design.md §4.1). The experiment
presets of the paper (standard tasks, occlusion by disks or walls, missing frames, fusion; each with
and without action noise) differ only in the task: they choose the variant on
``cartpole_swingup``, or on the base task given with ``--task`` (``--preset fusion-noise
--task walker_walk`` trains ``walker_walk-fusion-noise``; a ``--task`` naming another variant
is refused), and ``--model`` the world model (vrkn, vrkn_no_dropout, rssm, smooth_rssm,
mcd_rssm). ``planet`` holds the PlaNet reference settings, ``debug`` a tiny run for tests,
``cpu`` the small CPU settings of the learning benchmark (bench/learning.py).

World-model overrides (``wm``) are given per family ("vrkn" for vrkn and vrkn_no_dropout,
"rssm" for rssm, smooth_rssm and mcd_rssm) and picked once the model is known.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from training.config import ConfigError, RunConfig, field_types, from_flat, to_flat, validate


@dataclass(frozen=True)
class Preset:
    help: str
    values: dict[str, Any] = field(default_factory=dict)
    wm: dict[str, dict[str, Any]] = field(default_factory=dict)  # family -> overrides
    variant: str | None = None  # experiment presets: task suffix, e.g. "-fusion-noise"


def model_family(model: str) -> str:
    return "vrkn" if model.startswith("vrkn") else "rssm"


EXPERIMENT_BASE = "cartpole_swingup"
VARIANTS = {
    "standard": ("", "standard DMC task, 64x64 pixels (paper Sec. 4.1)"),
    "occlusion_disks": ("-occlusion_disks", "bouncing-disk occlusion (paper Sec. 4.2.1)"),
    "occlusion_walls": ("-occlusion_walls", "sliding-wall occlusion (paper Sec. 4.2.1)"),
    "missing": ("-missing", "missing frames, every 4-8 steps (paper Sec. 4.2.2)"),
    "fusion": ("-fusion", "missing frames + proprioception (paper Sec. 4.2.3)"),
}

TINY_VRKN = {"latent": 16, "hidden": 32, "conv.depth": 4, "vector.hidden": 32,
             "vector.layers": 2, "reward.hidden": 32, "reward.layers": 1}
TINY_RSSM = {"deter": 16, "stoch": 8, "hidden": 32, "backward_units": 16, "conv.depth": 4,
             "vector.hidden": 32, "vector.layers": 2, "reward.hidden": 32, "reward.layers": 1}

# Small models for a CPU learning run (bench/learning.py): conv depth 16 instead of 32,
# latent / state sizes about a third, short sequences.
CPU_VRKN = {"latent": 64, "hidden": 128, "conv.depth": 16, "vector.hidden": 128,
            "vector.layers": 2, "reward.hidden": 128, "reward.layers": 2}
CPU_RSSM = {"deter": 64, "stoch": 16, "hidden": 128, "backward_units": 64, "conv.depth": 16,
            "vector.hidden": 128, "vector.layers": 2, "reward.hidden": 128, "reward.layers": 2}


def _presets() -> dict[str, Preset]:
    presets = {
        "dreamer": Preset("Dreamer reference settings (docs/design.md §4.1; the defaults)",
                          {"agent": "dreamer"}),
        "planet": Preset("PlaNet reference settings: CEM horizon 12, 10 iterations, 1000 "
                         "candidates, top 100, lr 1e-3, per-domain action repeat; VRKN "
                         "transition 200 units ELU",
                         {"agent": "planet", "env.action_repeat": 0},
                         {"vrkn": {"hidden": 200, "act": "elu"}}),
        "debug": Preset(
            "tiny end-to-end run for tests (< 1 min on a CPU): 50-step episodes, tiny nets",
            {"env.episode_length": 100, "env.action_repeat": 2, "replay.batch": 4,
             "replay.length": 12, "loop.prefill_episodes": 2, "loop.train_steps": 3,
             "loop.steps": 400, "loop.eval_every": 1, "loop.eval_episodes": 1,
             "dreamer.horizon": 5, "dreamer.hidden": 32, "dreamer.layers": 2,
             "planet.horizon": 4, "planet.iterations": 2, "planet.candidates": 32,
             "planet.top_k": 4, "log.video_steps": 20, "replay.compress": False},
            {"vrkn": TINY_VRKN, "rssm": TINY_RSSM}),
        "cpu": Preset(
            "small CPU learning run (bench/learning.py): cartpole_swingup-fusion, 1000-step "
            "episodes at action repeat 2 (Dreamer's), batch 32x32, 256 imagination starts, 50 "
            "updates per episode, small nets, bf16 conv autocast",
            {"task": "cartpole_swingup-fusion", "env.action_repeat": 2,
             "env.episode_length": 1000, "replay.batch": 32, "replay.length": 32,
             "loop.prefill_episodes": 5, "loop.train_steps": 50, "loop.eval_every": 5,
             "loop.eval_episodes": 5, "dreamer.hidden": 128, "dreamer.layers": 2,
             "dreamer.imag_starts": 256, "dreamer.actor_lr": 2e-4, "dreamer.value_lr": 2e-4,
             "log.video_steps": 100, "perf.bf16": True},
            {"vrkn": CPU_VRKN, "rssm": CPU_RSSM}),
    }
    for name, (suffix, text) in VARIANTS.items():
        for noise in (False, True):
            key = name + ("-noise" if noise else "")
            task = EXPERIMENT_BASE + suffix + ("-noise" if noise else "")
            extra = " with action noise (paper Sec. 4.2)" if noise else ""
            presets[key] = Preset(f"{text}{extra}: task {task} (--task BASE: BASE"
                                  f"{task.removeprefix(EXPERIMENT_BASE)})", {"task": task},
                                  variant=task.removeprefix(EXPERIMENT_BASE))
    return presets


PRESETS: dict[str, Preset] = _presets()


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]


def describe() -> str:
    width = max(map(len, PRESETS))
    return "\n".join(f"  {name:<{width}}  {p.help}" for name, p in PRESETS.items())


def variant_task(task: str, preset: str, suffix: str) -> str:
    """``--task`` under an experiment preset: a base task gets the preset's variant suffix;
    a name with that suffix stays; a name with another variant is refused."""
    base = task.split("-", 1)[0]
    if task in (base, base + suffix):
        return base + suffix
    name = suffix.lstrip("-") or "standard"
    raise ConfigError(f"preset {preset!r} picks the variant {name!r} of the base task given "
                      f"with --task, but --task {task!r} names another; give the base task "
                      f"(--task {base} -> {base + suffix}) or drop the preset")


def resolve(presets: Sequence[str] = (), overrides: dict[str, Any] | None = None,
            wm: dict[str, Any] | None = None, base: RunConfig | None = None) -> RunConfig:
    """defaults (or ``base``) < presets in order < ``overrides`` (dotted keys) < ``wm``
    (world-model keys); validated before anything runs."""
    flat = to_flat(base if base is not None else RunConfig())
    valid = field_types()
    family_wm: dict[str, dict[str, Any]] = {}
    variant: tuple[str, str] | None = None  # (preset, suffix) of the last preset setting the task
    for name in presets:
        preset = get_preset(name)
        flat.update(preset.values)
        if "task" in preset.values:
            variant = None if preset.variant is None else (name, preset.variant)
        for family, values in preset.wm.items():
            family_wm.setdefault(family, {}).update(values)
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    flat.update(overrides)
    if variant is not None and isinstance(overrides.get("task"), str):
        flat["task"] = variant_task(overrides["task"], *variant)
    from estimator.models import MODELS

    if flat["model"] not in MODELS:
        raise ConfigError(f"unknown model {flat['model']!r}; choose one of {sorted(MODELS)}")
    flat["wm"] = {**dict(flat["wm"]), **family_wm.get(model_family(flat["model"]), {}),
                  **dict(wm or {})}
    return validate(from_flat(flat))
