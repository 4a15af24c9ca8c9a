"""train.py on tiny synthetic token files: end to end, exact resume, DDP, start-up errors, no leak, perceptual grads,
validation metrics and strips."""
import contextlib
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import train
from actions import A, ACTION_NAMES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K, GRID = 32, (6, 8)
TINY = ["--tokenizer", "none", "--batch_size", "2", "--window", "6", "--embed_dim", "8", "--hidden", "16",
        "--action_hidden", "16", "--idm_hidden", "8", "--eval_every", "0", "--strip_every", "0", "--log_every", "1",
        "--val_fraction", "0.25", "--warmup_steps", "2", "--wandb", "off", "--rollout_schedule", "0:0,2:2"]


def make_token_data(out, n_traj=4, length=24, codebook_size=K, grid=GRID, seed=0, shift=2):
    """Token files in preprocess.py's format: a wide random 'world' of codes seen through a window
    that yaw moves sideways (yaw +1 -> content shifts by `shift` cells), so action use is learnable."""
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = grid
    trajs = []
    for i in range(n_traj):
        world = rng.integers(0, codebook_size, (h, 2 * w)).repeat(2, axis=1)
        yaw = rng.choice([-1.0, 0.0, 1.0], size=length - 1)
        actions = np.zeros((length - 1, len(ACTION_NAMES)), np.float32)
        actions[:, A["yaw"]] = yaw
        x, tokens = 0, []
        for t in range(length):
            tokens.append(world[:, (np.arange(w) + x) % world.shape[1]])
            x += int(shift * yaw[t]) if t < length - 1 else 0
        name = f"traj_{i:03d}.npz"
        np.savez(os.path.join(out, name), tokens=np.array(tokens, np.uint16), actions=actions,
                 action_mask=np.ones(len(ACTION_NAMES), np.float32), frame_index=np.arange(length),
                 raw_degrees=np.zeros((length - 1, 2), np.float32))
        trajs.append({"file": name, "length": length, "source": "gamefactory", "fps": 16.0, "source_fps": 16.0,
                      "stride": 1, "video_path": "", "groundtruth": None})
    manifest = {"version": 1, "action_names": list(ACTION_NAMES),
                "tokenizer": {"hash": "synthetic", "codebook_size": codebook_size, "grid": list(grid),
                              "frame_size": [4 * h, 4 * w], "path": ""},
                "trajectories": trajs}
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    return str(out)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_token_data(tmp_path_factory.mktemp("tokens"))


def losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss/total"] for r in map(json.loads, f) if "loss/total" in r}


def test_end_to_end_subprocess_and_loader(data, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "train.py", "--data", data, "--out", str(out), "--max_steps", "3", *TINY,
           "--eval_every", "3", "--eval_batch", "2", "--eval_context", "2", "--eval_rollout", "3"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    model, ckpt = train.load_world_model(str(out), "cpu")
    assert not model.training and ckpt["step"] == 3
    assert ckpt["model_args"]["codebook_size"] == K and tuple(ckpt["model_args"]["grid"]) == GRID
    for key in ("config", "tokenizer", "action_names", "fps", "optimizer", "scaler", "rng", "curriculum", "data"):
        assert key in ckpt
    rows = [json.loads(x) for x in open(out / "metrics.jsonl")]
    assert any("val/unique_ratio" in row and "val/action_response_yaw" in row for row in rows)
    assert any("grad/action_over_dynamics" in row for row in rows)


def test_resume_reproduces_uninterrupted_run(data, tmp_path):
    full, half = str(tmp_path / "full"), str(tmp_path / "half")
    common = ["--data", data, "--max_steps", "6", *TINY]
    train.main(common + ["--out", full])
    train.main(common + ["--out", half, "--stop_after", "3"])
    assert max(losses(half)) == 3
    train.main(common + ["--out", half, "--resume"])  # stop_after may change on resume (reported)
    a, b = losses(full), losses(half)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in (4, 5, 6):  # rollout steps (sampling) included: RNG and data position are restored
        assert a[step] == b[step], (step, a[step], b[step])
    with pytest.raises(SystemExit, match="(?s)refusing to resume.*lr: saved"):
        train.main(common + ["--out", half, "--resume", "--lr", "0.1"])
    with pytest.raises(SystemExit, match="already holds checkpoints"):
        train.main(common + ["--out", half])


def test_torchrun_two_processes_gloo(data, tmp_path):
    out = tmp_path / "ddp"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "train.py", "--data", data, "--out", str(out),
           "--max_steps", "2", "--device", "cpu", *TINY]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert sorted(p for p in os.listdir(out) if p.startswith("ckpt_")) == ["ckpt_00000002.pt"]
    assert len(torch.load(out / "ckpt_00000002.pt", weights_only=True)["rng"]) == 2


