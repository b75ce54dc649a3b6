"""The run configuration: component defaults in frozen dataclasses, flattened to dotted keys.

A run is described by one :class:`RunConfig`. Every field has a dotted key (``task``,
``dreamer.horizon``, ``replay.batch`` ...) and a help text; the command line, the presets
(``training.presets``) and the saved ``config.json`` all speak these keys. ``wm`` holds
overrides of the world model's own config dataclass (``estimator.models``), with dotted keys
for its nested configs (``conv.depth``, ``vector.hidden``).

Resolution order: defaults < presets (in the order given) < explicit overrides.
``resolve`` validates everything (task, model, agent, override keys, value ranges) before any
work starts and names the valid choices in its errors.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from estimator.state_head import StateHeadConfig
from training.distributed import DistConfig
from training.perf import PerfConfig

AGENTS = ("dreamer", "planet")


class ConfigError(ValueError):
    """A configuration that cannot run: unknown key, preset, task, model or a bad value."""


def opt(default: Any, help: str) -> Any:
    """A dataclass field with a help text (shown by ``--help``)."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class EnvConfig:
    episode_length: int = opt(1000, "environment steps per episode (dm_control counts)")
    action_repeat: int = opt(0, "environment steps per agent step; 0 = the agent's default "
                             "(Dreamer 2, PlaNet per domain: cheetah 4, walker 2, cartpole 8, "
                             "cup 4)")
    num_envs: int = opt(1, "environments collecting in parallel; > 1 runs each in a "
                        "subprocess")


@dataclass(frozen=True)
class ReplayConfig:
    batch: int = opt(50, "sequences per training batch")
    length: int = opt(50, "agent steps per training sequence")
    capacity: int = opt(0, "most agent steps kept in memory (oldest episodes dropped from "
                        "memory, never from disk); 0 = unlimited")
    compress: bool = opt(True, "store episodes as compressed .npz")


@dataclass(frozen=True)
class DreamerConfig:
    horizon: int = opt(15, "imagination horizon")
    imag_starts: int = opt(0, "imagination starts per update, a random subset of the batch's "
                           "B*T filtered states; 0 = all (the reference)")
    discount: float = opt(0.99, "discount per agent step")
    lam: float = opt(0.95, "lambda of the lambda-returns")
    model_lr: float = opt(6e-4, "world-model learning rate")
    actor_lr: float = opt(8e-5, "actor learning rate")
    value_lr: float = opt(8e-5, "critic learning rate")
    eps: float = opt(1e-8, "Adam epsilon")
    grad_clip: float = opt(100.0, "gradient-norm clip of each optimiser")
    hidden: int = opt(300, "units of the actor and critic MLP layers")
    layers: int = opt(3, "hidden layers of the actor and critic")
    act: str = opt("elu", "activation of the actor and critic")
    expl_noise: float = opt(0.3, "std of the Gaussian exploration noise added in collection")
    init_std: float = opt(5.0, "actor: initial std before the tanh (Dreamer V1)")
    min_std: float = opt(1e-4, "actor: minimum std")
    mean_scale: float = opt(5.0, "actor: mean = scale * tanh(raw / scale)")


@dataclass(frozen=True)
class PlanetConfig:
    horizon: int = opt(12, "CEM planning horizon")
    iterations: int = opt(10, "CEM iterations")
    candidates: int = opt(1000, "CEM candidate action sequences")
    top_k: int = opt(100, "CEM elite sequences refitted")
    model_lr: float = opt(1e-3, "world-model learning rate")
    eps: float = opt(1e-4, "Adam epsilon")
    grad_clip: float = opt(1000.0, "gradient-norm clip")
    expl_noise: float = opt(0.3, "std of the Gaussian exploration noise added in collection")


