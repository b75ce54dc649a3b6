"""Metrics files (resume truncation, non-finite values) and the evaluation video frames."""

from __future__ import annotations

import json

import numpy as np
import torch

from tests.training.conftest import tiny_world_model
from training.agent import sensor_batch
from training.logger import Logger, read_metrics, truncate_metrics
from training.video import VideoRecorder, compose, reconstruct_image


def test_logger_jsonl(tmp_path):
    logger = Logger(tmp_path, tensorboard=False)
    logger.write(10, {"eval/return": 1.5, "wm/a_mean": float("nan"), "train/episodes": 3})
    logger.close()
    (record,) = read_metrics(tmp_path)
    assert record["step"] == 10 and record["eval/return"] == 1.5
    assert record["wm/a_mean"] == "nan" and record["train/episodes"] == 3
    json.loads((tmp_path / "metrics.jsonl").read_text())  # strict JSON (no bare NaN)


def test_truncate_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3)) + '{"step": 4')
    truncate_metrics(path, 2)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]


def _obs(valid: bool):
    return {"image": np.full((1, 64, 64, 3), 200, np.uint8), "valid/image": np.array([valid]),
            "proprio": np.zeros((1, 1), np.float32), "valid/proprio": np.array([True]),
            "reward": np.array([0.5], np.float32), "is_first": np.array([True])}


def test_video_frames_show_input_and_reconstruction(tmp_path):
    model = tiny_world_model("vrkn")
    recorder = VideoRecorder(model, max_steps=2)
    for valid in (True, False, True):
        obs = _obs(valid)
        with torch.no_grad():
            state = model.filter_step(None, None, sensor_batch(model, obs, torch.device("cpu")))
        recorder(obs, state)
    assert len(recorder.frames) == 2  # max_steps
    recon = reconstruct_image(model, state)
    assert recon.shape == (1, 64, 64, 3) and recon.dtype == np.uint8
    shown = compose({k: v[0] for k, v in _obs(True).items()}, recon[0], 0)
    missing = compose({k: v[0] for k, v in _obs(False).items()}, recon[0], 0)
    assert shown.shape == missing.shape
    left = slice(None), slice(0, 128)
    assert not np.array_equal(shown[left], missing[left])  # the missing frame is drawn
    path = recorder.save(tmp_path / "v.gif")
    assert path is not None and path.stat().st_size > 0


def test_rssm_reconstruction():
    model = tiny_world_model("rssm")
    obs = _obs(True)
    with torch.no_grad():
        state = model.filter_step(None, None, sensor_batch(model, obs, torch.device("cpu")))
    assert reconstruct_image(model, state).shape == (1, 64, 64, 3)


def test_gif_frames_last_a_tenth_of_a_second(tmp_path):
    from PIL import Image

    recorder = VideoRecorder(tiny_world_model("vrkn"), max_steps=3)
    recorder.frames = [np.full((8, 8, 3), v, np.uint8) for v in (0, 120, 240)]
    path = recorder.save(tmp_path / "v.gif", fps=10)
    with Image.open(path) as gif:
        durations = []
        for index in range(gif.n_frames):
            gif.seek(index)
            durations.append(gif.info["duration"])
    assert durations == [100, 100, 100]  # milliseconds


def test_logger_keeps_the_checkpointed_rows_by_count(tmp_path):
    logger = Logger(tmp_path, tensorboard=False)
    for step in (10, 20, 20, 30):
        logger.write(step, {"x": step})
    assert logger.rows == 4
    logger.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4')  # cut by a kill
    again = Logger(tmp_path, tensorboard=False, purge_step=20, keep_rows=2)
    assert again.rows == 2  # the second row at step 20 came after the checkpoint
    again.write(30, {"x": 1})
    again.close()
    assert [(r["step"], r["x"]) for r in read_metrics(tmp_path)] == [(10, 10), (20, 20),
                                                                       (30, 1)]
    fresh = Logger(tmp_path, tensorboard=False, keep_rows=0)  # no checkpoint yet: start over
    fresh.close()
    assert fresh.rows == 0 and read_metrics(tmp_path) == []
