"""Headless MuJoCo rendering: backend selection and fast 64x64 camera frames.

Nothing happens at import. :func:`configure_headless_rendering` must run before
dm_control is first imported (``training.envs.dmc`` calls it for you): dm_control
picks its OpenGL backend once, from ``MUJOCO_GL``, when it is imported.

Backend choice:

1. ``MUJOCO_GL`` already set by the user: respected as is, nothing is probed.
2. Otherwise EGL is probed in a short subprocess, then OSMesa; the first that can
   create an OpenGL context is written to ``MUJOCO_GL`` (and ``PYOPENGL_PLATFORM``
   when unset), so child processes inherit the choice without probing again.
3. When neither works, :class:`RenderingUnavailableError` names the Debian
   packages that are missing.
"""

from __future__ import annotations

import ctypes
import glob
import os
import subprocess
import sys
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from dm_control.mujoco import Physics

BACKENDS = ("egl", "osmesa")

# Shared library -> Debian package that provides it, per backend.
_LIBRARIES = {
    "egl": {"libEGL.so.1": "libegl1", "libOpenGL.so.0": "libopengl0"},
    "osmesa": {"libOSMesa.so.8": "libosmesa6"},
}
# Mesa's software rasteriser (used by EGL without a GPU) lives in libgl1-mesa-dri.
_DRI_GLOBS = ("/usr/lib/*/dri/swrast_dri.so", "/usr/lib/*/libgallium*.so", "/usr/lib/dri/*.so")

_PROBE = (
    "from mujoco.{backend} import GLContext\nc = GLContext(64, 64)\nc.make_current()\nc.free()\n"
)

# Fast offscreen settings (docs/design.md §6): no multisampling, small shadow maps.
FAST_SHADOW_SIZE = 256
FAST_OFFSAMPLES = 0


class RenderingUnavailableError(RuntimeError):
    """Neither EGL nor OSMesa can create an OpenGL context on this machine."""


def missing_debian_packages(backend: str) -> list[str]:
    """Debian packages whose libraries for ``backend`` cannot be loaded here."""
    missing = []
    for library, package in _LIBRARIES[backend].items():
        try:
            ctypes.CDLL(library)
        except OSError:
            missing.append(package)
    if backend == "egl" and not any(glob.glob(pattern) for pattern in _DRI_GLOBS):
        missing.append("libgl1-mesa-dri")
    return missing


def probe_backend(backend: str, timeout_s: float = 60.0) -> str | None:
    """Try to create an OpenGL context with ``backend`` in a subprocess.

    Returns None on success, otherwise the reason (last lines of the child's stderr).
    A subprocess is used because a failed attempt can leave PyOpenGL bound to the
    wrong platform in the calling process.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    env = dict(os.environ, MUJOCO_GL=backend, PYOPENGL_PLATFORM=backend)
    try:
        result = subprocess.run(
            [sys.executable, "-c", _PROBE.format(backend=backend)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"creating a {backend} context timed out after {timeout_s:.0f} s"
    if result.returncode == 0:
        return None
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    return " | ".join(lines[-2:]) or f"exit status {result.returncode}"


def unavailable_message(reasons: dict[str, str]) -> str:
    """The error text when no backend works: what failed and what to install."""
    parts = ["headless MuJoCo rendering is unavailable (tried EGL, then OSMesa)."]
    for backend, reason in reasons.items():
        parts.append(f"  {backend}: {reason}")
    missing = [p for backend in BACKENDS for p in missing_debian_packages(backend)]
    if missing:
        parts.append(f"Missing Debian packages: {' '.join(missing)}.")
        parts.append(f"Install them (as root): apt-get install {' '.join(missing)}")
    else:
        parts.append(
            "The libraries are installed but no context could be created; "
            "for EGL check libgl1-mesa-dri (software rasteriser) or the GPU driver, "
            "for OSMesa libosmesa6. Or set MUJOCO_GL yourself."
        )
    return "\n".join(parts)


def configure_headless_rendering() -> str:
    """Choose the headless backend before dm_control is imported; return its name.

    Respects a ``MUJOCO_GL`` value the user already set. Idempotent: once a backend
    is chosen it is kept in ``os.environ`` and returned without probing again.
    """
    chosen = os.environ.get("MUJOCO_GL")
    if chosen:
        return chosen
    if "dm_control._render" in sys.modules:
        # dm_control was imported before us and chose on its own; nothing to change.
        from dm_control import _render

        return str(_render.BACKEND)
    reasons: dict[str, str] = {}
    for backend in BACKENDS:
        reason = probe_backend(backend)
        if reason is None:
            os.environ["MUJOCO_GL"] = backend
            os.environ.setdefault("PYOPENGL_PLATFORM", backend)
            return backend
        reasons[backend] = reason
    raise RenderingUnavailableError(unavailable_message(reasons))


def apply_fast_render_settings(physics: Physics, size: int) -> None:
    """Small offscreen buffer, no multisampling, small shadow maps.

    Must run before the first render of ``physics``: MuJoCo reads these values
    when it creates the rendering context.
    """
    if getattr(physics, "_contexts", None) is not None:
        raise RuntimeError("fast render settings must be applied before the first render")
    quality = physics.model.vis.quality
    quality.offsamples = FAST_OFFSAMPLES
    quality.shadowsize = FAST_SHADOW_SIZE
    physics.model.vis.global_.offwidth = size
    physics.model.vis.global_.offheight = size


class CameraFrames:
    """Renders square RGB frames of one camera.

    ``fast=True``: the fast settings above and one dm_control ``Camera`` (and its
    scene) reused for every frame. ``fast=False``: dm_control's defaults, a new
    camera per frame via ``physics.render`` (what common DMC wrappers do); kept
    for the benchmark's comparison.
    """

    def __init__(self, physics: Physics, size: int, camera_id: int, fast: bool = True) -> None:
        if size < 1:
            raise ValueError(f"image size must be positive, got {size}")
        if not 0 <= camera_id < physics.model.ncam:
            raise ValueError(
                f"camera_id {camera_id} out of range: the model has {physics.model.ncam} cameras"
            )
        self._physics = physics
        self._size = size
        self._camera_id = camera_id
        self._fast = fast
        self._camera = None
        if fast:
            apply_fast_render_settings(physics, size)

    def render(self) -> np.ndarray:
        """The current view as uint8 [size, size, 3] (a fresh array)."""
        if not self._fast:
            return self._physics.render(self._size, self._size, camera_id=self._camera_id)
        if self._camera is None:
            from dm_control.mujoco.engine import Camera

            self._camera = Camera(self._physics, self._size, self._size, self._camera_id)
        return np.array(self._camera.render(), copy=True)

    def close(self) -> None:
        """Free the cached scene (the GL context belongs to the physics)."""
        if self._camera is not None:
            self._camera._scene.free()
            self._camera = None
