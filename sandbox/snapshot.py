"""Save PNG views of every biome (and a lake shore) to eyeball the sandbox's look.

    python -m sandbox.snapshot --out reports/sandbox_snapshots --seed 0

For each biome: a dry-land spawn inside it, eight headings tried, the busiest view kept (most
pixel variance: not a wall, not all sky). Writes <biome>_<W>x<H>.png per size and one
contact sheet, sheet_<W>x<H>.png, per size.
"""
import os
import sys
from dataclasses import dataclass, replace

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root, for config.py
from config import format_config, opt, parse_config  # noqa: E402

from .physics import spawn_state  # noqa: E402
from .render import render  # noqa: E402
from .world import BIOME_NAMES, WATER, World  # noqa: E402


@dataclass
class Config:
    out: str = opt("reports/sandbox_snapshots", "folder for the PNGs")
    seed: int = opt(0, "world seed")
    sizes: list[str] = opt(["128x72", "640x360"], "frame sizes to render, WxH")
    pitch: float = opt(8.0, "camera pitch in degrees (positive looks down)")


def best_view(world, state, pitch):
    """The heading (of eight) whose small render has the most detail."""
    views = [replace(state, yaw=float(yaw), pitch=pitch) for yaw in range(0, 360, 45)]
    return max(views, key=lambda s: float(render(world, s, 64, 36).std()))


def shore_view(world, rng, pitch):
    """Stand on dry land next to water and look at it."""
    h, sea, n = world.height, world.sea_level, world.size
    water = world.blocks[:, sea, :] == WATER
    near = np.zeros_like(water)
    for dx, dz in ((3, 0), (-3, 0), (0, 3), (0, -3)):
        near |= np.roll(water, (dx, dz), axis=(0, 1))
    xs, zs = np.nonzero((h == sea + 2) & near)
    if len(xs) == 0:
        return None
    i = int(rng.integers(len(xs)))
    x, z = int(xs[i]), int(zs[i])
    state = spawn_state(world, rng)
    state = replace(state, pos=(x + 0.5, float(h[x, z] + 1), z + 0.5))
    for dx, dz, yaw in ((3, 0, -90.0), (-3, 0, 90.0), (0, 3, 0.0), (0, -3, 180.0)):
        if water[(x + dx) % n, (z + dz) % n]:
            return replace(state, yaw=yaw, pitch=pitch + 10)
    return best_view(world, state, pitch)


def main(argv=None):
    cfg = parse_config(Config, argv=argv, description=__doc__)
    print(format_config(cfg))
    os.makedirs(cfg.out, exist_ok=True)
    world = World(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    views = {name: best_view(world, spawn_state(world, rng, biome=name), cfg.pitch) for name in BIOME_NAMES}
    shore = shore_view(world, rng, cfg.pitch)
    if shore is not None:
        views["lake_shore"] = shore
    for size in cfg.sizes:
        w, h = (int(v) for v in size.lower().split("x"))
        images = []
        for name, state in views.items():
            img = render(world, state, w, h)
            images.append(img)
            path = os.path.join(cfg.out, f"{name}_{w}x{h}.png")
            cv2.imwrite(path, img[:, :, ::-1])
            print(f"{path}  pos={tuple(round(v, 1) for v in state.pos)} yaw={state.yaw:.0f}")
        while len(images) % 2:
            images.append(np.zeros_like(images[0]))
        sheet = np.concatenate([np.concatenate(images[i:i + 2], 1) for i in range(0, len(images), 2)], 0)
        cv2.imwrite(os.path.join(cfg.out, f"sheet_{w}x{h}.png"), sheet[:, :, ::-1])


if __name__ == "__main__":
    main()
