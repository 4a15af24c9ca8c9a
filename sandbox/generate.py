"""Generate a synthetic dataset from the sandbox in the GF-Minecraft or MineRL v0.4 layout.

    python -m sandbox.generate --format gamefactory --out data/sandbox_gf --clips 48 --frames 256 --seed 0
    python -m sandbox.generate --format minerl --out data/sandbox_minerl --clips 4 --frames 200

Each clip: a world (shared by `clips_per_world` consecutive clips), a dry-land spawn (in each
biome in turn) and the ScriptedPlayer's "unbiased" actions; frames are rendered and streamed
into an H.264 mp4, and a ground-truth JSON (states + raw ticks) is written next to the
format's own files. The same seed gives the same frames, byte for byte.
"""
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root, for config.py
from config import format_config, opt, parse_config  # noqa: E402

from . import formats  # noqa: E402
from .physics import spawn_state, step_physics  # noqa: E402
from .player import ScriptedPlayer  # noqa: E402
from .render import render  # noqa: E402
from .world import BIOME_NAMES, World  # noqa: E402

DEFAULT_FPS = {"gamefactory": 16.0, "minerl": 20.0}


@dataclass
class Config:
    format: str = opt("gamefactory", "dataset layout to write: gamefactory (GF-Minecraft data_2003) or minerl (MineRL v0.4)")
    out: str = opt("data/sandbox_gf", "output root folder (data_2003/ or MineRLTreechop-v0/ is created inside)")
    clips: int = opt(4, "number of clips (trajectories) to write")
    frames: int = opt(256, "aligned frames per clip (frames - 1 actions); minerl videos get a few extra leading frames")
    seed: int = opt(0, "master seed: worlds, spawns and actions all derive from it")
    width: int = opt(128, "frame width in pixels (even, for yuv420p)")
    height: int = opt(72, "frame height in pixels (even, for yuv420p)")
    fps: float = opt(0.0, "frames (ticks) per second; 0 = the format's own rate (gamefactory 16, minerl 20)")
    clips_per_world: int = opt(4, "consecutive clips that share one generated world (world generation costs ~0.3 s)")
    crf: int = opt(14, "libx264 constant rate factor (lower = closer to the render, bigger files)")
    preset: str = opt("ultrafast", "libx264 preset (ultrafast: fastest, and closest to the render at a given crf)")
    max_extra_frames: int = opt(4, "minerl: the video starts with 1..this many extra frames before the aligned ones")
    workers: int = opt(1, "processes rendering clips in parallel (1 = in this process)")


def clip_name(cfg, i):
    return f"seed_{cfg.seed}_part_{i + 1}" if cfg.format == "gamefactory" else f"v4_sandbox_s{cfg.seed}_c{i:04d}"


