"""evaluate.py / eval_metrics.py: each metric on hand-made cases with a known answer, the action
tests on models that do / do not use actions, the sandbox re-render, and one end-to-end run."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import actions as act  # noqa: E402
import eval_metrics as M  # noqa: E402


def textured(h=72, w=128, seed=0):
    """A smooth random RGB image (blurred noise): trackable when shifted."""
    import cv2
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3)).astype(np.float32)
    img = cv2.GaussianBlur(img, (0, 0), 2.0)
    img = (img - img.min()) / (img.max() - img.min()) * 255
    return img.astype(np.uint8)


# ----------------------------------------------------------------------------- image metrics

def test_identical_frames_psnr_inf_ssim_one():
    a = textured()
    assert np.isinf(M.psnr(a, a)[0])
    assert M.mean_psnr(M.psnr(a, a)) == M.PSNR_CAP_DB
    assert M.ssim(a, a)[0] == pytest.approx(1.0, abs=1e-9)
    assert M.mean_abs_diff(a, a)[0] == 0


def test_pooled_psnr_counts_identical_frames_as_zero_error_not_100_db():
    a = np.zeros((4, 8, 8, 3), np.uint8)
    b = a.copy()
    b[1:] = 10  # one identical frame, three with mse 100
    per_frame = M.psnr(a, b)
    assert M.mean_psnr(per_frame) > 45  # the capped mean is dominated by the identical frame
    assert M.pooled_psnr(per_frame) == pytest.approx(10 * np.log10(255 ** 2 / 75))
    assert M.pooled_psnr(np.stack([per_frame, per_frame[::-1]], 1), axis=0) == pytest.approx([10 * np.log10(255 ** 2 / 75)] * 2)


def test_psnr_known_value_and_ssim_orders_noise():
    a = np.zeros((2, 8, 8, 3), np.uint8)
    b = a.copy()
    b[..., :] = 10  # mse = 100 -> 10 log10(255^2 / 100)
    assert M.psnr(a, b) == pytest.approx([10 * np.log10(255 ** 2 / 100)] * 2)
    img = textured()
    rng = np.random.default_rng(1)
    small = np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)
    big = np.clip(img + rng.normal(0, 40, img.shape), 0, 255).astype(np.uint8)
    assert 1 > M.ssim(img, small)[0] > M.ssim(img, big)[0]
    assert M.psnr(img, small)[0] > M.psnr(img, big)[0]


# ----------------------------------------------------------------------------- codes and logits

def test_code_stats_hand_made_grid():
    grid = torch.tensor([[[0, 0], [1, 1]], [[5, 5], [5, 5]], [[0, 1], [2, 3]]])  # (3, 2, 2)
    uniq, ent = M.code_stats(grid)
    assert uniq.tolist() == [2, 1, 4]
    assert ent == pytest.approx([1.0, 0.0, 2.0])


def test_kl_zero_for_equal_logits_positive_otherwise():
    torch.manual_seed(0)
    a = torch.randn(2, 10, 3, 4)
    assert M.logit_kl(a, a) == pytest.approx([0, 0], abs=1e-12)
    assert (M.logit_kl(a, a + torch.randn_like(a)) > 0).all()
    s = M.logit_stats(torch.zeros(1, 10, 3, 4))  # uniform: entropy ln K, confidence 1/K
    assert s["entropy"][0] == pytest.approx(np.log(10))
    assert s["confidence"][0] == pytest.approx(0.1)


# ----------------------------------------------------------------------------- shift and direction

@pytest.mark.parametrize("dx,dy", [(5, 0), (-7, 0), (0, 4), (0, -3), (3, -2)])
def test_estimate_shift_recovers_translation(dx, dy):
    big = textured(120, 180, seed=3)
    src = big[24:96, 26:154]
    dst = big[24 - dy:96 - dy, 26 - dx:154 - dx]  # content moved by (+dx, +dy)
    assert M.estimate_shift(src, dst, max_shift=12) == (dx, dy)


def test_identical_or_unrelated_frames_give_zero_shift():
    a = textured()
    assert M.estimate_shift(a, a, 8) == (0, 0)
    rng = np.random.default_rng(0)  # unrelated noise: no shift explains it, so no direction
    n1, n2 = (rng.integers(0, 256, (72, 128, 3)).astype(np.uint8) for _ in range(2))
    assert M.estimate_shift(n1, n2, 8) == (0, 0)
    flat = np.full((72, 128, 3), 90, np.uint8)
    assert M.estimate_shift(flat, flat, 8) == (0, 0)


def test_direction_scores():
    assert M.direction_accuracy([0, 0], [-3, -1], -1) == 1.0
    assert M.direction_accuracy([0, 0], [0, 0], -1) == 0.0  # no response is not "right"
    assert M.direction_skill(0.5) == 0.0 and M.direction_skill(1.0) == 1.0
    a = torch.randn(2, 10, 3, 4)
    assert M.logit_js(a, a) == pytest.approx([0, 0], abs=1e-6)
    peaked = torch.full((1, 10, 1, 1), -100.0)
    other = peaked.clone()
    peaked[0, 0], other[0, 1] = 100.0, 100.0  # disjoint certain predictions: the maximum, 1
    assert M.logit_js(peaked, other)[0] == pytest.approx(1.0, abs=1e-5)


def test_inverse_dynamics_labels_and_scores():
    a = torch.from_numpy(np.stack([act.make_action(yaw=0.5, move_z=1), act.make_action(pitch=-0.5, move_x=-1, jump=1),
                                   act.make_action()]))
    keys, cam = M.action_labels(a)
    assert keys.tolist() == [[1, 0, 0, 0, 0, 0, 0], [0, 0, 1, 0, 1, 0, 0], [0] * 7]
    assert cam.tolist() == [[2, 1], [1, 0], [1, 1]]
    assert M.keyboard_f1(keys.numpy(), keys.numpy()) == 1.0
    assert M.keyboard_f1(np.zeros((3, 7)), keys.numpy()) == 0.0
    assert M.camera_accuracy(cam.numpy(), cam.numpy()) == 1.0
    assert M.camera_accuracy(np.ones((3, 2)), cam.numpy()) == 0.0  # "no turn" everywhere scores 0 on turns


def test_match_volume_finds_the_shift():
    a = torch.randint(0, 1000, (1, 6, 8), generator=torch.Generator().manual_seed(0))
    b = torch.roll(a, shifts=1, dims=2)  # content moved one cell right
    vol = M.match_volume(a, b, radius=1)  # channels in (dy, dx) order: (0, +1) is channel 5
    assert vol.shape == (1, 9, 6, 8)
    assert vol[0, 5, :, :-1].all()
    assert vol[0, 4].sum() < 6 * 8 / 2  # "nothing moved" matches far fewer cells


# ----------------------------------------------------------------------------- action tests on fake models

class PaletteTokenizer:
    """Codes -> 4x4-pixel cells of a fixed random colour per code (a stand-in for vq_vae)."""

    def __init__(self, codebook_size=64, grid=(18, 32), cell=4):
        self.codebook_size, self.grid, self.cell = codebook_size, grid, cell
        self.palette = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (codebook_size, 3)).astype(np.uint8))

    def decode(self, codes):
        img = self.palette[codes.long().cpu()]                                    # (B, h, w, 3)
        return img.repeat_interleave(self.cell, 1).repeat_interleave(self.cell, 2)


class ShiftModel(torch.nn.Module):
    """Next frame = this frame rolled by the camera action: yaw right moves content left by 2 cells
    per unit of |yaw| >= 0.25, pitch down moves it up; W/S swap two code halves. respond=False
    ignores the action entirely (copies the frame)."""

    def __init__(self, codebook_size=64, respond=True):
        super().__init__()
        self.K, self.respond = codebook_size, respond

    def init_state(self, batch, device):
        return None

    def step(self, tokens, action, state, guidance=1.0, sampled=False, one_shift=False, key_guidance=None):
        out = []
        for x, a in zip(tokens, action):
            if self.respond:
                dx = -2 * int(np.sign(a[0].item())) if abs(a[0].item()) >= 0.25 else 0
                dy = -2 * int(np.sign(a[1].item())) if abs(a[1].item()) >= 0.25 else 0
                x = torch.roll(x, shifts=(dy, dx), dims=(0, 1))
                if a[3].item() < -0.5:  # "back": a different, deterministic code pattern
                    x = (x + self.K // 2) % self.K
            out.append(x)
        x = torch.stack(out)
        return torch.nn.functional.one_hot(x, self.K).permute(0, 3, 1, 2).float() * 50.0, state


def fake_episodes(n=2, length=12, grid=(18, 32), K=64):
    g = torch.Generator().manual_seed(0)
    eps = []
    for i in range(n):
        frame = torch.randint(0, K, grid, generator=g)
        eps.append(dict(file=f"t{i}.npz", t0=0, frame_index=np.arange(length),
                        tokens=frame.expand(length, *grid).clone(), actions=torch.zeros(length - 1, 7)))
    return eps


@pytest.mark.parametrize("respond", [True, False])
def test_action_tests_on_models_that_do_and_do_not_respond(respond):
    import evaluate
    from sampling import Sampler
    cfg = evaluate.Config(context=3, cf_steps=2, cf_magnitude=0.5, max_shift=12)
    res, frames, _ = evaluate.action_tests(cfg, ShiftModel(respond=respond), PaletteTokenizer(), fake_episodes(),
                                           Sampler(), torch.device("cpu"), [None, None])
    if respond:
        assert res["yaw_direction_accuracy"] == 1.0 and res["pitch_direction_accuracy"] == 1.0
        assert res["mean_dx_yaw_right_minus_left"] == pytest.approx(-16.0)  # 2 cells x 4 px, both ways
        assert res["action_response"] > 0.5
        assert res["controllability"] > 0.8
    else:
        assert res["yaw_direction_accuracy"] == 0.0 and res["pitch_direction_accuracy"] == 0.0
        assert res["action_response"] == 0.0 and res["controllability"] == 0.0
        assert all(v == 0.0 for v in res["pixel_difference"].values())


def test_collapse_test_counts_codes():
    import evaluate
    cfg = evaluate.Config(context=3, collapse_steps=5)
    from sampling import Sampler
    res = evaluate.collapse_test(cfg, ShiftModel(respond=False), fake_episodes(), torch.device("cpu"),
                                 Sampler(keep_above=0.3))
    truth = res["ground_truth"]["step0"]
    assert res["steps"] == 5
    assert "rollout sampler (T=1.00 top-k=50 top-p=1.00 keep-above=0.30)" in res["rules"]
    for rule in res["rules"].values():  # a copying model keeps exactly the truth's codes
        assert rule["step0"] == rule["step1"] == rule["steps10_19"] == truth


# ----------------------------------------------------------------------------- sandbox data, end to end

def run(cmd, **kw):
    env = dict(os.environ, WANDB_MODE="disabled", SDL_VIDEODRIVER="dummy")
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Sandbox GF clips (64x36) -> an untrained tiny tokenizer -> tokens -> a tiny world-model checkpoint."""
    import dataclasses
    from model_convGru import WorldModel, WorldModelConfig
    from utils import save_checkpoint
    from vq_vae.model import VQVAE, VQVAEConfig
    from vq_vae.tokenizer import export_tokenizer
    d = tmp_path_factory.mktemp("eval")
    run([sys.executable, "-m", "sandbox.generate", "--format", "gamefactory", "--out", str(d / "gf"), "--clips", "3",
         "--frames", "30", "--width", "64", "--height", "36", "--seed", "0"])
    torch.manual_seed(0)
    tok_path = str(d / "tokenizer.pt")
    export_tokenizer(VQVAE(VQVAEConfig(channels=[8, 16], res_blocks=[0, 0], levels=[4, 4])), (36, 64), tok_path)
    run([sys.executable, "preprocess.py", "--input", str(d / "gf"), "--tokenizer", tok_path, "--out", str(d / "tokens"),
         "--workers", "0"])
    with open(d / "tokens" / "manifest.json") as f:
        manifest = json.load(f)
    tok = manifest["tokenizer"]
    mcfg = WorldModelConfig(codebook_size=tok["codebook_size"], grid=tuple(tok["grid"]), action_dim=7,
                            embed_dim=8, hidden=8, action_hidden=16, idm_hidden=8)
    save_checkpoint({"model_args": dataclasses.asdict(mcfg), "model": WorldModel(mcfg).state_dict(),
                     "config": {"val_fraction": 0.34, "split_seed": 0}, "tokenizer": tok, "step": 0}, str(d / "world"), 0)
    return d, manifest


