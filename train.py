"""Train the action-conditioned ConvGRU world model on token windows (made by preprocess.py).

    python train.py --config configs/quickstart.yaml --data data/tokens --out checkpoints/world
    python train.py --config configs/quickstart.yaml --data data/tokens --out checkpoints/world --resume
    torchrun --nproc_per_node 2 train.py --config configs/quickstart.yaml ...   # DDP (gloo on CPU)

Each step takes a window of `window` frames: the first frames are teacher-forced (the input for
predicting frame t+1 is frame t, with a random fraction of context tokens replaced and that level
given to the model), the last `rollout` frames are predicted from the model's own sampled tokens
(same sampler as play, detached), the rollout length following `rollout_schedule`.
Losses: cross-entropy on codes (+ inverse dynamics on true and on predicted frames, + optional
perceptual loss through the tokenizer's soft decode). Every shape comes from the manifest and the
tokenizer. `train.load_world_model` is the one loader used by play and evaluation.
"""
import dataclasses
import math
import os
import signal
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

import utils
import validation
from config import ConfigError, apply_overrides, build_parser, config_from_dict, format_config, load_yaml, opt
from model_convGru import Mixture, WorldModel, WorldModelConfig, near_targets, shift_labels
from sampling import Sampler


@dataclass
class TrainConfig:
    data: str = opt("data/tokens", "folder with manifest.json and token .npz files (preprocess.py)")
    out: str = opt("checkpoints/world", "checkpoint / log folder")
    tokenizer: str = opt("", "tokenizer.pt for image strips and the perceptual loss; '' = the manifest's, 'none' = no images")
    resume: bool = opt(False, "continue the newest checkpoint in --out with its saved config")
    seed: int = opt(0, "seed for init, batches, corruption, sampling")
    split_seed: int = opt(0, "seed of the train/val split by trajectory (same as evaluate.py's)")
    val_fraction: float = opt(0.1, "fraction of trajectories held out for validation")
    device: str = opt("auto", "auto | cpu | cuda | cuda:N")
    precision: str = opt("auto", "auto | fp32 | bf16 | fp16 (fp16 uses a GradScaler; auto is fp32 on CPU)")
    compile: bool = opt(False, "torch.compile the sequence forward and the rollout step (one graph per sequence length)")
    channels_last: bool = opt(False, "channels-last memory format for the convs")
    # model (sizes of the codebook, grid and action come from the data, not from here)
    embed_dim: int = opt(64, "token embedding width")
    hidden: int = opt(96, "ConvGRU channels")
    layers: int = opt(2, "ConvGRU cells")
    kernel: int = opt(3, "cell conv kernel")
    dilations: list[int] = opt([1, 2], "per-layer dilation of the cell convs (cycled)")
    downsample: bool = opt(True, "run the recurrent cells at half resolution")
    separable: bool = opt(False, "depthwise-separable gate convs")
    groups_per_gate: int = opt(4, "GroupNorm groups per gate")
    shift_radius: int = opt(3, "learned action-conditioned shift of the input frame and state, +-cells (0 = off)")
    zoom_range: float = opt(0.15, "learned action-conditioned zoom about the view centre (walking), largest |log scale| per step (0 = off)")
    copy_prior: bool = opt(False, "logits start as 'each cell keeps its code, moved by the learned camera motion'; the head learns the change")
    copy_shifts: int = opt(0, "copy_mixture's moved code as a mixture over whole-cell shifts up to N cells along an axis (|dx| + |dy| <= 2 off the axes), one distribution per frame (a prior around the camera motion, corrected from the model's state): for tokens that follow the picture in whole cells (preprocess --sticky_track); 0 = the bilinear sources of the motion")
    copy_mixture: bool = opt(False, "copy prior as a per-cell mixture of three: the cell's own code, the code moved by the camera motion, and the head's softmax (False: the moved copy's gain is added to the head's logits)")
    sampled_level: float = opt(0.0, "corruption level the model is told when its input is its own sample (training rollouts, evaluation, play); 0 = told nothing")
    copy_motion: str = opt("learned", "copy prior: 'learned' lets the copy term train the camera motion, 'shift' only its shift (not the zoom), 'detached' only reads the motion the state warp learns, 'nearest' reads it and copies the single nearest source cell, 'anchored' reads it minus the no-action motion (idle steps copy exactly; the warp is unchanged)")
    anchored_motion: bool = opt(False, "the learned camera motion is taken relative to the no-action motion, so idle steps move nothing")
    odd_motion: bool = opt(False, "the learned camera motion is odd in the action (S moves the view opposite to W, idle moves nothing), in the state warp and the copy")
    head: str = opt("linear", "linear | codebook: logits from the similarity to the tokenizer's frozen code vectors")
    action_hidden: int = opt(128, "action/conditioning MLP width")
    idm_hidden: int = opt(64, "inverse-dynamics head width")
    # data
    batch_size: int = opt(16, "windows per step per process")
    window: int = opt(12, "frames per training window (teacher-forced + rollout + 1)")
    action_balanced: float = opt(0.0, "action-balanced window sampling power (0 = uniform, 1 = inverse frequency)")
    balance_back: bool = opt(False, "action_balanced counts walking back (S) as a category of its own, apart from forward")
    # optimisation
    lr: float = opt(2e-3, "peak learning rate")
    min_lr: float = opt(2e-4, "final learning rate of the cosine decay")
    warmup_steps: int = opt(50, "linear warmup steps")
    max_steps: int = opt(1000, "optimizer steps (the cosine schedule spans these)")
    weight_decay: float = opt(0.01, "AdamW weight decay (matrices and convs only)")
    beta2: float = opt(0.99, "AdamW beta2")
    grad_clip: float = opt(1.0, "global gradient-norm clip (0 = off)")
    time_budget_s: float = opt(0.0, "stop (with a checkpoint) after this much training time, summed over resumes (0 = off)")
    fit_budget: bool = opt(False, "with time_budget_s: after fit_after steps, shorten max_steps so the learning-rate decay "
                           "ends inside the budget (never lengthens)")
    fit_curriculum: bool = opt(False, "with fit_budget: shrink the rollout schedule in the same proportion")
    fit_after: int = opt(20, "steps timed (at each rollout length) before fit_budget sets the plan")
    stop_after: int = opt(0, "stop (with a checkpoint) after this many steps in this invocation (0 = off)")
    max_bad_steps: int = opt(10, "stop when this many consecutive steps have a non-finite loss")
    # curriculum and robustness
    rollout_schedule: list[str] = opt(["0:0"], "autoregressive rollout length by step: 'from_step:length', ...")
    bptt: int = opt(8, "truncated BPTT: the recurrent state is detached every this many steps")
    corruption_max: float = opt(0.3, "context corruption level ~ U(0, max) per window (fraction of tokens replaced)")
    action_dropout: float = opt(0.1, "probability an action is dropped (model sees 'no action'; enables guidance)")
    label_smoothing: float = opt(0.0, "cross-entropy label smoothing")
    near_smoothing: float = opt(0.0, "share of each target's probability spread evenly over its near_k nearest codes in the "
                                "tokenizer's codebook (Euclidean on the code vectors): a near-duplicate of the true code "
                                "counts partly right (0 = off; needs the tokenizer)")
    near_k: int = opt(4, "near_smoothing's number of nearest codes")
    changed_weight: float = opt(1.0, "cross-entropy weight of the cells whose true code changes from frame t to t+1 "
                                "(kept cells weigh 1; the loss is the weighted mean; 1 = the plain mean)")
    idm_weight: float = opt(0.5, "inverse-dynamics loss on true frame pairs")
    copy_edges: str = opt("repeat", "with copy_shifts: a cell whose shifted source lies outside the frame (content coming into view) copies the edge code ('repeat'), or that share of the moved mass goes to the head ('generate')")
    copy_zoom: float = opt(0.0, "with copy_shifts: add the frame zoomed in and out about its centre by whole cells as moved-copy candidates (the outermost cells move this many cells; 0 = off): walking forward and back")
    action_gain: float = opt(1.0, "scale of the action's input to the stem and the FiLM conditioning (how fast, under Adam, what the model draws can learn to follow the action; the camera motion head keeps 1)")
    shift_gain: float = opt(1.0, "with copy_shifts: scale of the action's input to the learned shift choice (how fast, under Adam, that choice can learn to follow the action)")
    shift_weight: float = opt(0.0, "with copy_shifts: cross-entropy of each frame's shift choice against the whole-cell shift that keeps the most of the true next frame's codes (teacher-forced frames)")
    idm_pred_weight: float = opt(0.5, "inverse-dynamics loss on (frame t, predicted t+1): predictions must show the action")
    idm_pred_frames: int = opt(16, "predicted frames per step used for the idm_pred loss (drawn uniformly)")
    perceptual: str = opt("off", "off | l1 | lpips: auxiliary loss through tokenizer.decode_soft")
    perceptual_weight: float = opt(0.1, "weight of the perceptual loss")
    perceptual_frames: int = opt(4, "predicted frames per step decoded for it (drawn uniformly over time)")
    temperature: float = opt(1.0, "sampler temperature for fed-back tokens (as in play)")
    top_k: int = opt(50, "sampler top-k")
    top_p: float = opt(1.0, "sampler top-p")
    keep_above: float = opt(1.0, "sampler: a cell whose most likely code has at least this probability takes it (1 = sample every cell; evaluation and play default to sampling.KEEP_ABOVE)")
    # logging and checkpoints
    log_every: int = opt(10, "steps between scalar logs")
    eval_every: int = opt(100, "steps between validation metrics (0 = off)")
    eval_batch: int = opt(8, "validation windows per evaluation")
    eval_context: int = opt(4, "teacher-forced frames before a validation rollout")
    eval_rollout: int = opt(16, "validation rollout length")
    strip_every: int = opt(200, "steps between ground truth | prediction PNG strips (0 = off)")
    ckpt_every: int = opt(200, "steps between checkpoints")
    keep: int = opt(3, "checkpoints kept")
    wandb: str = opt("off", "online | offline | off")
    wandb_project: str = opt("ochre", "wandb project")
    run_name: str = opt("", "wandb run name")


