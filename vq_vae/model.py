"""The tokenizer's modules: a conv encoder, a quantizer (FSQ or EMA VQ) and a conv decoder.

Frames are RGB in [-1, 1], shape (B, 3, H, W); codes are a (B, h, w) grid of int64 indices with
h = H / 2**(len(channels) - 1), halved once more with pixel_shuffle. Modules and config only: no paths, argparse or loops.

Two quantizers, chosen by `VQVAEConfig.quantizer`:
- "fsq": Finite Scalar Quantization (Mentzer et al. 2024). Each of len(levels) channels is
  bounded and rounded to one of levels[i] values; the codebook is the implicit product grid,
  so there is nothing to collapse. prod([8, 5, 5, 5]) = 1000 codes.
- "ema": a learned codebook of l2-normalised low-dimensional vectors, updated by exponential
  moving averages (not by gradients), initialised by k-means on the first batch, and with
  every code that fell out of use replaced by a live encoder output at every training step
  (the Jukebox / SoundStream remedy for dead codes).
"""
import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class VQVAEConfig:
    channels: list = field(default_factory=lambda: [32, 64, 96])  # width per resolution level; len-1 downsamples
    res_blocks: list = field(default_factory=lambda: [0, 1, 2])   # residual blocks per level (encoder and decoder)
    pixel_shuffle: bool = False                                    # enter/leave via pixel (un)shuffle x2, no full-res convs
    quantizer: str = "ema"                                         # "fsq" | "ema"
    levels: list = field(default_factory=lambda: [8, 5, 5, 5])    # FSQ levels; codebook = prod(levels)
    codebook_size: int = 1024                                      # EMA VQ only
    code_dim: int = 8                                              # EMA VQ code vector size (l2-normalised)
    ema_decay: float = 0.9                                         # EMA VQ codebook averaging
    dead_code_threshold: float = 2.0                               # EMA VQ: restart codes whose EMA count is below this
    kmeans_iters: int = 10                                         # EMA VQ: k-means iterations at initialisation
    commitment: float = 0.25                                       # EMA VQ: weight of the commitment loss

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channels) - 1) * (2 if self.pixel_shuffle else 1)

    @property
    def num_codes(self) -> int:
        return math.prod(self.levels) if self.quantizer == "fsq" else self.codebook_size


def _norm(c):
    # 32 groups is the usual choice; fall back to fewer for narrow layers
    return nn.GroupNorm(math.gcd(32, c) if c >= 8 else 1, c, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Encoder(nn.Module):
    """(B, 3, H, W) in [-1, 1] -> (B, out_dim, H/d, W/d) continuous latents."""

    def __init__(self, cfg: VQVAEConfig, out_dim: int):
        super().__init__()
        ch = cfg.channels
        if cfg.pixel_shuffle:  # (B, 3, H, W) -> (B, 12, H/2, W/2): a lossless 2x2 fold, then the first conv
            self.conv_in = nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(12, ch[0], 3, padding=1))
        else:
            self.conv_in = nn.Conv2d(3, ch[0], 3, padding=1)
        blocks = []
        for i, c in enumerate(ch):
            cin = ch[i - 1] if i > 0 else ch[0]
            if i > 0:  # stride-2 conv halves H and W (72 -> 36 -> 18, 128 -> 64 -> 32)
                blocks.append(nn.Conv2d(cin, c, 4, stride=2, padding=1))
            blocks += [ResBlock(c, c) for _ in range(cfg.res_blocks[i])]
        self.blocks = nn.Sequential(*blocks)
        self.norm_out = _norm(ch[-1])
        self.conv_out = nn.Conv2d(ch[-1], out_dim, 1)

    def forward(self, x):
        return self.conv_out(F.silu(self.norm_out(self.blocks(self.conv_in(x)))))