@dataclass(frozen=True)
class LoopConfig:
    steps: int = opt(1_000_000, "environment steps to train for (agent steps x action repeat)")
    minutes: float = opt(0.0, "wall-clock budget; stop after the iteration that exceeds it "
                         "(0 = none)")
    prefill_episodes: int = opt(5, "random-policy episodes before training")
    train_steps: int = opt(100, "gradient steps per iteration")
    collect_episodes: int = opt(1, "episodes collected per iteration")
    eval_every: int = opt(20, "evaluate every N iterations (and at the start and the end)")
    eval_episodes: int = opt(10, "episodes per evaluation (dropout off, no exploration)")
    checkpoint_every: int = opt(1, "write the checkpoint every N iterations")


@dataclass(frozen=True)
class LogConfig:
    progress: bool = opt(True, "show a tqdm progress bar")
    tensorboard: bool = opt(True, "write TensorBoard events (skipped with a warning when the "
                            "tensorboard package is missing)")
    video: bool = opt(True, "write a GIF of the first evaluation episode: input | "
                      "reconstruction")
    video_steps: int = opt(100, "most agent steps per video")
    export: str = opt("", "when the run ends, export its bundle to this folder (as python -m "
                      "training.export does; Dreamer with a VRKN model only); empty = no export")


@dataclass(frozen=True)
class RunConfig:
    agent: str = opt("dreamer", f"agent: one of {', '.join(AGENTS)}")
    task: str = opt("cartpole_swingup", "task name (training.envs), e.g. "
                    "cartpole_swingup-fusion-noise")
    model: str = opt("vrkn", "world model: vrkn, vrkn_no_dropout, rssm, smooth_rssm, mcd_rssm")
    seed: int = opt(0, "seed of every random generator of the run")
    device: str = opt("auto", "torch device; auto = cuda when available, else cpu")
    threads: int = opt(0, "torch intra-op threads; 0 = auto: 1 on the CPU (several threads "
                       "were up to 100x slower on the shared 2-core machine), torch's default "
                       "on CUDA")
    wm: dict = field(default_factory=dict, metadata={
        "help": "world-model config overrides, KEY=VALUE (e.g. latent=64, conv.depth=16): "
                "fields of the model's config dataclass (estimator.vrkn.VRKNConfig, "
                "estimator.rssm.RSSMConfig)"})
    env: EnvConfig = field(default_factory=EnvConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    dreamer: DreamerConfig = field(default_factory=DreamerConfig)
    planet: PlanetConfig = field(default_factory=PlanetConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    log: LogConfig = field(default_factory=LogConfig)
    state: StateHeadConfig = field(default_factory=StateHeadConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)
    dist: DistConfig = field(default_factory=DistConfig)


SECTIONS = ("env", "replay", "dreamer", "planet", "loop", "log", "state", "perf", "dist")

# Keys a resumed run may change: how long to run, where, what to log, the replay ratio
# (updates per collected episode: the replay buffer and optimisers do not depend on it) and
# the learning rates (to continue past a non-finite loss with a lower one; Adam's moments
# are kept).
RESUMABLE = ("device", "threads", "loop.steps", "loop.minutes", "loop.eval_every",
             "loop.train_steps",
             "loop.eval_episodes", "loop.checkpoint_every", "log.", "perf.", "dist.",
             "dreamer.model_lr", "dreamer.actor_lr", "dreamer.value_lr", "planet.model_lr")


# ---------------------------------------------------------------------------- flat view


def field_types(cls: type = RunConfig) -> dict[str, tuple[type, Any, str]]:
    """Every leaf key -> (type, default, help), in declaration order."""
    hints = typing.get_type_hints(cls)
    out: dict[str, tuple[type, Any, str]] = {}
    for f in dataclasses.fields(cls):
        if f.name in SECTIONS:
            section = hints[f.name]
            for key, value in field_types(section).items():
                out[f"{f.name}.{key}"] = value
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            out[f.name] = (hints[f.name], default, f.metadata.get("help", ""))
    return out


def to_flat(config: RunConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in field_types():
        value: Any = config
        for part in key.split("."):
            value = getattr(value, part)
        out[key] = dict(value) if key == "wm" else value
    return out


def from_flat(flat: dict[str, Any]) -> RunConfig:
    """Build a RunConfig from dotted keys (missing keys keep their defaults)."""
    types_ = field_types()
    unknown = sorted(set(flat) - set(types_))
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(unknown)}; valid keys: "
                          f"{', '.join(types_)}")
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for key, value in flat.items():
        value = coerce(key, value, types_[key][0])
        if "." in key:
            section, name = key.split(".", 1)
            sections[section][name] = value
        else:
            top[key] = value
    hints = typing.get_type_hints(RunConfig)
    for section, values in sections.items():
        top[section] = hints[section](**values)
    return RunConfig(**top)


def to_json(config: RunConfig) -> dict[str, Any]:
    """Nested JSON view (what config.json holds)."""
    flat = to_flat(config)
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if "." in key:
            section, name = key.split(".", 1)
            out.setdefault(section, {})[name] = value
        else:
            out[key] = value
    return out


def from_json(data: dict[str, Any]) -> RunConfig:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"config section {key!r} must be an object")
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return from_flat(flat)