MODEL_KEYS = ("embed_dim", "hidden", "layers", "kernel", "dilations", "downsample", "separable",
              "groups_per_gate", "action_hidden", "idm_hidden", "shift_radius", "zoom_range", "copy_prior", "copy_motion", "copy_mixture", "copy_shifts", "copy_edges", "copy_zoom", "action_gain", "shift_gain", "sampled_level", "anchored_motion", "odd_motion", "head")
# keys that may differ on --resume without changing what is being trained (reported, not refused)
RESUME_SAFE = {"resume", "stop_after", "time_budget_s", "log_every", "eval_every", "eval_batch", "strip_every",
               "ckpt_every", "keep", "wandb", "wandb_project", "run_name", "device", "data", "out", "tokenizer"}


# ----------------------------------------------------------------------------- loading

def load_world_model(path_or_dir, device="cpu", what="--checkpoint", log=print):
    """Checkpoint file or folder (its newest intact ckpt) -> (WorldModel in eval mode, checkpoint dict).
    Every problem with the file is a utils.BadFile naming it."""
    path, ckpt = utils.load_newest(path_or_dir, "world model", what, log)
    model = WorldModel(WorldModelConfig(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])
    ckpt["path"] = path
    return model.to(device).eval(), ckpt


def load_data(cfg, master):
    """Manifest, tokenizer and datasets, with every mismatch a clear start-up error."""
    from datasets import TokenWindowDataset, read_manifest
    try:
        manifest = read_manifest(cfg.data)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"train.py: bad --data: {e}")
    tok_info = manifest["tokenizer"]
    K, grid = int(tok_info["codebook_size"]), tuple(int(g) for g in tok_info["grid"])
    tokenizer = None
    tok_path = cfg.tokenizer or tok_info["path"]
    if cfg.tokenizer.lower() != "none":
        if not tok_path or not os.path.isfile(tok_path):
            raise SystemExit(f"train.py: tokenizer {tok_path!r} (named by {'--tokenizer' if cfg.tokenizer else 'the manifest'}) "
                             f"not found; pass --tokenizer PATH, or --tokenizer none to train without image strips")
        from vq_vae import load_tokenizer
        tokenizer = load_tokenizer(tok_path, device="cpu", what="--tokenizer" if cfg.tokenizer else "the manifest's tokenizer")
        if tokenizer.codebook_size != K or tuple(tokenizer.grid) != grid:
            raise SystemExit(f"train.py: codebook size / grid mismatch: manifest {cfg.data} says {K} codes on {grid}, "
                             f"tokenizer {tok_path} has {tokenizer.codebook_size} on {tuple(tokenizer.grid)}")
        if tokenizer.hash != tok_info["hash"]:
            raise SystemExit(f"train.py: tokens in {cfg.data} were made by tokenizer {tok_info['hash']}, "
                             f"but {tok_path} is {tokenizer.hash}; re-run preprocess.py or pass the right --tokenizer")
    if cfg.perceptual != "off" and tokenizer is None:
        raise SystemExit("train.py: --perceptual needs a tokenizer (decode_soft); it was disabled with --tokenizer none")
    if cfg.head == "codebook" and tokenizer is None:
        raise SystemExit("train.py: --head codebook needs the tokenizer's code vectors; it was disabled with --tokenizer none")
    kw = dict(val_fraction=cfg.val_fraction, seed=cfg.split_seed, expect_codebook_size=K,
              expect_hash=tok_info["hash"])
    try:
        train_ds = TokenWindowDataset(cfg.data, cfg.window, split="train", **kw)
        eval_window = cfg.eval_context + cfg.eval_rollout + 1
        try:
            val_ds = TokenWindowDataset(cfg.data, eval_window, split="val", **kw)
        except ValueError as e:  # e.g. a single trajectory: validate on training windows, and say so
            if master:
                print(f"warning: no validation split ({e}); validating on training trajectories")
            val_ds = TokenWindowDataset(cfg.data, eval_window, split="all", **kw)
        for i in range(len(train_ds.files)):  # token values must index the codebook
            top = int(np.asarray(train_ds.arrays(i)[0]).max())
            if top >= K:
                raise SystemExit(f"train.py: {train_ds.files[i]} holds token {top} >= codebook size {K} "
                                 f"(manifest): tokens and manifest disagree")
    except ValueError as e:
        raise SystemExit(f"train.py: bad --data: {e}")
    fps = manifest["trajectories"][0].get("fps") if manifest["trajectories"] else None
    return manifest, tokenizer, train_ds, val_ds, K, grid, fps


