"""Live-play speed on this machine: frames/s and ms per frame for the model step, token sampling,
decode and display, with untrained weights (speed does not depend on them).

    python -m bench.bench_live [--quick]

Sizes: the quickstart world model (configs/quickstart.yaml on train.py's defaults) with the
quickstart tokenizer (configs/tokenizer_quickstart.yaml), and the predecessor's reference size,
hidden 128 x 3 layers (at D's default half-resolution cells and, for an equal-size comparison,
at full resolution). The predecessor measured 27 frames/s (36.6 ms per frame incl. decoder) at
128 x 3. Display is the real pygame path (frombuffer, nearest scale to 6x, HUD) under whatever
SDL driver is set (dummy when there is no screen). Figures are medians over the timed frames; on
a shared machine they are noisy, so the minimum (the least disturbed frame) is reported too.
Last, the quickstart play step (model only) eager against torch.compile, frames interleaved.
"""
import dataclasses
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
if not os.environ.get("DISPLAY"):
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

import actions  # noqa: E402
from config import apply_overrides, load_yaml  # noqa: E402
from sampling import Sampler  # noqa: E402


def world_model_args(overrides: dict | None = None, yaml_path="configs/quickstart.yaml") -> dict:
    """train.py's model settings: its defaults, then the YAML (if present), then `overrides`."""
    import train
    cfg = train.TrainConfig()
    path = os.path.join(ROOT, yaml_path)
    if os.path.exists(path):
        cfg = apply_overrides(cfg, {k: v for k, v in load_yaml(path).items() if k in train.MODEL_KEYS}, path)
    args = {k: getattr(cfg, k) for k in train.MODEL_KEYS}
    args.update(overrides or {})
    return args


def tokenizer_args(yaml_path="configs/tokenizer_quickstart.yaml") -> dict:
    from vq_vae.model import VQVAEConfig
    fields = {f.name for f in dataclasses.fields(VQVAEConfig)}
    path = os.path.join(ROOT, yaml_path)
    return {k: v for k, v in load_yaml(path).items() if k in fields} if os.path.exists(path) else {}


def build_env(model_args: dict, tok_args: dict, tmp_dir: str):
    """An untrained tokenizer (exported and reloaded through the real API) + world model -> env."""
    from live_inference import Start, WorldModelEnv
    from model_convGru import WorldModel, WorldModelConfig
    from vq_vae import load_tokenizer
    from vq_vae.model import VQVAE, VQVAEConfig
    from vq_vae.tokenizer import export_tokenizer

    torch.manual_seed(0)
    path = os.path.join(tmp_dir, "tokenizer.pt")
    export_tokenizer(VQVAE(VQVAEConfig(**tok_args)), (72, 128), path)
    tok = load_tokenizer(path)
    model = WorldModel(WorldModelConfig(codebook_size=tok.codebook_size, grid=tuple(tok.grid),
                                        action_dim=actions.ACTION_DIM, **model_args)).eval()
    env = WorldModelEnv(model, tok, Sampler(), "cpu", seed=0)
    tokens = torch.randint(0, tok.codebook_size, (1, *tok.grid))
    env.reset(Start(tokens, np.zeros((0, actions.ACTION_DIM), np.float32), "bench"))
    return env, model


def measure(env, window, frames: int, warmup: int = 3) -> dict:
    """Step the env `frames` times with a changing action and draw each frame; per-part ms."""
    rows, cpu = [], []
    rng = np.random.default_rng(0)
    for i in range(warmup + frames):
        a = actions.make_action(yaw=rng.uniform(-0.5, 0.5), move_z=1.0)
        frame = env.step(a)
        t0 = time.perf_counter()
        t = env.timings
        window.draw([frame], [f"{i} fps | model {t['model_ms']:.1f} ms | decode {t['decode_ms']:.1f} ms",
                              f"action: {actions.describe(a)} | {env.sampler.describe()}"])
        display_ms = (time.perf_counter() - t0) * 1e3
        if i >= warmup:
            rows.append([t["step_ms"], t["sample_ms"], t["decode_ms"], display_ms])
            cpu.append([t["step_cpu_ms"], t["sample_cpu_ms"], t["decode_cpu_ms"]])
    rows, cpu = np.asarray(rows), np.asarray(cpu)
    total = rows.sum(1)
    out = {}
    for j, name in enumerate(["model_step_ms", "sample_ms", "decode_ms", "display_ms"]):
        out[name] = float(np.median(rows[:, j]))
        out[name.replace("_ms", "_min_ms")] = float(rows[:, j].min())
        if j < 3:
            out[name.replace("_ms", "_cpu_ms")] = float(np.median(cpu[:, j]))
    out["total_ms"] = float(np.median(total))
    out["total_min_ms"] = float(total.min())
    out["fps"] = 1000.0 / out["total_ms"]
    out["fps_best"] = 1000.0 / out["total_min_ms"]
    # CPU time of the calling thread: with 1 torch thread, the frame time on an idle core
    out["total_cpu_ms"] = float(np.median(cpu.sum(1) + rows[:, 3]))
    out["fps_cpu_time"] = 1000.0 / out["total_cpu_ms"]
    out["frames"] = frames
    return out


