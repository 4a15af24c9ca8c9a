"""Prove that a CUDA machine runs every GPU path of this repository, end to end: `make gpu-check`.

    python gpu_check.py                       # on a CUDA machine: about 5-10 minutes
    python gpu_check.py --steps 100           # shorter
    python gpu_check.py --device cpu --tiny   # the same stages on CPU with tiny sizes (plumbing only)

Every stage runs the real scripts as subprocesses on freshly generated sandbox data in --work:
  1. sandbox data (GameFactory layout)
  2. tokenizer, a100 settings (bf16, torch.compile) and p100 settings (fp16 + GradScaler, no compile),
     each at its config's batch size
  3. preprocess with the a100-settings tokenizer
  4. world model, a100 and p100 settings, --steps steps each with a rollout curriculum inside the run
  5. memory: each world-model config at its own batch size, window and longest rollout, a few steps
  6. 2-process torchrun with NCCL (when >= 2 GPUs are visible)
  7. a short evaluation
  8. headless play with --half, then with --half --compile
Model sizes are the configs' own; batch, window, steps and evaluation are cut to fit the time
(except in stage 5). It prints per stage the wall time, frames/s, peak GPU memory and the
torch.compile graph counts. A failed stage does not stop the check: the stages that need its output
are skipped, every stage's full output is kept in WORK/logs/, WORK/summary.json lists the results,
and the exit status is 1 if any stage failed or was skipped. Without CUDA it says so in one line and exits 2.
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
PEAK = re.compile(r"peak GPU memory: ([\d.]+) GiB allocated, ([\d.]+) GiB reserved")
GRAPHS = re.compile(r"torch\.compile: (\d+) graphs compiled, (\d+) graph breaks")
PLAY = re.compile(r"(\d+) frames, ([\d.]+) steps/s")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/gpu_check", help="scratch folder (emptied first)")
    p.add_argument("--steps", type=int, default=300, help="training steps per tokenizer / world-model run")
    p.add_argument("--device", default="cuda", help="cuda, or cpu for a dry run with --tiny")
    p.add_argument("--tiny", action="store_true", help="tiny data and models, no compile: checks the plumbing in ~1 min")
    p.add_argument("--stage_timeout", type=int, default=300, help="seconds before a stage counts as failed")
    p.add_argument("--memory_steps", type=int, default=6, help="steps of the full-batch memory stage (0 = skip it)")
    p.add_argument("--stop_on_failure", action="store_true", help="stop at the first failed stage")
    p.add_argument("--time_limit", type=float, default=0,
                   help="seconds for the whole check (0 = none): stages that would start after it are skipped")
    return p.parse_args()


class Check:
    """Runs the stages, keeps each one's output in WORK/logs and its figures in WORK/summary.json."""

    def __init__(self, work, timeout, stop_on_failure, time_limit=0.0):
        self.work, self.timeout, self.stop_on_failure = work, timeout, stop_on_failure
        self.deadline = time.time() + time_limit if time_limit > 0 else float("inf")
        self.logs = os.path.join(work, "logs")
        os.makedirs(self.logs)
        self.results = []

    def run(self, name, cmd, env=None, needs=()):
        """Run one stage. Returns its stdout, or None if it failed or was skipped (a missing input in `needs`)."""
        missing = [p for p in needs if not os.path.exists(p)]
        result = {"stage": name, "command": cmd}
        self.results.append(result)
        if missing:
            print(f"\n=== {name}: skipped, an earlier stage did not make {missing[0]}", flush=True)
            result["status"] = "skipped"
            self.save()
            return None
        left = self.deadline - time.time()
        if left < 1:
            print(f"\n=== {name}: skipped, the check's --time_limit is used up", flush=True)
            result["status"] = "skipped"
            self.save()
            return None
        timeout = int(min(self.timeout, left))
        print(f"\n=== {name}\n$ {' '.join(cmd)}", flush=True)
        log = os.path.join(self.logs, re.sub(r"[^\w.-]+", "_", name).strip("_") + ".log")
        start = time.time()
        try:
            r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                               env=dict(os.environ, **(env or {})))
            out, err, code = r.stdout, r.stderr, r.returncode
        except subprocess.TimeoutExpired as e:
            text = lambda b: b.decode(errors="replace") if isinstance(b, bytes) else (b or "")
            out, err, code = text(e.stdout), text(e.stderr) + f"\nran past {timeout}s", "timeout"
        seconds = time.time() - start
        with open(log, "w") as f:
            f.write(f"$ {' '.join(cmd)}\n--- exit {code} after {seconds:.0f}s\n--- stdout\n{out}\n--- stderr\n{err}")
        result.update(seconds=round(seconds, 1), log=os.path.relpath(log, self.work))
        for line in REPORTED.findall(out):
            print(f"  {line}")
        if m := PEAK.search(out):
            result["peak_gib_allocated"], result["peak_gib_reserved"] = float(m[1]), float(m[2])
        if m := GRAPHS.search(out):
            result["compiled_graphs"], result["graph_breaks"] = int(m[1]), int(m[2])
        if m := PLAY.search(out):
            result["play_steps_per_s"] = float(m[2])
        if code != 0:
            result["status"] = "failed"
            print(f"{out[-2000:]}\n{err[-4000:]}\ngpu_check: FAILED: {name} "
                  f"({'ran past ' + str(timeout) + 's' if code == 'timeout' else 'exit ' + str(code)}); "
                  f"full output in {log}", flush=True)
            self.save()
            if self.stop_on_failure:
                self.finish()
            return None
        result["status"] = "ok"
        print(f"  ok in {seconds:.0f}s", flush=True)
        self.save()
        return out

    def note(self, **figures):
        self.results[-1].update(figures)
        self.save()

    def save(self):
        with open(os.path.join(self.work, "summary.json"), "w") as f:
            json.dump({"stages": self.results}, f, indent=1)

    def finish(self):
        failed = [r["stage"] for r in self.results if r["status"] == "failed"]
        skipped = [r["stage"] for r in self.results if r["status"] == "skipped"]
        print("\n" + ("gpu_check: all stages passed" if not failed and not skipped else
                      f"gpu_check: {len(failed)} stage(s) FAILED: {', '.join(failed) or '-'}; "
                      f"skipped: {', '.join(skipped) or '-'} (logs in {self.logs})"))
        for r in self.results:
            figures = " ".join(f"{k}={r[k]}" for k in ("frames_per_s", "peak_gib_allocated", "compiled_graphs",
                                                       "graph_breaks", "play_steps_per_s") if k in r)
            print(f"  {r['stage']:<40} {r['status']:<8} {r.get('seconds', 0):6.0f} s  {figures}")
        sys.exit(1 if failed or skipped else 0)  # a skipped stage proved nothing


