"""Tokenizer tests: shapes, determinism, metrics on hand-made cases, export/reload, gradients,
LPIPS plumbing, and vq_vae.train end to end (with exact resume) on a tiny synthetic GF dataset."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from utils import file_hash
from vq_vae import load_tokenizer
from vq_vae.metrics import codebook_stats, psnr, ssim
from vq_vae.model import FSQ, VQVAE, VQVAEConfig
from vq_vae.tokenizer import export_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W = 72, 128
TINY = dict(channels=[8, 16, 16], res_blocks=[0, 1, 1])


def blocky_frames(n, seed=0, h=H, w=W):
    """Random coloured 8x8-pixel blocks, shifted a little per frame: uint8 (n, h, w, 3)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    return np.stack([base[i % 8:i % 8 + h, (2 * i) % 8:(2 * i) % 8 + w] for i in range(n)])


def tiny_model(quantizer, seed=0):
    torch.manual_seed(seed)
    return VQVAE(VQVAEConfig(quantizer=quantizer, codebook_size=64, code_dim=8, **TINY))


@pytest.fixture(params=["fsq", "ema"])
def exported(request, tmp_path):
    model = tiny_model(request.param)
    model.train()
    model(torch.rand(2, 3, H, W) * 2 - 1)  # one training forward: EMA k-means init runs
    path = str(tmp_path / "tokenizer.pt")
    export_tokenizer(model.eval(), (H, W), path)
    return model, path


def test_round_trip_shapes_and_dtypes(exported):
    model, path = exported
    tok = load_tokenizer(path, "cpu")
    assert tok.grid == (18, 32) and tok.frame_size == (H, W) and tok.codebook_size == model.num_codes
    assert tok.hash == file_hash(path) and tok.path == path
    frames = blocky_frames(3)
    codes = tok.encode(frames)
    assert codes.dtype == torch.int64 and codes.shape == (3, 18, 32)
    assert 0 <= codes.min() and codes.max() < tok.codebook_size
    out = tok.decode(codes)
    assert out.dtype == torch.uint8 and out.shape == (3, H, W, 3)
    assert torch.equal(tok.encode(torch.from_numpy(frames)), codes)  # numpy and torch inputs agree
    soft = tok.decode_soft(torch.softmax(torch.randn(2, tok.codebook_size, 18, 32), 1))
    assert soft.dtype == torch.float32 and soft.shape == (2, 3, H, W)
    assert soft.min() >= -1 and soft.max() <= 1
    with pytest.raises(ValueError, match="128x72"):
        tok.encode(np.zeros((1, 64, 64, 3), np.uint8))


def test_encode_decode_deterministic(exported):
    _, path = exported
    tok = load_tokenizer(path)
    frames = blocky_frames(4, seed=1)
    c1, c2 = tok.encode(frames), tok.encode(frames)
    assert torch.equal(c1, c2)
    assert torch.equal(tok.decode(c1), tok.decode(c2))
    assert torch.equal(tok.encode(frames[:2]), c1[:2])  # batch composition does not change codes


def test_reload_gives_identical_outputs(exported):
    model, path = exported
    tok_a, tok_b = load_tokenizer(path), load_tokenizer(path)
    frames = blocky_frames(2, seed=2)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        direct = model.eval().encode(x)
    assert torch.equal(tok_a.encode(frames), direct)
    assert torch.equal(tok_a.decode(direct), tok_b.decode(direct))
    for k, v in model.state_dict().items():
        assert torch.equal(tok_a.model.state_dict()[k], v), k


def test_decode_soft_matches_hard_decode_and_has_gradient(exported):
    _, path = exported
    tok = load_tokenizer(path)
    codes = tok.encode(blocky_frames(2, seed=3))
    onehot = torch.nn.functional.one_hot(codes, tok.codebook_size).permute(0, 3, 1, 2).float()
    hard = tok.decode(codes).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert (tok.decode_soft(onehot) - hard).abs().max() < 2 / 127.5 + 1e-4  # same up to uint8 rounding
    logits = torch.randn(1, tok.codebook_size, 18, 32, requires_grad=True)
    tok.decode_soft(torch.softmax(logits, 1)).mean().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_sticky_encoding_keeps_near_codes_and_bounds_the_loss(exported):
    model, path = exported
    tok = load_tokenizer(path)
    # one frame plus small noise: the plain codes flip between near-duplicates, the sticky ones less
    base = blocky_frames(1, seed=4)
    rng = np.random.default_rng(0)
    frames = np.clip(base.astype(np.int16) + rng.integers(-6, 7, (12,) + base.shape[1:]), 0, 255).astype(np.uint8)
    if model.cfg.quantizer != "ema":
        with pytest.raises(ValueError, match="EMA"):
            tok.encode(frames, sticky=0.05)
        return
    plain = tok.encode(frames)
    assert torch.equal(tok.encode(frames, sticky=0.0), plain)
    sticky = tok.encode(frames, sticky=0.05, batch_size=5)  # batches carry the codes across
    assert torch.equal(sticky[0], plain[0])  # nothing to keep before the first frame
    kept = lambda c: (c[1:] == c[:-1]).float().mean()
    assert kept(sticky) > kept(plain)
    # every kept code is within the margin of the best code's similarity
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        sims = model.eval().quantizer.similarities(model.encoder(x))     # (B, h, w, K)
    chosen = sims.gather(-1, sticky[..., None])[..., 0]
    assert (chosen >= sims.max(-1).values - 0.05 - 1e-6).all()
    # a huge margin keeps the first frame's codes for ever; prev sets what the first frame keeps
    assert (tok.encode(frames, sticky=10.0) == plain[0]).all()
    assert (tok.encode(frames, sticky=10.0, prev=plain[3]) == plain[3]).all()


