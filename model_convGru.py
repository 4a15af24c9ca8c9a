"""Action-conditioned ConvGRU world model over VQ/FSQ token grids.

Modules and the config dataclass only (no paths, argparse or loops over data).

One step: tokens of frame t [B, h, w] + action a_t [B, A] -> logits over the codebook for
frame t+1 [B, K, h, w]. The pieces, and why they are there (shared/WORLD_MODEL_NOTES.md):
- token embedding + action/corruption planes -> a small conv stem (optionally stride 2, so the
  recurrent cells run on a 4x smaller grid with twice the receptive field: a yaw step moves the
  view several cells, and the recurrent convs are the sequential, un-batchable cost);
- a stack of ConvGRU cells with GroupNorm on the gate pre-activations (stable long rollouts) and
  FiLM from an action MLP on every layer at every step (actions cannot be ignored as easily as a
  single input-concat, section 4);
- the corruption level of the context (GameNGen-style noise augmentation) and an "action
  present" flag are inputs of the same MLP, so the model knows how much to trust its input and
  can be run unconditioned (action dropout -> guidance);
- a learned, action-conditioned translation (and optionally zoom about the view's centre): a
  small MLP maps the conditioning to a sub-cell offset (dx, dy) and a log scale, applied by
  linear interpolation (a spatial transformer restricted to shift and zoom; zoom is the first-order
  picture of walking forward or back).
  It moves the embedded frame (an extra input next to the unmoved one, so fixed overlays can stay
  put) and every cell's recurrent state, so "this camera action moves the view 1.5 cells left" is
  two numbers instead of something generic convs must assemble. Nothing about direction or size is
  hard-coded: the offset starts at zero and is learned from the data;
- an inverse-dynamics head that predicts a_t from embeddings of frames t and t+1; applied to
  the model's own soft predictions it makes the prediction carry the action;
- a per-cell head onto the codebook logits, with a full-resolution skip from the stem.

Speed: the cell is split into an input half (conv on x, done for all T steps of a
teacher-forced sequence in one batched conv, with GroupNorm and FiLM) and a recurrent half
(one conv on h producing all three gates' contributions at once). The reset gate multiplies the
recurrent candidate term, as in torch.nn.GRU, so no second conv is needed after the reset.
The only Python loops are over layers and time steps.
"""
import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from actions import action_mask


@dataclass
class WorldModelConfig:
    # shape-defining sizes: always taken from the tokenizer / manifest, never defaulted
    codebook_size: int
    grid: tuple  # (h, w) token grid
    action_dim: int
    # architecture
    embed_dim: int = 64       # token embedding width
    hidden: int = 96          # ConvGRU channels
    layers: int = 2           # ConvGRU cells
    kernel: int = 3           # conv kernel of the cells
    dilations: list = field(default_factory=lambda: [1, 2])  # per layer (cycled); widens the receptive field
    downsample: bool = True   # run the cells at half resolution (stride-2 stem, pixel-shuffle back)
    separable: bool = False   # depthwise-separable gate convs (cheaper at large hidden sizes)
    groups_per_gate: int = 4  # GroupNorm groups per gate
    action_hidden: int = 128  # width of the action/conditioning MLP
    idm_hidden: int = 64      # inverse-dynamics head width
    shift_radius: int = 3     # learned action-conditioned shift, +-cells on the token grid (0 = off)
    zoom_range: float = 0.0   # learned action-conditioned zoom, largest |log scale| per step (0 = off;
                              # train.py turns it on, 0 keeps checkpoints made before it loadable)
    copy_prior: bool = False  # logits start as "each cell keeps its code, moved by the camera motion"
    copy_motion: str = "learned"  # "learned": the copy term also trains the camera motion; "shift": it
                                  # trains the shift but not the zoom; "detached": it only uses the
                                  # motion the state warp learns; "nearest": detached, and each cell
                                  # copies the one source cell nearest to where the motion points;
                                  # "anchored": detached, minus the no-action motion (idle = exact copy);
                                  # "anchored_shift": anchored, and the copy term trains the shift (not
                                  # the zoom): for tokens that move with the picture (sticky_track)
    copy_mixture: bool = False  # copy prior as a per-cell mixture of three: the cell's own code (static), the code
                                # moved by the camera motion, and the head's softmax; False adds the moved copy's
                                # gain to the head's logits instead
    copy_shifts: int = 0      # copy_mixture's moved code as a mixture over whole-cell shifts up to this far along an
                              # axis (|dx| + |dy| <= 2 off the axes), one distribution per frame (prior: near the
                              # camera motion; learned correction from the pooled state), for tokens that follow the
                              # picture in whole cells (sticky_track) while the camera moves a fraction of a cell per
                              # step. 0: bilinear sources of the motion
    copy_edges: str = "repeat"  # copy_shifts: a cell whose shifted source lies outside the frame (content coming
                                # into view) copies the edge code ("repeat"), or that share of the moved mass goes
                                # to the head ("generate")
    copy_zoom: float = 0.0    # copy_shifts: two more moved-copy candidates, the frame zoomed in and out about its
                              # centre by whole cells (the outermost cells move this many cells; 0 = none), for
                              # walking forward and back, which the shifts cannot show
    action_gain: float = 1.0  # the action enters the stem and the FiLM conditioning scaled by this (the camera motion
                              # head keeps gain 1): a faster-learning response of the drawn content to the action
    shift_gain: float = 1.0   # copy_shifts: the conditioning (action) enters the shift choice scaled by this, so that
                              # with Adam's bounded steps a short run can learn a sharp choice of shift from the action
    sampled_level: float = 0.0  # corruption level the model is told when its input is its own sample, so
                                # it can trust real frames more (0 = told nothing: samples pass as clean)
    anchored_motion: bool = False  # the camera motion is measured from the no-action motion, so an idle
                                   # step moves nothing (the copy then keeps each cell exactly)
    odd_motion: bool = False  # the camera motion is odd in the action: m(a) = (f(a) - f(-a)) / 2, so S moves the
                              # view exactly opposite to W (zoom out where W zooms in), left opposite to right,
                              # and an idle step moves nothing, in the state warp as well as in the copy
    head: str = "linear"      # "linear": free per-code weights; "codebook": similarity to the tokenizer's codes
    code_dim: int = 0         # size of the tokenizer's code vectors (head "codebook"; from the tokenizer)


