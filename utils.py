"""Small helpers shared by the scripts: checkpoints and safe loading, logging, devices, RNG, DDP.

    python -m utils convert-checkpoint OLD NEW   # an old (pre weights-only) checkpoint -> the safe format
"""
import contextlib
import gc
import glob
import hashlib
import json
import os
import pickle
import random
import re
import tempfile
import zipfile

import numpy as np
import torch
import torch.distributed as dist


# ----------------------------------------------------------------------------- files

def atomic_write_bytes(path, data: bytes):
    """Write to a temp file in the same folder, then rename: a kill never leaves half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_torch_save(obj, path):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=".pt")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_json(obj, path):
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def file_hash(path, length=16) -> str:
    """Content hash (sha256, shortened) used to name a tokenizer's identity."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


# ----------------------------------------------------------------------------- checkpoints

_CKPT_RE = re.compile(r"ckpt_(\d+)\.pt$")


def save_checkpoint(obj, ckpt_dir, step: int, keep: int = 3) -> str:
    """Atomically write `ckpt_<step>.pt` in `ckpt_dir`, keeping the `keep` newest."""
    path = os.path.join(ckpt_dir, f"ckpt_{step:08d}.pt")
    atomic_torch_save(obj, path)
    for old in list_checkpoints(ckpt_dir)[:-keep] if keep > 0 else []:
        os.remove(old)
    return path


def list_checkpoints(ckpt_dir):
    """Checkpoint paths in `ckpt_dir`, oldest first."""
    paths = [p for p in glob.glob(os.path.join(ckpt_dir, "ckpt_*.pt")) if _CKPT_RE.search(p)]
    return sorted(paths, key=lambda p: int(_CKPT_RE.search(p).group(1)))


def latest_checkpoint(path_or_dir):
    """A checkpoint file as given, or the newest one in a folder; None if there is none."""
    if path_or_dir is None:
        return None
    if os.path.isfile(path_or_dir):
        return path_or_dir
    found = list_checkpoints(path_or_dir) if os.path.isdir(path_or_dir) else []
    return found[-1] if found else None


# ----------------------------------------------------------------------------- safe loading

class BadFile(SystemExit):
    """A file given to a script that cannot be used. The message is one line naming the file and
    the problem; uncaught, it ends the script with that line and exit status 1, no traceback.
    `corrupt` marks a damaged file (empty, truncated), which --resume may pass over."""

    def __init__(self, message: str, corrupt: bool = False):
        super().__init__(message)
        self.corrupt = corrupt


KINDS = {"tokenizer": "an exported tokenizer (tokenizer.pt from vq_vae.train)",
         "world model": "a world-model checkpoint (ckpt_*.pt from train.py)",
         "tokenizer checkpoint": "a tokenizer training checkpoint (ckpt_*.pt from vq_vae.train)",
         "token file": "a token file (.npz from preprocess.py)"}


def checkpoint_kind(obj):
    """Which of KINDS a loaded checkpoint is, from the keys each writer puts in; None if none."""
    if not isinstance(obj, dict):
        return None
    if obj.get("format") == "ochre-tokenizer":
        return "tokenizer"
    if {"model", "data_state"} <= obj.keys():
        return "tokenizer checkpoint"
    if {"model_args", "model"} <= obj.keys():
        return "world model"
    return None


def check_file(path, what="file"):
    """Missing, a folder or empty -> BadFile naming `what` (e.g. '--checkpoint') and the path."""
    if not path:
        raise BadFile(f"{what}: no file given")
    if not os.path.exists(path):
        raise BadFile(f"{what} {path}: file not found")
    if os.path.isdir(path):
        raise BadFile(f"{what} {path}: is a folder, expected a file")
    if os.path.getsize(path) == 0:
        raise BadFile(f"{what} {path}: the file is empty (an interrupted copy or save?)", corrupt=True)


def convert_command(path) -> str:
    return f"python -m utils convert-checkpoint {path} {path}"


def _refusal(label, path, error) -> BadFile:
    """The weights-only unpickler stopped at a global: an old checkpoint (numpy arrays in its RNG
    state) gets the converting command; anything else may be code, and is only refused."""
    names = re.findall(r"GLOBAL ([\w.]+)", str(error))
    if not names:
        return BadFile(f"{label}: truncated or corrupt (not a readable checkpoint)", corrupt=True)
    if names[0].startswith("numpy"):
        return BadFile(f"{label}: saved in the old checkpoint format (numpy objects in the pickle); if you trust "
                       f"its source, convert it once: {convert_command(path)}")
    return BadFile(f"{label}: refused: loading it would call {names[0]} (a pickle that can run code); nothing was loaded")