# ----------------------------------------------------------------------------- small helpers

def parse_schedule(items, window):
    """['0:0', '300:2'] -> [(0, 0), (300, 2)] sorted; rollouts must leave >= 1 teacher-forced step."""
    out = []
    for item in items:
        try:
            start, length = (int(v) for v in str(item).split(":"))
        except ValueError:
            raise SystemExit(f"train.py: rollout_schedule item {item!r} must be 'from_step:length'")
        if not 0 <= length <= window - 2:
            raise SystemExit(f"train.py: rollout length {length} must be in 0..window-2 = {window - 2}")
        out.append((start, length))
    return sorted(out) or [(0, 0)]


def rollout_length(schedule, step):
    return [length for start, length in schedule if start <= step][-1] if schedule[0][0] <= step else 0


def get_lr(cfg, step, max_steps=None):
    max_steps = cfg.max_steps if max_steps is None else max_steps
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def fit_plan(max_steps, schedule, step, s_per_step, seconds_left, margin=0.92, curriculum=True):
    """The steps that fit in seconds_left at s_per_step (with a margin for evaluations and
    checkpoints) -> (max_steps, schedule), the schedule shrunk by the same factor if curriculum;
    unchanged if all fit."""
    fits = step + int(margin * max(0.0, seconds_left) / max(s_per_step, 1e-9))
    if fits >= max_steps:
        return max_steps, schedule
    fits = max(fits, step + 1)
    if curriculum:
        schedule = [(start if start <= step else max(step, round(start * fits / max_steps)), length) for start, length in schedule]
    return fits, schedule


