"""World model: shapes, causality (no leak of frame t+1), step == sequence forward, a tiny overfit."""
import pytest
import torch
import torch.nn.functional as F

from model_convGru import WorldModel, WorldModelConfig

K, GRID, A = 24, (6, 10), 7


def tiny(**kw):
    args = dict(codebook_size=K, grid=GRID, action_dim=A, embed_dim=16, hidden=16, layers=2,
                action_hidden=32, idm_hidden=16)
    args.update(kw)
    torch.manual_seed(0)
    return WorldModel(WorldModelConfig(**args))


def batch(B=2, T=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, K, (B, T, *GRID), generator=g), torch.randn(B, T - 1, A, generator=g)


@pytest.mark.parametrize("downsample,separable", [(True, False), (False, True)])
def test_shapes(downsample, separable):
    m = tiny(downsample=downsample, separable=separable)
    tokens, actions = batch()
    logits = m(tokens, actions)
    assert logits.shape == (2, 4, K, *GRID)
    state = m.init_state(2, "cpu")
    step_logits, state2 = m.step(tokens[:, 0], actions[:, 0], state)
    assert step_logits.shape == (2, K, *GRID) and len(state2) == len(state)
    assert all(a.shape == b.shape for a, b in zip(state, state2))
    a_hat = m.inverse_dynamics(m.embed_tokens(tokens[:, 0]), m.embed_tokens(tokens[:, 1]))
    assert a_hat.shape == (2, A)


def test_step_matches_sequence_forward():
    m = tiny().eval()
    tokens, actions = batch(T=6)
    with torch.no_grad():
        full = m(tokens, actions)
        state, outs = m.init_state(2, "cpu"), []
        for t in range(5):
            logits, state = m.step(tokens[:, t], actions[:, t], state)
            outs.append(logits)
    torch.testing.assert_close(torch.stack(outs, 1), full, rtol=1e-4, atol=1e-4)


def test_no_leak_of_future_frames():
    """logits[:, t] predicts frame t+1: changing frame t+1 (or anything later) must not change it."""
    m = tiny().eval()
    tokens, actions = batch(T=6)
    with torch.no_grad():
        base = m(tokens, actions)
        for t in range(5):
            changed = tokens.clone()
            changed[:, t + 1:] = (changed[:, t + 1:] + 7) % K
            out = m(changed, actions)
            torch.testing.assert_close(out[:, :t + 1], base[:, :t + 1], rtol=0, atol=0)
            if t + 1 < 5:  # and the frame does matter once it is an input
                assert not torch.allclose(out[:, t + 1], base[:, t + 1])


def test_action_and_flags_reach_prediction():
    m = tiny().eval()
    tokens, actions = batch()
    with torch.no_grad():
        a = m(tokens, actions)
        b = m(tokens, -actions)
        c = m(tokens, actions, present=torch.zeros(2, 4))
        d = m(tokens, actions, corruption=torch.full((2,), 0.5))
    assert not torch.allclose(a, b) and not torch.allclose(a, c) and not torch.allclose(a, d)
    # a dropped action is the same as a zero action with the flag off, whatever the action was
    with torch.no_grad():
        torch.testing.assert_close(c, m(tokens, -actions, present=torch.zeros(2, 4)))


def test_overfit_tiny_batch():
    m = tiny()
    tokens, actions = batch(B=4, T=4)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        logits = m(tokens, actions)
        loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(0, 1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses[::5]


def test_translate_is_a_translation():
    from model_convGru import translate
    x = torch.randn(2, 3, 6, 10)
    torch.testing.assert_close(translate(x, torch.zeros(2, 2)), x)
    # a whole-cell offset takes content from (x + dx, y + dy); the edges repeat
    out = translate(x, torch.tensor([[2.0, 0.0], [-1.0, 1.0]]))
    torch.testing.assert_close(out[0, :, :, :8], x[0, :, :, 2:])
    torch.testing.assert_close(out[0, :, :, 8], x[0, :, :, 9])
    torch.testing.assert_close(out[1, :, :5, 1:], x[1, :, 1:, :9])
    # half a cell is the average of the two neighbours
    half = translate(x, torch.tensor([[0.5, 0.0], [0.5, 0.0]]))
    torch.testing.assert_close(half[..., :9], (x[..., :9] + x[..., 1:]) / 2)


def test_camera_shift_is_learned_from_data():
    """Frames are windows onto a wider random token world; action[0] (yaw) moves the window by
    one cell. Starting from no shift, the offset module must learn the direction from the data."""
    g = torch.Generator().manual_seed(3)
    m = tiny()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    H, W = GRID
    for _ in range(60):
        world = torch.randint(0, K, (8, H, W + 8), generator=g)
        yaw = torch.randint(-1, 2, (8, 3), generator=g)
        pos = 4 + torch.cat([torch.zeros(8, 1, dtype=torch.long), yaw.cumsum(1)], 1)  # window start per frame
        tokens = torch.stack([torch.stack([world[b, :, p:p + W] for p in pos[b].tolist()]) for b in range(8)])
        actions = torch.zeros(8, 3, A)
        actions[..., 0] = yaw.float()
        logits = m(tokens, actions)
        loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(0, 1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        a = torch.zeros(3, A)
        a[:, 0] = torch.tensor([-1.0, 0.0, 1.0])
        dx = m.shift_offsets(m.cond_vector(a))[:, 0]
    assert dx[0] < -0.5 and dx[2] > 0.5 and abs(dx[1]) < 0.3, dx
