"""The one token sampler, used by training rollouts, evaluation and live play.

Argmax is never the default (shared/WORLD_MODEL_NOTES.md section 2): greedy decoding
collapses onto a few codes at the first autoregressive step. keep_above takes the most likely code
only in the cells where it holds at least that probability; every other cell is drawn.
"""
import math
from dataclasses import dataclass

import numpy as np
import torch


# Evaluation and play: a cell whose most likely code has at least this probability takes it. For the
# copy-mixture models the cells they are sure of (mostly kept codes) then stay, and only the unsure
# cells are drawn; drawing every cell made a few percent of sure cells change each step, and those
# errors piled up over a rollout (README, "Sampling the cells the model is sure of"). 0.2 rather than
# 0.3: +0.45 dB over 16 sampled steps and sharper, more varied rollouts on the demo's checkpoint,
# at the cost of a W/S test that is at chance either way (README).
KEEP_ABOVE = 0.2
# action guidance of evaluation and play: uncond + g * (cond - uncond) logits. 2 with the quickstart's
# learning rate 0.006 (three seeds, all 460 steps): the model's guided next frame beats copying (token
# accuracy +0.064-0.067, 16 sampled steps +0.08-0.17 dB), where at 3 the 16 steps fell below copying in
# all three; 3 tells W from S more often (0.60-0.75 against 0.52-0.60; README, "Guidance 2")
GUIDANCE = 2.0


@dataclass
class Sampler:
    temperature: float = 1.0  # <= 0 means greedy (argmax), an explicit opt-in
    top_k: int = 50           # 0 disables
    top_p: float = 1.0        # 1.0 disables
    keep_above: float = 1.0   # a cell whose most likely code has at least this probability takes it; 1.0 disables

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def __call__(self, logits, generator=None):
        return sample_tokens(logits, self.temperature, self.top_k, self.top_p, generator, self.keep_above)

    def describe(self) -> str:
        if self.greedy:
            return "greedy"
        keep = f" keep-above={self.keep_above:.2f}" if self.keep_above < 1.0 else ""
        return f"T={self.temperature:.2f} top-k={self.top_k or 'off'} top-p={self.top_p:.2f}{keep}"


def filter_logits(logits, top_k: int = 0, top_p: float = 1.0):
    """Mask logits [..., K] outside the top-k and the top-p nucleus to -inf."""
    if top_k and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop_sorted = cum - torch.softmax(sorted_logits, dim=-1) >= top_p  # keep the token that crosses p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def top_k_candidates(flat, k: int):
    """[N, K] -> (values [N, k], indices [N, k]) of the k largest logits per row, unordered.
    On CPU numpy's argpartition is about 10x faster than torch.topk for a 32x18 grid of 1000 codes."""
    if flat.device.type == "cpu":
        idx = torch.from_numpy(np.argpartition(flat.numpy(), -k, axis=-1)[:, -k:])
        return flat.gather(-1, idx), idx
    return torch.topk(flat, k, dim=-1, sorted=False)


def _draw(raw, temperature, top_k, top_p, generator):
    """Rows of logits [N, K] -> one code per row [N, 1], drawn after temperature, top-k and top-p."""
    flat = raw / temperature if temperature != 1.0 else raw
    idx = None
    if top_k and 0 < top_k < raw.shape[-1]:
        flat, idx = top_k_candidates(flat, top_k)  # draw among k candidates instead of all K codes
    probs = torch.softmax(filter_logits(flat, 0, top_p), dim=-1)
    codes = torch.multinomial(probs, 1, generator=generator)
    return idx.gather(-1, codes) if idx is not None else codes


@torch.no_grad()
def sample_tokens(logits, temperature: float = 1.0, top_k: int = 50, top_p: float = 1.0, generator=None,
                  keep_above: float = 1.0):
    """logits [B, K, H, W] over the codebook -> sampled codes [B, H, W] (int64).
    keep_above < 1: a cell whose most likely code has at least that probability (before temperature
    and filtering) takes that code; the other cells are sampled as usual. For a copy-mixture model this
    keeps the cells it is sure of, while the cells it is unsure of keep their full spread."""
    if temperature <= 0:
        return logits.argmax(dim=1)
    B, K, H, W = logits.shape
    raw = logits.float().permute(0, 2, 3, 1).reshape(-1, K).contiguous()
    if keep_above >= 1.0:
        return _draw(raw, temperature, top_k, top_p, generator).view(B, H, W)
    top, best = raw.max(-1, keepdim=True)
    sure = (top - torch.logsumexp(raw, -1, keepdim=True) >= math.log(max(keep_above, 1e-30))).squeeze(-1)
    codes = best
    unsure = (~sure).nonzero().squeeze(-1)
    if unsure.numel():  # only the unsure cells are drawn (the top-k search is most of the sampler's time)
        codes = codes.index_put((unsure,), _draw(raw[unsure], temperature, top_k, top_p, generator))
    return codes.view(B, H, W)