def get_batch(ds, cfg, step, rank, weights, device):
    """Window indices are a pure function of (seed, step, rank): the data position needs no state."""
    rng = np.random.default_rng([cfg.seed, step, rank])
    if weights is None:
        idx = rng.integers(0, len(ds), cfg.batch_size)
    else:
        idx = rng.choice(len(ds), cfg.batch_size, p=weights / weights.sum())
    items = [ds[int(i)] for i in idx]
    tokens = torch.stack([t for t, _ in items]).to(device)   # (B, W, h, w) int64
    actions = torch.stack([a for _, a in items]).to(device)  # (B, W-1, A)
    return tokens, actions


def corrupt(tokens, level, K):
    """Replace each token with a random code with probability `level` (per window). tokens [B,T,h,w], level [B]."""
    hit = torch.rand(tokens.shape, device=tokens.device) < level.view(-1, *([1] * (tokens.dim() - 1)))
    return torch.where(hit, torch.randint_like(tokens, K), tokens)


def code_cross_entropy(logits, targets, label_smoothing=0.0, weight=None, near=None):
    """logits [B, T, K, h, w] (codebook innermost in memory), targets [B, T, h, w] -> mean CE
    (weighted by weight [B, T, h, w] if given). Flattening with K last keeps the softmax on
    contiguous memory (several times faster on CPU). near: (table [K, k], share) spreads that share
    of each target over its k nearest codes (near_codes)."""
    K = logits.shape[2]
    flat = logits.permute(0, 1, 3, 4, 2).reshape(-1, K).float()
    if near is not None:
        codes, probs = near_targets(targets.reshape(-1), *near)
        ce = -(torch.log_softmax(flat, -1).gather(-1, codes) * probs).sum(-1)
    elif weight is None:
        return F.cross_entropy(flat, targets.reshape(-1), label_smoothing=label_smoothing)
    else:
        ce = F.cross_entropy(flat, targets.reshape(-1), label_smoothing=label_smoothing, reduction="none")
    return ce.mean() if weight is None else (ce * weight.reshape(-1)).sum() / weight.sum()


def near_codes(vectors, k):
    """Code vectors [K, d] -> [K, k]: each code's k nearest other codes (Euclidean), nearest first."""
    dist = torch.cdist(vectors.float(), vectors.float())
    dist.fill_diagonal_(float("inf"))
    return dist.topk(k, dim=-1, largest=False).indices


def changed_weights(tokens, weight):
    """tokens [B, T+1, h, w] -> [B, T, h, w]: `weight` where frame t+1's code differs from frame t's, 1
    elsewhere; None for weight 1."""
    if weight == 1:
        return None
    return 1 + (weight - 1) * (tokens[:, 1:] != tokens[:, :-1]).float()


