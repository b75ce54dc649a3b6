"""Export never replaces what is not a bundle: the run directory, a folder around or inside
it, or a non-empty folder without manifest.json are refused in one line before any work;
``--log.export`` is checked before the training run starts."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from training.cli import main as train_main
from training.export import ExportTargetError, check_out_dir
from training.export import main as export_main


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """What export looks at before loading anything: config.json and checkpoint.pt."""
    run = tmp_path / "runs" / "run"
    (run / "episodes").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "checkpoint.pt").write_bytes(b"weights")
    (run / "episodes" / "000000-50.npz").write_bytes(b"an episode")
    return run


def _user_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "thesis.tex").write_text("months of work")
    return folder


@pytest.mark.parametrize("where", ["run", "inside", "around", "not_a_bundle", "a_file"])
def test_export_refuses_before_any_work(run_dir, tmp_path, capsys, where):
    out = {"run": run_dir, "inside": run_dir / "bundle", "around": run_dir.parent,
           "not_a_bundle": _user_folder(tmp_path), "a_file": run_dir / "config.json"}[where]
    before = _digest(tmp_path)
    for source in (run_dir, run_dir / "checkpoint.pt"):
        assert export_main([str(source), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --out ") and err.count("\n") == 1, err
    assert _digest(tmp_path) == before  # nothing renamed, nothing deleted
    assert not list(tmp_path.rglob(".*.old")) and not list(tmp_path.rglob(".bundle.*"))


def test_what_may_be_replaced(run_dir, tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    (bundle / "actor.onnx").write_bytes(b"old")
    assert check_out_dir(bundle, [run_dir]) == bundle  # a bundle: replaced
    (tmp_path / "empty").mkdir()
    assert check_out_dir(tmp_path / "empty", [run_dir]) == tmp_path / "empty"
    assert check_out_dir(tmp_path / "new", [run_dir]) == tmp_path / "new"
    with pytest.raises(ExportTargetError, match="symbolic link"):
        (tmp_path / "link").symlink_to(bundle)
        check_out_dir(tmp_path / "link")
    with pytest.raises(ExportTargetError, match="not a bundle"):
        check_out_dir(_user_folder(tmp_path))


def test_export_bundle_itself_refuses_a_folder_that_is_not_a_bundle(tmp_path):
    import numpy as np

    from tests.world_models.conftest import tiny_model
    from training.actor_critic import Actor
    from training.export import ExportInputs, export_bundle

    model = tiny_model("vrkn", "fusion")
    info = ExportInputs(0.05, (-1.0,) * model.action_dim, (1.0,) * model.action_dim,
                        {"proprio": (np.zeros(3), np.ones(3))}, {})
    folder = _user_folder(tmp_path)
    with pytest.raises(ExportTargetError, match=r"no manifest\.json"):
        export_bundle(model, Actor(model.feature_dim, model.action_dim), info, folder)
    assert _digest(tmp_path) == {"notes/thesis.tex": _digest(folder)["thesis.tex"]}


@pytest.mark.parametrize("target", ["run", "inside", "not_a_bundle"])
def test_log_export_is_checked_before_training(tmp_path, capsys, target):
    run = tmp_path / "run"
    out = {"run": run, "inside": run / "bundle", "not_a_bundle": _user_folder(tmp_path)}[target]
    code = train_main(["--preset", "debug", "--logdir", str(run), "--log.export", str(out)],
                      "dreamer")
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --log.export ") and err.count("\n") == 1, err
    assert not run.exists()


def test_log_export_is_checked_on_resume_too(run_dir, capsys):
    import json

    from training.config import to_json
    from training.presets import resolve

    (run_dir / "config.json").write_text(json.dumps(to_json(resolve(["debug"]))))
    before = _digest(run_dir)
    code = train_main(["--resume", str(run_dir), "--log.export", str(run_dir)], "dreamer")
    assert code == 2 and "is the run directory" in capsys.readouterr().err
    assert _digest(run_dir) == before


def test_a_bundle_that_fails_verification_is_one_line(tmp_path, monkeypatch, capsys):
    import server.runtime
    import training.export
    import training.export_run
    from server.runtime import BundleError

    written = tmp_path / "bundle"

    def bad_bundle(*args, **kwargs):
        raise BundleError(f"{written / 'actor.onnx'}: missing (listed in manifest.json)")

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "checkpoint.pt").write_bytes(b"")
    monkeypatch.setattr(training.export_run, "load_run_for_export",
                        lambda source: (None, None, None, None))
    monkeypatch.setattr(training.export, "export_bundle", lambda *a, **k: written)
    monkeypatch.setattr(server.runtime, "load_bundle", bad_bundle)
    assert export_main([str(run), "--out", str(written)]) == 1
    err = capsys.readouterr().err
    assert err == (f"error: the written bundle does not load: {written / 'actor.onnx'}: "
                   "missing (listed in manifest.json)\n")
