"""Play the learned world live: WASD + mouse drive the world model, a pygame window shows its frames.

    python live_inference.py --checkpoint checkpoints/world                      # start in the sandbox
    python live_inference.py --checkpoint checkpoints/world --start data/tokens  # from a real trajectory
    python live_inference.py --start clip.npz --start_index 40 --record out.mp4
    python live_inference.py --headless --actions actions.json --frames 200 --record out.mp4
    python live_inference.py --side-by-side          # the true sandbox next to the model, same inputs

`WorldModelEnv` is the core: `reset(start)` warms the recurrent state on a few real context
frames and returns the start frame; `step(action[7]) -> frame` advances the model one step,
samples the next token grid (sampling.Sampler: top-k 50 by default, never argmax unless asked)
and decodes only that frame (`step` = `decode(predict(action))`; with --overlap the decode of
frame t runs in a second thread during the model call for frame t+1). The window, headless runs,
evaluation and tests all use it.
Controls: see keymap.py (printed at start; H shows them in the window). Boolean options can be
given bare (`--headless` = `--headless true`) and names with dashes (`--side-by-side`).
"""
import contextlib
import json
import os
import sys
import time
import dataclasses
from dataclasses import asdict, dataclass

import numpy as np
import torch

import actions
from config import format_config, opt, parse_config
from sampling import GUIDANCE, KEEP_ABOVE, Sampler
from utils import (BadFile, atomic_write_json, autocast_context, check_file, compile_summary, cpu_has_fast_bf16, file_hash, load_json,
                   peak_memory_summary, resolve_device, usable_guidance)

VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".webm", ".mov")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass
class Config:
    checkpoint: str = opt("checkpoints/world", "world-model checkpoint file, or a folder (its newest ckpt_*.pt)")
    tokenizer: str | None = opt(None, "tokenizer file; default: the path the world-model checkpoint names")
    start: str = opt("sandbox", "where to start: 'sandbox', a token file (.npz) or a folder of them "
                                "(manifest.json), an image or a video file")
    start_index: int = opt(0, "frame of the start trajectory or video to continue from (negative: from the end)")
    start_traj: int = opt(0, "which trajectory of a token folder, in manifest order")
    context: int = opt(4, "real frames, ending at the start frame, fed to warm up the recurrent state")
    seed: int = opt(0, "sandbox world seed for --start sandbox, and the sampling seed")
    device: str = opt("auto", "cpu, cuda, cuda:N or auto (CUDA when available)")
    threads: int = opt(1, "CPU threads for torch; one step is small, so 1 avoids threading overhead and leaves "
                          "a core for the window or --overlap (0 = torch's default, one per core)")
    half: bool = opt(False, "fp16 autocast for the model and decoder (CUDA only)")
    precision: str = opt("auto", "CPU only: fp32 or bf16 autocast for the model and decoder; auto = bf16 on CPUs "
                                 "with AMX bf16 units (about 2x faster there), else fp32")
    overlap: bool = opt(False, "decode each frame in a second thread while the model computes the next one: "
                               "faster on a multi-core CPU, one frame more latency")
    compile: bool = opt(False, "torch.compile the model step (worth it on GPU; slow to start on CPU)")
    fps: float = opt(0.0, "frames per second of the loop; 0 = the model's data fps from the checkpoint")
    scale: int = opt(6, "initial window size as a multiple of the frame size (the window is resizable)")
    temperature: float = opt(1.0, "sampling temperature (keys [ ])")
    top_k: int = opt(50, "sample among the k most likely codes, 0 = off (keys - =)")
    top_p: float = opt(1.0, "nucleus sampling mass, 1.0 = off (keys ; ')")
    keep_above: float = opt(KEEP_ABOVE, "a cell whose most likely code has at least this probability takes it, "
                                        "the others are sampled; 1.0 = sample every cell")
    greedy: bool = opt(False, "argmax decoding: an explicit opt-in, it collapses quickly (key G)")
    guidance: float = opt(GUIDANCE, "action guidance: uncond + g * (cond - uncond) logits, a second model step per frame "
                                "(1 = off; models trained without action dropout always run at 1)")
    key_guidance: float = opt(0.0, "guidance of the keyboard part of the action (W/S, strafe, jump, sprint, sneak) apart "
                                   "from the camera's: uncond + g * (camera only - uncond) + kg * (full - camera only), "
                                   "a third model step per frame (0 = --guidance for the whole action)")
    sensitivity: float = opt(0.15, "mouse look, camera degrees per pixel")
    arrow_speed: float = opt(5.0, "arrow-key look, camera degrees per tick")
    record: str | None = opt(None, "write the session video (H.264 .mp4) here, plus a .json sidecar with "
                                   "per-frame actions and what a replay needs (start, seed, sampler, checkpoint hash)")
    overwrite: bool = opt(False, "let --record replace an existing video and sidecar")
    headless: bool = opt(False, "no window: replay --actions for --frames frames (with --record to keep the video)")
    actions: str | None = opt(None, "JSON actions to replay: a list of [7] vectors or {name: value} dicts, a "
                                    "recording's sidecar (replays the session: its start, seed and sampler are "
                                    "used unless given here), or a sandbox groundtruth file (raw_actions)")
    frames: int = opt(0, "stop after this many frames (start frame included); 0 = headless: one per action, "
                         "window: until quit")
    side_by_side: bool = opt(False, "show the true sandbox next to the model, driven by the same inputs "
                                    "(--start sandbox only)")
    hud: bool = opt(True, "draw the HUD bar (fps, ms per frame, action, sampling)")
    screenshot: str | None = opt(None, "save a PNG when the session ends: the window, or with --headless the last "
                                       "frame (truth | model with --side-by-side) at --scale")