def warp(x, d, log_scale=None):
    """Per-sample sub-cell shift and zoom: x [N, C, H, W], d [N, 2] offsets (dx, dy) in cells,
    log_scale [N] or None -> x sampled at (centre + (p - centre) / s + d), s = exp(log_scale):
    s > 1 magnifies about the centre. Bilinear, edges repeated (content entering the view is
    unknown; the convs after this fill it in). Differentiable in d and s, including at whole cells."""
    N, C, H, W = x.shape
    dx, dy = d[:, 0].float(), d[:, 1].float()
    inv = torch.exp(-log_scale.float()) if log_scale is not None else torch.ones_like(dx)
    zero = torch.zeros_like(dx)
    theta = torch.stack([torch.stack([inv, zero, dx * 2 / max(W - 1, 1)], -1),
                         torch.stack([zero, inv, dy * 2 / max(H - 1, 1)], -1)], 1)         # (N, 2, 3)
    grid = F.affine_grid(theta, [N, C, H, W], align_corners=True).to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


def copy_sources(d, log_scale, H, W):
    """Where each cell of the next frame takes its code from under the camera motion that warp()
    applies: d [N, 2] (dx, dy) cells, log_scale [N] -> (flat source cells [N, H, W, 4] of the four
    bilinear neighbours, their weights [N, H, W, 4], summing to 1). Differentiable in d and log_scale."""
    N = d.shape[0]
    inv = torch.exp(-log_scale.float())[:, None]                                     # (N, 1)
    cx, cy = (W - 1) / 2, (H - 1) / 2
    xs = torch.arange(W, device=d.device, dtype=torch.float32)
    ys = torch.arange(H, device=d.device, dtype=torch.float32)
    sx = (cx + (xs - cx) * inv + d[:, :1].float()).clamp(0, W - 1)                    # (N, W)
    sy = (cy + (ys - cy) * inv + d[:, 1:].float()).clamp(0, H - 1)                    # (N, H)
    x0 = sx.detach().floor().clamp(max=max(W - 2, 0))
    y0 = sy.detach().floor().clamp(max=max(H - 2, 0))
    fx, fy = (sx - x0)[:, None, :], (sy - y0)[:, :, None]                             # (N, 1, W), (N, H, 1)
    x0, y0 = x0.long()[:, None, :], y0.long()[:, :, None]
    x1, y1 = (x0 + 1).clamp(max=W - 1), (y0 + 1).clamp(max=H - 1)
    idx = torch.stack([y0 * W + x0, y0 * W + x1, y1 * W + x0, y1 * W + x1], -1)      # (N, H, W, 4)
    w = torch.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx], -1)
    return idx.expand(N, H, W, 4), w.expand(N, H, W, 4)


def mixture_log_probs(logits, log_pi, cand, w):
    """log(pi_static * [c = static] + pi_moved * sum_k w_k [c = source_k] + pi_gen * softmax(logits)_c):
    logits [..., K], log_pi [..., 3] (static, moved, generated), cand [..., 1 + S] the static code and
    the S moved sources, w [..., S] their weights -> [..., K] log-probabilities, in fp32.
    Only the candidate codes of a cell differ from the generated part, so the full-width work
    is one log-softmax; a code that appears among the candidates more than once gets its summed
    mass once (its later copies are written with the same value and pass no gradient)."""
    logp = torch.log_softmax(logits.float(), -1) + log_pi[..., 2:]
    mass = torch.cat([log_pi[..., :1].exp(), log_pi[..., 1:2].exp() * w.float()], -1)      # (..., 1 + S)
    same = cand[..., :, None] == cand[..., None, :]                                        # (..., 1 + S, 1 + S)
    mass = (same * mass[..., None, :]).sum(-1)          # each candidate's code: its total copy mass
    new = torch.logaddexp(logp.gather(-1, cand), mass.clamp_min(1e-30).log())
    n = cand.shape[-1]
    earlier = torch.ones(n, n, dtype=torch.bool, device=cand.device).tril(-1)
    first = ~(same & earlier).any(-1)
    return logp.scatter(-1, cand, torch.where(first, new, new.detach()))


