"""Evaluation videos: the image the agent saw beside the model's reconstruction of it from the
filtered posterior belief (its mean), one frame per agent step, as a GIF.

A missing frame is drawn dark grey with a red cross ("missing"): the reconstruction beside
it shows what the model believes while it sees nothing. Fusion tasks add a caption with the
proprio reading.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from estimator.world_model import State, WorldModel

SCALE = 2
CAPTION = 14
MISSING_GREY = (48, 48, 48)
MARKER_RED = (230, 40, 40)


def belief_features(model: WorldModel, state: State) -> torch.Tensor:
    """Features of the posterior mean (VRKN: the mean instead of a sample; RSSM: the
    stochastic mean with the deterministic state)."""
    fields = state._fields
    if "sample" in fields:
        state = state._replace(sample=state.mean)
    elif "stoch" in fields:
        state = state._replace(stoch=state.mean)
    return model.features(state)


@torch.no_grad()
def reconstruct_image(model: WorldModel, state: State) -> np.ndarray | None:
    """Decoded image ``[N, H, W, 3]`` uint8 of the belief mean, or None without a camera."""
    for k, spec in enumerate(model.specs):
        if spec.kind == "image":
            mean = model.sensors.decode_mean(k, belief_features(model, state))
            image = ((mean + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
            return image.movedim(-3, -1).cpu().numpy()
    return None


def _panel(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image).resize((image.shape[1] * SCALE, image.shape[0] * SCALE),
                                         Image.NEAREST)


def _missing(size: int) -> Image.Image:
    panel = Image.new("RGB", (size, size), MISSING_GREY)
    draw = ImageDraw.Draw(panel)
    draw.line((0, 0, size - 1, size - 1), fill=MARKER_RED, width=2)
    draw.line((0, size - 1, size - 1, 0), fill=MARKER_RED, width=2)
    draw.text((3, size - 13), "missing", fill=MARKER_RED, font=ImageFont.load_default())
    return panel


def compose(obs: Mapping[str, np.ndarray], recon: np.ndarray, step: int) -> np.ndarray:
    """One frame: caption, then input | reconstruction."""
    size = recon.shape[0] * SCALE
    valid = bool(obs.get("valid/image", True))
    canvas = Image.new("RGB", (2 * size + 4, size + 2 * CAPTION), (255, 255, 255))
    canvas.paste(_panel(obs["image"]) if valid else _missing(size), (0, 2 * CAPTION))
    canvas.paste(_panel(recon), (size + 4, 2 * CAPTION))
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    text = f"t={step} r={float(obs['reward']):.2f}"
    if "proprio" in obs:
        text += " p=" + ",".join(f"{v:.2f}" for v in np.asarray(obs["proprio"])[:3])
    draw.text((2, 0), text, fill=(0, 0, 0), font=font)
    draw.text((2, CAPTION), "input", fill=(0, 0, 0), font=font)
    draw.text((size + 6, CAPTION), "reconstruction", fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


class VideoRecorder:
    """Observer for ``AgentPolicy``: records environment 0 for up to ``max_steps`` steps."""

    def __init__(self, model: WorldModel, max_steps: int):
        self.model, self.max_steps = model, max_steps
        self.frames: list[np.ndarray] = []
        self.enabled = any(s.kind == "image" for s in model.specs)

    def __call__(self, obs: Mapping[str, np.ndarray], state: State) -> None:
        if not self.enabled or len(self.frames) >= self.max_steps:
            return
        first = type(state)(*(x[:1] for x in state))
        recon = reconstruct_image(self.model, first)
        row = {k: np.asarray(v)[0] for k, v in obs.items()}
        self.frames.append(compose(row, recon[0], len(self.frames)))

    def save(self, path: Path, fps: int = 10) -> Path | None:
        if not self.frames:
            return None
        import imageio.v2 as imageio

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp" + path.suffix)
        # imageio's GIF writer (pillow) takes the frame duration in milliseconds.
        imageio.mimsave(tmp, self.frames, duration=round(1000 / fps), loop=0)
        tmp.replace(path)
        return path
