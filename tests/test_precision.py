"""The precision and compile paths the GPU configs use, run on CPU: bf16 autocast, fp16 autocast with
the GradScaler, and torch.compile of the training step and of the play step, with the number of
compiled graphs counted over a run whose rollout length follows the curriculum."""
import functools
import json
import os

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

import train
from actions import ACTION_DIM
from live_inference import Start, WorldModelEnv
from test_train import TINY, make_token_data
from utils import autocast_context


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_token_data(tmp_path_factory.mktemp("tokens"))


def metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if "loss/total" in r]


class GreyDecoder:
    """Stands in for the tokenizer in play: code c -> a flat grey 2x2 patch."""

    def decode(self, tokens):
        img = (tokens.long() * 8).clamp(max=255).to(torch.uint8)
        return img.repeat_interleave(2, -2).repeat_interleave(2, -1)[..., None].expand(-1, -1, -1, 3)


def play(model, steps, compile=False):
    """A few play steps through the real env, from a random start grid -> frames."""
    env = WorldModelEnv(model, GreyDecoder(), compile=compile, seed=0)
    grid = model.cfg.grid
    tokens = torch.randint(0, model.cfg.codebook_size, (3, *grid), generator=torch.Generator().manual_seed(0))
    frames = [env.reset(Start(tokens, np.zeros((2, ACTION_DIM), np.float32), "test"))]
    frames += [env.step(np.eye(ACTION_DIM, dtype=np.float32)[i % ACTION_DIM]) for i in range(steps)]
    return env, frames


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_training_resumes_and_plays(data, tmp_path, precision):
    """Both autocast dtypes on CPU: finite, decreasing losses through teacher forcing and rollouts,
    a checkpoint that resumes (the fp16 GradScaler's state included) and a model that plays."""
    out = str(tmp_path / precision)
    common = ["--data", data, "--out", out, "--max_steps", "8", *TINY, "--precision", precision, "--lr", "0.01"]
    train.main(common + ["--stop_after", "4"])
    ckpt = torch.load(os.path.join(out, "ckpt_00000004.pt"), weights_only=False)
    scale = ckpt["scaler"].get("scale")
    assert (scale is not None and np.isfinite(scale)) if precision == "fp16" else not ckpt["scaler"]
    train.main(common + ["--resume"])
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 9))
    ce = [r["loss/ce"] for r in rows]
    assert all(np.isfinite(r["loss/total"]) for r in rows), rows
    assert np.mean(ce[-2:]) < np.mean(ce[:2]) - 0.1, ce  # rollouts from step 2 on (TINY's schedule)
    model, ckpt = train.load_world_model(out)
    assert ckpt["step"] == 8 and ckpt["config"]["precision"] == precision
    # the state stays fp32 under autocast (what --half does on CUDA): no dtype mismatch in the cell
    state = model.init_state(1, "cpu")
    tokens = torch.zeros(1, *model.cfg.grid, dtype=torch.long)
    with torch.no_grad(), autocast_context(torch.device("cpu"), precision):
        for _ in range(3):
            logits, state = model.step(tokens, torch.ones(1, ACTION_DIM), state)
    assert all(h.dtype == torch.float32 for h in state) and torch.isfinite(logits.float()).all()
    _, frames = play(model, 3)
    assert len(frames) == 4 and frames[-1].shape == (2 * model.cfg.grid[0], 2 * model.cfg.grid[1], 3)


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()
    counters.clear()


def test_compiled_training_graphs_bounded_over_the_curriculum(data, tmp_path, monkeypatch, fresh_dynamo):
    """torch.compile through dynamo's tracing with the cheap aot_eager backend (the guards, and so
    the recompilations, are the same as inductor's): every curriculum stage compiles its lengths
    once, later steps compile nothing, validation stays eager, and the run resumes."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    out = str(tmp_path / "compiled")
    # window 6, bptt 8: rollout 0 -> one chunk of 5; rollout 1 -> 4 + steps; rollout 3 -> 2 + steps
    common = ["--data", data, "--out", out, *TINY, "--compile", "true", "--rollout_schedule", "0:0,2:1,4:3",
              "--eval_every", "3", "--eval_batch", "2", "--eval_context", "2", "--eval_rollout", "3"]
    train.main(common + ["--max_steps", "12", "--stop_after", "6"])
    first = counters["stats"]["unique_graphs"]
    # 3 sequence lengths, and the rollout step with the state fresh from a chunk or from a step
    assert 3 <= first <= 6, dict(counters["stats"])
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    train.main(common + ["--max_steps", "12", "--resume"])  # a new process would recompile; this one has them all
    assert counters["stats"]["unique_graphs"] == first, dict(counters["stats"])
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 13)) and all(np.isfinite(r["loss/total"]) for r in rows)
    model, _ = train.load_world_model(out)  # saved uncompiled: plain keys
    _, frames = play(model, 2)
    assert len(frames) == 3


def test_inductor_compiles_training_and_play_steps(data, tmp_path, fresh_dynamo):
    """The real inductor backend (C++ codegen with this machine's gcc) on the smallest model: a few
    compiled optimizer steps, then compiled play steps that match eager ones, compiled once."""
    out = str(tmp_path / "inductor")
    small = [*TINY, "--hidden", "8", "--layers", "1", "--dilations", "1", "--window", "4",
             "--rollout_schedule", "0:0", "--lr", "0.01"]
    train.main(["--data", data, "--out", out, "--max_steps", "4", "--compile", "true", *small])
    assert counters["stats"]["unique_graphs"] == 1  # one teacher-forced length, no rollout
    rows = metrics(out)
    assert all(np.isfinite(r["loss/total"]) for r in rows) and rows[-1]["loss/ce"] < rows[0]["loss/ce"], rows
    model, _ = train.load_world_model(out)
    env, frames = play(model, 4, compile=True)
    _, eager = play(model, 4)
    assert counters["stats"]["unique_graphs"] == 2  # the play step: one graph for reset and every step
    # the same sampled frames: compiled logits differ from eager ones only by float rounding
    same = np.mean([np.array_equal(a, b) for a, b in zip(frames, eager)])
    assert same >= 0.6, same