def near_targets(targets, table, share):
    """Soft targets for training's near_smoothing: targets [...] -> (codes [..., 1 + k], probs [1 + k]),
    the target with 1 - share and each of its k nearest codes (table [K, k]) with share / k."""
    k = table.shape[1]
    codes = torch.cat([targets[..., None], table[targets]], -1)
    probs = torch.tensor([1 - share] + [share / k] * k, device=targets.device)
    return codes, probs


class Mixture(NamedTuple):
    """copy_mixture's output before it is mixed, for the training loss: per cell the head's logits
    [..., K], log_pi [..., 3], the candidate codes cand [..., 1 + S] and their weights w [..., S]
    (mixture_log_probs' arguments). The cross-entropy needs the mixture only at each cell's target
    code, so training never builds the full-width mixture: the quickstart's training step runs 1.45x
    faster on a 2-core CPU (python -m bench.bench_train --mixture-loss)."""
    logits: torch.Tensor
    log_pi: torch.Tensor
    cand: torch.Tensor
    w: torch.Tensor

    def log_probs(self):
        return mixture_log_probs(*self)

    def nll(self, targets, weight=None, near=None):
        """targets [...] -> mean over cells of -log p(target) (weighted by weight [...] if given); equals
        the cross-entropy of log_probs(). near: (table [K, k], share), soft targets (near_targets)."""
        if near is None:
            K = self.logits.shape[-1]
            gen = -F.cross_entropy(self.logits.reshape(-1, K).float(), targets.reshape(-1),
                                   reduction="none").view(targets.shape) + self.log_pi[..., 2].float()
            cell = -self.with_copy_mass(gen[..., None], targets[..., None])[..., 0]
        else:
            codes, probs = near_targets(targets, *near)                                 # (..., J), (J,)
            logits = self.logits.float()
            gen = logits.gather(-1, codes) - torch.logsumexp(logits, -1, keepdim=True) + self.log_pi[..., 2:].float()
            cell = -(self.with_copy_mass(gen, codes) * probs).sum(-1)
        return cell.mean() if weight is None else (cell * weight).sum() / weight.sum()

    def with_copy_mass(self, gen, codes):
        """gen [..., J]: log of the head's share of codes [..., J] -> log p of those codes under the
        whole mixture (the static and moved copies' mass added where a candidate is that code)."""
        mass = torch.cat([self.log_pi[..., :1].exp(), self.log_pi[..., 1:2].exp() * self.w.float()], -1)
        copied = (mass[..., None, :] * (self.cand[..., None, :] == codes[..., None])).sum(-1)   # (..., J)
        return torch.where(copied > 0, torch.logaddexp(gen, copied.clamp_min(1e-30).log()), gen)

    def map(self, fn):
        return Mixture(*(fn(x) for x in self))

    @staticmethod
    def cat(parts, dim):
        return Mixture(*(torch.cat(xs, dim) for xs in zip(*parts)))


def shift_labels(prev, nxt, offsets):
    """The whole-cell shift that keeps the most codes: prev, nxt [N, H, W] codes of consecutive frames,
    offsets [S, 2] (dx, dy) -> [N] index of the offset under which the most cells of nxt hold prev's
    code from (y + dy, x + dx) (edges repeated, as the moved copy takes them); ties go to the smaller
    shift. What preprocess --sticky_track chose when it made the tokens, up to the margin."""
    N, H, W = prev.shape
    src = shift_sources(offsets, H, W)                                              # (S, H*W)
    moved = prev.reshape(N, 1, H * W).expand(N, len(src), H * W).gather(2, src[None].expand(N, -1, -1))
    kept = (moved == nxt.reshape(N, 1, H * W)).float().mean(-1)                     # (N, S)
    return (kept - 1e-3 * offsets.abs().sum(-1).float()).argmax(-1)


def shift_sources(offsets, H, W):
    """offsets [S, 2] whole-cell (dx, dy) -> [S, H*W] the flat cell each cell takes its code from,
    (y + dy, x + dx), edges repeated."""
    off = offsets.long()
    xs = (torch.arange(W, device=off.device)[None] + off[:, :1]).clamp(0, W - 1)    # (S, W)
    ys = (torch.arange(H, device=off.device)[None] + off[:, 1:]).clamp(0, H - 1)    # (S, H)
    return (ys[:, :, None] * W + xs[:, None, :]).flatten(1)


def zoom_sources(edge, H, W):
    """Whole-cell zoom about the frame's centre: edge cells by which the outermost cells move ->
    ([2, H*W] the flat cell each cell takes its code from for zoom in (row 0: content grows, sources
    nearer the centre) and zoom out (row 1), edges repeated; [2, H*W] bool, the source lies inside)."""
    cx, cy = (W - 1) / 2, (H - 1) / 2
    src, inside = [], []
    for sign in (-1.0, 1.0):
        xs = torch.floor(cx + (torch.arange(W) - cx) * (1 + sign * edge / max(cx, 1)) + 0.5).long()
        ys = torch.floor(cy + (torch.arange(H) - cy) * (1 + sign * edge / max(cy, 1)) + 0.5).long()
        ok = ((ys >= 0) & (ys < H))[:, None] & ((xs >= 0) & (xs < W))[None, :]
        src.append((ys.clamp(0, H - 1)[:, None] * W + xs.clamp(0, W - 1)[None, :]).flatten())
        inside.append(ok.flatten())
    return torch.stack(src), torch.stack(inside)


def _gn(channels, groups):
    groups = max(1, min(groups, channels))
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels)