def test_resume_checkpoint_saved_before_a_model_key_existed(data, tmp_path):
    """A run saved before zoom_range existed was built without it: resuming must rebuild it that way."""
    out = tmp_path / "old"
    common = ["--data", data, "--out", str(out), *TINY]
    train.main(common + ["--max_steps", "3", "--stop_after", "2", "--zoom_range", "0"])
    path = out / "ckpt_00000002.pt"
    ckpt = torch.load(path, weights_only=True)
    del ckpt["config"]["zoom_range"], ckpt["model_args"]["zoom_range"]
    torch.save(ckpt, path)
    train.main(common + ["--max_steps", "3", "--resume"])
    model, ckpt = train.load_world_model(str(out))
    assert ckpt["step"] == 3 and ckpt["config"]["zoom_range"] == 0.0 and model.cfg.zoom_range == 0.0


def test_startup_errors(data, tmp_path):
    base = ["--max_steps", "1", *TINY]
    with pytest.raises(SystemExit, match="no manifest"):
        train.main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "a"), *base])
    bad = tmp_path / "corrupt"
    bad.mkdir()
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(SystemExit, match="not valid JSON"):
        train.main(["--data", str(bad), "--out", str(tmp_path / "b"), *base])
    # the manifest claims fewer codes than the token files use
    small = make_token_data(tmp_path / "small", n_traj=2)
    m = json.load(open(os.path.join(small, "manifest.json")))
    m["tokenizer"]["codebook_size"] = 8
    json.dump(m, open(os.path.join(small, "manifest.json"), "w"))
    with pytest.raises(SystemExit, match="codebook size 8"):
        train.main(["--data", small, "--out", str(tmp_path / "c"), *base])


def test_codebook_mismatch_with_tokenizer(tmp_path):
    """Manifest says 32 codes, the tokenizer it names has 1000: refused at start-up."""
    from vq_vae.model import VQVAE, VQVAEConfig
    from vq_vae.tokenizer import export_tokenizer
    tok_path = str(tmp_path / "tokenizer.pt")
    export_tokenizer(VQVAE(VQVAEConfig(channels=[8, 8, 8], res_blocks=[0, 0, 0])), (24, 32), tok_path)
    data = make_token_data(tmp_path / "tok", n_traj=2)
    with pytest.raises(SystemExit, match="codebook size / grid mismatch"):
        train.main(["--data", data, "--out", str(tmp_path / "o"), "--max_steps", "1", *TINY, "--tokenizer", tok_path])


def tiny_objective(perceptual="off", codebook_size=K, tokenizer=None, **kw):
    cfg = train.TrainConfig(embed_dim=8, hidden=16, action_hidden=16, idm_hidden=8, perceptual=perceptual, **kw)
    mcfg = train.WorldModelConfig(codebook_size=codebook_size, grid=GRID, action_dim=len(ACTION_NAMES),
                                  **{k: getattr(cfg, k) for k in train.MODEL_KEYS})
    torch.manual_seed(0)
    return train.Objective(train.WorldModel(mcfg), cfg, tokenizer)


def loss_and_prediction(obj, tokens, actions):
    """Move obj's weights off their initialisation, then (the training step's stats, the teacher-forced
    logits [B, T-1, K, h, w]) for the same random draws."""
    with torch.no_grad():
        for p in obj.model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    torch.manual_seed(1)
    _, stats = obj(tokens, actions, 0)
    torch.manual_seed(1)
    tf, _, _ = obj.predict(tokens, actions, 0)
    return stats, tf.detach().float()


def test_training_inputs_never_contain_future_frames():
    """Teacher forcing and rollouts: frames T0.. (the targets of the rollout) are never inputs, and the
    prediction of frame t+1 does not change when frame t+1 changes."""
    obj = tiny_objective(corruption_max=0.2, action_dropout=0.2)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, K, (2, 7, *GRID), generator=g)
    actions = torch.randn(2, 6, len(ACTION_NAMES), generator=g)
    for rollout in (0, 3):
        T0 = 6 - rollout
        torch.manual_seed(1)
        tf, ro, _ = obj.predict(tokens, actions, rollout)
        for t in range(1, 7):
            changed = tokens.clone()
            changed[:, t:] = (changed[:, t:] + 5) % K  # frame t and later
            torch.manual_seed(1)
            tf2, ro2, _ = obj.predict(changed, actions, rollout)
            # logits[:, i] predicts frame i+1 and may only see frames <= i
            torch.testing.assert_close(tf2[:, :min(t, T0)], tf[:, :min(t, T0)], rtol=0, atol=0)
            if rollout and t >= T0:
                torch.testing.assert_close(ro2, ro, rtol=0, atol=0)