class Objective(nn.Module):
    """Everything one training step computes, in one forward (so DDP sees a single forward)."""

    def __init__(self, model: WorldModel, cfg: TrainConfig, tokenizer=None):
        super().__init__()
        self.model, self.cfg = model, cfg
        self.sampler = Sampler(cfg.temperature, cfg.top_k, cfg.top_p, cfg.keep_above)
        self.tokenizer = tokenizer  # plain object, not a submodule: frozen, never in the state dict
        self.near = None
        if cfg.near_smoothing > 0:
            if tokenizer is None:
                raise SystemExit("train.py: --near_smoothing needs the tokenizer's code vectors; it was disabled with --tokenizer none")
            if cfg.label_smoothing > 0:
                raise SystemExit("train.py: --near_smoothing and --label_smoothing both spread the target; use one of them")
            table = near_codes(tokenizer.code_vectors(), cfg.near_k).to(next(model.parameters()).device)
            self.register_buffer("near_table", table, persistent=False)
            self.near = cfg.near_smoothing
        # the copy mixture's loss is taken at the target codes only (Mixture.nll): the same value, less work
        self.mixture_loss = model.cfg.copy_prior and model.cfg.copy_mixture
        # compiled for training only (validation runs eager). Static shapes: the time loop is
        # unrolled, so every sequence length is its own graph anyway, and the curriculum has few
        self.forward_sequence, self.step = model.forward_sequence, model.step
        if cfg.compile:
            self.forward_sequence = torch.compile(model.forward_sequence, dynamic=False)
            self.step = torch.compile(model.step, dynamic=False)
        self.lpips = None
        if cfg.perceptual == "lpips":
            try:
                import lpips
                self.lpips = lpips.LPIPS(net="alex", verbose=False).eval().requires_grad_(False)
            except Exception as e:  # weights are downloaded on first use; no internet -> say so now
                raise SystemExit(f"train.py: --perceptual lpips unavailable ({e}); use --perceptual l1")

    def predict(self, tokens, actions, rollout, aux=None, parts=False):
        """Logits for frames 1..W-1 of a window: teacher-forced on (corrupted) frames 0..T0-1, then
        `rollout` steps fed with the model's own samples. Frame t+1 is never an input for predicting
        frame t+1, and frames T0..W-1 are never inputs at all. tokens [B, W, h, w], actions [B, W-1, A]
        -> logits_tf [B, T0, K, h, w], logits_ro [B, R, K, h, w] (or None), present [B, W-1].
        aux (a dict) receives the teacher-forced frames' "shift_logits" [B, T0, S] (copy_shifts).
        parts (copy_mixture): Mixtures with fields [B, T0 or R, h, w, ...] instead of the logits."""
        cfg, m = self.cfg, self.model
        B, W = tokens.shape[:2]
        T0 = W - 1 - rollout                                          # teacher-forced input frames
        level = torch.rand(B, device=tokens.device) * cfg.corruption_max
        present = (torch.rand(B, W - 1, device=tokens.device) >= cfg.action_dropout).float()
        context = corrupt(tokens[:, :T0], level, m.cfg.codebook_size)  # (B, T0, h, w): frames 0..T0-1 only
        state, chunks, shifts = None, [], []
        for s in range(0, T0, cfg.bptt):                              # truncated BPTT
            state = None if state is None else tuple(h.detach() for h in state)
            e = min(T0, s + cfg.bptt)
            # contiguous: a slice's strides depend on T0, and each new stride would be a recompile
            out = {} if aux is not None else None
            logits, state = self.forward_sequence(context[:, s:e].contiguous(), actions[:, s:e], state,
                                                  present[:, s:e], level, aux=out, parts=parts)
            chunks.append(logits)
            if out and "shift_logits" in out:
                shifts.append(out["shift_logits"])
        logits_tf = Mixture.cat(chunks, 1) if parts else torch.cat(chunks, dim=1)  # (B, T0, K, h, w)
        if shifts:
            aux["shift_logits"] = torch.cat(shifts, dim=1)            # (B, T0, S)
        preds, prev = [], logits_tf.map(lambda x: x[:, -1]) if parts else logits_tf[:, -1]
        sampled = torch.full((B,), m.cfg.sampled_level, device=tokens.device)  # the inputs below are samples
        for r in range(rollout):                                      # feed back the model's own samples
            t = T0 + r
            if r % cfg.bptt == 0:
                state = tuple(h.detach() for h in state)
            if parts:
                with torch.no_grad():
                    full = prev.map(lambda x: x.detach()).log_probs().permute(0, 3, 1, 2)  # (B, K, h, w)
            else:
                full = prev.detach()
            frame = self.sampler(full)                                # (B, h, w): its sample of frame t
            prev, state = self.step(frame, actions[:, t], state, present[:, t], sampled, parts=parts)
            preds.append(prev)
        if not rollout:
            logits_ro = None
        elif parts:
            logits_ro = Mixture.cat([p.map(lambda x: x[:, None]) for p in preds], 1)
        else:
            logits_ro = torch.stack(preds, dim=1)                     # (B, R, K, h, w)
        return logits_tf, logits_ro, present

    def forward(self, tokens, actions, rollout):
        cfg, m = self.cfg, self.model
        B, W, H, Wd = tokens.shape
        T0 = W - 1 - rollout
        aux = {} if cfg.shift_weight > 0 and m.cfg.copy_shifts > 0 else None
        parts = self.mixture_loss and cfg.label_smoothing == 0 and cfg.perceptual == "off"
        logits_tf, logits_ro, present = self.predict(tokens, actions, rollout, aux, parts)
        weight = changed_weights(tokens, cfg.changed_weight)
        w_tf, w_ro = (None, None) if weight is None else (weight[:, :T0], weight[:, T0:])
        near = None if self.near is None else (self.near_table, self.near)
        ce_tf = logits_tf.nll(tokens[:, 1:T0 + 1], w_tf, near) if parts else code_cross_entropy(
            logits_tf, tokens[:, 1:T0 + 1], cfg.label_smoothing, w_tf, near)
        stats = {"loss/ce_tf": ce_tf.detach()}
        ce = ce_tf
        if rollout:
            ce_ro = logits_ro.nll(tokens[:, T0 + 1:], w_ro, near) if parts else code_cross_entropy(
                logits_ro, tokens[:, T0 + 1:], cfg.label_smoothing, w_ro, near)
            ce = (ce_tf * T0 + ce_ro * rollout) / (T0 + rollout)
            stats["loss/ce_rollout"] = ce_ro.detach()
            stats["loss/rollout_gap"] = (ce_ro - ce_tf).detach()
        # inverse dynamics on true pairs, and on (true frame t, predicted t+1) where the action was given
        emb = m.embed_tokens(tokens.flatten(0, 1)).view(B, W, -1, H, Wd)
        a_true = m.inverse_dynamics(emb[:, :-1].flatten(0, 1), emb[:, 1:].flatten(0, 1)).view(B, W - 1, -1)
        idm = F.mse_loss(a_true.float(), actions)
        # on a uniform random subset of predicted frames: the soft embedding costs a K-wide matmul per cell
        pick = torch.randperm(B * (W - 1), device=tokens.device)[:cfg.idm_pred_frames]
        if parts:  # the picked frames' mixtures, teacher-forced ones first (the loss is a mean: order is free)
            b, t = pick // (W - 1), pick % (W - 1)
            tf = t < T0
            pick = torch.cat([pick[tf], pick[~tf]])
            chosen = [logits_tf.map(lambda x: x[b[tf], t[tf]])]
            if rollout:
                chosen.append(logits_ro.map(lambda x: x[b[~tf], t[~tf] - T0]))
            picked = Mixture.cat(chosen, 0).log_probs().permute(0, 3, 1, 2)  # (n, K, h, w)
        else:
            all_logits = logits_tf if not rollout else torch.cat([logits_tf, logits_ro], dim=1)  # (B, W-1, K, h, w)
            picked = all_logits.flatten(0, 1)[pick]
        a_pred = m.inverse_dynamics(emb[:, :-1].flatten(0, 1)[pick].detach(), m.soft_embed(picked))
        keep = present.flatten()[pick]
        err = ((a_pred.float() - actions.flatten(0, 1)[pick]) ** 2).mean(-1)
        idm_pred = (err * keep).sum() / keep.sum().clamp(min=1)
        loss = ce + cfg.idm_weight * idm + cfg.idm_pred_weight * idm_pred
        stats.update({"loss/ce": ce.detach(), "loss/idm": idm.detach(), "loss/idm_pred": idm_pred.detach()})
        if aux:  # the shift each true next frame's codes took, as the moved copy's target
            labels = shift_labels(tokens[:, :T0].flatten(0, 1), tokens[:, 1:T0 + 1].flatten(0, 1), m.shift_offsets)
            shift_ce = F.cross_entropy(aux["shift_logits"].flatten(0, 1).float(), labels)
            loss = loss + cfg.shift_weight * shift_ce
            stats["loss/shift"] = shift_ce.detach()
        if cfg.perceptual != "off":
            perc = self.perceptual_loss(all_logits, tokens[:, 1:])
            loss = loss + cfg.perceptual_weight * perc
            stats["loss/perceptual"] = perc.detach()
        stats["loss/total"] = loss.detach()
        return loss, stats

    def perceptual_loss(self, logits, targets):
        """Soft decode of predicted distributions vs decode of the true codes, on frames drawn
        uniformly over time every step (a fixed subset of steps made frames flash, notes section 3)."""
        B, T, K, H, W = logits.shape
        n = min(self.cfg.perceptual_frames, B * T)
        pick = torch.randperm(B * T, device=logits.device)[:n]
        probs = torch.softmax(logits.flatten(0, 1)[pick].permute(0, 2, 3, 1).float(), dim=-1).permute(0, 3, 1, 2)
        image = self.tokenizer.decode_soft(probs)                                 # (n, 3, H, W) in [-1, 1]
        with torch.no_grad():
            target = self.tokenizer.decode_soft(F.one_hot(targets.flatten(0, 1)[pick], K).permute(0, 3, 1, 2).float())
        if self.lpips is not None:
            return self.lpips(image, target).mean()
        return (image - target).abs().mean()


