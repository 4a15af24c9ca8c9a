"""Training memory per process for every config: parameters, optimizer state, activations, and the
largest batch that fits a 16, 40 or 80 GB GPU.

    python -m bench.bench_memory [--quick]

Method (no GPU needed, so no GPU figure is claimed):
- static memory is counted: fp32 weights + fp32 gradients + AdamW's two fp32 moments = 16 bytes
  per parameter (DDP adds gradient buckets, about 4 more);
- activation memory is measured on CPU: the bytes of every tensor autograd saves for the backward
  pass (torch.autograd.graph.saved_tensors_hooks, each storage counted once, parameters excluded)
  during the real training forward, at batch 1 and 2 and, for the world model, at the schedule's
  longest rollout. It is linear in the batch, so a + b * batch extrapolates it;
- the forward runs in fp32, an upper bound for the configs' bf16/fp16: under CUDA autocast the
  conv inputs saved for the backward are 16-bit but GroupNorm and the gate arithmetic stay fp32;
- peak = static + 1.25 x activations (gradients of the activations and the allocator's
  fragmentation during the backward); a card of N GB is taken to hold 0.9 x N GiB minus 1 GiB
  for the CUDA context and cuDNN workspaces. Trust the figures to about +-30%; `make gpu-check`
  prints the measured peak (torch.cuda.max_memory_allocated) on a real GPU.
"""
import dataclasses
import os
import sys

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from config import apply_overrides, load_yaml  # noqa: E402

GIB = 2 ** 30
STATIC_BYTES_PER_PARAM = 16  # weights, gradients, AdamW exp_avg and exp_avg_sq, all fp32
BACKWARD_FACTOR = 1.25
CARDS_GB = (16, 40, 80)
WORLD_CONFIGS = [("quickstart", "tokenizer_quickstart"), ("p100", "tokenizer_p100"), ("a100", "tokenizer_a100")]
TOKENIZER_CONFIGS = ["tokenizer_quickstart", "tokenizer_p100", "tokenizer_a100"]


def config_path(name):
    return os.path.join(ROOT, "configs", f"{name}.yaml")


def saved_bytes(fn, params):
    """Run fn() with grad and return the bytes autograd saved for the backward (each storage once)."""
    skip = {p.untyped_storage().data_ptr() for p in params}
    seen = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


def fit(b1, b2):
    """Activations at batch 1 and 2 -> (per-sample bytes, fixed bytes)."""
    per = b2 - b1
    return per, b1 - per


def largest_batch(static, per, fixed, card_gb):
    usable = 0.9 * card_gb * GIB - GIB
    room = (usable - static) / BACKWARD_FACTOR - fixed
    return max(0, int(room // per))


def row(name, params, batch, per, fixed, extra=None):
    static = STATIC_BYTES_PER_PARAM * params
    act = fixed + per * batch
    out = {"config": name, "params_M": params / 1e6, "optimizer_state_GiB": 8 * params / GIB,
           "static_GiB": static / GIB, "batch": batch, "activations_GiB": act / GIB,
           "activations_per_sample_MiB": per / 2 ** 20, "peak_GiB": (static + BACKWARD_FACTOR * act) / GIB}
    out.update({f"max_batch_{gb}GB": largest_batch(static, per, fixed, gb) for gb in CARDS_GB})
    out.update(extra or {})
    return out


def world_model_row(name, tok_name):
    import train
    from actions import ACTION_DIM
    from model_convGru import WorldModel, WorldModelConfig
    from vq_vae.model import VQVAEConfig
    cfg = apply_overrides(train.TrainConfig(), load_yaml(config_path(name)), config_path(name))
    tok_fields = {f.name for f in dataclasses.fields(VQVAEConfig)}
    tok_yaml = load_yaml(config_path(tok_name))
    tok = VQVAEConfig(**{k: v for k, v in tok_yaml.items() if k in tok_fields})
    H, W = tok_yaml.get("height", 72), tok_yaml.get("width", 128)
    grid = (H // tok.downsample, W // tok.downsample)
    K = tok.num_codes
    model = WorldModel(WorldModelConfig(codebook_size=K, grid=grid, action_dim=ACTION_DIM,
                                        **{k: getattr(cfg, k) for k in train.MODEL_KEYS}))
    objective = train.Objective(model, dataclasses.replace(cfg, compile=False))
    rollout = max(int(item.split(":")[1]) for item in cfg.rollout_schedule)
    params = list(model.parameters())

    def forward(batch):
        torch.manual_seed(0)
        tokens = torch.randint(0, K, (batch, cfg.window, *grid))
        actions = torch.randn(batch, cfg.window - 1, ACTION_DIM)
        return lambda: objective(tokens, actions, rollout)[0]
    per, fixed = fit(saved_bytes(forward(1), params), saved_bytes(forward(2), params))
    return row(name, sum(p.numel() for p in params), cfg.batch_size, per, fixed,
               {"window": cfg.window, "rollout": rollout, "grid": list(grid), "codebook": K, "precision": cfg.precision})


def tokenizer_row(name):
    from vq_vae.model import VQVAE
    from vq_vae.train import Config, model_config
    cfg = apply_overrides(Config(), load_yaml(config_path(name)), config_path(name))
    model = VQVAE(model_config(cfg)).train()
    model.quantizer.initted.fill_(True)  # skip the k-means start: it is not part of a step's memory
    params = list(model.parameters())

    def forward(batch):
        x = torch.rand(batch, 3, cfg.height, cfg.width) * 2 - 1

        def step():
            y, _, aux = model(x)
            return (y - x).abs().mean() + F.mse_loss(y, x) + aux
        return step
    per, fixed = fit(saved_bytes(forward(1), params), saved_bytes(forward(2), params))
    return row(name, sum(p.numel() for p in params), cfg.batch_size, per, fixed,
               {"frame": [cfg.height, cfg.width], "precision": cfg.precision, "lpips": cfg.lpips_weight > 0})


def run(quick=False):
    rows = [world_model_row(n, t) for n, t in WORLD_CONFIGS]
    rows += [tokenizer_row(n) for n in ([] if quick else TOKENIZER_CONFIGS)]
    print(f"{'config':<22}{'params':>9}{'opt state':>11}{'batch':>7}{'act/sample':>12}{'peak':>9}"
          + "".join(f"{f'max@{gb}GB':>10}" for gb in CARDS_GB))
    for r in rows:
        print(f"{r['config']:<22}{r['params_M']:8.2f}M{r['optimizer_state_GiB']:10.3f}G{r['batch']:>7}"
              f"{r['activations_per_sample_MiB']:10.0f}Mi{r['peak_GiB']:8.2f}G"
              + "".join(f"{r[f'max_batch_{gb}GB']:>10}" for gb in CARDS_GB))
    return {"method": "static 16 B/param counted; activations = autograd-saved bytes measured on CPU in fp32 at "
                      "batch 1 and 2, extrapolated linearly; peak = static + 1.25 x activations; a card of N GB "
                      "holds 0.9 N GiB - 1 GiB", "rows": rows}


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
