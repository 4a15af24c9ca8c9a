"""World model: shapes, causality (no leak of frame t+1), step == sequence forward, a tiny overfit."""
import math

import pytest
import torch
import torch.nn.functional as F

from actions import CAMERA_INDICES
from model_convGru import WorldModel, WorldModelConfig, zoom_sources

K, GRID, A = 24, (6, 10), 7


def tiny(**kw):
    args = dict(codebook_size=K, grid=GRID, action_dim=A, embed_dim=16, hidden=16, layers=2,
                action_hidden=32, idm_hidden=16)
    args.update(kw)
    torch.manual_seed(0)
    return WorldModel(WorldModelConfig(**args))


MOTIONS = [dict(), dict(zoom_range=0.2), dict(shift_radius=0, zoom_range=0.2), dict(shift_radius=0)]


def moving(**kw):
    """tiny() whose camera-motion head is already non-zero (it starts at zero when trained)."""
    m = tiny(**kw)
    if m.moves:
        with torch.no_grad():
            m.shift[-1].weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(5))
    return m


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


@pytest.mark.parametrize("motion", MOTIONS)
def test_step_matches_sequence_forward(motion):
    m = moving(**motion).eval()
    tokens, actions = batch(T=6)
    with torch.no_grad():
        full = m(tokens, actions)
        state, outs = m.init_state(2, "cpu"), []
        for t in range(5):
            logits, state = m.step(tokens[:, t], actions[:, t], state)
            outs.append(logits)
    torch.testing.assert_close(torch.stack(outs, 1), full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("motion", MOTIONS)
def test_no_leak_of_future_frames(motion):
    """logits[:, t] predicts frame t+1: changing frame t+1 (or anything later) must not change it."""
    m = moving(**motion).eval()
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


def test_warp_is_a_shift_and_a_zoom():
    from model_convGru import warp
    x = torch.randn(2, 3, 6, 10)
    torch.testing.assert_close(warp(x, torch.zeros(2, 2)), x)
    # a whole-cell offset takes content from (x + dx, y + dy); the edges repeat
    out = warp(x, torch.tensor([[2.0, 0.0], [-1.0, 1.0]]))
    torch.testing.assert_close(out[0, :, :, :8], x[0, :, :, 2:])
    torch.testing.assert_close(out[0, :, :, 8], x[0, :, :, 9])
    torch.testing.assert_close(out[1, :, :5, 1:], x[1, :, 1:, :9])
    # half a cell is the average of the two neighbours
    half = warp(x, torch.tensor([[0.5, 0.0], [0.5, 0.0]]))
    torch.testing.assert_close(half[..., :9], (x[..., :9] + x[..., 1:]) / 2)
    # zoom x2 about the centre of a 5 x 9 grid: cell (2 + k, 4 + j) shows (2 + k/2, 4 + j/2)
    y = torch.randn(1, 2, 5, 9)
    zoomed = warp(y, torch.zeros(1, 2), torch.tensor([math.log(2.0)]))
    torch.testing.assert_close(zoomed[..., 2, 4], y[..., 2, 4])
    torch.testing.assert_close(zoomed[..., 4, 8], y[..., 3, 6])
    torch.testing.assert_close(zoomed[..., 2, 5], (y[..., 2, 4] + y[..., 2, 5]) / 2)
    torch.testing.assert_close(warp(y, torch.zeros(1, 2), torch.zeros(1)), y)


def learn_camera_motion(m, make_frames, action_index, steps, seed):
    """Train m on sequences where action[action_index] in {-1, 0, 1} drives the view; make_frames
    (g, moves [8, 3]) -> tokens [8, 4, h, w]. Returns camera_motion for that action = -1, 0, +1."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    for _ in range(steps):
        moves = torch.randint(-1, 2, (8, 3), generator=g)
        tokens = make_frames(g, moves)
        actions = torch.zeros(8, 3, A)
        actions[..., action_index] = moves.float()
        loss = F.cross_entropy(m(tokens, actions).flatten(0, 1), tokens[:, 1:].flatten(0, 1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        a = torch.zeros(3, A)
        a[:, action_index] = torch.tensor([-1.0, 0.0, 1.0])
        return m.camera_motion(m.cond_vector(a))


def test_camera_shift_is_learned_from_data():
    """Frames are windows onto a wider random token world; action[0] (yaw) moves the window by
    one cell. Starting from no shift, the offset module must learn the direction from the data."""
    H, W = GRID

    def frames(g, yaw):
        world = torch.randint(0, K, (8, H, W + 8), generator=g)
        pos = 4 + torch.cat([torch.zeros(8, 1, dtype=torch.long), yaw.cumsum(1)], 1)  # window start per frame
        return torch.stack([torch.stack([world[b, :, p:p + W] for p in pos[b].tolist()]) for b in range(8)])

    dx = learn_camera_motion(tiny(), frames, 0, 60, seed=3)[0][:, 0]
    assert dx[0] < -0.5 and dx[2] > 0.5 and abs(dx[1]) < 0.3, dx


def test_camera_zoom_is_learned_from_data():
    """Frames are a random block world seen through a lens: action[3] (move_z) = +1 magnifies the
    view by 1.25 about its centre, -1 shrinks it. Starting from no zoom, the log scale must learn
    the sign from the data."""
    H, W = GRID
    ys, xs = torch.meshgrid(torch.arange(H) - (H - 1) / 2, torch.arange(W) - (W - 1) / 2, indexing="ij")

    def frames(g, move):
        world = torch.randint(0, K, (8, 8, 12), generator=g)  # coarse blocks, 2x the view's extent
        log_s = torch.cat([torch.zeros(8, 1), move.cumsum(1) * math.log(1.25)], 1)    # (8, 4)
        s = log_s.exp()[..., None, None]                                              # (8, 4, 1, 1)
        iy = ((ys / s + H) * 8 / (2 * H)).floor().long().clamp(0, 7)                 # world cell per view cell
        ix = ((xs / s + W) * 12 / (2 * W)).floor().long().clamp(0, 11)
        return torch.stack([world[b][iy[b], ix[b]] for b in range(8)])               # (8, 4, H, W)

    zoom = learn_camera_motion(tiny(shift_radius=0, zoom_range=0.5), frames, 3, 80, seed=4)[1]
    assert zoom[0] < -0.12 and zoom[2] > 0.12 and abs(zoom[1]) < 0.1, zoom  # truth: -+log 1.25 = 0.22


@pytest.mark.parametrize("head", ["linear", "codebook"])
@pytest.mark.parametrize("motion", [dict(), dict(zoom_range=0.2), dict(shift_radius=0),
                                    dict(zoom_range=0.2, copy_motion="anchored")])
@pytest.mark.parametrize("mixture", [False, True])
def test_untrained_copy_prior_predicts_exactly_the_last_frame(head, motion, mixture):
    """Zero-initialised: the argmax of an untrained copy-prior model is its input frame, so its
    teacher-forced accuracy is exactly the copy-last-frame baseline's."""
    m = tiny(copy_prior=True, copy_mixture=mixture, head=head, code_dim=4 if head == "codebook" else 0, **motion).eval()
    if head == "codebook":
        m.set_codebook(F.normalize(torch.randn(K, 4, generator=torch.Generator().manual_seed(3)), dim=-1))
    tokens, actions = batch(T=6)
    with torch.no_grad():
        logits = m(tokens, actions)
    pred = logits.argmax(2)
    assert torch.equal(pred, tokens[:, :-1])
    accuracy = (pred == tokens[:, 1:]).float().mean()
    assert accuracy == (tokens[:, :-1] == tokens[:, 1:]).float().mean()


def test_copy_prior_follows_the_camera_motion():
    """With the motion head set to shift one whole cell, the copied code of each cell is its
    neighbour's (edges repeated), exactly as warp() moves the embedded frame."""
    m = tiny(copy_prior=True, shift_radius=3).eval()
    with torch.no_grad():
        m.shift[-1].bias.copy_(torch.tensor([3 * math.atanh(1 / 3), 0.0]))  # dx = +1 cell: content from the right
    tokens, actions = batch(T=2)
    with torch.no_grad():
        pred = m(tokens, actions).argmax(2)[:, 0]
    src = tokens[:, 0]
    assert torch.equal(pred[:, :, :-1], src[:, :, 1:]) and torch.equal(pred[:, :, -1], src[:, :, -1])


def test_anchored_motion_is_zero_without_an_action():
    """anchored_motion: whatever the motion head has learned (here random, biases included), a step
    with no action moves nothing, so the copy prior keeps every cell; an action still moves the view."""
    m = moving(copy_prior=True, zoom_range=0.2, anchored_motion=True).eval()
    free = moving(copy_prior=True, zoom_range=0.2).eval()
    with torch.no_grad():
        for net in (m, free):
            net.shift[-1].bias.normal_(0, 1.0, generator=torch.Generator().manual_seed(6))
        idle = torch.zeros(4, A)
        for present in (torch.ones(4), torch.zeros(4)):
            d, zoom = m.camera_motion(m.cond_vector(idle, present, torch.rand(4)))
            assert torch.equal(d, torch.zeros_like(d)) and torch.equal(zoom, torch.zeros_like(zoom))
        d_free, _ = free.camera_motion(free.cond_vector(idle, torch.ones(4), torch.zeros(4)))
        assert d_free.abs().sum() > 0  # the same head without the anchor drifts
        d, zoom = m.camera_motion(m.cond_vector(torch.randn(4, A), torch.ones(4), torch.zeros(4)))
        assert d.abs().sum() > 0 and zoom.abs().sum() > 0
        tokens, _ = batch(T=2)
        pred = m(tokens, torch.zeros(2, 1, A)).argmax(2)[:, 0]
    assert torch.equal(pred, tokens[:, 0])


def test_odd_motion_reverses_with_the_action():
    """odd_motion: with a random motion head (biases included), the negated action moves the view
    exactly the other way (S zooms out as far as W zooms in), and no action moves nothing."""
    m = moving(copy_prior=True, zoom_range=0.2, odd_motion=True).eval()
    with torch.no_grad():
        m.shift[-1].bias.normal_(0, 1.0, generator=torch.Generator().manual_seed(6))
        a = torch.randn(4, A, generator=torch.Generator().manual_seed(7))
        d, zoom = m.camera_motion(m.cond_vector(a, torch.ones(4), torch.zeros(4)))
        d_neg, zoom_neg = m.camera_motion(m.cond_vector(-a, torch.ones(4), torch.zeros(4)))
        assert d.abs().min() > 1e-4 and zoom.abs().min() > 1e-4
        assert torch.allclose(d_neg, -d, atol=1e-6) and torch.allclose(zoom_neg, -zoom, atol=1e-6)
        d0, zoom0 = m.camera_motion(m.cond_vector(torch.zeros(4, A), torch.ones(4), torch.rand(4)))
        assert torch.equal(d0, torch.zeros_like(d0)) and torch.equal(zoom0, torch.zeros_like(zoom0))
        plain = moving(copy_prior=True, zoom_range=0.2).eval()
        plain.shift[-1].bias.normal_(0, 1.0, generator=torch.Generator().manual_seed(6))
        d, _ = plain.camera_motion(plain.cond_vector(a, torch.ones(4), torch.zeros(4)))
        d_neg, _ = plain.camera_motion(plain.cond_vector(-a, torch.ones(4), torch.zeros(4)))
        assert not torch.allclose(d_neg, -d, atol=1e-3)  # without the switch the head is not odd
        tokens, _ = batch(T=2)
        pred = m(tokens, torch.zeros(2, 1, A)).argmax(2)[:, 0]
    assert torch.equal(pred, tokens[:, 0])  # idle: the copy prior keeps every cell


def test_action_gain_scales_the_action_into_the_stem_and_film_only():
    """action_gain g: the same model as gain 1 with the stem's action channels and the FiLM MLP's
    action inputs weighted g times; the camera motion head is unchanged."""
    tokens, actions = batch(T=3)
    m = moving(copy_prior=True, action_gain=10.0).eval()
    plain = moving(copy_prior=True).eval()
    E = plain.cfg.embed_dim
    with torch.no_grad():
        assert torch.allclose(m.camera_motion(m.cond_vector(actions[:, 0]))[0],
                              plain.camera_motion(plain.cond_vector(actions[:, 0]))[0])
        # a non-zero head, so the action reaches the logits
        for mod in (m, plain):
            mod.to_logits.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(3))
        before = plain(tokens, actions)
        plain.stem[0].weight[:, 2 * E:2 * E + A] *= 10.0
        plain.cond_mlp[0].weight[:, :A] *= 10.0
        after = plain(tokens, actions)
        gained = m(tokens, actions)
    assert not torch.allclose(before, gained, atol=1e-3)
    assert torch.allclose(after, gained, atol=1e-4)