def test_tracked_sticky_codes_move_with_the_picture():
    """sticky_track: a picture that slides one cell (4 px) left per frame keeps its codes, moved one
    cell, wherever the margin allows; in place, the sticky codes stay where they were and go stale."""
    from vq_vae.model import best_shifted_codes
    model = tiny_model("ema", seed=1).eval()
    rng = np.random.default_rng(2)
    wide = rng.integers(0, 256, (H // 8, W // 8 + 4, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    frames = np.stack([wide[:, 4 * i:4 * i + W] for i in range(4)])                  # content from the right
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        plain = model.encode(x)
        tracked = model.encode(x, sticky=0.05, track=2)
        still = model.encode(x, sticky=0.05)
        sims = model.quantizer.similarities(model.encoder(x))
    moved = lambda c: (c[1:, 2:-2, 2:-3] == c[:-1, 2:-2, 3:-2]).float().mean()  # cell x now shows x + 1
    assert moved(tracked) > 0.9 and moved(tracked) > moved(still) and moved(tracked) >= moved(plain)
    chosen = sims.gather(-1, tracked[..., None])[..., 0]
    assert (chosen >= sims.max(-1).values - 0.05 - 1e-6).all()  # every code within the margin
    # the search itself: shifting by one cell is found, and cells moved in from outside are marked -1
    best, _ = sims[1].max(-1)
    ref = best_shifted_codes(plain[0], sims[1], best, 2, 0.05)
    assert torch.equal(ref[:, :-1], plain[0][:, 1:]) and (ref[:, -1] == -1).all()


@pytest.mark.parametrize("quantizer", ["fsq", "ema"])
def test_gradient_reaches_encoder_through_quantizer(quantizer):
    model = tiny_model(quantizer).train()
    x = torch.rand(2, 3, H, W) * 2 - 1
    y, idx, aux = model(x)
    ((y - x).abs().mean() + aux).backward()
    g = model.encoder.conv_in.weight.grad
    assert g is not None and g.abs().sum() > 0


def test_pixel_shuffle_variant_keeps_grid_and_range():
    model = VQVAE(VQVAEConfig(channels=[8, 16], res_blocks=[1, 1], pixel_shuffle=True, codebook_size=32))
    assert model.cfg.downsample == 4
    y, idx, _ = model.train()(torch.rand(2, 3, H, W) * 2 - 1)
    assert y.shape == (2, 3, H, W) and idx.shape == (2, 18, 32)


def test_fsq_indices_and_codes_round_trip():
    fsq = FSQ([8, 5, 5, 5])
    assert fsq.num_codes == 1000
    codes = fsq.all_codes()  # (1000, 4) in [-1, 1]
    assert codes.shape == (1000, 4) and codes.min() >= -1 and codes.max() <= 1
    assert len({tuple(c.tolist()) for c in codes}) == 1000
    z = torch.randn(2, 4, 3, 5) * 3
    zq, idx, _ = fsq(z)
    assert torch.allclose(fsq.codes(idx).permute(0, 3, 1, 2), zq, atol=1e-6)  # index -> code agrees with forward


def test_ema_quantizer_restarts_dead_codes():
    model = VQVAE(VQVAEConfig(quantizer="ema", codebook_size=32, code_dim=8, dead_code_threshold=0.5, **TINY)).train()
    q = model.quantizer
    z = torch.randn(4, 8, 6, 6)
    q(z)
    assert bool(q.initted)
    q.cluster_size[:5] = 0.0  # pretend five codes fell out of use
    q(z)
    assert (q.cluster_size >= 0.5 * 0.9).all()  # restarted codes come back with a live count


def test_usage_and_perplexity_hand_made():
    s = codebook_stats(torch.tensor([2, 2, 0, 0]))
    assert s["usage"] == 0.5 and s["dead_codes"] == 2 and abs(s["perplexity"] - 2.0) < 1e-9
    assert abs(codebook_stats(torch.tensor([5, 5, 5, 5]))["perplexity"] - 4.0) < 1e-9
    assert abs(codebook_stats(torch.tensor([7, 0, 0, 0]))["perplexity"] - 1.0) < 1e-9
    # p = (1/2, 1/4, 1/4): entropy = 1.5 ln 2, so perplexity = 2 ** 1.5
    assert abs(codebook_stats(torch.tensor([2, 1, 1]))["perplexity"] - 2 ** 1.5) < 1e-9


def test_psnr_ssim_sanity():
    x = torch.rand(2, 3, H, W) * 2 - 1
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-5)
    smooth = torch.zeros_like(x)
    noisy = (smooth + 0.2 * torch.randn_like(x)).clamp(-1, 1)
    assert (ssim(smooth, noisy) < 0.5).all()  # noise on a flat image destroys structure
    assert (ssim(x, -x) < 0).all()  # inverted contrast: negative correlation
    assert (psnr(x, x) > 90).all()
    # 0.1 error on the [0, 1] scale everywhere = 20 dB
    assert torch.allclose(psnr(torch.zeros(1, 3, 8, 8), torch.full((1, 3, 8, 8), 0.2)), torch.tensor([20.0]), atol=1e-3)


def test_lpips_random_backbone_takes_minus_one_one_and_passes_gradient():
    lpips = pytest.importorskip("lpips")
    # pnet_rand: random backbone (no torchvision download); pretrained=False: no linear-head load
    net = lpips.LPIPS(net="alex", pretrained=False, pnet_rand=True, verbose=False)
    x = (torch.rand(2, 3, H, W) * 2 - 1).requires_grad_()
    y = torch.rand(2, 3, H, W) * 2 - 1
    assert x.min() < -0.5 and x.max() > 0.5  # the [-1, 1] range LPIPS expects, not [0, 1]
    d = net(x, y)
    assert d.shape == (2, 1, 1, 1)
    d.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- end to end

def write_gf_dataset(root, clips=3, frames=10):
    """A tiny GameFactory-format dataset of blocky synthetic frames (no sandbox needed)."""
    import av
    base = os.path.join(root, "data_2003")
    for sub in ("video", "metadata"):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    for c in range(clips):
        name = f"seed_{c}_part_1"
        with av.open(os.path.join(base, "video", name + ".mp4"), "w") as out:
            stream = out.add_stream("libx264", rate=16)
            stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
            for img in blocky_frames(frames, seed=c):
                out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
            out.mux(stream.encode())
        actions = {str(i): {"ws": 0, "ad": 0, "scs": 0, "pitch_delta": 0.0, "yaw_delta": 0.0} for i in range(frames)}
        with open(os.path.join(base, "metadata", name + ".json"), "w") as f:
            json.dump({"actions": actions}, f)


def run_train(*args, env=None):
    cmd = [sys.executable, "-m", "vq_vae.train", *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "WANDB_MODE": "disabled", **(env or {})})


