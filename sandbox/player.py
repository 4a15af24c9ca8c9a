"""Trajectories: the scripted "unbiased" player and the counterfactual rollout.

ScriptedPlayer imitates GF-Minecraft's scripted collection: the episode is a chain of
segments of random length; each segment holds either one isolated action (only yaw, only
pitch, only W, only jump, ...) or a random combination. Camera speeds are drawn log-uniformly
from a few to ~20 degrees per tick (at 16 fps; scaled by dt at other rates). Pitch moves
towards targets drawn near the horizon, so frames are rarely all sky or all ground. A player
that stops moving while walking jumps, then turns away, so it never stays stuck at a wall.
"""
import math

import numpy as np

from .physics import (BACK, FORWARD, JUMP, LEFT, PITCH, RIGHT, SNEAK, SPRINT, YAW, step_physics)
from .render import render

# Segment kinds and their probabilities: isolated actions first, then combinations.
KINDS = ("idle", "yaw", "pitch", "forward", "back", "left", "right", "jump", "sprint", "sneak", "combo")
KIND_P = np.array([0.04, 0.12, 0.08, 0.11, 0.04, 0.05, 0.05, 0.05, 0.05, 0.04, 0.37])


class ScriptedPlayer:
    """`next_tick(state) -> raw [9] float32` in actions.RAW_NAMES order.

    exclusive_scs: jump, sneak and sprint never co-occur (GF-Minecraft's `scs` is one
    categorical); forward/back and left/right are never pressed together in any case."""

    def __init__(self, seed, dt: float = 1 / 16, exclusive_scs: bool = True):
        self.rng = np.random.default_rng(seed)
        self.dt, self.exclusive = float(dt), bool(exclusive_scs)
        self.scale = self.dt * 16.0  # camera speeds are specified per tick at 16 fps
        self.segment, self.left = None, 0
        self.prev_pos, self.stuck = None, 0

    # -- segment sampling
    def _camera_speed(self, lo, hi):
        return float(np.exp(self.rng.uniform(math.log(lo), math.log(hi)))) * self.scale

    def _pitch_segment(self, seg, pitch):
        """Pitch moves towards a target drawn near the horizon, then stops: the view spends
        most of its time between looking slightly up and slightly down, rarely at the limits."""
        target = float(np.clip(self.rng.normal(5.0, 18.0), -40.0, 45.0))
        if abs(target - pitch) < 3.0:
            target = float(np.clip(pitch + (12.0 if pitch < 5.0 else -12.0), -40.0, 45.0))
        seg["pitch"] = self._camera_speed(1.0, 10.0) * (1 if target > pitch else -1)
        seg["pitch_target"] = target

    def _new_segment(self, state):
        rng = self.rng
        kind = KINDS[rng.choice(len(KINDS), p=KIND_P)]
        seg = {"kind": kind, "yaw": 0.0, "pitch": 0.0, "ws": 0, "ad": 0, "sprint": 0, "jump": 0, "sneak": 0}
        if kind == "yaw":
            seg["yaw"] = self._camera_speed(2.0, 20.0) * (1 if rng.random() < 0.5 else -1)
        elif kind == "pitch":
            self._pitch_segment(seg, state.pitch)
        elif kind in ("forward", "back"):
            seg["ws"] = 1 if kind == "forward" else 2
        elif kind in ("left", "right"):
            seg["ad"] = 1 if kind == "left" else 2
        elif kind == "jump":
            seg["jump"] = 1
        elif kind == "sprint":
            seg["ws"], seg["sprint"] = 1, 1
        elif kind == "sneak":
            seg["sneak"] = 1
            seg["ws"] = int(rng.choice(3, p=[0.3, 0.5, 0.2]))
        elif kind == "combo":
            seg["ws"] = int(rng.choice(3, p=[0.25, 0.55, 0.2]))
            seg["ad"] = int(rng.choice(3, p=[0.6, 0.2, 0.2]))
            if rng.random() < 0.6:
                seg["yaw"] = self._camera_speed(1.0, 20.0) * (1 if rng.random() < 0.5 else -1)
            if rng.random() < 0.35:
                self._pitch_segment(seg, state.pitch)
            extra = int(rng.choice(4, p=[0.5, 0.2, 0.15, 0.15]))  # none, jump, sprint, sneak
            seg["jump"], seg["sprint"], seg["sneak"] = extra == 1, extra == 2, extra == 3
            if not self.exclusive and extra == 2 and rng.random() < 0.4:
                seg["jump"] = 1  # sprint-jumping, only where the format can record it
        self.segment = seg
        self.left = int(rng.integers(max(2, round(0.25 / self.dt)), round(2.5 / self.dt) + 1))

    def _escape_segment(self):
        """Blocked for a while: turn 90-180 degrees over a few ticks while walking and jumping."""
        turn = self.rng.uniform(90.0, 180.0) * (1 if self.rng.random() < 0.5 else -1)
        ticks = 6
        self.segment = {"kind": "escape", "yaw": turn / ticks, "pitch": 0.0, "ws": 1, "ad": 0,
                        "sprint": 0, "jump": 1, "sneak": 0, "turn": ticks}
        self.left = ticks + int(self.rng.integers(4, 12))
        self.stuck = 0

    # -- one tick
    def next_tick(self, state) -> np.ndarray:
        moving_keys = self.segment is not None and (self.segment["ws"] or self.segment["ad"])
        if self.prev_pos is not None and moving_keys:
            moved = math.hypot(state.pos[0] - self.prev_pos[0], state.pos[2] - self.prev_pos[2])
            self.stuck = self.stuck + 1 if moved < 0.3 * self.dt else 0
        self.prev_pos = state.pos
        if self.stuck >= 12:
            self._escape_segment()
        elif self.segment is None or self.left <= 0:
            self._new_segment(state)
        seg = self.segment
        self.left -= 1

        raw = np.zeros(9, dtype=np.float32)
        raw[YAW] = seg["yaw"]
        pitch_speed = seg["pitch"]
        if seg["kind"] == "escape":  # turn during the first ticks, then just walk and jump
            seg["turn"] -= 1
            if seg["turn"] < 0:
                raw[YAW] = 0.0
        if pitch_speed:  # stop at the target (the last step lands on it exactly)
            remaining = seg["pitch_target"] - state.pitch
            if abs(remaining) <= abs(pitch_speed):
                pitch_speed = remaining if abs(remaining) > 0.05 else 0.0
                seg["pitch"] = 0.0
        raw[PITCH] = pitch_speed
        raw[FORWARD], raw[BACK] = seg["ws"] == 1, seg["ws"] == 2
        raw[LEFT], raw[RIGHT] = seg["ad"] == 1, seg["ad"] == 2
        raw[JUMP], raw[SPRINT], raw[SNEAK] = seg["jump"], seg["sprint"], seg["sneak"]
        if self.stuck >= 3 and not raw[SNEAK]:
            raw[JUMP] = 1.0  # blocked: try hopping onto the obstacle first
            if self.exclusive:
                raw[SPRINT] = 0.0
        if self.exclusive and raw[JUMP]:
            raw[SPRINT] = raw[SNEAK] = 0.0
        return raw


def rollout(world, start_state, raw_ticks, dt, width: int = 128, height: int = 72):
    """Replay raw ticks [N, 9] from a state: frames uint8 [N+1, H, W, 3] and N+1 states."""
    raw_ticks = np.asarray(raw_ticks, dtype=np.float32).reshape(-1, 9)
    frames = np.empty((len(raw_ticks) + 1, height, width, 3), dtype=np.uint8)
    states = [start_state]
    frames[0] = render(world, start_state, width, height)
    for i, raw in enumerate(raw_ticks):
        states.append(step_physics(world, states[-1], raw, dt))
        frames[i + 1] = render(world, states[-1], width, height)
    return frames, states
