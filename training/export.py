"""Export a trained VRKN agent as a verified ONNX bundle (docs/design.md §5).

    python -m training.export RUN_DIR_OR_CHECKPOINT --out BUNDLE_DIR

A bundle is a folder: ``manifest.json`` (format version, sensors with shapes, dtypes,
preprocessing and normalisation, action size and bounds, latent size, control period,
initial belief, ONNX opset, SHA-256 of every file, the training config and code version)
plus one ONNX file per network (see ``training.export_graphs``) and ``parity.npz``: inputs
and the torch outputs for every network, which the runtime re-runs at load time. The
bundle is written to a temporary folder and renamed into place, so a crash leaves either
the old bundle or the new one. Kalman arithmetic is not exported: the runtime does it in
numpy (``server.runtime``). An existing ``--out`` is replaced only when it is a bundle (it
holds ``manifest.json``) or empty; anything else, and the run directory itself, a folder
inside it or one that contains it, is refused before any work (``check_out_dir``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from estimator.state_head import StateHead
from estimator.vrkn import VRKN
from server.runtime.bundle import sha256
from server.runtime.manifest import ACTOR_FEATURES
from training.export_graphs import (
    ActorGraph,
    DecoderGraph,
    EncoderGraph,
    RewardGraph,
    StateHeadGraph,
    TransitionGraph,
)

FORMAT = "vrkn-bundle"
FORMAT_VERSION = 1
OPSET = 18
PARITY_BATCH = 3
PARITY_ATOL = 1e-4
# Relative part: float32 round-off of a 0..255 image decoder is ~10 ulps at 255 (1.5e-4).
PARITY_RTOL = 1e-5


@dataclass(frozen=True)
class ExportInputs:
    """Everything besides the networks that the bundle must state."""

    control_period: float  # seconds per control tick (agent step)
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    normalisation: Mapping[str, tuple[np.ndarray, np.ndarray]]  # sensor -> (mean, std)
    training_config: Mapping[str, Any]
    # What the service's policy acts on (``server.runtime.manifest.ACTOR_FEATURES``): the
    # belief mean, the actor's mode. Training acted on belief samples; the runtime supports
    # only "mean" and refuses a bundle stating anything else.
    features: str = ACTOR_FEATURES


class ExportTargetError(ValueError):
    """An output folder that export must not replace (it would destroy other data)."""


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_out_dir(out: Path, protect: Sequence[Path] = (), option: str = "--out") -> Path:
    """Refuse an output folder that is not safe to replace: an existing file or symbolic
    link, a non-empty folder without manifest.json, or one that is, holds or lies inside a
    ``protect`` folder (the run directory). ``option`` names it in the message."""
    out = Path(out)
    target = out.resolve()
    for folder in (Path(p).resolve() for p in protect):
        if _within(target, folder) or _within(folder, target):
            where = ("is" if target == folder else "is inside" if _within(target, folder)
                     else "contains")
            raise ExportTargetError(f"{option} {out} {where} the run directory {folder}; "
                                    "write the bundle to a folder outside the run")
    if out.is_symlink():
        raise ExportTargetError(f"{option} {out} is a symbolic link; give the folder itself")
    if out.exists() and not out.is_dir():
        raise ExportTargetError(f"{option} {out} exists and is not a folder; choose another "
                                "path")
    if out.is_dir() and not (out / "manifest.json").is_file() and any(out.iterdir()):
        raise ExportTargetError(f"{option} {out} is a non-empty folder that is not a bundle "
                                "(no manifest.json): refusing to replace it; choose another "
                                "folder")
    return out


def code_version() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, check=True, timeout=5)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _example_inputs(model: VRKN, name: str, g: torch.Generator) -> dict[str, torch.Tensor]:
    n, latent, a = PARITY_BATCH, model.config.latent, model.action_dim
    if name.startswith("encoder_"):
        spec = next(s for s in model.specs if f"encoder_{s.name}" == name)
        if spec.kind == "image":
            return {"obs": torch.randint(0, 256, (n, *spec.shape), dtype=torch.uint8,
                                         generator=g)}
        return {"obs": torch.randn(n, *spec.shape, generator=g)}
    if name == "transition":
        return {"mean": torch.randn(n, latent, generator=g),
                "action": torch.rand(n, a, generator=g) * 2 - 1}
    if name == "actor":
        return {"features": torch.randn(n, latent, generator=g),
                "noise": torch.randn(n, a, generator=g)}
    return {"features": torch.randn(n, latent, generator=g)}


OUTPUT_NAMES = {"transition": ["a", "b", "q"], "actor": ["mode", "sample"],
                "reward": ["reward"], "state_head": ["mean", "var"]}


def _output_names(name: str) -> list[str]:
    if name.startswith("encoder_"):
        return ["w", "var"]
    if name.startswith("decoder_"):
        return ["reconstruction"]
    return OUTPUT_NAMES[name]


def _export_one(graph: nn.Module, name: str, inputs: dict[str, torch.Tensor], path: Path
                ) -> dict[str, Any]:
    batch = torch.export.Dim("N", min=1, max=1 << 20)
    dynamic = {k: {0: batch} for k in inputs}
    # The exporter logs a warning per torchvision op it cannot register; none is used here.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, tuple(inputs.values()), str(path),
                          input_names=list(inputs), output_names=_output_names(name),
                          dynamic_shapes=dynamic, opset_version=OPSET, dynamo=True,
                          verbose=False, external_data=False)
    with torch.no_grad():
        outputs = graph(*inputs.values())
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    return {
        "file": path.name,
        "inputs": {k: {"shape": ["N", *v.shape[1:]], "dtype": str(v.dtype).removeprefix(
            "torch.")} for k, v in inputs.items()},
        "outputs": {k: {"shape": ["N", *v.shape[1:]], "dtype": "float32"}
                    for k, v in zip(_output_names(name), outputs, strict=True)},
        "_parity": {**{f"{name}/in/{k}": v.numpy() for k, v in inputs.items()},
                    **{f"{name}/out/{k}": v.numpy() for k, v in
                       zip(_output_names(name), outputs, strict=True)}},
    }


def export_bundle(model: VRKN, actor: nn.Module, info: ExportInputs, out: Path,
                  seed: int = 0, state_head: StateHead | None = None) -> Path:
    """Write the bundle of ``model`` and ``actor`` (and ``state_head``, when given) to
    ``out`` (replaced atomically)."""
    if not isinstance(model, VRKN):
        raise ValueError(f"only VRKN world models can be exported (the service runs Kalman "
                         f"arithmetic on them); got {type(model).__name__}")
    if len(info.action_low) != model.action_dim or len(info.action_high) != model.action_dim:
        raise ValueError(f"action bounds have {len(info.action_low)}/{len(info.action_high)} "
                         f"entries, the model's action size is {model.action_dim}")
    if info.features != ACTOR_FEATURES:
        raise ValueError(f"actor features {info.features!r}: the runtime's policy acts on the "
                         f"belief mean, the only supported value is {ACTOR_FEATURES!r}")
    out = check_out_dir(out)
    model = model.cpu().eval()
    actor = actor.cpu().eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        g = torch.Generator().manual_seed(seed)
        graphs: dict[str, nn.Module] = {}
        for i, spec in enumerate(model.specs):
            norm = info.normalisation.get(spec.name)
            mean = torch.as_tensor(norm[0], dtype=torch.float32) if norm else None
            std = torch.as_tensor(norm[1], dtype=torch.float32) if norm else None
            graphs[f"encoder_{spec.name}"] = EncoderGraph(model, i, mean, std)
            graphs[f"decoder_{spec.name}"] = DecoderGraph(model, i, mean, std)
        graphs["transition"] = TransitionGraph(model)
        graphs["actor"] = ActorGraph(actor)
        graphs["reward"] = RewardGraph(model)
        if state_head is not None:
            if next(state_head.parameters()).shape[-1] != model.config.latent:
                raise ValueError("the state head does not read this model's features")
            graphs["state_head"] = StateHeadGraph(state_head.cpu().eval())
        networks, parity = {}, {}
        for name, graph in graphs.items():
            entry = _export_one(graph.eval(), name, _example_inputs(model, name, g),
                                tmp / f"{name}.onnx")
            parity.update(entry.pop("_parity"))
            networks[name] = entry
        np.savez(tmp / "parity.npz", **parity)
        init = model.initial_belief(1)
        sensors = []
        for spec in model.specs:
            norm = info.normalisation.get(spec.name)
            sensors.append({
                "name": spec.name, "kind": spec.kind, "shape": list(spec.shape),
                "dtype": "uint8" if spec.kind == "image" else "float32",
                "preprocessing": ("5-bit: floor(x/8)/32 - 0.5, inside the encoder"
                                  if spec.kind == "image" else
                                  "(x - mean) / std inside the encoder" if norm else "none"),
                "normalisation": ({"mean": np.asarray(norm[0]).tolist(),
                                   "std": np.asarray(norm[1]).tolist()} if norm else None),
                # The decoder's own (unit, normalised) variance in sensor units.
                "decoder_var": (np.square(np.asarray(norm[1], np.float64)).tolist()
                                if spec.kind == "vector" and norm else
                                [1.0] * spec.shape[0] if spec.kind == "vector" else None),
            })
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "code_version": code_version(),
            "model": "vrkn", "latent_size": model.config.latent,
            "action": {"size": model.action_dim, "low": list(info.action_low),
                       "high": list(info.action_high)},
            "control_period_s": info.control_period,
            "sensors": sensors,
            "initial_belief": {"mean": init.mean[0].tolist(), "var": init.var[0].tolist()},
            "actor_features": info.features,
            "state": (None if state_head is None else
                      {"names": list(state_head.names), "network": "state_head",
                       "method": "dd2-sigma-points"}),
            "onnx_opset": OPSET,
            "networks": networks,
            "parity": {"file": "parity.npz", "atol": PARITY_ATOL, "rtol": PARITY_RTOL},
            "files": {p.name: sha256(p) for p in sorted(tmp.iterdir())},
            "training_config": dict(info.training_config),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        tmp.chmod(0o755)
        check_out_dir(out)  # again: the folder may have changed while exporting
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    from training.export_run import load_run_for_export, resolve_source

    parser = argparse.ArgumentParser(
        prog="python -m training.export", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a run directory or its checkpoint file")
    parser.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip loading the written bundle with the torch-free runtime")
    args = parser.parse_args(argv)
    try:
        check_out_dir(args.out, [resolve_source(args.source)[0]])
        model, actor, info, state_head = load_run_for_export(args.source)
        path = export_bundle(model, actor, info, args.out, state_head=state_head)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.no_verify:
        from server.runtime import BundleError, load_bundle

        try:
            bundle = load_bundle(path)
        except BundleError as e:
            print(f"error: the written bundle does not load: {e}", file=sys.stderr)
            return 1
        print(f"verified with ONNX Runtime ({', '.join(bundle.providers)})")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