def parse_value(text: str, typ: type, key: str) -> Any:
    """A command-line string as a value of ``typ``."""
    try:
        if typ is bool:
            low = text.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if typ is int:
            return int(float(text)) if "e" in text.lower() else int(text)
        if typ is float:
            return float(text)
        if typ is str:
            return text
        return json.loads(text)
    except (ValueError, json.JSONDecodeError):
        raise ConfigError(f"{key}: cannot read {text!r} as {typ.__name__}") from None


def coerce(key: str, value: Any, typ: type) -> Any:
    if key == "wm":
        if not isinstance(value, dict):
            raise ConfigError(f"wm must be a mapping of model config keys, got {value!r}")
        return dict(value)
    if isinstance(value, str) and typ is not str:
        return parse_value(value, typ, key)
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ConfigError(f"{key} must be {typ.__name__}, got {value!r}")
    return value


def diff(old: RunConfig, new: RunConfig) -> dict[str, tuple[Any, Any]]:
    a, b = to_flat(old), to_flat(new)
    return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


def format_diff(changes: dict[str, tuple[Any, Any]]) -> str:
    return "\n".join(f"  {k}: {old!r} (run) -> {new!r} (now)" for k, (old, new) in
                     changes.items())


def incompatible(old: RunConfig, new: RunConfig) -> dict[str, tuple[Any, Any]]:
    """The changes a resumed run may not make (everything but RESUMABLE keys)."""
    return {k: v for k, v in diff(old, new).items()
            if not any(k == r or (r.endswith(".") and k.startswith(r)) for r in RESUMABLE)}


# ---------------------------------------------------------------------------- validation


def agent_action_repeat(config: RunConfig) -> int:
    """The effective action repeat (``env.action_repeat`` or the agent's default)."""
    if config.env.action_repeat > 0:
        return config.env.action_repeat
    if config.agent == "planet":
        from training.envs import planet_action_repeat, task_config

        return planet_action_repeat(task_config(config.task).domain)
    return 2


def task_overrides(config: RunConfig) -> dict[str, Any]:
    return {"episode_length": config.env.episode_length,
            "action_repeat": agent_action_repeat(config)}


def model_config(config: RunConfig) -> Any:
    """The world model's config dataclass with ``wm`` applied (validates the keys)."""
    from estimator.models import MODELS, default_config

    if config.model not in MODELS:
        raise ConfigError(f"unknown model {config.model!r}; choose one of {sorted(MODELS)}")
    return apply_model_overrides(default_config(config.model), dict(config.wm), config.model)