def test_sandbox_rerender_reproduces_recorded_frames(tiny):
    """render(recorded states) == rollout from the first state with the recorded raw actions, and
    evaluate.rerender (what the report uses) gives the same frames and states."""
    import evaluate
    from sandbox import World, load_groundtruth, render, rollout
    d, manifest = tiny
    entry = manifest["trajectories"][0]
    gt = load_groundtruth(entry["groundtruth"])
    world = World(gt["seed"])
    n = 12
    recorded = np.stack([render(world, s, gt["width"], gt["height"]) for s in gt["states"][:n]])
    frames, _ = rollout(world, gt["states"][0], gt["raw_actions"][:n - 1], gt["dt"], gt["width"], gt["height"])
    assert np.array_equal(frames, recorded)
    frames2, states = evaluate.rerender(world, gt, 3, n - 4, 1, (gt["height"], gt["width"]))
    assert np.array_equal(frames2, recorded[3:n])
    assert [s.to_dict() for s in states] == [s.to_dict() for s in gt["states"][3:n]]


def test_untrained_has_the_same_shape_and_fresh_weights(tiny):
    import evaluate
    d, _ = tiny
    cfg = evaluate.Config(checkpoint=str(d / "world"), data=str(d / "tokens"))
    trained = evaluate.load_everything(cfg, torch.device("cpu"))[0]
    fresh = evaluate.load_everything(evaluate.Config(checkpoint=cfg.checkpoint, data=cfg.data, untrained=True, seed=1),
                                     torch.device("cpu"))[0]
    assert fresh.cfg == trained.cfg and not fresh.training
    a, b = trained.state_dict(), fresh.state_dict()
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)


