"""First-person renderer: one voxel DDA ray per pixel, compiled with numba (single core).

Each ray walks the block grid cell by cell (Amanatides & Woo) until it meets a solid block,
then takes the colour from an 8x8 pixel texture of that block's face, scales it by a fixed
per-face light (top bright, bottom dark, sides in between, as Minecraft does), and fades it
into the sky colour with distance (fog). Water is see-through: the ray records where it
entered water and keeps going, and the floor is tinted by the water depth. The sky is a
gradient with a square sun and a layer of blocky clouds. Everything is plain float64 math
without fastmath, so a frame is bit-identical for the same world and camera.
"""
import math

import numpy as np
from numba import njit

from . import world as W

EYE_HEIGHT = 1.62
FOV_Y_DEG = 70.0     # Minecraft's default vertical field of view
VIEW_DISTANCE = 72.0  # blocks; fog reaches the sky colour here
TEX = 8               # texture pixels per block face edge


# ----------------------------------------------------------------------------- textures

def _make_textures():
    """uint8 [NUM_BLOCKS, 3 faces (top, side, bottom), 8, 8, 3]: small pixel-art patterns.

    Fixed seed: the textures are part of the look, not of the world seed."""
    rng = np.random.default_rng(2003)
    tex = np.zeros((W.NUM_BLOCKS, 3, TEX, TEX, 3), dtype=np.float64)

    def speckle(base, amount, size=(TEX, TEX)):
        noise = 1.0 + amount * (rng.random(size) * 2 - 1)
        return np.clip(np.asarray(base, dtype=np.float64)[None, None, :] * noise[..., None], 0, 255)

    def all_faces(block, img):
        tex[block, :] = img

    grass_top = speckle((95, 159, 53), 0.18)
    dirt = speckle((134, 96, 67), 0.2)
    stone = speckle((125, 125, 125), 0.15)
    stone[rng.random((TEX, TEX)) < 0.15] *= 0.75
    sand = speckle((219, 207, 160), 0.08)
    snow = speckle((240, 245, 250), 0.04)
    all_faces(W.DIRT, dirt)
    all_faces(W.STONE, stone)
    all_faces(W.SAND, sand)
    all_faces(W.GRAVEL, speckle((136, 126, 124), 0.3))
    all_faces(W.BEDROCK, speckle((70, 70, 70), 0.5))
    # Grass and snowy dirt: the top colour creeps 2-3 pixels down the side.
    grass_side, snow_side = dirt.copy(), dirt.copy()
    edge = 2 + (rng.random(TEX) < 0.5)
    for c in range(TEX):
        grass_side[: edge[c], c] = grass_top[: edge[c], c]
        snow_side[: edge[c], c] = snow[: edge[c], c]
    tex[W.GRASS] = [grass_top, grass_side, dirt]
    tex[W.SNOW] = [snow, snow_side, dirt]
    # Sandstone: horizontal bands.
    sandstone = speckle((216, 201, 150), 0.06)
    sandstone[[0, 3, 7]] *= 0.88
    tex[W.SANDSTONE] = [sand, sandstone, sand]
    # Water and ice: flat with a few lighter ripples.
    water = speckle((48, 92, 200), 0.06)
    water[rng.random((TEX, TEX)) < 0.12] *= 1.25
    all_faces(W.WATER, np.clip(water, 0, 255))
    ice = speckle((160, 190, 245), 0.05)
    ice[rng.random((TEX, TEX)) < 0.1] = (220, 235, 255)
    all_faces(W.ICE, ice)
    # Logs: vertical bark stripes on the sides, rings on top.
    for log, bark, inner in ((W.LOG, (104, 82, 50), (170, 135, 85)), (W.SPRUCE_LOG, (60, 44, 28), (120, 90, 55))):
        side = speckle(bark, 0.12)
        side[:, ::3] *= 0.75
        ring = speckle(inner, 0.08)
        yy, xx = np.mgrid[:TEX, :TEX]
        r = np.maximum(abs(yy - 3.5), abs(xx - 3.5))
        ring[(r > 2.5) | (r == 1.5)] *= 0.7
        tex[log] = [ring, side, ring]
    # Leaves: mottled green with dark holes.
    for leaf, base in ((W.LEAVES, (58, 124, 38)), (W.SPRUCE_LEAVES, (46, 84, 52))):
        img = speckle(base, 0.25)
        img[rng.random((TEX, TEX)) < 0.2] *= 0.45
        all_faces(leaf, img)
    # Cactus: green with vertical ridges and pale spines.
    cactus = speckle((82, 140, 48), 0.1)
    cactus[:, [1, 4, 6]] *= 0.7
    cactus[rng.random((TEX, TEX)) < 0.08] = (210, 220, 170)
    cactus_top = speckle((110, 160, 70), 0.1)
    tex[W.CACTUS] = [cactus_top, cactus, cactus_top]
    return np.clip(np.round(tex), 0, 255).astype(np.uint8)


