"""Score a world-model checkpoint honestly (shared/WORLD_MODEL_NOTES.md, every "Measure" line).

    python evaluate.py --checkpoint checkpoints/world --data data/tokens --out reports/eval
    python evaluate.py --checkpoint checkpoints/world --data data/tokens --out reports/base --untrained true

Measures, on the held-out trajectories of the training split (TokenWindowDataset split="val"):
- teacher-forced cross-entropy / token accuracy (and the copy-last-frame baseline), of the model
  as trained and of the guided predictor that the rollouts and play use (--guidance);
- autoregressive rollouts from real context: per-step PSNR/SSIM against the decoded ground-truth
  tokens and the true video frames, per-step unique codes and code entropy against the ground
  truth's, KL(teacher-forced || autoregressive) logits, entropy and confidence;
- the first-step collapse test (argmax vs top-k / top-p / temperature sampling);
- action response and counterfactual direction tests (yaw, pitch, W vs S) -> controllability;
- sandbox ground truth (re-rendered true frames for the recorded and counterfactual actions);
- an inverse-dynamics probe trained on ground-truth token pairs, applied to the rollouts.
Writes report.json (with a `headline` dict), report.md, plots/*.png and videos/*.mp4.
"""
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

import actions as act
import eval_metrics as M
from config import format_config, opt, parse_config
from sampling import GUIDANCE, KEEP_ABOVE, Sampler
from eval_report import finite_or_none, fmt, headline, plot_all, write_markdown, write_video
from utils import BadFile, atomic_torch_save, atomic_write_json, resolve_device, seed_everything, usable_guidance


@dataclass
class Config:
    checkpoint: str = opt("", "world-model checkpoint file (.pt) or a run folder (its newest ckpt_*.pt)")
    data: str = opt("", "token folder written by preprocess.py (manifest.json + <name>.npz)")
    out: str = opt("reports/eval", "output folder for report.json, report.md, plots/ and videos/")
    tokenizer: str = opt("", "tokenizer file; empty = the path in the checkpoint, else the manifest's")
    untrained: bool = opt(False, "evaluate a freshly initialised model of the checkpoint's config (the baseline)")
    horizons: list[int] = opt([16, 32], "rollout steps at which PSNR/SSIM are summarised; the longest is rolled out")
    episodes: int = opt(8, "held-out episodes (val trajectories in turn, a random start in each); teacher-forced "
                        "loss, rollouts and action tests all use their windows")
    context: int = opt(8, "real frames fed to the model before each rollout")
    temperature: float = opt(1.0, "sampling temperature of the rollouts (<= 0 = argmax)")
    top_k: int = opt(50, "top-k of the rollout sampler (0 = off)")
    top_p: float = opt(1.0, "top-p of the rollout sampler (1 = off)")
    keep_above: float = opt(KEEP_ABOVE, "rollout sampler: a cell whose most likely code has at least this probability takes it (1 = off)")
    guidance: float = opt(GUIDANCE, "action guidance of every rollout step: uncond + g * (cond - uncond) logits (1 = off; "
                                "models trained without action dropout always run at 1); g != 1 also reports the "
                                "teacher-forced figures of the guided predictor (tf_*_guided)")
    key_guidance: float = opt(0.0, "guidance of the keyboard part of the action (W/S, strafe, jump, sprint, sneak) apart "
                                   "from the camera's: uncond + g * (camera only - uncond) + kg * (full - camera only), "
                                   "a third model step per frame (0 = --guidance for the whole action)")
    collapse_steps: int = opt(20, "steps of the collapse test (unique codes at steps 0, 1 and 10-19)")
    collapse_episodes: int = opt(1, "episodes of the collapse test (each runs once per decoding rule)")
    cf_steps: int = opt(3, "steps of each counterfactual constant-action rollout")
    cf_magnitude: float = opt(0.5, "normalized |yaw| / |pitch| of the counterfactual camera actions (1 = 15 deg/tick)")
    max_shift: int = opt(16, "largest image shift (pixels) searched when measuring camera motion")
    sandbox_steps: int = opt(16, "rollout steps re-rendered in the sandbox when the data has ground truth (0 = off)")
    true_frames: bool = opt(True, "also score rollouts against the true video frames (decoded from the mp4s)")
    idm_steps: int = opt(100, "training steps of the inverse-dynamics probe (0 = skip it)")
    idm_batch: int = opt(32, "batch size of the inverse-dynamics probe")
    idm_cache: bool = opt(True, "keep the trained probe in the data folder (.idm_probe_*.pt) for the next evaluation")
    lpips: bool = opt(False, "LPIPS (AlexNet) per step; needs AlexNet weights in the torch hub cache (never a random backbone)")
    videos: int = opt(2, "episodes written as mp4 (ground truth | prediction)")
    video_scale: int = opt(2, "upscale factor of the videos")
    batch: int = opt(32, "batch size for decoding")
    val_fraction: float = opt(-1.0, "val fraction of the split; < 0 = the checkpoint's training config (else 0.1)")
    split_seed: int = opt(-1, "seed of the split; < 0 = the checkpoint's training config (else 0)")
    seed: int = opt(0, "seed for episode starts, sampling and the untrained model")
    device: str = opt("auto", "auto | cpu | cuda | cuda:N")


# ----------------------------------------------------------------------------- loading