def test_guided_teacher_forcing_steps_like_play_and_is_the_forward_at_g1(tiny):
    """Step by step with guidance 1 gives the batched forward's figures; guidance 3 changes them
    (the action moves this random model's logits)."""
    import evaluate
    from datasets import TokenWindowDataset
    d, manifest = tiny
    cfg = evaluate.Config(checkpoint=str(d / "world"), data=str(d / "tokens"))
    model, _, _, tokenizer, _ = evaluate.load_everything(cfg, torch.device("cpu"))
    ds = TokenWindowDataset(str(d / "tokens"), 6, split="train", val_fraction=0.34, seed=0)
    tokens, actions = (torch.stack(x) for x in zip(*(ds[i] for i in range(3))))
    K = manifest["tokenizer"]["codebook_size"]
    with torch.no_grad():
        ref = evaluate.teacher_forced(model(tokens, actions), tokens, actions, K, tokenizer, 8)
        g1 = evaluate.guided_teacher_forced(model, tokens, actions, 1.0, K, tokenizer, 8)
        g3 = evaluate.guided_teacher_forced(model, tokens, actions, 3.0, K, tokenizer, 8)
        k3 = evaluate.guided_teacher_forced(model, tokens, actions, 3.0, K, tokenizer, 8, key_guidance=3.0)
        k9 = evaluate.guided_teacher_forced(model, tokens, actions, 3.0, K, tokenizer, 8, key_guidance=9.0)
    assert k3["cross_entropy"] == g3["cross_entropy"] and k3["key_guidance"] == 3.0
    assert abs(k9["cross_entropy"] - g3["cross_entropy"]) > 1e-6 and k9["key_guidance"] == 9.0
    for key in ("accuracy", "cross_entropy", "argmax_decoded_psnr_pooled", "copy_last_frame_accuracy"):
        assert g1[key] == pytest.approx(ref[key], abs=1e-4), key
    assert g3["guidance"] == 3.0 and g3["copy_last_frame_accuracy"] == ref["copy_last_frame_accuracy"]
    assert abs(g3["cross_entropy"] - ref["cross_entropy"]) > 1e-5  # near-uniform logits: a small but real change


