"""Player state and movement: Minecraft-like speeds, gravity, jumping, swimming, AABB collision.

One tick: turn the camera, steer the horizontal velocity towards the wished velocity, apply
gravity (or buoyancy in water), then move along y, x and z in turn, stopping at the first
solid block on each axis (axis-separated collision, as Minecraft does). Sneaking on the
ground never walks off an edge higher than 0.6 blocks. Plain Python floats
throughout so a recorded state replays bit-exactly.
"""
import dataclasses
import math

import numpy as np

from . import world as W

PLAYER_WIDTH = 0.6
PLAYER_HEIGHT = 1.8
HALF = PLAYER_WIDTH / 2
WALK_SPEED, SPRINT_SPEED, SNEAK_SPEED = 4.317, 5.612, 1.295  # blocks per second
GRAVITY = 32.0                                   # blocks / s^2
JUMP_SPEED = math.sqrt(2 * GRAVITY * 1.25)       # apex 1.25 blocks above the take-off
MAX_FALL = 60.0
GROUND_ACCEL, AIR_ACCEL = 20.0, 4.0              # how fast velocity follows the keys (1/s)
SWIM_FACTOR = 0.5
EPS = 1e-6

YAW, PITCH, FORWARD, BACK, LEFT, RIGHT, JUMP, SPRINT, SNEAK = range(9)  # actions.RAW_NAMES order


@dataclasses.dataclass
class PlayerState:
    pos: tuple = (0.0, 0.0, 0.0)   # feet position (x, y, z), y up
    yaw: float = 0.0               # degrees, 0 looks along +z, increasing turns right (not wrapped)
    pitch: float = 0.0             # degrees, positive looks down, in [-90, 90]
    vel: tuple = (0.0, 0.0, 0.0)   # blocks per second
    on_ground: bool = False

    def to_dict(self) -> dict:
        return {"pos": [float(v) for v in self.pos], "yaw": float(self.yaw), "pitch": float(self.pitch),
                "vel": [float(v) for v in self.vel], "on_ground": bool(self.on_ground)}

    @classmethod
    def from_dict(cls, d: dict) -> "PlayerState":
        return cls(pos=tuple(float(v) for v in d["pos"]), yaw=float(d["yaw"]), pitch=float(d["pitch"]),
                   vel=tuple(float(v) for v in d["vel"]), on_ground=bool(d["on_ground"]))


def forward_right(yaw_deg: float):
    """Horizontal unit vectors (x, z) for looking direction and the player's right."""
    a = math.radians(yaw_deg)
    return (-math.sin(a), math.cos(a)), (-math.cos(a), -math.sin(a))


def _solid(world, x: int, y: int, z: int) -> bool:
    if y < 0:
        return True
    if y >= world.size_y:
        return False
    return bool(W.SOLID[world.blocks[x % world.size, y, z % world.size]])


def _box_hits(world, lo, hi):
    """Any solid block overlapping the box [lo, hi] (touching faces do not count)?"""
    for x in range(math.floor(lo[0] + EPS), math.floor(hi[0] - EPS) + 1):
        for y in range(math.floor(lo[1] + EPS), math.floor(hi[1] - EPS) + 1):
            for z in range(math.floor(lo[2] + EPS), math.floor(hi[2] - EPS) + 1):
                if _solid(world, x, y, z):
                    return True
    return False


def _box(p):
    return (p[0] - HALF, p[1], p[2] - HALF), (p[0] + HALF, p[1] + PLAYER_HEIGHT, p[2] + HALF)


def _supported(world, p):
    """Is there a solid block within 0.6 below the feet (Minecraft's sneak edge test)?"""
    lo, hi = _box(p)
    return _box_hits(world, (lo[0], lo[1] - 0.6, lo[2]), (hi[0], lo[1], hi[2]))


def _move_axis(world, p, axis, d):
    """Move feet position p (list) by d along axis; on contact stop flush against the block.
    Returns True when blocked."""
    if d == 0.0:
        return False
    q = list(p)
    q[axis] += d
    if not _box_hits(world, *_box(q)):
        p[axis] = q[axis]
        return False
    # Blocked: put the box face exactly on the boundary of the cell it entered (sub-steps are
    # shorter than a block, so at most one new layer of cells is entered).
    orig = p[axis]
    extent_hi = PLAYER_HEIGHT if axis == 1 else HALF
    extent_lo = 0.0 if axis == 1 else HALF
    if d > 0:
        target = math.floor(orig + extent_hi + d - EPS) - extent_hi
        p[axis] = min(target, orig + d)  # target may sit up to EPS behind orig: snaps flush
    else:
        target = math.floor(orig - extent_lo + d + EPS) + 1 + extent_lo
        p[axis] = max(target, orig + d)
    if _box_hits(world, *_box(p)):  # never end a move inside a block
        p[axis] = orig
    return True


