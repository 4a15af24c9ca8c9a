"""Train the frame tokenizer (VQ-VAE with FSQ or EMA VQ) on video frames and export tokenizer.pt.

    python -m vq_vae.train --config configs/tokenizer_quickstart.yaml --data data/sandbox_gf --out checkpoints/tokenizer
    torchrun --nproc_per_node 4 -m vq_vae.train --config configs/tokenizer_a100.yaml --data ... --out ...
    python -m vq_vae.train --config ... --out checkpoints/tokenizer --resume auto   # exact resume

Frames are read through datasets.find_trajectories (the shared readers); the train/validation split
is by trajectory (datasets.split_files, the same rule the world model's token windows use).
Writes to --out: ckpt_<step>.pt (resume), tokenizer.pt (export), metrics.json (held-out metrics),
metrics.jsonl (every log step), recon_<step>.png grids (input | reconstruction).
"""
import dataclasses
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from config import format_config, opt, parse_config
from utils import (Logger, atomic_write_json, autocast_context, cleanup_distributed, compile_summary, get_rng_state,
                   load_newest, peak_memory_summary, plain, resolve_precision, save_checkpoint, seed_everything,
                   set_rng_state, setup_distributed)
from vq_vae.metrics import border_errors, build_lpips, check_lpips_weights, code_counts, codebook_stats, psnr, ssim
from vq_vae.model import VQVAE, VQVAEConfig
from vq_vae.tokenizer import export_tokenizer


@dataclass
class Config:
    # data
    data: str = opt("data/sandbox_gf", "dataset root read with datasets.find_trajectories")
    data_format: str = opt("auto", "gamefactory | minerl | vpt | auto")
    out: str = opt("checkpoints/tokenizer", "output folder: checkpoints, tokenizer.pt, metrics, PNG grids")
    width: int = opt(128, "frame width the tokenizer takes (frames are resized with INTER_AREA)")
    height: int = opt(72, "frame height the tokenizer takes")
    frame_step: int = opt(1, "use every n-th frame of each training clip (neighbouring frames are near duplicates)")
    max_train_frames: int = opt(0, "cap on training frames held in memory, spread over clips (0 = no cap)")
    val_fraction: float = opt(0.1, "fraction of trajectories held out for validation")
    split_seed: int = opt(0, "seed of the trajectory split (same rule as datasets.split_files)")
    eval_frames: int = opt(4096, "held-out frames for the final metrics (usage needs a large window)")
    # model
    channels: list[int] = opt([32, 64, 96], "conv width per resolution level; len-1 stride-2 downsamples")
    res_blocks: list[int] = opt([0, 1, 2], "residual blocks per resolution level")
    pixel_shuffle: bool = opt(False, "fold 2x2 pixels into channels at the input/output instead of full-resolution convs (cheaper)")
    quantizer: str = opt("ema", "fsq (finite scalar quantization) | ema (EMA VQ, k-means init, dead-code restart)")
    levels: list[int] = opt([8, 5, 5, 5], "FSQ levels per channel; codebook size = their product")
    codebook_size: int = opt(1024, "EMA VQ codebook size")
    code_dim: int = opt(8, "EMA VQ code dimension (l2-normalised; 8-32 keeps codes alive)")
    ema_decay: float = opt(0.9, "EMA VQ codebook decay")
    dead_code_threshold: float = opt(2.0, "EMA VQ: codes whose EMA use count per step is below this restart")
    kmeans_iters: int = opt(10, "EMA VQ: k-means iterations on the first batch")
    commitment: float = opt(0.25, "EMA VQ commitment loss weight")
    # loss
    l1_weight: float = opt(1.0, "weight of the L1 reconstruction loss")
    mse_weight: float = opt(1.0, "weight of the MSE reconstruction loss")
    lpips_weight: float = opt(0.0, "weight of LPIPS (needs the real ImageNet backbone weights; 0 = off)")
    lpips_net: str = opt("alex", "LPIPS backbone: alex | vgg | squeeze")
    # optimisation
    batch_size: int = opt(16, "frames per step per process")
    max_steps: int = opt(1000, "optimizer steps")
    lr: float = opt(2e-3, "peak learning rate (AdamW)")
    min_lr_frac: float = opt(0.1, "cosine decay floor as a fraction of lr")
    warmup_steps: int = opt(20, "linear warmup steps")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    grad_clip: float = opt(1.0, "global gradient-norm clip (0 = off)")
    min_steps: int = opt(0, "the time limit never stops training before this step (a usable tokenizer beats a fast one)")
    time_limit_min: float = opt(0.0, "whole-run budget in minutes (loading, training, final evaluation): training stops "
                                     "early to leave time for the evaluation, and the lr decay follows time too (0 = off)")
    # system
    device: str = opt("auto", "auto | cpu | cuda | cuda:N")
    precision: str = opt("auto", "auto | fp32 | bf16 | fp16 (autocast; the quantizer always runs in fp32)")
    compile: bool = opt(False, "torch.compile the model (CUDA)")
    num_threads: int = opt(0, "torch CPU threads (0 = torch default)")
    seed: int = opt(0, "random seed")
    log_every: int = opt(10, "steps between log lines (loss, PSNR, codebook active %)")
    image_every: int = opt(200, "steps between reconstruction PNG grids (0 = only at the end)")
    ckpt_every: int = opt(500, "steps between resumable checkpoints (0 = only at the end)")
    keep_ckpts: int = opt(2, "checkpoints kept in --out")
    resume: str = opt("", "checkpoint file or folder to resume from exactly; 'auto' = newest in --out")
    wandb: str = opt("off", "online | offline | off")
    wandb_project: str = opt("ochre", "wandb project")
    run_name: str = opt("", "run name for wandb (empty = folder name of --out)")