def apply_model_overrides(base: Any, overrides: dict[str, Any], name: str) -> Any:
    nested: dict[str, dict[str, Any]] = {}
    direct: dict[str, Any] = {}
    hints = typing.get_type_hints(type(base))
    valid = model_keys(base)
    for key, value in overrides.items():
        if key not in valid:
            raise ConfigError(f"unknown world-model key wm.{key} for model {name!r}; valid: "
                              f"{', '.join(valid)}")
        if "." in key:
            head, tail = key.split(".", 1)
            nested.setdefault(head, {})[tail] = value
        else:
            direct[key] = _coerce_model_value(key, value, hints[key])
    for head, values in nested.items():
        sub = getattr(base, head)
        sub_hints = typing.get_type_hints(type(sub))
        values = {k: _coerce_model_value(f"{head}.{k}", v, sub_hints[k])
                  for k, v in values.items()}
        direct[head] = dataclasses.replace(sub, **values)
    return dataclasses.replace(base, **direct)


def _coerce_model_value(key: str, value: Any, typ: Any) -> Any:
    if typ in (int, float, str, bool):
        return coerce(f"wm.{key}", value, typ)
    return value


def model_keys(base: Any) -> list[str]:
    keys = []
    for f in dataclasses.fields(base):
        value = getattr(base, f.name)
        if dataclasses.is_dataclass(value):
            keys += [f"{f.name}.{g.name}" for g in dataclasses.fields(value)]
        else:
            keys.append(f.name)
    return keys


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate(config: RunConfig) -> RunConfig:
    """Check every choice and range; raise ConfigError naming what is wrong."""
    from training.checks import check_values
    from training.envs import task_config

    _check(config.agent in AGENTS, f"unknown agent {config.agent!r}; choose one of {AGENTS}")
    try:
        task = task_config(config.task, **task_overrides(config))
    except (ValueError, TypeError) as error:
        raise ConfigError(str(error)) from None
    check_values(config, model_config(config), task)  # activations, world model, task, device
    positive = ["env.episode_length", "env.num_envs", "replay.batch", "replay.length",
                "dreamer.horizon", "dreamer.hidden", "dreamer.layers", "planet.horizon",
                "planet.iterations", "planet.candidates", "planet.top_k", "loop.steps",
                "loop.train_steps", "loop.collect_episodes", "loop.eval_every",
                "loop.eval_episodes", "loop.checkpoint_every", "loop.prefill_episodes",
                "log.video_steps"]
    flat = to_flat(config)
    for key in positive:
        _check(flat[key] >= 1, f"{key} must be >= 1, got {flat[key]}")
    for key, (typ, _, _) in field_types().items():
        if typ is float:
            _check(math.isfinite(flat[key]) and flat[key] >= 0,
                   f"{key} must be a finite number >= 0, got {flat[key]}")
    for key in ("env.action_repeat", "replay.capacity", "threads", "dreamer.imag_starts"):
        _check(flat[key] >= 0, f"{key} must be >= 0, got {flat[key]}")
    _check(0 < config.dreamer.discount <= 1, "dreamer.discount must be in (0, 1]")
    _check(0 <= config.dreamer.lam <= 1, "dreamer.lam must be in [0, 1]")
    _check(not config.log.export or (config.agent == "dreamer"
                                     and config.model.startswith("vrkn")),
           f"log.export needs a Dreamer run with a VRKN model (the bundle holds the actor and "
           f"the service runs Kalman arithmetic); got agent {config.agent!r}, model "
           f"{config.model!r}")
    _check(config.planet.top_k <= config.planet.candidates,
           "planet.top_k must be <= planet.candidates")
    agent_steps = math.ceil(config.env.episode_length / agent_action_repeat(config))
    _check(config.replay.length <= agent_steps + 1,
           f"replay.length={config.replay.length} is longer than an episode "
           f"({agent_steps + 1} observations at episode_length={config.env.episode_length}, "
           f"action_repeat={agent_action_repeat(config)})")
    return config
