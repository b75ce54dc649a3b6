"""The bundle manifest (written by ``training.export``), parsed and checked.

Every problem raises ``BundleError`` naming the file and what is wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "vrkn-bundle"
SUPPORTED_VERSIONS = (1,)
MANIFEST = "manifest.json"
# What the service's policy acts on: the actor's mode on the belief mean (deterministic).
# The actor was trained on belief samples; a bundle must state "mean" (it is what runs).
ACTOR_FEATURES = "mean"


class BundleError(ValueError):
    """A bundle that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class SensorInfo:
    name: str
    kind: str  # "image" or "vector"
    shape: tuple[int, ...]
    dtype: np.dtype
    normalisation: dict[str, list[float]] | None
    decoder_var: np.ndarray | None = None  # vectors: the decoder's own variance, sensor units


@dataclass(frozen=True)
class StateInfo:
    """The simulator state the bundle's ``state_head`` estimates: element names in order."""

    names: tuple[str, ...]
    network: str


@dataclass(frozen=True)
class NetworkInfo:
    name: str
    file: str
    inputs: dict[str, tuple[tuple[int | str, ...], str]]  # name -> (shape, dtype)
    outputs: dict[str, tuple[tuple[int | str, ...], str]]


@dataclass(frozen=True)
class Manifest:
    format_version: int
    code_version: str
    latent_size: int
    action_size: int
    action_low: np.ndarray
    action_high: np.ndarray
    control_period: float
    sensors: tuple[SensorInfo, ...]
    initial_mean: np.ndarray
    initial_var: np.ndarray
    actor_features: str
    onnx_opset: int
    networks: dict[str, NetworkInfo]
    files: dict[str, str]  # file name -> sha256
    parity_file: str
    parity_atol: float
    parity_rtol: float  # relative part (0 in bundles written before it existed)
    training_config: dict[str, Any]
    state: StateInfo | None = None  # None: a bundle without a state head

    def sensor(self, name: str) -> SensorInfo:
        for s in self.sensors:
            if s.name == name:
                return s
        raise KeyError(name)