def load_everything(cfg, device):
    """-> (model, ckpt, checkpoint path, tokenizer, manifest). --untrained rebuilds the checkpoint's architecture
    with fresh weights, so the baseline has exactly the trained model's size and shapes."""
    from datasets import read_manifest
    from train import load_world_model
    from vq_vae import load_tokenizer
    model, ckpt = load_world_model(cfg.checkpoint, device)
    path = ckpt["path"]
    if cfg.untrained:
        from model_convGru import WorldModel, WorldModelConfig
        torch.manual_seed(cfg.seed)
        trained = model
        model = WorldModel(WorldModelConfig(**ckpt["model_args"])).to(device).eval()
        if hasattr(trained, "codebook"):  # the tokenizer's code vectors are data, not learned weights
            model.set_codebook(trained.codebook)
    try:
        manifest = read_manifest(cfg.data)
    except (FileNotFoundError, ValueError) as e:
        raise BadFile(f"--data {cfg.data}: {e}") from None
    candidates = [cfg.tokenizer] if cfg.tokenizer else [ckpt.get("tokenizer", {}).get("path"), manifest["tokenizer"]["path"]]
    tok_path = cfg.tokenizer or next((p for p in candidates if p and os.path.exists(p)), None)
    if tok_path is None:
        sys.exit(f"evaluate: tokenizer not found (tried {candidates}); pass --tokenizer")
    tokenizer = load_tokenizer(tok_path, device=device)
    want = manifest["tokenizer"]["hash"]
    for name, h in (("tokenizer file", tokenizer.hash), ("checkpoint", ckpt.get("tokenizer", {}).get("hash", want))):
        if h != want:
            sys.exit(f"evaluate: the {name} has tokenizer hash {h}, but {cfg.data} was made with {want}")
    return model, ckpt, path, tokenizer, manifest


def split_settings(cfg, ckpt):
    """The val split the model was trained with: the same fraction and seed as train.py used."""
    train_cfg = ckpt.get("config", {}) or {}
    frac = cfg.val_fraction if cfg.val_fraction >= 0 else float(train_cfg.get("val_fraction", 0.1))
    seed = cfg.split_seed if cfg.split_seed >= 0 else int(train_cfg.get("split_seed", train_cfg.get("seed", 0)))
    return frac, seed


def resolve_path(path, data_dir):
    """A manifest path as written (absolute or relative to the cwd), else relative to the data folder."""
    if not path:
        return None
    for p in (path, os.path.join(data_dir, path)):
        if os.path.exists(p):
            return p
    return None


# ----------------------------------------------------------------------------- episodes

def pick_episodes(cfg, val, horizon):
    """One window of context + horizon frames per episode from the val trajectories in turn.
    Returns (episodes, horizon actually possible)."""
    longest = int(max(val.lengths))
    if longest < cfg.context + 2:
        sys.exit(f"evaluate: the longest val trajectory has {longest} frames; need context ({cfg.context}) + 2")
    horizon = min(horizon, longest - cfg.context)
    rng = np.random.default_rng(cfg.seed)
    eps = []
    usable = [i for i, n in enumerate(val.lengths) if n >= cfg.context + horizon]
    for e in range(cfg.episodes):
        i = usable[e % len(usable)]
        t0 = int(rng.integers(0, val.lengths[i] - cfg.context - horizon + 1))
        tokens, actions = val.arrays(i)
        n = cfg.context + horizon
        with np.load(os.path.join(val.data_dir, val.files[i])) as z:
            frame_index = z["frame_index"][t0:t0 + n] if "frame_index" in z.files else np.arange(t0, t0 + n)
        eps.append(dict(file=val.files[i], t0=t0, frame_index=frame_index,
                        tokens=torch.from_numpy(tokens[t0:t0 + n].astype(np.int64)),           # (C+H, h, w)
                        actions=torch.from_numpy(np.array(actions[t0:t0 + n - 1], np.float32))))  # (C+H-1, A)
    return eps, horizon


def entry_for(manifest, file):
    return next(t for t in manifest["trajectories"] if t["file"] == file)


# ----------------------------------------------------------------------------- rollouts

def sample_chunks(chunks, logits, step):
    """chunks: [(Sampler, seed)], one per equal slice of the batch. Slices given the same seed see
    the same random numbers, so two action variants differ only through the model's response."""
    size = logits.shape[0] // len(chunks)
    out = []
    for j, (sampler, seed) in enumerate(chunks):
        g = torch.Generator(device=logits.device).manual_seed(int(seed) * 100_003 + step)
        out.append(sampler(logits[j * size:(j + 1) * size], generator=g))
    return torch.cat(out)


@torch.no_grad()
def rollout(model, tokens, actions, context, steps, chunks, on_step=None, guidance=1.0, key_guidance=None):
    """tokens [B, >=context, h, w] real frames, actions [B, context+steps-1, A]: warm up on the
    context, then feed back sampled tokens for `steps` frames. on_step(h, logits [B, K, h, w]) sees
    the logits of every predicted frame. Returns the sampled codes [B, steps, h, w]. The context is
    unguided; guidance (and key_guidance, model.step's) applies to the predicted frames."""
    state = model.init_state(tokens.shape[0], tokens.device)
    for t in range(context):
        last = t == context - 1
        logits, state = model.step(tokens[:, t], actions[:, t], state, guidance=guidance if last else 1.0,
                                   one_shift=True, key_guidance=key_guidance if last else None)
    preds = []
    for h in range(steps):
        if on_step is not None:
            on_step(h, logits)
        preds.append(sample_chunks(chunks, logits, h))
        if h < steps - 1:
            logits, state = model.step(preds[-1], actions[:, context + h], state, guidance=guidance, sampled=True,
                                       one_shift=True, key_guidance=key_guidance)
    return torch.stack(preds, 1)


