"""Command line of ``python -m training.dreamer`` and ``python -m training.planet``.

Every config key is an option (``--task``, ``--replay.batch 16``, ``--log.video false``);
``--preset`` applies named presets in order; ``--wm KEY=VALUE`` overrides the world model's
config. A run directory (``--logdir``) that already holds a run is continued when the
config matches (as with ``--resume DIR``) and refused, with the differences, when it does
not (a directory with nothing but a config.json, from a start that failed before any work,
holds no run). Bad input, ``--log.export`` included, fails before any work starts.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.config import (
    RESUMABLE,
    ConfigError,
    RunConfig,
    field_types,
    format_diff,
    from_json,
    incompatible,
    parse_value,
)
from training.presets import describe, resolve

EXIT_CONFIG, EXIT_NONFINITE, EXIT_PEER = 2, 3, 4


def build_parser(agent: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m training.{agent}",
        description=f"Train a world model and a {agent.capitalize()} agent on a task of the "
        "multi-rate DMC suite. Config = defaults (the paper's reference settings) < presets "
        "< options. The run directory gets config.json, metrics.jsonl, tb/, episodes/, "
        "videos/ and checkpoint.pt.",
        epilog="presets:\n" + describe() + "\n\nworld-model keys (--wm KEY=VALUE):\n"
        + wm_help() + "\n\nresumable keys (may change on --resume): " + ", ".join(RESUMABLE),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", action="append", default=[], metavar="NAME",
                   help="apply a preset (repeatable, in order); see the list below")
    p.add_argument("--logdir", type=Path, default=None, metavar="DIR",
                   help="run directory (default runs/<task>-<model>-<agent>-s<seed>-<time>); "
                   "an existing run with the same config is continued")
    p.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR with its saved config (options may change "
                   "only the resumable keys)")
    p.add_argument("--wm", action="append", default=[], metavar="KEY=VALUE",
                   help="world-model config override (repeatable), e.g. --wm latent=64 "
                   "--wm conv.depth=16")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config as JSON and exit")
    group = p.add_argument_group("config options (dotted keys; default in brackets)")
    for key, (typ, default, text) in field_types().items():
        if key == "wm":
            continue
        metavar = {bool: "BOOL", int: "INT", float: "FLOAT"}.get(typ, "STR")
        group.add_argument(f"--{key}", dest=key, default=argparse.SUPPRESS, metavar=metavar,
                           help=f"{text} [{default}]")
    return p


def wm_help() -> str:
    import textwrap

    from estimator.models import MODELS, default_config
    from training.config import model_keys

    lines = []
    for name in MODELS:
        config = default_config(name)
        keys = ", ".join(f"{k}={_get(config, k)}" for k in model_keys(config))
        lines.append(textwrap.fill(f"{name}: {keys}", 96, initial_indent="  ",
                                   subsequent_indent="    "))
    return "\n".join(lines)


def _get(config: Any, key: str) -> Any:
    for part in key.split("."):
        config = getattr(config, part)
    return config


def parse_wm(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--wm expects KEY=VALUE, got {item!r}")
        key, text = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            out[key.strip()] = text
    return out


def parse_args(argv: Sequence[str] | None, agent: str
               ) -> tuple[argparse.Namespace, dict[str, Any]]:
    parser = build_parser(agent)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        options = [f"--{k}" for k in field_types() if k != "wm"] + [
            "--preset", "--logdir", "--resume", "--wm", "--print-config"]
        hints = []
        for item in unknown:
            close = difflib.get_close_matches(item.split("=")[0], options, n=3)
            hints.append(f"{item}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        raise ConfigError(f"unknown option(s): {'; '.join(hints)}. Valid options: "
                          f"{', '.join(options)} (see --help)")
    overrides = {key: parse_value(getattr(args, key), typ, key)
                 for key, (typ, _, _) in field_types().items()
                 if key != "wm" and hasattr(args, key)}
    return args, overrides


def load_run_config(run_dir: Path) -> RunConfig:
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise ConfigError(f"{run_dir} is not a run directory (no config.json)")
    try:
        return from_json(json.loads(path.read_text()))
    except (json.JSONDecodeError, ConfigError, TypeError) as error:
        raise ConfigError(f"cannot read {path}: {error}") from None


def holds_work(run_dir: Path) -> bool:
    """Whether a run directory holds anything of a run besides its config: a checkpoint, an
    episode or a metric. One without (a start that failed before any work) may be started
    again with another config."""
    from training.checkpoint import CHECKPOINT
    from training.logger import read_metrics
    from training.replay import EPISODE_FILE

    episodes = run_dir / "episodes"
    return ((run_dir / CHECKPOINT).exists() or bool(read_metrics(run_dir)) or (
        episodes.is_dir() and any(EPISODE_FILE.match(p.name) for p in episodes.iterdir())))


def check_export_target(config: RunConfig, run_dir: Path) -> None:
    """``log.export`` must be a folder export may replace, away from the run directory."""
    if not config.log.export:
        return
    from training.export import ExportTargetError, check_out_dir

    try:
        check_out_dir(Path(config.log.export), [run_dir], "--log.export")
    except ExportTargetError as error:
        raise ConfigError(str(error)) from None


def default_logdir(config: RunConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.task}-{config.model}-{config.agent}-s{config.seed}-{stamp}"


def resolve_run(argv: Sequence[str] | None, agent: str
                ) -> tuple[RunConfig, Path | None, argparse.Namespace]:
    """The config and run directory of a command line (None: --print-config only)."""
    args, overrides = parse_args(argv, agent)
    if overrides.get("agent", agent) != agent:
        raise ConfigError(f"python -m training.{agent} runs agent {agent!r}; "
                          f"got --agent {overrides['agent']}")
    wm = parse_wm(args.wm)
    if args.resume is not None and args.logdir is not None and args.resume != args.logdir:
        raise ConfigError("give either --resume RUN_DIR or --logdir DIR, not both")
    run_dir = args.resume if args.resume is not None else args.logdir
    if args.resume is not None or (run_dir is not None and (run_dir / "config.json").exists()
                                   and holds_work(run_dir)):
        saved = load_run_config(run_dir)
        if saved.agent != agent:
            raise ConfigError(f"{run_dir} is a {saved.agent} run; use python -m "
                              f"training.{saved.agent}")
        if args.resume is not None:
            config = resolve(args.preset, overrides, wm, base=saved)
        else:
            config = resolve([agent, *args.preset], overrides, wm)
        changes = incompatible(saved, config)
        if changes:
            raise ConfigError(f"{run_dir} holds a run with an incompatible config; "
                              f"differences:\n{format_diff(changes)}\nUse another --logdir, "
                              "or --resume with only resumable changes")
    else:
        config = resolve([agent, *args.preset], overrides, wm)
    if args.print_config:
        return config, None, args
    run_dir = Path(run_dir) if run_dir is not None else default_logdir(config)
    check_export_target(config, run_dir)
    return config, run_dir, args


# The optimiser behind each loss the NaN guard names (training.agent.check_finite), and
# the resumable key of its learning rate.
LR_KEYS = {"dreamer": {"world-model": "dreamer.model_lr", "actor": "dreamer.actor_lr",
                       "value": "dreamer.value_lr"},
           "planet": {"world-model": "planet.model_lr"}}


def resume_advice(config: RunConfig, run_dir: Path, error: str) -> str:
    """How to continue after a non-finite loss: resume with half the learning rate of the
    optimiser that failed (a resumable key)."""
    from training.config import to_flat

    command = f"python -m training.{config.agent} --resume {run_dir}"
    key = next((k for name, k in LR_KEYS.get(config.agent, {}).items()
                if error.startswith(name)), None)
    if key is None:
        return f"continue with {command} after fixing the cause"
    return (f"continue with a lower learning rate, e.g. {command} --{key} "
            f"{to_flat(config)[key] / 2:g}")


def check_distributed(config: RunConfig, args: argparse.Namespace, world: int) -> None:
    """A torchrun launch needs one run directory named on every rank and a global batch
    that divides among the ranks."""
    from training.distributed import rank_config

    if world == 1:
        return
    if args.logdir is None and args.resume is None:
        raise ConfigError(f"a distributed run ({world} ranks) needs --logdir DIR or --resume "
                          "RUN_DIR: every rank must name the same run directory")
    rank_config(config, world)


def main(argv: Sequence[str] | None, agent: str) -> int:
    from training.distributed import DistributedError, topology_from_env

    try:
        config, run_dir, args = resolve_run(argv, agent)
        topology = topology_from_env()
        check_distributed(config, args, topology.world)
    except (ConfigError, DistributedError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    if run_dir is None:
        from training.config import to_json

        print(json.dumps(to_json(config), indent=2))
        return 0
    from training.agent import NonFiniteError
    from training.distributed import PeerLostError, process_group
    from training.loop import pick_device, train

    if topology.is_main:
        print(f"run directory: {run_dir}", file=sys.stderr)
    try:
        with process_group(topology, pick_device(config.device), config.dist.timeout) as dist:
            last = train(config, run_dir, dist=dist)
    except NonFiniteError as error:
        advice = resume_advice(config, run_dir, str(error))
        print(f"error: training stopped, {error}. Nothing was applied from this update; the "
              f"last good checkpoint is {run_dir / 'checkpoint.pt'} ({advice}).",
              file=sys.stderr)
        return EXIT_NONFINITE
    except DistributedError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except PeerLostError as error:
        print(f"error: training stopped: {error}. The last checkpoint is "
              f"{run_dir / 'checkpoint.pt'}; continue with torchrun --nproc_per_node="
              f"{topology.world} -m training.{agent} --resume {run_dir}", file=sys.stderr)
        return EXIT_PEER
    if not topology.is_main:
        return 0
    summary = {k: round(v, 4) for k, v in last.items()
               if k in ("eval/return", "train/return", "wm/loss", "fps", "updates_per_s")}
    print(f"done: {run_dir} {json.dumps(summary)}", file=sys.stderr)
    if config.log.export:
        from training.export import main as export_main

        return export_main([str(run_dir), "--out", config.log.export])
    return 0
