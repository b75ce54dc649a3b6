"""Load a bundle with ONNX Runtime, verified: hashes, shapes, and a stored parity sample.

``load_bundle`` either returns a fully checked ``Bundle`` or raises ``BundleError`` naming
the file and the problem; nothing is half-loaded. Imports numpy and onnxruntime only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from server.runtime.manifest import BundleError, Manifest, NetworkInfo, read_manifest

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise BundleError("onnxruntime is not installed (pip install onnxruntime, or "
                          "onnxruntime-gpu for CUDA)") from None
    return onnxruntime


def choose_providers(requested: str | Sequence[str] = "auto") -> list[str]:
    """'auto': CUDA first when ONNX Runtime offers it (whether it really runs is checked on
    the sessions, see ``Bundle.providers``), then CPU; 'cpu', 'cuda' or an explicit list."""
    ort = _ort()
    available = ort.get_available_providers()
    if requested == "auto":
        return [CUDA, CPU] if CUDA in available else [CPU]
    if requested == "cpu":
        return [CPU]
    if requested == "cuda":
        if CUDA not in available:
            raise BundleError(f"CUDA was requested but ONNX Runtime offers {available} "
                              "(install onnxruntime-gpu on a machine with a GPU)")
        return [CUDA, CPU]
    return list(requested)


def _check_io(info: NetworkInfo, session, manifest: Manifest) -> None:
    """The ONNX graph's inputs and outputs must be the manifest's, with a dynamic batch."""
    where = f"{info.file}"
    got_in = {i.name: i.shape for i in session.get_inputs()}
    got_out = {o.name: o.shape for o in session.get_outputs()}
    for kind, expected, got in (("input", info.inputs, got_in), ("output", info.outputs,
                                                                   got_out)):
        if set(expected) != set(got):
            raise BundleError(f"{where}: {kind}s are {sorted(got)}, the manifest says "
                              f"{sorted(expected)}")
        for name, (shape, _dtype) in expected.items():
            actual = got[name]
            if len(actual) != len(shape) or any(
                    isinstance(e, int) and a != e for e, a in zip(shape, actual, strict=True)):
                raise BundleError(f"{where}: {kind} {name!r} has shape {actual}, the manifest "
                                  f"says {list(shape)}")
            if isinstance(actual[0], int):
                raise BundleError(f"{where}: {kind} {name!r} has a fixed batch size "
                                  f"{actual[0]}; bundles need a dynamic batch axis")
    latent, action = manifest.latent_size, manifest.action_size
    expect = {
        "transition": ({"mean": latent, "action": action}, {"a": latent, "b": latent,
                                                            "q": latent}),
        "actor": ({"features": latent, "noise": action}, {"mode": action, "sample": action}),
    }.get(info.name)
    if info.name.startswith("encoder_"):
        expect = ({}, {"w": latent, "var": latent})
    if manifest.state is not None and info.name == manifest.state.network:
        size = len(manifest.state.names)
        expect = ({"features": latent}, {"mean": size, "var": size})
    if expect:
        for names, table in ((expect[0], info.inputs), (expect[1], info.outputs)):
            for name, width in names.items():
                if name not in table or table[name][0][-1] != width:
                    raise BundleError(f"{where}: {name!r} must be [N, {width}] for latent size "
                                      f"{latent} and action size {action}")


class Bundle:
    """A verified bundle: its manifest and one ONNX Runtime session per network."""

    def __init__(self, path: Path, manifest: Manifest, sessions: dict, providers: list[str]):
        self.path, self.manifest, self._sessions = path, manifest, sessions
        self.providers = providers  # the providers the sessions actually use

    def run(self, network: str, **inputs: np.ndarray) -> list[np.ndarray]:
        return self._sessions[network].run(None, inputs)

    def encode(self, sensor: str, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w, var = self.run(f"encoder_{sensor}", obs=obs)
        return w, var

    def transition(self, mean: np.ndarray, action: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a, b, q = self.run("transition", mean=mean, action=action)
        return a, b, q

    def actor(self, features: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mode, sample = self.run("actor", features=features, noise=noise)
        return mode, sample

    def reward(self, features: np.ndarray) -> np.ndarray:
        return self.run("reward", features=features)[0]

    def state_head(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance ``[N, S]`` of the state given latent samples ``[N, L]``."""
        if self.manifest.state is None:
            raise ValueError("this bundle has no state head")
        mean, var = self.run(self.manifest.state.network, features=features)
        return mean, var

    def has_decoder(self, sensor: str) -> bool:
        return f"decoder_{sensor}" in self._sessions

    def decode(self, sensor: str, features: np.ndarray) -> np.ndarray:
        return self.run(f"decoder_{sensor}", features=features)[0]