@torch.no_grad()
def decode(tokenizer, codes, batch):
    """codes [..., h, w] -> uint8 numpy [..., H, W, 3]."""
    flat = codes.reshape(-1, *codes.shape[-2:])
    out = [tokenizer.decode(flat[i:i + batch]).cpu().numpy() for i in range(0, len(flat), batch)]
    return np.concatenate(out).reshape(*codes.shape[:-2], *out[0].shape[1:])


# ----------------------------------------------------------------------------- teacher forcing

def teacher_forced(tf_logits, tokens, actions, codebook_size, tokenizer, batch, truth_img=None):
    """Teacher-forced cross-entropy and token accuracy over whole held-out windows, split into the
    cells that keep their code from frame t to t+1 and those that change, and on idle and moving
    steps; the argmax prediction decoded, against the decoded truth, next to the decoded last frame.
    tf_logits [B, T-1, K, h, w] from model(tokens, actions), tokens [B, T, h, w], actions [B, T-1, A];
    truth_img: tokens decoded, if the caller has them."""
    logp = torch.log_softmax(tf_logits.float(), 2)                                  # (B, T-1, K, h, w)
    target = tokens[:, 1:]
    nll = -logp.gather(2, target[:, :, None]).squeeze(2)                             # (B, T-1, h, w)
    return tf_summary(nll, tf_logits.argmax(2), tokens, actions, codebook_size, tokenizer, batch, truth_img)


def guided_teacher_forced(model, tokens, actions, guidance, codebook_size, tokenizer, batch, truth_img=None,
                          key_guidance=None):
    """teacher_forced() for the predictor that play and the rollouts use: each step given the true
    frame t, its action and the state, with guidance (uncond + g x (cond - uncond) logits, the
    conditioned state carried on), step by step. At g = 1 it is model(tokens, actions)'s prediction."""
    state = model.init_state(tokens.shape[0], tokens.device)
    nll, argmax = [], []
    for t in range(tokens.shape[1] - 1):
        logits, state = model.step(tokens[:, t], actions[:, t], state, guidance=guidance,
                                   key_guidance=key_guidance)                            # (B, K, h, w)
        nll.append(-torch.log_softmax(logits.float(), 1).gather(1, tokens[:, t + 1, None]).squeeze(1))
        argmax.append(logits.argmax(1))
    out = tf_summary(torch.stack(nll, 1), torch.stack(argmax, 1), tokens, actions, codebook_size, tokenizer, batch,
                     truth_img)
    out["guidance"] = guidance
    if key_guidance is not None:
        out["key_guidance"] = key_guidance
    return out


def tf_summary(nll, argmax, tokens, actions, codebook_size, tokenizer, batch, truth_img=None):
    """teacher_forced()'s figures from the per-cell nll and argmax prediction [B, T-1, h, w]."""
    target = tokens[:, 1:]
    hit = (argmax == target).float()
    keep = tokens[:, :-1] == target                                                   # the "nothing moves" baseline
    moving = actions.abs().amax(-1) > 0.05                                            # (B, T-1)
    if truth_img is None:
        truth_img = decode(tokenizer, tokens, batch)                                  # (B, T, H, W, 3)
    pred_img = decode(tokenizer, argmax, batch)
    pixel_change = M.mean_abs_diff(truth_img[:, 1:], truth_img[:, :-1]).reshape(moving.shape)
    psnr_pred, psnr_copy = M.psnr(pred_img, truth_img[:, 1:]), M.psnr(truth_img[:, :-1], truth_img[:, 1:])

    def mean(v, where):
        return float(v[where].mean()) if bool(where.any()) else float("nan")
    out = {"cross_entropy": float(nll.mean()), "accuracy": float(hit.mean()), "copy_last_frame_accuracy": float(keep.float().mean()),
           "uniform_cross_entropy": math.log(codebook_size), "windows": int(tokens.shape[0]),
           "frames_per_window": int(tokens.shape[1]),
           "kept_cells": {"fraction": float(keep.float().mean()), "accuracy": mean(hit, keep), "cross_entropy": mean(nll, keep)},
           "changed_cells": {"fraction": float((~keep).float().mean()), "accuracy": mean(hit, ~keep), "cross_entropy": mean(nll, ~keep)},
           "argmax_decoded_psnr": M.mean_psnr(psnr_pred), "copy_last_frame_decoded_psnr": M.mean_psnr(psnr_copy),
           "argmax_decoded_psnr_pooled": float(M.pooled_psnr(psnr_pred)),
           "copy_last_frame_decoded_psnr_pooled": float(M.pooled_psnr(psnr_copy))}
    for name, where in (("idle", ~moving), ("moving", moving)):
        cells = where[:, :, None, None].expand_as(keep)
        out[f"{name}_steps"] = {"fraction": float(where.float().mean()), "code_change_rate": mean((~keep).float(), cells),
                                "pixel_change_mae": float(pixel_change[where.cpu().numpy()].mean()) if bool(where.any()) else float("nan"),
                                "accuracy": mean(hit, cells), "copy_accuracy": mean(keep.float(), cells)}
    return out


# ----------------------------------------------------------------------------- inverse dynamics probe

