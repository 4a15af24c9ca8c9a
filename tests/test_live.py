"""keymap.py, live_inference.py and sandbox/play.py: controls -> action vectors, the
WorldModelEnv core (reset, persistent state), headless recording, and short windowed sessions
under the dummy SDL driver. Models are tiny and untrained, built in the test."""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

os.environ["SDL_VIDEODRIVER"] = "dummy"
os.environ["SDL_AUDIODRIVER"] = "dummy"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import pygame  # noqa: E402

import actions as act  # noqa: E402
from keymap import KeyMap, controls_lines, step_from_raw  # noqa: E402
from sampling import Sampler  # noqa: E402

A = {n: i for i, n in enumerate(act.ACTION_NAMES)}
R = {n: i for i, n in enumerate(act.RAW_NAMES)}


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """An untrained tiny tokenizer file + world-model checkpoint in the contract's format."""
    from model_convGru import WorldModel, WorldModelConfig
    from utils import save_checkpoint
    from vq_vae import load_tokenizer
    from vq_vae.model import VQVAE, VQVAEConfig
    from vq_vae.tokenizer import export_tokenizer

    root = tmp_path_factory.mktemp("live")
    torch.manual_seed(0)
    tok_path = str(root / "tokenizer.pt")
    export_tokenizer(VQVAE(VQVAEConfig(channels=[8, 8, 8], res_blocks=[0, 0, 0], levels=[4, 4])), (72, 128), tok_path)
    tok = load_tokenizer(tok_path)
    mcfg = WorldModelConfig(codebook_size=tok.codebook_size, grid=tuple(tok.grid), action_dim=act.ACTION_DIM,
                            embed_dim=8, hidden=16, layers=1, action_hidden=16, idm_hidden=8)
    model = WorldModel(mcfg)
    ckpt = {"model_args": dataclasses.asdict(mcfg), "model": model.state_dict(), "config": {}, "step": 0,
            "tokenizer": {"path": tok_path, "hash": tok.hash, "codebook_size": tok.codebook_size,
                          "grid": list(tok.grid), "frame_size": list(tok.frame_size)},
            "action_names": list(act.ACTION_NAMES), "fps": 16.0}
    save_checkpoint(ckpt, str(root / "world"), 0)
    # a start image (a smooth gradient) and a token trajectory file
    H, W = tok.frame_size
    img = np.zeros((H, W, 3), np.uint8)
    img[..., 0] = np.linspace(0, 255, W)[None]
    img[..., 2] = np.linspace(0, 255, H)[:, None]
    import cv2
    cv2.imwrite(str(root / "start.png"), img[..., ::-1])
    tokens = np.random.default_rng(0).integers(0, tok.codebook_size, (6, *tok.grid)).astype(np.uint16)
    np.savez(root / "traj.npz", tokens=tokens, actions=np.zeros((5, 7), np.float32))
    return {"root": root, "world": str(root / "world"), "tokenizer": tok_path, "image": str(root / "start.png"),
            "npz": str(root / "traj.npz"), "model": model.eval(), "tok": tok}


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """live_inference sets torch's thread count (--threads): leave other tests' setting alone."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture
def display():
    pygame.display.init()
    pygame.display.set_mode((64, 48))
    yield
    pygame.display.quit()


def feed(keymap, events):
    """Post events through the real pygame queue, then hand them to the keymap."""
    pygame.event.clear()
    for e in events:
        pygame.event.post(e)
    return [keymap.handle(e) for e in pygame.event.get()]


def key(k, down=True):
    return pygame.event.Event(pygame.KEYDOWN if down else pygame.KEYUP, key=k, mod=0, unicode="", scancode=0)


def motion(dx, dy):
    return pygame.event.Event(pygame.MOUSEMOTION, pos=(0, 0), rel=(dx, dy), buttons=(0, 0, 0))


def click():
    return pygame.event.Event(pygame.MOUSEBUTTONDOWN, pos=(0, 0), button=1)


def run_script(args, timeout=120):
    env = dict(os.environ, SDL_VIDEODRIVER="dummy", SDL_AUDIODRIVER="dummy")
    r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def count_frames(path):
    import av
    with av.open(path) as c:
        return sum(1 for _ in c.decode(video=0)), c.streams.video[0].width


# ----------------------------------------------------------------------------- keymap

def test_keys_and_mouse_events_make_action_vectors(display):
    km = KeyMap(sensitivity=0.15)
    feed(km, [key(pygame.K_w), key(pygame.K_d), key(pygame.K_LCTRL)])
    raw, vec = km.step_action(stride=1)
    assert raw.shape == (act.RAW_DIM,) and vec.shape == (act.ACTION_DIM,)
    assert raw[R["forward"]] == 1 and raw[R["right"]] == 1 and raw[R["sprint"]] == 1 and raw[R["back"]] == 0
    np.testing.assert_allclose(vec, act.make_action(move_x=1, move_z=1, sprint=1))
    # mouse motion counts only once the mouse is grabbed (a click grabs it)
    assert feed(km, [motion(50, 0), key(pygame.K_w, down=False)]) == [None, None]
    assert km.step_action(1)[1][A["yaw"]] == 0
    assert feed(km, [click()]) == ["grab"]
    feed(km, [motion(60, -10), motion(40, -10)])  # 100 px right, 20 up: 15 deg yaw, -3 deg pitch
    raw, vec = km.step_action(stride=1)
    assert raw[R["yaw_deg"]] == pytest.approx(15.0) and raw[R["pitch_deg"]] == pytest.approx(-3.0)
    np.testing.assert_allclose(vec, act.make_action(yaw=1.0, pitch=-0.2, move_x=1, sprint=1), atol=1e-6)
    assert km.step_action(1)[1][A["yaw"]] == 0  # consumed
    # a model step of 2 ticks: the same turn is half the normalized rate
    feed(km, [motion(100, 0)])
    assert km.step_action(stride=2)[1][A["yaw"]] == pytest.approx(0.5)
    # Esc releases the mouse: motion is ignored again
    assert feed(km, [key(pygame.K_ESCAPE), motion(100, 0)])[0] == "release"
    assert not km.grabbed and km.step_action(1)[1][A["yaw"]] == 0


def test_tap_counts_for_one_frame_and_key_up_releases(display):
    km = KeyMap()
    feed(km, [key(pygame.K_SPACE), key(pygame.K_SPACE, down=False), key(pygame.K_LSHIFT)])
    vec = km.step_action(1)[1]
    assert vec[A["jump"]] == 1 and vec[A["sneak"]] == 1
    vec = km.step_action(1)[1]
    assert vec[A["jump"]] == 0 and vec[A["sneak"]] == 1
    feed(km, [key(pygame.K_LSHIFT, down=False)])
    assert act.describe(km.step_action(1)[1]) == "idle"


def test_key_state_dict_and_arrow_keys():
    km = KeyMap(arrow_speed=5.0)
    pressed = {pygame.K_s: True, pygame.K_a: True, pygame.K_LEFT: True, pygame.K_DOWN: True}
    raw, vec = km.step_action(stride=1, pressed=pressed)
    assert raw[R["back"]] == 1 and raw[R["left"]] == 1
    assert raw[R["yaw_deg"]] == pytest.approx(-5.0) and raw[R["pitch_deg"]] == pytest.approx(5.0)
    np.testing.assert_allclose(vec, act.make_action(yaw=-1 / 3, pitch=1 / 3, move_x=-1, move_z=-1), atol=1e-6)
    # arrow speed is per tick: over a 3-tick step the normalized rate is unchanged
    np.testing.assert_allclose(km.step_action(stride=3, pressed=pressed)[1], vec, atol=1e-6)
    np.testing.assert_allclose(step_from_raw(raw, 1), vec)


def test_commands_and_live_sampling_keys(display):
    s = Sampler(temperature=1.0, top_k=50, top_p=1.0)
    km = KeyMap(sampler=s)
    assert feed(km, [key(pygame.K_r), key(pygame.K_p), key(pygame.K_h)]) == ["reset", "pause", "help"]
    assert km.paused and km.show_help
    feed(km, [key(pygame.K_RIGHTBRACKET), key(pygame.K_RIGHTBRACKET)])
    assert s.temperature == pytest.approx(1.2)
    feed(km, [key(pygame.K_g)])
    assert s.greedy
    feed(km, [key(pygame.K_g)])
    assert s.temperature == pytest.approx(1.2)
    feed(km, [key(pygame.K_LEFTBRACKET)])
    assert s.temperature == pytest.approx(1.1)
    feed(km, [key(pygame.K_EQUALS)])
    assert s.top_k == 100
    feed(km, [key(pygame.K_MINUS), key(pygame.K_MINUS)])
    assert s.top_k == 20
    feed(km, [key(pygame.K_SEMICOLON)])
    assert s.top_p == pytest.approx(0.95)
    feed(km, [key(pygame.K_QUOTE), key(pygame.K_QUOTE)])
    assert s.top_p == pytest.approx(1.0)
    assert feed(km, [key(pygame.K_q)]) == ["quit"]
    assert feed(km, [pygame.event.Event(pygame.QUIT)]) == ["quit"]
    assert any("top-k" in line for line in controls_lines(model=True))
    assert not any("top-k" in line for line in controls_lines(model=False))


# ----------------------------------------------------------------------------- the env core

def make_env(tiny, greedy=False):
    from live_inference import Start, WorldModelEnv
    env = WorldModelEnv(tiny["model"], tiny["tok"], Sampler(0.0 if greedy else 1.0, 50, 1.0), "cpu", seed=0)
    tokens = torch.from_numpy(np.load(tiny["npz"])["tokens"].astype(np.int64))
    return env, Start(tokens[:3], np.zeros((2, 7), np.float32), "test")


def test_reset_returns_the_start_frame_and_replays(tiny):
    env, start = make_env(tiny)
    first = env.reset(start).copy()
    expected = tiny["tok"].decode(start.tokens[-1:])[0].numpy()
    np.testing.assert_array_equal(first, expected)
    a = act.make_action(move_z=1, yaw=0.3)
    run1 = [env.step(a).copy() for _ in range(3)]
    assert run1[0].shape == first.shape and run1[0].dtype == np.uint8
    np.testing.assert_array_equal(env.reset(), first)  # reset() with no argument: the same start
    run2 = [env.step(a).copy() for _ in range(3)]
    for f1, f2 in zip(run1, run2):  # the sampler is re-seeded at reset: the same frames again
        np.testing.assert_array_equal(f1, f2)


def test_state_persists_across_steps(tiny):
    env, start = make_env(tiny, greedy=True)
    a = act.make_action(move_z=1)
    env.reset(start)
    state0 = [s.clone() for s in env.state]
    fresh = env.step(a).copy()
    assert any(not torch.equal(s0, s1) for s0, s1 in zip(state0, env.state))
    # the same input tokens and action from a different recurrent state give a different frame
    env.reset(start)
    for _ in range(3):
        env.step(act.make_action(yaw=-1.0, move_x=-1))
    env.tokens = start.tokens[-1:].clone()
    later = env.step(a)
    assert not np.array_equal(fresh, later)


# ----------------------------------------------------------------------------- scripts

def test_headless_run_records_video_and_sidecar(tiny, tmp_path):
    script = [[0, 0, 0, 1, 0, 0, 0], {"yaw": 0.5, "jump": 1}, [0, -0.25, 1, 0, 0, 1, 0]]
    (tmp_path / "acts.json").write_text(json.dumps(script))
    out = tmp_path / "session.mp4"
    n = 7
    run_script(["live_inference.py", "--checkpoint", tiny["world"], "--start", tiny["image"], "--headless",
                "--actions", str(tmp_path / "acts.json"), "--frames", str(n), "--record", str(out)])
    frames, width = count_frames(str(out))
    assert frames == n and width == 128
    side = json.loads((tmp_path / "session.json").read_text())
    assert side["num_frames"] == n and len(side["actions"]) == n and side["resets"] == [0]
    expected = [act.make_action(**s) if isinstance(s, dict) else s for s in script]
    for i in range(1, n):  # entry i produced frame i; the script repeats
        np.testing.assert_allclose(side["actions"][i], expected[(i - 1) % 3], atol=1e-6)
    # the sidecar replays (in-process this time: one subprocess proves the command line)
    import live_inference
    out2 = tmp_path / "replay.mp4"
    live_inference.main(["--checkpoint", tiny["world"], "--start", tiny["image"], "--headless",
                         "--actions", str(tmp_path / "session.json"), "--record", str(out2)])
    side2 = json.loads((tmp_path / "replay.json").read_text())
    assert side2["actions"] == side["actions"]


def test_headless_side_by_side_from_the_sandbox(tiny, tmp_path):
    import live_inference
    out = tmp_path / "sbs.mp4"
    live_inference.main(["--checkpoint", tiny["world"], "--start", "sandbox", "--seed", "3", "--context", "2",
                         "--side-by-side", "--headless", "--frames", "4", "--record", str(out),
                         "--scale", "2", "--screenshot", str(tmp_path / "shot.png")])
    frames, width = count_frames(str(out))
    assert frames == 4 and width == 256
    import cv2
    shot = cv2.imread(str(tmp_path / "shot.png"))
    assert shot is not None and shot.shape == (2 * 72, 2 * 256, 3)


def scripted_events(monkeypatch, script):
    """Replace pygame.event.get so that call i first posts script[i] into the real queue."""
    real_get = pygame.event.get
    calls = {"n": 0}

    def get(*args, **kwargs):
        for e in script.get(calls["n"], []):
            pygame.event.post(e)
        calls["n"] += 1
        return real_get(*args, **kwargs)

    monkeypatch.setattr(pygame.event, "get", get)
    return calls


def test_windowed_session_with_posted_keys_quits_cleanly(tiny, tmp_path, monkeypatch):
    import live_inference
    script = {0: [click(), key(pygame.K_w)], 1: [motion(30, 0)], 2: [key(pygame.K_h)], 3: [key(pygame.K_p)],
              4: [key(pygame.K_p), key(pygame.K_RIGHTBRACKET)], 5: [key(pygame.K_r)], 6: [key(pygame.K_q)]}
    calls = scripted_events(monkeypatch, script)
    shot, rec = tmp_path / "shot.png", tmp_path / "win.mp4"
    live_inference.main(["--checkpoint", tiny["world"], "--start", tiny["npz"], "--start_index", "3",
                         "--scale", "2", "--record", str(rec), "--screenshot", str(shot)])
    assert calls["n"] == 7 and not pygame.display.get_init()
    assert pygame.image.load(str(shot)).get_size()[0] == 256
    side = json.loads((tmp_path / "win.json").read_text())
    # frames: start, 3 steps (W held), a paused loop, 1 step, reset (start frame), 1 step, then Q
    assert side["resets"] == [0, 5] and side["num_frames"] == 7
    assert side["actions"][1][A["move_z"]] == 1 and side["actions"][2][A["yaw"]] == pytest.approx(0.3)
    assert count_frames(str(rec))[0] == 7


def test_sandbox_play_runs_and_quits(tmp_path, monkeypatch):
    from sandbox import play
    scripted_events(monkeypatch, {0: [key(pygame.K_d)], 1: [key(pygame.K_h)], 3: [key(pygame.K_q)]})
    shot = tmp_path / "play.png"
    play.main(["--width", "64", "--height", "36", "--scale", "2", "--screenshot", str(shot)])
    assert pygame.image.load(str(shot)).get_size()[0] == 128


def test_overlapped_decode_gives_the_same_session(tiny, tmp_path):
    """--overlap decodes in a worker thread one step behind: the same frames, actions and count."""
    import av

    import live_inference
    runs = {}
    for overlap in ("false", "true"):
        out = tmp_path / f"overlap_{overlap}.mp4"
        live_inference.main(["--checkpoint", tiny["world"], "--start", tiny["npz"], "--headless", "--frames", "6",
                             "--overlap", overlap, "--record", str(out), "--threads", "1"])
        with av.open(str(out)) as c:
            frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
        runs[overlap] = (frames, json.loads(out.with_suffix(".json").read_text())["actions"])
    assert len(runs["true"][0]) == 6
    np.testing.assert_array_equal(runs["true"][0], runs["false"][0])
    assert runs["true"][1] == runs["false"][1]


def test_window_scales_without_blur_and_follows_resizes(tmp_path):
    from keymap import Window
    win = Window((4, 8), scale=10, hud_lines=1)
    frame = np.zeros((4, 8, 3), np.uint8)
    frame[:, ::2] = 255  # one-pixel stripes: any smoothing would make grey
    win.draw([frame], ["hud"])
    pix = pygame.surfarray.array3d(win.screen)  # (W, H, 3)
    assert set(np.unique(pix[:80, :40])) <= {0, 255}
    assert (pix[5, 5] == 255).all() and (pix[15, 5] == 0).all()  # 10x10 blocks
    pygame.display.set_mode((200, 120), pygame.RESIZABLE)  # what a user's resize does
    win.draw([frame], ["hud"])
    assert win.screen.get_size() == (200, 120) and win._rect.width <= 200
    win.close()


def decoded_frames(path):
    import av
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_recorded_session_replays_frame_for_frame(tiny, tmp_path, monkeypatch):
    """A windowed session (a non-default start, seed and sampler, a sampling key, a reset) replayed
    from its sidecar alone gives the same frames, bit for bit; --record keeps existing files."""
    import live_inference
    from utils import BadFile
    script = {0: [key(pygame.K_w)], 2: [key(pygame.K_RIGHTBRACKET)], 3: [key(pygame.K_r)], 5: [key(pygame.K_q)]}
    scripted_events(monkeypatch, script)
    rec = tmp_path / "session.mp4"
    live_inference.main(["--checkpoint", tiny["world"], "--start", tiny["npz"], "--start_index", "-2",
                         "--context", "2", "--seed", "7", "--temperature", "0.7", "--top_k", "5", "--scale", "2",
                         "--record", str(rec)])
    monkeypatch.undo()
    side = json.loads((tmp_path / "session.json").read_text())
    assert side["resets"] == [0, 4] and [s[0] for s in side["sampling"]] == [0, 3] and side["num_frames"] == 7
    replay = tmp_path / "replay.mp4"
    live_inference.main(["--checkpoint", tiny["world"], "--headless", "--actions", str(tmp_path / "session.json"),
                         "--record", str(replay)])
    np.testing.assert_array_equal(decoded_frames(replay), decoded_frames(rec))
    again = json.loads((tmp_path / "replay.json").read_text())
    assert again["actions"] == side["actions"] and again["sampling"] == side["sampling"]
    assert again["checkpoint_hash"] == side["checkpoint_hash"]
    other = tmp_path / "other_seed.mp4"  # a flag given explicitly wins over the recording
    live_inference.main(["--checkpoint", tiny["world"], "--headless", "--actions", str(tmp_path / "session.json"),
                         "--record", str(other), "--seed", "8"])
    assert not np.array_equal(decoded_frames(other), decoded_frames(rec))
    with pytest.raises(BadFile, match="already exists; pass --overwrite"):
        live_inference.main(["--checkpoint", tiny["world"], "--headless", "--frames", "2", "--record", str(replay)])
    live_inference.main(["--checkpoint", tiny["world"], "--headless", "--frames", "2", "--record", str(replay),
                         "--overwrite"])
    assert len(decoded_frames(replay)) == 2


def test_cpu_precision_is_resolved_recorded_and_replayed(tiny, tmp_path):
    """--precision auto becomes fp32 or bf16 (bf16 only on CPUs with AMX), is written to the sidecar,
    and a replay of a bf16 recording runs in bf16 again, frame for frame."""
    import live_inference
    from utils import cpu_has_fast_bf16
    auto = tmp_path / "auto.mp4"
    live_inference.main(["--checkpoint", tiny["world"], "--headless", "--frames", "3", "--record", str(auto)])
    expected = "bf16" if cpu_has_fast_bf16() else "fp32"
    assert json.loads((tmp_path / "auto.json").read_text())["config"]["precision"] == expected
    rec = tmp_path / "bf16.mp4"
    live_inference.main(["--checkpoint", tiny["world"], "--headless", "--frames", "4", "--precision", "bf16",
                         "--record", str(rec)])
    assert json.loads((tmp_path / "bf16.json").read_text())["config"]["precision"] == "bf16"
    replay = tmp_path / "replay.mp4"
    live_inference.main(["--checkpoint", tiny["world"], "--headless", "--actions", str(tmp_path / "bf16.json"),
                         "--record", str(replay)])
    assert json.loads((tmp_path / "replay.json").read_text())["config"]["precision"] == "bf16"
    np.testing.assert_array_equal(decoded_frames(replay), decoded_frames(rec))
    with pytest.raises(SystemExit, match="--precision must be"):
        live_inference.main(["--checkpoint", tiny["world"], "--headless", "--frames", "1", "--precision", "fp16"])


def test_play_tells_the_model_which_inputs_are_its_own_samples(tiny):
    """The context and the start frame go in as real frames (level 0); every later input is a
    sample (the checkpoint's sampled_level), through one tensor, so a compiled step keeps one graph."""
    env, start = make_env(tiny)
    env.model.cfg.sampled_level = 0.4
    seen, step = [], env.step_fn

    def spy(*args, corruption=None, **kw):
        seen.append(float(corruption))
        return step(*args, corruption=corruption, **kw)
    env.step_fn = spy
    try:
        env.reset(start)
        warm = len(seen)
        for _ in range(3):
            env.step(act.make_action(move_z=1))
        assert warm == len(start.tokens) - 1 and seen[:warm] == [0.0] * warm
        assert seen[warm:] == pytest.approx([0.0, 0.4, 0.4])
        env.reset()
        env.step(act.make_action(move_z=1))
        assert seen[-1] == 0.0
    finally:
        env.model.cfg.sampled_level = 0.0


def test_guidance_needs_a_checkpoint_trained_with_action_dropout(tiny, capsys):
    import live_inference
    from utils import usable_guidance
    assert usable_guidance(1.25, {"config": {"action_dropout": 0.1}}, "x") == 1.25
    assert usable_guidance(1.25, {"config": {}}, "x") == 1.0 and "without action dropout" in capsys.readouterr().out
    env, _ = live_inference.load_env(live_inference.parse_config(live_inference.Config,
                                                                 ["--checkpoint", tiny["world"], "--guidance", "2"]))
    assert env.guidance == 1.0  # the tiny checkpoint's config has no action dropout


def test_key_guidance_reaches_every_play_step(tiny):
    """--key_guidance: play's predicting step runs with it (the model's three-pass guided step), and a model trained
    without action dropout plays unguided whatever it asks."""
    import live_inference
    from live_inference import WorldModelEnv
    env = WorldModelEnv(tiny["model"], tiny["tok"], Sampler(1.0, 50, 1.0), "cpu", seed=0, guidance=2.0,
                        key_guidance=3.0)
    _, start = make_env(tiny)
    seen, step = [], env.step_fn

    def spy(*args, **kw):
        seen.append((kw.get("guidance"), kw.get("key_guidance")))
        return step(*args, **kw)
    env.step_fn = spy
    env.reset(start)
    frame = env.step(act.make_action(move_z=1, yaw=0.5))
    assert seen[-1] == (2.0, 3.0) and np.isfinite(np.asarray(frame, dtype=np.float64)).all()  # the context is unguided
    cfg = live_inference.parse_config(live_inference.Config, ["--checkpoint", tiny["world"], "--guidance", "2",
                                                              "--key_guidance", "3"])
    env, _ = live_inference.load_env(cfg)
    assert env.guidance == 1.0 and env.key_guidance == 1.0  # the tiny checkpoint has no action dropout


def test_replay_of_a_recording_made_before_keep_above_samples_every_cell():
    import live_inference
    cfg = live_inference.Config()
    assert cfg.keep_above < 1.0  # play keeps the cells the model is sure of by default
    old = live_inference.replay_config(cfg, {"config": {"seed": 3, "top_k": 50}}, "old.mp4")
    assert old.keep_above == 1.0 and old.seed == 3
    new = live_inference.replay_config(cfg, {"config": {"seed": 3, "keep_above": 0.4}}, "new.mp4")
    assert new.keep_above == 0.4
    mine = live_inference.replay_config(dataclasses.replace(cfg, keep_above=0.6), {"config": {}}, "old.mp4")
    assert mine.keep_above == 0.6  # given on the command line: wins
