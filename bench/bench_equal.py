"""Equal-size speed against the predecessor: hidden 128 x 3 layers with the cells at full
resolution (32 x 18), the size its figures were measured at.

    python -m bench.bench_equal            # full
    python -m bench.bench_equal --quick    # fewer rounds
    python -m bench.bench_equal --profile  # also the top operators of one training step

Two figures, each in fp32 and under bf16 autocast (where this CPU has bf16 instructions):
- training: frames/s of a teacher-forced step, batch 8 x 8 (forward, code CE + inverse dynamics,
  backward, clip, AdamW), 2 threads; target 45 frames/s (the predecessor: 28.9);
- play: ms per model step (world model only, batch 1, no sampling or decoding), 1 thread;
  target 14 ms (the predecessor: 20.9).
The precisions are timed in alternating rounds so a change of load hits both; medians. On a
shared machine the figures are low by the other processes' share: compare them only with
figures taken on the same idle machine.
"""
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.bench_train import A, GRID, K, quickstart_config, train_step_time  # noqa: E402
from model_convGru import WorldModel, WorldModelConfig  # noqa: E402
from train import MODEL_KEYS  # noqa: E402
from utils import cpu_has_fast_bf16  # noqa: E402

TARGETS = {"train_frames_per_s": 45.0, "play_step_ms": 14.0}
PREDECESSOR = {"train_frames_per_s": 28.9, "play_step_ms": 20.9}


def equal_size_args():
    q = quickstart_config()
    return dict({k: getattr(q, k) for k in MODEL_KEYS}, embed_dim=64, hidden=128, layers=3,
                dilations=[1, 2, 4], downsample=False)


def build(channels_last):
    torch.manual_seed(0)
    model = WorldModel(WorldModelConfig(codebook_size=K, grid=GRID, action_dim=A, **equal_size_args()))
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def amp(precision):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def measure_train(precisions, rounds, threads=2):
    torch.set_num_threads(threads)
    runs = {}
    for p in precisions:
        model = build(channels_last=True)
        runs[p] = (model, torch.optim.AdamW(model.parameters(), lr=1e-3))
    tokens = torch.randint(0, K, (8, 9, *GRID))
    actions = torch.randn(8, 8, A)
    times = {p: [] for p in precisions}
    for r in range(rounds + 1):
        for p in (precisions if r % 2 == 0 else precisions[::-1]):
            model, opt = runs[p]
            with amp(p):
                dt, _ = train_step_time(model, opt, tokens, actions, per_step=False)
            if r > 0:  # round 0 warms up
                times[p].append(dt)
    return {p: {"frames_per_s": 64 / statistics.median(t), "step_s": statistics.median(t), "threads": threads}
            for p, t in times.items()}


@torch.no_grad()
def measure_play(precisions, frames, threads=1):
    torch.set_num_threads(threads)
    models = {p: build(channels_last=True).eval() for p in precisions}
    states = {p: models[p].init_state(1, torch.device("cpu")) for p in precisions}
    tok = torch.randint(0, K, (1, *GRID))
    act = torch.randn(1, A)
    times = {p: [] for p in precisions}
    for i in range(frames + 5):
        for p in precisions:
            t0 = time.perf_counter()
            with amp(p):
                logits, states[p] = models[p].step(tok, act, states[p])
            if i >= 5:
                times[p].append(time.perf_counter() - t0)
    return {p: {"step_ms": 1e3 * statistics.median(t), "min_ms": 1e3 * min(t), "threads": threads}
            for p, t in times.items()}


def profile_train(precision, threads=2, rows=12):
    """Share of one training step's CPU time by operator (self time), largest first."""
    from torch.profiler import ProfilerActivity, profile
    torch.set_num_threads(threads)
    model = build(channels_last=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens, actions = torch.randint(0, K, (8, 9, *GRID)), torch.randn(8, 8, A)
    with amp(precision):
        train_step_time(model, opt, tokens, actions, per_step=False)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            train_step_time(model, opt, tokens, actions, per_step=False)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return {e.key: round(e.self_cpu_time_total / total, 3) for e in events[:rows]}


def run(quick=False, with_profile=False):
    precisions = ["fp32", "bf16"] if cpu_has_fast_bf16() else ["fp32"]
    result = {"size": "hidden 128 x 3 layers, full-resolution cells (32 x 18), embed 64, dilations 1,2,4",
              "targets": TARGETS, "predecessor": PREDECESSOR,
              "train": measure_train(precisions, 2 if quick else 5),
              "play": measure_play(precisions, 20 if quick else 60),
              "load_avg_1min": os.getloadavg()[0]}
    if with_profile:
        result["profile"] = {p: profile_train(p) for p in precisions}
    for p in precisions:
        tr, pl = result["train"][p], result["play"][p]
        print(f"{p}: training {tr['frames_per_s']:.1f} frames/s (target {TARGETS['train_frames_per_s']:.0f}, "
              f"predecessor {PREDECESSOR['train_frames_per_s']}); play step {pl['step_ms']:.1f} ms "
              f"(target <= {TARGETS['play_step_ms']:.0f}, predecessor {PREDECESSOR['play_step_ms']})", flush=True)
    for p, shares in result.get("profile", {}).items():
        print(f"profile {p}: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in shares.items()), flush=True)
    print(f"(load average {result['load_avg_1min']:.1f} while measuring)", flush=True)
    return result


if __name__ == "__main__":
    run(quick="--quick" in sys.argv, with_profile="--profile" in sys.argv)