def train_idm(cfg, data_dir, frac, split_seed, tokenizer_hash, device):
    """Train the probe on ground-truth pairs of the train split; score it on the val split (the ceiling).
    The probe depends only on the data, so it is cached in the data folder: the trained and the
    untrained model's evaluations share one."""
    from datasets import TokenWindowDataset
    train = TokenWindowDataset(data_dir, 2, split="train", val_fraction=frac, seed=split_seed)
    val = TokenWindowDataset(data_dir, 2, split="val", val_fraction=frac, seed=split_seed)
    probe = M.InverseDynamicsProbe().to(device)
    cache = os.path.join(data_dir, f".idm_probe_{tokenizer_hash}_{frac:g}_{split_seed}_{cfg.idm_steps}x{cfg.idm_batch}_{cfg.seed}.pt")
    state = load_cache(cache) if cfg.idm_cache else None
    if state is not None:
        probe.load_state_dict(state)
    else:
        train_probe(probe, train, cfg, device)
        if cfg.idm_cache:
            atomic_torch_save(probe.state_dict(), cache)
    probe.eval()
    idx = np.linspace(0, len(val) - 1, min(len(val), 512)).round().astype(int)
    x, a = zip(*(val[int(i)] for i in idx))
    x, a = torch.stack(x).to(device), torch.stack(a)[:, 0].to(device)
    return probe, M.idm_scores(probe, x[:, 0], x[:, 1], a)


def load_cache(path):
    """A cached probe's state dict (weights only), or None when absent or unusable (then it is retrained)."""
    if not os.path.exists(path):
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        print(f"note: ignoring the cached probe {path} ({type(e).__name__}); training it again")
        return None