def load_bundle(path: str | Path, providers: str | Sequence[str] = "auto",
                verify_parity: bool = True, threads: int = 0) -> Bundle:
    """Load and verify a bundle folder; raise BundleError naming the file and problem."""
    path = Path(path)
    manifest = read_manifest(path)
    for name, info in manifest.networks.items():
        if info.file not in manifest.files:
            raise BundleError(f"{path / 'manifest.json'}: network {name!r} file {info.file} "
                              "has no hash in 'files'")
    for file, digest in manifest.files.items():
        fpath = path / file
        if not fpath.is_file():
            raise BundleError(f"{fpath}: missing (listed in manifest.json)")
        if sha256(fpath) != digest:
            raise BundleError(f"{fpath}: SHA-256 does not match manifest.json (the file was "
                              "altered or belongs to another bundle)")
    ort = _ort()
    wanted = choose_providers(providers)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    sessions = {}
    used: list[str] = []
    for name, info in manifest.networks.items():
        try:
            session = ort.InferenceSession(str(path / info.file), options, providers=wanted)
        except Exception as e:  # onnxruntime raises its own exception types
            raise BundleError(f"{path / info.file}: ONNX Runtime cannot load it ({e})") from None
        _check_io(info, session, manifest)
        sessions[name] = session
        used = session.get_providers()
        # ONNX Runtime falls back to the CPU quietly (CUDA libraries missing, no GPU): an
        # explicit request must be what runs, or the bundle does not load.
        if providers != "auto" and used[:1] != wanted[:1]:
            raise BundleError(f"{path / info.file}: ONNX Runtime was asked for {wanted[0]} "
                              f"but runs it on {used} (for CUDA: onnxruntime-gpu, a GPU "
                              "and its CUDA/cuDNN libraries; or --providers cpu/auto)")
    bundle = Bundle(path, manifest, sessions, used)
    if verify_parity:
        verify(bundle)
    return bundle


def verify(bundle: Bundle) -> None:
    """Re-run the stored parity sample; outputs must match within the manifest's atol."""
    m = bundle.manifest
    ppath = bundle.path / m.parity_file
    try:
        sample = dict(np.load(ppath))
    except (OSError, ValueError) as e:
        raise BundleError(f"{ppath}: cannot read the parity sample ({e})") from None
    for name, info in m.networks.items():
        try:
            inputs = {k: sample[f"{name}/in/{k}"] for k in info.inputs}
            expected = [sample[f"{name}/out/{k}"] for k in info.outputs]
        except KeyError as e:
            raise BundleError(f"{ppath}: no parity data {e} for network {name!r}") from None
        got = bundle._sessions[name].run(list(info.outputs), inputs)
        for out_name, e, g in zip(info.outputs, expected, got, strict=True):
            if e.shape != g.shape or not np.allclose(g, e, atol=m.parity_atol,
                                                     rtol=m.parity_rtol):
                err = float(np.max(np.abs(g - e))) if e.shape == g.shape else float("nan")
                raise BundleError(f"{bundle.path / info.file}: output {out_name!r} differs from "
                                  f"the parity sample by {err:.3g} (> {m.parity_atol} + "
                                  f"{m.parity_rtol} x |expected|)")