def test_end_to_end_writes_report(tiny):
    import av
    d, _ = tiny
    untrained = "false"
    out = d / "report"
    run([sys.executable, "evaluate.py", "--checkpoint", str(d / "world"), "--data", str(d / "tokens"), "--out", str(out),
         "--horizons", "3,6", "--episodes", "2", "--context", "3", "--collapse_steps", "12", "--cf_steps", "2",
         "--sandbox_steps", "3", "--idm_steps", "3", "--videos", "1", "--max_shift", "6", "--untrained", untrained])
    with open(out / "report.json") as f:
        rep = json.load(f)
    hl = rep["headline"]
    for key in ("psnr@3", "psnr@6", "ssim@6", "code_diversity_ratio", "controllability", "tf_cross_entropy",
                "unique_codes_step1_argmax", "idm_keyboard_f1_rollout", "psnr_sandbox@3", "ws_assignment_accuracy",
                "psnr_pooled@1", "psnr_pooled_copy_baseline@3", "tf_argmax_decoded_psnr_pooled", "yaw_shift_vs_truth"):
        assert key in hl and isinstance(hl[key], (int, float)), key
    assert 0.0 <= hl["controllability"] <= 1.0
    assert 0.0 <= hl["ws_identical_fraction"] <= 1.0 - hl["ws_assignment_accuracy"] + 1e-9  # identical items never score
    assert rep["untrained"] is False
    assert rep["rollout"]["sandbox"]["max_state_error"] == 0.0  # the re-simulation follows the recording exactly
    assert rep["action"]["sandbox"]["truth_yaw_direction_accuracy"] == 1.0  # conventions + shift estimator agree
    truth = rep["action"]["sandbox"]  # yaw right moves the true content left, pitch down moves it up
    assert truth["truth_mean_dx_yaw_right_minus_left"] < 0 and truth["truth_mean_dy_pitch_down_minus_up"] < 0
    assert hl["yaw_shift_vs_truth"] == pytest.approx(rep["action"]["mean_dx_yaw_right_minus_left"]
                                                     / truth["truth_mean_dx_yaw_right_minus_left"])
    md = (out / "report.md").read_text()
    for name, path in rep["plots"].items():
        assert (out / path).stat().st_size > 0 and f"]({path})" in md
    with av.open(str(out / rep["videos"][0])) as c:
        assert sum(1 for _ in c.decode(video=0)) == 3 + 6  # context + horizon frames