def test_copy_sources_match_warp():
    from model_convGru import copy_sources, warp
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, *GRID, generator=g)
    d, zoom = torch.randn(3, 2, generator=g) * 2, torch.randn(3, generator=g) * 0.1
    src, w = copy_sources(d, zoom, *GRID)
    picked = x.flatten(2).gather(2, src.reshape(3, 1, -1).expand(3, 5, -1)).view(3, 5, *GRID, 4)
    assert torch.allclose((picked * w[:, None]).sum(-1), warp(x, d, zoom), atol=1e-5)


def test_nearest_copy_keeps_the_cell_under_a_sub_cell_motion():
    """'nearest' puts the whole copy gain on the source cell nearest to where the motion points: a
    0.4-cell shift still copies each cell's own code, a 0.6-cell shift its neighbour's; the
    bilinear copy ('detached') splits the gain over both."""
    tokens, actions = batch(T=2)
    src = tokens[:, 0]
    for dx, offset in ((0.4, 0), (0.6, 1)):
        m = tiny(copy_prior=True, shift_radius=3, copy_motion="nearest").eval()
        with torch.no_grad():
            m.shift[-1].bias.copy_(torch.tensor([3 * math.atanh(dx / 3), 0.0]))
            logits = m(tokens, actions)[:, 0]
        pred = logits.argmax(1)
        want = torch.cat([src[:, :, offset:], src[:, :, -1:].expand(-1, -1, offset)], 2)
        assert torch.equal(pred, want)
        top = logits.max(1).values
        assert torch.allclose(top, m.copy_gain.expand_as(top))  # nothing split off
    split = tiny(copy_prior=True, shift_radius=3, copy_motion="detached").eval()
    with torch.no_grad():
        split.shift[-1].bias.copy_(torch.tensor([3 * math.atanh(0.4 / 3), 0.0]))
        top = split(tokens, actions)[:, 0].max(1).values
    assert (top < split.copy_gain - 1).any()