def shift_inside(offsets, H, W):
    """offsets [S, 2] whole-cell (dx, dy) -> [S, H*W] bool: the source (y + dy, x + dx) lies inside the frame."""
    off = offsets.long()
    xs = torch.arange(W, device=off.device)[None] + off[:, :1]                       # (S, W)
    ys = torch.arange(H, device=off.device)[None] + off[:, 1:]                       # (S, H)
    ok_x, ok_y = (xs >= 0) & (xs < W), (ys >= 0) & (ys < H)
    return (ok_y[:, :, None] & ok_x[:, None, :]).flatten(1)


class ConvGRUCell(nn.Module):
    """ConvGRU with normalised gates and FiLM on the input half.

    x-half: gx = FiLM(GN(Wx * x))  -> [z_x | r_x | n_x]  (batched over time by the caller)
    h-half: gh = GN(Wh * h)        -> [z_h | r_h | n_h]
    z = sig(z_x + z_h), r = sig(r_x + r_h), n = tanh(n_x + r * n_h), h' = (1 - z) * n + z * h
    """

    def __init__(self, cin, hidden, kernel, dilation, groups_per_gate, separable):
        super().__init__()
        pad = dilation * (kernel // 2)
        self.hidden = hidden
        def gate_conv(c):  # c -> 3 gates x hidden, all gates in one conv
            if separable:  # depthwise k x k then pointwise: ~k*k times fewer multiply-adds at large widths
                return nn.Sequential(nn.Conv2d(c, c, kernel, padding=pad, dilation=dilation, groups=c, bias=False),
                                     nn.Conv2d(c, 3 * hidden, 1, bias=False))
            return nn.Conv2d(c, 3 * hidden, kernel, padding=pad, dilation=dilation, bias=False)
        self.wx, self.wh = gate_conv(cin), gate_conv(hidden)
        # groups never straddle two gates: 3 gates x groups_per_gate groups
        self.gn_x = nn.GroupNorm(3 * _gn(hidden, groups_per_gate).num_groups, 3 * hidden)
        self.gn_h = nn.GroupNorm(3 * _gn(hidden, groups_per_gate).num_groups, 3 * hidden)
        with torch.no_grad():  # bias the update gate towards keeping h early on (stable start)
            self.gn_h.bias[:hidden].fill_(1.0)

    def input_gates(self, x, gamma, beta):
        """x [N, Cin, h, w], gamma/beta [N, 3C] -> gx [N, 3C, h, w] (N = B*T, batched)."""
        gx = self.gn_x(self.wx(x))
        return gx * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]

    def recur(self, gx, h):
        """One time step: gx [B, 3C, h, w] from input_gates, h [B, C, h, w] -> new h, in h's dtype.
        Under autocast the convs (and, on CPU, GroupNorm) give bf16/fp16 gates while the state
        stays fp32 (init_state, and grid_sample in warp runs in fp32): the gate arithmetic is done
        in the state's dtype, so the state is not rounded to 8 bits of mantissa every step."""
        gh = self.gn_h(self.wh(h))
        zx, rx, nx = gx.to(h.dtype).chunk(3, dim=1)
        zh, rh, nh = gh.to(h.dtype).chunk(3, dim=1)
        z = torch.sigmoid(zx + zh)
        r = torch.sigmoid(rx + rh)
        n = torch.tanh(nx + r * nh)
        return torch.lerp(n, h, z)  # (1 - z) * n + z * h


class InverseDynamics(nn.Module):
    """Predict the action a_t from embedded frames t and t+1 ([N, E, h, w] each) -> [N, A]."""

    def __init__(self, embed_dim, hidden, action_dim):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(2 * embed_dim, hidden, 3, padding=1), nn.GELU(),
            nn.Conv2d(hidden, hidden, 3, stride=2, padding=1), _gn(hidden, 8), nn.GELU(),
            nn.Conv2d(hidden, hidden, 3, stride=2, padding=1), nn.GELU())
        self.out = nn.Linear(2 * hidden, action_dim)

    def forward(self, e0, e1):
        f = self.net(torch.cat([e0, e1, ], dim=1))
        # mean and max pooling: the difference between frames can be anywhere in the view
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        return self.out(pooled)


