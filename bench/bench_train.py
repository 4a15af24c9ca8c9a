"""World-model training throughput on this machine: frames/s = batch x predicted steps per second
of a full training step (forward, CE + inverse-dynamics losses, backward, clip, AdamW).

    python -m bench.bench_train          # full
    python -m bench.bench_train --quick  # fewer repeats
    python -m bench.bench_train --compile-only [--quick]  # only eager vs torch.compile
    python -m bench.bench_train --mixture-loss   # only the copy mixture's loss at the targets vs mixed in full

Variants at hidden 128 x 3 layers isolate what makes the cell fast:
- "per-step" runs every time step through the whole cell (both convs per step, like a plain
  ConvGRU loop); "layer-major" does the input convs of all T steps in one batched conv per layer
  and only the recurrent conv per step;
- "full-res" vs "half-res": the recurrent cells on the 32x18 grid or on 16x9 (stride-2 stem,
  pixel-shuffle back);
- "separable": depthwise + pointwise recurrent conv.
Then the quickstart step eager against torch.compile (inductor), in interleaved rounds.
Timings on a shared CPU are noisy: the median of a few repeats is reported, in wall-clock frames/s
and in frames per (CPU seconds / threads), which is less sensitive to other processes' load.
"""
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from model_convGru import WorldModel, WorldModelConfig  # noqa: E402
from train import MODEL_KEYS, Objective, TrainConfig, code_cross_entropy  # noqa: E402

K, GRID, A = 1024, (18, 32), 7


def quickstart_config():
    with open(os.path.join(ROOT, "configs", "quickstart.yaml")) as f:
        return TrainConfig(**yaml.safe_load(f))


def build_objective(cfg):
    """train.py's Objective around a fresh model of cfg's sizes, and its optimizer."""
    model = WorldModel(WorldModelConfig(codebook_size=K, grid=GRID, action_dim=A, **{k: getattr(cfg, k) for k in MODEL_KEYS}))
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    return model, Objective(model, cfg), torch.optim.AdamW(model.parameters(), lr=1e-3)


def random_batch(cfg):
    """Random tokens [B, window, h, w] and actions [B, window - 1, A] at cfg's batch and window."""
    return torch.randint(0, K, (cfg.batch_size, cfg.window, *GRID)), torch.randn(cfg.batch_size, cfg.window - 1, A)


def measure_objective(name, cfg, rollout, repeats):
    """The real training step of train.py (corruption, rollout, all losses) at cfg's sizes."""
    torch.manual_seed(0)
    model, objective, opt = build_objective(cfg)
    tokens, actions = random_batch(cfg)

    def one():
        t0, c0 = time.perf_counter(), time.process_time()
        loss, _ = objective(tokens, actions, rollout)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return time.perf_counter() - t0, time.process_time() - c0
    one()
    times = [one() for _ in range(repeats)]
    return summarize(name, times, cfg.batch_size, cfg.window - 1, model, dict(vars(cfg)), False, cfg.channels_last)


def measure_mixture_loss(cfg, rounds=5):
    """The quickstart step with the copy mixture's loss taken at the target codes (Mixture.nll, what
    train.py does) against mixing every code and taking the cross-entropy, in interleaved rounds,
    teacher-forced and with the curriculum's longest rollout."""
    torch.manual_seed(0)
    model, objective, opt = build_objective(cfg)
    tokens, actions = random_batch(cfg)
    tokens[:, 1:, :, :16] = tokens[:, :-1, :, :16]  # some cells keep their code: the copy terms carry mass
    last = max(int(item.split(":")[1]) for item in cfg.rollout_schedule)

    def one(fast, rollout):
        objective.mixture_loss = fast
        t0 = time.perf_counter()
        loss, _ = objective(tokens, actions, rollout)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0
    results = {}
    for rollout in sorted({0, last}):
        one(True, rollout), one(False, rollout)
        times = {True: [], False: []}
        for _ in range(rounds):
            for fast in (True, False):
                times[fast].append(one(fast, rollout))
        at_targets, full = statistics.median(times[True]), statistics.median(times[False])
        print(f"quickstart step, rollout {rollout}: loss at the targets {at_targets:.2f} s, mixed in full "
              f"{full:.2f} s ({full / at_targets:.2f}x; medians of {rounds} interleaved rounds)", flush=True)
        results[rollout] = {"at_targets_s": at_targets, "full_s": full}
    return results