def test_train_end_to_end_and_exact_resume(tmp_path):
    data = tmp_path / "data"
    write_gf_dataset(str(data))
    common = ["--data", data, "--channels", "8,16,16", "--res_blocks", "0,1,1", "--batch_size", "2",
              "--max_steps", "4", "--val_fraction", "0.34", "--log_every", "1", "--image_every", "2",
              "--ckpt_every", "2", "--keep_ckpts", "3", "--num_threads", "1", "--wandb", "off"]
    a = run_train(*common, "--out", tmp_path / "a")
    assert a.returncode == 0, a.stdout[-2000:] + a.stderr[-3000:]
    out = tmp_path / "a"
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("usage", "perplexity", "dead_codes", "psnr", "ssim", "codebook_size", "tokenizer_hash"):
        assert key in metrics
    assert "lpips" not in metrics  # never a number from a backbone without real weights
    tok = load_tokenizer(str(out / "tokenizer.pt"))
    assert tok.hash == metrics["tokenizer_hash"] and tok.grid == (18, 32)
    assert (out / "recon_final.png").exists() and (out / "metrics.jsonl").exists()
    assert "codebook/active_pct" in (out / "metrics.jsonl").read_text()

    # resume from step 2 into another folder: the final weights must match the straight run exactly
    b = run_train(*common, "--out", tmp_path / "b", "--resume", out / "ckpt_00000002.pt")
    assert b.returncode == 0, b.stdout[-2000:] + b.stderr[-3000:]
    sa = torch.load(out / "ckpt_00000004.pt", weights_only=True)
    sb = torch.load(tmp_path / "b" / "ckpt_00000004.pt", weights_only=True)
    assert sa["data_state"] == sb["data_state"]
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k

    # a resume that changes a hyperparameter is refused
    c = run_train(*common, "--out", tmp_path / "c", "--resume", out / "ckpt_00000002.pt", "--lr", "0.1")
    assert c.returncode != 0 and "lr" in (c.stdout + c.stderr)


def test_lpips_without_weights_fails_at_start_up(tmp_path):
    r = run_train("--data", tmp_path / "does_not_matter", "--out", tmp_path / "out", "--lpips_weight", "0.5",
                  env={"TORCH_HOME": str(tmp_path / "empty_torch_home")})
    assert r.returncode != 0
    msg = r.stdout + r.stderr
    assert "alexnet-owt-7be5be79.pth" in msg and "empty_torch_home" in msg and "lpips_weight 0" in msg
    assert not (tmp_path / "out" / "tokenizer.pt").exists()
