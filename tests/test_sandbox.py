"""Sandbox tests: determinism, physics, camera conventions, replay, and the two dataset layouts."""
import csv
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from sandbox import PlayerState, ScriptedPlayer, World, load_groundtruth, render, rollout, spawn_state, step_physics  # noqa: E402
from sandbox import generate as gen  # noqa: E402
from sandbox import world as W  # noqa: E402
from sandbox.formats import read_video  # noqa: E402

RAW = ("yaw_deg", "pitch_deg", "forward", "back", "left", "right", "jump", "sprint", "sneak")


def tick(**keys):
    raw = np.zeros(9, dtype=np.float32)
    for k, v in keys.items():
        raw[RAW.index(k)] = v
    return raw


@pytest.fixture(scope="module")
def world():
    return World(7)


@pytest.fixture(scope="module")
def flat_world():
    """Stone up to y = 40 (ground surface at y = 41) and air above, everywhere."""
    w = World(1)
    w.blocks[:] = W.AIR
    w.blocks[:, :41, :] = W.STONE
    return w


@pytest.fixture(scope="module")
def gf_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("gf"))
    cfg = gen.Config(format="gamefactory", out=out, clips=2, frames=40, seed=5, clips_per_world=2)
    gen.generate(cfg)
    return out, cfg


@pytest.fixture(scope="module")
def minerl_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("minerl"))
    cfg = gen.Config(format="minerl", out=out, clips=1, frames=30, seed=2, width=64, height=64)
    gen.generate(cfg)
    return out, cfg


# ----------------------------------------------------------------------------- world + render

def test_world_is_deterministic_and_has_all_biomes(world):
    again = World(7)
    assert np.array_equal(world.blocks, again.blocks)
    assert set(np.unique(world.biome)) == {0, 1, 2, 3}
    counts = np.bincount(world.blocks.ravel(), minlength=W.NUM_BLOCKS)
    for b in (W.GRASS, W.SAND, W.SNOW, W.WATER, W.LOG, W.LEAVES, W.CACTUS):
        assert counts[b] > 0, W.BLOCK_NAMES[b]
    assert not np.array_equal(World(8).blocks, world.blocks)


def test_render_shape_and_determinism(world):
    s = spawn_state(world, 3)
    player = ScriptedPlayer(3)
    ticks = []
    for _ in range(15):
        ticks.append(player.next_tick(s))
        s = step_physics(world, s, ticks[-1], 1 / 16)
    f1, s1 = rollout(world, spawn_state(world, 3), np.array(ticks), 1 / 16)
    f2, s2 = rollout(World(7), spawn_state(World(7), 3), np.array(ticks), 1 / 16)
    assert f1.shape == (16, 72, 128, 3) and f1.dtype == np.uint8
    assert f1.tobytes() == f2.tobytes()
    assert s1 == s2
    big = render(world, s1[-1], 96, 54)
    assert big.shape == (54, 96, 3)
    assert f1.std() > 10  # not a blank image


def best_shift(a, b, axis, max_shift=12):
    """Integer s minimising the mismatch of b[i] vs a[i + s] along axis (content moved by -s)."""
    a, b = a.astype(np.float64).mean(-1), b.astype(np.float64).mean(-1)
    n = a.shape[axis]
    errs = {}
    for s in range(-max_shift, max_shift + 1):
        lo, hi = max(0, -s), min(n, n - s)
        ta = np.take(a, range(lo + s, hi + s), axis=axis)
        tb = np.take(b, range(lo, hi), axis=axis)
        errs[s] = np.mean((ta - tb) ** 2)
    return min(errs, key=errs.get)


def test_yaw_right_moves_content_left_and_pitch_down_moves_it_up(world):
    s = dataclasses.replace(spawn_state(world, 11, biome="forest"), pitch=15.0)
    base = render(world, s, 160, 90)
    turned = render(world, step_physics(world, s, tick(yaw_deg=6.0), 1 / 16), 160, 90)
    assert best_shift(base, turned, axis=1) > 2       # turned[x] == base[x + s]: content moved left
    looked_down = render(world, dataclasses.replace(s, pitch=21.0), 160, 90)
    assert best_shift(base, looked_down, axis=0) > 2  # content moved up
    turned_left = render(world, dataclasses.replace(s, yaw=s.yaw - 6.0), 160, 90)
    assert best_shift(base, turned_left, axis=1) < -2


