"""Torch-free bundle runtime: load and verify a bundle, run the online filter and policy."""

from server.runtime.bundle import Bundle, choose_providers, load_bundle, verify
from server.runtime.filter import OnlineFilter, Reading
from server.runtime.kalman import Belief
from server.runtime.manifest import BundleError, Manifest, read_manifest

__all__ = [
    "Belief",
    "Bundle",
    "BundleError",
    "Manifest",
    "OnlineFilter",
    "Reading",
    "choose_providers",
    "load_bundle",
    "read_manifest",
    "verify",
]