class Decoder(nn.Module):
    """(B, in_dim, h, w) quantized latents -> (B, 3, H, W) in [-1, 1] space.

    The output is a plain linear conv: no ReLU/sigmoid/tanh that could clip the colour range
    (a clipped decoder is what turned the predecessor's frames grey). Clamp only for display.
    """

    def __init__(self, cfg: VQVAEConfig, in_dim: int):
        super().__init__()
        ch = list(reversed(cfg.channels))
        nres = list(reversed(cfg.res_blocks))
        self.margin = cfg.downsample  # pixels of one latent cell
        self.conv_in = nn.Conv2d(in_dim, ch[0], 3, padding=1)
        blocks = []
        for i, c in enumerate(ch):
            cin = ch[i - 1] if i > 0 else ch[0]
            if i > 0:  # nearest upsample + conv avoids checkerboard artefacts of transposed convs
                blocks += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, c, 3, padding=1)]
            blocks += [ResBlock(c, c) for _ in range(max(nres[i], 1 if i == 0 else 0))]
        self.blocks = nn.Sequential(*blocks)
        self.norm_out = _norm(ch[-1])
        if cfg.pixel_shuffle:  # still linear: conv to 12 channels, then unfold 2x2 into (B, 3, H, W)
            self.conv_out = nn.Sequential(nn.Conv2d(ch[-1], 12, 3, padding=1), nn.PixelShuffle(2))
        else:
            self.conv_out = nn.Conv2d(ch[-1], 3, 3, padding=1)

    def forward(self, z):
        # decode the grid with one repeated cell around it and cut that margin off the picture: the
        # convs' zero padding then falls outside the frame instead of drawing a dark/coloured border
        # and odd corner pixels around every picture (corner error 47 -> 20 of 255 on the demo tokenizer)
        y = self.conv_out(F.silu(self.norm_out(self.blocks(self.conv_in(F.pad(z, (1, 1, 1, 1), mode="replicate"))))))
        m = self.margin
        return y[:, :, m:-m, m:-m]