TEXTURES = _make_textures()


# ----------------------------------------------------------------------------- kernel

@njit(cache=True)
def _sky(dx, dy, dz, ox, oy, oz, clouds, cloud_y):
    """Sky colour along a unit direction: horizon-to-zenith gradient, square sun, flat clouds."""
    up = max(dy, 0.0)
    k = math.sqrt(up)
    r = 192.0 * (1 - k) + 120.0 * k
    g = 216.0 * (1 - k) + 165.0 * k
    b = 255.0 * (1 - k) + 250.0 * k
    # Sun direction (normalised (0.35, 0.75, 0.56)); a square in its own tangent frame.
    sx, sy, sz = 0.3536, 0.7576, 0.5487
    cosang = dx * sx + dy * sy + dz * sz
    if cosang > 0.95:
        # tangent frame: u = normalise(sun x up), v = u x sun
        ux, uz = -sz, sx
        nu = math.sqrt(ux * ux + uz * uz)
        ux, uz = ux / nu, uz / nu
        vx, vy, vz = -uz * sy, uz * sx - ux * sz, ux * sy
        pu = (dx * ux + dz * uz) / cosang
        pv = (dx * vx + dy * vy + dz * vz) / cosang
        m = max(abs(pu), abs(pv))
        if m < 0.075:
            return 255.0, 253.0, 215.0
        if m < 0.13:
            glow = (0.13 - m) / 0.055 * 0.6
            r, g, b = r + (255 - r) * glow, g + (250 - g) * glow, b + (215 - b) * glow
    if dy > 0.02:
        t = (cloud_y - oy) / dy
        if t > 0:
            cx = int(math.floor((ox + dx * t) / 12.0)) & 63
            cz = int(math.floor((oz + dz * t) / 12.0)) & 63
            if clouds[cx, cz]:
                a = 0.85 * max(0.0, 1.0 - t / 400.0)
                r, g, b = r + (250 - r) * a, g + (250 - g) * a, b + (252 - b) * a
    return r, g, b


