"""The shared modules: config parsing, the action vector, the sampler, checkpoint files."""
import dataclasses
import os

import numpy as np
import pytest
import torch

import actions
from config import ConfigError, apply_overrides, config_from_dict, opt, parse_config
from sampling import Sampler, filter_logits, sample_tokens
from utils import Logger, latest_checkpoint, list_checkpoints, save_checkpoint


@dataclasses.dataclass
class DemoConfig:
    lr: float = opt(3e-4, "learning rate")
    steps: int = opt(10, "steps")
    levels: list[int] = opt([8, 5, 5, 5], "levels")
    name: str = opt("run", "name")
    resume: bool = opt(False, "resume")
    init: str | None = opt(None, "optional path")


def test_config_precedence_yaml_then_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 0.01\nsteps: 5\nlevels: [4, 4]\n")
    cfg = parse_config(DemoConfig, ["--config", str(path), "--steps", "7", "--resume", "true", "--init", "none"])
    assert cfg == DemoConfig(lr=0.01, steps=7, levels=[4, 4], resume=True, init=None)
    assert parse_config(DemoConfig, ["--levels", "2,3"]).levels == [2, 3]


def test_config_rejects_unknown_keys_and_wrong_types(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("lrr: 0.01\n")
    with pytest.raises(ConfigError, match="bad.yaml.*lrr"):
        apply_overrides(DemoConfig(), {"lrr": 0.01}, str(path))
    with pytest.raises(SystemExit):
        parse_config(DemoConfig, ["--config", str(path)])
    with pytest.raises(ConfigError, match="steps"):
        apply_overrides(DemoConfig(), {"steps": "many"}, "command line")
    with pytest.raises(ConfigError):
        apply_overrides(DemoConfig(), {"steps": 2.5}, "x")
    assert config_from_dict(DemoConfig, dataclasses.asdict(DemoConfig(steps=3))).steps == 3


def test_aggregate_hand_made_window():
    raw = np.zeros((5, actions.RAW_DIM), np.float32)
    R = actions.R
    raw[0, R["yaw_deg"]] = 10.0
    raw[1, R["yaw_deg"]] = 20.0       # window 0: 30 degrees over 2 ticks -> 30 / 30 = 1.0
    raw[2, R["pitch_deg"]] = -15.0    # window 1: -15 / 30 = -0.5
    raw[0, R["forward"]] = 1.0        # window 0: (1 + 0) / 2 forward
    raw[3, R["left"]] = 1.0           # window 1: move_x = -0.5
    raw[2, R["jump"]] = 1.0           # a tap counts
    raw[2:4, R["sneak"]] = 1.0        # mean over window 1 = 1.0
    raw[4, R["sprint"]] = 1.0         # partial last window is dropped
    out = actions.aggregate(raw, stride=2)
    assert out.shape == (2, 7) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], actions.make_action(yaw=1.0, move_z=0.5))
    np.testing.assert_allclose(out[1], actions.make_action(pitch=-0.5, move_x=-0.5, jump=1.0, sneak=1.0))
    np.testing.assert_array_equal(actions.kept_frame_indices(6, 2), [0, 2, 4])


def test_to_ticks_round_trips_through_aggregate():
    vec = actions.make_action(yaw=-0.4, pitch=0.2, move_x=1.0, move_z=-1.0, jump=1.0, sprint=1.0, sneak=0.5)
    for stride in (1, 2, 4):
        back = actions.aggregate(actions.to_ticks(vec, stride), stride)[0]
        expected = vec.copy()
        expected[actions.A["sneak"]] = round(0.5 * stride) / stride  # sneak is held for whole ticks
        np.testing.assert_allclose(back, expected, atol=1e-6)


def test_camera_is_clipped_and_masks():
    raw = np.zeros((1, actions.RAW_DIM), np.float32)
    raw[0, actions.R["yaw_deg"]] = 100.0
    assert actions.aggregate(raw, 1)[0, actions.A["yaw"]] == 1.0
    assert actions.raw_degrees(raw, 1)[0, 0] == 100.0
    mask = actions.action_mask(has_camera=False)
    assert mask[list(actions.CAMERA_INDICES)].sum() == 0 and mask.sum() == actions.ACTION_DIM - 2