# ----------------------------------------------------------------------------- the core

@dataclass
class Start:
    """Where a session starts: real context frames as tokens, ending at the start frame."""
    tokens: torch.Tensor            # [T, h, w] int64, T >= 1; tokens[-1] is the start frame
    actions: np.ndarray             # [T-1, 7] float32, actions[t] takes context frame t to t+1
    description: str
    sandbox: tuple | None = None    # (world, PlayerState at the start frame) when started from the sandbox


class WorldModelEnv:
    """A world model + tokenizer as an environment: reset(start) -> frame, step(action) -> frame.

    Frames are uint8 [H, W, 3] numpy arrays (on CPU they share memory with the decoder's output).
    The recurrent state lives across steps; only the newly sampled grid is decoded. `timings`
    holds the last step's wall-clock milliseconds: step_ms (model), sample_ms, model_ms (the two),
    decode_ms, and the calling thread's CPU time of each part (*_cpu_ms): with one torch thread
    that is what the part costs on an idle core, a figure a busy machine does not inflate.
    """

    def __init__(self, model, tokenizer, sampler: Sampler | None = None, device="cpu",
                 half: bool = False, compile: bool = False, seed: int = 0, guidance: float = 1.0,
                 precision: str = "fp32", key_guidance: float | None = None):
        self.model, self.tokenizer, self.guidance, self.key_guidance = model, tokenizer, guidance, key_guidance
        self.sampler = sampler or Sampler()
        self.device = torch.device(device)
        self.seed = seed
        on_gpu = self.device.type == "cuda"
        self.precision = ("fp16" if half else "fp32") if on_gpu else precision  # precision: fp32 | bf16, CPU only
        self.amp = contextlib.nullcontext() if self.precision == "fp32" else autocast_context(self.device, self.precision)
        self.step_fn = torch.compile(model.step, dynamic=False) if compile else model.step  # one shape in play
        self.generator = torch.Generator(device=self.device)
        self.action = torch.zeros(1, actions.ACTION_DIM, device=self.device)  # reused every step
        self.level = torch.zeros(1, device=self.device)  # the input's corruption level: 0 real, sampled_level a sample
        self.start = None
        self.state = None
        self.tokens = None  # [1, h, w] int64, the current frame's grid
        self.sampled = False  # whether self.tokens is the model's own sample (else a real frame)
        self.timings = dict.fromkeys(("step_ms", "sample_ms", "model_ms", "decode_ms", "step_cpu_ms",
                                      "sample_cpu_ms", "decode_cpu_ms"), 0.0)

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.inference_mode()
    def decode(self, tokens) -> np.ndarray:
        """A token grid [1, h, w] -> its frame, uint8 [H, W, 3] (records decode_ms / decode_cpu_ms).
        Safe to run in a second thread while `predict` computes the next grid."""
        t0, c0 = time.perf_counter(), time.thread_time()
        with self.amp:
            frame = self.tokenizer.decode(tokens)[0].cpu().contiguous().numpy()  # [H, W, 3] uint8
        self.timings.update(decode_ms=(time.perf_counter() - t0) * 1e3, decode_cpu_ms=(time.thread_time() - c0) * 1e3)
        return frame

    @torch.inference_mode()
    def reset(self, start: Start | None = None) -> np.ndarray:
        """Warm the state on the start's context frames and return the start frame. The sampling
        generator is re-seeded, so the same actions after a reset give the same frames."""
        self.start = start = start or self.start
        tokens = start.tokens.to(self.device, torch.int64).clone()  # an inference tensor, like the sampled grids
        acts = torch.as_tensor(start.actions, dtype=torch.float32, device=self.device)
        self.state = self.model.init_state(1, self.device)
        self.level.zero_()
        with self.amp:
            for t in range(len(tokens) - 1):  # the logits are not needed: the real next frame follows
                # through the same action buffer as predict: a compiled step then has one graph, not two
                self.action.copy_(acts[t:t + 1])
                _, self.state = self.step_fn(tokens[t:t + 1], self.action, self.state, corruption=self.level)
        self.tokens = tokens[-1:].clone()
        self.sampled = False  # the next input is the real start frame
        self.generator.manual_seed(self.seed)
        return self.decode(self.tokens)

    @torch.inference_mode()
    def predict(self, action) -> torch.Tensor:
        """Apply one normalized step action [7]: advance the state, sample the next grid [1, h, w]."""
        t0, c0 = time.perf_counter(), time.thread_time()
        self.action.copy_(torch.as_tensor(action, dtype=torch.float32).view(1, -1))
        with self.amp:
            self.level.fill_(self.model.cfg.sampled_level if self.sampled else 0.0)
            logits, self.state = self.step_fn(self.tokens, self.action, self.state, corruption=self.level,
                                              guidance=self.guidance, one_shift=True,
                                              key_guidance=self.key_guidance)  # [1, K, h, w]
        self.sampled = True  # from now on the input is the model's own sample
        self._sync()
        t1, c1 = time.perf_counter(), time.thread_time()
        self.tokens = self.sampler(logits, generator=self.generator)  # [1, h, w], a new tensor each step
        self._sync()
        t2, c2 = time.perf_counter(), time.thread_time()
        self.timings.update(step_ms=(t1 - t0) * 1e3, sample_ms=(t2 - t1) * 1e3, model_ms=(t2 - t0) * 1e3,
                            step_cpu_ms=(c1 - c0) * 1e3, sample_cpu_ms=(c2 - c1) * 1e3)
        return self.tokens

    def step(self, action) -> np.ndarray:
        """Apply one normalized step action [7]; return the next frame, uint8 [H, W, 3]."""
        return self.decode(self.predict(action))