def _get(data: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise BundleError(f"{where}: missing key {key!r}")
    value = data[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise BundleError(f"{where}: {key!r} must be {names}, got {type(value).__name__}")
    return value


def _io(spec: dict[str, Any], where: str) -> dict[str, tuple[tuple[int | str, ...], str]]:
    out = {}
    for name, entry in spec.items():
        shape = _get(entry, "shape", list, f"{where}[{name!r}]")
        out[name] = (tuple(shape), _get(entry, "dtype", str, f"{where}[{name!r}]"))
    return out


def read_manifest(directory: Path) -> Manifest:
    path = Path(directory) / MANIFEST
    where = str(path)
    if not Path(directory).is_dir():
        raise BundleError(f"{directory}: not a bundle directory (it does not exist)")
    if not path.is_file():
        raise BundleError(f"{where}: missing (a bundle folder needs manifest.json)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BundleError(f"{where}: not a {FORMAT} manifest (format = "
                          f"{data.get('format') if isinstance(data, dict) else data!r})")
    version = _get(data, "format_version", int, where)
    if version not in SUPPORTED_VERSIONS:
        raise BundleError(f"{where}: format_version {version} is not supported by this "
                          f"runtime (supported: {list(SUPPORTED_VERSIONS)})")
    latent = _get(data, "latent_size", int, where)
    action = _get(data, "action", dict, where)
    size = _get(action, "size", int, f"{where} action")
    low = np.asarray(_get(action, "low", list, f"{where} action"), dtype=np.float32)
    high = np.asarray(_get(action, "high", list, f"{where} action"), dtype=np.float32)
    if low.shape != (size,) or high.shape != (size,) or not bool(np.all(low < high)) or \
            not bool(np.isfinite(high - low).all() and np.isfinite(high + low).all()):
        raise BundleError(f"{where}: action bounds must be {size} finite values each with "
                          "low < high")
    sensors = []
    for i, s in enumerate(_get(data, "sensors", list, where)):
        w = f"{where} sensors[{i}]"
        kind = _get(s, "kind", str, w)
        if kind not in ("image", "vector"):
            raise BundleError(f"{w}: kind must be 'image' or 'vector', got {kind!r}")
        shape = tuple(_get(s, "shape", list, w))
        decoder_var = s.get("decoder_var")
        if decoder_var is not None:
            decoder_var = np.asarray(decoder_var, dtype=np.float32)
            if kind != "vector" or decoder_var.shape != shape or not bool(
                    np.all(decoder_var > 0)):
                raise BundleError(f"{w}: decoder_var must hold {list(shape)} positive "
                                  "variances of a vector sensor")
        sensors.append(SensorInfo(_get(s, "name", str, w), kind, shape,
                                  np.dtype(_get(s, "dtype", str, w)), s.get("normalisation"),
                                  decoder_var))
    if not sensors:
        raise BundleError(f"{where}: no sensors")
    init = _get(data, "initial_belief", dict, where)
    init_mean = np.asarray(_get(init, "mean", list, where), dtype=np.float32)
    init_var = np.asarray(_get(init, "var", list, where), dtype=np.float32)
    if init_mean.shape != (latent,) or init_var.shape != (latent,) or not bool(
            np.all(init_var > 0)):
        raise BundleError(f"{where}: initial_belief must hold {latent} means and {latent} "
                          "positive variances")
    networks = {}
    for name, entry in _get(data, "networks", dict, where).items():
        w = f"{where} networks[{name!r}]"
        networks[name] = NetworkInfo(name, _get(entry, "file", str, w),
                                     _io(_get(entry, "inputs", dict, w), w),
                                     _io(_get(entry, "outputs", dict, w), w))
    required = ["transition", "actor", "reward"] + [f"encoder_{s.name}" for s in sensors]
    missing = [n for n in required if n not in networks]
    if missing:
        raise BundleError(f"{where}: networks {missing} are missing")
    state = _read_state(data.get("state"), networks, where)
    parity = _get(data, "parity", dict, where)
    period = _get(data, "control_period_s", (int, float), where)
    if period <= 0:
        raise BundleError(f"{where}: control_period_s must be positive, got {period}")
    return Manifest(
        format_version=version, code_version=str(data.get("code_version", "unknown")),
        latent_size=latent, action_size=size, action_low=low, action_high=high,
        control_period=float(period), sensors=tuple(sensors), initial_mean=init_mean,
        initial_var=init_var, actor_features=_actor_features(data, where),
        onnx_opset=_get(data, "onnx_opset", int, where), networks=networks,
        files=dict(_get(data, "files", dict, where)),
        parity_file=_get(parity, "file", str, f"{where} parity"),
        parity_atol=float(_get(parity, "atol", (int, float), f"{where} parity")),
        parity_rtol=float(parity.get("rtol", 0.0)),
        training_config=dict(data.get("training_config", {})),
        state=state,
    )


# Bundles exported before the runtime stated its choice say "sample" (what training
# collected with); the service has always acted on the mean, so they keep loading and mean
# what they always meant in serving.
LEGACY_ACTOR_FEATURES = ("sample",)


def _actor_features(data: dict[str, Any], where: str) -> str:
    features = data.get("actor_features", ACTOR_FEATURES)
    if features in LEGACY_ACTOR_FEATURES:
        return ACTOR_FEATURES
    if features != ACTOR_FEATURES:
        raise BundleError(
            f"{where}: actor_features {features!r} is not supported: this runtime's policy "
            f"acts on the belief mean (the actor's mode), actor_features {ACTOR_FEATURES!r}; "
            "re-export the bundle with this code's training.export")
    return ACTOR_FEATURES


def _read_state(entry: Any, networks: dict[str, NetworkInfo], where: str) -> StateInfo | None:
    """The optional ``state`` entry; its names must match the head's output width."""
    if entry is None:
        return None
    w = f"{where} state"
    if not isinstance(entry, dict):
        raise BundleError(f"{w}: must be an object with 'names' and 'network'")
    names = _get(entry, "names", list, w)
    if not names or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(
            names):
        raise BundleError(f"{w}: 'names' must be unique non-empty strings, got {names!r}")
    network = _get(entry, "network", str, w)
    info = networks.get(network)
    if info is None:
        raise BundleError(f"{w}: network {network!r} is not in 'networks'")
    for out in ("mean", "var"):
        shape = info.outputs.get(out, ((),))[0]
        if len(shape) != 2 or shape[-1] != len(names):
            raise BundleError(f"{w}: {len(names)} state names but the head's {out!r} output "
                              f"is {list(shape)}; names and head disagree")
    return StateInfo(tuple(names), network)