# ----------------------------------------------------------------------------- physics

def settle(w, s, n=30, dt=1 / 16):
    for _ in range(n):
        s = step_physics(w, s, tick(), dt)
    return s


def test_gravity_lands_on_ground_and_jump_returns(flat_world):
    s = settle(flat_world, PlayerState(pos=(10.5, 45.0, 10.5)))
    assert s.on_ground and s.pos[1] == 41.0
    s = step_physics(flat_world, s, tick(jump=1), 1 / 16)
    heights = [s.pos[1]]
    for _ in range(30):
        s = step_physics(flat_world, s, tick(), 1 / 16)
        heights.append(s.pos[1])
    assert 1.05 < max(heights) - 41.0 < 1.35  # Minecraft's jump is ~1.25 blocks
    assert s.on_ground and s.pos[1] == 41.0


def test_cannot_walk_through_a_wall(flat_world):
    w = World(1)
    w.blocks[:] = flat_world.blocks
    w.blocks[:, 41:44, 20] = W.STONE  # a 3-high wall across the map at z = 20
    s = settle(w, PlayerState(pos=(10.5, 41.0, 15.5), yaw=0.0))  # yaw 0 faces +z
    for i in range(80):
        s = step_physics(w, s, tick(forward=1, jump=float(i % 10 == 0)), 1 / 16)
        assert s.pos[2] + 0.3 <= 20.0 + 1e-9
    assert s.pos[2] > 19.6  # walked up to it
    # A single block can be jumped onto.
    w.blocks[:, 41:44, 20] = W.AIR
    w.blocks[:, 41, 20] = W.STONE
    for i in range(40):
        s = step_physics(w, s, tick(forward=1, jump=1), 1 / 16)
    assert s.pos[2] > 21.0 and s.pos[1] >= 41.0


def test_sneaking_does_not_walk_off_edges(flat_world):
    w = World(1)
    w.blocks[:] = flat_world.blocks
    w.blocks[:, 38:41, 30:] = W.AIR  # a 3-deep drop beyond z = 30
    s = settle(w, PlayerState(pos=(10.5, 41.0, 27.5), yaw=0.0))
    for _ in range(60):
        s = step_physics(w, s, tick(forward=1, sneak=1), 1 / 16)
    assert s.pos[1] == 41.0 and 30.0 < s.pos[2] <= 30.3 + 1e-9  # hangs over the edge, does not fall
    for _ in range(20):
        s = step_physics(w, s, tick(forward=1), 1 / 16)
    assert s.pos[1] == 38.0  # without sneak, it falls


@pytest.mark.parametrize("keys,speed", [({"forward": 1}, 4.317), ({"forward": 1, "sprint": 1}, 5.612),
                                        ({"forward": 1, "sneak": 1}, 1.295), ({"right": 1}, 4.317)])
def test_movement_speeds_and_directions(flat_world, keys, speed):
    dt = 1 / 16
    s = settle(flat_world, PlayerState(pos=(100.5, 41.0, 100.5), yaw=90.0))  # yaw 90 faces -x
    for _ in range(16):
        s = step_physics(flat_world, s, tick(**keys), dt)
    start = s.pos
    for _ in range(32):
        s = step_physics(flat_world, s, tick(**keys), dt)
    dx, dz = s.pos[0] - start[0], s.pos[2] - start[2]
    assert abs(np.hypot(dx, dz) / 2.0 - speed) < 0.05 * speed
    if "right" in keys:
        assert dz < -1 and abs(dx) < 1e-6  # facing -x, the right hand points to -z
    else:
        assert dx < -1 and abs(dz) < 1e-6


def test_state_dict_round_trip():
    s = PlayerState(pos=(1 / 3, 41.0, -2.718281828), yaw=123.456789, pitch=-12.5, vel=(0.1, -9.8, 1e-17), on_ground=True)
    assert PlayerState.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    assert step_physics(World(1), s, tick(pitch_deg=200.0), 0.05).pitch == 90.0