def measure_compile(cfg, rounds):
    """The quickstart training step (teacher-forced) eager vs torch.compile (inductor), same weights
    and batch, timed in alternating rounds so a load change hits both; the first compiled step
    (compilation) is reported separately."""
    import dataclasses
    torch.manual_seed(0)
    tokens, actions = random_batch(cfg)
    runs = {}
    for name, compile in (("eager", False), ("compiled", True)):
        torch.manual_seed(0)
        runs[name] = build_objective(dataclasses.replace(cfg, compile=compile))

    def one(name):
        model, objective, opt = runs[name]
        t0 = time.perf_counter()
        loss, _ = objective(tokens, actions, 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0
    one("eager")
    first = one("compiled")
    times = {"eager": [], "compiled": []}
    for r in range(rounds):
        for name in (("eager", "compiled") if r % 2 == 0 else ("compiled", "eager")):
            times[name].append(one(name))
    ratios = [e / c for e, c in zip(times["eager"], times["compiled"])]
    row = {"name": "quickstart teacher-forced, eager vs compiled", "first_compiled_step_s": first,
           "eager_step_s": statistics.median(times["eager"]), "compiled_step_s": statistics.median(times["compiled"]),
           "speedup_median_of_rounds": statistics.median(ratios), "rounds": rounds,
           "load_avg_1min": os.getloadavg()[0]}
    print(f"compile: first compiled step {first:.0f}s; eager {row['eager_step_s']:.2f}s vs compiled "
          f"{row['compiled_step_s']:.2f}s per step, speedup {row['speedup_median_of_rounds']:.2f}x "
          f"(median of {rounds} interleaved rounds, load {row['load_avg_1min']:.1f})", flush=True)
    return row


def train_step_time(model, opt, tokens, actions, per_step):
    """-> (wall seconds, process CPU seconds) of one training step."""
    t0, c0 = time.perf_counter(), time.process_time()
    if per_step:  # every time step through the whole cell, one at a time
        state, outs = model.init_state(tokens.shape[0], tokens.device), []
        for t in range(actions.shape[1]):
            logits, state = model.step(tokens[:, t], actions[:, t], state)
            outs.append(logits)
        logits = torch.stack(outs, 1)
    else:
        logits = model(tokens, actions)                           # (B, T, K, h, w)
    loss = code_cross_entropy(logits, tokens[:, 1:])
    e = model.embed_tokens(tokens.flatten(0, 1)).view(*tokens.shape[:2], -1, *GRID)
    a_hat = model.inverse_dynamics(e[:, :-1].flatten(0, 1), e[:, 1:].flatten(0, 1))
    loss = loss + F.mse_loss(a_hat, actions.flatten(0, 1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return time.perf_counter() - t0, time.process_time() - c0


def measure(name, args, batch, steps, repeats, per_step=False, channels_last=False):
    torch.manual_seed(0)
    model = WorldModel(WorldModelConfig(codebook_size=K, grid=GRID, action_dim=A, **args))
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens = torch.randint(0, K, (batch, steps + 1, *GRID))
    actions = torch.randn(batch, steps, A)
    train_step_time(model, opt, tokens, actions, per_step)  # warm-up
    times = [train_step_time(model, opt, tokens, actions, per_step) for _ in range(repeats)]
    return summarize(name, times, batch, steps, model, args, per_step, channels_last)


def summarize(name, times, batch, steps, model, args, per_step, channels_last):
    dt = statistics.median(t for t, _ in times)
    # CPU seconds / threads: what the step would take with the cores to itself (load-robust estimate)
    cpu = statistics.median(c for _, c in times) / torch.get_num_threads()
    row = {"name": name, "frames_per_s": batch * steps / dt, "frames_per_cpu_s": batch * steps / cpu,
           "step_s": dt, "batch": batch, "steps": steps,
            "params_M": model.num_params() / 1e6, "per_step": per_step, "channels_last": channels_last,
            **{k: args[k] for k in ("hidden", "layers", "downsample", "separable")}}
    print(f"{name:34s} {row['frames_per_s']:9.1f} {row['frames_per_cpu_s']:13.1f} {dt:8.2f} {batch:>4d} x {steps:<3d} "
          f"{row['params_M']:9.2f}", flush=True)
    return row


def run(quick=False, compile_only=False, mixture_loss=False):
    if mixture_loss:
        return {"mixture_loss": measure_mixture_loss(quickstart_config())}
    if compile_only:
        return {"compile": measure_compile(quickstart_config(), 3 if quick else 8)}
    repeats = 1 if quick else 2
    q = quickstart_config()
    q_args = {k: getattr(q, k) for k in MODEL_KEYS}
    base = dict(q_args, embed_dim=64, hidden=128, layers=3, dilations=[1, 2, 4])
    print(f"{'variant':34s} {'frames/s':>9s} {'frames/cpu-s':>13s} {'step s':>8s} {'batch x T':>10s} {'params M':>9s}")
    rows = [measure_objective("quickstart, teacher-forced", q, 0, repeats)]
    if not quick:
        last = max(int(item.split(":")[1]) for item in q.rollout_schedule)
        rows.append(measure_objective(f"quickstart, rollout {last}", q, last, repeats))
    variants = [
        ("128x3 per-step, full-res", dict(base, downsample=False), dict(per_step=True)),
        ("128x3 layer-major, full-res", dict(base, downsample=False), {}),
        ("128x3 layer-major, half-res", dict(base, downsample=True), {}),
        ("128x3 half-res, separable", dict(base, downsample=True, separable=True), {}),
        ("128x3 half-res, channels-last", dict(base, downsample=True), dict(channels_last=True)),
        ("128x3 half-res, separable, ch-last", dict(base, downsample=True, separable=True), dict(channels_last=True)),
    ]
    if quick:
        variants = [variants[1], variants[2]]
    for name, args, kw in variants:
        rows.append(measure(name, args, 8, 8, repeats, **kw))
    compiled = measure_compile(q, 3 if quick else 8)
    result = {"device": "cpu", "threads": torch.get_num_threads(), "codebook": K, "grid": list(GRID),
              "compile": compiled,
              "note": "shared, loaded 2-core CPU: wall frames/s is noisy; frames/cpu-s = frames per "
                      "(process CPU seconds / threads), an estimate for an unloaded machine; medians of repeats",
              "rows": rows}
    return result


if __name__ == "__main__":
    run(quick="--quick" in sys.argv, compile_only="--compile-only" in sys.argv, mixture_loss="--mixture-loss" in sys.argv)