def _sniff(path):
    """Name the kind of a file torch cannot open at all (a token .npz is a zip too)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            if "tokens.npy" in zf.namelist():
                return "token file"
    return None


def load_checkpoint(path, kind, what=None, map_location="cpu") -> dict:
    """The one loader for every .pt file a script is given, never unpickling code (weights_only=True).
    Checks that it exists, is intact and is of `kind` (a key of KINDS); raises BadFile otherwise."""
    what = what or kind
    check_file(path, what)
    label = f"{what} {path}"
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise _refusal(label, path, e) from None
    except Exception as e:
        found = _sniff(path)
        if found:
            raise BadFile(f"{label}: is {KINDS[found]}, not {KINDS[kind]}") from None
        raise BadFile(f"{label}: truncated or corrupt ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else 'no data'})",
                      corrupt=True) from None
    found = checkpoint_kind(obj)
    if found != kind:
        raise BadFile(f"{label}: is {KINDS[found] if found else 'not a file this project writes'}, not {KINDS[kind]}")
    return obj


def load_newest(path_or_dir, kind, what=None, log=print):
    """A checkpoint file as given, or the newest intact ckpt_*.pt in a folder: a damaged newer one
    (what an interrupted copy leaves) is reported through `log` and passed over. -> (path, dict)."""
    what = what or kind
    if path_or_dir and os.path.isdir(path_or_dir):
        paths = list_checkpoints(path_or_dir)[::-1]
        if not paths:
            raise BadFile(f"{what} {path_or_dir}: no checkpoint (ckpt_*.pt) in this folder")
    else:
        paths = [path_or_dir]
    for i, path in enumerate(paths):
        try:
            return path, load_checkpoint(path, kind, what)
        except BadFile as e:
            if not e.corrupt or len(paths) == 1:
                raise
            log(f"warning: {e}; " + ("trying the previous checkpoint" if i + 1 < len(paths) else "it was the last one"))
    raise BadFile(f"{what} {path_or_dir}: no intact checkpoint (all {len(paths)} are truncated or corrupt)")


def load_json(path, what="file"):
    """A JSON file a script is given -> its value; BadFile on a missing, empty or malformed file."""
    check_file(path, what)
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise BadFile(f"{what} {path}: not valid JSON ({e})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BadFile(f"{what} {path}: unreadable ({type(e).__name__}: {e})") from None


def plain(obj):
    """numpy arrays and scalars inside nested dicts/lists/tuples -> tensors and Python values."""
    if isinstance(obj, dict):
        return type(obj)((k, plain(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.astype(np.int64) if obj.dtype == np.uint32 else obj)
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _new_rng_state(state):
    """An RNG state saved before checkpoints were weights-only loadable -> get_rng_state's format."""
    if isinstance(state.get("numpy"), (list, tuple)) and isinstance(state["numpy"][1], np.ndarray):
        kind, keys, pos, has_gauss, cached = state["numpy"]
        state["numpy"] = [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]
    if isinstance(state.get("python"), tuple):
        version, internal, gauss_next = state["python"]
        state["python"] = [version, torch.tensor(internal, dtype=torch.int64), gauss_next]
    return state


def convert_checkpoint(old, new):
    """Rewrite a trusted checkpoint of the old format so that it loads with weights_only=True.
    This is the one place that unpickles with weights_only=False, on the user's explicit request."""
    check_file(old, "convert-checkpoint")
    obj = torch.load(old, map_location="cpu", weights_only=False)
    if isinstance(obj, dict) and isinstance(obj.get("rng"), list):
        obj["rng"] = [_new_rng_state(dict(s)) for s in obj["rng"]]
    obj = plain(obj)
    kind = checkpoint_kind(obj)
    if kind is None:
        raise BadFile(f"convert-checkpoint {old}: not a checkpoint this project writes; not converted")
    atomic_torch_save(obj, new)
    load_checkpoint(new, kind, "converted")
    note = " (its hash changes: re-run preprocess.py for token files made with it)" if kind == "tokenizer" else ""
    print(f"converted {old} -> {new}: {KINDS[kind]}, loads with weights_only=True{note}")


# ----------------------------------------------------------------------------- logging