class SandboxTwin:
    """The true sandbox driven by the model's step actions: one step = `stride` ticks of dt."""

    def __init__(self, world, state, stride: int, dt: float, frame_size):
        self.world, self.start_state, self.stride, self.dt = world, state, stride, dt
        self.H, self.W = frame_size
        self.state = state

    def reset(self) -> np.ndarray:
        from sandbox import render
        self.state = self.start_state
        return render(self.world, self.state, width=self.W, height=self.H)

    def step(self, action) -> np.ndarray:
        from sandbox import render, step_physics
        for tick in actions.to_ticks(action, self.stride):
            self.state = step_physics(self.world, self.state, tick, self.dt)
        return render(self.world, self.state, width=self.W, height=self.H)


# ----------------------------------------------------------------------------- loading

def model_timing(ckpt: dict) -> tuple[float, int]:
    """(model steps per second, source ticks per model step): the checkpoint's `fps` (the token
    data's rate) and `stride`, else the stride its training data's manifest.json records, else 1."""
    fps = float(ckpt.get("fps") or 16.0)
    stride = ckpt.get("stride")
    data = (ckpt.get("config") or {}).get("data")
    if not stride and data and os.path.isfile(os.path.join(data, "manifest.json")):
        with open(os.path.join(data, "manifest.json")) as f:
            trajs = json.load(f).get("trajectories") or [{}]
        stride = trajs[0].get("stride")
    return fps, int(stride or 1)