# ----------------------------------------------------------------------------- scripted player

def test_scripted_player_is_diverse_and_respects_gf_exclusivity(world):
    s, player, raws = spawn_state(world, 4), ScriptedPlayer(4), []
    for _ in range(3000):
        raws.append(player.next_tick(s))
        s = step_physics(world, s, raws[-1], 1 / 16)
    r = np.array(raws)
    active = r != 0
    assert not (active[:, 2] & active[:, 3]).any() and not (active[:, 4] & active[:, 5]).any()
    assert (active[:, 6:9].sum(1) <= 1).all()  # jump / sprint / sneak exclusive
    only = lambda col: (active[:, col] & (active.sum(1) == 1)).sum()
    for col in (0, 1, 2, 4, 5, 6):  # isolated yaw, pitch, W, A, D, jump
        assert only(col) > 5, RAW[col]
    assert (active.sum(1) >= 3).sum() > 50  # combinations too
    yaw = np.abs(r[:, 0][active[:, 0]])
    assert yaw.min() < 4.0 and yaw.max() > 12.0
    pitch = np.array([x for x in r[:, 1]]).cumsum()
    assert np.abs(pitch).max() <= 90


def test_scripted_player_gets_away_from_walls(flat_world):
    w = World(1)
    w.blocks[:] = flat_world.blocks
    w.blocks[:, 41:45, 20] = W.STONE  # 4 high: cannot be jumped
    w.blocks[:, 41:45, 12] = W.STONE
    s, player = settle(w, PlayerState(pos=(50.5, 41.0, 16.5))), ScriptedPlayer(0)
    blocked = 0
    for _ in range(800):
        raw = player.next_tick(s)
        new = step_physics(w, s, raw, 1 / 16)
        if (raw[2] or raw[3] or raw[4] or raw[5]) and np.hypot(new.pos[0] - s.pos[0], new.pos[2] - s.pos[2]) < 0.01:
            blocked += 1
        s = new
    assert blocked < 200  # in a corridor: walls are met, but the player never stays pinned


# ----------------------------------------------------------------------------- formats

def test_gamefactory_layout_and_actions(gf_dir):
    out, cfg = gf_dir
    base = os.path.join(out, "data_2003")
    with open(os.path.join(base, "annotation.csv")) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["Original video name", "Start frame index", "End frame index", "Prompt"]
    assert len(rows) == cfg.clips
    for row in rows:
        clip = row["Original video name"][:-4]
        assert int(row["End frame index"]) == cfg.frames - 1
        with open(os.path.join(base, "metadata", f"{clip}.json")) as f:
            meta = json.load(f)
        assert {"biome", "initial_weather", "start_time", "actions"} <= set(meta)
        acts = meta["actions"]
        assert sorted(acts, key=int) == [str(i) for i in range(cfg.frames)]
        first = acts["0"]
        assert (first["ws"], first["ad"], first["scs"], first["pitch_delta"], first["yaw_delta"]) == (0, 0, 0, 0.0, 0.0)
        gt = load_groundtruth(os.path.join(base, "groundtruth", f"{clip}.json"))
        raw = gt["raw_actions"]
        assert raw.shape == (cfg.frames - 1, 9) and len(gt["states"]) == cfg.frames
        for i in range(1, cfg.frames):
            a, r, st = acts[str(i)], raw[i - 1], gt["states"][i]
            assert set(a) == {"ws", "ad", "scs", "pitch", "yaw", "pitch_delta", "yaw_delta", "pos"}
            assert a["ws"] == (1 if r[2] else 2 if r[3] else 0)
            assert a["ad"] == (1 if r[4] else 2 if r[5] else 0)
            assert a["scs"] == (1 if r[6] else 2 if r[8] else 3 if r[7] else 0)
            assert abs(a["yaw_delta"] * 15 - r[0]) < 1e-5 and abs(a["pitch_delta"] * 15 - r[1]) < 1e-5
            assert a["pos"] == list(st.pos) and a["yaw"] == st.yaw and a["pitch"] == st.pitch
        video = read_video(os.path.join(base, "video", f"{clip}.mp4"))
        assert video.shape == (cfg.frames, cfg.height, cfg.width, 3)
        frames, states = rollout(World(gt["seed"]), gt["states"][0], raw, gt["dt"], gt["width"], gt["height"])
        assert states == gt["states"]  # the recorded actions reproduce the recorded states exactly
        assert np.abs(video.astype(np.int16) - frames).mean() < 8.0  # H.264 close to the render
        # ... and a replay from the middle reproduces the same frames bit for bit.
        mid, _ = rollout(World(gt["seed"]), gt["states"][20], raw[20:], gt["dt"], gt["width"], gt["height"])
        assert mid.tobytes() == frames[20:].tobytes()
    import av
    with av.open(os.path.join(base, "video", f"{rows[0]['Original video name']}")) as c:
        assert c.streams.video[0].codec_context.name == "h264" and float(c.streams.video[0].average_rate) == 16.0