def test_changed_weight_weighs_the_cells_whose_code_changes():
    """--changed_weight w: the cross-entropy is the mean over cells weighted w where the true code
    changes from frame t to t+1 and 1 where it stays, in the copy mixture's fast loss and the full one;
    w 1 is the plain mean."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, K, (3, 7, *GRID), generator=g)
    tokens[:, 1:, :, :4] = tokens[:, :-1, :, :4]
    actions = torch.randn(3, 6, len(ACTION_NAMES), generator=g)
    changed = (tokens[:, 1:] != tokens[:, :-1]).float()
    assert 0.2 < changed.mean() < 0.8
    for fast in (False, True):
        ces = {}
        for w in (1.0, 4.0):
            obj = tiny_objective(copy_prior=True, copy_mixture=True, copy_shifts=2, shift_radius=3,
                                 copy_motion="anchored_shift", changed_weight=w)
            obj.mixture_loss = fast
            stats, tf = loss_and_prediction(obj, tokens, actions)             # tf: (B, 6, K, h, w)
            nll = -tf.log_softmax(2).gather(2, tokens[:, 1:, None]).squeeze(2)  # the mixture's log-probs
            weight = 1 + (w - 1) * changed
            torch.testing.assert_close(stats["loss/ce_tf"], (nll * weight).sum() / weight.sum(), rtol=1e-5, atol=1e-6)
            ces[w] = (float(stats["loss/ce_tf"]), float((nll * changed).sum() / changed.sum()),
                      float((nll * (1 - changed)).sum() / (1 - changed).sum()))
        # the changed cells are the harder ones here: weighing them more raises the loss
        assert ces[4.0][0] > ces[1.0][0] + 0.1 and ces[1.0][1] > ces[1.0][2]


def test_copy_mixture_loss_at_the_targets_equals_the_cross_entropy_of_the_mixture():
    """Training takes the copy mixture's loss at the target codes only (Mixture.nll): the same loss,
    gradients and rollout samples as mixing every code and taking the cross-entropy."""
    obj = tiny_objective(copy_prior=True, copy_mixture=True, copy_shifts=2, shift_radius=3, copy_edges="generate",
                         copy_motion="anchored_shift", idm_pred_frames=5, shift_weight=0.5)
    with torch.no_grad():
        for p in obj.model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, K, (3, 7, *GRID), generator=g)
    tokens[:, 1:, :, :4] = tokens[:, :-1, :, :4]  # some cells keep their code: the copy terms carry mass
    actions = torch.randn(3, 6, len(ACTION_NAMES), generator=g)
    for rollout in (0, 2):
        results = []
        for fast in (False, True):
            obj.mixture_loss = fast
            torch.manual_seed(1)
            loss, stats = obj(tokens, actions, rollout)
            obj.model.zero_grad()
            loss.backward()
            results.append((stats, [p.grad.clone() for p in obj.model.parameters()]))
        (slow, g_slow), (fast, g_fast) = results
        assert fast["loss/ce"] > 0.5
        for k in slow:
            torch.testing.assert_close(fast[k], slow[k], rtol=1e-5, atol=1e-6)
        scale = max(b.abs().max() for b in g_slow)  # float rounding, relative to the largest gradient
        assert scale > 0 and all((a - b).abs().max() <= 1e-5 * scale for a, b in zip(g_fast, g_slow))
        torch.manual_seed(1)
        _, parts_ro, _ = obj.predict(tokens, actions, rollout, parts=True)
        torch.manual_seed(1)
        _, full_ro, _ = obj.predict(tokens, actions, rollout)
        if rollout:  # the same samples were fed back
            torch.testing.assert_close(parts_ro.log_probs(), full_ro.permute(0, 1, 3, 4, 2), rtol=0, atol=1e-6)


class SoftDecodeStub:
    """A differentiable stand-in for the tokenizer's decode_soft (probs -> image in [-1, 1])."""

    def __init__(self):
        torch.manual_seed(3)
        self.proj = torch.randn(3, K)

    def decode_soft(self, probs):
        img = torch.einsum("ck,bkhw->bchw", self.proj, probs)
        return torch.tanh(torch.nn.functional.interpolate(img, scale_factor=4))


