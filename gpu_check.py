"""Prove that a CUDA machine runs every GPU path of this repository, end to end: `make gpu-check`.

    python gpu_check.py                       # on a CUDA machine: about 5-10 minutes
    python gpu_check.py --steps 100           # shorter
    python gpu_check.py --device cpu --tiny   # the same stages on CPU with tiny sizes (plumbing only)

Every stage runs the real scripts as subprocesses on freshly generated sandbox data in --work:
  1. sandbox data (GameFactory layout)
  2. tokenizer, a100 settings (bf16, torch.compile) and p100 settings (fp16 + GradScaler, no compile)
  3. preprocess with the a100-settings tokenizer
  4. world model, a100 and p100 settings, --steps steps each with a rollout curriculum inside the run
  5. 2-process torchrun with NCCL (when >= 2 GPUs are visible)
  6. a short evaluation
  7. headless play with --half, then with --half --compile
Model sizes are the configs' own; batch, window, steps and evaluation are cut to fit the time.
It prints per stage the wall time, frames/s, peak GPU memory and the torch.compile graph counts,
and exits non-zero on the first failure (its output is shown). Without CUDA it says so and exits 2.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

PY = sys.executable
ROOT = os.path.dirname(os.path.abspath(__file__))

# lines the scripts print that this check reports (see utils.compile_summary / peak_memory_summary)
REPORTED = re.compile(r"^(torch\.compile: .*|peak GPU memory: .*|\d+ frames, [\d.]+ steps/s.*)$", re.M)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/gpu_check", help="scratch folder (emptied first)")
    p.add_argument("--steps", type=int, default=300, help="training steps per tokenizer / world-model run")
    p.add_argument("--device", default="cuda", help="cuda, or cpu for a dry run with --tiny")
    p.add_argument("--tiny", action="store_true", help="tiny data and models, no compile: checks the plumbing in ~1 min")
    p.add_argument("--stage_timeout", type=int, default=300, help="seconds before a stage counts as failed")
    return p.parse_args()


def run(name, cmd, timeout, env=None):
    """Run one stage; on failure print its output's tail and exit 1. Returns (stdout, seconds)."""
    print(f"\n=== {name}\n$ {' '.join(cmd)}", flush=True)
    start = time.time()
    try:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                           env=dict(os.environ, **(env or {})))
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        sys.exit(f"{out[-3000:]}\ngpu_check: FAILED: {name} ran past {timeout}s")
    seconds = time.time() - start
    if r.returncode != 0:
        sys.exit(f"{r.stdout[-3000:]}\n{r.stderr[-5000:]}\ngpu_check: FAILED: {name} (exit {r.returncode})")
    for line in REPORTED.findall(r.stdout):
        print(f"  {line}")
    print(f"  ok in {seconds:.0f}s", flush=True)
    return r.stdout, seconds


