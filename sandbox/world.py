"""Procedural voxel terrain: a fixed-size world that wraps around in x and z (a torus).

The world is one uint8 array `blocks[x, y, z]` (y up). Wrapping means there are no walls:
the player can walk forever, block lookups take x and z modulo the size, and the noise is
tileable so the seam is invisible. Everything comes from the seed, in numpy, in well
under 2 s for 256 x 80 x 256 blocks.

Biomes come from two low-frequency fields, temperature and moisture, rank-normalised over
the map so every world holds all four: snow (cold), desert (hot), forest (moist), plains.
"""
import numpy as np

# ----------------------------------------------------------------------------- blocks

AIR, GRASS, DIRT, STONE, SAND, WATER, LOG, LEAVES, SNOW, CACTUS, BEDROCK, SANDSTONE, ICE, \
    SPRUCE_LOG, SPRUCE_LEAVES, GRAVEL = range(16)
NUM_BLOCKS = 16
BLOCK_NAMES = ("air", "grass", "dirt", "stone", "sand", "water", "log", "leaves", "snow", "cactus",
               "bedrock", "sandstone", "ice", "spruce_log", "spruce_leaves", "gravel")
# Player collides with everything except air and water.
SOLID = np.ones(NUM_BLOCKS, dtype=np.bool_)
SOLID[[AIR, WATER]] = False

PLAINS, FOREST, DESERT, SNOWY = range(4)
BIOME_NAMES = ("plains", "forest", "desert", "snow")

SIZE_XZ = 256   # power of two: the renderer wraps indices with a bit mask
SIZE_Y = 80
SEA_LEVEL = 30  # water fills y <= SEA_LEVEL, so the water surface is at y = SEA_LEVEL + 1


# ----------------------------------------------------------------------------- noise

def _value_noise(rng, size, cells):
    """Tileable 2D value noise in [0, 1]: a random `cells` x `cells` lattice, smoothstep-interpolated."""
    lattice = rng.random((cells, cells))
    x = np.arange(size) * (cells / size)
    i0 = np.floor(x).astype(np.int64)
    f = x - i0
    f = f * f * (3.0 - 2.0 * f)
    i0 %= cells
    i1 = (i0 + 1) % cells
    a = lattice[i0[:, None], i0[None, :]]
    b = lattice[i1[:, None], i0[None, :]]
    c = lattice[i0[:, None], i1[None, :]]
    d = lattice[i1[:, None], i1[None, :]]
    fx, fz = f[:, None], f[None, :]
    return (a * (1 - fx) + b * fx) * (1 - fz) + (c * (1 - fx) + d * fx) * fz


def _fbm(rng, size, cells, octaves):
    """Fractal sum of octaves (cells doubling, amplitude halving), in roughly [-1, 1]."""
    total, norm, amp = np.zeros((size, size)), 0.0, 1.0
    for k in range(octaves):
        total += amp * (_value_noise(rng, size, min(cells << k, size)) * 2.0 - 1.0)
        norm += amp
        amp *= 0.5
    return total / norm


def _rank(field):
    """Map values to their rank in [0, 1): a uniform distribution whatever the seed."""
    order = np.argsort(field, axis=None, kind="stable")
    r = np.empty(field.size)
    r[order] = np.arange(field.size) / field.size
    return r.reshape(field.shape)


def _smoothstep(e0, e1, x):
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


# ----------------------------------------------------------------------------- world