@pytest.mark.parametrize("copy_motion", ["anchored", "anchored_shift"])
@pytest.mark.parametrize("mixture", [False, True])
def test_anchored_copy_keeps_idle_cells_but_the_warp_keeps_its_motion(copy_motion, mixture):
    m = moving(copy_prior=True, zoom_range=0.2, copy_motion=copy_motion, copy_mixture=mixture).eval()
    with torch.no_grad():
        m.shift[-1].bias.normal_(0, 1.0, generator=torch.Generator().manual_seed(6))
        d, _ = m.camera_motion(m.cond_vector(torch.zeros(2, A), torch.ones(2), torch.zeros(2)))
        assert d.abs().sum() > 0  # the state warp still drifts as learned
        tokens, _ = batch(T=2)
        pred = m(tokens, torch.zeros(2, 1, A)).argmax(2)[:, 0]
    assert torch.equal(pred, tokens[:, 0])  # the copy does not


@pytest.mark.parametrize("mixture", [False, True])
@pytest.mark.parametrize("copy_motion", ["learned", "shift", "detached", "nearest", "anchored", "anchored_shift"])
def test_copy_prior_gradient_reaches_the_camera_motion_unless_detached(copy_motion, mixture):
    # untrained, the head and the gate are zero, so the logits depend on the motion only through the copy term
    m = tiny(copy_prior=True, copy_mixture=mixture, shift_radius=3, zoom_range=0.1, copy_motion=copy_motion)
    tokens, actions = batch(T=4)
    loss = F.cross_entropy(m(tokens, actions).permute(0, 1, 3, 4, 2).reshape(-1, K), tokens[:, 1:].reshape(-1))
    loss.backward()
    grad = m.shift[-1].weight.grad  # rows: dx, dy, log zoom
    grad = torch.zeros_like(m.shift[-1].weight) if grad is None else grad
    assert bool(grad[:2].abs().sum() > 0) == (copy_motion in ("learned", "shift", "anchored_shift"))
    assert bool(grad[2].abs().sum() > 0) == (copy_motion == "learned")
    with pytest.raises(ValueError, match="copy_motion"):
        tiny(copy_prior=True, copy_motion="frozen")