def in_water(world, pos) -> bool:
    x, y, z = pos
    return world.block(math.floor(x), math.floor(y + 0.4), math.floor(z)) == W.WATER


def step_physics(world, state: PlayerState, raw, dt: float) -> PlayerState:
    """Apply one raw tick [9] (actions.RAW_NAMES order) for dt seconds; returns a new state."""
    a = [float(v) for v in raw]
    yaw = state.yaw + a[YAW]
    pitch = min(max(state.pitch + a[PITCH], -90.0), 90.0)

    wet = in_water(world, state.pos)
    fwd = a[FORWARD] - a[BACK]
    strafe = a[RIGHT] - a[LEFT]
    if a[SNEAK] > 0.5:
        speed = SNEAK_SPEED
    elif a[SPRINT] > 0.5 and fwd > 0:
        speed = SPRINT_SPEED
    else:
        speed = WALK_SPEED
    if wet:
        speed *= SWIM_FACTOR
    (fx, fz), (rx, rz) = forward_right(yaw)
    wx, wz = fx * fwd + rx * strafe, fz * fwd + rz * strafe
    norm = math.hypot(wx, wz)
    if norm > 0:
        wx, wz = wx / norm * speed, wz / norm * speed
    k = min(1.0, (GROUND_ACCEL if state.on_ground or wet else AIR_ACCEL) * dt)
    vx, vy, vz = state.vel
    vx += (wx - vx) * k
    vz += (wz - vz) * k

    vy0 = vy
    if wet:
        # Buoyant: sink slowly, swim up while jump is held.
        vy = min(vy + 12.0 * dt, 2.5) if a[JUMP] > 0.5 else max(vy - 6.0 * dt, -2.0)
    else:
        if state.on_ground and a[JUMP] > 0.5:
            vy0 = JUMP_SPEED
        vy = max(vy0 - GRAVITY * dt, -MAX_FALL)

    edge_guard = a[SNEAK] > 0.5 and state.on_ground and not wet and vy0 <= 0.0
    # Move in sub-steps of at most 0.4 blocks so nothing tunnels through a block. Vertical
    # displacement uses the mean velocity over the tick: the exact parabola, so the jump
    # height does not depend on the frame rate.
    p = list(state.pos)
    dxyz = (vx * dt, 0.5 * (vy0 + vy) * dt, vz * dt)
    n = max(1, math.ceil(max(abs(v) for v in dxyz) / 0.4))
    on_ground, hit_x, hit_z = False, False, False
    for _ in range(n):
        if _move_axis(world, p, 1, dxyz[1] / n):
            if vy < 0:
                on_ground = True
            vy = 0.0
            dxyz = (dxyz[0], 0.0, dxyz[2])
        for axis in (0, 2):
            if (hit_x if axis == 0 else hit_z) or dxyz[axis] == 0.0:
                continue
            before = p[axis]
            blocked = _move_axis(world, p, axis, dxyz[axis] / n)
            if edge_guard and not _supported(world, p):
                p[axis], blocked = before, True  # sneaking: never walk off an edge
            if blocked and axis == 0:
                hit_x, vx = True, 0.0
            elif blocked:
                hit_z, vz = True, 0.0
        if hit_x:
            dxyz = (0.0, dxyz[1], dxyz[2])
        if hit_z:
            dxyz = (dxyz[0], dxyz[1], 0.0)
    if wet and a[JUMP] > 0.5 and (hit_x or hit_z):
        vy = 6.0  # climb out of the water onto the bank
    return PlayerState(pos=(p[0], p[1], p[2]), yaw=yaw, pitch=pitch, vel=(vx, vy, vz), on_ground=on_ground)


def spawn_state(world, rng_or_seed, biome=None) -> PlayerState:
    """A dry-land spawn with two free blocks above the ground (in the named biome if it has any)."""
    rng = rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else np.random.default_rng(rng_or_seed)
    h = world.height
    xs, zs = np.meshgrid(np.arange(world.size), np.arange(world.size), indexing="ij")
    free = (world.blocks[xs, h + 1, zs] == W.AIR) & (world.blocks[xs, h + 2, zs] == W.AIR)
    ok = (h > world.sea_level + 1) & free
    if biome is not None and (ok & (world.biome == W.BIOME_NAMES.index(biome))).any():
        ok &= world.biome == W.BIOME_NAMES.index(biome)
    xs, zs = np.nonzero(ok)
    i = int(rng.integers(len(xs)))
    x, z = int(xs[i]), int(zs[i])
    y = int(h[x, z]) + 1
    yaw = float(np.round(rng.uniform(-180.0, 180.0), 1))
    return PlayerState(pos=(x + 0.5, float(y), z + 0.5), yaw=yaw, pitch=0.0, vel=(0.0, 0.0, 0.0), on_ground=True)
