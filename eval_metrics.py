"""Metrics for evaluate.py: functions on images, token grids and logits (no files), plus the small
inverse-dynamics probe whose accuracy on rollouts measures controllability.

Conventions: images are uint8 RGB [..., H, W, 3] (numpy or torch); token grids are int64
[..., h, w]; logits are [B, K, h, w] over the codebook. Every function here has a hand-made
test in tests/test_evaluate.py where the answer is known.
"""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from vq_vae import metrics as vq_metrics

PSNR_CAP_DB = 100.0  # identical frames have infinite PSNR; averages use this cap so one perfect frame stays finite


# ----------------------------------------------------------------------------- image quality

def _as_float_images(x) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> float64 [N, 3, H, W] in [0, 255]."""
    x = torch.as_tensor(np.asarray(x)) if not torch.is_tensor(x) else x
    x = x.to(torch.float64)
    return x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2)


def psnr(a, b) -> np.ndarray:
    """Per-image PSNR in dB between uint8 images [..., H, W, 3]; inf where the images are identical."""
    a, b = _as_float_images(a), _as_float_images(b)
    mse = ((a - b) ** 2).mean(dim=(1, 2, 3)).numpy()
    with np.errstate(divide="ignore"):
        return np.where(mse == 0, np.inf, 10.0 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-300)))


def pooled_psnr(psnrs, axis=0) -> np.ndarray:
    """Per-image PSNRs -> the PSNR of their mean squared error along `axis` (identical images count
    as error 0, not as a capped PSNR)."""
    mse = 255.0 ** 2 * np.power(10.0, -np.asarray(psnrs, dtype=np.float64) / 10.0)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(255.0 ** 2 / np.maximum(mse.mean(axis), 1e-300))


def mean_psnr(values) -> float:
    """Mean of per-image PSNRs with infinities capped at PSNR_CAP_DB."""
    v = np.minimum(np.asarray(values, dtype=np.float64), PSNR_CAP_DB)
    return float(v.mean()) if v.size else float("nan")


def ssim(a, b, chunk=256) -> np.ndarray:
    """Per-image SSIM between uint8 images [..., H, W, 3] (the tokenizer's SSIM: 11x11 Gaussian
    window, sigma 1.5, 'valid' borders; smaller windows for tiny images). 1.0 for identical images."""
    a, b = _as_float_images(a).float() / 127.5 - 1, _as_float_images(b).float() / 127.5 - 1
    size = min(11, a.shape[2], a.shape[3])
    out = [vq_metrics.ssim(a[i:i + chunk], b[i:i + chunk], size=size).double() for i in range(0, len(a), chunk)]
    return torch.cat(out).numpy()


def mean_abs_diff(a, b) -> np.ndarray:
    """Per-image mean absolute pixel difference in [0, 255]."""
    a, b = _as_float_images(a), _as_float_images(b)
    return (a - b).abs().mean(dim=(1, 2, 3)).numpy()


def sharpness(x) -> np.ndarray:
    """Per-image high-frequency energy: mean magnitude of the horizontal and vertical pixel
    differences of the grey image, uint8 [..., H, W, 3] -> [N]. A blurred image scores lower."""
    g = _as_float_images(x).mean(1)                                                 # (N, H, W)
    dx = (g[:, :, 1:] - g[:, :, :-1]).abs().mean((1, 2))
    dy = (g[:, 1:, :] - g[:, :-1, :]).abs().mean((1, 2))
    return (0.5 * (dx + dy)).numpy()


# ----------------------------------------------------------------------------- code diversity

def code_stats(tokens):
    """Token grids [..., h, w] -> (unique codes, entropy of the code histogram in bits), per grid.
    Returns two float arrays shaped like the leading dims."""
    t = torch.as_tensor(np.asarray(tokens)) if not torch.is_tensor(tokens) else tokens
    lead = t.shape[:-2]
    flat = t.reshape(-1, t.shape[-2] * t.shape[-1]).long()
    uniq = np.zeros(flat.shape[0])
    ent = np.zeros(flat.shape[0])
    for i, row in enumerate(flat):
        counts = torch.unique(row, return_counts=True)[1].double()
        p = counts / counts.sum()
        uniq[i] = len(counts)
        ent[i] = float(-(p * torch.log2(p)).sum())
    return uniq.reshape(lead), ent.reshape(lead)


# ----------------------------------------------------------------------------- logits

def logit_stats(logits) -> dict:
    """logits [B, K, h, w] -> per-sample mean entropy (nats) and mean max-probability (confidence)."""
    return logprob_stats(torch.log_softmax(logits.float(), dim=1))


def logprob_stats(logp) -> dict:
    """The same from log-probabilities (so a caller computes each log_softmax once)."""
    p = logp.exp()
    return {"entropy": (-(p * logp).sum(1)).mean(dim=(1, 2)).cpu().numpy(),
            "confidence": p.max(1).values.mean(dim=(1, 2)).cpu().numpy()}


def logit_kl(p_logits, q_logits) -> np.ndarray:
    """KL(p || q) in nats per grid cell, averaged over cells: [B, K, h, w] x2 -> [B].
    Used as KL(teacher-forced || autoregressive); 0 when the logits are equal."""
    return logprob_kl(torch.log_softmax(p_logits.float(), dim=1), torch.log_softmax(q_logits.float(), dim=1))


def logprob_kl(logp, logq) -> np.ndarray:
    kl = (logp.exp() * (logp - logq)).sum(1).clamp_min(0.0)
    return kl.mean(dim=(1, 2)).cpu().numpy()


def logit_js(p_logits, q_logits) -> np.ndarray:
    """Jensen-Shannon divergence between two predicted distributions, in units of ln 2 (so in
    [0, 1]), per grid cell averaged over cells: [B, K, h, w] x2 -> [B]. 0 for equal logits."""
    logp = torch.log_softmax(p_logits.float(), dim=1)
    logq = torch.log_softmax(q_logits.float(), dim=1)
    logm = torch.logsumexp(torch.stack([logp, logq]), 0) - math.log(2)
    js = 0.5 * (logp.exp() * (logp - logm)).sum(1) + 0.5 * (logq.exp() * (logq - logm)).sum(1)
    return (js.clamp_min(0.0) / math.log(2)).mean(dim=(1, 2)).cpu().numpy()


def cross_entropy_and_accuracy(logits, targets):
    """logits [N, K, h, w], targets [N, h, w] -> (sum of CE in nats, number correct, number of cells)."""
    ce = F.cross_entropy(logits.float(), targets, reduction="sum").item()
    correct = (logits.argmax(1) == targets).sum().item()
    return ce, correct, targets.numel()


# ----------------------------------------------------------------------------- image shift

def _gray(img) -> np.ndarray:
    x = np.asarray(img, dtype=np.float64)
    return x @ np.array([0.299, 0.587, 0.114]) if x.ndim == 3 else x


def estimate_shift(src, dst, max_shift=None, min_overlap=0.5, min_gain=0.15):
    """Best integer translation (dx, dy) with dst[y, x] ~= src[y - dy, x - dx]: the content moved by
    +dx pixels to the right and +dy pixels down. Exhaustive search over |dx|, |dy| <= max_shift,
    scoring the mean absolute difference of the overlap after removing each side's mean (robust to
    small brightness changes, no wrap-around as in FFT phase correlation). A shift counts only if it
    explains the change clearly better than no shift (cost at least `min_gain` lower than at (0, 0));
    otherwise (0, 0): two unrelated noise images do not get a "direction" by chance."""
    a, b = _gray(src), _gray(dst)
    h, w = a.shape
    if max_shift is None:
        max_shift = max(1, w // 4)
    mx = min(max_shift, int(w * (1 - min_overlap)))
    my = min(max_shift, int(h * (1 - min_overlap)))

    def cost(dx, dy):  # overlap: dst[y, x] vs src[y - dy, x - dx]
        d = b[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)]
        s = a[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
        return np.abs((d - d.mean()) - (s - s.mean())).mean()

    zero = cost(0, 0)
    best, best_cost = (0, 0), zero
    for dy in range(-my, my + 1):
        for dx in range(-mx, mx + 1):
            c = cost(dx, dy) + 1e-9 * (abs(dx) + abs(dy))  # prefer the smaller shift on (near) ties
            if c < best_cost:
                best, best_cost = (dx, dy), c
    return best if best_cost < (1 - min_gain) * zero else (0, 0)


# ----------------------------------------------------------------------------- action response

def direction_accuracy(first, second, expect_sign: int) -> float:
    """Fraction of pairs where (second - first) has the expected sign. A zero difference (the model
    did not respond) counts as wrong, so a model that ignores actions scores 0, random motion ~0.5."""
    d = np.asarray(second, dtype=np.float64) - np.asarray(first, dtype=np.float64)
    return float((np.sign(d) == expect_sign).mean()) if d.size else float("nan")


def direction_skill(accuracy: float) -> float:
    """Chance-corrected direction accuracy: 0 at or below chance (0.5), 1 when always right."""
    return float(max(0.0, 2.0 * accuracy - 1.0)) if not math.isnan(accuracy) else float("nan")


# ----------------------------------------------------------------------------- inverse-dynamics labels

KEY_NAMES = ("forward", "back", "left", "right", "jump", "sprint", "sneak")
CAMERA_THRESHOLD = 0.05  # |normalized yaw/pitch| below this counts as "no turn" (0.75 degrees per tick)


def action_labels(actions: torch.Tensor):
    """Normalized actions [N, 7] -> (keys [N, 7] float 0/1 in KEY_NAMES order,
    camera classes [N, 2] int64 in {0: negative, 1: none, 2: positive} for (yaw, pitch))."""
    a = actions.float()
    keys = torch.stack([a[:, 3] > 0.25, a[:, 3] < -0.25, a[:, 2] < -0.25, a[:, 2] > 0.25,
                        a[:, 4] > 0.5, a[:, 5] > 0.5, a[:, 6] > 0.25], dim=1).float()
    cam = a[:, :2]
    classes = torch.ones_like(cam, dtype=torch.long)
    classes[cam < -CAMERA_THRESHOLD] = 0
    classes[cam > CAMERA_THRESHOLD] = 2
    return keys, classes


def keyboard_f1(pred_keys, true_keys) -> float:
    """Micro-averaged F1 over all key presses ([N, 7] 0/1). Defined as 1.0 when nothing is pressed
    and nothing is predicted (nothing to get wrong)."""
    p, t = np.asarray(pred_keys) > 0.5, np.asarray(true_keys) > 0.5
    tp, fp, fn = (p & t).sum(), (p & ~t).sum(), (~p & t).sum()
    if tp + fp + fn == 0:
        return 1.0
    return float(2 * tp / (2 * tp + fp + fn))


def camera_accuracy(pred_classes, true_classes, moving_only=True) -> float:
    """Accuracy of the (yaw, pitch) direction classes; by default only where the true camera turned
    (most steps have no turn, which would flatter a predictor that always says 'none')."""
    p, t = np.asarray(pred_classes), np.asarray(true_classes)
    keep = t != 1 if moving_only else np.ones_like(t, dtype=bool)
    return float((p[keep] == t[keep]).mean()) if keep.any() else float("nan")


def match_volume(a, b, radius):
    """Code-match cost volume: [N, h, w] x2 -> [N, (2r+1)^2, h, w] float, channel (dy, dx) is 1 where
    code a[y, x] reappears at b[y + dy, x + dx]. Camera turns show up as one dominant shift, walking
    as a radial pattern; the probe needs no code embedding to learn, so it trains in seconds."""
    h, w = a.shape[-2:]
    padded = F.pad(b, (radius, radius, radius, radius), value=-1)
    out = [a == padded[:, radius + dy:radius + dy + h, radius + dx:radius + dx + w]
           for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]
    return torch.stack(out, 1).float()


class InverseDynamicsProbe(nn.Module):
    """(codes t, codes t+1) [N, h, w] x2 -> key logits [N, 7] and camera logits [N, 2, 3]."""

    def __init__(self, radius=3, hidden=32):
        super().__init__()
        self.radius = radius
        self.net = nn.Sequential(
            nn.Conv2d((2 * radius + 1) ** 2, hidden, 3, padding=1), nn.GELU(),
            nn.Conv2d(hidden, hidden, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(hidden, hidden, 3, stride=2, padding=1), nn.GELU())
        self.out = nn.Linear(2 * hidden, len(KEY_NAMES) + 6)

    def forward(self, a, b):
        f = self.net(match_volume(a, b, self.radius))                                 # (N, C, h/4, w/4)
        y = self.out(torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1))                  # mean + max: motion anywhere
        return y[:, :len(KEY_NAMES)], y[:, len(KEY_NAMES):].view(-1, 2, 3)


def idm_scores(probe, a, b, actions, seed=0):
    """Keyboard F1 and camera-direction accuracy of the probe on code pairs (a -> b) [N, h, w]
    against the actions [N, 7] that were meant to produce them, and the same scores against a
    shuffled copy of the actions: the part above the shuffled score (`*_over_chance`) is what the
    frames say about *their own* actions. A probe fooled by garbage frames (e.g. "keys pressed"
    everywhere) scores as well on shuffled actions, so over_chance stays near 0."""
    with torch.no_grad():
        keys, cam = probe(a, b)
    pred_keys, pred_cam = (keys > 0).cpu().numpy(), cam.argmax(-1).cpu().numpy()
    perm = torch.randperm(len(actions), generator=torch.Generator().manual_seed(seed))
    out = {"pairs": int(len(a))}
    for tag, acts in (("", actions), ("_shuffled", actions[perm.to(actions.device)])):
        true_keys, true_cam = action_labels(acts)
        out["keyboard_f1" + tag] = keyboard_f1(pred_keys, true_keys.cpu().numpy())
        out["camera_accuracy" + tag] = camera_accuracy(pred_cam, true_cam.cpu().numpy())
    for k in ("keyboard_f1", "camera_accuracy"):
        out[k + "_over_chance"] = out[k] - out[k + "_shuffled"]
    return out
