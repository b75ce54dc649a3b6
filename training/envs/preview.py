"""Preview a task as an animated GIF: what the agent sees next to the true frame.

    python -m training.envs.preview cheetah_run-missing --out docs/img/cheetah_run-missing.gif

Left: the agent's image (occluders drawn in; a missing frame is dark grey with a
red cross). Right: the camera's true, unoccluded frame. Fusion tasks get a strip
of bars for the proprioceptive values (tanh-squashed). Actions are seeded uniform
random. Only ``.gif`` output is supported.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from training.envs.base import Obs, Task
from training.envs.dmc import DMCTask
from training.envs.registry import make_task

MISSING_GREY = (48, 48, 48)
MARKER_RED = (230, 40, 40)
CAPTION_HEIGHT = 26
BAR_HEIGHT = 24


def _panel(image: np.ndarray, scale: int) -> Image.Image:
    return Image.fromarray(image).resize((image.shape[1] * scale,) * 2, Image.NEAREST)


def _missing_panel(size: int) -> Image.Image:
    panel = Image.new("RGB", (size, size), MISSING_GREY)
    draw = ImageDraw.Draw(panel)
    draw.line((0, 0, size - 1, size - 1), fill=MARKER_RED, width=3)
    draw.line((0, size - 1, size - 1, 0), fill=MARKER_RED, width=3)
    draw.text((4, size - 14), "missing", fill=MARKER_RED, font=ImageFont.load_default())
    return panel


def _proprio_strip(values: np.ndarray, width: int) -> Image.Image:
    strip = Image.new("RGB", (width, BAR_HEIGHT), (16, 16, 16))
    draw = ImageDraw.Draw(strip)
    middle = BAR_HEIGHT // 2
    bar = max(1, width // max(1, len(values)))
    for index, value in enumerate(np.tanh(values)):
        x0 = index * bar
        y = middle - int(value * (middle - 1))
        draw.rectangle((x0 + 1, min(y, middle), x0 + bar - 2, max(y, middle)), fill=(80, 200, 90))
    draw.line((0, middle, width, middle), fill=(90, 90, 90))
    return strip


def compose_frame(obs: Obs, true_frame: np.ndarray, step: int, name: str, scale: int) -> np.ndarray:
    """One preview frame: caption, agent view | true frame, proprio bars if present."""
    size = true_frame.shape[0] * scale
    agent = _panel(obs["image"], scale) if obs["valid/image"] else _missing_panel(size)
    height = CAPTION_HEIGHT + size + (BAR_HEIGHT if "proprio" in obs else 0)
    canvas = Image.new("RGB", (2 * size + 4, height), (255, 255, 255))
    canvas.paste(agent, (0, CAPTION_HEIGHT))
    canvas.paste(_panel(true_frame, scale), (size + 4, CAPTION_HEIGHT))
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    draw.text((2, 1), f"{name}  t={step}  r={float(obs['reward']):.2f}", fill=(0, 0, 0), font=font)
    draw.text((2, 13), "agent sees", fill=(0, 0, 0), font=font)
    draw.text((size + 6, 13), "true frame", fill=(0, 0, 0), font=font)
    if "proprio" in obs:
        canvas.paste(_proprio_strip(obs["proprio"], 2 * size + 4), (0, CAPTION_HEIGHT + size))
    return np.asarray(canvas)


def record(task: Task, name: str, steps: int, seed: int, scale: int) -> list[np.ndarray]:
    """Frames of one episode prefix under seeded uniform random actions."""
    base = task.unwrapped
    if not isinstance(base, DMCTask):
        raise TypeError("preview needs a DMC task underneath")
    rng = np.random.default_rng(seed)
    space = task.act_space
    obs = task.reset()
    frames = [compose_frame(obs, base.render_frame(), 0, name, scale)]
    for step in tqdm(range(1, steps), desc=f"preview {name}", unit="step"):
        if obs["is_last"]:
            obs = task.reset()
        else:
            obs = task.step(rng.uniform(space.low, space.high, size=space.shape))
        frames.append(compose_frame(obs, base.render_frame(), step, name, scale))
    return frames


def save_gif(frames: Sequence[np.ndarray], path: Path, fps: float) -> None:
    if path.suffix.lower() != ".gif":
        raise ValueError(f"only .gif output is supported, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    # One palette for the whole animation (from a sample of frames) lets the GIF
    # encoder store only the changed region of each frame: far smaller files.
    sample = np.concatenate(list(frames[:: max(1, len(frames) // 8)]), axis=0)
    palette = Image.fromarray(sample).quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    images = [
        Image.fromarray(frame).quantize(palette=palette, dither=Image.Dither.NONE)
        for frame in frames
    ]
    images[0].save(
        path,
        save_all=True,
        append_images=images[1:],
        duration=round(1000 / fps),
        loop=0,
        optimize=True,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task", help="task name, e.g. cheetah_run-missing")
    parser.add_argument("--out", type=Path, required=True, help="output .gif")
    parser.add_argument("--steps", type=int, default=100, help="agent steps (frames)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=int, default=2, help="pixel upscaling")
    parser.add_argument("--fps", type=float, default=15.0)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.scale < 1 or args.fps <= 0:
        parser.error("--steps and --scale must be >= 1 and --fps > 0")
    with make_task(args.task, args.seed) as task:
        frames = record(task, args.task, args.steps, args.seed, args.scale)
    save_gif(frames, args.out, args.fps)
    print(f"wrote {args.out} ({len(frames)} frames, {args.out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