def test_action_tests_report_the_learned_camera_motion():
    import evaluate
    from model_convGru import WorldModel, WorldModelConfig
    from sampling import Sampler
    m = WorldModel(WorldModelConfig(codebook_size=64, grid=(18, 32), action_dim=7, embed_dim=8, hidden=8,
                                    action_hidden=8, idm_hidden=8, shift_radius=3, zoom_range=0.2)).eval()
    with torch.no_grad():  # constant head: every action shifts 1.5 cells right, 0.5 up, and zooms in by 5 %
        m.shift[-1].bias.copy_(torch.tensor([3 * math.atanh(1.5 / 3), 3 * math.atanh(-0.5 / 3),
                                             0.2 * math.atanh(math.log(1.05) / 0.2)]))
    cfg = evaluate.Config(context=3, cf_steps=1, cf_magnitude=0.5, max_shift=12)
    res, _, _ = evaluate.action_tests(cfg, m, PaletteTokenizer(), fake_episodes(), Sampler(), torch.device("cpu"),
                                      [None, None])
    assert set(res["learned_zoom_percent"]) == set(evaluate.CF_ACTIONS)
    assert res["learned_shift_dx_cells"]["yaw_right"] == pytest.approx(1.5, abs=1e-5)
    assert res["learned_shift_dy_cells"]["back"] == pytest.approx(-0.5, abs=1e-5)
    assert res["learned_zoom_percent"]["forward"] == pytest.approx(5.0, abs=1e-3)


def test_sharpness_ratio_drops_when_blurred():
    import cv2
    img = textured()
    blurred = cv2.GaussianBlur(img, (7, 7), 2.0)
    s = M.sharpness(np.stack([img, blurred, np.full_like(img, 90)]))
    assert s[0] > s[1] > s[2] == 0.0


def test_border_errors_find_a_frame_around_the_picture():
    from vq_vae.metrics import border_errors
    x = torch.zeros(1, 3, 12, 20)
    y = x.clone()
    y[:, :, 0] = y[:, :, -1] = 0.5  # top and bottom rows off by 0.25 of the range
    err = border_errors(x, y)[0]
    assert err[2] == 0 and err[1] == pytest.approx(0.25 * 255, rel=1e-4) and err[0] > 0.25 * 255 * 0.5