# fields that may change on resume without changing what is trained
RESUME_MAY_CHANGE = {"resume", "max_steps", "min_steps", "time_limit_min", "device", "num_threads", "log_every", "image_every",
                     "ckpt_every", "keep_ckpts", "wandb", "wandb_project", "run_name", "eval_frames", "compile",
                     "data", "out"}

MODEL_FIELDS = [f.name for f in dataclasses.fields(VQVAEConfig)]


def model_config(cfg: Config) -> VQVAEConfig:
    return VQVAEConfig(**{k: getattr(cfg, k) for k in MODEL_FIELDS})


def load_frames(cfg: Config, master: bool):
    """-> (train uint8 (N, H, W, 3), val uint8 (M, H, W, 3), info dict); split by trajectory."""
    import datasets  # the shared readers (B); imported here so the model code has no data dependency
    try:
        trajs, skipped = datasets.find_trajectories(cfg.data, cfg.data_format)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"--data: {e}") from None
    if master:
        for path, reason in skipped:
            print(f"skipped {path}: {reason}")
    if not trajs:
        raise SystemExit(f"no trajectories found under {cfg.data} (format {cfg.data_format})")
    names = [t.name for t in trajs]
    val_names = set(datasets.split_files(names, "val", cfg.val_fraction, cfg.split_seed))
    train_t = [t for t in trajs if t.name not in val_names]
    val_t = [t for t in trajs if t.name in val_names]
    if not val_t or not train_t:
        raise SystemExit(f"need at least 2 trajectories for a train/validation split, found {len(trajs)}")
    size = (cfg.width, cfg.height)
    step = cfg.frame_step
    if cfg.max_train_frames > 0:  # spread the cap over clips instead of taking the first clips only
        total = sum(math.ceil(t.num_frames / step) for t in train_t)
        step = max(step, math.ceil(step * total / cfg.max_train_frames))
    train = [f for t in train_t for f in t.frames(size=size, step=step)]
    val, per_clip = [], math.ceil(cfg.eval_frames / len(val_t))  # held-out frames from every val clip
    for t in val_t:
        val += list(t.frames(size=size, stop=per_clip))
    info = {"train_trajectories": len(train_t), "val_trajectories": len(val_t), "train_frames": len(train),
            "val_frames": len(val[:cfg.eval_frames]), "train_frame_step": step}
    return torch.from_numpy(np.stack(train)), torch.from_numpy(np.stack(val[:cfg.eval_frames])), info