def load_env(cfg: Config):
    """World model (train.load_world_model) + the tokenizer it names (or --tokenizer) -> env, ckpt."""
    from train import load_world_model
    from vq_vae import load_tokenizer

    device = resolve_device(cfg.device)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    model, ckpt = load_world_model(cfg.checkpoint, device)
    cfg.guidance = usable_guidance(cfg.guidance, ckpt, "live_inference")
    if cfg.key_guidance:
        cfg.key_guidance = usable_guidance(cfg.key_guidance, ckpt, "live_inference")
    named = ckpt.get("tokenizer") or {}
    path = cfg.tokenizer or named.get("path")
    if not path:
        raise SystemExit("the checkpoint names no tokenizer path: pass --tokenizer")
    tokenizer = load_tokenizer(path, device=device, what="--tokenizer" if cfg.tokenizer else "the checkpoint's tokenizer")
    if tokenizer.codebook_size != named.get("codebook_size", tokenizer.codebook_size):
        raise BadFile(f"--tokenizer {path}: has {tokenizer.codebook_size} codes but the world model was trained "
                      f"on {named['codebook_size']}")
    if named.get("hash") and tokenizer.hash != named["hash"]:
        if not cfg.tokenizer:  # the file at the recorded path was replaced: its codes mean something else
            raise BadFile(f"the checkpoint's tokenizer {path}: is tokenizer {tokenizer.hash}, the model was trained "
                          f"with {named['hash']}; pass --tokenizer to use it anyway")
        print(f"WARNING: --tokenizer {path} is tokenizer {tokenizer.hash}, the model was trained with "
              f"{named['hash']}: expect wrong colours and shapes")
    if cfg.half and device.type != "cuda":
        print("note: --half only applies on CUDA; running fp32")
    if cfg.precision not in ("auto", "fp32", "bf16"):
        raise SystemExit(f"live_inference.py: --precision must be auto, fp32 or bf16, got {cfg.precision!r}")
    if cfg.precision == "auto":  # resolved here, so a recording replays with the precision it was made with
        cfg.precision = "bf16" if device.type == "cpu" and cpu_has_fast_bf16() else "fp32"
    sampler = Sampler(0.0 if cfg.greedy else cfg.temperature, cfg.top_k, cfg.top_p, cfg.keep_above)
    env = WorldModelEnv(model, tokenizer, sampler, device, half=cfg.half, compile=cfg.compile, seed=cfg.seed,
                        guidance=cfg.guidance, precision=cfg.precision, key_guidance=cfg.key_guidance or None)
    return env, ckpt