def median_rate(run_dir):
    """Median logged frames/s of a training run (metrics.jsonl), first log row (compile) left out."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return float("nan")
    with open(path) as f:
        rates = [r["charts/frames_per_s"] for r in map(json.loads, f) if "charts/frames_per_s" in r]
    return statistics.median(rates[1:] or rates) if rates else float("nan")


def longest_rollout(config):
    """The longest rollout length in a world-model config's rollout_schedule."""
    import yaml
    with open(os.path.join(ROOT, config)) as f:
        return max(int(item.split(":")[1]) for item in yaml.safe_load(f)["rollout_schedule"])


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
        total = torch.cuda.get_device_properties(0).total_memory / 2 ** 30
        print(f"{torch.cuda.device_count()} x {name} (sm_{''.join(map(str, torch.cuda.get_device_capability(0)))}, "
              f"{total:.0f} GiB), torch {torch.__version__}, CUDA {torch.version.cuda}, bf16 {'yes' if bf16 else 'no'}")
    work = os.path.join(ROOT, args.work) if not os.path.isabs(args.work) else args.work
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    check = Check(work, args.stage_timeout, args.stop_on_failure, args.time_limit)
    data, tokens = os.path.join(work, "sandbox_gf"), os.path.join(work, "tokens")
    steps = args.steps
    dev = ["--device", args.device]
    tiny_tok = ["--channels", "8,8,8", "--res_blocks", "0,0,0", "--batch_size", "4"] if args.tiny else []
    # world-model runs: the config's model, a short window whose curriculum starts rolling out halfway
    half = steps // 2
    tiny_model = ["--embed_dim", "8", "--hidden", "16", "--layers", "2", "--dilations", "1,2", "--action_hidden", "16",
                  "--idm_hidden", "8"]
    tiny_wm = [*tiny_model, "--batch_size", "2"] if args.tiny else ["--batch_size", "16"]
    quiet = ["--eval_every", str(steps), "--eval_batch", "4", "--eval_context", "4", "--eval_rollout", "8",
             "--strip_every", "0", "--wandb", "off"]
    # window 6: compiling the unrolled time loop costs about a minute per sequence length on a GPU
    wm_common = ["--data", tokens, *dev, "--max_steps", str(steps), "--window", "6", "--warmup_steps", str(max(1, steps // 10)),
                 "--rollout_schedule", f"0:0,{half}:2", "--ckpt_every", str(steps), "--log_every", str(max(1, steps // 20)),
                 *quiet, *tiny_wm]
    no_compile = ["--compile", "false"] if args.tiny else []
    clips, frames = ("2", "24") if args.tiny else ("16", "128")
    check.run("sandbox data", [PY, "-m", "sandbox.generate", "--format", "gamefactory", "--out", data,
                               "--clips", clips, "--frames", frames, "--seed", "0"])
    tok_common = ["--data", data, *dev, "--max_steps", str(steps), "--min_steps", "0", "--time_limit_min", "0",
                  "--lpips_weight", "0", "--max_train_frames", "2000", "--eval_frames", "256", "--val_fraction", "0.25",
                  "--image_every", "0", "--ckpt_every", "0", "--wandb", "off", *tiny_tok]
    tokenizers = {}
    for setting, extra in (("a100", no_compile), ("p100", [])):
        out = os.path.join(work, f"tokenizer_{setting}")
        check.run(f"tokenizer, {setting} settings", [PY, "-m", "vq_vae.train", "--config", f"configs/tokenizer_{setting}.yaml",
                                                     *tok_common, "--out", out, *extra], needs=[data])
        tokenizers[setting] = os.path.join(out, "tokenizer.pt")
    tokenizer = tokenizers["a100"] if os.path.exists(tokenizers["a100"]) else tokenizers["p100"]
    check.run("preprocess", [PY, "preprocess.py", "--input", data, "--format", "gamefactory", "--tokenizer", tokenizer,
                             "--out", tokens, "--workers", "0", *dev], needs=[data, tokenizer])
    manifest = os.path.join(tokens, "manifest.json")
    worlds = {}
    for setting, extra in (("a100", no_compile), ("p100", [])):
        out = os.path.join(work, f"world_{setting}")
        if check.run(f"world model, {setting} settings", [PY, "train.py", "--config", f"configs/{setting}.yaml", *wm_common,
                                                          "--out", out, *extra], needs=[manifest]) is not None:
            worlds[setting] = out
            check.note(frames_per_s=round(median_rate(out), 1))
            print(f"  training: {check.results[-1]['frames_per_s']:.0f} frames/s (median of logged steps)")
    if args.memory_steps > 0:
        # the configs' own batch, window and longest rollout: the peak a real run reaches once its curriculum ends
        for setting in ("p100", "a100"):
            config = f"configs/{setting}.yaml"
            size = [*tiny_model, "--batch_size", "2", "--window", "6"] if args.tiny else []
            rollout = 2 if args.tiny else longest_rollout(config)
            out = os.path.join(work, f"memory_{setting}")
            if check.run(f"memory, {setting} at its batch and rollout {rollout}",
                         [PY, "train.py", "--config", config, "--data", tokens, *dev, "--max_steps", str(args.memory_steps),
                          "--warmup_steps", "1", "--rollout_schedule", f"0:{rollout}", "--ckpt_every", str(args.memory_steps),
                          "--log_every", "1", "--compile", "false", *quiet, *size, "--out", out],
                         needs=[manifest]) is not None:
                check.note(frames_per_s=round(median_rate(out), 1))
    if cuda and torch.cuda.device_count() >= 2:
        torchrun = os.path.join(os.path.dirname(PY), "torchrun")
        check.run("torchrun, 2 processes, NCCL", [torchrun, "--standalone", "--nproc_per_node", "2", "train.py",
                                                  "--config", "configs/a100.yaml", *wm_common, "--max_steps", str(max(20, steps // 5)),
                                                  "--out", os.path.join(work, "world_ddp")], needs=[manifest])
    else:
        print("\n=== torchrun: skipped (fewer than 2 GPUs)")
    world = worlds.get("a100") or worlds.get("p100") or os.path.join(work, "world_a100")
    check.run("evaluate", [PY, "evaluate.py", "--checkpoint", world, "--data", tokens, "--out",
                           os.path.join(work, "eval"), "--horizons", "8", "--episodes", "2",
                           "--idm_steps", "20", "--videos", "1", "--sandbox_steps", "8", *dev], needs=[world])
    play = [PY, "live_inference.py", "--checkpoint", world, "--headless", "--frames", "100" if not args.tiny else "10",
            "--half", "true", *dev, "--threads", "0"]
    headless = {"SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy"}
    check.run("play, --half", play, env=headless, needs=[world])
    if not args.tiny:
        check.run("play, --half --compile", play + ["--compile", "true"], env=headless, needs=[world])
    check.finish()


if __name__ == "__main__":
    main()