def test_mixture_log_probs_match_the_mixture_written_out():
    """The five-candidate shortcut equals log(sum of the three parts) built over all K codes, in value
    and gradient, also when candidates repeat a code (common: neighbouring cells share codes)."""
    from model_convGru import mixture_log_probs
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, K, generator=g).requires_grad_()
    gate = torch.randn(3, 4, 3, generator=g).requires_grad_()
    w = torch.softmax(torch.randn(3, 4, 4, generator=g), -1).requires_grad_()
    cand = torch.randint(0, 4, (3, 4, 5), generator=g)  # few codes: many repeats
    pi = torch.softmax(gate, -1)
    p = torch.softmax(logits, -1) * pi[..., 2:]
    p = p.scatter_add(-1, cand[..., 1:], pi[..., 1:2] * w).scatter_add(-1, cand[..., :1], pi[..., :1])
    fast = mixture_log_probs(logits, torch.log_softmax(gate, -1), cand, w)
    assert torch.allclose(fast, p.log(), atol=1e-5)
    probe = torch.randn(3, 4, K, generator=g)
    for a, b in zip(torch.autograd.grad((fast * probe).sum(), (logits, gate, w)),
                    torch.autograd.grad((p.log() * probe).sum(), (logits, gate, w))):
        assert torch.allclose(a, b, atol=1e-5)