def test_generate_is_deterministic(gf_dir, tmp_path):
    out, cfg = gf_dir
    gen.generate(dataclasses.replace(cfg, out=str(tmp_path), clips=1))
    for sub in ("video/seed_5_part_1.mp4", "metadata/seed_5_part_1.json", "groundtruth/seed_5_part_1.json"):
        with open(os.path.join(out, "data_2003", sub), "rb") as a, open(os.path.join(tmp_path, "data_2003", sub), "rb") as b:
            assert a.read() == b.read(), sub


def test_minerl_layout_and_alignment(minerl_dir):
    out, cfg = minerl_dir
    folder = os.path.join(out, "MineRLTreechop-v0", "v4_sandbox_s2_c0000")
    with open(os.path.join(folder, "metadata.json")) as f:
        meta = json.load(f)
    n = cfg.frames - 1
    assert meta["duration_steps"] == n and meta["duration_ms"] == n * 50 and meta["stream_name"] == "v4_sandbox_s2_c0000"
    assert {"success", "total_reward", "true_video_frame_count"} <= set(meta)
    video = read_video(os.path.join(folder, "recording.mp4"))
    assert len(video) == meta["true_video_frame_count"] > n + 1  # extra leading frames exist
    npz = np.load(os.path.join(folder, "rendered.npz"))
    gt = load_groundtruth(os.path.join(folder, "groundtruth.json"))
    raw = gt["raw_actions"]
    assert npz["reward"].shape == (n,) and npz["action$camera"].shape == (n, 2)
    np.testing.assert_array_equal(npz["action$camera"], raw[:, [1, 0]])
    for key, col in (("forward", 2), ("back", 3), ("left", 4), ("right", 5), ("jump", 6), ("sprint", 7), ("sneak", 8)):
        np.testing.assert_array_equal(npz[f"action${key}"], raw[:, col].astype(np.int64))
    assert "action$attack" in npz
    assert gt["dt"] == 0.05 and len(gt["states"]) == n + 1
    frames, _ = rollout(World(gt["seed"]), gt["states"][0], raw, gt["dt"], gt["width"], gt["height"])
    skip = meta["true_video_frame_count"] - (n + 1)
    assert np.abs(video[skip:].astype(np.int16) - frames).mean() < 8.0  # aligned by the end


def test_command_lines(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    help_text = subprocess.run([sys.executable, "-m", "sandbox.generate", "--help"], cwd=ROOT, env=env,
                               capture_output=True, text=True, check=True).stdout
    for flag in ("--format", "--out", "--clips", "--frames", "--seed", "--width", "--height", "--fps", "--workers"):
        assert flag in help_text
    subprocess.run([sys.executable, "-m", "sandbox.generate", "--format", "minerl", "--out", str(tmp_path / "m"),
                    "--clips", "1", "--frames", "6", "--fps", "10"], cwd=ROOT, env=env, check=True, capture_output=True)
    with open(tmp_path / "m" / "MineRLTreechop-v0" / "v4_sandbox_s0_c0000" / "metadata.json") as f:
        assert json.load(f)["duration_ms"] == 500
    subprocess.run([sys.executable, "-m", "sandbox.snapshot", "--out", str(tmp_path / "s"), "--sizes", "64x36"],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    assert (tmp_path / "s" / "desert_64x36.png").exists()
