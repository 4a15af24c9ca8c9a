"""What train.py checks while it trains, on held-out windows: teacher-forced vs rollout loss,
code diversity, action response, inverse-dynamics sign accuracy, and ground truth | prediction
strips. Full scoring against the sandbox's ground truth is evaluate.py's job."""
import os

import numpy as np
import torch

from eval_metrics import code_stats, cross_entropy_and_accuracy
from sampling import Sampler


@torch.no_grad()
def validate(model, val_ds, cfg, device, ctx, yaw_index, move_index):
    """Validation: teacher-forced vs rollout loss, code diversity, action response.
    Uses its own RNGs so that evaluating never changes the training run."""
    model.eval()
    rng = np.random.default_rng([cfg.seed, 10_000])
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 10_000)
    sampler = Sampler(cfg.temperature, cfg.top_k, cfg.top_p, cfg.keep_above)
    idx = rng.integers(0, len(val_ds), cfg.eval_batch)
    items = [val_ds[int(i)] for i in idx]
    tokens = torch.stack([t for t, _ in items]).to(device)        # (B, C+R+1, h, w)
    actions = torch.stack([a for _, a in items]).to(device)       # (B, C+R, A)
    C, R = cfg.eval_context, cfg.eval_rollout
    with ctx:
        logits_tf = model(tokens, actions).float()                # (B, C+R, K, h, w)
        _, state = model.forward_sequence(tokens[:, :C], actions[:, :C])
        frame, preds, logits_ro = tokens[:, C], [], []
        first_state = state
        for r in range(R):                                         # predicts frames C+1 .. C+R
            logits, state = model.step(frame, actions[:, C + r], state, sampled=r > 0, one_shift=True)
            logits_ro.append(logits.float())
            frame = sampler(logits, generator=gen)
            preds.append(frame)
        # action response: the same context, opposite actions
        responses = {}
        for name, i in (("yaw", yaw_index), ("move", move_index)):
            if i is None:
                continue
            plus, minus = actions[:, C].clone(), actions[:, C].clone()
            plus[:, i], minus[:, i] = 1.0, -1.0
            lp, lm = (torch.softmax(model.step(tokens[:, C], a, first_state, one_shift=True)[0]
                                    .permute(0, 2, 3, 1).float(), -1) for a in (plus, minus))
            responses[f"val/action_response_{name}"] = 0.5 * (lp - lm).abs().sum(-1).mean().item()
        e = model.embed_tokens(tokens[:, C:].flatten(0, 1)).view(len(tokens), R + 1, -1, *tokens.shape[2:])
        a_hat = model.inverse_dynamics(e[:, :-1].flatten(0, 1), e[:, 1:].flatten(0, 1)).float()
    target = tokens[:, C + 1:]
    logits_ro = torch.stack(logits_ro, 1)
    ce_tf, _, cells = cross_entropy_and_accuracy(logits_tf[:, C:].flatten(0, 1), target.flatten(0, 1))
    ce_ro, _, _ = cross_entropy_and_accuracy(logits_ro.flatten(0, 1), target.flatten(0, 1))
    ce_tf, ce_ro = ce_tf / cells, ce_ro / cells
    preds = torch.stack(preds, 1)                                  # (B, R, h, w)
    (u_pred, e_pred), (u_true, e_true) = code_stats(preds), code_stats(target)
    up, ut = float(u_pred.mean()), float(u_true.mean())
    a_true = actions[:, C:].flatten(0, 1)
    moving = a_true[:, yaw_index].abs() > 0.1 if yaw_index is not None else torch.zeros(0, dtype=torch.bool)
    metrics = {"val/ce_tf": ce_tf, "val/ce_rollout": ce_ro, "val/rollout_gap": ce_ro - ce_tf,
               "val/unique_pred": up, "val/unique_true": ut, "val/unique_ratio": up / max(ut, 1e-6),
               "val/entropy_pred_bits": float(e_pred.mean()), "val/entropy_true_bits": float(e_true.mean()), **responses}
    if moving.any():
        agree = torch.sign(a_hat[moving, yaw_index]) == torch.sign(a_true[moving, yaw_index])
        metrics["val/idm_yaw_sign_acc"] = agree.float().mean().item()
    model.train()
    return metrics, (tokens, actions, preds, first_state)


@torch.no_grad()
def save_strip(model, tokenizer, batch, cfg, yaw_index, path, columns=8):
    """PNG rows: ground truth | sampled rollout | rollout with yaw -1 (left) | yaw +1 (right)."""
    import cv2
    tokens, actions, preds, state = batch
    C, R = cfg.eval_context, cfg.eval_rollout
    gen = torch.Generator(device=tokens.device).manual_seed(cfg.seed + 20_000)
    sampler = Sampler(cfg.temperature, cfg.top_k, cfg.top_p, cfg.keep_above)
    rows = [tokens[0, C + 1:], preds[0]]
    if yaw_index is not None:
        for sign in (-1.0, 1.0):
            s, frame, out = tuple(h[:1] for h in state), tokens[:1, C], []
            a = torch.zeros_like(actions[:1, C])
            a[:, yaw_index] = sign
            for r in range(R):
                logits, s = model.step(frame, a, s, sampled=r > 0, one_shift=True)
                frame = sampler(logits, generator=gen)
                out.append(frame[0])
            rows.append(torch.stack(out))
    cols = np.linspace(0, R - 1, min(columns, R)).round().astype(int)
    images = [tokenizer.decode(row[cols]).cpu().numpy() for row in rows]  # each (n, H, W, 3) uint8
    grid = np.concatenate([np.concatenate(list(img), axis=1) for img in images], axis=0)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(path, cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    return path