def measure_overlap(env, frames: int, warmup: int = 3) -> dict:
    """Wall-clock frames/s with --overlap: the decode of frame t in a worker thread while the
    main thread runs the model for frame t+1 (one torch thread each)."""
    from concurrent.futures import ThreadPoolExecutor
    pool = ThreadPoolExecutor(max_workers=1)
    pending = pool.submit(env.decode, env.tokens)
    for i in range(warmup + frames):
        if i == warmup:
            t0 = time.perf_counter()
        tokens = env.predict(actions.make_action(move_z=1.0))
        pending.result()
        pending = pool.submit(env.decode, tokens)
    pending.result()
    wall = (time.perf_counter() - t0) * 1e3 / frames
    pool.shutdown()
    return {"total_ms": wall, "fps": 1000.0 / wall}


def measure_compile(model_args: dict, tok_args: dict, tmp_dir: str, frames: int) -> dict:
    """The play step (model only, 1 thread) eager vs torch.compile (inductor) on the same weights,
    alternating one frame each so a change in load hits both; compilation is timed apart."""
    from live_inference import WorldModelEnv
    eager, model = build_env(model_args, tok_args, tmp_dir)
    compiled = WorldModelEnv(model, eager.tokenizer, Sampler(), "cpu", compile=True, seed=0)
    a = actions.make_action(move_z=1.0)
    t0 = time.perf_counter()
    compiled.reset(eager.start)
    compiled.predict(a)  # the first call compiles
    compile_s = time.perf_counter() - t0
    times = {"eager": [], "compiled": []}
    for i in range(3 + frames):
        for name, env in ((("eager", eager), ("compiled", compiled)) if i % 2 == 0 else
                          (("compiled", compiled), ("eager", eager))):
            env.predict(a)
            if i >= 3:
                times[name].append(env.timings["step_ms"])
    e, c = float(np.median(times["eager"])), float(np.median(times["compiled"]))
    print(f"play step, quickstart, 1 thread: eager {e:.1f} ms, compiled {c:.1f} ms ({e / c:.2f}x; "
          f"compilation {compile_s:.0f}s; {frames} interleaved frames, load {os.getloadavg()[0]:.1f})")
    return {"eager_step_ms": e, "compiled_step_ms": c, "speedup": e / c, "compile_s": compile_s, "frames": frames,
            "load_avg_1min": os.getloadavg()[0]}


def sampler_variants(env, frames: int) -> dict:
    """One grid's sampling: the shared sampler (top-k 50), argmax, and the change proposed for
    sampling.sample_tokens (the same distribution: select the k candidates with numpy's
    argpartition, then a k-way instead of a K-way softmax and draw)."""
    with torch.inference_mode():
        logits, _ = env.model.step(env.tokens, env.action, env.state, one_shift=True)
        g = torch.Generator().manual_seed(0)

        def proposed(lg, k=50):
            B, K, H, W = lg.shape
            flat = lg.float().permute(0, 2, 3, 1).reshape(-1, K).contiguous()
            idx = torch.from_numpy(np.argpartition(flat.numpy(), -k, axis=-1)[:, -k:])
            pick = torch.multinomial(torch.softmax(flat.gather(-1, idx), -1), 1, generator=g)
            return idx.gather(-1, pick).view(B, H, W)

        out = {}
        for name, fn in [("shared_topk50", lambda: env.sampler(logits, generator=g)),
                         ("argmax", lambda: logits.argmax(1)), ("proposed_topk50", lambda: proposed(logits))]:
            fn()
            ts, cs = [], []
            for _ in range(frames):
                t0, c0 = time.perf_counter(), time.thread_time()
                fn()
                ts.append((time.perf_counter() - t0) * 1e3)
                cs.append((time.thread_time() - c0) * 1e3)
            out[f"{name}_ms"] = float(np.median(ts))
            out[f"{name}_cpu_ms"] = float(np.median(cs))
    return out