@pytest.mark.parametrize("tokenizer", ["stub", "vq_vae"])
def test_perceptual_loss_gradient_reaches_world_model(tokenizer):
    if tokenizer == "stub":
        codes, decode_soft = K, SoftDecodeStub().decode_soft
    else:  # the real decoder (untrained, tiny): what train.py calls through Tokenizer.decode_soft
        from vq_vae.model import VQVAE, VQVAEConfig
        torch.manual_seed(0)
        vq = VQVAE(VQVAEConfig(channels=[8, 8, 8], res_blocks=[0, 0, 0])).requires_grad_(False)
        codes, decode_soft = vq.quantizer.num_codes, vq.decode_soft
    obj = tiny_objective(perceptual="l1", perceptual_frames=3, codebook_size=codes)
    obj.tokenizer = type("T", (), {"decode_soft": staticmethod(decode_soft)})()
    tokens = torch.randint(0, codes, (2, 4, *GRID))
    logits = obj.model(tokens, torch.randn(2, 3, len(ACTION_NAMES)))
    loss = obj.perceptual_loss(logits, tokens[:, 1:])
    loss.backward()
    head = obj.model.to_logits.weight.grad
    cells = obj.model.cells[0].wx.weight.grad
    assert head is not None and head.abs().sum() > 0
    assert cells is not None and cells.abs().sum() > 0


def test_sigterm_saves_and_exits_nonzero(data, tmp_path):
    import signal
    import time
    out = tmp_path / "sig"
    cmd = [sys.executable, "train.py", "--data", data, "--out", str(out), "--max_steps", "100000", *TINY]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not (out / "metrics.jsonl").exists():
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=240) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    model, ckpt = train.load_world_model(str(out), "cpu")
    assert ckpt["step"] >= 1


def test_nonfinite_losses_are_skipped_then_stop(data, tmp_path, monkeypatch):
    real = train.Objective.forward

    def nan_forward(self, tokens, actions, rollout):
        loss, stats = real(self, tokens, actions, rollout)
        return loss * float("nan"), stats
    monkeypatch.setattr(train.Objective, "forward", nan_forward)
    with pytest.raises(SystemExit, match="3 consecutive non-finite"):
        train.main(["--data", data, "--out", str(tmp_path / "nan"), "--max_steps", "10", "--max_bad_steps", "3", *TINY])


class PaintDecoder:
    """Stands in for the tokenizer in strip tests: code c -> a flat 2x2 patch of grey level 8*c."""

    def decode(self, tokens):
        img = (tokens.long() * 8).clamp(max=255).to(torch.uint8)
        return img.repeat_interleave(2, -2).repeat_interleave(2, -1)[..., None].expand(-1, -1, -1, 3)


def test_validation_metrics_and_strip(data, tmp_path):
    import cv2
    import validation
    from datasets import TokenWindowDataset
    cfg, _ = train.parse_args(["--data", data, "--out", str(tmp_path), *TINY, "--eval_batch", "3",
                               "--eval_context", "2", "--eval_rollout", "4"])
    ds = TokenWindowDataset(data, cfg.eval_context + cfg.eval_rollout + 1, split="all")
    model = train.WorldModel(train.WorldModelConfig(codebook_size=K, grid=GRID, action_dim=len(ACTION_NAMES), embed_dim=8,
                                        hidden=16, layers=2, action_hidden=16, idm_hidden=8))
    metrics, batch = validation.validate(model, ds, cfg, torch.device("cpu"), contextlib.nullcontext(),
                                         A["yaw"], A["move_z"])
    assert model.training  # handed back in training mode
    assert abs(metrics["val/ce_tf"] - math.log(K)) < 1.0  # untrained: near uniform over K codes
    assert 1 <= metrics["val/unique_true"] <= GRID[0] * GRID[1] and metrics["val/unique_ratio"] > 0
    assert 0 < metrics["val/entropy_true_bits"] <= math.log2(K) + 1e-6
    assert metrics["val/rollout_gap"] == pytest.approx(metrics["val/ce_rollout"] - metrics["val/ce_tf"])
    assert "val/action_response_yaw" in metrics and "val/action_response_move" in metrics
    path = validation.save_strip(model, PaintDecoder(), batch, cfg, A["yaw"], str(tmp_path / "s" / "strip.png"))
    img = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
    h, w = 2 * GRID[0], 2 * GRID[1]
    assert img.shape == (4 * h, cfg.eval_rollout * w, 3)  # truth, rollout, yaw left, yaw right
    truth = batch[0][0, cfg.eval_context + 1:]
    assert np.array_equal(img[:h], np.concatenate(list(PaintDecoder().decode(truth).numpy()), axis=1))


