"""Sandbox speed: world generation, render frames/s at two sizes, physics ticks/s, and
end-to-end dataset generation frames/s (scripted player + render + H.264 encoding + files).

    python -m bench.bench_sandbox [--quick]

Single process, single core. Timings on a shared machine are noisy; read them as rough figures.
"""
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from sandbox import ScriptedPlayer, World, render, spawn_state, step_physics  # noqa: E402
from sandbox import generate as gen  # noqa: E402


def _trajectory(world, n, seed=0):
    """n+1 states along a scripted walk, so renders see varied views, not one cached one."""
    s, player, states = spawn_state(world, seed), ScriptedPlayer(seed), []
    states.append(s)
    for _ in range(n):
        s = step_physics(world, s, player.next_tick(s), 1 / 16)
        states.append(s)
    return states


def _render_fps(world, states, width, height):
    render(world, states[0], width, height)  # compile / load the numba cache outside the timing
    t0 = time.perf_counter()
    for s in states:
        render(world, s, width, height)
    return len(states) / (time.perf_counter() - t0)


def run(quick: bool = False) -> dict:
    t0 = time.perf_counter()
    world = World(0)
    world_s = time.perf_counter() - t0

    n_small, n_big = (100, 8) if quick else (600, 40)
    states = _trajectory(world, n_small)
    t0 = time.perf_counter()
    for s in states[:-1]:
        step_physics(world, s, np.zeros(9, dtype=np.float32), 1 / 16)
    physics_tps = (len(states) - 1) / (time.perf_counter() - t0)

    fps_small = _render_fps(world, states, 128, 72)
    fps_big = _render_fps(world, states[:: max(1, len(states) // n_big)][:n_big], 640, 360)

    clips, frames = (1, 64) if quick else (4, 256)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = gen.Config(format="gamefactory", out=tmp, clips=clips, frames=frames, seed=0)
        gen.generate(cfg)  # warm-up run not needed: numba is already compiled above
        t0 = time.perf_counter()
        gen.generate(gen.Config(format="gamefactory", out=os.path.join(tmp, "b"), clips=clips, frames=frames, seed=1))
        gen_fps = clips * frames / (time.perf_counter() - t0)

    return {
        "world_generation_s": round(world_s, 3),
        "render_fps_128x72": round(fps_small, 1),
        "render_fps_640x360": round(fps_big, 1),
        "physics_ticks_per_s": round(physics_tps, 1),
        "generate_fps_128x72_gamefactory": round(gen_fps, 1),
        "config": {"world": f"{world.size}x{world.size_y}x{world.size}", "render_frames_128x72": len(states),
                   "render_frames_640x360": n_big, "generate_clips": clips, "generate_frames_per_clip": frames,
                   "threads": 1, "quick": quick},
    }


def main():
    res = run(quick="--quick" in sys.argv)
    print(f"{'metric':<36} value")
    for k, v in res.items():
        if k != "config":
            print(f"{k:<36} {v}")
    print("config:", res["config"])


if __name__ == "__main__":
    main()