def test_copy_mixture_is_a_distribution_whose_gate_decides_what_is_kept():
    """copy_mixture: the outputs are log-probabilities (each cell's sum to 1). A cell keeps its code
    under argmax while the static weight is above 1/2, however confident the head is about another
    code and wherever the motion points; with all weight on the moved copy it follows the motion;
    with all weight on the head, the head's choice wins where it is confident."""
    m = moving(copy_prior=True, copy_mixture=True).eval()
    tokens, actions = batch(T=3)
    with torch.no_grad():
        m.to_logits.weight.normal_(0, 3.0, generator=torch.Generator().manual_seed(2))  # a confident head
        m.to_logits.bias.normal_(0, 3.0, generator=torch.Generator().manual_seed(3))
        logp = m(tokens, actions)
        assert torch.allclose(torch.logsumexp(logp, 2), torch.zeros(1), atol=1e-5)
        m.copy_gain.copy_(torch.tensor([0.1, -20.0, 0.0]))  # static weight just above 1/2
        assert torch.equal(m(tokens, actions).argmax(2), tokens[:, :-1])
        m.shift[-1].weight.zero_()
        m.shift[-1].bias.copy_(torch.tensor([3 * math.atanh(1 / 3), 0.0]))  # dx = +1 cell: content from the right
        m.copy_gain.copy_(torch.tensor([-20.0, 0.0, -20.0]))  # all on the moved copy
        moved = m(tokens, actions).argmax(2)
        assert torch.equal(moved[..., :-1], tokens[:, :-1, :, 1:])
        m.copy_gain.copy_(torch.tensor([-20.0, -20.0, 0.0]))  # all on the head
        pred = m(tokens, actions).argmax(2)
    free = tiny().eval()
    free.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith(("copy_", "shift"))}, strict=False)
    free.shift.load_state_dict(m.shift.state_dict())
    with torch.no_grad():
        head = free(tokens, actions)
    confident = torch.softmax(head, 2).amax(2) > 0.1
    assert confident.float().mean() > 0.2
    assert torch.equal(pred[confident], head.argmax(2)[confident])


def test_codebook_head_ties_logits_to_code_similarity():
    m = tiny(head="codebook", code_dim=4).eval()
    codes = F.normalize(torch.randn(K, 4, generator=torch.Generator().manual_seed(1)), dim=-1)
    codes[1] = codes[0]  # two identical code vectors must get identical logits everywhere
    m.set_codebook(codes)
    tokens, actions = batch(T=3)
    with torch.no_grad():
        logits = m(tokens, actions)
    assert torch.allclose(logits[:, :, 0] - m.code_bias[0], logits[:, :, 1] - m.code_bias[1], atol=1e-5)
    assert torch.equal(m.state_dict()["codebook"], codes)
    with pytest.raises(ValueError, match="code_dim"):
        tiny(head="codebook")


@pytest.mark.parametrize("copy_prior", [False, True])
def test_guidance_one_is_plain_step_and_zero_is_unconditioned(copy_prior):
    m = moving(copy_prior=copy_prior).eval()
    tokens, actions = batch(T=2)
    state = m.init_state(2, "cpu")
    with torch.no_grad():
        plain, s1 = m.step(tokens[:, 0], actions[:, 0], state)
        g1, s2 = m.step(tokens[:, 0], actions[:, 0], state, guidance=1.0)
        g0, s3 = m.step(tokens[:, 0], actions[:, 0], state, guidance=0.0)
        uncond, _ = m.step(tokens[:, 0], None, state)
        g2, _ = m.step(tokens[:, 0], actions[:, 0], state, guidance=2.0)
    assert torch.equal(plain, g1)
    assert torch.allclose(g0, uncond, atol=1e-5)
    assert torch.allclose(g2, 2 * plain - uncond, atol=1e-4)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(s1, s3))  # the state carried on is the conditioned one


@pytest.mark.parametrize("copy_prior", [False, True])
def test_key_guidance_guides_the_keyboard_part_apart_from_the_camera(copy_prior):
    """key_guidance kg: uncond + g * (camera only - uncond) + kg * (full action - camera only); kg = g
    is the plain guided step, bit for bit."""
    m = moving(copy_prior=copy_prior).eval()
    tokens, actions = batch(T=2)
    action = actions[:, 0]
    camera = torch.zeros_like(action)
    camera[:, list(CAMERA_INDICES)] = action[:, list(CAMERA_INDICES)]
    state = m.init_state(2, "cpu")
    with torch.no_grad():
        full, s_full = m.step(tokens[:, 0], action, state)
        cam, _ = m.step(tokens[:, 0], camera, state)
        uncond, _ = m.step(tokens[:, 0], None, state)
        g2, _ = m.step(tokens[:, 0], action, state, guidance=2.0)
        same, _ = m.step(tokens[:, 0], action, state, guidance=2.0, key_guidance=2.0)
        split, s_split = m.step(tokens[:, 0], action, state, guidance=2.0, key_guidance=3.5)
    assert torch.equal(same, g2)
    assert torch.allclose(split, uncond + 2.0 * (cam - uncond) + 3.5 * (full - cam), atol=1e-4)
    assert (split - g2).abs().max() > 1e-3  # the keyboard part moved the logits
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(s_full, s_split))  # the conditioned state goes on


