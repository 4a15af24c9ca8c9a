"""Stress the two-process torchrun exit path: run the DDP test's command many times, some at once.

    python .ci/stress_ddp.py --runs 50 --parallel 4            # train.py
    python .ci/stress_ddp.py --runs 50 --parallel 4 --script vq_vae

Prints one line per failed run (its exit status and the end of its stderr) and a final count.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))


def command(script, data, out):
    torchrun = [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--standalone", "--nproc_per_node", "2"]
    if script == "train":
        from test_train import TINY
        return torchrun + ["train.py", "--data", data, "--out", out, "--max_steps", "2", "--device", "cpu", *TINY]
    return torchrun + ["-m", "vq_vae.train", "--data", data, "--out", out, "--max_steps", "2", "--device", "cpu",
                       "--channels", "8,8", "--res_blocks", "0,0", "--quantizer", "fsq", "--levels", "4,4",
                       "--batch_size", "2", "--eval_frames", "8", "--width", "32", "--height", "16",
                       "--image_every", "0", "--log_every", "1"]


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--parallel", type=int, default=4)
    p.add_argument("--script", choices=("train", "vq_vae"), default="train")
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix="stress_ddp_")
    if args.script == "train":
        from test_train import make_token_data
        data = make_token_data(os.path.join(work, "tokens"))
    else:
        from sandbox.generate import main as generate
        data = os.path.join(work, "frames")
        generate(["--format", "gamefactory", "--out", data, "--clips", "2", "--frames", "12", "--seed", "1"])
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def one(i):
        r = subprocess.run(command(args.script, data, os.path.join(work, f"run_{i}")), cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            print(f"run {i}: exit status {r.returncode}\n{r.stderr[-1500:]}", flush=True)
        return r.returncode == 0

    t0 = time.time()
    with ThreadPoolExecutor(args.parallel) as pool:
        ok = sum(pool.map(one, range(args.runs)))
    print(f"{args.script}: {ok}/{args.runs} runs passed, {args.parallel} at a time, {time.time() - t0:.0f} s ({work})")
    sys.exit(0 if ok == args.runs else 1)


if __name__ == "__main__":
    main()
