"""Preprocess throughput: decode + resize + encode + write, end to end, per decoder-worker and
encoder-thread count.

    python -m bench.bench_preprocess [--quick] [--default-arch]

Data: sandbox clips in the GF-Minecraft layout (128x72 H.264, 16 fps), written to a temp folder.
Tokenizer: untrained (encoding costs the same as a trained one) with the architecture of
configs/tokenizer_quickstart.yaml (arch="quickstart", what the demo uses) or the VQVAEConfig
defaults (arch="default"), or an existing file with `tokenizer=PATH`. Also reports decode-only
and encode-only rates, to show which side limits.
"""
import contextlib
import dataclasses
import io
import os
import sys
import tempfile
import time

import numpy as np
import torch
import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root
import datasets  # noqa: E402
import preprocess  # noqa: E402
from sandbox.generate import main as sandbox_generate  # noqa: E402
from vq_vae import load_tokenizer  # noqa: E402
from vq_vae.model import VQVAE, VQVAEConfig  # noqa: E402
from vq_vae.tokenizer import export_tokenizer  # noqa: E402


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def model_config(arch):
    if arch == "default":
        return VQVAEConfig()
    with open(os.path.join(REPO, "configs", f"tokenizer_{arch}.yaml")) as f:
        cfg = yaml.safe_load(f)
    return VQVAEConfig(**{k.name: cfg[k.name] for k in dataclasses.fields(VQVAEConfig) if k.name in cfg})


def run(quick=False, tokenizer=None, arch="quickstart", device="cpu") -> dict:
    clips, frames = (2, 64) if quick else (6, 160)
    # (decoder workers, encoder torch threads; 0 = preprocess's auto: cores minus workers)
    settings = ((0, 0), (1, 0)) if quick else ((0, 2), (1, 2), (0, 0), (1, 0), (2, 0), (4, 0))
    batch_size = 64
    with tempfile.TemporaryDirectory(prefix="bench_preprocess_") as tmp:
        quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
        data = os.path.join(tmp, "gf")
        with quiet[0], quiet[1]:
            sandbox_generate(["--format", "gamefactory", "--out", data, "--clips", str(clips),
                              "--frames", str(frames), "--seed", "0"])
        if tokenizer is None:
            torch.manual_seed(0)
            tokenizer = os.path.join(tmp, "tokenizer.pt")
            export_tokenizer(VQVAE(model_config(arch)), (72, 128), tokenizer)
        tok = load_tokenizer(tokenizer, device=device)
        size = (tok.frame_size[1], tok.frame_size[0])

        trajs, _ = datasets.find_trajectories(data)
        t0 = time.time()
        decoded = [np.stack(list(t.frames(size=size))) for t in trajs]
        decode_fps = sum(len(d) for d in decoded) / (time.time() - t0)
        batch = torch.from_numpy(np.concatenate(decoded)[:batch_size]).to(device)
        tok.encode(batch)  # warm-up
        t0, reps = time.time(), 3
        for _ in range(reps):
            tok.encode(batch)
        encode_fps = reps * len(batch) / (time.time() - t0)

        rows, default_threads = [], torch.get_num_threads()
        for workers, threads in settings:
            cfg = preprocess.Config(input=data, tokenizer=tokenizer, out=os.path.join(tmp, f"tokens_{workers}_{threads}"),
                                    workers=workers, threads=threads, batch_size=batch_size, device=device)
            buf_out, buf_err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(buf_out), contextlib.redirect_stderr(buf_err):
                stats = preprocess.main(cfg)
            torch.set_num_threads(default_threads)  # main() sets it process-wide
            rows.append({"workers": workers, "threads": stats["threads"], "frames": stats["frames"],
                         "seconds": round(stats["seconds"], 2), "frames_per_s": round(stats["frames_per_s"], 1)})
    best = max(rows, key=lambda r: r["frames_per_s"])
    return {
        "frames_per_s": best["frames_per_s"], "workers": best["workers"], "threads": best["threads"], "runs": rows,
        "decode_resize_frames_per_s": round(decode_fps, 1), "encode_frames_per_s": round(encode_fps, 1),
        "config": {"clips": clips, "frames_per_clip": frames, "frame_size": list(tok.frame_size),
                   "grid": list(tok.grid), "codebook_size": tok.codebook_size, "tokenizer": tokenizer if tokenizer and
                   not tokenizer.startswith(tempfile.gettempdir()) else f"untrained, {arch} architecture",
                   "batch_size": batch_size, "device": device, "torch_threads": torch.get_num_threads(),
                   "cpu_count": os.cpu_count(), "quick": quick},
    }


def print_table(r):
    print(f"preprocess throughput, tokenizer {r['config']['tokenizer']} ({r['config']['clips']} clips x {r['config']['frames_per_clip']} frames, "
          f"{r['config']['frame_size'][1]}x{r['config']['frame_size'][0]} -> {r['config']['grid'][1]}x"
          f"{r['config']['grid'][0]} codes, device {r['config']['device']}, {r['config']['cpu_count']} CPUs)")
    print(f"  {'workers':>8} {'threads':>8} {'frames':>8} {'seconds':>8} {'frames/s':>10}")
    for row in r["runs"]:
        print(f"  {row['workers']:>8} {row['threads']:>8} {row['frames']:>8} {row['seconds']:>8} {row['frames_per_s']:>10}")
    print(f"  decode + resize only (1 process): {r['decode_resize_frames_per_s']} frames/s")
    print(f"  encode only (batch {r['config']['batch_size']}):        {r['encode_frames_per_s']} frames/s")
    print(f"  best: {r['frames_per_s']} frames/s with {r['workers']} decoder workers, {r['threads']} encoder threads")
    print("  (timings on a shared machine are noisy)")


if __name__ == "__main__":
    print_table(run(quick="--quick" in sys.argv, arch="default" if "--default-arch" in sys.argv else "quickstart"))