def _fp32(fn):
    """Run quantizer math in fp32 even inside an autocast region (rounding and distances in
    half precision mis-assign codes)."""
    def wrapped(self, *args, **kwargs):
        dev = next((a.device.type for a in args if torch.is_tensor(a)), "cpu")
        with torch.autocast(device_type=dev, enabled=False):
            args = [a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
            return fn(self, *args, **kwargs)
    return wrapped


class FSQ(nn.Module):
    """Finite Scalar Quantization: no codebook parameters, no auxiliary loss."""

    def __init__(self, levels):
        super().__init__()
        levels_t = torch.tensor(levels, dtype=torch.int64)
        self.register_buffer("levels", levels_t, persistent=False)
        # mixed-radix basis: index = sum(digit_i * prod(levels[:i]))
        self.register_buffer("basis", torch.cumprod(torch.tensor([1] + list(levels[:-1])), 0), persistent=False)
        self.dim = len(levels)
        self.num_codes = math.prod(levels)

    def bound(self, z):
        """(..., dim) -> values in [-(L-1)/2, (L-1)/2] per channel; shifted for even L so that
        rounding yields exactly L values."""
        L = self.levels.float()
        half_l = (L - 1) * (1 + 1e-3) / 2
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    @_fp32
    def forward(self, z):
        """z (B, dim, h, w) -> (quantized z in [-1, 1] with straight-through gradient, indices (B, h, w), aux loss)."""
        z = z.permute(0, 2, 3, 1)  # (B, h, w, dim)
        b = self.bound(z)
        q = b + (torch.round(b) - b).detach()  # straight-through rounding
        idx = self._digits_to_index(torch.round(b))
        zq = q / (self.levels // 2).float()  # scale to [-1, 1]
        return zq.permute(0, 3, 1, 2), idx, z.new_zeros(())

    def _digits_to_index(self, r):
        digits = (r + (self.levels // 2).float()).long()  # 0 .. L-1 (even L: -L/2 .. L/2-1 after offset)
        return (digits * self.basis).sum(-1)

    def codes(self, idx):
        """int64 (...) -> (..., dim) code vectors in [-1, 1]."""
        digits = (idx.unsqueeze(-1) // self.basis) % self.levels
        return (digits - self.levels // 2).float() / (self.levels // 2).float()

    def all_codes(self):
        return self.codes(torch.arange(self.num_codes, device=self.levels.device))  # (K, dim)


class EMAQuantizer(nn.Module):
    """Cosine-similarity VQ with an EMA codebook, k-means init and per-step dead-code restart."""

    def __init__(self, num_codes, dim, decay=0.9, dead_threshold=1.0, kmeans_iters=10, commitment=0.25):
        super().__init__()
        self.num_codes, self.dim, self.decay = num_codes, dim, decay
        self.dead_threshold, self.kmeans_iters, self.commitment = dead_threshold, kmeans_iters, commitment
        self.register_buffer("initted", torch.tensor(False))
        self.register_buffer("embed", F.normalize(torch.randn(num_codes, dim), dim=-1))  # (K, d)
        self.register_buffer("embed_sum", self.embed.clone())                            # (K, d)
        self.register_buffer("cluster_size", torch.ones(num_codes))                      # (K,)

    @torch.no_grad()
    def init_embed_(self, x):
        """Spherical k-means on a batch of normalised vectors x (N, d); runs once."""
        n = x.shape[0]
        centers = x[torch.randint(n, (self.num_codes,), device=x.device)].clone()
        for _ in range(self.kmeans_iters):
            assign = (x @ centers.t()).argmax(-1)
            sums = torch.zeros_like(centers).index_add_(0, assign, x)
            counts = torch.bincount(assign, minlength=self.num_codes).float()
            empty = counts == 0  # re-seed empty clusters from random points
            sums[empty] = x[torch.randint(n, (int(empty.sum()),), device=x.device)]
            centers = F.normalize(sums, dim=-1)
        counts = torch.bincount((x @ centers.t()).argmax(-1), minlength=self.num_codes).float()
        self._sync(centers, broadcast=True)
        self.embed.copy_(centers)
        self.embed_sum.copy_(centers * counts.clamp(min=1).unsqueeze(1))
        self.cluster_size.copy_(counts.clamp(min=1))
        self.initted.fill_(True)

    @torch.no_grad()
    def update_ema_(self, x, idx):
        onehot_counts = torch.bincount(idx, minlength=self.num_codes).float()      # (K,)
        sums = torch.zeros_like(self.embed).index_add_(0, idx, x)                 # (K, d)
        self._sync(onehot_counts)  # DDP: global statistics, so every rank computes the same codebook
        self._sync(sums)
        self.cluster_size.mul_(self.decay).add_(onehot_counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        self.embed.copy_(F.normalize(self.embed_sum, dim=-1))  # direction of the running mean

    @torch.no_grad()
    def expire_codes_(self, x):
        """Replace every code whose EMA count fell below the threshold with a random live vector."""
        dead = self.cluster_size < self.dead_threshold
        n_dead = int(dead.sum())
        if n_dead == 0:
            return
        new = x[torch.randint(x.shape[0], (n_dead,), device=x.device)]
        new = new + 0.01 * torch.randn_like(new)  # two restarts from one vector should not stay identical
        new = F.normalize(new, dim=-1)
        full = self.embed.clone()
        full[dead] = new
        self._sync(full, broadcast=True)  # every rank takes rank 0's replacements
        self.embed.copy_(full)
        self.embed_sum[dead] = full[dead] * self.dead_threshold
        self.cluster_size[dead] = self.dead_threshold

    @staticmethod
    def _sync(t, broadcast=False):
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(t, 0) if broadcast else dist.all_reduce(t)

    @_fp32
    def forward(self, z):
        """z (B, d, h, w) -> (quantized (B, d, h, w) straight-through, indices (B, h, w), commitment loss)."""
        B, d, h, w = z.shape
        x = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, d), dim=-1)  # (N, d)
        if self.training and not bool(self.initted):
            self.init_embed_(x.detach())
        idx = (x @ self.embed.t()).argmax(-1)  # (N,) nearest code by cosine similarity
        q = self.embed[idx]
        loss = self.commitment * F.mse_loss(x, q.detach())
        if self.training:
            self.update_ema_(x.detach(), idx)
            self.expire_codes_(x.detach())
        q = x + (q - x).detach()
        return q.reshape(B, h, w, d).permute(0, 3, 1, 2), idx.reshape(B, h, w), loss

    @_fp32
    def similarities(self, z):
        """z (B, d, h, w) -> cosine similarity of every cell to every code (B, h, w, K)."""
        return F.normalize(z.permute(0, 2, 3, 1), dim=-1) @ self.embed.t()

    def codes(self, idx):
        return self.embed[idx]

    def all_codes(self):
        return self.embed


def best_shifted_codes(prev, sims, best, track, sticky):
    """prev (h, w) codes of the previous frame, sims (h, w, K) cosine similarities of the new frame's
    cells to every code, best (h, w) their maximum -> prev moved by the whole-cell offset (dx, dy) in
    +-track that keeps the most cells within `sticky` of their best code: cell (y, x) holds
    prev[y + dy, x + dx], -1 where that is outside the grid. Ties go to the smaller offset."""
    h, w = prev.shape
    padded = prev.new_full((h + 2 * track, w + 2 * track), -1)
    padded[track:track + h, track:track + w] = prev
    chosen, score = prev, None
    offsets = sorted(((dx, dy) for dx in range(-track, track + 1) for dy in range(-track, track + 1)),
                     key=lambda o: abs(o[0]) + abs(o[1]))
    for dx, dy in offsets:
        ref = padded[track + dy:track + dy + h, track + dx:track + dx + w]
        near = sims.gather(-1, ref.clamp(min=0)[..., None])[..., 0] >= best - sticky
        kept = int((near & (ref >= 0)).sum())
        if score is None or kept > score:
            chosen, score = ref, kept
    return chosen


class VQVAE(nn.Module):
    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.quantizer == "fsq":
            self.quantizer = FSQ(cfg.levels)
        elif cfg.quantizer == "ema":
            self.quantizer = EMAQuantizer(cfg.codebook_size, cfg.code_dim, cfg.ema_decay,
                                          cfg.dead_code_threshold, cfg.kmeans_iters, cfg.commitment)
        else:
            raise ValueError(f"quantizer must be 'fsq' or 'ema', got {cfg.quantizer!r}")
        dim = self.quantizer.dim
        self.encoder = Encoder(cfg, dim)
        self.decoder = Decoder(cfg, dim)
        self.num_codes = self.quantizer.num_codes

    def forward(self, x):
        """x (B, 3, H, W) in [-1, 1] -> (reconstruction (B, 3, H, W), indices (B, h, w), aux loss)."""
        zq, idx, aux = self.quantizer(self.encoder(x))
        return self.decoder(zq), idx, aux

    def encode(self, x, sticky=0.0, prev=None, track=0):
        """x (B, 3, H, W) in [-1, 1] -> int64 indices (B, h, w).

        sticky > 0 treats the batch as consecutive frames of one video: a cell keeps the previous
        frame's code while that code's cosine similarity is within `sticky` of the best code's, so
        near-duplicate codes do not flip on noise (prev (h, w): the code before the first frame).
        track > 0 lets the kept codes move with the picture: for each frame the previous codes are
        first shifted by the whole-cell offset, within +-track cells, that keeps the most of them
        (ties go to the smaller offset), so a turning camera moves the codes instead of holding them
        in place; cells whose source is outside the grid take their best code."""
        if sticky <= 0:
            return self.quantizer(self.encoder(x))[1]
        if not hasattr(self.quantizer, "similarities"):
            raise ValueError("sticky encoding needs a codebook (EMA) quantizer; this tokenizer uses "
                             f"{self.cfg.quantizer}")
        sims = self.quantizer.similarities(self.encoder(x))   # (B, h, w, K)
        best, idx = sims.max(-1)                               # (B, h, w)
        out = []
        for i in range(sims.shape[0]):
            if prev is not None:
                ref = best_shifted_codes(prev, sims[i], best[i], track, sticky) if track > 0 else prev
                keep = (ref >= 0) & (sims[i].gather(-1, ref.clamp(min=0)[..., None])[..., 0] >= best[i] - sticky)
                prev = torch.where(keep, ref, idx[i])
            else:
                prev = idx[i]
            out.append(prev)
        return torch.stack(out)

    def decode(self, idx):
        """int64 (B, h, w) -> (B, 3, H, W) in [-1, 1] space (unclamped)."""
        return self.decoder(self.quantizer.codes(idx).permute(0, 3, 1, 2))

    def decode_soft(self, probs):
        """probs (B, K, h, w) -> (B, 3, H, W): the expected code vector per cell, then the decoder.

        Differentiable in probs (used for a perceptual loss on a world model's predictions)."""
        codes = self.quantizer.all_codes().to(probs.dtype)  # (K, d)
        z = torch.einsum("bkhw,kd->bdhw", probs, codes)
        return self.decoder(z)
