"""The exported tokenizer file and the one API that loads it.

`<out>/tokenizer.pt` is self-describing: model config, frame size, grid size, codebook size and
weights, plus the training config and held-out metrics for the record. Its identity is the
content hash of the file (utils.file_hash), which the token files and world models record.

    tok = load_tokenizer("checkpoints/tokenizer/tokenizer.pt", device="cpu")
    codes = tok.encode(frames_uint8)   # (B, H, W, 3) uint8 -> (B, h, w) int64
    frames = tok.decode(codes)         # (B, h, w) -> (B, H, W, 3) uint8
"""
import dataclasses

import numpy as np
import torch

from utils import BadFile, atomic_torch_save, file_hash, load_checkpoint, plain
from vq_vae.model import VQVAE, VQVAEConfig

FORMAT = "ochre-tokenizer"
VERSION = 1


def export_tokenizer(model: VQVAE, frame_size, path, train_config=None, metrics=None) -> str:
    """Write the tokenizer file atomically; returns its content hash."""
    H, W = frame_size
    d = model.cfg.downsample
    blob = {
        "format": FORMAT,
        "version": VERSION,
        "model_args": dataclasses.asdict(model.cfg),
        "frame_size": [int(H), int(W)],
        "grid": [int(H) // d, int(W) // d],
        "codebook_size": int(model.num_codes),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "train_config": plain(train_config or {}),
        "metrics": plain(metrics or {}),
    }
    atomic_torch_save(blob, path)
    return file_hash(path)


class Tokenizer:
    """Frames <-> code grids. All methods are batched and run the model in eval mode."""

    def __init__(self, model: VQVAE, blob: dict, path: str, device):
        self.model = model.eval()
        self.device = torch.device(device)
        self.path = path
        self.hash = file_hash(path)
        self.codebook_size = int(blob["codebook_size"])
        self.grid = tuple(blob["grid"])              # (h, w)
        self.frame_size = tuple(blob["frame_size"])  # (H, W)
        self.config = blob["model_args"]
        self.metrics = blob.get("metrics", {})

    def _frames_to_input(self, frames):
        x = torch.as_tensor(np.asarray(frames) if not torch.is_tensor(frames) else frames)
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"encode expects uint8 frames (B, H, W, 3), got {x.dtype} {tuple(x.shape)}")
        if tuple(x.shape[1:3]) != self.frame_size:
            raise ValueError(f"this tokenizer takes {self.frame_size[1]}x{self.frame_size[0]} frames (H, W = "
                             f"{self.frame_size}), got H, W = {tuple(x.shape[1:3])}; resize them first")
        return x.to(self.device).permute(0, 3, 1, 2).float() / 127.5 - 1  # (B, 3, H, W) in [-1, 1]

    @torch.no_grad()
    def encode(self, frames, batch_size=256, sticky=0.0, prev=None, track=0) -> torch.Tensor:
        """uint8 (B, H, W, 3) numpy or torch -> int64 (B, h, w) on the tokenizer's device. Deterministic.

        sticky > 0: the frames are consecutive frames of one video, and a cell keeps its previous
        code while that code is within `sticky` cosine similarity of the best one (prev (h, w): the
        codes of the frame before the first, or None). track > 0: the kept codes move with the
        picture by whole cells, up to `track` cells per frame (VQVAE.encode)."""
        x = self._frames_to_input(frames)
        out = []
        for i in range(0, x.shape[0], batch_size):
            out.append(self.model.encode(x[i:i + batch_size], sticky, prev, track))
            prev = out[-1][-1]
        return torch.cat(out) if out else torch.zeros(0, *self.grid, dtype=torch.int64, device=self.device)

    @torch.no_grad()
    def decode(self, codes, batch_size=256) -> torch.Tensor:
        """int64 (B, h, w) -> uint8 (B, H, W, 3). The colour range is clamped only here."""
        codes = torch.as_tensor(codes).to(self.device).long()
        if codes.ndim != 3 or tuple(codes.shape[1:]) != self.grid:
            raise ValueError(f"decode expects codes (B, {self.grid[0]}, {self.grid[1]}), got {tuple(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), got [{int(codes.min())}, {int(codes.max())}]")
        out = []
        for i in range(0, codes.shape[0], batch_size):
            y = self.model.decode(codes[i:i + batch_size]).float()  # (b, 3, H, W) in [-1, 1] space
            out.append(((y.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1))
        return torch.cat(out) if out else torch.zeros(0, *self.frame_size, 3, dtype=torch.uint8, device=self.device)

    def decode_soft(self, probs) -> torch.Tensor:
        """float (B, K, h, w) code probabilities -> float (B, 3, H, W) in [-1, 1] (clamped).

        Differentiable with respect to probs: the expected code vector of each cell goes through
        the decoder. The tokenizer's own weights are frozen (requires_grad False)."""
        if probs.ndim != 4 or probs.shape[1] != self.codebook_size or tuple(probs.shape[2:]) != self.grid:
            raise ValueError(f"decode_soft expects (B, {self.codebook_size}, {self.grid[0]}, {self.grid[1]}), "
                             f"got {tuple(probs.shape)}")
        return self.model.decode_soft(probs).clamp(-1, 1)

    def code_vectors(self) -> torch.Tensor:
        """float (K, d): the vector each code decodes from (world models tie their output head to these)."""
        return self.model.quantizer.all_codes().detach().float().cpu()

    def to(self, device):
        self.device = torch.device(device)
        self.model.to(self.device)
        return self


def load_tokenizer(path, device="cpu", what="--tokenizer") -> Tokenizer:
    """Load an exported tokenizer file (not a training checkpoint); BadFile names any problem."""
    blob = load_checkpoint(path, "tokenizer", what)
    if blob.get("version") != VERSION:
        raise BadFile(f"{what} {path}: tokenizer file version {blob.get('version')} is not supported (expected {VERSION})")
    model = VQVAE(VQVAEConfig(**blob["model_args"]))
    model.load_state_dict(blob["state_dict"])
    for p in model.parameters():
        p.requires_grad_(False)
    model.to(device)
    return Tokenizer(model, blob, path, device)