class Logger:
    """The same calls whether wandb is online, offline or off.

    Scalars always go to `<run_dir>/metrics.jsonl` too, so a run can be inspected without wandb.
    Only the master process should create one with `enabled=True`.
    """

    def __init__(self, run_dir, mode="off", project="ochre", name=None, config=None, enabled=True):
        self.enabled = enabled
        self.run = None
        self.path = os.path.join(run_dir, "metrics.jsonl") if enabled else None
        if not enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        if mode not in ("online", "offline", "off"):
            raise ValueError(f"wandb mode must be online, offline or off, got {mode!r}")
        if mode != "off":
            import wandb  # imported only when asked for: no network or login at import time
            self.run = wandb.init(project=project, name=name, config=config, mode=mode, dir=run_dir)

    def log(self, metrics: dict, step: int):
        if not self.enabled:
            return
        row = {"step": int(step)}
        row.update({k: float(v) for k, v in metrics.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.run is not None:
            self.run.log(metrics, step=step)

    def log_image(self, key: str, png_path: str, step: int):
        if self.enabled and self.run is not None:
            import wandb
            self.run.log({key: wandb.Image(png_path)}, step=step)

    def finish(self):
        if self.run is not None:
            self.run.finish()
            self.run = None


# ----------------------------------------------------------------------------- devices

def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name} asked for, but CUDA is not available on this machine")
    return device


def autocast_context(device: torch.device, precision: str):
    """precision: fp32 | bf16 | fp16 | auto (bf16 where supported, else fp16, on CUDA; fp32 on CPU)."""
    precision = resolve_precision(device, precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def usable_guidance(guidance: float, ckpt: dict, script: str) -> float:
    """Action guidance needs the unconditioned half that action dropout trains; a checkpoint trained
    without it runs unguided (g = 1), with a note."""
    if guidance != 1.0 and not float((ckpt.get("config") or {}).get("action_dropout", 0) or 0):
        print(f"note: {script}: the checkpoint was trained without action dropout, so it runs unguided (--guidance 1)")
        return 1.0
    return guidance


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AMX tiles and AVX-512 bf16 (Sapphire Rapids and later), where oneDNN runs
    bf16 convolutions and matmuls several times faster than fp32."""
    try:
        return bool(torch.cpu._is_amx_tile_supported() and torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # older torch without the probes
        return False


def resolve_precision(device: torch.device, precision: str) -> str:
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    if device.type != "cuda":  # CPU training autocasts only on request: bf16 is faster with AMX but scored slightly worse
        return "fp32" if precision == "auto" else precision
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise SystemExit("precision bf16 asked for, but this GPU does not support it (use fp16, e.g. on a P100)")
    return precision


def compiled_graphs() -> int:
    """Graphs torch.compile has compiled in this process so far (first calls and recompiles)."""
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"]


def compile_summary() -> str:
    """What torch.compile did in this process: graphs compiled (first calls and recompiles) and graph breaks."""
    from torch._dynamo.utils import counters
    breaks = sum(counters["graph_break"].values())
    return f"torch.compile: {compiled_graphs()} graphs compiled, {breaks} graph breaks"


def peak_memory_summary(device) -> str:
    """Peak CUDA memory of this process so far ('' on CPU): what a GPU user sizes batches by."""
    device = torch.device(device)
    if device.type != "cuda":
        return ""
    gib = 2 ** 30
    return (f"peak GPU memory: {torch.cuda.max_memory_allocated(device) / gib:.2f} GiB allocated, "
            f"{torch.cuda.max_memory_reserved(device) / gib:.2f} GiB reserved")


# ----------------------------------------------------------------------------- distributed

def setup_distributed(device_name="auto"):
    """Read torchrun's env vars. Returns (ddp, rank, local_rank, world_size, device)."""
    if int(os.environ.get("RANK", -1)) == -1:
        return False, 0, 0, 1, resolve_device(device_name)
    rank, local_rank, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    if torch.cuda.is_available() and device_name in ("auto", "cuda"):
        device = torch.device(f"cuda:{local_rank}")
        torch.cuda.set_device(device)
        dist.init_process_group("nccl")
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    return True, rank, local_rank, world, device


def cleanup_distributed(ddp: bool):
    """Every rank waits for the others, then frees the group while the interpreter is fully alive.
    No rank then closes its gloo connections while a peer is still busy (that can abort with SIGABRT)."""
    if ddp and dist.is_initialized():
        dist.barrier()
        gc.collect()
        dist.destroy_process_group()
        gc.collect()


# ----------------------------------------------------------------------------- RNG

def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def get_rng_state() -> dict:
    """Every RNG's state as tensors and plain values, so a checkpoint holding it loads with weights_only=True."""
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, torch.tensor(internal, dtype=torch.int64), gauss_next],
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(int(x) for x in internal.tolist()), gauss_next))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description="Convert a trusted checkpoint saved in the old format.")
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert-checkpoint", help="rewrite OLD as NEW (may be the same path), loadable with weights_only=True")
    conv.add_argument("old", help="checkpoint or tokenizer file of the old format; only one you trust (it is unpickled)")
    conv.add_argument("new", help="where to write the converted file")
    args = parser.parse_args()
    convert_checkpoint(args.old, args.new)
