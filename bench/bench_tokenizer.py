"""Tokenizer throughput: encode and decode frames/s at batch 1 and 64 for the quickstart config.

    python -m bench.bench_tokenizer [--quick]

Weights are freshly initialised (speed does not depend on their values); the timed path is the
real one: export -> vq_vae.load_tokenizer -> Tokenizer.encode / decode on uint8 frames.
On a shared CPU the figures are noisy; read them as orders of magnitude.
"""
import os
import sys
import tempfile
import time

import numpy as np
import torch

from config import apply_overrides, load_yaml
from vq_vae import load_tokenizer
from vq_vae.model import VQVAE
from vq_vae.tokenizer import export_tokenizer
from vq_vae.train import Config, model_config

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "tokenizer_quickstart.yaml")


def _time(fn, repeats):
    fn()  # warm-up (allocator, oneDNN kernel selection)
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def run(quick=False) -> dict:
    cfg = apply_overrides(Config(), load_yaml(CONFIG), CONFIG)
    torch.manual_seed(0)
    model = VQVAE(model_config(cfg)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "tokenizer.pt")
        export_tokenizer(model, (cfg.height, cfg.width), path)
        tok = load_tokenizer(path, "cpu")
    rng = np.random.default_rng(0)
    results = {"config": os.path.relpath(CONFIG), "frame_size": list(tok.frame_size), "grid": list(tok.grid),
               "codebook_size": tok.codebook_size, "quantizer": cfg.quantizer, "channels": cfg.channels,
               "res_blocks": cfg.res_blocks, "device": "cpu", "torch_threads": torch.get_num_threads(),
               "note": "shared, loaded CPU: noisy"}
    for batch in (1, 64):
        frames = rng.integers(0, 256, (batch, cfg.height, cfg.width, 3), dtype=np.uint8)
        codes = tok.encode(frames)
        repeats = (3 if batch == 1 else 1) if quick else (20 if batch == 1 else 3)
        results[f"encode_fps_b{batch}"] = batch / _time(lambda: tok.encode(frames), repeats)
        results[f"decode_fps_b{batch}"] = batch / _time(lambda: tok.decode(codes), repeats)
    return results


if __name__ == "__main__":
    r = run(quick="--quick" in sys.argv)
    print(f"tokenizer {r['quantizer']} {r['channels']} {r['frame_size'][1]}x{r['frame_size'][0]} -> "
          f"{r['grid'][1]}x{r['grid'][0]}, {r['codebook_size']} codes, cpu, {r['torch_threads']} threads ({r['note']})")
    print(f"{'batch':>6} {'encode frames/s':>16} {'decode frames/s':>16}")
    for b in (1, 64):
        print(f"{b:>6} {r[f'encode_fps_b{b}']:>16.1f} {r[f'decode_fps_b{b}']:>16.1f}")
