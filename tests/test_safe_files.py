"""Files a user receives or breaks: a pickle that would run code is refused by every loader, each
broken or wrong input ends its script with one line naming the file and exit status 1 (run as
subprocesses, several at once), old checkpoints convert once, --resume passes over a truncated
newest checkpoint."""
import builtins
import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import actions as act
import train
import utils
from test_train import TINY, make_token_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class CreatesAFile:
    """Unpickled with weights_only=False, this opens (creates) the file `path`."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return builtins.open, (self.path, "w")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny tokenizer, a world model trained on its grid, token files, and broken variants."""
    from model_convGru import WorldModel, WorldModelConfig
    from vq_vae import load_tokenizer
    from vq_vae.model import VQVAE, VQVAEConfig
    from vq_vae.tokenizer import export_tokenizer

    root = tmp_path_factory.mktemp("files")
    torch.manual_seed(0)
    tok_path = str(root / "tokenizer.pt")
    export_tokenizer(VQVAE(VQVAEConfig(channels=[8, 8, 8], res_blocks=[0, 0, 0], levels=[4, 4])), (72, 128), tok_path)
    tok = load_tokenizer(tok_path)
    mcfg = WorldModelConfig(codebook_size=tok.codebook_size, grid=tuple(tok.grid), action_dim=act.ACTION_DIM,
                            embed_dim=8, hidden=16, layers=1, action_hidden=16, idm_hidden=8)
    ckpt = {"model_args": dataclasses.asdict(mcfg), "model": WorldModel(mcfg).state_dict(), "config": {}, "step": 0,
            "tokenizer": {"path": tok_path, "hash": tok.hash, "codebook_size": tok.codebook_size,
                          "grid": list(tok.grid), "frame_size": list(tok.frame_size)},
            "action_names": list(act.ACTION_NAMES), "fps": 16.0}
    world = utils.save_checkpoint(ckpt, str(root / "world"), 0)
    tokens = make_token_data(root / "tokens", n_traj=2, length=6, codebook_size=tok.codebook_size, grid=tuple(tok.grid))
    other = root / "other_tokenizer.npz"  # the same grid, but the meta names another tokenizer
    meta = {"tokenizer": {"hash": "0123456789abcdef"}}
    np.savez(other, tokens=np.zeros((3, *tok.grid), np.uint16), actions=np.zeros((2, 7), np.float32),
             meta=np.array(json.dumps(meta)))
    blob = open(world, "rb").read()
    (root / "truncated.pt").write_bytes(blob[:len(blob) // 2])
    (root / "empty.pt").write_bytes(b"")
    (root / "broken.json").write_text('[[0, 0, 0, 1, 0, 0, 0], {"yaw": ')
    (root / "taken.mp4").write_bytes(b"an earlier recording")
    (root / "bad.yaml").write_text("lr: 0.001\n")
    return {"root": root, "tokenizer": tok_path, "world": world, "tokens": tokens,
            "npz": os.path.join(tokens, "traj_000.npz"), "other": str(other)}


def run_all(commands):
    """Run the command lines (argument lists after `python`) at once -> their CompletedProcess-like results."""
    env = dict(os.environ, OMP_NUM_THREADS="1", SDL_VIDEODRIVER="dummy", SDL_AUDIODRIVER="dummy")
    procs = [subprocess.Popen([sys.executable, *map(str, c)], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for c in commands]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        out.append((p.returncode, stdout, stderr))
    return out


def assert_one_line(result, *needles, status=1):
    code, stdout, stderr = result
    lines = stderr.strip().splitlines()
    assert code == status and len(lines) == 1 and "Traceback" not in stderr, (code, stdout[-1500:], stderr[-3000:])
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_a_pickle_that_creates_a_file_is_refused_by_every_loader(files, tmp_path):
    marker = tmp_path / "created_by_the_pickle"
    evil = tmp_path / "ckpt_00000001.pt"
    torch.save({"model": CreatesAFile(str(marker)), "data_state": {}}, evil)
    resume_dir = tmp_path / "run"
    resume_dir.mkdir()
    shutil.copy(evil, resume_dir / evil.name)
    w, t = files["world"], files["tokenizer"]
    commands = [
        ["live_inference.py", "--checkpoint", evil, "--headless", "--frames", "2"],
        ["live_inference.py", "--checkpoint", w, "--tokenizer", evil, "--headless", "--frames", "2"],
        ["evaluate.py", "--checkpoint", evil, "--data", files["tokens"], "--out", tmp_path / "eval"],
        ["train.py", "--data", files["tokens"], "--out", resume_dir, "--resume", *TINY],
        ["preprocess.py", "--input", files["root"], "--tokenizer", evil, "--out", tmp_path / "pre"],
        ["-m", "vq_vae.train", "--data", files["root"], "--out", tmp_path / "vq", "--resume", evil],
    ]
    for result in run_all(commands):
        assert_one_line(result, str(evil.name), "refused: loading it would call io.open")
    assert not marker.exists()
    assert not (tmp_path / "eval").exists() and not (tmp_path / "pre").exists()
    with pytest.raises(utils.BadFile, match="refused"):  # and in-process, through the library loaders
        train.load_world_model(str(evil))


def test_broken_and_wrong_inputs_give_one_line_and_status_1(files, tmp_path):
    w, t, root = files["world"], files["tokenizer"], files["root"]
    play = ["live_inference.py", "--checkpoint", w, "--headless", "--frames", "2"]
    cases = [
        (["live_inference.py", "--checkpoint", root / "empty.pt"], ["empty.pt", "the file is empty"]),
        (["live_inference.py", "--checkpoint", root / "truncated.pt"], ["truncated.pt", "truncated or corrupt"]),
        (["live_inference.py", "--checkpoint", t], ["tokenizer.pt", "is an exported tokenizer", "not a world-model"]),
        (["evaluate.py", "--checkpoint", t, "--data", files["tokens"], "--out", tmp_path / "e1"],
         ["--checkpoint", "is an exported tokenizer"]),
        (["evaluate.py", "--checkpoint", w, "--data", files["npz"], "--out", tmp_path / "e2"],
         ["--data", "traj_000.npz", "no manifest"]),
        (["preprocess.py", "--input", tmp_path / "missing", "--tokenizer", t, "--out", tmp_path / "p1"],
         ["--input", "missing", "folder not found"]),
        (["preprocess.py", "--input", root, "--tokenizer", w, "--out", tmp_path / "p2"],
         ["--tokenizer", "is a world-model checkpoint", "not an exported tokenizer"]),
        ([*play, "--start", tmp_path / "missing.npz"], ["--start", "missing.npz", "file not found"]),
        ([*play, "--start", files["tokens"], "--start-traj", "500"], ["--start_traj 500", "holds 2 trajectories"]),
        ([*play, "--start", files["npz"], "--start-index", "6"], ["--start_index 6", "has 6 frames"]),
        ([*play, "--start", files["other"]], ["other_tokenizer.npz", "made by tokenizer 0123456789abcdef"]),
        ([*play, "--actions", root / "broken.json"], ["--actions", "broken.json", "not valid JSON"]),
        ([*play, "--record", root / "taken.mp4"], ["taken.mp4", "already exists", "--overwrite"]),
    ]
    for (cmd, needles), result in zip(cases, run_all([c for c, _ in cases])):
        assert_one_line(result, *needles)
    assert not any((tmp_path / p).exists() for p in ("e1", "e2", "p1", "p2"))
    assert (root / "taken.mp4").read_bytes() == b"an earlier recording"
    # a bad value on the command line is blamed on the command line, not on the YAML file beside it
    code, _, stderr = run_all([["train.py", "--config", root / "bad.yaml", "--batch_size", "abc"]])[0]
    assert code == 2 and "command line: batch_size: expected an integer" in stderr and "bad.yaml" not in stderr


def old_format(path):
    """Rewrite a checkpoint as the project saved them before: numpy and tuple RNG states."""
    ckpt = torch.load(path, weights_only=True)
    for state in ckpt["rng"]:
        state["python"], state["numpy"] = random.getstate(), np.random.get_state()
    torch.save(ckpt, path)
    return ckpt


def test_old_checkpoint_is_refused_with_the_command_that_converts_it(files, tmp_path):
    out = tmp_path / "run"
    common = ["--data", files["tokens"], "--out", str(out), *TINY, "--window", "4", "--eval_context", "2", "--eval_rollout", "2"]
    train.main(common + ["--max_steps", "2", "--stop_after", "1", "--ckpt_every", "1"])
    path = str(out / "ckpt_00000001.pt")
    random.seed(5)
    np.random.seed(5)
    expected = (random.random(), np.random.rand())
    random.seed(5)
    np.random.seed(5)
    old_format(path)
    with pytest.raises(utils.BadFile, match="old checkpoint format.*python -m utils convert-checkpoint"):
        train.main(common + ["--max_steps", "2", "--resume"])
    code, stdout, stderr = run_all([["-m", "utils", "convert-checkpoint", path, path]])[0]
    assert code == 0 and "loads with weights_only=True" in stdout, stderr
    ckpt = utils.load_checkpoint(path, "world model")
    utils.set_rng_state(ckpt["rng"][0])
    assert (random.random(), np.random.rand()) == expected  # the converted state is the saved one
    train.main(common + ["--max_steps", "2", "--resume"])
    assert os.path.exists(out / "ckpt_00000002.pt")


def test_resume_passes_over_a_truncated_newest_checkpoint(files, tmp_path, capsys):
    def rows(run):
        with open(os.path.join(run, "metrics.jsonl")) as f:
            return {r["step"]: r["loss/total"] for r in map(json.loads, f) if "loss/total" in r}

    common = ["--data", files["tokens"], *TINY, "--window", "4", "--eval_context", "2", "--eval_rollout", "2", "--max_steps", "4", "--ckpt_every", "2"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    train.main(common + ["--out", str(full)])
    shutil.copytree(full, cut)
    newest = cut / "ckpt_00000004.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # what an interrupted copy leaves
    os.remove(cut / "metrics.jsonl")
    train.main(common + ["--out", str(cut), "--resume"])
    log = capsys.readouterr().out
    assert "ckpt_00000004.pt: truncated or corrupt" in log and "resuming from" in log and "ckpt_00000002.pt" in log
    assert sorted(rows(cut)) == [3, 4] and all(rows(cut)[s] == rows(full)[s] for s in (3, 4))
    for p in utils.list_checkpoints(str(cut)):  # nothing intact left: refused, naming the folder
        open(p, "wb").close()
    with pytest.raises(utils.BadFile, match="no intact checkpoint"):
        train.main(common + ["--out", str(cut), "--resume"])
