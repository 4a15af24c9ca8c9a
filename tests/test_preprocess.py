"""Dataset readers and preprocess.py on sandbox data in both real layouts (GF-Minecraft, MineRL v0.4),
plus hand-made and deliberately broken inputs. Uses a tiny untrained tokenizer (deterministic)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import av
import cv2
import numpy as np
import pytest
import torch

import actions
import datasets
import preprocess
from sandbox import World, load_groundtruth, render, rollout, spawn_state
from sandbox import formats as sandbox_formats
from sandbox.generate import main as sandbox_generate
from vq_vae import load_tokenizer
from vq_vae.model import VQVAE, VQVAEConfig
from vq_vae.tokenizer import export_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def tok_path(tmp_path_factory):
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("tok") / "tokenizer.pt")
    export_tokenizer(VQVAE(VQVAEConfig(channels=[8, 16, 16], res_blocks=[0, 0, 0])), (72, 128), path)
    return path


@pytest.fixture(scope="module")
def gf_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("sandbox_gf"))
    sandbox_generate(["--format", "gamefactory", "--out", root, "--clips", "3", "--frames", "40", "--seed", "5"])
    return root


@pytest.fixture(scope="module")
def mr_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("sandbox_minerl"))
    sandbox_generate(["--format", "minerl", "--out", root, "--clips", "2", "--frames", "30", "--seed", "3"])
    return root


def cfg(**kw):
    base = dict(workers=0, batch_size=16, device="cpu")
    base.update(kw)
    return preprocess.Config(**base)


def run_cli(*args, **popen):
    cmd = [sys.executable, os.path.join(REPO, "preprocess.py"), *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, **popen)


def write_mp4(path, frames, fps, faststart=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with av.open(path, "w", options={"movflags": "faststart"} if faststart else {}) as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def load(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


# ----------------------------------------------------------------------------- readers

def test_readers_match_groundtruth(gf_root, mr_root):
    for root, source, n_frames in ((gf_root, "gamefactory", 40), (mr_root, "minerl", 30)):
        trajs, skipped = datasets.find_trajectories(root, "auto")
        assert skipped == [] and len(trajs) == (3 if source == "gamefactory" else 2)
        for t in trajs:
            gt = load_groundtruth(t.groundtruth)
            assert t.source == source and t.num_frames == n_frames == len(gt["states"])
            assert t.raw_actions.shape == (n_frames - 1, 9) and t.raw_actions.dtype == np.float32
            np.testing.assert_allclose(t.raw_actions, gt["raw_actions"], atol=1e-5)
            assert t.fps == (16.0 if source == "gamefactory" else 20.0)
            assert t.mask.tolist() == [1.0] * 7


def test_minerl_leading_frames_skipped(mr_root):
    for t in datasets.find_trajectories(mr_root, "minerl")[0]:
        with open(os.path.join(os.path.dirname(t.video_path), "metadata.json")) as f:
            meta = json.load(f)
        assert t.lead_skip == meta["true_video_frame_count"] - (t.num_frames - 1 + 1) >= 1
        gt = load_groundtruth(t.groundtruth)
        truth = render(World(gt["seed"]), gt["states"][0], gt["width"], gt["height"]).astype(np.float32)
        first = next(t.frames()).astype(np.float32)
        with av.open(t.video_path) as c:  # every video frame, no skipping
            video = [f.to_ndarray(format="rgb24").astype(np.float32) for f in c.decode(video=0)]
        err = np.abs(first - truth).mean()
        assert err < 12, f"first aligned frame differs from the ground-truth render by {err:.1f}"
        assert np.array_equal(first, video[t.lead_skip])
        for j in range(len(video)):  # the right frame is the closest one among the whole video
            if j != t.lead_skip:
                assert np.abs(video[j] - truth).mean() > err


def test_minerl_duration_n_plus_one_and_leading_frames_aligned_by_the_end(tmp_path, tok_path):
    """duration_steps = N + 1 and 5 extra leading frames: processed, frames taken from the end."""
    n, lead = 8, 5
    folder = tmp_path / "mr" / "MineRLTreechop-v0" / "v4_handmade"
    frames = [np.full((64, 64, 3), 10 + 16 * i, np.uint8) for i in range(lead + n + 1)]  # brightness = frame number
    write_mp4(str(folder / "recording.mp4"), frames, 20)
    raw = np.zeros((n, 9), np.float32)
    raw[:, actions.R["forward"]] = 1
    np.savez(folder / "rendered.npz", **sandbox_formats.minerl_arrays(raw))
    meta = sandbox_formats.minerl_metadata("v4_handmade", n + 1, len(frames))
    (folder / "metadata.json").write_text(json.dumps(meta))
    (trajectory,), skipped = datasets.find_trajectories(str(tmp_path / "mr"), "minerl")
    assert skipped == [] and trajectory.notes == ()
    assert trajectory.num_frames == n + 1 and trajectory.lead_skip == lead
    brightness = [int(round(f.mean())) for f in trajectory.frames()]
    assert np.allclose(brightness, [10 + 16 * i for i in range(lead, lead + n + 1)], atol=3)
    out = tmp_path / "tokens"
    summary = preprocess.main(cfg(input=str(tmp_path / "mr"), tokenizer=tok_path, out=str(out)))
    assert summary["processed"] == 1 and summary["skipped"] == 0
    assert load(out / "MineRLTreechop-v0__v4_handmade.npz")["tokens"].shape[0] == n + 1


def make_handmade_gf(tmp_path):
    """Hand-made GF clip: 9 frames at 16 fps, every ws/ad/scs code, in data_269 (no camera)."""
    ticks = [  # (ws, ad, scs, yaw_delta, pitch_delta) for ticks 0..7 = entries 1..8
        (1, 0, 1, 1.0, 0.1), (1, 2, 0, 1.0, 0.0), (2, 1, 0, -0.5, 0.0), (0, 1, 3, 0.0, 0.0),
        (1, 0, 2, 2.0, -0.2), (0, 0, 2, 2.0, 0.0), (0, 0, 0, 0.0, 0.0), (0, 0, 2, 0.0, 0.0)]
    rng = np.random.default_rng(0)
    for group in ("data_2003", "data_269"):
        d = tmp_path / "gf" / group
        write_mp4(str(d / "video" / "clip.mp4"), [rng.integers(0, 255, (72, 128, 3), dtype=np.uint8) for _ in range(9)], 16)
        entries = {"0": {"ws": 0, "ad": 0, "scs": 0, "pitch_delta": 0.0, "yaw_delta": 0.0}}
        for i, (ws, ad, scs, yd, pd) in enumerate(ticks):
            entries[str(i + 1)] = {"ws": ws, "ad": ad, "scs": scs, "yaw_delta": yd, "pitch_delta": pd, "pos": [0, 0, 0]}
        os.makedirs(d / "metadata")
        (d / "metadata" / "clip.json").write_text(json.dumps({"biome": "plains", "actions": entries}))
    return tmp_path / "gf"


def test_keyboard_only_and_scs_mapping(tmp_path):
    trajs = {t.name: t for t in datasets.find_trajectories(str(make_handmade_gf(tmp_path)))[0]}
    raw = trajs["data_2003__clip"].raw_actions
    assert raw[:, actions.R["yaw_deg"]].tolist() == [15, 15, -7.5, 0, 30, 30, 0, 0]
    assert raw[:, actions.R["forward"]].tolist() == [1, 1, 0, 0, 1, 0, 0, 0]
    assert raw[:, actions.R["back"]].tolist() == [0, 0, 1, 0, 0, 0, 0, 0]
    assert raw[:, actions.R["left"]].tolist() == [0, 0, 1, 1, 0, 0, 0, 0]
    assert raw[:, actions.R["right"]].tolist() == [0, 1, 0, 0, 0, 0, 0, 0]
    assert raw[:, actions.R["jump"]].tolist() == [1, 0, 0, 0, 0, 0, 0, 0]
    assert raw[:, actions.R["sprint"]].tolist() == [0, 0, 0, 1, 0, 0, 0, 0]
    assert raw[:, actions.R["sneak"]].tolist() == [0, 0, 0, 0, 1, 1, 0, 1]
    assert trajs["data_269__clip"].mask.tolist() == actions.action_mask(has_camera=False).tolist()


def test_vpt_reader(tmp_path):
    rng = np.random.default_rng(0)
    write_mp4(str(tmp_path / "vpt" / "a.mp4"), [rng.integers(0, 255, (72, 128, 3), dtype=np.uint8) for _ in range(4)], 20)
    lines = [{"mouse": {"dx": 10.0, "dy": -4.0}, "keyboard": {"keys": ["key.keyboard.w", "key.keyboard.space"]}},
             {"mouse": {"dx": 7.0, "dy": 1.0}, "keyboard": {"keys": ["key.keyboard.left.shift"]}, "isGuiOpen": True},
             {"mouse": {"dx": -3.0, "dy": 0.0}, "keyboard": {"keys": ["key.keyboard.d", "key.keyboard.left.control"]}},
             {"mouse": {"dx": 99.0, "dy": 99.0}, "keyboard": {"keys": []}}]  # the last frame's action leads nowhere
    (tmp_path / "vpt" / "a.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    (trajs, skipped) = datasets.find_trajectories(str(tmp_path / "vpt"), "auto")
    assert skipped == [] and len(trajs) == 1 and trajs[0].source == "vpt" and trajs[0].num_frames == 4
    np.testing.assert_allclose(trajs[0].raw_actions, [
        # yaw_deg, pitch_deg, fwd, back, left, right, jump, sprint, sneak
        [1.5, -0.6, 1, 0, 0, 0, 1, 0, 0],
        [0.0, 0.0, 0, 0, 0, 0, 0, 0, 1],    # GUI open: camera carries no meaning
        [-0.45, 0.0, 0, 0, 0, 1, 0, 1, 0]], atol=1e-6)


def test_downsampling_aggregation_exact(tmp_path, tok_path):
    root = make_handmade_gf(tmp_path)
    out = tmp_path / "tokens"
    preprocess.main(cfg(input=str(root), tokenizer=tok_path, out=str(out), fps=8.0))  # 16 fps -> stride 2
    z = load(out / "data_2003__clip.npz")
    # ticks pair up: (0,1) (2,3) (4,5) (6,7); yaw degrees / (15 * 2), clipped
    expected = np.array([
        # yaw,          pitch,      move_x, move_z, jump, sprint, sneak
        [30 / 30,       1.5 / 30,   0.5,    1.0,    1.0,  0.0,    0.0],
        [-7.5 / 30,     0.0,        -1.0,   -0.5,   0.0,  1.0,    0.0],
        [1.0,           -3.0 / 30,  0.0,    0.5,    0.0,  0.0,    1.0],
        [0.0,           0.0,        0.0,    0.0,    0.0,  0.0,    0.5]], dtype=np.float32)
    np.testing.assert_allclose(z["actions"], expected, atol=1e-6)
    np.testing.assert_allclose(z["raw_degrees"], [[30, 1.5], [-7.5, 0], [60, -3], [0, 0]], atol=1e-5)
    assert z["frame_index"].tolist() == [0, 2, 4, 6, 8] and z["tokens"].shape == (5, 18, 32)
    masked = load(out / "data_269__clip.npz")  # keyboard only: camera zeroed and masked
    np.testing.assert_allclose(masked["actions"][:, 2:], expected[:, 2:], atol=1e-6)
    assert not masked["actions"][:, :2].any() and masked["action_mask"].tolist() == [0, 0, 1, 1, 1, 1, 1]
    m = datasets.read_manifest(str(out))
    assert m["fps"] == 8.0 and {t["stride"] for t in m["trajectories"]} == {2}
    # --skip_seconds: 2 frames at 16 fps dropped, then stride 2 -> frames 2, 4, 6, 8
    out2 = tmp_path / "tokens_skip"
    preprocess.main(cfg(input=str(root), tokenizer=tok_path, out=str(out2), fps=8.0, skip_seconds=0.125))
    z2 = load(out2 / "data_2003__clip.npz")
    assert z2["frame_index"].tolist() == [2, 4, 6, 8]
    np.testing.assert_allclose(z2["actions"], expected[1:], atol=1e-6)
    np.testing.assert_array_equal(z2["tokens"], z["tokens"][1:])


# ----------------------------------------------------------------------------- preprocess outputs

def test_outputs_both_formats(tmp_path, gf_root, mr_root, tok_path):
    data = tmp_path / "both"
    shutil.copytree(gf_root, data / "gf")
    shutil.copytree(mr_root, data / "minerl")
    out = tmp_path / "tokens"
    stats = preprocess.main(cfg(input=str(data), tokenizer=tok_path, out=str(out), workers=2))
    assert stats["processed"] == 5 and stats["skipped"] == 0
    tok = load_tokenizer(tok_path)
    m = datasets.read_manifest(str(out))
    assert m["tokenizer"]["hash"] == tok.hash and m["tokenizer"]["codebook_size"] == tok.codebook_size
    assert m["action_names"] == list(actions.ACTION_NAMES) and len(m["trajectories"]) == 5
    trajs = {t.name: t for t in datasets.find_trajectories(str(data))[0]}
    for entry in m["trajectories"]:
        z = load(out / entry["file"])
        k = entry["length"]
        assert z["tokens"].dtype == np.uint16 and z["tokens"].shape == (k, 18, 32)
        assert z["actions"].dtype == np.float32 and z["actions"].shape == (k - 1, 7)
        assert len(z["actions"]) == len(z["tokens"]) - 1
        assert z["frame_index"].dtype == np.int64 and z["raw_degrees"].shape == (k - 1, 2)
        assert int(z["tokens"].max()) < tok.codebook_size
        t = trajs[entry["file"][:-4]]
        assert entry["source"] == t.source and entry["fps"] == t.fps and k == t.num_frames
        np.testing.assert_allclose(z["actions"], actions.aggregate(load_groundtruth(t.groundtruth)["raw_actions"], 1))
    # the tokens are the tokenizer's codes of the (aligned) frames
    t = trajs["MineRLTreechop-v0__v4_sandbox_s3_c0000"]
    z = load(out / (t.name + ".npz"))
    np.testing.assert_array_equal(tok.encode(np.stack(list(t.frames()))).numpy(), z["tokens"])
    # and the window dataset reads them, refusing another tokenizer
    ds = datasets.TokenWindowDataset(str(out), window=8, split="all", expect_hash=tok.hash,
                                     expect_codebook_size=tok.codebook_size)
    x, a = ds[0]
    assert x.shape == (8, 18, 32) and a.shape == (7, 7)
    with pytest.raises(ValueError, match="manifest.json"):
        datasets.TokenWindowDataset(str(out), window=8, expect_hash="0" * 16)


def write_gf_clip(folder, clip, frames, raw, fps=16):
    """GF-Minecraft files (video + metadata) for sandbox frames [F, H, W, 3] and raw ticks [F-1, 9]."""
    write_mp4(os.path.join(folder, "video", clip + ".mp4"), list(frames), fps)
    R = actions.R
    entries = {"0": {"ws": 0, "ad": 0, "scs": 0, "pitch_delta": 0.0, "yaw_delta": 0.0}}
    for i, r in enumerate(raw):
        entries[str(i + 1)] = {"ws": 1 if r[R["forward"]] else 2 if r[R["back"]] else 0,
                               "ad": 1 if r[R["left"]] else 2 if r[R["right"]] else 0,
                               "scs": 1 if r[R["jump"]] else 2 if r[R["sneak"]] else 3 if r[R["sprint"]] else 0,
                               "yaw_delta": float(r[R["yaw_deg"]]) / 15, "pitch_delta": float(r[R["pitch_deg"]]) / 15}
    os.makedirs(os.path.join(folder, "metadata"), exist_ok=True)
    with open(os.path.join(folder, "metadata", clip + ".json"), "w") as f:
        json.dump({"biome": "plains", "actions": entries}, f)


def test_camera_yaw_moves_image_at_lag_zero(tmp_path, tok_path):
    """Horizontal image motion between kept frames t and t+1 follows the yaw action a[t] (lag 0),
    not a[t-1] or a[t+1]; turning right moves the picture left. Sandbox renders of a player turning
    by an independent random amount every tick (so neighbouring actions do not correlate)."""
    root = tmp_path / "turning" / "data_2003"
    for clip in range(2):
        world = World(11 + clip)
        raw = np.zeros((47, 9), np.float32)
        raw[:, actions.R["yaw_deg"]] = np.random.default_rng(clip).choice([-6.0, -3.0, 0.0, 3.0, 6.0], 47)
        frames, _ = rollout(world, spawn_state(world, clip), raw, 1 / 16)
        write_gf_clip(str(root), f"clip_{clip}", frames, raw)
    out = tmp_path / "tokens"
    preprocess.main(cfg(input=str(root.parent), tokenizer=tok_path, out=str(out), fps=8.0))  # stride 2
    window = cv2.createHanningWindow((128, 72), cv2.CV_32F)
    shifts, yaws = [], []
    for t in datasets.find_trajectories(str(root.parent))[0]:
        z = load(out / (t.name + ".npz"))
        gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY).astype(np.float32) for f in t.frames()]
        kept = [gray[i] for i in z["frame_index"]]
        shifts.append(np.array([cv2.phaseCorrelate(kept[i], kept[i + 1], window)[0][0] for i in range(len(kept) - 1)]))
        yaws.append(z["actions"][:, actions.A["yaw"]])

    def corr(lag):  # corr(a[t], shift[t + lag])
        a = np.concatenate([y[max(-lag, 0): len(y) - max(lag, 0)] for y in yaws])
        s = np.concatenate([x[max(lag, 0): len(x) - max(-lag, 0)] for x in shifts])
        return np.corrcoef(a, s)[0, 1]

    c = {lag: corr(lag) for lag in (-1, 0, 1)}
    print("correlation of yaw a[t] with horizontal shift t+lag:", c)
    assert c[0] < -0.7, c
    assert abs(c[0]) > abs(c[-1]) + 0.3 and abs(c[0]) > abs(c[1]) + 0.3, c


# ----------------------------------------------------------------------------- robustness

def test_bad_inputs_skipped_and_reported(tmp_path, gf_root, mr_root, tok_path):
    data = tmp_path / "data"
    shutil.copytree(gf_root, data / "gf")
    shutil.copytree(mr_root, data / "minerl")
    video = data / "gf" / "data_2003" / "video"
    # 1. a truncated mp4 (half its bytes)
    p = video / "seed_5_part_1.mp4"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    # 2. a clip whose metadata has one action entry more than the video has frames
    meta = data / "gf" / "data_2003" / "metadata" / "seed_5_part_2.json"
    m = json.loads(meta.read_text())
    m["actions"][str(len(m["actions"]))] = m["actions"]["1"]
    meta.write_text(json.dumps(m))
    # 3. MineRL: a stream whose video cannot hold N+1 frames (skipped), one whose duration_steps
    # disagrees with its actions (only a warning: the official loader never reads it)
    streams = data / "minerl" / "MineRLTreechop-v0"
    for stream, key, change in (("v4_sandbox_s3_c0000", "true_video_frame_count", -20), ("v4_sandbox_s3_c0001", "duration_steps", 7)):
        m = json.loads((streams / stream / "metadata.json").read_text())
        m[key] += change
        (streams / stream / "metadata.json").write_text(json.dumps(m))
    # 4. not a video at all
    (video / "junk.mp4").write_bytes(b"\x00" * 1000)
    shutil.copy(meta, video.parent / "metadata" / "junk.json")
    # 5. cut mid-stream with the index (moov) up front: opens fine, promises 40 frames, decoding fails
    rng = np.random.default_rng(0)
    write_mp4(str(video / "cut.mp4"), [rng.integers(0, 255, (72, 128, 3), dtype=np.uint8) for _ in range(40)], 16,
              faststart=True)
    (video / "cut.mp4").write_bytes((video / "cut.mp4").read_bytes()[:100_000])
    shutil.copy(video.parent / "metadata" / "seed_5_part_3.json", video.parent / "metadata" / "cut.json")
    assert datasets.probe_video(str(video / "cut.mp4"))[3] == 40

    out = tmp_path / "tokens"
    r = run_cli("--input", data, "--tokenizer", tok_path, "--out", out, "--workers", "1")
    assert r.returncode == 0, r.stderr
    log = r.stdout + r.stderr
    assert "seed_5_part_1.mp4: cannot open video" in log
    assert "seed_5_part_2.json: 41 action entries but the video has 40 frames" in log
    assert "v4_sandbox_s3_c0000: cannot align: true_video_frame_count=" in log
    assert "warning 1: duration_steps=36 but rendered.npz has N=29 actions (processed)" in log
    assert "junk.mp4: cannot open video" in log
    assert "cut.mp4: decoding failed after" in log
    assert "skipped 5" in log
    assert sorted(os.listdir(out)) == ["MineRLTreechop-v0__v4_sandbox_s3_c0001.npz", "data_2003__seed_5_part_3.npz",
                                       "manifest.json"]


def test_sticky_tokens_match_the_tokenizer_and_are_recorded(tmp_path, gf_root, tok_path):
    out = tmp_path / "sticky"
    stats = preprocess.main(cfg(input=gf_root, tokenizer=tok_path, out=str(out), sticky=0.05, batch_size=7))
    assert stats["processed"] == 3
    tok = load_tokenizer(tok_path)
    m = datasets.read_manifest(str(out))
    assert m["tokenizer"]["sticky"] == 0.05
    t = datasets.find_trajectories(gf_root)[0][0]
    frames = np.stack(list(t.frames()))
    z = load(out / (t.name + ".npz"))
    # batches of 7 carry the codes across, so the file equals one sticky pass over the whole clip
    np.testing.assert_array_equal(tok.encode(frames, sticky=0.05).numpy(), z["tokens"])
    plain = tok.encode(frames).numpy()
    kept = lambda c: (c[1:] == c[:-1]).mean()
    assert kept(z["tokens"]) >= kept(plain)
    # another margin into the same folder is refused, not mixed in
    with pytest.raises(SystemExit, match="sticky"):
        preprocess.main(cfg(input=gf_root, tokenizer=tok_path, out=str(out), sticky=0.0))
    with pytest.raises(SystemExit, match="sticky"):
        preprocess.main(cfg(input=gf_root, tokenizer=tok_path, out=str(tmp_path / "neg"), sticky=-1.0))
    # following the picture is recorded too, and is one tracked pass over the clip
    with pytest.raises(SystemExit, match="sticky_track"):
        preprocess.main(cfg(input=gf_root, tokenizer=tok_path, out=str(out), sticky=0.05, sticky_track=2))
    with pytest.raises(SystemExit, match="needs --sticky"):
        preprocess.main(cfg(input=gf_root, tokenizer=tok_path, out=str(tmp_path / "track0"), sticky_track=2))
    tracked = tmp_path / "tracked"
    preprocess.main(cfg(input=gf_root, tokenizer=tok_path, out=str(tracked), sticky=0.05, sticky_track=2, batch_size=7))
    assert datasets.read_manifest(str(tracked))["tokenizer"]["sticky_track"] == 2
    np.testing.assert_array_equal(tok.encode(frames, sticky=0.05, track=2).numpy(), load(tracked / (t.name + ".npz"))["tokens"])


def test_nothing_processed_exits_nonzero(tmp_path, tok_path, capsys):
    (tmp_path / "d" / "data_2003" / "video").mkdir(parents=True)
    (tmp_path / "d" / "data_2003" / "metadata").mkdir()
    (tmp_path / "d" / "data_2003" / "video" / "a.mp4").write_bytes(b"not a video")
    (tmp_path / "d" / "data_2003" / "metadata" / "a.json").write_text('{"actions": {"0": {}, "1": {}}}')
    with pytest.raises(SystemExit) as e:
        preprocess.main(cfg(input=str(tmp_path / "d"), tokenizer=tok_path, out=str(tmp_path / "o")))
    assert e.value.code == 1 and "a.mp4: cannot open video" in capsys.readouterr().out


def test_killed_run_resumes_to_identical_outputs(tmp_path, gf_root, mr_root, tok_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(gf_root, data / "gf")
    shutil.copytree(mr_root, data / "minerl")
    clean, resumed = tmp_path / "clean", tmp_path / "resumed"
    args = dict(input=str(data), tokenizer=tok_path, batch_size=8)
    preprocess.main(cfg(out=str(clean), **args))

    flags = [f"--{k}={v}" for k, v in args.items()] + ["--workers=0", f"--out={resumed}"]
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "preprocess.py"), *flags],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not preprocess.token_files(resumed):
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)  # right after the first file appeared
    proc.wait()
    left = preprocess.token_files(resumed)
    with capsys.disabled():
        print(f"\nkilled with {len(left)} of 5 token files written")
    for f in left:  # whatever looks finished is complete
        assert load(resumed / f)["tokens"].shape[1:] == (18, 32)
    # a damaged "finished" file (e.g. from a non-atomic copy) is redone, not trusted
    first = preprocess.token_files(clean)[0]
    (resumed / first).write_bytes(b"PK garbage")

    stats = preprocess.main(cfg(out=str(resumed), **args))
    assert stats["processed"] >= 1
    assert preprocess.token_files(clean) == preprocess.token_files(resumed)
    for f in preprocess.token_files(clean) + ["manifest.json"]:
        assert (clean / f).read_bytes() == (resumed / f).read_bytes(), f
    capsys.readouterr()
    stats = preprocess.main(cfg(out=str(resumed), **args))  # idempotent: nothing left to do
    assert stats["processed"] == 0 and stats["already_done"] == 5 and "already done 5" in capsys.readouterr().out


def test_shards_split_the_dataset(tmp_path, gf_root, mr_root, tok_path):
    data = tmp_path / "data"
    shutil.copytree(gf_root, data / "gf")
    shutil.copytree(mr_root, data / "minerl")
    out = tmp_path / "tokens"
    done = []
    for shard in ("0/2", "1/2"):
        stats = preprocess.main(cfg(input=str(data), tokenizer=tok_path, out=str(out), shard=shard))
        done.append(stats["processed"])
    assert done == [3, 2]
    names = sorted(t.name + ".npz" for t in datasets.find_trajectories(str(data))[0])
    assert preprocess.token_files(out) == names
    assert [t["file"] for t in datasets.read_manifest(str(out))["trajectories"]] == names
    manifest = (out / "manifest.json").read_bytes()
    (out / "manifest.json").unlink()
    preprocess.main(preprocess.Config(out=str(out), manifest_only=True))  # rebuilt from the files alone
    assert (out / "manifest.json").read_bytes() == manifest
    # a different tokenizer must not be mixed into the same folder
    other = str(tmp_path / "other.pt")
    torch.manual_seed(1)
    export_tokenizer(VQVAE(VQVAEConfig(channels=[8, 16, 16], res_blocks=[0, 0, 0])), (72, 128), other)
    with pytest.raises(SystemExit, match="made by tokenizer"):
        preprocess.main(cfg(input=str(data), tokenizer=other, out=str(out)))