def test_sampler_top_k_and_greedy():
    torch.manual_seed(0)
    logits = torch.randn(2, 16, 3, 4)
    assert torch.equal(sample_tokens(logits, temperature=0), logits.argmax(1))
    top1 = Sampler(temperature=1.0, top_k=1)(logits)
    assert torch.equal(top1, logits.argmax(1))
    codes = Sampler(top_k=4)(logits.repeat(64, 1, 1, 1))
    allowed = torch.topk(logits, 4, dim=1).indices.repeat(64, 1, 1, 1)
    assert (codes.unsqueeze(1) == allowed).any(1).all()
    assert len(codes.unique()) > 4  # sampling, not argmax: more than one code per cell overall


def test_top_p_keeps_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(filter_logits(logits, top_p=0.7))
    assert kept.tolist() == [[True, True, False, False]]


def test_checkpoint_history_is_capped_and_latest_found(tmp_path):
    for step in (1, 5, 10, 20):
        save_checkpoint({"step": step}, tmp_path, step, keep=2)
    files = list_checkpoints(tmp_path)
    assert [os.path.basename(p) for p in files] == ["ckpt_00000010.pt", "ckpt_00000020.pt"]
    assert torch.load(latest_checkpoint(str(tmp_path)))["step"] == 20
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp_")]


def test_logger_off_and_offline_write_the_same_rows(tmp_path):
    for mode in ("off", "offline"):
        log = Logger(str(tmp_path / mode), mode=mode, config={"a": 1})
        log.log({"losses/ce": 1.5}, step=3)
        log.finish()
        rows = (tmp_path / mode / "metrics.jsonl").read_text().splitlines()
        assert rows == ['{"step": 3, "losses/ce": 1.5}']
    assert any((tmp_path / "offline" / "wandb").iterdir())


def test_bare_bool_flags_and_dashed_names():
    cfg = parse_config(DemoConfig, ["--resume", "--lr", "0.5"])
    assert cfg.resume is True and cfg.lr == 0.5
    @dataclasses.dataclass
    class Dashed:
        side_by_side: bool = opt(False, "show both, 100% of the time")
    assert parse_config(Dashed, ["--side-by-side"]).side_by_side is True
    assert parse_config(Dashed, ["--side_by_side", "false"]).side_by_side is False


def test_sampler_matches_the_top_k_distribution():
    torch.manual_seed(1)
    logits = torch.randn(1, 20, 1, 1).repeat(4000, 1, 1, 1)
    codes = sample_tokens(logits, temperature=1.0, top_k=3).flatten()
    top3 = torch.topk(logits[0, :, 0, 0], 3)
    expected = torch.softmax(top3.values, 0)
    freq = torch.stack([(codes == i).float().mean() for i in top3.indices])
    assert torch.allclose(freq, expected, atol=0.03)
    assert freq.sum() == 1.0


def test_keep_above_keeps_sure_cells_and_samples_the_rest():
    torch.manual_seed(2)
    # cell 0: one code at probability 0.6; cell 1: the best code at 0.25 of four near-equal ones
    sure = torch.log(torch.tensor([0.6, 0.2, 0.1, 0.1]))
    unsure = torch.log(torch.tensor([0.25, 0.25, 0.25, 0.25]) + torch.tensor([1e-3, 0, 0, 0]))
    logits = torch.stack([sure, unsure], -1)[None, :, None, :].repeat(2000, 1, 1, 1)     # (N, 4, 1, 2)
    codes = Sampler(top_k=0, keep_above=0.5)(logits)
    assert (codes[:, 0, 0] == 0).all()                    # p 0.6 >= 0.5: always the most likely code
    freq = torch.bincount(codes[:, 0, 1], minlength=4).float() / len(codes)
    assert torch.allclose(freq, torch.full((4,), 0.25), atol=0.04)  # p 0.25 < 0.5: drawn as before
    drawn = Sampler(top_k=0)(logits)[:, 0, 0]             # without it the sure cell changes ~40% of the time
    assert 0.3 < (drawn != 0).float().mean() < 0.5
    assert "keep-above=0.50" in Sampler(keep_above=0.5).describe() and "keep" not in Sampler().describe()