def to_input(frames_uint8, device):
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1]."""
    return frames_uint8.to(device, non_blocking=True).permute(0, 3, 1, 2).float() / 127.5 - 1


def get_batch(frames, data_state, cfg, rank, world):
    """Next batch of a seeded per-epoch permutation; data_state = {epoch, pos} makes resume exact."""
    n = frames.shape[0]
    global_b = cfg.batch_size * world
    if data_state["pos"] + global_b > n:
        data_state["epoch"] += 1
        data_state["pos"] = 0
    g = torch.Generator().manual_seed(cfg.seed * 100003 + data_state["epoch"])
    perm = torch.randperm(n, generator=g)
    start = data_state["pos"] + rank * cfg.batch_size
    idx = perm[start:start + cfg.batch_size]
    data_state["pos"] += global_b
    return frames[idx]


def get_lr(step, cfg, time_frac=0.0):
    """Linear warmup, then cosine decay to min_lr_frac * lr. With a time limit the decay follows
    whichever runs out first, steps or time (time_frac = used / available training time), so a run
    cut short on a loaded machine still ends annealed (time-limited runs are not bit-reproducible)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = max((step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps), time_frac)
    floor = cfg.lr * cfg.min_lr_frac
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * min(t, 1.0)))


@torch.no_grad()
def evaluate(model, frames, device, ctx, lpips_model=None, batch_size=64):
    """Held-out metrics: codebook usage / perplexity / dead codes over all frames, PSNR, SSIM, LPIPS,
    the error at the picture's border against inside, and token stability: how often a cell's code
    changes between consecutive frames (held-out frames are whole clips in order), next to how much
    the pixels change."""
    model.eval()
    counts = torch.zeros(model.num_codes, dtype=torch.int64)
    sums = {"psnr": 0.0, "ssim": 0.0, "lpips": 0.0}
    border = torch.zeros(3, dtype=torch.float64)
    changed, pixel_change, pairs, prev = 0.0, 0.0, 0, None
    for i in range(0, frames.shape[0], batch_size):
        x = to_input(frames[i:i + batch_size], device)
        with ctx:
            y, idx, _ = model(x)
        y = y.float()
        counts += code_counts(idx, model.num_codes)
        sums["psnr"] += psnr(x, y).sum().item()
        sums["ssim"] += ssim(x, y).sum().item()
        border += border_errors(x, y).sum(0).double().cpu()
        xs, ids = (x, idx) if prev is None else (torch.cat([prev[0], x]), torch.cat([prev[1], idx]))
        changed += (ids[1:] != ids[:-1]).float().mean((1, 2)).sum().item()
        pixel_change += ((xs[1:] - xs[:-1]).abs().mean((1, 2, 3)) * 127.5).sum().item()
        pairs += len(ids) - 1
        prev = (x[-1:], idx[-1:])
        if lpips_model is not None:
            sums["lpips"] += lpips_model(x, y.clamp(-1, 1)).sum().item()
    model.train()
    n = frames.shape[0]
    stats = codebook_stats(counts)
    out = {"eval_frames": n, "usage": stats["usage"], "perplexity": stats["perplexity"],
           "perplexity_ratio": stats["perplexity"] / model.num_codes, "dead_codes": stats["dead_codes"],
           "psnr": sums["psnr"] / n, "ssim": sums["ssim"] / n,
           "mae_border": float(border[0] / n), "mae_corners": float(border[1] / n), "mae_inner": float(border[2] / n),
           "code_change_rate": changed / max(pairs, 1), "pixel_change_mae": pixel_change / max(pairs, 1)}
    if lpips_model is not None:
        out["lpips"] = sums["lpips"] / n
    return out