def _resize(frame: np.ndarray, frame_size) -> np.ndarray:
    import cv2
    H, W = frame_size
    if frame.shape[:2] != (H, W):
        frame = cv2.resize(frame, (W, H), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(frame[..., :3])


def _encode(tokenizer, frames: np.ndarray, sticky: float = 0.0, track: int = 0) -> torch.Tensor:
    with torch.inference_mode():
        return tokenizer.encode(np.ascontiguousarray(frames), sticky=sticky, track=track).cpu()


def load_start(cfg: Config, tokenizer, fps: float, stride: int, sticky: float = 0.0, track: int = 0) -> Start:
    """--start sandbox | token file/folder | image | video -> Start (context of <= cfg.context frames).
    Frames are encoded as the training tokens were (preprocess.py --sticky and --sticky_track)."""
    n = max(cfg.context, 1)
    src = cfg.start
    zero = lambda k: np.zeros((k, actions.ACTION_DIM), dtype=np.float32)  # noqa: E731
    if src == "sandbox":
        from sandbox import World, render, rollout, spawn_state
        H, W = tokenizer.frame_size
        world = World(cfg.seed)
        state = spawn_state(world, cfg.seed)
        if n == 1:
            frames, states = render(world, state, width=W, height=H)[None], [state]
        else:  # the context: standing still for n-1 steps, so the state sees the real spawn view
            idle = np.zeros(((n - 1) * stride, actions.RAW_DIM), np.float32)
            frames, states = rollout(world, state, idle, 1.0 / (fps * stride), width=W, height=H)
            frames = frames[::stride]
        return Start(_encode(tokenizer, frames, sticky, track), zero(n - 1), f"sandbox seed {cfg.seed}",
                     sandbox=(world, states[-1]))
    what = "--start"
    if os.path.isdir(src):
        from datasets import read_manifest
        try:
            trajs = read_manifest(src)["trajectories"]
        except (FileNotFoundError, ValueError) as e:
            raise BadFile(f"--start {src}: {e}") from None
        if not 0 <= cfg.start_traj < len(trajs):
            raise BadFile(f"--start_traj {cfg.start_traj}: {src} holds {len(trajs)} trajectories (0..{len(trajs) - 1})")
        src, what = os.path.join(src, trajs[cfg.start_traj]["file"]), f"--start {src} trajectory {cfg.start_traj}"
    ext = os.path.splitext(src)[1].lower()
    if ext in (".npz",) + IMAGE_EXTS + VIDEO_EXTS:
        check_file(src, what)
    if ext == ".npz":
        from datasets import load_token_file
        tokens, acts = load_token_file(src, tokenizer, what)
        i = start_frame(cfg.start_index, len(tokens), what)
        lo = max(0, i - n + 1)
        return Start(torch.from_numpy(tokens[lo:i + 1].astype(np.int64)), acts[lo:i].astype(np.float32),
                     f"{os.path.basename(src)} frame {i}")
    if ext in IMAGE_EXTS:
        import cv2
        img = cv2.imread(src, cv2.IMREAD_COLOR)
        if img is None:
            raise BadFile(f"--start {src}: not a readable image")
        frame = _resize(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), tokenizer.frame_size)
        return Start(_encode(tokenizer, frame[None]), zero(0), os.path.basename(src))
    if ext in VIDEO_EXTS:
        import av
        try:
            with av.open(src) as container:
                frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        except Exception as e:  # av raises many error classes for broken files
            raise BadFile(f"--start {src}: cannot decode the video ({type(e).__name__})") from None
        if not frames:
            raise BadFile(f"--start {src}: no frames in this video")
        i = start_frame(cfg.start_index, len(frames), f"--start {src}")
        lo = max(0, i - n + 1)
        ctx = np.stack([_resize(f, tokenizer.frame_size) for f in frames[lo:i + 1]])
        # a plain video has no recorded actions: the context is fed with idle ones
        return Start(_encode(tokenizer, ctx, sticky, track), zero(len(ctx) - 1), f"{os.path.basename(src)} frame {i}")
    raise SystemExit(f"--start {cfg.start!r}: expected 'sandbox', a .npz token file or folder, an image "
                     f"({', '.join(IMAGE_EXTS)}) or a video ({', '.join(VIDEO_EXTS)})")


def start_frame(index: int, length: int, what: str) -> int:
    """--start_index (negative counts from the end) -> a frame of a start of `length` frames."""
    if not -length <= index < length:
        raise BadFile(f"--start_index {index}: {what} has {length} frames ({-length}..{length - 1})")
    return index % length


def is_sidecar(data) -> bool:
    return isinstance(data, dict) and "actions" in data and "resets" in data


def load_actions(path: str, stride: int) -> np.ndarray:
    """A JSON list of actions or a groundtruth file -> [N, 7] float32 step actions (a recording's
    sidecar is replayed whole by run_headless instead)."""
    data = load_json(path, "--actions")
    try:
        if isinstance(data, dict) and "raw_actions" in data:  # sandbox groundtruth: raw ticks
            return actions.aggregate(np.asarray(data["raw_actions"], dtype=np.float32), stride)
        if isinstance(data, list):
            rows = [actions.make_action(**a) if isinstance(a, dict) else a for a in data]
            out = np.asarray(rows, dtype=np.float32).reshape(len(rows), -1)
        else:
            raise ValueError("expected a list of actions, a recording's sidecar or a groundtruth file")
    except (TypeError, ValueError) as e:
        raise BadFile(f"--actions {path}: not a list of actions ({e})") from None
    if out.ndim != 2 or (len(out) and out.shape[1] != actions.ACTION_DIM):
        raise BadFile(f"--actions {path}: each action must have {actions.ACTION_DIM} values {list(actions.ACTION_NAMES)}")
    return out.reshape(-1, actions.ACTION_DIM)


REPLAY_KEYS = ("start", "start_index", "start_traj", "context", "seed", "temperature", "top_k", "top_p", "keep_above", "greedy",
               "guidance", "key_guidance", "side_by_side", "precision")


