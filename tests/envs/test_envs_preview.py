"""The preview tool writes a GIF that shows missing frames."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from training.envs import preview

pytestmark = pytest.mark.render


def test_preview_gif_shows_agent_view_and_true_frame(tmp_path):
    out = tmp_path / "preview.gif"
    preview.main(["cheetah_run-missing", "--out", str(out), "--steps", "6", "--scale", "1"])
    gif = Image.open(out)
    assert gif.n_frames == 6
    width, height = gif.size
    assert width == 2 * 64 + 4 and height == preview.CAPTION_HEIGHT + 64
    gif.seek(2)  # frames 1..3 are always missing (gaps are >= 4)
    frame = np.asarray(gif.convert("RGB")).astype(int)
    agent = frame[preview.CAPTION_HEIGHT :, :64]
    true = frame[preview.CAPTION_HEIGHT :, 68:]
    off_diagonal = agent[10, 40]
    assert np.abs(off_diagonal - preview.MISSING_GREY).max() <= 8
    assert true.std() > 10, "the true frame is a real image"


def test_only_gif_output(tmp_path):
    with pytest.raises(ValueError, match=r"\.gif"):
        preview.save_gif([np.zeros((4, 4, 3), np.uint8)], tmp_path / "x.mp4", 10)
