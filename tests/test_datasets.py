"""TokenWindowDataset and read_manifest on hand-written token files (no video, no tokenizer)."""
import json
import os

import numpy as np
import pytest
import torch

import actions
import datasets
import preprocess

TOK = {"hash": "abc123", "codebook_size": 1000, "grid": [3, 4], "frame_size": [12, 16], "path": "tok.pt"}


def write_tokens(folder, name, length, value, tok=TOK):
    """A token file whose every token in frame t equals value * 100 + t (identifies file and frame)."""
    tokens = (value * 100 + np.arange(length, dtype=np.uint16))[:, None, None] * np.ones((1, 3, 4), np.uint16)
    acts = np.zeros((length - 1, 7), np.float32)
    acts[:, 0] = value + np.arange(length - 1) / 1000.0  # yaw carries file and step too
    acts[:, 3] = (np.arange(length - 1) % 3 == 0)        # some forward steps for the category weights
    meta = {"name": name, "length": length, "source": "gamefactory", "fps": 16.0, "source_fps": 16.0, "stride": 1,
            "skip_frames": 0, "video_path": f"{name}.mp4", "groundtruth": None, "action_mask": [1.0] * 7,
            "tokenizer": tok}
    data = preprocess.npz_bytes({"tokens": tokens, "actions": acts, "action_mask": np.ones(7, np.float32),
                                 "frame_index": np.arange(length, dtype=np.int64),
                                 "raw_degrees": np.zeros((length - 1, 2), np.float32), "meta": np.array(json.dumps(meta))})
    with open(os.path.join(folder, name + ".npz"), "wb") as f:
        f.write(data)


@pytest.fixture
def token_dir(tmp_path):
    for i, length in enumerate([5, 9, 3, 12, 7, 6]):
        write_tokens(tmp_path, f"traj_{i}", length, i)
    with open(tmp_path / "manifest.json", "w") as f:
        json.dump(preprocess.build_manifest(str(tmp_path)), f)
    return str(tmp_path)


def test_windows_never_cross_trajectories(token_dir):
    ds = datasets.TokenWindowDataset(token_dir, window=4, split="all")
    lengths = [5, 9, 3, 12, 7, 6]
    assert len(ds) == sum(max(n - 4 + 1, 0) for n in lengths)
    seen = set()
    for i in range(len(ds)):
        x, a = ds[i]
        assert x.shape == (4, 3, 4) and x.dtype == torch.int64
        assert a.shape == (3, 7) and a.dtype == torch.float32
        file_id, t0 = divmod(int(x[0, 0, 0]), 100)
        # consecutive frames of one file only; actions from the same file and the same steps
        assert x[:, 0, 0].tolist() == [file_id * 100 + t0 + k for k in range(4)]
        assert np.allclose(a[:, 0].numpy(), file_id + (t0 + np.arange(3)) / 1000.0)
        seen.add((file_id, t0))
    assert len(seen) == len(ds)


def test_split_by_trajectory_is_disjoint_and_deterministic(token_dir):
    train = datasets.TokenWindowDataset(token_dir, window=2, split="train", val_fraction=0.34, seed=3)
    val = datasets.TokenWindowDataset(token_dir, window=2, split="val", val_fraction=0.34, seed=3)
    assert set(train.files).isdisjoint(val.files) and len(train.files) + len(val.files) == 6
    assert len(val.files) == 2
    again = datasets.TokenWindowDataset(token_dir, window=2, split="val", val_fraction=0.34, seed=3)
    assert again.files == val.files


def test_memory_mapped(token_dir):
    ds = datasets.TokenWindowDataset(token_dir, window=3, split="all")
    tokens, acts = ds.arrays(0)
    assert isinstance(tokens, np.memmap) and isinstance(acts, np.memmap)
    assert tokens.dtype == np.uint16 and acts.dtype == np.float32


def test_refuses_other_tokenizer(token_dir):
    with pytest.raises(ValueError, match="manifest.json.*tokenizer abc123"):
        datasets.TokenWindowDataset(token_dir, window=3, expect_hash="fff000")
    with pytest.raises(ValueError, match="manifest.json.*codebook_size 1000"):
        datasets.TokenWindowDataset(token_dir, window=3, expect_codebook_size=512)
    datasets.TokenWindowDataset(token_dir, window=3, expect_hash="abc123", expect_codebook_size=1000)


def test_read_manifest_errors(tmp_path, token_dir):
    with pytest.raises(FileNotFoundError, match="manifest"):
        datasets.read_manifest(str(tmp_path / "nowhere"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        datasets.read_manifest(str(bad))
    m = datasets.read_manifest(token_dir)
    assert m["action_names"] == list(actions.ACTION_NAMES)
    del m["tokenizer"]["codebook_size"]
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match=r"bad.manifest.json: tokenizer entry lacks codebook_size"):
        datasets.read_manifest(str(bad))


def test_build_manifest_refuses_mixed_tokenizers(tmp_path):
    write_tokens(tmp_path, "a", 4, 0)
    write_tokens(tmp_path, "b", 4, 1, tok=dict(TOK, hash="other"))
    with pytest.raises(SystemExit, match="2 tokenizers"):
        preprocess.build_manifest(str(tmp_path))


def test_window_weights_balance_categories(token_dir):
    ds = datasets.TokenWindowDataset(token_dir, window=2, split="all")
    w = ds.window_weights()
    assert w.shape == (len(ds),) and np.all(w > 0) and abs(w.mean() - 1) < 1e-9
    cats = np.concatenate([datasets.action_categories(np.asarray(ds.arrays(i)[1])) for i in range(len(ds.files))])
    # with window 2 each window is one step: the total weight per category is equal
    totals = [w[cats == c].sum() for c in np.unique(cats)]
    assert np.allclose(totals, totals[0])
    sampler = torch.utils.data.WeightedRandomSampler(w, num_samples=8)
    assert len(list(sampler)) == 8


def test_window_weights_can_split_walking_back_from_forward():
    a = np.zeros((8, 7), np.float32)
    a[:6, actions.A["move_z"]], a[6:, actions.A["move_z"]] = 1.0, -1.0          # 6 steps forward, 2 back
    assert len(set(datasets.action_categories(a))) == 1
    cats = datasets.action_categories(a, split_back=True)
    assert cats[0] == cats[5] != cats[6] == cats[7]


def test_dataloader_workers(token_dir):
    ds = datasets.TokenWindowDataset(token_dir, window=3, split="all")
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1, shuffle=True)
    x, a = next(iter(loader))
    assert x.shape == (4, 3, 3, 4) and a.shape == (4, 2, 7)