def test_sampled_input_is_told_the_sampled_level():
    m = tiny(sampled_level=0.7).eval()
    tokens, actions = batch(T=2)
    state = m.init_state(2, tokens.device)
    with torch.no_grad():
        real, _ = m.step(tokens[:, 0], actions[:, 0], state)
        sampled, _ = m.step(tokens[:, 0], actions[:, 0], state, sampled=True)
        told, _ = m.step(tokens[:, 0], actions[:, 0], state, corruption=0.7)
        plain = tiny(sampled_level=0.0).eval()
        unchanged = torch.equal(plain.step(tokens[:, 0], actions[:, 0], state, sampled=True)[0],
                                plain.step(tokens[:, 0], actions[:, 0], state)[0])
    assert torch.equal(sampled, told) and not torch.allclose(sampled, real)
    assert unchanged  # level 0: a sample passes as a real frame, as in checkpoints made before the switch


def shifts_model(dx=None, **kw):
    """A copy_shifts model; dx sets the motion head to move the view dx cells (content from the right)."""
    m = tiny(copy_prior=True, copy_mixture=True, copy_shifts=2, shift_radius=3, **kw).eval()
    if dx is not None:
        with torch.no_grad():
            m.shift[-1].bias.copy_(torch.tensor([3 * math.atanh(dx / 3), 0.0]))
    return m


def test_untrained_copy_shifts_model_predicts_the_last_frame_and_needs_the_mixture():
    m = shifts_model()
    tokens, actions = batch(T=6)
    with torch.no_grad():
        logp = m(tokens, actions)
    assert torch.allclose(torch.logsumexp(logp, 2), torch.zeros(1), atol=1e-5)
    assert torch.equal(logp.argmax(2), tokens[:, :-1])
    assert len(m.shift_offsets) == 13  # |dx| + |dy| <= 2
    far = tiny(copy_prior=True, copy_mixture=True, copy_shifts=5).shift_offsets
    assert len(far) == 13 + 4 * 3 and ((far.abs().sum(-1) <= 2) | (far == 0).any(-1)).all()  # far ones on the axes
    with pytest.raises(ValueError, match="copy_mixture"):
        tiny(copy_prior=True, copy_shifts=2)


def test_copy_shifts_moves_whole_cells_and_splits_a_half_cell_motion():
    """All weight on the moved copy: a motion of one cell copies each cell's right neighbour (the
    shift of one whole cell gets the most weight); half a cell splits the weight evenly between
    the two whole-cell shifts either side (the learned part decides between them)."""
    tokens, actions = batch(T=2)
    src = tokens[:, 0]
    m = shifts_model(dx=1.0)
    with torch.no_grad():
        m.copy_gain.copy_(torch.tensor([-20.0, 0.0, -20.0]))
        pred = m(tokens, actions).argmax(2)[:, 0]
    assert torch.equal(pred[:, :, :-1], src[:, :, 1:])
    off = m.shift_offsets.tolist()
    for dx, want in ((1.0, {(1.0, 0.0): 0.6}), (0.5, {(0.0, 0.0): 0.3, (1.0, 0.0): 0.3})):
        m = shifts_model(dx=dx)
        with torch.no_grad():
            cond = m.cond_vector(actions[:, 0])
            d, zoom = m.camera_motion(cond, anchored=False)
            _, w, _, _ = m.shifted_sources(torch.zeros(2, *GRID, 16), cond, d, zoom, *GRID)
        w = w[:, 0, 0]  # one distribution per frame
        for shift, share in want.items():
            got = w[:, off.index(list(shift))]
            assert torch.all(got > share) and torch.all(got >= w.max(-1).values - 1e-6), (dx, shift, got)
        if dx == 0.5:
            assert torch.allclose(w[:, off.index([0.0, 0.0])], w[:, off.index([1.0, 0.0])])


def test_copy_shifts_learns_a_two_cell_turn():
    """Frames are windows onto a wider random token world that yaw moves by two cells per step; the
    copy (static, moved over whole-cell shifts, head) trains the camera motion and the shift choice,
    so after training a turn's frame is mostly its predecessor moved two cells."""
    H, W = GRID
    m = tiny(copy_prior=True, copy_mixture=True, copy_shifts=2, shift_radius=3, copy_motion="anchored_shift")

    def frames(g, yaw):
        world = torch.randint(0, K, (8, H, W + 16), generator=g)
        pos = 8 + 2 * torch.cat([torch.zeros(8, 1, dtype=torch.long), yaw.cumsum(1)], 1)
        return torch.stack([torch.stack([world[b, :, p:p + W] for p in pos[b].tolist()]) for b in range(8)])

    dx = learn_camera_motion(m, frames, 0, 60, seed=3)[0][:, 0]
    assert dx[0] < -0.5 and dx[2] > 0.5 and abs(dx[1]) < 0.3, dx  # the prior points the right way
    g = torch.Generator().manual_seed(9)
    yaw = torch.ones(8, 3, dtype=torch.long)
    tokens = frames(g, yaw)
    actions = torch.zeros(8, 3, A)
    actions[..., 0] = 1.0
    with torch.no_grad():
        pred = m(tokens, actions).argmax(2)
    inside = (slice(None), slice(None), slice(None), slice(0, W - 2))
    assert (pred[inside] == tokens[:, 1:][inside]).float().mean() > 0.8