class World:
    """blocks [SIZE_XZ, SIZE_Y, SIZE_XZ] uint8; height [x, z] = y of the terrain's top block;
    biome [x, z] uint8 in BIOME_NAMES order; clouds [64, 64] uint8 cloud mask for the sky."""

    def __init__(self, seed: int, size: int = SIZE_XZ, height: int = SIZE_Y):
        assert size & (size - 1) == 0, "world size must be a power of two"
        self.seed = int(seed)
        self.size, self.size_y, self.sea_level = size, height, SEA_LEVEL
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0x0C4E]))
        n = size
        temperature = _rank(_fbm(rng, n, 2, 3))
        moisture = _rank(_fbm(rng, n, 3, 3))
        continent = _rank(_fbm(rng, n, 4, 3))
        detail = _fbm(rng, n, 16, 3)
        hills = _fbm(rng, n, 8, 3)

        snow_w = _smoothstep(0.30, 0.16, temperature)
        desert_w = _smoothstep(0.70, 0.84, temperature)
        forest_w = _smoothstep(0.50, 0.62, moisture) * (1 - snow_w) * (1 - desert_w)
        # About 15% of the map lies below sea level (ocean and lakes); snow rises into hills.
        h = (SEA_LEVEL + 1 + (continent - 0.15) * 14.0 + detail * (2.5 + 2.5 * forest_w)
             + snow_w * np.maximum(hills + 0.2, 0.0) * 22.0 + desert_w * detail * 1.5)
        self.height = np.clip(np.round(h), 4, height - 16).astype(np.int64)

        biome = np.full((n, n), PLAINS, dtype=np.uint8)
        biome[moisture > 0.56] = FOREST
        biome[temperature > 0.77] = DESERT
        biome[temperature < 0.23] = SNOWY
        self.biome = biome

        self.blocks = self._fill_terrain(rng)
        self._plant(rng)
        self.clouds = (_value_noise(rng, 64, 16) + 0.35 * _value_noise(rng, 64, 32) > 0.86).astype(np.uint8)

    # -- terrain columns, vectorised over the whole map
    def _fill_terrain(self, rng):
        n, ny, sea = self.size, self.size_y, self.sea_level
        h, biome = self.height, self.biome
        y = np.arange(ny)[None, :, None]                       # (1, Y, 1)
        hh = h[:, None, :]                                     # (X, 1, Z)
        blocks = np.zeros((n, ny, n), dtype=np.uint8)
        top = np.full((n, n), GRASS, dtype=np.uint8)
        sub = np.full((n, n), DIRT, dtype=np.uint8)
        top[biome == DESERT] = SAND
        sub[biome == DESERT] = SANDSTONE
        top[biome == SNOWY] = SNOW
        beach = (h <= sea + 1) & (biome != SNOWY)
        top[beach], sub[beach] = SAND, SAND
        under = h <= sea
        floor = np.where(rng.random((n, n)) < 0.3, GRAVEL, SAND).astype(np.uint8)
        floor[under & (biome == FOREST)] = DIRT
        top[under] = floor[under]

        blocks[:] = STONE
        blocks[(y > hh) & (y <= sea)] = WATER
        blocks[y > np.maximum(hh, sea)] = AIR
        dirt_layer = (y < hh) & (y >= hh - 3)
        blocks[:] = np.where(dirt_layer, sub[:, None, :], blocks)
        blocks[:] = np.where(y == hh, top[:, None, :], blocks)
        # Frozen lakes in the snow biome.
        frozen = (biome == SNOWY) & under
        xs, zs = np.nonzero(frozen)
        blocks[xs, sea, zs] = ICE
        blocks[:, 0, :] = BEDROCK
        return blocks

    # -- trees and cacti on a jittered grid (one candidate per 4x4 cell keeps them apart)
    def _plant(self, rng):
        n, cell = self.size, 4
        cells = n // cell
        ox = rng.integers(0, cell, (cells, cells))
        oz = rng.integers(0, cell, (cells, cells))
        roll = rng.random((cells, cells))
        shape = rng.random((cells, cells, 4))
        chance = {PLAINS: 0.04, FOREST: 0.45, DESERT: 0.1, SNOWY: 0.2}
        for ci in range(cells):
            for cj in range(cells):
                x, z = ci * cell + ox[ci, cj], cj * cell + oz[ci, cj]
                b, hy = int(self.biome[x, z]), int(self.height[x, z])
                if hy <= self.sea_level + 1 or roll[ci, cj] > chance[b]:
                    continue
                s = shape[ci, cj]
                if b == DESERT:
                    self._cactus(x, hy + 1, z, 1 + int(s[0] * 3))
                elif b == SNOWY:
                    self._spruce(x, hy + 1, z, 5 + int(s[0] * 3), s)
                else:
                    self._oak(x, hy + 1, z, 5 + int(s[0] * 3), s)

    def _put(self, x, y, z, block, only_air=True):
        x, z = x % self.size, z % self.size
        if 0 <= y < self.size_y and (not only_air or self.blocks[x, y, z] == AIR):
            self.blocks[x, y, z] = block

    def _cactus(self, x, y, z, tall):
        for k in range(tall):
            self._put(x, y + k, z, CACTUS)

    def _oak(self, x, y, z, tall, s):
        top = y + tall
        for dy in range(-3, 1):  # canopy: two wide layers, then two narrow ones
            r = 2 if dy <= -2 else 1
            for dx in range(-r, r + 1):
                for dz in range(-r, r + 1):
                    corner = abs(dx) == r and abs(dz) == r
                    if corner and (dy == 0 or (r == 2 and s[(dx + dz + dy) % 3 + 1] < 0.5)):
                        continue
                    self._put(x + dx, top + dy, z + dz, LEAVES)
        for k in range(tall):
            self._put(x, y + k, z, LOG, only_air=False)

    def _spruce(self, x, y, z, tall, s):
        top = y + tall
        radius = [0, 1, 1, 2, 1, 2, 2]  # from the tip down: a ragged cone
        for i, r in enumerate(radius[: tall - 1]):
            for dx in range(-r, r + 1):
                for dz in range(-r, r + 1):
                    if r and abs(dx) == r and abs(dz) == r:
                        continue
                    self._put(x + dx, top - i, z + dz, SPRUCE_LEAVES)
        for k in range(tall):
            self._put(x, y + k, z, SPRUCE_LOG, only_air=False)

    # -- queries
    def block(self, x: int, y: int, z: int) -> int:
        if y < 0:
            return BEDROCK
        if y >= self.size_y:
            return AIR
        return int(self.blocks[x % self.size, y, z % self.size])

    def biome_at(self, x: float, z: float) -> str:
        return BIOME_NAMES[self.biome[int(np.floor(x)) % self.size, int(np.floor(z)) % self.size]]
