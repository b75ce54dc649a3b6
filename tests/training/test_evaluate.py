"""``python -m training.evaluate`` on a tiny trained run (torch, an RSSM) and on a tiny
bundle (the runtime), and its refusals. The models are untrained: only the plumbing and
the bookkeeping are checked here; the figures of a trained model are in its model card."""

from __future__ import annotations

import json

import pytest

from tests.training.conftest import debug_config
from training.evaluate import main
from training.loop import train

pytestmark = [pytest.mark.slow, pytest.mark.render]
TASK = "cartpole_swingup-fusion"
NAMES = ["cart_position", "pole_angle_cos", "pole_angle_sin", "cart_velocity",
         "pole_angular_velocity"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    out = {}
    for model in ("rssm", "vrkn"):
        config = debug_config(model, task=TASK, **{"loop.steps": 200, "log.video": False})
        train(config, root / model)
        out[model] = root / model
    from training.export import main as export

    assert export([str(root / "vrkn"), "--out", str(root / "bundle")]) == 0
    out["bundle"] = root / "bundle"
    return out


@pytest.mark.parametrize("source", ["rssm", "bundle"])
def test_evaluate_writes_returns_estimation_and_pictures(runs, source, tmp_path, capsys):
    out = tmp_path / "eval"
    video = ["--video"] if source == "bundle" else []
    assert main([str(runs[source]), "--episodes", "2", "--out", str(out), *video]) == 0
    text = capsys.readouterr().out
    assert "IQM" in text and "pole_angular_velocity" in text and "(hidden" in text
    result = json.loads((out / "eval.json").read_text())
    assert result["task"] == TASK and result["return"]["episodes"] == 2
    lo, hi = result["return"]["iqm_ci95"]
    assert lo <= result["return"]["iqm"] <= hi
    model = result["estimation"]["model"]
    assert model["names"] == NAMES and model["measured"] == ["cart_position"]
    assert model["ticks"] == 2 * 51 and len(model["all"]["cov90"]) == 5
    assert set(result["estimation"]) == {"model", "camera withheld"}
    assert set(model["by_since_frame"]) <= {"0", "1-3", "4+"}
    for name in ("eval.md", "reliability.png", "pole.png", *(["episode0.gif"] if video else [])):
        assert (out / name).stat().st_size > 0


def test_evaluate_refuses_what_it_cannot_use(runs, tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main([str(runs["bundle"]), "--out", str(tmp_path / "mine")]) == 2
    assert "not an earlier evaluation" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert main([str(tmp_path / "mine"), "--out", str(tmp_path / "e")]) == 2
    assert "neither a bundle" in capsys.readouterr().err
    assert main([str(runs["bundle"]), "--task", "walker_walk-fusion", "--episodes", "1",
                 "--out", str(tmp_path / "e2")]) == 2
    assert "the model estimates" in capsys.readouterr().err