def test_copy_edges_generate_gives_content_coming_into_view_to_the_head():
    """All weight on the moved copy, a one-cell turn: the column that comes into view copies the edge
    code with copy_edges "repeat"; with "generate" its moved mass goes to the head (untrained:
    uniform), the other cells are unchanged and every cell is still a distribution."""
    tokens, actions = batch(T=2)
    out = {}
    for edges in ("repeat", "generate"):
        m = shifts_model(dx=1.0, copy_edges=edges)
        with torch.no_grad():
            m.copy_gain.copy_(torch.tensor([-20.0, 0.0, -20.0]))
            out[edges] = m(tokens, actions)[:, 0]                                   # (B, K, H, W)
    rep, gen = out["repeat"], out["generate"]
    assert torch.allclose(torch.logsumexp(gen, 1), torch.zeros(1), atol=1e-5)
    assert torch.allclose(rep[..., 2:-2, 2:-2], gen[..., 2:-2, 2:-2], atol=1e-5)  # all sources inside: the same
    edge = tokens[:, 0, :, -1]                                            # the code a repeat would copy
    p_rep = rep[..., -1].exp().gather(1, edge[:, None]).squeeze(1)
    p_gen = gen[..., -1].exp().gather(1, edge[:, None]).squeeze(1)
    assert (p_rep > 0.5).all() and (p_gen < 0.3).all()
    with pytest.raises(ValueError, match="copy_edges"):
        shifts_model(copy_edges="wrap")