def grad_norm(params):
    norms = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)).item() if norms else 0.0


# ----------------------------------------------------------------------------- setup

def parse_args(argv=None):
    """Config defaults < YAML < flags. A bare `--resume` means `--resume true`.
    Returns (cfg, requested): `requested` holds only the keys the user set (YAML or flags)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, a in enumerate(argv):
        if a == "--resume" and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
            argv.insert(i + 1, "true")
    parser = build_parser(TrainConfig, __doc__)
    args = parser.parse_args(argv)
    try:
        from_file = load_yaml(args.config) if args.config else {}
        flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if getattr(args, f.name) is not None}
        cfg = apply_overrides(apply_overrides(TrainConfig(), from_file, args.config), flags, "command line")
    except ConfigError as e:
        parser.error(str(e))
    return cfg, {**from_file, **flags}


def resolve_resume(cfg, requested, master):
    """On --resume: the saved config wins; a requested change to a hyperparameter is refused,
    a change to a logging/path key is printed loudly."""
    found = utils.latest_checkpoint(cfg.out) if os.path.isdir(cfg.out) else None
    if not cfg.resume:
        if found:
            raise SystemExit(f"train.py: {cfg.out} already holds checkpoints ({os.path.basename(found)}); "
                             f"pass --resume to continue that run, or choose another --out")
        return cfg, None
    if not found:
        raise SystemExit(f"train.py: --resume, but no checkpoint (ckpt_*.pt) in {cfg.out}")
    found, ckpt = utils.load_newest(cfg.out, "world model", "--resume", log=print if master else lambda _: None)
    saved = dict(ckpt["config"])  # a model key added after this run was saved: the run used the model's own default
    built = WorldModelConfig(**ckpt["model_args"])
    saved.update({k: getattr(built, k) for k in MODEL_KEYS if k not in saved})
    saved = config_from_dict(TrainConfig, saved)
    new = apply_overrides(saved, requested, "resume")
    changed = {k: (getattr(saved, k), getattr(new, k)) for k in requested if getattr(saved, k) != getattr(new, k)}
    refused = {k: v for k, v in changed.items() if k not in RESUME_SAFE}
    if refused:
        lines = "\n".join(f"  {k}: saved {a!r} -> requested {b!r}" for k, (a, b) in refused.items())
        raise SystemExit(f"train.py: refusing to resume {found} with changed hyperparameters:\n{lines}\n"
                         f"resume with the saved values (drop these flags) or start a new run in another --out")
    if master:
        for k, (a, b) in changed.items():
            if k != "resume":
                print(f"RESUME NOTE: {k} changed from {a!r} to {b!r} (does not change what is trained)")
        print(f"resuming from {found} at step {ckpt['step']}")
    return dataclasses.replace(new, resume=True), ckpt


def configure_optimizer(model, cfg, device):
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    other = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, cfg.beta2), fused=device.type == "cuda")


def gather_rng(ddp, world):
    state = utils.get_rng_state()
    if not ddp:
        return [state]
    out = [None] * world
    dist.all_gather_object(out, state)
    return out


class StopFlag:
    """SIGTERM/SIGINT -> finish the current step, checkpoint, exit with 128 + signal number."""

    def __init__(self):
        self.signal = None
        signal.signal(signal.SIGTERM, self.set)
        signal.signal(signal.SIGINT, self.set)

    def set(self, signum, frame):
        self.signal, self.signum = signal.Signals(signum).name, signum


# ----------------------------------------------------------------------------- training

def main(argv=None):
    cfg, requested = parse_args(argv)
    ddp, rank, local_rank, world, device = utils.setup_distributed(cfg.device)
    master = rank == 0
    cfg, ckpt = resolve_resume(cfg, requested, master)
    if master:
        print(format_config(cfg), flush=True)
    utils.seed_everything(cfg.seed + rank)
    manifest, tokenizer, train_ds, val_ds, K, grid, fps = load_data(cfg, master)
    tok_info = dict(manifest["tokenizer"], path=tokenizer.path if tokenizer else manifest["tokenizer"]["path"])
    if ckpt is not None and ckpt["tokenizer"]["hash"] != tok_info["hash"]:
        raise SystemExit(f"train.py: the checkpoint was trained on tokenizer {ckpt['tokenizer']['hash']}, "
                         f"--data {cfg.data} is tokenized by {tok_info['hash']}")
    if master and cfg.copy_prior and cfg.copy_motion == "anchored_shift" and not tok_info.get("sticky_track"):
        print(f"warning: copy_motion 'anchored_shift' learns the camera shift from codes that move with the picture, "
              f"but {cfg.data} was made without preprocess.py --sticky_track; on codes that stay in place it "
              f"pulls the shift to zero (README, 'How good the world model is')")
    action_names = list(manifest["action_names"])
    yaw_index = action_names.index("yaw") if "yaw" in action_names else None
    move_index = action_names.index("move_z") if "move_z" in action_names else None
    schedule = parse_schedule(cfg.rollout_schedule, cfg.window)

    codes = tokenizer.code_vectors() if tokenizer is not None and cfg.head == "codebook" else None
    mcfg = WorldModelConfig(codebook_size=K, grid=grid, action_dim=len(action_names),
                            code_dim=0 if codes is None else codes.shape[1], **{k: getattr(cfg, k) for k in MODEL_KEYS})
    model = WorldModel(mcfg).to(device)
    if codes is not None:
        model.set_codebook(codes)
    if tokenizer is not None:
        tokenizer.to(device)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = configure_optimizer(model, cfg, device)
    precision = utils.resolve_precision(device, cfg.precision)
    ctx = utils.autocast_context(device, precision)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    step, bad_run, bad_total, elapsed, plan = 0, 0, 0, 0.0, None
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        step, elapsed = int(ckpt["step"]), float(ckpt.get("elapsed_s", 0.0))
        plan = ckpt.get("plan")
        bad_run, bad_total = ckpt["bad_steps"]["consecutive"], ckpt["bad_steps"]["total"]
        rng = ckpt["rng"]
        if len(rng) != world and master:
            print(f"RESUME NOTE: saved with {len(rng)} processes, now {world}: RNG streams differ from the original run")
        utils.set_rng_state(rng[rank % len(rng)])
        del ckpt
    max_steps = cfg.max_steps
    if plan is not None:  # fitted to the time budget by an earlier invocation of this run
        max_steps, schedule = int(plan["max_steps"]), [tuple(x) for x in plan["schedule"]]
    objective = Objective(model, cfg, tokenizer)
    runner = objective
    if ddp:
        runner = nn.parallel.DistributedDataParallel(objective, device_ids=[local_rank] if device.type == "cuda" else None)
    weights = train_ds.window_weights(cfg.action_balanced, cfg.balance_back) if cfg.action_balanced > 0 else None
    logger = utils.Logger(cfg.out, cfg.wandb, cfg.wandb_project, cfg.run_name or None, dataclasses.asdict(cfg), master)
    stop = StopFlag()
    if master:
        print(f"data: {len(train_ds)} train windows of {cfg.window} frames from {len(train_ds.files)} trajectories, "
              f"{len(val_ds.files)} for validation; codebook {K}, grid {grid}, actions {action_names}, fps {fps}")
        print(f"model: {model.num_params() / 1e6:.2f}M parameters; device {device}, precision {precision}, "
              f"world size {world}; rollout schedule {schedule}")

    def checkpoint(step):
        rng = gather_rng(ddp, world)  # every rank takes part; rank 0 writes
        if not master:
            return None
        obj = {"model_args": dataclasses.asdict(mcfg), "model": model.state_dict(), "config": utils.plain(dataclasses.asdict(cfg)),
               "tokenizer": {k: tok_info[k] for k in ("path", "hash", "codebook_size", "grid", "frame_size", "sticky", "sticky_track")
                             if k in tok_info},
               "action_names": action_names, "fps": fps, "step": step,
               "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "rng": rng,
               "curriculum": {"schedule": schedule, "rollout": rollout_length(schedule, step)},
               "data": {"sampler": "window indices = f(seed, step, rank)", "next_step": step, "world_size": world},
               "bad_steps": {"consecutive": bad_run, "total": bad_total}, "elapsed_s": elapsed, "plan": plan}
        return utils.save_checkpoint(obj, cfg.out, step, cfg.keep)

    from tqdm import tqdm
    bar = tqdm(total=max_steps, initial=step, disable=not master, dynamic_ncols=True)
    start_step, last_saved, reason = step, None, "finished"
    loop_start, elapsed_before = time.time(), elapsed  # the budget counts evals and checkpoints too
    frames_per_step = cfg.batch_size * (cfg.window - 1) * world
    # fit_budget: the first steps at each rollout length are timed and the plan shrinks (never grows)
    # so that the rest, at that speed, ends inside the budget
    fit_on, timed_from, fitted = cfg.fit_budget and cfg.time_budget_s > 0, None, False
    while step < max_steps:
        t0 = time.time()
        lr = get_lr(cfg, step, max_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        rollout = rollout_length(schedule, step)
        tokens, actions = get_batch(train_ds, cfg, step, rank, weights, device)
        with ctx:
            loss, stats = runner(tokens, actions, rollout)
        finite = torch.isfinite(loss.detach()).float()
        if ddp:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if finite.item() < 1:  # skip the update everywhere, count it, stop if it persists
            bad_run, bad_total = bad_run + 1, bad_total + 1
            optimizer.zero_grad(set_to_none=True)
            if master:
                print(f"step {step}: non-finite loss ({bad_run} in a row, {bad_total} total): update skipped")
            if bad_run >= cfg.max_bad_steps:
                reason = f"stopped: {bad_run} consecutive non-finite losses (lower --lr, check data, try fp32)"
                break
            step += 1
            continue
        bad_run = 0
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        log_now = (step + 1) % cfg.log_every == 0 or step == start_step
        if log_now:
            g_action, g_dynamics = grad_norm(model.cond_mlp.parameters()), grad_norm(model.cells.parameters())
        total_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        dt = time.time() - t0
        elapsed = elapsed_before + time.time() - loop_start
        bar.update(1)
        if fit_on and (timed_from is None or timed_from[2] != rollout):
            timed_from, fitted = (step, time.time(), rollout), False  # each rollout length is timed afresh from its 2nd step
        elif fit_on and not fitted and step - timed_from[0] >= cfg.fit_after:
            fitted = True
            s_per_step = torch.tensor((time.time() - timed_from[1]) / (step - timed_from[0]))
            if ddp:  # every rank takes the slowest rank's plan
                dist.all_reduce(s_per_step, op=dist.ReduceOp.MAX)
            new_max, new_schedule = fit_plan(max_steps, schedule, step, float(s_per_step), cfg.time_budget_s - elapsed,
                                               curriculum=cfg.fit_curriculum)
            if new_max < max_steps or plan is None:
                if master:
                    bar.write(f"fit_budget: {float(s_per_step):.2f} s/step at rollout {rollout}: " + (
                        f"{new_max} of {max_steps} planned steps fit in the {cfg.time_budget_s:.0f}s budget; the "
                        f"learning-rate decay now ends at step {new_max}, rollout schedule {new_schedule}"
                        if new_max < max_steps else f"all {max_steps} planned steps fit in the {cfg.time_budget_s:.0f}s budget"))
                plan = {"max_steps": new_max, "schedule": [list(x) for x in new_schedule], "fitted_at": step,
                        "s_per_step": float(s_per_step), "planned_max_steps": cfg.max_steps}
                max_steps, schedule = new_max, new_schedule
                bar.total = max_steps

        if log_now:
            keys = sorted(stats)
            values = torch.stack([stats[k].float() for k in keys])
            if ddp:
                dist.all_reduce(values)
                values /= world
            row = dict(zip(keys, values.tolist()))
            row.update({"charts/lr": lr, "charts/rollout": rollout, "charts/frames_per_s": frames_per_step / dt,
                        "grad/total": float(total_norm), "grad/action_path": g_action, "grad/dynamics_path": g_dynamics,
                        "grad/action_over_dynamics": g_action / max(g_dynamics, 1e-12), "charts/bad_steps": bad_total})
            logger.log(row, step)
            bar.set_postfix(ce=f"{row['loss/ce']:.3f}", ro=rollout, fps=f"{frames_per_step / dt:.0f}")
        if master and cfg.eval_every and step % cfg.eval_every == 0:
            metrics, batch = validation.validate(model, val_ds, cfg, device, ctx, yaw_index, move_index)
            logger.log(metrics, step)
            bar.write(f"step {step}: " + " ".join(f"{k.split('/')[-1]}={v:.3g}" for k, v in metrics.items()))
            if tokenizer is not None and cfg.strip_every and step % cfg.strip_every == 0:
                path = validation.save_strip(model, tokenizer, batch, cfg, yaw_index, os.path.join(cfg.out, "strips", f"step_{step:08d}.png"))
                logger.log_image("strips/gt_pred_left_right", path, step)
        if step % cfg.ckpt_every == 0:
            elapsed = elapsed_before + time.time() - loop_start
            last_saved = checkpoint(step) or last_saved
        flags = torch.tensor([stop.signal is not None,
                              cfg.stop_after > 0 and step - start_step >= cfg.stop_after,
                              cfg.time_budget_s > 0 and elapsed_before + time.time() - loop_start >= cfg.time_budget_s], dtype=torch.float32)
        if ddp:  # every rank stops at the same step
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        if flags.any():
            reason = ["got " + (stop.signal or "a stop signal"), f"stop_after {cfg.stop_after} steps",
                      f"time budget {cfg.time_budget_s:.0f}s used"][int(flags.nonzero()[0])]
            break
    bar.close()
    if step % cfg.ckpt_every != 0 or last_saved is None:
        last_saved = checkpoint(step) or last_saved
    if master:
        print(f"{reason} at step {step} ({elapsed:.0f}s of training); checkpoint {last_saved}")
        if cfg.compile:
            print(utils.compile_summary())
        if device.type == "cuda":
            print(utils.peak_memory_summary(device))
    logger.finish()
    del runner  # DDP holds the process group; drop it before the group is destroyed
    utils.cleanup_distributed(ddp)
    if reason.startswith("stopped"):
        raise SystemExit(f"train.py: {reason}")
    if stop.signal is not None:  # saved, but not finished: a non-zero status so callers resume, not skip
        raise SystemExit(128 + stop.signum)


if __name__ == "__main__":
    main()