def median_rate(run_dir):
    """Median logged frames/s of a training run (metrics.jsonl), first log row (compile) left out."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rates = [r["charts/frames_per_s"] for r in map(json.loads, f) if "charts/frames_per_s" in r]
    return statistics.median(rates[1:] or rates) if rates else float("nan")


def main():
    args = parse_args()
    import torch  # after argparse: --help works without importing torch
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device visible to torch {torch.__version__} (torch.cuda.is_available() is False); "
              f"run it on a GPU machine, or `python gpu_check.py --device cpu --tiny` for a dry run", file=sys.stderr)
        sys.exit(2)
    if cuda:
        name = torch.cuda.get_device_name(0)
        bf16 = torch.cuda.is_bf16_supported()
        print(f"{torch.cuda.device_count()} x {name} (sm_{''.join(map(str, torch.cuda.get_device_capability(0)))}), "
              f"torch {torch.__version__}, CUDA {torch.version.cuda}, bf16 {'yes' if bf16 else 'no'}")
    work = os.path.join(ROOT, args.work) if not os.path.isabs(args.work) else args.work
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    data, tokens = os.path.join(work, "sandbox_gf"), os.path.join(work, "tokens")
    steps, t = args.steps, args.stage_timeout
    dev = ["--device", args.device]
    tiny_tok = ["--channels", "8,8,8", "--res_blocks", "0,0,0", "--batch_size", "4"] if args.tiny else []
    # world-model runs: the config's model, a short window whose curriculum starts rolling out halfway
    half = steps // 2
    tiny_wm = ["--embed_dim", "8", "--hidden", "16", "--layers", "2", "--dilations", "1,2", "--action_hidden", "16",
               "--idm_hidden", "8", "--batch_size", "2"] if args.tiny else ["--batch_size", "16"]
    wm_common = ["--data", tokens, *dev, "--max_steps", str(steps), "--window", "10", "--warmup_steps", str(max(1, steps // 10)),
                 "--rollout_schedule", f"0:0,{half}:2", "--eval_every", str(steps), "--eval_batch", "4",
                 "--eval_context", "4", "--eval_rollout", "8", "--strip_every", "0", "--ckpt_every", str(steps),
                 "--log_every", str(max(1, steps // 20)), "--wandb", "off", *tiny_wm]
    no_compile = ["--compile", "false"] if args.tiny else []
    timings = {}
    clips, frames = ("2", "24") if args.tiny else ("16", "128")
    _, timings["sandbox data"] = run("sandbox data", [PY, "-m", "sandbox.generate", "--format", "gamefactory", "--out", data,
                                                      "--clips", clips, "--frames", frames, "--seed", "0"], t)
    tok_common = ["--data", data, *dev, "--max_steps", str(steps), "--min_steps", "0", "--time_limit_min", "0",
                  "--lpips_weight", "0", "--max_train_frames", "2000", "--eval_frames", "256", "--val_fraction", "0.25",
                  "--image_every", "0", "--ckpt_every", "0", "--wandb", "off", *tiny_tok]
    tokenizers = {}
    for setting, extra in (("a100", no_compile), ("p100", [])):
        out = os.path.join(work, f"tokenizer_{setting}")
        _, timings[f"tokenizer {setting}"] = run(
            f"tokenizer, {setting} settings", [PY, "-m", "vq_vae.train", "--config", f"configs/tokenizer_{setting}.yaml",
                                               *tok_common, "--out", out, *extra], t)
        tokenizers[setting] = os.path.join(out, "tokenizer.pt")
    _, timings["preprocess"] = run("preprocess", [PY, "preprocess.py", "--input", data, "--format", "gamefactory",
                                                  "--tokenizer", tokenizers["a100"], "--out", tokens, "--workers", "0",
                                                  *dev], t)
    rates = {}
    for setting, extra in (("a100", no_compile), ("p100", [])):
        out = os.path.join(work, f"world_{setting}")
        _, timings[f"world model {setting}"] = run(
            f"world model, {setting} settings", [PY, "train.py", "--config", f"configs/{setting}.yaml", *wm_common,
                                                 "--out", out, *extra], t)
        rates[setting] = median_rate(out)
        print(f"  training: {rates[setting]:.0f} frames/s (median of logged steps)")
    if cuda and torch.cuda.device_count() >= 2:
        torchrun = os.path.join(os.path.dirname(PY), "torchrun")
        run("torchrun, 2 processes, NCCL", [torchrun, "--standalone", "--nproc_per_node", "2", "train.py",
                                            "--config", "configs/a100.yaml", *wm_common, "--max_steps", str(max(20, steps // 5)),
                                            "--out", os.path.join(work, "world_ddp")], t)
    else:
        print("\n=== torchrun: skipped (fewer than 2 GPUs)")
    world = os.path.join(work, "world_a100")
    _, timings["evaluate"] = run("evaluate", [PY, "evaluate.py", "--checkpoint", world, "--data", tokens, "--out",
                                              os.path.join(work, "eval"), "--horizons", "8", "--episodes", "2",
                                              "--idm_steps", "20", "--videos", "1", "--sandbox_steps", "8", *dev], t)
    play = [PY, "live_inference.py", "--checkpoint", world, "--headless", "--frames", "100" if not args.tiny else "10",
            "--half", "true", *dev, "--threads", "0"]
    run("play, --half", play, t, env={"SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy"})
    if not args.tiny:
        run("play, --half --compile", play + ["--compile", "true"], t, env={"SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy"})
    print("\ngpu_check: all stages passed")
    for stage, seconds in timings.items():
        print(f"  {stage:<22} {seconds:6.0f} s")
    print("  training frames/s: " + ", ".join(f"{k} {v:.0f}" for k, v in rates.items()))


if __name__ == "__main__":
    main()
