"""Headless backend selection and the fast render settings."""

from __future__ import annotations

import sys

import pytest

from training.envs import rendering


@pytest.fixture
def fresh_environment(monkeypatch):
    """No backend chosen yet and dm_control's renderer not imported."""
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    monkeypatch.delenv("PYOPENGL_PLATFORM", raising=False)
    monkeypatch.delitem(sys.modules, "dm_control._render", raising=False)
    return monkeypatch


def test_a_backend_set_by_the_user_is_respected(monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "osmesa")

    def must_not_probe(backend):
        raise AssertionError("probed although MUJOCO_GL was set")

    monkeypatch.setattr(rendering, "probe_backend", must_not_probe)
    assert rendering.configure_headless_rendering() == "osmesa"


def test_egl_first_then_osmesa_fallback(fresh_environment):
    tried = []

    def probe(backend):
        tried.append(backend)
        return "no EGL device" if backend == "egl" else None

    fresh_environment.setattr(rendering, "probe_backend", probe)
    assert rendering.configure_headless_rendering() == "osmesa"
    assert tried == ["egl", "osmesa"]
    import os

    assert os.environ["MUJOCO_GL"] == "osmesa" and os.environ["PYOPENGL_PLATFORM"] == "osmesa"


def test_no_backend_names_the_missing_debian_packages(fresh_environment):
    fresh_environment.setattr(rendering, "probe_backend", lambda backend: f"{backend} broken")
    fresh_environment.setattr(
        rendering,
        "missing_debian_packages",
        lambda backend: {"egl": ["libegl1", "libopengl0"], "osmesa": ["libosmesa6"]}[backend],
    )
    with pytest.raises(rendering.RenderingUnavailableError) as info:
        rendering.configure_headless_rendering()
    message = str(info.value)
    assert "egl: egl broken" in message and "osmesa: osmesa broken" in message
    assert "apt-get install libegl1 libopengl0 libosmesa6" in message


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown backend"):
        rendering.probe_backend("directx")


@pytest.mark.render
def test_this_machine_has_a_working_backend_and_its_packages():
    reasons = {b: rendering.probe_backend(b) for b in rendering.BACKENDS}
    assert None in reasons.values(), reasons
    working = [b for b, reason in reasons.items() if reason is None]
    assert any(rendering.missing_debian_packages(b) == [] for b in working)


@pytest.mark.render
def test_fast_settings_must_precede_the_first_render():
    from training.envs import make_task

    with make_task("pendulum_swingup", 0) as task:
        physics = task.unwrapped.physics
        assert physics.model.vis.quality.offsamples == 0
        assert physics.model.vis.global_.offwidth == 64
        assert physics.model.vis.quality.shadowsize == rendering.FAST_SHADOW_SIZE
        task.reset()
        with pytest.raises(RuntimeError, match="before the first render"):
            rendering.apply_fast_render_settings(physics, 64)
