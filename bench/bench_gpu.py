"""GPU figures in one short run: the world model's training step and play step, eager against
torch.compile, on CUDA (or on CPU with --device cpu --tiny, to check the script).

    python -m bench.bench_gpu [--configs a100] [--out reports/bench_gpu.json]

Training: the config's model and precision (autocast; fp16 with a GradScaler), the real training
step of train.py (Objective: corruption, rollout through the sampler, all losses, backward, clip,
AdamW) at --batch x --window, teacher-forced (rollout 0) and with a 2-step rollout. Per variant:
the first step's seconds (compilation), then the median of --steps timed steps in frames/s, and
the number of graphs compiled. Play: the config's model under fp16 autocast (what `live_inference.py
--half` runs), one guided step as in play (sampling.GUIDANCE), eager and compiled: 3 warm-up calls (compilation)
and the median ms of --play_steps calls. Untrained weights: speed does not depend on them. --time_limit skips what would start after it and still writes the file.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import actions  # noqa: E402
from bench.bench_live import world_model_args  # noqa: E402
from sampling import GUIDANCE  # noqa: E402
from utils import compiled_graphs as graphs  # noqa: E402

K, GRID = 1024, (18, 32)
TINY = {"embed_dim": 8, "hidden": 16, "layers": 2, "dilations": [1, 2], "action_hidden": 16, "idm_hidden": 8}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_figures(config, device, batch, window, steps, compile, tiny):
    """First-step seconds and steady frames/s of train.py's step, rollouts 0 and 2."""
    import train
    from config import apply_overrides, load_yaml
    from model_convGru import WorldModel, WorldModelConfig
    from utils import autocast_context, resolve_precision
    path = os.path.join(ROOT, "configs", f"{config}.yaml")
    over = {**load_yaml(path), "batch_size": batch, "window": window, "compile": compile, **(TINY if tiny else {})}
    cfg = apply_overrides(train.TrainConfig(), over, path)
    torch.manual_seed(0)
    model = WorldModel(WorldModelConfig(codebook_size=K, grid=GRID, action_dim=actions.ACTION_DIM,
                                        **{k: getattr(cfg, k) for k in train.MODEL_KEYS})).to(device)
    objective = train.Objective(model, cfg)
    precision = resolve_precision(device, cfg.precision)
    ctx = autocast_context(device, precision)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, K, (batch, window, *GRID), device=device)
    acts = torch.randn(batch, window - 1, actions.ACTION_DIM, device=device)

    def one(rollout):
        sync(device)
        t0 = time.perf_counter()
        with ctx:
            loss, _ = objective(tokens, acts, rollout)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        sync(device)
        assert torch.isfinite(loss), f"loss {loss}"
        return time.perf_counter() - t0

    out = {"precision": precision, "batch": batch, "window": window}
    for rollout in (0, 2):
        g0 = graphs()
        first = one(rollout)
        times = [one(rollout) for _ in range(steps)]
        out[f"rollout{rollout}"] = {"first_step_s": round(first, 2),
                                    "frames_per_s": round(batch * (window - 1) / statistics.median(times), 1),
                                    "graphs": graphs() - g0}
    return out


def play_figures(config, device, steps, mode, tiny):
    """Warm-up (3 calls: compilation) and median ms of the play step (model only, fp16 on CUDA), guided as in play."""
    from live_inference import WorldModelEnv
    from model_convGru import WorldModel, WorldModelConfig
    args = world_model_args(TINY if tiny else None, yaml_path=f"configs/{config}.yaml")
    torch.manual_seed(0)
    model = WorldModel(WorldModelConfig(codebook_size=K, grid=GRID, action_dim=actions.ACTION_DIM, **args)).eval().to(device)
    on_gpu = device.type == "cuda"
    env = WorldModelEnv(model, tokenizer=None, device=device, half=on_gpu, compile=mode == "compiled", seed=0,
                        guidance=GUIDANCE)
    env.state = model.init_state(1, device)
    env.tokens = torch.randint(0, K, (1, *GRID), device=device)
    a = actions.make_action(yaw=0.3, move_z=1.0)
    g0 = graphs()
    t0 = time.perf_counter()
    for _ in range(3):  # the first call compiles; the first state is not yet an inference tensor
        env.predict(a)
    first = time.perf_counter() - t0
    ms = []
    for _ in range(steps):
        env.predict(a)
        ms.append(env.timings["step_ms"])
    return {"warmup_s": round(first, 2), "model_step_ms": round(statistics.median(ms), 2),
            "sample_ms": round(env.timings["sample_ms"], 2), "graphs": graphs() - g0}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="a100", help="world-model configs to train-benchmark (comma-separated)")
    p.add_argument("--play_configs", default="a100,quickstart", help="world-model configs to play-benchmark")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--window", type=int, default=6)
    p.add_argument("--steps", type=int, default=10, help="timed training steps per variant")
    p.add_argument("--play_steps", type=int, default=50)
    p.add_argument("--tiny", action="store_true", help="tiny models (checks the script on CPU)")
    p.add_argument("--time_limit", type=float, default=0, help="seconds; later parts are skipped (0 = none)")
    p.add_argument("--out", default="reports/bench_gpu.json")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_gpu: no CUDA device visible to torch; use --device cpu --tiny to check the script")
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    deadline = time.time() + args.time_limit if args.time_limit > 0 else float("inf")
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "train": {}, "play": {}}
    modes = ("eager", "compiled")
    play = [[("play", f"{c} {m}", lambda c=c, m=m: play_figures(c, device, args.play_steps, m, args.tiny)) for m in modes]
            for c in args.play_configs.split(",") if c]
    trains = [("train", f"{c} {m}", lambda c=c, m=m: train_figures(c, device, args.batch, args.window, args.steps,
                                                                   m == "compiled", args.tiny))
              for c in args.configs.split(",") if c for m in ("eager", "compiled")]
    jobs = [*(play[0] if play else []), *trains, *(job for group in play[1:] for job in group)]  # short ones first
    for kind, name, job in jobs:
        if time.time() > deadline:
            results[kind][name] = "skipped: time limit"
            continue
        t0 = time.time()
        try:
            results[kind][name] = job()
        except Exception as e:  # one variant failing must not hide the others' figures
            results[kind][name] = f"failed: {type(e).__name__}: {str(e)[:500]}"
        print(f"{kind} {name} ({time.time() - t0:.0f}s): {results[kind][name]}", flush=True)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    if device.type == "cuda":
        results["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