def train_shift_choice(m, tokens, actions, steps=15):
    """All weight on the moved copy; a few Adam steps of the shift choice alone -> its logits [B, T, S]."""
    with torch.no_grad():
        m.copy_gain.copy_(torch.tensor([-20.0, 0.0, -20.0]))
    for p in m.parameters():
        p.requires_grad_(False)
    m.shift_choice.weight.requires_grad_(True)
    opt = torch.optim.Adam([m.shift_choice.weight], lr=0.05)
    for _ in range(steps):
        loss = -m(tokens, actions).gather(2, tokens[:, 1:, None]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    aux = {}
    with torch.no_grad():
        m.forward_sequence(tokens[:, :-1], actions, aux=aux)
    return aux["shift_logits"]


def test_shift_gain_learns_the_shift_choice_from_a_small_action_faster():
    """A small yaw (0.2) moves the codes two cells; only the shift choice trains (everything else
    frozen, all weight on the moved copy). With the action's input scaled by shift_gain the same
    few Adam steps put most of the choice on the two-cell shift; unscaled they do not."""
    H, W = GRID
    g = torch.Generator().manual_seed(4)
    world = torch.randint(0, K, (8, H, W + 12), generator=g)
    tokens = torch.stack([torch.stack([world[b, :, p:p + W] for p in (0, 2, 4, 6)]) for b in range(8)])
    actions = torch.zeros(8, 3, A)
    actions[..., 0] = 0.2
    share = {}
    for gain in (1.0, 10.0):
        m = tiny(copy_prior=True, copy_mixture=True, copy_shifts=2, shift_radius=3, copy_motion="anchored_shift",
                 shift_gain=gain)
        k = m.shift_offsets.tolist().index([2.0, 0.0])
        share[gain] = torch.softmax(train_shift_choice(m, tokens, actions), -1)[..., k].mean().item()
    assert share[10.0] > 0.8 and share[1.0] < 0.5, share


def test_zoom_sources_move_the_outer_cells_and_keep_the_centre():
    H, W = 18, 32
    src, inside = zoom_sources(1.0, H, W)
    ys, xs = src // W, src % W
    grid = torch.arange(H * W)
    cy, cx = grid // W, grid % W
    centre = ((cy - 8.5).abs() < 2) & ((cx - 15.5).abs() < 4)
    assert torch.equal(src[:, centre], grid[centre].expand(2, -1))                  # the middle keeps its cells
    right = cx == W - 1
    assert torch.equal(xs[0, right], torch.full_like(xs[0, right], W - 2))        # zoom in: from one cell inward
    assert not inside[1, right].any() and inside[0].all()                          # zoom out: from outside the frame
    assert ((xs[0] - cx).abs() <= 1).all() and ((ys[0] - cy).abs() <= 1).all()


def test_copy_zoom_learns_walking_forward_and_back():
    """W zooms the codes in, S out (new codes come in at the edges); with the two zoom candidates the
    untrained model still predicts the last frame, and a few Adam steps of the shift choice alone (all
    weight on the moved copy) pick zoom in for W and zoom out for S."""
    H, W = GRID
    m = tiny(copy_prior=True, copy_mixture=True, copy_shifts=2, shift_radius=3, copy_motion="anchored_shift",
             shift_gain=10.0, copy_zoom=1.0)
    tokens, actions = batch(T=3)
    with torch.no_grad():
        logp = m(tokens, actions)
    assert torch.allclose(torch.logsumexp(logp, 2), torch.zeros(1), atol=1e-5)
    assert torch.equal(logp.argmax(2), tokens[:, :-1])
    src, inside = zoom_sources(1.0, H, W)
    g = torch.Generator().manual_seed(5)
    walk = torch.tensor([1.0, -1.0]).repeat(4)                                    # W, S, W, S, ...
    frames = [torch.randint(0, K, (8, H * W), generator=g)]
    for _ in range(3):
        nxt = torch.stack([frames[-1][b, src[0 if walk[b] > 0 else 1]] for b in range(8)])
        fresh = torch.randint(0, K, (8, H * W), generator=g)
        out = torch.stack([~inside[0 if w > 0 else 1] for w in walk])
        frames.append(torch.where(out, fresh, nxt))
    tokens = torch.stack(frames, 1).view(8, 4, H, W)
    actions = torch.zeros(8, 3, A)
    actions[..., 3] = walk[:, None]
    pick = train_shift_choice(m, tokens, actions).argmax(-1)                      # (8, 3)
    S = len(m.shift_offsets)
    assert (pick[walk > 0] == S).all() and (pick[walk < 0] == S + 1).all(), pick
    with pytest.raises(ValueError, match="copy_zoom"):
        tiny(copy_prior=True, copy_mixture=True, copy_shifts=2, copy_zoom=-1.0)


def test_one_shift_moves_a_sampled_frame_as_one_piece():
    """Half a cell of motion splits the moved copy between two whole-cell shifts; in play
    (one_shift) each frame takes one of them whole, and without it step() equals the sequence forward."""
    m = shifts_model(dx=0.5)
    tokens, actions = batch(B=2, T=2)
    with torch.no_grad():
        m.copy_gain.copy_(torch.tensor([-20.0, 0.0, -20.0]))  # all on the moved copy
        state = m.init_state(2, "cpu")
        soft, _ = m.step(tokens[:, 0], actions[:, 0], state)
        seq, _ = m.forward_sequence(tokens[:, :1], actions[:, :1])
        assert torch.allclose(soft, seq[:, 0], atol=1e-5)
        one, _ = m.step(tokens[:, 0], actions[:, 0], state, one_shift=True)
    assert torch.allclose(torch.logsumexp(one, 1), torch.zeros(1), atol=1e-5)
    src = tokens[:, 0]
    pred = one.argmax(1)
    moved = torch.cat([src[:, :, 1:], src[:, :, -1:]], 2)
    for b in range(2):
        assert torch.equal(pred[b], src[b]) or torch.equal(pred[b], moved[b])
    top = one.max(1).values  # the moved code holds (nearly) all the mass: nothing split
    assert (top > -1e-3).all() and (soft.max(1).values < -0.3).any()


def test_shift_labels_find_the_shift_the_codes_took():
    """The label of a frame pair is the whole-cell shift under which the most codes are kept; an
    unchanged frame and a uniform one (every shift ties) get no shift."""
    from model_convGru import shift_labels
    m = tiny(copy_prior=True, copy_mixture=True, copy_shifts=2)
    off = m.shift_offsets.long().tolist()
    H, W = GRID
    g = torch.Generator().manual_seed(0)
    world = torch.randint(0, K, (H + 4, W + 4), generator=g)
    prev = world[2:2 + H, 2:2 + W]
    pairs = {(1, 0): world[2:2 + H, 3:3 + W], (-2, 0): world[2:2 + H, 0:W], (0, 1): world[3:3 + H, 2:2 + W],
             (0, 0): prev, (0, -2): world[0:H, 2:2 + W], (1, 1): world[3:3 + H, 3:3 + W]}
    nxt = torch.stack(list(pairs.values()))
    labels = shift_labels(prev.expand(len(pairs), H, W), nxt, m.shift_offsets)
    assert [tuple(off[i]) for i in labels.tolist()] == list(pairs)
    flat = torch.full((1, H, W), 3)
    assert off[shift_labels(flat, flat, m.shift_offsets)[0]] == [0, 0]