def test_checkpoint_records_the_token_encoding_and_anchored_shift_warns_without_tracking(tmp_path, capsys):
    """Live play encodes its start frames as the training tokens were, so the checkpoint carries the
    manifest's sticky margin and tracking; the copy that learns the shift says so on untracked codes."""
    tracked = make_token_data(tmp_path / "tracked")
    with open(os.path.join(tracked, "manifest.json")) as f:
        manifest = json.load(f)
    manifest["tokenizer"].update(sticky=0.04, sticky_track=2)
    with open(os.path.join(tracked, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    plain = make_token_data(tmp_path / "plain")
    flags = [*TINY, "--max_steps", "1", "--rollout_schedule", "0:0", "--copy_prior", "true", "--copy_mixture", "true",
             "--copy_motion", "anchored_shift", "--copy_shifts", "2", "--shift_gain", "10"]
    train.main(["--data", tracked, "--out", str(tmp_path / "a"), *flags])
    assert "sticky_track" not in capsys.readouterr().out
    model, ckpt = train.load_world_model(str(tmp_path / "a"), "cpu")
    assert model.cfg.copy_shifts == 2 and ckpt["model_args"]["copy_shifts"] == 2
    assert model.cfg.shift_gain == 10 and ckpt["model_args"]["shift_gain"] == 10
    assert ckpt["tokenizer"]["sticky"] == 0.04 and ckpt["tokenizer"]["sticky_track"] == 2
    train.main(["--data", plain, "--out", str(tmp_path / "b"), *flags])
    assert "without preprocess.py --sticky_track" in capsys.readouterr().out
    _, ckpt = train.load_world_model(str(tmp_path / "b"), "cpu")
    assert "sticky" not in ckpt["tokenizer"] and "sticky_track" not in ckpt["tokenizer"]


def test_fit_plan_shrinks_schedule_and_decay_in_proportion():
    schedule = [(0, 0), (150, 2), (300, 4)]
    assert train.fit_plan(460, schedule, 20, 1.0, 1000.0) == (460, schedule)  # all fit: unchanged
    new_max, new_schedule = train.fit_plan(460, schedule, 20, 3.0, 600.0)  # 20 + 0.92 * 600 / 3 = 204
    assert new_max == 204
    assert new_schedule == [(0, 0), (round(150 * 204 / 460), 2), (round(300 * 204 / 460), 4)]
    assert train.fit_plan(460, schedule, 20, 3.0, 600.0, curriculum=False) == (204, schedule)  # only the decay moves
    assert train.fit_plan(460, schedule, 20, 3.0, -5.0)[0] == 21  # budget already spent: one more step
    cfg = train.TrainConfig(lr=1e-2, min_lr=1e-3, warmup_steps=5, max_steps=460)
    assert math.isclose(train.get_lr(cfg, new_max, new_max), cfg.min_lr)
    assert train.get_lr(cfg, new_max, new_max) < train.get_lr(cfg, new_max) - 1e-3


def test_fit_budget_plan_is_saved_and_kept_on_resume(data, tmp_path):
    out = str(tmp_path / "fit")
    common = ["--data", data, "--out", out, *TINY, "--max_steps", "100000", "--fit_budget", "true", "--fit_curriculum", "true", "--fit_after", "2",
              "--min_lr", "0.0001", "--lr", "0.002", "--rollout_schedule", "0:0,50000:2", "--ckpt_every", "100000"]
    train.main(common + ["--time_budget_s", "6"])
    _, ckpt = train.load_world_model(out, "cpu")
    plan = ckpt["plan"]
    assert plan["fitted_at"] >= 3 and plan["planned_max_steps"] == 100000  # timed from step 1, fitted at 3, maybe again
    assert 3 < plan["max_steps"] < 100000 and ckpt["step"] <= plan["max_steps"]
    assert plan["schedule"][0] == [0, 0] and plan["schedule"][1][0] < plan["max_steps"]  # rollouts start inside the plan
    train.main(common + ["--time_budget_s", "120", "--resume"])  # the saved plan, not max_steps, ends the run
    _, ckpt = train.load_world_model(out, "cpu")
    assert ckpt["step"] == plan["max_steps"] and ckpt["plan"] == plan
    rows = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]
    last = [r for r in rows if "charts/lr" in r][-1]
    # the decay of the saved plan (a loaded machine fits only a few steps, so the last is mid-decay)
    decay = train.TrainConfig(lr=0.002, min_lr=0.0001, warmup_steps=2)
    assert last["step"] == plan["max_steps"]
    assert math.isclose(last["charts/lr"], train.get_lr(decay, plan["max_steps"] - 1, plan["max_steps"]), rel_tol=1e-3)
    assert last["charts/lr"] < 0.6 * 0.002  # not the 100000-step plan's rate


def test_shift_loss_trains_the_shift_choice():
    """shift_weight: the moved copy's shift choice gets a cross-entropy against the shift the true next
    frame's codes took; it is logged, and its gradient reaches the choice layer (zero without it)."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, K, (2, 7, *GRID), generator=g)
    actions = torch.randn(2, 6, len(ACTION_NAMES), generator=g)
    for weight in (0.0, 1.0):
        obj = tiny_objective(copy_prior=True, copy_mixture=True, copy_shifts=2, shift_weight=weight, idm_pred_frames=2)
        with torch.no_grad():  # the mixture's own gradient reaches the choice only through the moved mass
            obj.model.copy_gain.copy_(torch.tensor([0.0, -30.0, 0.0]))
        loss, stats = obj(tokens, actions, 2)
        loss.backward()
        grad = obj.model.shift_choice.weight.grad
        assert ("loss/shift" in stats) == (weight > 0)
        assert (grad is not None and grad.abs().sum() > 1e-6) == (weight > 0)


class CodeVectors:
    """A stand-in tokenizer: only the code vectors near_smoothing reads."""

    def __init__(self, k):
        self.vectors = torch.randn(k, 4, generator=torch.Generator().manual_seed(3))

    def code_vectors(self):
        return self.vectors


def test_near_smoothing_spreads_a_share_of_each_target_over_its_nearest_codes():
    """--near_smoothing s: each cell's loss is (1 - s) x -log p(target) + s / k x the sum of -log p over the
    target's k nearest codes (Euclidean on the tokenizer's code vectors), in the copy mixture's fast loss
    and the full one, weighed with --changed_weight; it needs the tokenizer."""
    vectors = CodeVectors(K).vectors
    table = train.near_codes(vectors, 3)
    order = torch.cdist(vectors, vectors).argsort(-1)
    assert torch.equal(table, torch.stack([row[row != i][:3] for i, row in enumerate(order)]))  # nearest others first
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, K, (2, 6, *GRID), generator=g)
    tokens[:, 1:, :, :4] = tokens[:, :-1, :, :4]
    actions = torch.randn(2, 5, len(ACTION_NAMES), generator=g)
    changed = (tokens[:, 1:] != tokens[:, :-1]).float()
    cfg = dict(copy_prior=True, copy_mixture=True, copy_shifts=2, shift_radius=3, copy_motion="anchored_shift",
               changed_weight=2.0, near_smoothing=0.3, near_k=3)
    for fast in (False, True):
        obj = tiny_objective(tokenizer=CodeVectors(K), **cfg)
        obj.mixture_loss = fast
        stats, tf = loss_and_prediction(obj, tokens, actions)                 # tf: (B, 5, K, h, w)
        logp = tf.log_softmax(2)
        target = tokens[:, 1:]
        own = -logp.gather(2, target[:, :, None]).squeeze(2)
        near = -logp.gather(2, table[target].permute(0, 1, 4, 2, 3)).mean(2)  # (B, 5, h, w)
        cell = 0.7 * own + 0.3 * near
        weight = 1 + changed
        torch.testing.assert_close(stats["loss/ce_tf"], (cell * weight).sum() / weight.sum(), rtol=1e-5, atol=1e-6)
        assert abs(float(stats["loss/ce_tf"]) - float((own * weight).sum() / weight.sum())) > 0.05
    with pytest.raises(SystemExit, match="near_smoothing needs"):
        tiny_objective(**cfg)
    with pytest.raises(SystemExit, match="use one of them"):
        tiny_objective(tokenizer=CodeVectors(K), label_smoothing=0.1, **cfg)