def world_seed(cfg, i):
    return int(np.random.SeedSequence([cfg.seed, i // cfg.clips_per_world, 17]).generate_state(1)[0])


_WORLD_CACHE = {}


def get_world(seed):
    if seed not in _WORLD_CACHE:
        _WORLD_CACHE.clear()  # one world at a time: 1.6 MB each, but keep memory flat
        _WORLD_CACHE[seed] = World(seed)
    return _WORLD_CACHE[seed]


def make_clip(cfg, i):
    """Render and write clip i. Returns (name, biome, aligned frames) for the annotation file."""
    fps = cfg.fps or DEFAULT_FPS[cfg.format]
    dt = 1.0 / fps
    wseed = world_seed(cfg, i)
    world = get_world(wseed)
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, i, 29]))
    # Biomes in turn (clip i starts in biome i mod 4), so every biome gets the same share of clips.
    state = spawn_state(world, rng, biome=BIOME_NAMES[(i + cfg.seed) % len(BIOME_NAMES)])
    biome = world.biome_at(state.pos[0], state.pos[2])
    player = ScriptedPlayer(int(rng.integers(2**31)), dt=dt, exclusive_scs=cfg.format == "gamefactory")
    name = clip_name(cfg, i)
    n_ticks = cfg.frames - 1

    if cfg.format == "gamefactory":
        paths = formats.gf_paths(cfg.out, name)
        video_path, extra = paths["video"], 0
    else:
        folder = formats.minerl_dir(cfg.out, name)
        video_path = os.path.join(folder, "recording.mp4")
        extra = int(rng.integers(1, cfg.max_extra_frames + 1)) if cfg.max_extra_frames > 0 else 0

    writer = formats.VideoWriter(video_path, cfg.width, cfg.height, fps, crf=cfg.crf, preset=cfg.preset)
    # Extra leading frames (MineRL): the player already acting before the aligned start.
    for _ in range(extra):
        writer.write(render(world, state, cfg.width, cfg.height))
        state = step_physics(world, state, player.next_tick(state), dt)
    states, raws = [state], []
    writer.write(render(world, state, cfg.width, cfg.height))
    for _ in range(n_ticks):
        raw = player.next_tick(state)
        state = step_physics(world, state, raw, dt)
        states.append(state)
        raws.append(raw)
        writer.write(render(world, state, cfg.width, cfg.height))
    writer.close()
    raws = np.asarray(raws, dtype=np.float32).reshape(-1, 9)
    gt = formats.groundtruth_dict(wseed, dt, cfg.width, cfg.height, states, raws)

    if cfg.format == "gamefactory":
        formats.write_json(formats.gf_metadata(states, raws, biome), paths["metadata"])
        formats.write_json(gt, paths["groundtruth"])
    else:
        formats.write_npz(os.path.join(folder, "rendered.npz"), formats.minerl_arrays(raws))
        meta = formats.minerl_metadata(name, n_ticks, writer.count)
        meta["duration_ms"] = int(round(n_ticks * 1000.0 / fps))  # = ticks x 50 at the default 20 Hz
        formats.write_json(meta, os.path.join(folder, "metadata.json"))
        formats.write_json(gt, os.path.join(folder, "groundtruth.json"))
    return name, biome, cfg.frames


def _make_clip_star(args):
    return make_clip(*args)


def generate(cfg):
    if cfg.format not in DEFAULT_FPS:
        raise SystemExit(f"--format must be one of {sorted(DEFAULT_FPS)}, got {cfg.format!r}")
    if cfg.width % 2 or cfg.height % 2 or cfg.frames < 2 or cfg.clips < 1:
        raise SystemExit("width and height must be even, frames >= 2, clips >= 1")
    jobs = [(cfg, i) for i in range(cfg.clips)]
    results, t0 = [], time.time()
    bar = tqdm(total=cfg.clips, unit="clip", desc=f"sandbox {cfg.format}")
    if cfg.workers > 1:
        with mp.get_context("spawn").Pool(cfg.workers) as pool:
            for r in pool.imap(_make_clip_star, jobs, chunksize=max(1, cfg.clips_per_world)):
                results.append(r)
                bar.update(1)
                bar.set_postfix(fps=f"{len(results) * cfg.frames / (time.time() - t0):.0f}")
    else:
        for job in jobs:
            results.append(make_clip(*job))
            bar.update(1)
            bar.set_postfix(fps=f"{len(results) * cfg.frames / (time.time() - t0):.0f}")
    bar.close()
    if cfg.format == "gamefactory":
        rows = [(name, 0, frames - 1, f"First-person Minecraft view walking through a {biome} biome, clear weather, noon.")
                for name, biome, frames in results]
        formats.write_gf_annotation(cfg.out, rows)
    elapsed = time.time() - t0
    print(f"wrote {cfg.clips} clips x {cfg.frames} frames to {cfg.out} in {elapsed:.1f} s "
          f"({cfg.clips * cfg.frames / max(elapsed, 1e-9):.0f} frames/s)")
    return results


def main(argv=None):
    cfg = parse_config(Config, argv=argv, description=__doc__)
    print(format_config(cfg))
    generate(cfg)


if __name__ == "__main__":
    main()