def run(quick: bool = False) -> dict:
    import tempfile

    from keymap import Window
    frames = 8 if quick else 40
    tok_args = tokenizer_args()
    threads = torch.get_num_threads()
    ref = {"hidden": 128, "layers": 3}
    # one torch thread: its CPU time is the load-independent figure (see measure); the default
    # thread count is timed too, since two threads may or may not beat one on small convs
    sizes = [("quickstart", world_model_args(), 1), ("hidden128x3", world_model_args(ref), 1)]
    if not quick:
        sizes += [(f"quickstart_{threads}threads", world_model_args(), threads),
                  ("hidden128x3_fullres", world_model_args(dict(ref, downsample=False)), 1)]
    result = {"machine": {"threads": threads, "cpu_count": os.cpu_count(),
                          "load_avg_1min": os.getloadavg()[0], "sdl_driver": os.environ.get("SDL_VIDEODRIVER", "")},
              "tokenizer_args": tok_args, "display_scale": 6, "sizes": {},
              "predecessor_128x3": {"fps": 27.0, "total_ms": 36.6}}
    window = Window((72, 128), scale=6, title="bench_live")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name, margs, n_threads in sizes:
                torch.set_num_threads(n_threads)
                env, model = build_env(margs, tok_args, tmp)
                row = measure(env, window, frames)
                row["threads"] = n_threads
                row["model_args"] = margs
                row["params_M"] = sum(p.numel() for p in model.parameters()) / 1e6
                row["decoder_params_M"] = sum(p.numel() for p in env.tokenizer.model.decoder.parameters()) / 1e6
                if name == "quickstart":
                    row["sampling"] = sampling = sampler_variants(env, frames)
                    # the whole frame with the proposed sampler in place of the shared one
                    ms = row["total_ms"] - row["sample_ms"] + sampling["proposed_topk50_ms"]
                    row["fps_with_proposed_sampler"] = 1000.0 / ms
                    ms = row["total_cpu_ms"] - row["sample_cpu_ms"] + sampling["proposed_topk50_cpu_ms"]
                    row["fps_cpu_time_with_proposed_sampler"] = 1000.0 / ms
                    if not quick:
                        row["overlap"] = measure_overlap(env, frames)
                result["sizes"][name] = row
            torch.set_num_threads(1)
            result["compile_quickstart"] = measure_compile(world_model_args(), tok_args, tmp, frames)
    finally:
        torch.set_num_threads(threads)
        window.close()
    ref_row = result["sizes"]["hidden128x3"]
    result["speedup_vs_predecessor_128x3"] = ref_row["fps"] / 27.0
    result["speedup_vs_predecessor_128x3_cpu_time"] = ref_row["fps_cpu_time"] / 27.0
    print_table(result)
    return result


def print_table(result: dict):
    m = result["machine"]
    print(f"live play on {m['cpu_count']} cores, load average {m['load_avg_1min']:.1f}: median wall-clock ms per "
          f"frame [CPU ms of the calling thread]")
    print(f"{'size':<24}{'thr':>4}{'params':>8}{'model':>15}{'sample':>15}{'decode':>15}{'display':>8}"
          f"{'total':>15}{'fps':>15}")
    for name, r in result["sizes"].items():
        cell = lambda k: f"{r[k + '_ms']:6.1f} [{r[k + '_cpu_ms']:5.1f}]"  # noqa: E731
        print(f"{name:<24}{r['threads']:>4}{r['params_M']:7.2f}M" + "".join(f"{cell(k):>15}" for k in
              ("model_step", "sample", "decode")) + f"{r['display_ms']:8.1f}"
              + f"{r['total_ms']:6.1f} [{r['total_cpu_ms']:5.1f}]".rjust(15)
              + f"{r['fps']:6.1f} [{r['fps_cpu_time']:5.1f}]".rjust(15))
    print("(with 1 thread the CPU figures are what an idle core takes; the wall figures include waiting for a core)")
    q = result["sizes"]["quickstart"]
    if "sampling" in q:
        sm = q["sampling"]
        print("sampling one grid, ms [CPU ms]: " + ", ".join(f"{k} {sm[k + '_ms']:.2f} [{sm[k + '_cpu_ms']:.2f}]"
                                                              for k in ("shared_topk50", "argmax", "proposed_topk50")))
        print(f"quickstart with the proposed sampler: {q['fps_with_proposed_sampler']:.1f} fps "
              f"[{q['fps_cpu_time_with_proposed_sampler']:.1f} by CPU time]")
    if "overlap" in q:
        print(f"quickstart with --overlap (decode in a second thread, no display): {q['overlap']['fps']:.1f} fps "
              f"wall-clock")
    print(f"hidden 128 x 3 vs the predecessor (27 fps, 36.6 ms): {result['speedup_vs_predecessor_128x3']:.2f}x "
          f"wall-clock, {result['speedup_vs_predecessor_128x3_cpu_time']:.2f}x by CPU time")


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
