"""Tokenizer quality metrics: codebook usage and perplexity, PSNR, SSIM, and LPIPS (real weights only).

Images here are float tensors (B, 3, H, W) in [-1, 1] unless a docstring says otherwise.
"""
import math
import os

import torch
import torch.nn.functional as F


# ----------------------------------------------------------------------------- codebook

def code_counts(indices, num_codes) -> torch.Tensor:
    """int64 indices of any shape -> (num_codes,) int64 histogram."""
    return torch.bincount(indices.reshape(-1).cpu(), minlength=num_codes)


def codebook_stats(counts) -> dict:
    """From a histogram of code uses: fraction of codes used at least once, perplexity
    (exp of the entropy of the usage distribution; equals K when all K codes are equally used),
    and the number of codes never used."""
    counts = torch.as_tensor(counts, dtype=torch.float64)
    k = counts.numel()
    total = counts.sum().item()
    if total == 0:
        return {"usage": 0.0, "perplexity": 0.0, "dead_codes": k, "num_codes": k}
    p = counts / total
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    used = int((counts > 0).sum())
    return {"usage": used / k, "perplexity": math.exp(entropy), "dead_codes": k - used, "num_codes": k}


# ----------------------------------------------------------------------------- pixels

def to_unit(x):
    """[-1, 1] -> [0, 1], clamped (the decoder output is not bounded by an activation)."""
    return ((x.float() + 1) / 2).clamp(0, 1)


def psnr(x, y) -> torch.Tensor:
    """Per-image PSNR in dB of two (B, 3, H, W) images in [-1, 1], measured on the [0, 1] scale."""
    mse = (to_unit(x) - to_unit(y)).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp(min=1e-10))


def border_errors(x, y):
    """Mean absolute error on the 0-255 scale of (B, 3, H, W) images in [-1, 1], split by where it
    is: the outermost rows and columns, the four corner pixels, and everything inside. A decoder
    that draws a frame around its pictures shows up as border >> inner. -> (B, 3) [border, corner, inner]."""
    err = (to_unit(x) - to_unit(y)).abs().mean(1) * 255                      # (B, H, W)
    edge = torch.zeros(err.shape[1:], dtype=torch.bool, device=err.device)
    edge[0], edge[-1], edge[:, 0], edge[:, -1] = True, True, True, True
    corner = torch.zeros_like(edge)
    corner[0, 0] = corner[0, -1] = corner[-1, 0] = corner[-1, -1] = True
    return torch.stack([err[:, edge].mean(1), err[:, corner].mean(1), err[:, ~edge].mean(1)], 1)


def _gaussian_window(size=11, sigma=1.5, channels=3, device=None):
    g = torch.exp(-((torch.arange(size, device=device) - size // 2).float() ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    w2d = torch.outer(g, g)  # (size, size), separable gaussian
    return w2d.expand(channels, 1, size, size).contiguous()


def ssim(x, y, size=11, sigma=1.5) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004) with a gaussian window, on the [0, 1] scale, averaged
    over channels and valid window positions. (B, 3, H, W) x2 -> (B,)."""
    x, y = to_unit(x), to_unit(y)
    c = x.shape[1]
    w = _gaussian_window(size, sigma, c, x.device)
    c1, c2 = 0.01 ** 2, 0.03 ** 2

    def blur(t):
        return F.conv2d(t, w, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(1)


# ----------------------------------------------------------------------------- LPIPS

_BACKBONES = {"alex": ("alexnet", "AlexNet_Weights"), "vgg": ("vgg16", "VGG16_Weights"),
              "squeeze": ("squeezenet1_1", "SqueezeNet1_1_Weights")}  # lpips net -> torchvision names

def lpips_backbone_file(net="alex") -> str:
    """Where torchvision looks for the ImageNet backbone weights LPIPS needs (the torch hub cache)."""
    from torchvision import models
    weights = getattr(models, _BACKBONES[net][1]).IMAGENET1K_V1
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))


def check_lpips_weights(net="alex"):
    """Fail with instructions when the real backbone weights are absent: a randomly initialised
    backbone gives a number that is not LPIPS, and this machine cannot download the weights."""
    path = lpips_backbone_file(net)
    if not os.path.isfile(path):
        raise SystemExit(
            f"LPIPS asked for (lpips_weight > 0) but the ImageNet backbone weights for net={net!r} are not in the "
            f"torch hub cache.\n  Needed file: {os.path.basename(path)}\n  Put it in:   {os.path.dirname(path)}/\n"
            f"  (on a machine with internet: python -c \"import torchvision; torchvision.models.{_BACKBONES[net][0]}(weights='IMAGENET1K_V1')\" "
            f"then copy the file), or run with --lpips_weight 0.")
    return path


def build_lpips(net="alex", device="cpu"):
    """The real LPIPS metric (linear heads ship with the lpips package; backbone from the hub cache)."""
    check_lpips_weights(net)
    import lpips
    model = lpips.LPIPS(net=net, pretrained=True, verbose=False).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