def train_probe(probe, train, cfg, device):
    g = torch.Generator().manual_seed(cfg.seed)
    opt_ = torch.optim.AdamW(probe.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(cfg.idm_steps):
        idx = torch.randint(len(train), (cfg.idm_batch,), generator=g)
        x, a = zip(*(train[int(i)] for i in idx))
        x, a = torch.stack(x).to(device), torch.stack(a)[:, 0].to(device)
        keys, cam = M.action_labels(a)
        kl, cl = probe(x[:, 0], x[:, 1])
        # keys are rarely pressed: weigh presses up so "nothing pressed" is not the easy answer (F1 would be 0)
        key_loss = F.binary_cross_entropy_with_logits(kl, keys, pos_weight=torch.full_like(keys[0], 2.0))
        loss = key_loss + F.cross_entropy(cl.reshape(-1, 3), cam.reshape(-1))
        opt_.zero_grad(set_to_none=True)
        loss.backward()
        opt_.step()


# ----------------------------------------------------------------------------- sandbox ground truth

def load_sandbox_truth(manifest, data_dir, ep):
    """(World, groundtruth dict, stride) for an episode whose trajectory has a sandbox sidecar, else None."""
    entry = entry_for(manifest, ep["file"])
    path = resolve_path(entry.get("groundtruth"), data_dir)
    if path is None:
        return None
    from sandbox import World, load_groundtruth
    gt = load_groundtruth(path)
    return World(gt["seed"]), gt, int(entry.get("stride", 1))


def rerender(world, gt, start_frame, steps, stride, size, step_actions=None):
    """Re-render the truth for `steps` kept frames after aligned frame `start_frame`, under the
    recorded raw ticks (step_actions None) or constant/counterfactual normalized actions [steps, 7].
    -> (frames uint8 [steps + 1, H, W, 3] (the start frame first) at the tokenizer's frame size,
    the sandbox states at those frames)."""
    import cv2
    from sandbox import rollout as sandbox_rollout
    if step_actions is None:
        ticks = np.asarray(gt["raw_actions"][start_frame:start_frame + stride * steps], np.float32)
    else:
        ticks = np.concatenate([act.to_ticks(a, stride) for a in step_actions])
    frames, states = sandbox_rollout(world, gt["states"][start_frame], ticks, gt["dt"], gt["width"], gt["height"])
    frames, states = frames[::stride], states[::stride]
    if frames.shape[1:3] != tuple(size):
        frames = np.stack([cv2.resize(f, (size[1], size[0]), interpolation=cv2.INTER_AREA) for f in frames])
    return frames, states


def true_video_frames(manifest, data_dir, ep, first, count, size):
    """The true (video) frames at the episode's kept frames [first, first + count) -> uint8
    [count, H, W, 3], or None when the video is missing."""
    from datasets import Trajectory, load_minerl
    entry = entry_for(manifest, ep["file"])
    video = resolve_path(entry.get("video_path"), data_dir)
    if video is None:
        return None
    fi = ep["frame_index"][first:first + count]
    stride = int(fi[1] - fi[0]) if len(fi) > 1 else 1
    if entry.get("source") == "minerl":  # MineRL videos hold extra leading frames: load_minerl knows how many
        traj = load_minerl(os.path.dirname(video))
    else:
        traj = Trajectory(name=ep["file"], source=entry.get("source", ""), video_path=video, fps=0.0,
                          num_frames=int(fi[-1]) + 1, raw_actions=np.zeros((0, act.RAW_DIM)), mask=act.action_mask())
    frames = list(traj.frames(int(fi[0]), int(fi[-1]) + 1, size=(size[1], size[0]), step=stride))
    return np.stack(frames)


# ----------------------------------------------------------------------------- action tests

CF_ACTIONS = {"yaw_left": dict(yaw=-1), "yaw_right": dict(yaw=1), "pitch_up": dict(pitch=-1),
              "pitch_down": dict(pitch=1), "forward": dict(move_z=1), "back": dict(move_z=-1)}
CF_PAIRS = (("yaw_left", "yaw_right"), ("pitch_up", "pitch_down"), ("forward", "back"))


def cf_vector(name, magnitude):
    kw = CF_ACTIONS[name]
    return act.make_action(**{k: v * (magnitude if k in ("yaw", "pitch") else 1.0) for k, v in kw.items()})


def shifts(frames, ref, max_shift):
    """frames [S, H, W, 3] after ref [H, W, 3] -> (dx [S], dy [S]) frame-to-frame content motion."""
    prev, out = ref, []
    for f in frames:
        out.append(M.estimate_shift(prev, f, max_shift))
        prev = f
    return np.array(out, dtype=np.float64).reshape(-1, 2).T


def action_tests(cfg, model, tokenizer, eps, sampler, device, truths):
    """Counterfactual constant-action rollouts from each episode's real context.
    truths: per episode None or (world, gt, stride) for sandbox ground truth."""
    B, C, S = len(eps), cfg.context, cfg.cf_steps
    names = list(CF_ACTIONS)
    ctx = torch.stack([e["tokens"][:C] for e in eps])                              # (B, C, h, w)
    real = torch.stack([e["actions"][:C - 1] for e in eps])                        # (B, C-1, A)
    acts = [torch.cat([real, torch.from_numpy(cf_vector(n, cfg.cf_magnitude)).expand(B, S, -1)], 1) for n in names]
    first = {}

    def on_step(h, logits):  # keep the first counterfactual step's logits: same state, only the action differs
        if h == 0:
            first.update({n: logits[i * B:(i + 1) * B] for i, n in enumerate(names)})

    # every variant gets the same random numbers, so variants differ only through the model's response
    pred = rollout(model, ctx.repeat(len(names), 1, 1, 1).to(device), torch.cat(acts).to(device), C, S,
                   [(sampler, cfg.seed)] * len(names), on_step, cfg.guidance, cfg.key_guidance or None)
    frames = decode(tokenizer, pred, cfg.batch)
    frames = {n: frames[i * B:(i + 1) * B] for i, n in enumerate(names)}          # each (B, S, H, W, 3)
    ref = decode(tokenizer, ctx[:, C - 1], cfg.batch)                              # (B, H, W, 3)
    motion = {n: np.stack([shifts(frames[n][b], ref[b], cfg.max_shift) for b in range(B)])
              for n in ("yaw_left", "yaw_right", "pitch_up", "pitch_down")}    # (B, 2, S)
    js = {f"{a}_vs_{b}": float(M.logit_js(first[a], first[b]).mean()) for a, b in CF_PAIRS}
    res = {"steps": S, "magnitude": cfg.cf_magnitude,
           # yaw right turns the view right: content moves left (dx < 0); pitch down: content moves up (dy < 0)
           "yaw_direction_accuracy": M.direction_accuracy(motion["yaw_left"][:, 0], motion["yaw_right"][:, 0], -1),
           "pitch_direction_accuracy": M.direction_accuracy(motion["pitch_up"][:, 1], motion["pitch_down"][:, 1], -1),
           "mean_dx_yaw_right_minus_left": float((motion["yaw_right"][:, 0] - motion["yaw_left"][:, 0]).mean()),
           "mean_dy_pitch_down_minus_up": float((motion["pitch_down"][:, 1] - motion["pitch_up"][:, 1]).mean()),
           "first_step_js": js, "action_response": float(np.mean(list(js.values()))),
           "pixel_difference": {f"{a}_vs_{b}": float(M.mean_abs_diff(frames[a], frames[b]).mean()) for a, b in CF_PAIRS}}
    if getattr(model, "moves", False):  # what the learned camera-motion head says each action does
        with torch.no_grad():
            d, zoom = model.camera_motion(model.cond_vector(torch.from_numpy(
                np.stack([cf_vector(n, cfg.cf_magnitude) for n in names])).float().to(device)))
        res["learned_shift_dx_cells"] = dict(zip(names, d[:, 0].tolist()))
        res["learned_shift_dy_cells"] = dict(zip(names, d[:, 1].tolist()))
        if model.cfg.zoom_range > 0:
            res["learned_zoom_percent"] = dict(zip(names, (100 * torch.expm1(zoom)).tolist()))
    parts = [M.direction_skill(res["yaw_direction_accuracy"]), M.direction_skill(res["pitch_direction_accuracy"]),
             res["action_response"]]
    # sandbox: the true counterfactual frames for the same start state
    have = [b for b in range(B) if truths[b] is not None]
    truth_frames = {}
    if have:
        size = frames["forward"].shape[2:4]
        for n in CF_ACTIONS:
            truth_frames[n] = np.stack([rerender(truths[b][0], truths[b][1], int(eps[b]["frame_index"][C - 1]), S,
                                                 truths[b][2], size, [cf_vector(n, cfg.cf_magnitude)] * S)[0]
                                        for b in have])                           # (B', S+1, H, W, 3)
        tmotion = {n: np.stack([shifts(truth_frames[n][i, 1:], truth_frames[n][i, 0], cfg.max_shift) for i in range(len(have))])
                   for n in ("yaw_left", "yaw_right", "pitch_up", "pitch_down")}
        sb = {"episodes": len(have),
              "truth_yaw_direction_accuracy": M.direction_accuracy(tmotion["yaw_left"][:, 0], tmotion["yaw_right"][:, 0], -1),
              "truth_pitch_direction_accuracy": M.direction_accuracy(tmotion["pitch_up"][:, 1], tmotion["pitch_down"][:, 1], -1),
              # the same shift measure on the true counterfactuals: what the model's mean_d* should be
              "truth_mean_dx_yaw_right_minus_left": float((tmotion["yaw_right"][:, 0] - tmotion["yaw_left"][:, 0]).mean()),
              "truth_mean_dy_pitch_down_minus_up": float((tmotion["pitch_down"][:, 1] - tmotion["pitch_up"][:, 1]).mean()),
              "truth_pixel_difference": {f"{a}_vs_{b}": float(M.mean_abs_diff(truth_frames[a][:, 1:], truth_frames[b][:, 1:]).mean())
                                         for a, b in CF_PAIRS},
              "psnr": {n: M.mean_psnr(M.psnr(frames[n][have], truth_frames[n][:, 1:])) for n in CF_ACTIONS}}
        for a, b in CF_PAIRS:  # is each prediction closer to its own truth than to the other action's?
            pa, pb, ta, tb = frames[a][have], frames[b][have], truth_frames[a][:, 1:], truth_frames[b][:, 1:]
            own = M.mean_abs_diff(pa, ta) + M.mean_abs_diff(pb, tb)
            swapped = M.mean_abs_diff(pa, tb) + M.mean_abs_diff(pb, ta)
            sb[f"{a}_vs_{b}_assignment_accuracy"] = float((own < swapped).mean())
            # (episode, step) items where the two rollouts are the same picture score as wrong: no response
            sb[f"{a}_vs_{b}_identical_fraction"] = float((M.mean_abs_diff(pa, pb) == 0).mean())
        res["sandbox"] = sb
        parts.append(M.direction_skill(sb["forward_vs_back_assignment_accuracy"]))
    res["controllability"] = float(np.mean(parts))
    res["controllability_parts"] = ["yaw direction skill", "pitch direction skill", "action response"] + (
        ["W/S assignment skill (sandbox truth)"] if have else [])
    return res, frames, truth_frames


def collapse_test(cfg, model, eps, device, sampler):
    """First-step collapse: unique codes per predicted frame under each decoding rule, from the same context."""
    rules = {"argmax": Sampler(0.0, 0, 1.0), "top-k 50": Sampler(1.0, 50, 1.0), "top-k 100": Sampler(1.0, 100, 1.0),
             "top-p 0.9": Sampler(1.0, 0, 0.9), "temperature 0.8": Sampler(0.8, 0, 1.0)}
    rules[f"rollout sampler ({sampler.describe()})"] = sampler
    eps = eps[:max(1, cfg.collapse_episodes)]
    B, C = len(eps), cfg.context
    S = min(cfg.collapse_steps, len(eps[0]["tokens"]) - C)
    ctx = torch.stack([e["tokens"][:C] for e in eps]).repeat(len(rules), 1, 1, 1).to(device)
    acts = torch.stack([e["actions"][:C + S - 1] for e in eps]).repeat(len(rules), 1, 1).to(device)
    pred = rollout(model, ctx, acts, C, S, [(r, cfg.seed) for r in rules.values()], guidance=cfg.guidance,
                   key_guidance=cfg.key_guidance or None)
    uniq = M.code_stats(pred)[0].reshape(len(rules), B, S).mean(1)                # (rules, S)
    gt = M.code_stats(torch.stack([e["tokens"][C:C + S] for e in eps]))[0].mean(0)  # (S,)
    late = slice(10, 20) if S > 10 else slice(S - 1, S)

    def summary(u):
        return {"step0": float(u[0]), "step1": float(u[min(1, S - 1)]), "steps10_19": float(u[late].mean())}
    return {"steps": S, "rules": {name: summary(uniq[i]) for i, name in enumerate(rules)},
            "ground_truth": summary(gt), "per_step": {name: uniq[i].tolist() for i, name in enumerate(rules)}}


# ----------------------------------------------------------------------------- autoregressive rollouts

def rollout_metrics(cfg, model, tokenizer, manifest, eps, H, sampler, device, truths, probe, lpips_fn):
    B, C = len(eps), cfg.context
    tokens = torch.stack([e["tokens"] for e in eps]).to(device)                    # (B, C+H, h, w)
    actions = torch.stack([e["actions"] for e in eps]).to(device)                  # (B, C+H-1, A)
    truth_tok = tokens[:, C:]                                                      # (B, H, h, w)
    tf_all = model(tokens, actions)  # teacher-forced, one batched pass (B, C+H-1, K, h, w)
    window_img = decode(tokenizer, tokens, cfg.batch)                              # (B, C+H, H_img, W_img, 3)
    tf_report = teacher_forced(tf_all, tokens, actions, tokenizer.codebook_size, tokenizer, cfg.batch, window_img)
    if cfg.guidance != 1.0 or cfg.key_guidance:
        tf_report["guided"] = guided_teacher_forced(model, tokens, actions, cfg.guidance, tokenizer.codebook_size,
                                                    tokenizer, cfg.batch, window_img, cfg.key_guidance or None)
    tf_logits = tf_all[:, C - 1:]                                                  # (B, H, K, h, w)
    stats = {k: [] for k in ("kl", "entropy_ar", "entropy_tf", "confidence_ar", "confidence_tf", "ce_ar", "ce_tf")}

    def on_step(h, ar):  # the same frame predicted from true (teacher-forced) vs own (rollout) inputs
        logp = {"ar": torch.log_softmax(ar.float(), 1), "tf": torch.log_softmax(tf_logits[:, h].float(), 1)}
        stats["kl"].append(M.logprob_kl(logp["tf"], logp["ar"]))
        for name, lp in logp.items():
            st = M.logprob_stats(lp)
            stats["entropy_" + name].append(st["entropy"])
            stats["confidence_" + name].append(st["confidence"])
            nll = -lp.gather(1, truth_tok[:, h, None]).squeeze(1)                 # (B, h, w)
            stats["ce_" + name].append(nll.mean((1, 2)).cpu().numpy())

    pred = rollout(model, tokens, actions, C, H, [(sampler, cfg.seed)], on_step, cfg.guidance, cfg.key_guidance or None)
    del tf_all, tf_logits
    stats = {k: np.stack(v, 1) for k, v in stats.items()}                         # each (B, H)
    pred_img = decode(tokenizer, pred, cfg.batch)                                  # (B, H, H_img, W_img, 3)
    gt_img, ref_img = window_img[:, C:], window_img[:, C - 1]                      # (B, H, ...), (B, H_img, W_img, 3)
    size = pred_img.shape[2:4]

    def per_step(fn, a, b):  # images (B, S, ...) x2 -> (B, S), all frames in one call
        return fn(a.reshape(-1, *a.shape[2:]), b.reshape(-1, *b.shape[2:])).reshape(a.shape[:2])

    psnr_tok = per_step(M.psnr, pred_img, gt_img)
    copy_img = np.repeat(ref_img[:, None], H, 1)                                   # (B, H, H_img, W_img, 3)
    psnr_copy = per_step(M.psnr, copy_img, gt_img)
    r = {"episodes": [{"file": e["file"], "start": e["t0"]} for e in eps], "horizon": H, "context": C,
         "sampler": sampler.describe(),
         "psnr_vs_tokens": np.minimum(psnr_tok, M.PSNR_CAP_DB).mean(0).tolist(),
         "ssim_vs_tokens": per_step(M.ssim, pred_img, gt_img).mean(0).tolist(),
         "psnr_copy_last_frame": np.minimum(psnr_copy, M.PSNR_CAP_DB).mean(0).tolist(),
         # PSNR of the episodes' mean squared error: robust to the few identical frames (idle steps)
         # that the capped per-frame mean counts as 100 dB
         "psnr_pooled_vs_tokens": M.pooled_psnr(psnr_tok).tolist(),
         "psnr_pooled_copy_last_frame": M.pooled_psnr(psnr_copy).tolist(),
         "identical_copy_frames": (psnr_copy == np.inf).sum(0).tolist(),
         # 1 = as much fine detail as the decoded truth, < 1 blurrier
         "sharpness_ratio": (M.sharpness(pred_img).reshape(B, H).mean(0) / np.maximum(M.sharpness(gt_img).reshape(B, H).mean(0), 1e-9)).tolist()}
    # code diversity per step
    u_pred, e_pred = M.code_stats(pred.cpu())
    u_gt, e_gt = M.code_stats(truth_tok.cpu())
    r.update({"unique_codes": u_pred.mean(0).tolist(), "unique_codes_truth": u_gt.mean(0).tolist(),
              "code_entropy": e_pred.mean(0).tolist(), "code_entropy_truth": e_gt.mean(0).tolist()})
    ratio = u_pred.mean(0) / np.maximum(u_gt.mean(0), 1)
    r["code_diversity_ratio"] = float(ratio.mean())
    r["code_diversity_match"] = float(np.minimum(ratio, 1 / np.maximum(ratio, 1e-9)).mean())
    for k, v in stats.items():
        r[k] = v.mean(0).tolist()
    # true video frames (what the tokenizer itself loses is in tokenizer_psnr)
    true_img = None
    if cfg.true_frames:
        got = [true_video_frames(manifest, cfg.data, e, C, H, size) for e in eps]
        if all(g is not None for g in got):
            true_img = np.stack(got)
            psnr_video = per_step(M.psnr, pred_img, true_img)
            r["psnr_vs_video"] = np.minimum(psnr_video, M.PSNR_CAP_DB).mean(0).tolist()
            r["ssim_vs_video"] = per_step(M.ssim, pred_img, true_img).mean(0).tolist()
            # pooled, for the model and for copying the decoded last frame: the one rollout score that
            # compares models trained on different tokens of the same video (each is judged on the video)
            r["psnr_pooled_vs_video"] = M.pooled_psnr(psnr_video).tolist()
            r["psnr_pooled_copy_vs_video"] = M.pooled_psnr(per_step(M.psnr, copy_img, true_img)).tolist()
            r["tokenizer_psnr"] = M.mean_psnr(M.psnr(gt_img, true_img))
    if lpips_fn is not None:
        r["lpips_vs_tokens"] = per_step(lpips_fn, pred_img, gt_img).mean(0).tolist()
    # sandbox re-render of the recorded actions: the uncompressed truth
    have = [b for b in range(B) if truths[b] is not None]
    S = min(cfg.sandbox_steps, H)
    if have and S > 0:
        sb_frames, state_err = [], 0.0
        for b in have:
            world, gt, stride = truths[b]
            start = int(eps[b]["frame_index"][C - 1])
            frames, states = rerender(world, gt, start, S, stride, size)
            sb_frames.append(frames[1:])
            for s, st in zip(eps[b]["frame_index"][C - 1:C + S], states):  # re-simulated vs recorded states
                rec = gt["states"][int(s)]
                state_err = max(state_err, float(np.abs(np.subtract(st.pos, rec.pos)).max()),
                                abs(st.yaw - rec.yaw), abs(st.pitch - rec.pitch))
        sb_frames = np.stack(sb_frames)
        r["sandbox"] = {"episodes": len(have), "steps": S, "max_state_error": state_err,
                        "psnr": np.minimum(per_step(M.psnr, pred_img[have, :S], sb_frames), M.PSNR_CAP_DB).mean(0).tolist(),
                        "ssim": per_step(M.ssim, pred_img[have, :S], sb_frames).mean(0).tolist(),
                        "tokenizer_psnr": M.mean_psnr(M.psnr(gt_img[have, :S], sb_frames))}
    # inverse dynamics on the rollout: did the prediction carry the recorded action?
    if probe is not None:
        prev_pred = torch.cat([tokens[:, C - 1:C], pred[:, :-1]], 1)               # (B, H, h, w)
        prev_true = tokens[:, C - 1:C + H - 1]
        step_actions = actions[:, C - 1:C + H - 1].reshape(-1, actions.shape[-1])
        r["idm_rollout"] = M.idm_scores(probe, prev_pred.flatten(0, 1), pred.flatten(0, 1), step_actions)
        r["idm_truth_same_steps"] = M.idm_scores(probe, prev_true.flatten(0, 1), truth_tok.flatten(0, 1), step_actions)
    return r, tf_report, pred_img, (true_img if true_img is not None else gt_img)


def make_lpips(device):
    """LPIPS with its real AlexNet backbone, or an error: a random backbone is not LPIPS."""
    weights = os.path.join(torch.hub.get_dir(), "checkpoints", "alexnet-owt-7be5be79.pth")
    if not os.path.exists(weights):
        sys.exit(f"evaluate: --lpips needs the torchvision AlexNet weights at {weights} (no download here); "
                 f"run without --lpips")
    import lpips
    net = lpips.LPIPS(net="alex", verbose=False).to(device).eval()

    def fn(a, b):  # uint8 [N, H, W, 3] -> [N]; LPIPS wants [-1, 1]
        t = lambda x: torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float().to(device) / 127.5 - 1
        with torch.no_grad():
            return net(t(a), t(b)).flatten().cpu().numpy()
    return fn


# ----------------------------------------------------------------------------- main

def main(cfg):
    print(format_config(cfg))
    if not cfg.checkpoint or not cfg.data:
        sys.exit("evaluate: --checkpoint and --data are required")
    start = time.time()
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    torch.set_grad_enabled(False)
    from datasets import TokenWindowDataset
    model, ckpt, path, tokenizer, manifest = load_everything(cfg, device)
    cfg.guidance = usable_guidance(cfg.guidance, ckpt, "evaluate")
    if cfg.key_guidance:
        cfg.key_guidance = usable_guidance(cfg.key_guidance, ckpt, "evaluate")
    lpips_fn = make_lpips(device) if cfg.lpips else None
    frac, split_seed = split_settings(cfg, ckpt)
    sampler = Sampler(cfg.temperature, cfg.top_k, cfg.top_p, cfg.keep_above)
    horizons = sorted(set(cfg.horizons))
    notes, timings = [], {}

    def tick(name, t0=[start]):
        timings[name] = round(time.time() - t0[0], 2)
        t0[0] = time.time()
        print(f"[{time.time() - start:6.1f}s] {name} done", flush=True)

    val = TokenWindowDataset(cfg.data, 2, split="val", val_fraction=frac, seed=split_seed)
    eps, H = pick_episodes(cfg, val, max(horizons))
    if H < max(horizons):
        notes.append(f"horizon cut to {H} steps: the longest val trajectory is {int(max(val.lengths))} frames")
        horizons = sorted({min(h, H) for h in horizons})
    truths = [load_sandbox_truth(manifest, cfg.data, e) if cfg.sandbox_steps > 0 else None for e in eps]
    tick("load")
    report = {"checkpoint": path, "untrained": cfg.untrained, "data": cfg.data, "device": str(device),
              "config": dataclasses.asdict(cfg), "split": {"val_fraction": frac, "seed": split_seed},
              "train_step": ckpt.get("step"), "notes": notes}
    probe = None
    if cfg.idm_steps > 0:
        with torch.enable_grad():
            probe, report["idm"] = train_idm(cfg, cfg.data, frac, split_seed, manifest["tokenizer"]["hash"], device)
        tick("inverse-dynamics probe")
    report["rollout"], report["teacher_forced"], pred_img, true_img = rollout_metrics(cfg, model, tokenizer, manifest, eps, H, sampler,
                                                                     device, truths, probe, lpips_fn)
    tick("rollouts")
    err = report["rollout"].get("sandbox", {}).get("max_state_error", 0.0)
    if err > 1e-4:
        notes.append(f"the sandbox re-simulation of the recorded actions drifts from the recorded states (max error "
                     f"{err:.3g}): the sandbox changed since the data was generated, so sandbox scores are approximate")
    report["collapse"] = collapse_test(cfg, model, eps, device, sampler)
    tick("collapse test")
    report["action"], cf_frames, truth_frames = action_tests(cfg, model, tokenizer, eps, sampler, device, truths)
    tick("action tests")
    os.makedirs(os.path.join(cfg.out, "videos"), exist_ok=True)
    fps = float(entry_for(manifest, eps[0]["file"]).get("fps") or 16)
    report["videos"] = []
    ctx_img = decode(tokenizer, torch.stack([e["tokens"][:cfg.context] for e in eps]), cfg.batch)
    for b in range(min(cfg.videos, len(eps))):
        rel = os.path.join("videos", f"episode{b}.mp4")
        write_video(os.path.join(cfg.out, rel), np.concatenate([ctx_img[b], true_img[b]]),
                    np.concatenate([ctx_img[b], pred_img[b]]), fps, cfg.video_scale, context=cfg.context)
        report["videos"].append(rel)
    report["plots"] = plot_all(cfg.out, report["rollout"], report["collapse"], report["action"], cf_frames,
                               truth_frames, horizons)
    tick("plots and videos")
    report["headline"] = headline(report, horizons)
    report["seconds"] = round(time.time() - start, 1)
    report["timings_s"] = timings
    atomic_write_json(finite_or_none(report), os.path.join(cfg.out, "report.json"))
    write_markdown(os.path.join(cfg.out, "report.md"), report, report["plots"])
    print("\n".join(f"  {k:<32} {fmt(v)}" for k, v in report["headline"].items()))
    print(f"wrote {cfg.out}/report.json, report.md, plots/, videos/ in {report['seconds']:.0f} s")
    return report


if __name__ == "__main__":
    main(parse_config(Config, description=__doc__))