class WorldModel(nn.Module):
    def __init__(self, cfg: WorldModelConfig):
        super().__init__()
        self.cfg = cfg
        K, A, E, C = cfg.codebook_size, cfg.action_dim, cfg.embed_dim, cfg.hidden
        self.grid = tuple(cfg.grid)
        self.cond_dim = A + 2  # action, action-present flag, corruption level
        self.embed = nn.Embedding(K, E)
        self.moves = cfg.shift_radius > 0 or cfg.zoom_range > 0
        if self.moves:  # conditioning -> (dx, dy[, log scale]); zero-initialised: it starts as "no motion"
            self.shift = nn.Sequential(nn.Linear(self.cond_dim, cfg.action_hidden), nn.GELU(),
                                       nn.Linear(cfg.action_hidden, 2 + (cfg.zoom_range > 0)))
            with torch.no_grad():
                self.shift[-1].weight.zero_()
                self.shift[-1].bias.zero_()
        stem_in = (2 if self.moves else 1) * E + self.cond_dim
        self.stem = nn.Sequential(
            nn.Conv2d(stem_in, C, 3, padding=1), _gn(C, 8), nn.GELU())
        self.down = nn.Conv2d(C, C, 3, stride=2, padding=1) if cfg.downsample else nn.Identity()
        self.cond_mlp = nn.Sequential(
            nn.Linear(self.cond_dim, cfg.action_hidden), nn.GELU(),
            nn.Linear(cfg.action_hidden, cfg.action_hidden), nn.GELU(),
            nn.Linear(cfg.action_hidden, cfg.layers * 2 * 3 * C))
        dil = list(cfg.dilations) or [1]
        self.cells = nn.ModuleList([
            ConvGRUCell(C, C, cfg.kernel, dil[i % len(dil)], cfg.groups_per_gate, cfg.separable)
            for i in range(cfg.layers)])
        # back to full resolution: pixel shuffle keeps sub-cell detail (which quarter moved where)
        self.up = nn.Sequential(nn.Conv2d(C, 4 * C, 1), nn.PixelShuffle(2)) if cfg.downsample else nn.Identity()
        self.head = nn.Sequential(_gn(C, 8), nn.Conv2d(C, C, 3, padding=1), nn.GELU())
        # a Linear on channels-last features: logits come out with the codebook as the innermost
        # dimension, so softmax / cross-entropy / sampling over K read contiguous memory
        if cfg.head == "codebook":
            # logits = <predicted code vector, tokenizer code vector> + per-code bias: codes that look
            # alike get alike logits, so what is learned for one code carries to its near-duplicates
            if cfg.code_dim <= 0:
                raise ValueError("head 'codebook' needs code_dim (the tokenizer's code vector size)")
            self.register_buffer("codebook", torch.zeros(K, cfg.code_dim))  # filled by set_codebook
            self.to_code = nn.Linear(C, cfg.code_dim)
            self.code_scale = nn.Parameter(torch.tensor(10.0))
            self.code_bias = nn.Parameter(torch.zeros(K))
        elif cfg.head == "linear":
            self.to_logits = nn.Linear(C, K)
        else:
            raise ValueError(f"head must be 'linear' or 'codebook', got {cfg.head!r}")
        if cfg.copy_motion not in ("learned", "shift", "detached", "nearest", "anchored", "anchored_shift"):
            raise ValueError(f"copy_motion must be 'learned', 'shift', 'detached', 'nearest', 'anchored' or "
                             f"'anchored_shift', got {cfg.copy_motion!r}")
        if cfg.copy_prior:
            # copy-or-generate: the head learns the change on top of "keep the moved code". Zero
            # initialised, so an untrained model predicts exactly the (moved) last frame
            if cfg.copy_mixture:  # mixture weights of (static, moved, generated); static starts at 1/2
                self.copy_gain = nn.Parameter(torch.tensor([0.5, 0.2, 0.3]).log())
            else:  # a logit gain over K zero logits: ~even odds for the copied code
                self.copy_gain = nn.Parameter(torch.tensor(math.log(K)))
            self.copy_gate = nn.Linear(C, 3 if cfg.copy_mixture else 1)  # per-cell trust in the copy
            head_out = self.to_code if cfg.head == "codebook" else self.to_logits
            zeroed = [head_out, self.copy_gate]
            if cfg.copy_shifts > 0:
                if not cfg.copy_mixture:
                    raise ValueError("copy_shifts needs copy_mixture")
                if cfg.copy_edges not in ("repeat", "generate"):
                    raise ValueError(f"copy_edges must be 'repeat' or 'generate', not {cfg.copy_edges!r}")
                R = cfg.copy_shifts
                off = torch.arange(-R, R + 1, dtype=torch.float32)
                oy, ox = torch.meshgrid(off, off, indexing="ij")
                off = torch.stack([ox.flatten(), oy.flatten()], -1)
                # near shifts in every direction, far ones along the axes only: a turn moves the picture
                # along one axis at a time, and the mixture's cost grows with the number of shifts
                off = off[(off.abs().sum(-1) <= min(R, 2)) | (off == 0).any(-1)]
                self.register_buffer("shift_offsets", off, persistent=False)
                if cfg.copy_zoom < 0:
                    raise ValueError(f"copy_zoom must be >= 0, not {cfg.copy_zoom}")
                # which whole-cell shift this frame's codes take: from the pooled state, the conditioning
                # and the motion; zero-initialised, so it starts as the prior around the camera motion
                self.shift_choice = nn.Linear(C + self.cond_dim + 3, len(off) + 2 * (cfg.copy_zoom > 0))
                zeroed.append(self.shift_choice)
            for lin in zeroed:
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)
        self.idm = InverseDynamics(E, cfg.idm_hidden, A)

    @torch.no_grad()
    def set_codebook(self, codes):
        """codes [K, code_dim]: the tokenizer's code vectors (head 'codebook'). The token embedding
        starts as a fixed random projection of them, so near-duplicate codes also enter alike."""
        codes = codes.float().to(self.codebook.device)
        self.codebook.copy_(codes)
        g = torch.Generator().manual_seed(0)
        proj = torch.randn(codes.shape[1], self.cfg.embed_dim, generator=g) / codes.shape[1] ** 0.5
        e = codes @ proj.to(codes.device)
        self.embed.weight.copy_(e / e.std().clamp(min=1e-6))

    # ------------------------------------------------------------------ helpers
    @property
    def state_grid(self):
        h, w = self.grid
        return ((h + 1) // 2, (w + 1) // 2) if self.cfg.downsample else (h, w)

    def init_state(self, batch, device):
        h, w = self.state_grid
        return tuple(torch.zeros(batch, self.cfg.hidden, h, w, device=device) for _ in self.cells)

    def cond_vector(self, actions, present=None, corruption=None):
        """actions [..., A], present [...] (0 = action dropped), corruption [...] -> [..., A+2]."""
        lead = actions.shape[:-1]
        present = torch.ones(lead, device=actions.device) if present is None else present.to(actions.dtype)
        corruption = torch.zeros(lead, device=actions.device) if corruption is None else corruption.to(actions.dtype)
        actions = actions * present[..., None]
        return torch.cat([actions, present[..., None], corruption[..., None]], dim=-1)

    def soft_embed(self, logits):
        """Expected embedding under the predicted distribution: logits [N, K, h, w] -> [N, E, h, w]."""
        probs = torch.softmax(logits.permute(0, 2, 3, 1).float(), dim=-1).to(self.embed.weight.dtype)  # (N, h, w, K)
        return (probs @ self.embed.weight).permute(0, 3, 1, 2)

    def embed_tokens(self, tokens):
        """tokens [N, h, w] int64 -> [N, E, h, w]"""
        return self.embed(tokens).permute(0, 3, 1, 2)

    def camera_motion(self, cond, anchored=None):
        """cond [N, A+2] -> (offsets [N, 2] (dx, dy) in token cells within +-shift_radius, log scale
        [N] within +-zoom_range; either is zero when its limit is 0). The view takes its content from (x + dx, y + dy), so
        dx > 0 moves the picture left; a log scale > 0 magnifies (walking towards the centre).
        anchored (default cfg.anchored_motion): minus the same step's no-action motion."""
        free, idle = self._raw_motion(cond, self.cfg.anchored_motion if anchored is None else anchored)
        return self._bound_motion(free if idle is None else free - idle)

    def _raw_motion(self, cond, need_idle):
        """The motion head on cond, and (if need_idle) on cond with the action zeroed: (raw, raw or None)."""
        A = self.cfg.action_dim
        if self.cfg.odd_motion:  # one pass over the action and its negation
            both = self.shift(torch.cat([cond, torch.cat([-cond[:, :A], cond[:, A:]], 1)])).float()
            free = 0.5 * (both[:len(cond)] - both[len(cond):])
            return free, (torch.zeros_like(free) if need_idle else None)
        free = self.shift(cond).float()
        if not need_idle:
            return free, None
        return free, self.shift(torch.cat([torch.zeros_like(cond[:, :A]), cond[:, A:]], 1)).float()

    def _bound_motion(self, raw):
        R, Z = self.cfg.shift_radius, self.cfg.zoom_range
        d = R * torch.tanh(raw[:, :2] / R) if R > 0 else torch.zeros_like(raw[:, :2])
        return d, (Z * torch.tanh(raw[:, 2] / Z) if Z > 0 else torch.zeros_like(raw[:, 0]))

    def inverse_dynamics(self, e0, e1):
        return self.idm(e0, e1)

    # ------------------------------------------------------------------ sequence forward
    def forward_sequence(self, tokens, actions, state=None, present=None, corruption=None, one_shift=False,
                         aux=None, parts=False):
        """Teacher-forced over T input frames.

        tokens [B, T, h, w] (frames t = 0..T-1), actions [B, T, A] (a_t takes frame t to t+1),
        present [B, T] / corruption [B, T] or [B] optional.
        Returns logits [B, T, K, h, w] (logits[:, t] predicts frame t+1) and the final state.
        Only frames <= t and actions <= t reach logits[:, t]: the recurrence is causal in time and
        each step's input is its own frame. one_shift (copy_shifts): the moved copy takes only each
        frame's most likely whole-cell shift (play: a sampled frame moves as one piece). aux: a dict
        that receives "shift_logits" [B, T, S] (copy_shifts) for a loss on the shift choice.
        parts (copy_mixture): return a Mixture with fields [B, T, h, w, ...] instead of the logits.
        """
        B, T, H, W = tokens.shape
        N = B * T
        if state is None:
            state = self.init_state(B, tokens.device)
        if corruption is not None and corruption.dim() == 1:
            corruption = corruption[:, None].expand(B, T)
        cond = self.cond_vector(actions, present, corruption).reshape(N, self.cond_dim)  # (N, A+2)
        e = self.embed_tokens(tokens.reshape(N, H, W))                                     # (N, E, h, w)
        film_cond = cond if self.cfg.action_gain == 1.0 else torch.cat(
            [self.cfg.action_gain * cond[:, :self.cfg.action_dim], cond[:, self.cfg.action_dim:]], 1)
        planes = film_cond[:, :, None, None].expand(N, self.cond_dim, H, W)
        inputs = [e, planes.to(e.dtype)]
        if self.moves:
            anchor_copy = self.cfg.copy_prior and self.cfg.copy_motion.startswith("anchored")
            free, idle = self._raw_motion(cond, self.cfg.anchored_motion or anchor_copy)    # head run once
            d, zoom = self._bound_motion(free if not self.cfg.anchored_motion else free - idle)  # (N, 2) cells, (N,)
            inputs.insert(1, warp(e, d, zoom))                                              # frame t, moved
            d_state = (d * (0.5 if self.cfg.downsample else 1.0)).view(B, T, 2)             # in state cells
            zoom_state = zoom.view(B, T)
        skip = self.stem(torch.cat(inputs, dim=1))                                          # (N, C, h, w)
        x = self.down(skip)                                                                 # (N, C, h', w')
        C = self.cfg.hidden
        film = self.cond_mlp(film_cond).view(N, len(self.cells), 2, 3 * C)                  # (N, L, 2, 3C)
        new_state = []
        for i, cell in enumerate(self.cells):
            gx = cell.input_gates(x, film[:, i, 0], film[:, i, 1])                          # (N, 3C, h', w')
            gx = gx.view(B, T, *gx.shape[1:])
            h = state[i]
            outs = []
            for t in range(T):
                if self.moves:  # the remembered view moves with the camera
                    h = warp(h, d_state[:, t], zoom_state[:, t])
                h = cell.recur(gx[:, t], h)
                outs.append(h)
            new_state.append(h)
            x = x + torch.stack(outs, dim=1).flatten(0, 1)  # residual across layers       # (N, C, h', w')
        y = self.head(self.up(x)[:, :, :H, :W] + skip).permute(0, 2, 3, 1)                  # (N, h, w, C)
        if self.cfg.head == "codebook":
            v = self.to_code(y)                                                             # (N, h, w, d)
            logits = self.code_scale * (v @ self.codebook.t().to(v.dtype)) + self.code_bias  # (N, h, w, K)
        else:
            logits = self.to_logits(y)                                                      # (N, h, w, K)
        if self.cfg.copy_prior:
            if not self.moves:
                d, zoom = cond.new_zeros(N, 2), cond.new_zeros(N)
            if self.moves and self.cfg.copy_motion.startswith("anchored") and not self.cfg.anchored_motion:
                d, zoom = self._bound_motion(free - idle)  # the copy is anchored, the warp kept the free motion
            if self.cfg.copy_motion in ("detached", "nearest", "anchored"):
                d, zoom = d.detach(), zoom.detach()
            elif self.cfg.copy_motion in ("shift", "anchored_shift"):
                zoom = zoom.detach()
            if self.cfg.copy_shifts > 0:
                src, w, shift_logits, inside = self.shifted_sources(y, cond, d, zoom, H, W, one_shift)  # (N, h, w, S) x3
                if aux is not None:
                    aux["shift_logits"] = shift_logits.view(B, T, -1)
            else:
                src, w = copy_sources(d, zoom, H, W)                                        # (N, h, w, 4) x2
            if self.cfg.copy_motion == "nearest":  # the whole gain on one code: a sub-cell motion keeps the cell
                src, w = src.gather(-1, w.argmax(-1, keepdim=True)), torch.ones_like(w[..., :1])
            codes = tokens.reshape(N, H * W).gather(1, src.reshape(N, -1)).view(N, H, W, -1)
            gain = self.copy_gain + self.copy_gate(y)                                       # (N, h, w, 1)
            if self.cfg.copy_mixture:
                # log of the mixture, in fp32. On tokens that hold a cell's code until the view has
                # moved far enough (sticky encoding), most cells keep their place even while the camera
                # turns, so "static" and "moved" are separate choices. The head is never pushed away
                # from the copied code on the cells that change (as a logit sum is), and under argmax a
                # cell keeps its code while the static weight is above 1/2
                log_pi = torch.log_softmax(gain.float(), -1)
                if self.cfg.copy_shifts > 0 and self.cfg.copy_edges == "generate":
                    # content coming into view is not the edge code repeated: the moved mass of a
                    # source outside the frame goes to the head
                    outside = (w * (~inside)).sum(-1, keepdim=True)                            # (N, h, w, 1)
                    w = w * inside
                    gen = torch.logaddexp(log_pi[..., 2:], log_pi[..., 1:2] + outside.clamp_min(1e-30).log())
                    log_pi = torch.cat([log_pi[..., :2], gen], -1)
                mix = Mixture(logits, log_pi, torch.cat([tokens.reshape(N, H, W, 1), codes], -1), w.expand(N, H, W, -1))
                if parts:
                    return mix.map(lambda x: x.reshape(B, T, *x.shape[1:])), tuple(new_state)
                logits = mix.log_probs()
            else:
                logits = logits.scatter_add(-1, codes, (gain * w).to(logits.dtype))
        # shape (B, T, K, h, w) as the contract says; memory stays (B, T, h, w, K)
        return logits.reshape(B, T, H, W, -1).permute(0, 1, 4, 2, 3), tuple(new_state)

    def shifted_sources(self, y, cond, d, zoom, H, W, one_shift=False):
        """copy_shifts: the moved code as a mixture over whole-cell shifts, one distribution per frame.
        y [N, h, w, C] features, cond [N, A+2], motion d [N, 2] cells, zoom [N] -> (flat source cells
        [N, h, w, S] of the S shifts, edges repeated; their weights [N, h, w, S]; the shift logits
        [N, S]; whether each source lies inside the frame [N or 1, h, w, S] bool). No zoom: these tokens hold their codes while the view magnifies (a zoomed copy was
        measured to lose kept cells). The prior puts a shift's log-weight at -2 * (its distance to d
        in cells)^2, so a motion of half a cell splits evenly between its two neighbours; the learned
        part (from the pooled state, which has seen the earlier frames) can tell which of them this
        step's codes take. one_shift: only the most likely shift, as the single source (S = 1)."""
        N = d.shape[0]
        off = self.shift_offsets                                                          # (S, 2) (dx, dy)
        prior = -2.0 * ((off[None] - d[:, None].float()) ** 2).sum(-1)                      # (N, S)
        src = shift_sources(off, H, W)                                                    # (S, h*w)
        inside = shift_inside(off, H, W)                                                  # (S, h*w)
        if self.cfg.copy_zoom > 0:  # zoom in / out: prior as for a one-cell shift from no motion
            zsrc, zin = zoom_sources(self.cfg.copy_zoom, H, W)
            prior = torch.cat([prior, (-2.0 - 2.0 * (d.float() ** 2).sum(-1, keepdim=True)).expand(N, 2)], -1)
            src, inside = torch.cat([src, zsrc.to(src.device)]), torch.cat([inside, zin.to(inside.device)])
        feat = torch.cat([y.float().mean((1, 2)), self.cfg.shift_gain * cond.float(), d.float(), zoom.float()[:, None]], -1)
        logits = prior + self.shift_choice(feat.to(self.shift_choice.weight.dtype)).float()
        if one_shift:  # play: the other shifts would carry no mass, so they are not candidates at all
            k = logits.argmax(-1)
            return (src[k].view(N, H, W, 1), torch.ones(N, H, W, 1, device=d.device), logits,
                    inside[k].view(N, H, W, 1))
        w = torch.softmax(logits, -1)
        S = src.shape[0]
        return (src.t().reshape(1, H, W, S).expand(N, H, W, S), w[:, None, None, :].expand(N, H, W, S), logits,
                inside.t().reshape(1, H, W, S))

    def forward(self, tokens, actions, state=None, present=None, corruption=None):
        """Contract form: tokens [B, T, h, w], actions [B, T-1, A] -> logits [B, T-1, K, h, w];
        logits[:, t] predicts tokens[:, t+1]. The last frame is never an input."""
        assert actions.shape[1] == tokens.shape[1] - 1, "need T-1 actions for T frames"
        return self.forward_sequence(tokens[:, :-1], actions, state, present, corruption)[0]

    def step(self, tokens, action, state, present=None, corruption=None, guidance=1.0, sampled=False,
             one_shift=False, parts=False, key_guidance=None):
        """Play: tokens [B, h, w] int64 (frame t), action [B, A] float (None = unconditioned),
        state from init_state/step -> (logits [B, K, h, w] for frame t+1, new state).
        guidance g != 1 also runs the step without the action, from the same state, and returns
        unconditioned + g * (conditioned - unconditioned) logits (action dropout in training is what
        makes the unconditioned half meaningful); the state carried on is the conditioned one.
        key_guidance kg (None = g) guides the keyboard part of the action (everything but yaw and
        pitch) apart, with a third step given the camera part only: unconditioned + g * (camera -
        unconditioned) + kg * (conditioned - camera).
        sampled=True says the tokens are the model's own sample, not a real frame: the model is then
        told corruption level cfg.sampled_level (what training rollouts tell it). one_shift (copy_shifts;
        play and evaluation): the moved copy takes each frame's most likely whole-cell shift, so a sampled
        frame moves as one piece (training keeps the mixture over shifts). parts (copy_mixture, no
        guidance): a Mixture with fields [B, h, w, ...] instead of the logits (training's loss)."""
        if sampled and corruption is None and self.cfg.sampled_level > 0:
            corruption = self.cfg.sampled_level
        keys = key_guidance is not None and key_guidance != guidance
        if (guidance != 1.0 or keys) and action is not None:
            assert not parts, "guidance mixes logits: it has no parts"
            B = tokens.shape[0]
            present = torch.ones(B, device=tokens.device) if present is None else present.reshape(B).float()
            variants = [action, torch.zeros_like(action)]
            if keys:  # the camera part only, between the full action and none
                variants.insert(1, action * action.new_tensor(action_mask(has_keyboard=False)))
            n = len(variants)
            out, state2 = self.step(torch.cat([tokens] * n), torch.cat(variants), tuple(torch.cat([h] * n) for h in state),
                                    torch.cat([present] * (n - 1) + [torch.zeros_like(present)]), corruption,
                                    one_shift=one_shift)
            cond, uncond = out[:B], out[-B:]
            if keys:
                camera = out[B:2 * B]
                return uncond + guidance * (camera - uncond) + key_guidance * (cond - camera), tuple(h[:B] for h in state2)
            return uncond + guidance * (cond - uncond), tuple(h[:B] for h in state2)
        B = tokens.shape[0]
        if action is None:
            action = torch.zeros(B, self.cfg.action_dim, device=tokens.device)
            present = torch.zeros(B, device=tokens.device)
        if present is not None:
            present = present.reshape(B, 1)
        if corruption is not None:
            corruption = torch.as_tensor(corruption, device=tokens.device, dtype=torch.float32).reshape(-1)
            corruption = corruption.expand(B).reshape(B, 1)
        logits, state = self.forward_sequence(tokens[:, None], action[:, None].float(), state, present, corruption,
                                              one_shift, parts=parts)
        return (logits.map(lambda x: x[:, 0]) if isinstance(logits, Mixture) else logits[:, 0]), state

    def num_params(self):
        return sum(p.numel() for p in self.parameters())