def replay_config(cfg: Config, sidecar: dict, path: str) -> Config:
    """A recording's settings for a replay of it: each REPLAY_KEYS value left at its default here is
    taken from the recording; one given on the command line wins, and is named (frames will differ)."""
    recorded, defaults, changes = sidecar.get("config") or {}, Config(), {}
    for k in REPLAY_KEYS:
        if k not in recorded:
            continue
        if getattr(cfg, k) == getattr(defaults, k):
            changes[k] = recorded[k]
        elif getattr(cfg, k) != recorded[k]:
            print(f"note: --{k} {getattr(cfg, k)!r} overrides the recording's {recorded[k]!r}: the replay will differ")
    if "keep_above" not in recorded and cfg.keep_above == defaults.keep_above:
        changes["keep_above"] = 1.0  # recorded before the option: every cell was sampled
    print(f"replaying {path}: " + ", ".join(f"{k} {v!r}" for k, v in changes.items()))
    return dataclasses.replace(cfg, **changes)


# ----------------------------------------------------------------------------- recording

class Recorder:
    """The session as H.264 video (libx264, yuv420p) + a JSON sidecar: for every frame, the
    action that produced it (`actions[i]` took frame i-1 to frame i; zeros at a start frame,
    listed in `resets`), as in GameFactory metadata where entry 0 is a zero action; `sampling`
    lists [frame, sampler settings] wherever they changed. With `config` (start, seed, ...) and
    the checkpoint's hash in `meta`, that is all a replay needs to give the same frames."""

    def __init__(self, path: str, fps: float, width: int, height: int, meta: dict):
        from sandbox.formats import VideoWriter  # imported here: sandbox pulls in numba
        self.path, self.meta = path, meta
        self.video = VideoWriter(path, width, height, fps, crf=18, preset="veryfast")
        self.actions, self.resets, self.sampling = [], [], []

    def write(self, frame: np.ndarray, action=None, sampling=None):
        if action is None:
            self.resets.append(len(self.actions))
        if sampling is not None and (not self.sampling or self.sampling[-1][1] != sampling):
            self.sampling.append([len(self.actions), sampling])
        self.actions.append([float(x) for x in (np.zeros(actions.ACTION_DIM) if action is None else action)])
        self.video.write(frame)

    def close(self) -> str:
        self.video.close()
        atomic_write_json(dict(self.meta, version=2, action_names=list(actions.ACTION_NAMES),
                               num_frames=len(self.actions), resets=self.resets, sampling=self.sampling,
                               actions=self.actions), sidecar_path(self.path))
        return sidecar_path(self.path)


def sidecar_path(video_path: str) -> str:
    return os.path.splitext(video_path)[0] + ".json"


# ----------------------------------------------------------------------------- the loops