@torch.no_grad()
def save_grid(model, frames, path, device, ctx):
    """PNG: each row is input | reconstruction, side by side (uint8, clamped only here)."""
    from PIL import Image
    model.eval()
    x = to_input(frames, device)
    with ctx:
        y = model(x)[0].float()
    model.train()
    pair = torch.cat([x, y.clamp(-1, 1)], dim=3)  # (B, 3, H, 2W)
    img = ((pair + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    sep = np.full((2, img.shape[2], 3), 255, np.uint8)
    Image.fromarray(np.concatenate([r for row in img for r in (row, sep)][:-1])).save(path)


def check_resume_config(saved: dict, cfg: Config):
    changed = {k: (saved.get(k), v) for k, v in dataclasses.asdict(cfg).items()
               if k not in RESUME_MAY_CHANGE and saved.get(k) != v}
    if changed:
        lines = "\n".join(f"  {k}: checkpoint {a!r} != now {b!r}" for k, (a, b) in changed.items())
        raise SystemExit(f"--resume: these settings differ from the checkpoint's (start a new --out instead):\n{lines}")


def training_time_fraction(cfg, t_program, t_start, throughput, eval_frames):
    """Fraction of the training time available under time_limit_min that is used up (0 without a
    limit). The final evaluation is a batched forward pass, measured ~6x faster per frame than a
    training step on CPU (5x assumed, for a margin), so its duration is predicted from the measured
    training throughput (frames/s; None = not yet)."""
    if cfg.time_limit_min <= 0 or throughput is None:
        return 0.0
    now = time.time()
    eval_s = eval_frames / (5.0 * throughput)
    available = cfg.time_limit_min * 60 - (t_start - t_program) - eval_s
    return (now - t_start) / max(1e-9, available)


def main():
    t_program = time.time()
    cfg = parse_config(Config, description=__doc__)
    ddp, rank, local_rank, world, device = setup_distributed(cfg.device)
    master = rank == 0
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    if master:
        print(format_config(cfg))
    # fail at start-up, not after training: LPIPS weights, resume config
    lpips_model = None
    if cfg.lpips_weight > 0:
        check_lpips_weights(cfg.lpips_net)
        lpips_model = build_lpips(cfg.lpips_net, device)
    ckpt_path, ckpt = None, None
    if cfg.resume:
        ckpt_path, ckpt = load_newest(cfg.out if cfg.resume == "auto" else cfg.resume, "tokenizer checkpoint",
                                      "--resume", log=print if master else lambda _: None)
        check_resume_config(ckpt["config"], cfg)

    seed_everything(cfg.seed + rank)
    precision = resolve_precision(device, cfg.precision)
    ctx = autocast_context(device, precision)
    t0 = time.time()
    train_frames, val_frames, info = load_frames(cfg, master)
    if master:
        print(f"data: {info} ({time.time() - t0:.1f}s); device {device}, precision {precision}, world size {world}")

    model = VQVAE(model_config(cfg)).to(device)
    raw_model = model
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    scaler = torch.amp.GradScaler(device.type, enabled=(precision == "fp16"))
    step, data_state = 0, {"epoch": 0, "pos": 0}
    if ckpt is not None:
        raw_model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        step, data_state = ckpt["step"], dict(ckpt["data_state"])
        set_rng_state(ckpt["rng"][rank] if rank < len(ckpt["rng"]) else ckpt["rng"][0])
        if master:
            print(f"resumed from {ckpt_path} at step {step}")
        del ckpt
    if cfg.compile:
        model = torch.compile(model)
    if ddp:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)

    logger = Logger(cfg.out, mode=cfg.wandb, project=cfg.wandb_project, name=cfg.run_name or os.path.basename(os.path.abspath(cfg.out)),
                    config=dataclasses.asdict(cfg), enabled=master)
    grid_frames = val_frames[torch.linspace(0, val_frames.shape[0] - 1, 8).long()]

    def checkpoint():
        rngs = [None] * world
        if ddp:
            dist.all_gather_object(rngs, get_rng_state())
        else:
            rngs = [get_rng_state()]
        if master:
            save_checkpoint({"model": raw_model.state_dict(), "model_args": dataclasses.asdict(raw_model.cfg),
                             "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "step": step,
                             "data_state": dict(data_state), "rng": rngs, "config": plain(dataclasses.asdict(cfg))},
                            cfg.out, step, cfg.keep_ckpts)

    window_counts = torch.zeros(raw_model.num_codes, dtype=torch.int64)
    window = {"loss": 0.0, "psnr": 0.0, "n": 0}
    t_start, stopped_early, start_step = time.time(), False, step
    t_ref = None  # throughput is timed from the 10th step on: the first ones include k-means and warm-up
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not master, dynamic_ncols=True, desc="tokenizer")
    model.train()
    while step < cfg.max_steps:
        if step - start_step == 10:
            t_ref = time.time()
        throughput = (step - start_step - 10) * cfg.batch_size / (time.time() - t_ref) if step - start_step >= 20 else None
        time_frac = training_time_fraction(cfg, t_program, t_start, throughput, val_frames.shape[0])
        if ddp and cfg.time_limit_min > 0:  # rank 0's clock decides, so every rank stops at the same step
            frac_t = torch.tensor(time_frac, device=device)
            dist.broadcast(frac_t, 0)
            time_frac = frac_t.item()
        if time_frac >= 1.0 and step >= cfg.min_steps:
            stopped_early = True
            if master:
                print(f"time limit: stopping training at step {step} to leave time for the evaluation "
                      f"(whole run limited to {cfg.time_limit_min} min)")
            break
        if step < cfg.min_steps:  # out of time before min_steps: anneal over the steps still guaranteed
            time_frac = min(time_frac, step / cfg.min_steps)
        lr = get_lr(step, cfg, time_frac)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x = to_input(get_batch(train_frames, data_state, cfg, rank, world), device)  # (B, 3, H, W)
        with ctx:
            y, idx, aux = model(x)
            y = y.float()
            loss = cfg.l1_weight * (y - x).abs().mean() + cfg.mse_weight * F.mse_loss(y, x) + aux
            if lpips_model is not None:
                loss = loss + cfg.lpips_weight * lpips_model(x, y).mean()
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        step += 1

        window_counts += code_counts(idx.detach(), raw_model.num_codes)
        window["loss"] += loss.item()
        window["psnr"] += psnr(x.detach(), y.detach()).mean().item()
        window["n"] += 1
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            stats = codebook_stats(window_counts)
            row = {"losses/total": window["loss"] / window["n"], "train/psnr": window["psnr"] / window["n"],
                   "codebook/active_pct": 100 * stats["usage"], "codebook/perplexity": stats["perplexity"],
                   "codebook/dead": stats["dead_codes"], "charts/lr": lr,
                   "charts/frames_per_s": window["n"] * cfg.batch_size * world / max(1e-9, time.time() - window.get("t", t_start))}
            logger.log(row, step)
            bar.set_postfix(loss=f"{row['losses/total']:.4f}", psnr=f"{row['train/psnr']:.1f}",
                            active=f"{row['codebook/active_pct']:.0f}%", ppl=f"{stats['perplexity']:.0f}")
            window_counts.zero_()
            window = {"loss": 0.0, "psnr": 0.0, "n": 0, "t": time.time()}
        if master and cfg.image_every > 0 and step % cfg.image_every == 0:
            path = os.path.join(cfg.out, f"recon_{step:07d}.png")
            save_grid(raw_model, grid_frames, path, device, ctx)
            logger.log_image("recon", path, step)
        if cfg.ckpt_every > 0 and step % cfg.ckpt_every == 0:
            checkpoint()
        bar.update(1)
    bar.close()
    train_seconds = time.time() - t_start
    checkpoint()

    if master:
        print(f"evaluating on {val_frames.shape[0]} held-out frames ...")
        metrics = evaluate(raw_model, val_frames, device, ctx, lpips_model)
        k = raw_model.num_codes
        metrics.update({"codebook_size": k, "steps": step, "train_seconds": round(train_seconds, 1),
                        "stopped_by_time_limit": stopped_early, "quantizer": cfg.quantizer,
                        "gate_usage_ge_0.9": metrics["usage"] >= 0.9, "gate_perplexity_ge_half_k": metrics["perplexity"] >= 0.5 * k,
                        "lpips_note": "real ImageNet-backbone LPIPS" if lpips_model is not None else "not measured (no backbone weights / lpips_weight 0)",
                        **info})
        path = os.path.join(cfg.out, "tokenizer.pt")
        metrics["tokenizer_hash"] = export_tokenizer(raw_model, (cfg.height, cfg.width), path,
                                                     dataclasses.asdict(cfg), metrics)
        metrics["tokenizer_path"] = path
        atomic_write_json(metrics, os.path.join(cfg.out, "metrics.json"))
        grid_path = os.path.join(cfg.out, "recon_final.png")
        save_grid(raw_model, grid_frames, grid_path, device, ctx)
        logger.log({f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}, step)
        logger.log_image("recon_final", grid_path, step)
        logger.finish()
        print("held-out: " + ", ".join(f"{k} {metrics[k]:.4g}" for k in ("usage", "perplexity", "dead_codes", "psnr", "ssim")
                                       + (("lpips",) if "lpips" in metrics else ())))
        print(f"exported {path} (hash {metrics['tokenizer_hash']}); metrics in {os.path.join(cfg.out, 'metrics.json')}")
        if cfg.compile:
            print(compile_summary())
        if device.type == "cuda":
            print(peak_memory_summary(device))
    if ddp:
        dist.barrier()
    del model  # a DDP wrapper holds the process group; drop it before the group is destroyed
    cleanup_distributed(ddp)


if __name__ == "__main__":
    main()
