"""Play the true sandbox in a pygame window, with the same controls as the learned world.

    python -m sandbox.play [--seed S --width 128 --height 72 --fps 16 --scale 6]

Each frame is one physics tick of 1/fps seconds: the keys held and the mouse motion since the
previous frame make one raw tick (actions.RAW_NAMES), exactly what the dataset generator records.
Controls: see keymap.py (printed at start; H shows them in the window).
"""
import sys
import time
from dataclasses import dataclass

import numpy as np

from actions import describe
from config import format_config, opt, parse_config
from keymap import KeyMap, RateMeter, Window, controls_lines, print_controls, step_from_raw
from sandbox import World, render, spawn_state, step_physics


@dataclass
class Config:
    seed: int = opt(0, "world seed (the world and the spawn point are deterministic in it)")
    width: int = opt(128, "frame width in pixels (the datasets use 128)")
    height: int = opt(72, "frame height in pixels (the datasets use 72)")
    fps: float = opt(16.0, "frames (physics ticks) per second; GF-format data is 16, MineRL 20")
    scale: int = opt(6, "initial window size as a multiple of the frame size (the window is resizable)")
    sensitivity: float = opt(0.15, "mouse look, camera degrees per pixel")
    arrow_speed: float = opt(5.0, "arrow-key look, camera degrees per tick")
    frames: int = opt(0, "stop after this many frames; 0 = until quit")
    screenshot: str | None = opt(None, "save a PNG of the window when the session ends")


def main(argv=None):
    cfg = parse_config(Config, sys.argv[1:] if argv is None else argv, description=__doc__)
    print(format_config(cfg))
    import pygame

    world = World(cfg.seed)
    start = spawn_state(world, cfg.seed)
    state = start
    dt = 1.0 / cfg.fps
    keymap = KeyMap(cfg.sensitivity, cfg.arrow_speed)
    print_controls(model=False)
    win = Window((cfg.height, cfg.width), scale=cfg.scale, title=f"Ochre sandbox (seed {cfg.seed})")
    help_lines = ["Controls (H hides)"] + controls_lines(model=False, sep="\t")
    clock, meter = pygame.time.Clock(), RateMeter()
    frame = render(world, state, cfg.width, cfg.height)
    shown, render_ms, fps_text, last = 1, 0.0, "", 0.0
    running = True
    while running and not (cfg.frames and shown >= cfg.frames):
        for event in pygame.event.get():
            cmd = keymap.handle(event)
            if cmd == "quit":
                running = False
            elif cmd == "reset":
                state = start
        raw = keymap.raw_tick()
        if not keymap.paused:
            t0 = time.perf_counter()
            state = step_physics(world, state, raw, dt)
            frame = render(world, state, cfg.width, cfg.height)
            render_ms = (time.perf_counter() - t0) * 1e3
            shown += 1
        now = time.perf_counter()
        if now - last > 0.25:  # refresh the numbers 4x a second so they stay readable
            fps_text = f"{meter.fps:5.1f} fps (target {cfg.fps:g}) | physics + render {render_ms:5.1f} ms"
            last = now
        x, y, z = state.pos
        hud = [fps_text + f" | pos {x:.1f} {y:.1f} {z:.1f} yaw {state.yaw % 360:.0f} pitch {state.pitch:+.0f}",
               f"action: {describe(step_from_raw(raw, 1))}" + (" | PAUSED" if keymap.paused else "")
               + ("" if keymap.grabbed else " | click to grab the mouse")]
        overlay = help_lines if keymap.show_help else (["paused (P)"] if keymap.paused else None)
        win.draw([np.ascontiguousarray(frame)], hud, overlay)
        meter.tick()
        clock.tick(cfg.fps)
    if cfg.screenshot:
        win.save(cfg.screenshot)
        print(f"screenshot: {cfg.screenshot}")
    win.close()


if __name__ == "__main__":
    main()
