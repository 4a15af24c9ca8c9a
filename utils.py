"""Small helpers shared by the training scripts: checkpoints, logging, devices, RNG, DDP."""
import contextlib
import gc
import glob
import hashlib
import json
import os
import random
import re
import tempfile

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


def resolve_precision(device: torch.device, precision: str) -> str:
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    if device.type != "cuda":  # CPU autocast runs bf16 and fp16 too (slower than fp32 here): only on request
        return "fp32" if precision == "auto" else precision
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise SystemExit("precision bf16 asked for, but this GPU does not support it (use fp16, e.g. on a P100)")
    return precision


def compile_summary() -> str:
    """What torch.compile did in this process: graphs compiled (first calls and recompiles) and graph breaks."""
    from torch._dynamo.utils import counters
    graphs = counters["stats"]["unique_graphs"]
    breaks = sum(counters["graph_break"].values())
    return f"torch.compile: {graphs} graphs compiled, {breaks} graph breaks"


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
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