class Session:
    """Everything one run needs: the env, the optional sandbox twin, the recorder."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.env, ckpt = load_env(cfg)
        self.fps, self.stride = model_timing(ckpt)
        self.loop_fps = cfg.fps or self.fps
        tok = self.env.tokenizer
        encoding = ckpt.get("tokenizer") or {}
        self.start = load_start(cfg, tok, self.fps, self.stride, encoding.get("sticky", 0.0), encoding.get("sticky_track", 0))
        self.twin = None
        if cfg.side_by_side:
            if self.start.sandbox is None:
                raise SystemExit("--side-by-side needs --start sandbox (the truth comes from the sandbox)")
            world, state = self.start.sandbox
            self.twin = SandboxTwin(world, state, self.stride, 1.0 / (self.fps * self.stride), tok.frame_size)
        H, W = tok.frame_size
        self.recorder = None
        self.frames_shown = 0  # start and reset frames included
        self.pending, self.last, self.pool = None, None, None
        if cfg.overlap:
            from concurrent.futures import ThreadPoolExecutor
            self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode")
        self.checkpoint_hash = file_hash(ckpt["path"])
        if cfg.record:
            meta = {"checkpoint": ckpt["path"], "checkpoint_hash": self.checkpoint_hash,
                    "tokenizer_hash": tok.hash, "start_description": self.start.description, "fps": self.loop_fps,
                    "model_fps": self.fps, "stride": self.stride, "side_by_side": bool(self.twin), "config": asdict(cfg)}
            self.recorder = Recorder(cfg.record, self.loop_fps, W * (2 if self.twin else 1), H, meta)
        print(f"start: {self.start.description} ({len(self.start.tokens)} context frames) | model {self.fps:g} "
              f"fps, stride {self.stride} | device {self.env.device} ({self.env.precision}) | sampling {self.env.sampler.describe()}")

    def panels(self, frame, truth):
        return [truth, frame] if self.twin else [frame]

    @property
    def frames_done(self) -> int:
        return self.frames_shown + (self.pending is not None)

    def sampling(self) -> dict:
        s = self.env.sampler
        return {"temperature": s.temperature, "top_k": s.top_k, "top_p": s.top_p, "keep_above": s.keep_above}

    def set_sampling(self, settings: dict):
        for k, v in settings.items():
            setattr(self.env.sampler, k, v)

    def reset(self):
        self.flush()
        frame = self.env.reset(self.start)
        truth = self.twin.reset() if self.twin else None
        self.record(frame, truth, None, self.sampling())
        self.last = (frame, truth)
        return self.last

    def step(self, action):
        """One step; returns (model frame, sandbox frame or None) to show. With --overlap the
        frame shown is the previous step's: its decode ran in a worker thread during this step's
        model call (the two cores work at once, for one frame of extra latency)."""
        sampling = self.sampling()  # the settings this step samples with (the keys change them between steps)
        if self.pool is None:
            frame = self.env.step(action)
            truth = self.twin.step(action) if self.twin else None
            self.record(frame, truth, action, sampling)
            self.last = (frame, truth)
            return self.last
        tokens = self.env.predict(action)
        truth = self.twin.step(action) if self.twin else None
        self.flush()
        self.pending = (self.pool.submit(self.env.decode, tokens), truth, action, sampling)
        return self.last

    def flush(self):
        """Wait for the frame being decoded in the worker (if any) and record it."""
        if self.pending is not None:
            future, truth, action, sampling = self.pending
            self.pending = None
            self.last = (future.result(), truth)
            self.record(self.last[0], truth, action, sampling)

    def record(self, frame, truth, action, sampling=None):
        self.frames_shown += 1
        if self.recorder:
            self.recorder.write(np.concatenate([truth, frame], axis=1) if self.twin else frame, action, sampling)

    def close(self):
        self.flush()
        if self.pool is not None:
            self.pool.shutdown()
        if self.recorder:
            sidecar = self.recorder.close()
            print(f"recorded {len(self.recorder.actions)} frames to {self.cfg.record} (+ {sidecar})")


def replay_script(sidecar: dict) -> list:
    """A recording's frames after the first -> [(action [7] or None for a reset, sampler settings or None)]."""
    acts, resets = np.asarray(sidecar["actions"], np.float32), set(sidecar["resets"])
    changes = {int(i): settings for i, settings in sidecar.get("sampling", [])}
    return [(None if i in resets else acts[i], changes.get(i)) for i in range(1, len(acts))]