@njit(cache=True)
def _render_kernel(blocks, tex, clouds, ex, ey, ez, yaw_deg, pitch_deg, fov_deg, view_dist, out):
    """Fill out [H, W, 3] uint8 with the view from eye (ex, ey, ez)."""
    H, Wd = out.shape[0], out.shape[1]
    nx, ny, nz = blocks.shape[0], blocks.shape[1], blocks.shape[2]
    mx, mz = nx - 1, nz - 1
    yaw, pitch = math.radians(yaw_deg), math.radians(pitch_deg)
    # Camera frame. yaw 0 looks along +z, yaw increases to the right; pitch > 0 looks down.
    fx, fy, fz = -math.sin(yaw) * math.cos(pitch), -math.sin(pitch), math.cos(yaw) * math.cos(pitch)
    rx, ry, rz = -math.cos(yaw), 0.0, -math.sin(yaw)
    ux, uy, uz = ry * fz - rz * fy, rz * fx - rx * fz, rx * fy - ry * fx  # up = right x forward
    th = math.tan(math.radians(fov_deg) * 0.5)
    tw = th * Wd / H
    cloud_y = ny + 40.0
    fog_start = view_dist * 0.45
    # Is the eye under water? Then everything is tinted and fog is short.
    eye_block = 0
    iey = int(math.floor(ey))
    if 0 <= iey < ny:
        eye_block = blocks[int(math.floor(ex)) & mx, iey, int(math.floor(ez)) & mz]
    submerged = eye_block == 5
    max_t = 16.0 if submerged else view_dist

    for py in range(H):
        sy = (1.0 - (py + 0.5) * 2.0 / H) * th
        for px in range(Wd):
            sx = ((px + 0.5) * 2.0 / Wd - 1.0) * tw
            dx = fx + rx * sx + ux * sy
            dy = fy + ry * sx + uy * sy
            dz = fz + rz * sx + uz * sy
            n = math.sqrt(dx * dx + dy * dy + dz * dz)
            dx, dy, dz = dx / n, dy / n, dz / n

            ix, iy, iz = int(math.floor(ex)), int(math.floor(ey)), int(math.floor(ez))
            stx = 1 if dx > 0 else -1
            sty = 1 if dy > 0 else -1
            stz = 1 if dz > 0 else -1
            tdx = abs(1.0 / dx) if dx != 0 else 1e30
            tdy = abs(1.0 / dy) if dy != 0 else 1e30
            tdz = abs(1.0 / dz) if dz != 0 else 1e30
            tmx = ((ix + 1 - ex) if dx > 0 else (ex - ix)) * tdx
            tmy = ((iy + 1 - ey) if dy > 0 else (ey - iy)) * tdy
            tmz = ((iz + 1 - ez) if dz > 0 else (ez - iz)) * tdz

            hit = 0
            axis = 0
            t = 0.0
            t_water = -1.0
            while True:
                if tmx < tmy and tmx < tmz:
                    t = tmx
                    tmx += tdx
                    ix += stx
                    axis = 0
                elif tmy < tmz:
                    t = tmy
                    tmy += tdy
                    iy += sty
                    axis = 1
                else:
                    t = tmz
                    tmz += tdz
                    iz += stz
                    axis = 2
                if t > max_t:
                    break
                if iy >= ny:
                    if dy > 0:
                        break
                    continue
                if iy < 0:
                    hit = 10
                    break
                b = blocks[ix & mx, iy, iz & mz]
                if b == 0:
                    continue
                if b == 5:
                    if t_water < 0.0 and not submerged:
                        t_water = t
                    continue
                hit = b
                break

            if hit == 0:
                r, g, bl = _sky(dx, dy, dz, ex, ey, ez, clouds, cloud_y)
                if t_water >= 0.0:
                    # Looked through water into the distance: the water surface, fogged.
                    hx, hz = ex + dx * t_water, ez + dz * t_water
                    tu = int((hx - math.floor(hx)) * 8.0)
                    tv = int((hz - math.floor(hz)) * 8.0)
                    wr, wg, wb = tex[5, 0, tv, tu, 0] * 0.95, tex[5, 0, tv, tu, 1] * 0.95, tex[5, 0, tv, tu, 2] * 0.95
                    f = min(max((t_water - fog_start) / (max_t - fog_start), 0.0), 1.0)
                    r, g, bl = wr + (r - wr) * f, wg + (g - wg) * f, wb + (bl - wb) * f
                elif submerged:
                    r, g, bl = 30.0, 60.0, 150.0
            else:
                hx, hy, hz = ex + dx * t, ey + dy * t, ez + dz * t
                if axis == 0:
                    u, v = hz - math.floor(hz), 1.0 - (hy - math.floor(hy))
                    face = 1
                    shade = 0.62 if stx > 0 else 0.78
                elif axis == 1:
                    u, v = hx - math.floor(hx), hz - math.floor(hz)
                    face = 2 if sty > 0 else 0
                    shade = 0.5 if sty > 0 else 1.0
                else:
                    u, v = hx - math.floor(hx), 1.0 - (hy - math.floor(hy))
                    face = 1
                    shade = 0.86 if stz < 0 else 0.7
                tu = min(int(u * 8.0), 7)
                tv = min(int(v * 8.0), 7)
                r = tex[hit, face, tv, tu, 0] * shade
                g = tex[hit, face, tv, tu, 1] * shade
                bl = tex[hit, face, tv, tu, 2] * shade
                if t_water >= 0.0:
                    # Seen through water: blend with the surface colour, more the deeper it is.
                    a = min(0.55 + 0.09 * (t - t_water), 0.92)
                    wx, wz = ex + dx * t_water, ez + dz * t_water
                    su = int((wx - math.floor(wx)) * 8.0)
                    sv = int((wz - math.floor(wz)) * 8.0)
                    r = r + (tex[5, 0, sv, su, 0] - r) * a
                    g = g + (tex[5, 0, sv, su, 1] - g) * a
                    bl = bl + (tex[5, 0, sv, su, 2] - bl) * a
                if submerged:
                    a = min(0.35 + t / 16.0, 1.0)
                    r, g, bl = r + (30.0 - r) * a, g + (60.0 - g) * a, bl + (150.0 - bl) * a
                else:
                    f = min(max((t - fog_start) / (max_t - fog_start), 0.0), 1.0)
                    f = f * f * (3.0 - 2.0 * f)
                    r, g, bl = r + (192.0 - r) * f, g + (216.0 - g) * f, bl + (255.0 - bl) * f  # horizon colour
            out[py, px, 0] = min(max(int(r + 0.5), 0), 255)
            out[py, px, 1] = min(max(int(g + 0.5), 0), 255)
            out[py, px, 2] = min(max(int(bl + 0.5), 0), 255)
    return out


def render(world, state, width: int = 128, height: int = 72, fov: float = FOV_Y_DEG,
           view_distance: float = VIEW_DISTANCE) -> np.ndarray:
    """The player's first-person view: uint8 [height, width, 3] RGB."""
    out = np.empty((height, width, 3), dtype=np.uint8)
    x, y, z = state.pos
    _render_kernel(world.blocks, TEXTURES, world.clouds, float(x), float(y) + EYE_HEIGHT, float(z),
                   float(state.yaw), float(state.pitch), float(fov), float(view_distance), out)
    return out