def run_headless(cfg: Config, sidecar: dict | None = None):
    s = Session(cfg)
    if sidecar is not None:
        script = replay_script(sidecar)
        if sidecar.get("checkpoint_hash") not in (None, s.checkpoint_hash):
            print(f"WARNING: replaying on checkpoint {s.checkpoint_hash}, the session was recorded with "
                  f"{sidecar['checkpoint_hash']}: the frames will differ from the recording")
    else:
        acts = load_actions(cfg.actions, s.stride) if cfg.actions else np.zeros((0, actions.ACTION_DIM), np.float32)
        script = [(a, None) for a in acts]
    n = cfg.frames or len(script) + 1
    if len(script) == 0:
        print("no --actions: standing still")
        script = [(np.zeros(actions.ACTION_DIM, np.float32), None)]
    elif len(script) < n - 1:
        print(f"{len(script)} actions for {n - 1} steps: repeating them")
    # the first steps compile (--compile) and warm caches: the figures leave them out
    warm = min(3, (n - 1) // 4)
    ms = dict.fromkeys(("step_ms", "sample_ms", "decode_ms"), 0.0)
    try:
        s.reset()
        t0 = time.perf_counter()
        for i in range(n - 1):
            if i == warm:
                t0 = time.perf_counter()
            action, sampling = script[i % len(script)]
            if sampling is not None:
                s.set_sampling(sampling)
            if action is None:
                s.reset()
                continue
            s.step(action)
            if i >= warm:
                for k in ms:
                    ms[k] += s.env.timings[k]
        wall = time.perf_counter() - t0
    finally:
        s.close()  # a video cut short by an error or Ctrl-C is still a valid file
    if cfg.screenshot:
        save_png(cfg.screenshot, np.concatenate(s.panels(*s.last), axis=1), cfg.scale)
        print(f"screenshot: {cfg.screenshot}")
    steps = max(n - 1 - warm, 1)
    print(f"{n} frames, {steps / max(wall, 1e-9):.1f} steps/s | per frame: model {ms['step_ms'] / steps:.1f} ms, "
          f"sampling {ms['sample_ms'] / steps:.1f} ms, decode {ms['decode_ms'] / steps:.1f} ms"
          + (f" (the first {warm} steps, warm-up and any compiling, not counted)" if warm else ""))
    if cfg.compile:
        print(compile_summary())
    if s.env.device.type == "cuda":
        print(peak_memory_summary(s.env.device))


def save_png(path, rgb, scale):
    """uint8 [H, W, 3] RGB -> PNG at `scale` x the size, nearest-neighbour (the pixels stay sharp)."""
    import cv2
    big = cv2.resize(rgb, (rgb.shape[1] * scale, rgb.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not cv2.imwrite(path, big[:, :, ::-1]):
        raise SystemExit(f"could not write the screenshot {path} (is it a .png path in a writable folder?)")


def run_window(cfg: Config):
    from keymap import KeyMap, Window, print_controls
    s = Session(cfg)
    keymap = KeyMap(cfg.sensitivity, cfg.arrow_speed, sampler=s.env.sampler)
    print_controls(model=True)
    win = Window(s.env.tokenizer.frame_size, panels=2 if s.twin else 1, scale=cfg.scale,
                 title=f"Ochre: the learned world ({s.start.description})",
                 labels=["sandbox (truth)", "world model"] if s.twin else None)
    try:
        play_loop(cfg, s, keymap, win)
        if cfg.screenshot:
            win.save(cfg.screenshot)
            print(f"screenshot: {cfg.screenshot}")
    finally:
        s.close()
        win.close()


def play_loop(cfg: Config, s: Session, keymap, win):
    """The live loop: events -> one step action -> model (+ sandbox twin) -> window, at loop_fps."""
    import pygame

    from keymap import RateMeter, controls_lines
    help_lines = ["Controls (H hides)"] + controls_lines(model=True, sep="\t")
    clock, meter = pygame.time.Clock(), RateMeter()
    display_ms, fps_text, last_fps = 0.0, "", 0.0
    frame, truth = s.reset()
    while True:
        for event in pygame.event.get():
            cmd = keymap.handle(event)
            if cmd == "quit":
                return
            if cmd == "reset":
                frame, truth = s.reset()
        if cfg.frames and s.frames_done >= cfg.frames:
            return
        _, vec = keymap.step_action(s.stride)
        if not keymap.paused:
            frame, truth = s.step(vec)
        t0 = time.perf_counter()
        hud = []
        if cfg.hud:
            if t0 - last_fps > 0.25:  # refresh the numbers 4x a second so they stay readable
                t = s.env.timings
                fps_text = (f"{meter.fps:5.1f} fps (target {s.loop_fps:g}) | model {t['step_ms']:5.1f} + "
                            f"sampling {t['sample_ms']:4.1f} ms | decode {t['decode_ms']:5.1f} ms | "
                            f"display {display_ms:4.1f} ms")
                last_fps = t0
            hud = [fps_text, f"action: {actions.describe(vec)} | {s.env.sampler.describe()}"
                   + (" | PAUSED" if keymap.paused else "") + ("" if keymap.grabbed else " | click to grab the mouse")]
        overlay = help_lines if keymap.show_help else (["paused (P)"] if keymap.paused else None)
        win.draw(s.panels(frame, truth), hud, overlay)
        display_ms = (time.perf_counter() - t0) * 1e3
        meter.tick()
        clock.tick(s.loop_fps)


def check_record(cfg: Config):
    """--record never replaces a video or sidecar unless asked, and is refused before anything runs."""
    for path in (cfg.record, sidecar_path(cfg.record)):
        if os.path.exists(path) and not cfg.overwrite:
            raise BadFile(f"--record {cfg.record}: {path} already exists; pass --overwrite to replace it")


def main(argv=None):
    cfg = parse_config(Config, sys.argv[1:] if argv is None else argv, description=__doc__)
    if cfg.record:
        check_record(cfg)
    sidecar = None
    if cfg.actions:
        data = load_json(cfg.actions, "--actions")
        if is_sidecar(data):
            sidecar = data
            cfg = replay_config(cfg, data, cfg.actions)
    print(format_config(cfg))
    if cfg.headless:
        run_headless(cfg, sidecar)
    else:
        run_window(cfg)


if __name__ == "__main__":
    main()
