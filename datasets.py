"""Dataset readers (raw videos + actions) and the token-window dataset the world model trains on.

Two halves:
- `find_trajectories(root, format)` walks a GF-Minecraft, MineRL v0.4 or OpenAI VPT folder and
  returns `Trajectory` objects: per-tick raw actions [N, 9] in actions.RAW_NAMES order plus a
  streamed frame reader. Tokenizer training and preprocess.py both read raw data through it.
  Every problem found while reading (missing files, lengths that disagree) is returned as a
  (path, reason) pair instead of raising, so one bad file never stops a whole dataset.
- `TokenWindowDataset` reads what preprocess.py writes: memory-mapped `tokens`/`actions`
  windows that never cross a trajectory boundary, split by trajectory.

Formats: shared/DATA_FORMATS.md. Alignment convention everywhere: raw tick i takes aligned
frame i to frame i+1, so a trajectory of F aligned frames has F-1 ticks.
"""
import dataclasses
import functools
import glob
import json
import os
import zipfile
from typing import Iterator, Optional

import av
import cv2
import numpy as np
import torch

import actions as act

SOURCES = ("gamefactory", "minerl", "vpt")
MINERL_TICK_HZ = 20.0
MINERL_KEYS = ("forward", "back", "left", "right", "jump", "sprint", "sneak")  # RAW_NAMES[2:]
VPT_DEG_PER_PIXEL = 360.0 / 2400.0  # 0.15 degrees per mouse count; kept as float (upstream truncates)
VPT_KEYS = {"key.keyboard.w": "forward", "key.keyboard.s": "back", "key.keyboard.a": "left",
            "key.keyboard.d": "right", "key.keyboard.space": "jump", "key.keyboard.left.control": "sprint",
            "key.keyboard.left.shift": "sneak"}


class DataError(ValueError):
    """A trajectory that cannot be used; the message names the file and the problem."""


# ----------------------------------------------------------------------------- video helpers

def probe_video(path):
    """(fps, width, height, frame_count) from the container; frame_count counts packets when the
    container does not record it. Raises DataError on an unreadable file."""
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise DataError(f"{path}: no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            fps = float(rate) if rate else 0.0
            count = int(stream.frames or 0)
            if count <= 0:  # not in the header: count packets (no decoding, cheap)
                count = sum(1 for p in container.demux(stream) if p.size > 0)
            return fps, stream.codec_context.width, stream.codec_context.height, count
    except DataError:
        raise
    except Exception as e:  # av raises many error classes for broken files
        raise DataError(f"{path}: cannot open video ({type(e).__name__}: {e})") from None


@dataclasses.dataclass
class Trajectory:
    name: str                       # unique within a dataset root, safe as a file name
    source: str                     # "gamefactory" | "minerl" | "vpt"
    video_path: str
    fps: float                      # read from the mp4
    num_frames: int                 # aligned frames (after any leading-frame skip)
    raw_actions: np.ndarray         # [num_frames - 1, 9] float32, tick i takes frame i -> i+1
    mask: np.ndarray                # [7] float32, 0 where the source lacks an action component
    groundtruth: Optional[str] = None
    lead_skip: int = 0              # video frames before aligned frame 0 (MineRL end alignment)
    notes: tuple = ()               # non-fatal observations worth a log line

    def frames(self, start: int = 0, stop: Optional[int] = None, size=None, step: int = 1) -> Iterator[np.ndarray]:
        """Yield uint8 [H, W, 3] RGB aligned frames start, start+step, ... < stop, decoded one by one.

        size=(W, H) resizes with cv2.INTER_AREA. Raises DataError if the video ends early or
        cannot be decoded, so a truncated file is never mistaken for a short one."""
        stop = self.num_frames if stop is None else min(stop, self.num_frames)
        if stop <= start:
            return
        first, last = self.lead_skip + start, self.lead_skip + stop
        decoded = 0
        try:
            with av.open(self.video_path) as container:
                stream = container.streams.video[0]
                for frame in container.decode(stream):
                    if decoded >= first and (decoded - first) % step == 0:
                        img = frame.to_ndarray(format="rgb24")  # (H, W, 3)
                        if size is not None and (img.shape[1], img.shape[0]) != tuple(size):
                            img = cv2.resize(img, tuple(size), interpolation=cv2.INTER_AREA)
                        yield img
                    decoded += 1
                    if decoded >= last:
                        break
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"{self.video_path}: decoding failed after {decoded} frames ({type(e).__name__}: {e})") from None
        if decoded < last:
            raise DataError(f"{self.video_path}: video ended after {decoded} decoded frames, expected "
                            f"{last} (truncated or corrupt)")


# ----------------------------------------------------------------------------- GF-Minecraft

def gamefactory_raw_actions(meta: dict, where: str) -> np.ndarray:
    """GF metadata -> [F-1, 9] raw ticks. Entry 0 is ignored; entry i is the tick into frame i."""
    entries = meta.get("actions") if isinstance(meta, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise DataError(f"{where}: no 'actions' mapping")
    try:
        keys = sorted(int(k) for k in entries)
    except ValueError:
        raise DataError(f"{where}: non-integer action keys") from None
    if keys != list(range(len(keys))):
        raise DataError(f"{where}: action keys are not 0..{len(keys) - 1} without gaps")
    raw = np.zeros((len(keys) - 1, act.RAW_DIM), dtype=np.float32)
    R = act.R
    for i in range(1, len(keys)):
        e = entries[str(i)]
        try:
            ws, ad, scs = int(e.get("ws", 0)), int(e.get("ad", 0)), int(e.get("scs", 0))
            row = raw[i - 1]
            row[R["yaw_deg"]] = float(e.get("yaw_delta", 0.0)) * act.DEG_PER_UNIT
            row[R["pitch_deg"]] = float(e.get("pitch_delta", 0.0)) * act.DEG_PER_UNIT
        except (AttributeError, TypeError, ValueError):
            raise DataError(f"{where}: malformed action entry {i}: {e!r}") from None
        row[R["forward"]], row[R["back"]] = ws == 1, ws == 2
        row[R["left"]], row[R["right"]] = ad == 1, ad == 2
        row[R["jump"]], row[R["sneak"]], row[R["sprint"]] = scs == 1, scs == 2, scs == 3
    return raw


def load_gamefactory(folder, clip, meta_path, video_path):
    """One GF clip -> Trajectory; the metadata must have one entry per video frame."""
    group = os.path.basename(os.path.normpath(folder))
    keyboard_only = group == "data_269"  # the keyboard-only part: camera is not recorded
    with open(meta_path) as f:
        meta = json.load(f)
    raw = gamefactory_raw_actions(meta, meta_path)
    fps, _, _, count = probe_video(video_path)
    if count != len(raw) + 1:
        raise DataError(f"{meta_path}: {len(raw) + 1} action entries but the video has {count} frames")
    if keyboard_only:  # keep whatever the file says out of the vector: the mask says "unknown"
        raw[:, [act.R["yaw_deg"], act.R["pitch_deg"]]] = 0.0
    gt = os.path.join(folder, "groundtruth", clip + ".json")
    return Trajectory(name=f"{group}__{clip}", source="gamefactory", video_path=video_path, fps=fps,
                      num_frames=len(raw) + 1, raw_actions=raw, mask=act.action_mask(has_camera=not keyboard_only),
                      groundtruth=gt if os.path.exists(gt) else None)


def list_gamefactory(root):
    """Every folder below root holding metadata/ and video/ (data_2003, data_269, ...).
    -> ([(name, path, loader)], [(path, reason)])"""
    candidates, skipped = [], []
    for folder in sorted(_walk_dirs(root)):
        meta_dir, video_dir = os.path.join(folder, "metadata"), os.path.join(folder, "video")
        if not (os.path.isdir(meta_dir) and os.path.isdir(video_dir)):
            continue
        group = os.path.basename(os.path.normpath(folder))
        metas = {os.path.splitext(os.path.basename(p))[0]: p for p in glob.glob(os.path.join(meta_dir, "*.json"))}
        videos = {os.path.splitext(os.path.basename(p))[0]: p for p in glob.glob(os.path.join(video_dir, "*.mp4"))}
        for clip in sorted(set(videos) - set(metas)):
            skipped.append((videos[clip], f"{videos[clip]}: no metadata json for this video"))
        for clip in sorted(set(metas) - set(videos)):
            skipped.append((metas[clip], f"{metas[clip]}: no video for this metadata"))
        for clip in sorted(set(metas) & set(videos)):
            candidates.append((f"{group}__{clip}", metas[clip],
                               functools.partial(load_gamefactory, folder, clip, metas[clip], videos[clip])))
    return candidates, skipped


# ----------------------------------------------------------------------------- MineRL v0.4

def minerl_raw_actions(npz, where: str) -> np.ndarray:
    """rendered.npz arrays -> [N, 9] raw ticks. action$camera is [pitch, yaw] degrees."""
    if "action$camera" not in npz:
        raise DataError(f"{where}: no 'action$camera' array")
    cam = np.asarray(npz["action$camera"], dtype=np.float32)
    if cam.ndim != 2 or cam.shape[1] != 2:
        raise DataError(f"{where}: action$camera has shape {cam.shape}, expected (N, 2)")
    raw = np.zeros((len(cam), act.RAW_DIM), dtype=np.float32)
    raw[:, act.R["pitch_deg"]], raw[:, act.R["yaw_deg"]] = cam[:, 0], cam[:, 1]
    for key in MINERL_KEYS:
        a = npz.get(f"action${key}")
        if a is None:
            raise DataError(f"{where}: no 'action${key}' array")
        if len(a) != len(cam):
            raise DataError(f"{where}: action${key} has {len(a)} steps but action$camera has {len(cam)}")
        raw[:, act.R[key]] = np.asarray(a, dtype=np.float32) > 0
    return raw


def load_minerl(folder):
    """One v4_<stream> folder -> Trajectory, aligned as the official loader does (DATA_FORMATS.md):
    N comes from `reward` (else the actions), the video is aligned by its end with
    true_video_frame_count. Lengths the publisher's metadata states but the loader never reads
    (duration_steps, duration_ms) only give notes when they disagree by more than one step."""
    video, meta_path, npz_path = (os.path.join(folder, n) for n in ("recording.mp4", "metadata.json", "rendered.npz"))
    for p in (video, meta_path, npz_path):
        if not os.path.exists(p):
            raise DataError(f"{p}: missing")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        with np.load(npz_path) as z:
            raw = minerl_raw_actions({k: z[k] for k in z.files if k.startswith("action$")}, npz_path)
            reward_len = len(z["reward"]) if "reward" in z.files else None
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{folder}: unreadable metadata.json or rendered.npz ({type(e).__name__}: {e})") from None
    n = len(raw) if reward_len is None else reward_len
    if len(raw) != n:
        raise DataError(f"{folder}: cannot align: rendered.npz has {n} rewards but {len(raw)} actions")
    fps, _, _, count = probe_video(video)
    # Real MineRL is 20 Hz; trust the container's rate only when it is plausible, and say so.
    tick_hz = fps if fps > 0 else MINERL_TICK_HZ
    notes = [] if abs(tick_hz - MINERL_TICK_HZ) < 0.5 else [f"{video}: {tick_hz:.2f} fps, not MineRL's 20 Hz"]
    true_count = int(meta.get("true_video_frame_count", count))
    if true_count < n + 1:
        raise DataError(f"{folder}: cannot align: true_video_frame_count={true_count} is fewer than N+1={n + 1} frames")
    if count < true_count:
        raise DataError(f"{folder}: cannot align: the mp4 holds {count} frames, true_video_frame_count says "
                        f"{true_count} (truncated video?)")
    if count > true_count:
        notes.append(f"{folder}: the mp4 holds {count} frames, true_video_frame_count={true_count}; the last "
                     f"{count - true_count} are not used")
    steps = meta.get("duration_steps")
    if steps is not None and int(steps) not in (n, n + 1):  # N or N + 1 (observations): both are published
        notes.append(f"{folder}: duration_steps={steps} but rendered.npz has N={n} actions")
    if "duration_ms" in meta and min(abs(float(meta["duration_ms"]) / 1000.0 * tick_hz - k) for k in (n, n + 1)) > 1:
        notes.append(f"{folder}: duration_ms={meta['duration_ms']} is {float(meta['duration_ms']) / 1000 * tick_hz:.0f} "
                     f"ticks at {tick_hz:g} Hz, but N={n}")
    gt = os.path.join(folder, "groundtruth.json")
    env = os.path.basename(os.path.dirname(os.path.normpath(folder)))
    return Trajectory(
        name=f"{env}__{os.path.basename(os.path.normpath(folder))}", source="minerl", video_path=video,
        fps=tick_hz, num_frames=n + 1, raw_actions=raw, mask=act.action_mask(),
        groundtruth=gt if os.path.exists(gt) else None, lead_skip=true_count - (n + 1), notes=tuple(notes))


def list_minerl(root):
    candidates = []
    for folder in sorted(_walk_dirs(root)):
        if os.path.exists(os.path.join(folder, "recording.mp4")) or os.path.exists(os.path.join(folder, "rendered.npz")):
            env = os.path.basename(os.path.dirname(os.path.normpath(folder)))
            name = f"{env}__{os.path.basename(os.path.normpath(folder))}"
            candidates.append((name, folder, functools.partial(load_minerl, folder)))
    return candidates, []


# ----------------------------------------------------------------------------- OpenAI VPT

def vpt_raw_actions(lines, where: str) -> np.ndarray:
    """jsonl records (one per frame) -> [F-1, 9] raw ticks; record i acts between frame i and i+1.
    Camera is zeroed on frames with a GUI open (it moves a cursor, not the view)."""
    raw = np.zeros((max(len(lines) - 1, 0), act.RAW_DIM), dtype=np.float32)
    for i, rec in enumerate(lines[:-1]):
        try:
            keys = set(rec.get("keyboard", {}).get("keys", []))
            mouse = rec.get("mouse", {})
            if not rec.get("isGuiOpen", False):
                raw[i, act.R["yaw_deg"]] = float(mouse.get("dx", 0.0)) * VPT_DEG_PER_PIXEL
                raw[i, act.R["pitch_deg"]] = float(mouse.get("dy", 0.0)) * VPT_DEG_PER_PIXEL
        except (AttributeError, TypeError, ValueError):
            raise DataError(f"{where}: malformed record on line {i + 1}") from None
        for k, name in VPT_KEYS.items():
            raw[i, act.R[name]] = k in keys
    return raw


def load_vpt(root, jsonl, video):
    with open(jsonl) as f:
        lines = [json.loads(s) for s in f if s.strip()]
    raw = vpt_raw_actions(lines, jsonl)
    fps, _, _, count = probe_video(video)
    if count != len(lines):
        raise DataError(f"{jsonl}: {len(lines)} action lines but the video has {count} frames")
    return Trajectory(name=vpt_name(root, video), source="vpt", video_path=video, fps=fps, num_frames=len(lines),
                      raw_actions=raw, mask=act.action_mask())


def vpt_name(root, video):
    return os.path.relpath(video, root)[:-len(".mp4")].replace(os.sep, "__")


def list_vpt(root):
    candidates, skipped = [], []
    for jsonl in sorted(glob.glob(os.path.join(root, "**", "*.jsonl"), recursive=True)):
        video = jsonl[:-len(".jsonl")] + ".mp4"
        if not os.path.exists(video):
            skipped.append((jsonl, f"{jsonl}: no matching .mp4"))
            continue
        candidates.append((vpt_name(root, video), jsonl, functools.partial(load_vpt, root, jsonl, video)))
    return candidates, skipped


# ----------------------------------------------------------------------------- discovery

def _walk_dirs(root):
    for folder, _, _ in os.walk(root):
        yield folder


def detect_format(root) -> list:
    """Which sources a folder holds, by their layout."""
    kinds = set()
    for folder, dirs, files in os.walk(root):
        if "metadata" in dirs and "video" in dirs:
            kinds.add("gamefactory")
        if "recording.mp4" in files or "rendered.npz" in files:
            kinds.add("minerl")
        if any(f.endswith(".jsonl") for f in files):
            kinds.add("vpt")
    return sorted(kinds)


def find_trajectories(root, format="auto", shard=None):
    """-> (trajectories sorted by name, [(path, reason)] skipped). format: gamefactory|minerl|vpt|auto.
    Each reason is one line that starts with the offending file. shard=(i, n) keeps the i-th of
    every n candidates in name order before any file is parsed (machines split a dataset this way)."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"dataset folder not found: {root}")
    formats = detect_format(root) if format == "auto" else [format]
    listers = {"gamefactory": list_gamefactory, "minerl": list_minerl, "vpt": list_vpt}
    candidates, skipped = [], []
    for f in formats:
        if f not in listers:
            raise ValueError(f"unknown format {f!r}; expected one of {', '.join(listers)} or auto")
        c, s = listers[f](root)
        candidates += c
        skipped += s
    names = [c[0] for c in candidates]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"{root}: trajectory names collide ({', '.join(dup[:5])}); point --input at one dataset")
    candidates.sort(key=lambda c: c[0])
    if shard is not None:
        candidates = candidates[shard[0]::shard[1]]
    found = []
    for name, path, load in candidates:
        try:
            found.append(load())
        except Exception as e:  # one bad file never stops a dataset
            skipped.append((path, str(e) if isinstance(e, DataError) else f"{path}: {type(e).__name__}: {e}"))
    return found, skipped


# ----------------------------------------------------------------------------- token files

MANIFEST_KEYS = ("version", "action_names", "tokenizer", "trajectories")
TOKENIZER_KEYS = ("hash", "codebook_size", "grid", "frame_size", "path")
TRAJECTORY_KEYS = ("file", "length", "source", "fps", "source_fps", "stride", "video_path", "groundtruth")


def read_manifest(data_dir) -> dict:
    """Load and validate `<data_dir>/manifest.json`; every problem is a ValueError naming the file."""
    path = os.path.join(data_dir, "manifest.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no manifest (run preprocess.py to make token files)")
    try:
        with open(path) as f:
            m = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(m, dict):
        raise ValueError(f"{path}: expected a JSON object at the top level")
    missing = [k for k in MANIFEST_KEYS if k not in m]
    if missing:
        raise ValueError(f"{path}: missing key(s) {', '.join(missing)}")
    if m["version"] != 1:
        raise ValueError(f"{path}: version {m['version']!r} is not supported (expected 1)")
    if tuple(m["action_names"]) != act.ACTION_NAMES:
        raise ValueError(f"{path}: action_names {m['action_names']} differ from this code's {list(act.ACTION_NAMES)}")
    tok = m["tokenizer"]
    missing = [k for k in TOKENIZER_KEYS if not isinstance(tok, dict) or k not in tok]
    if missing:
        raise ValueError(f"{path}: tokenizer entry lacks {', '.join(missing)}")
    if not isinstance(m["trajectories"], list):
        raise ValueError(f"{path}: 'trajectories' must be a list")
    for i, t in enumerate(m["trajectories"]):
        missing = [k for k in TRAJECTORY_KEYS if not isinstance(t, dict) or k not in t]
        if missing:
            raise ValueError(f"{path}: trajectory {i} lacks {', '.join(missing)}")
    return m


def load_token_file(path, tokenizer=None, what="token file"):
    """One token .npz -> (tokens [K, h, w] uint16, actions [K-1, A] float32), checked against the
    tokenizer that will decode it: the grid, the code range and the tokenizer hash its meta records."""
    from utils import BadFile, check_file
    check_file(path, what)
    label = f"{what} {path}"
    try:
        with np.load(path, allow_pickle=False) as z:
            if "tokens" not in z.files or "actions" not in z.files:
                raise BadFile(f"{label}: not a token file (no tokens / actions arrays; preprocess.py writes them)")
            tokens, actions = z["tokens"], z["actions"]
            meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
    except BadFile:
        raise
    except Exception as e:  # np.load raises many kinds for a damaged zip
        raise BadFile(f"{label}: truncated or corrupt ({type(e).__name__})", corrupt=True) from None
    if tokens.ndim != 3 or len(actions) != len(tokens) - 1:
        raise BadFile(f"{label}: tokens {tokens.shape} and actions {actions.shape} do not fit together")
    if tokenizer is not None:
        made_by = (meta.get("tokenizer") or {}).get("hash")
        if made_by and made_by != tokenizer.hash:
            raise BadFile(f"{label}: made by tokenizer {made_by}, but this model's tokenizer is {tokenizer.hash}")
        if tokens.shape[1:] != tuple(tokenizer.grid):
            raise BadFile(f"{label}: token grid {tokens.shape[1:]} does not match the tokenizer's {tuple(tokenizer.grid)}")
        if len(tokens) and int(tokens.max()) >= tokenizer.codebook_size:
            raise BadFile(f"{label}: holds code {int(tokens.max())}, the tokenizer has {tokenizer.codebook_size}")
    return tokens, actions


def memmap_npz_member(path, key):
    """Memory-map one array stored uncompressed inside an .npz (np.load ignores mmap_mode for npz).
    The member's bytes sit contiguously in the zip, after its local header and the .npy header."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(key + ".npy")
        if info.compress_type != zipfile.ZIP_STORED:
            raise ValueError(f"{path}: member {key} is compressed; write token files with np.savez, not savez_compressed")
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)  # zip local file header: name and extra lengths at bytes 26..30
        name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
    return np.memmap(path, dtype=dtype, mode="r", shape=shape, offset=offset, order="F" if fortran else "C")


def split_files(files, split, val_fraction, seed):
    """Deterministic split by trajectory: a seeded permutation of sorted names; the first
    round(n * val_fraction) (at least 1 when n > 1 and val_fraction > 0) go to val."""
    files = sorted(files)
    if split == "all":
        return files
    n_val = 0 if len(files) < 2 or val_fraction <= 0 else max(1, int(round(len(files) * val_fraction)))
    order = np.random.default_rng(seed).permutation(len(files))
    val = {files[i] for i in order[:n_val]}
    if split == "val":
        return [f for f in files if f in val]
    if split == "train":
        return [f for f in files if f not in val]
    raise ValueError(f"split must be train, val or all, got {split!r}")


class TokenWindowDataset(torch.utils.data.Dataset):
    """Windows of `window` consecutive kept frames from preprocessed token files.

    item -> (tokens [window, h, w] int64, actions [window-1, 7] float32), never crossing a
    trajectory. Files are memory-mapped lazily in each process (DataLoader workers included)."""

    def __init__(self, data_dir, window, split="train", val_fraction=0.1, seed=0,
                 expect_hash=None, expect_codebook_size=None):
        self.data_dir, self.window = data_dir, int(window)
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.manifest = m = read_manifest(data_dir)
        where = os.path.join(data_dir, "manifest.json")
        tok = m["tokenizer"]
        if expect_hash is not None and tok["hash"] != expect_hash:
            raise ValueError(f"{where}: tokens were made by tokenizer {tok['hash']} ({tok['path']}), but this run "
                             f"uses tokenizer {expect_hash}; re-run preprocess.py with the same tokenizer")
        if expect_codebook_size is not None and int(tok["codebook_size"]) != int(expect_codebook_size):
            raise ValueError(f"{where}: codebook_size {tok['codebook_size']} differs from the expected "
                             f"{expect_codebook_size}; re-run preprocess.py with the same tokenizer")
        self.codebook_size, self.grid = int(tok["codebook_size"]), tuple(tok["grid"])
        self.fps = m.get("fps")
        entries = {t["file"]: t for t in m["trajectories"]}
        self.files = split_files(entries, split, val_fraction, seed)
        self.lengths = np.array([int(entries[f]["length"]) for f in self.files], dtype=np.int64)
        counts = np.maximum(self.lengths - self.window + 1, 0)  # window starts per trajectory
        self.cum = np.concatenate([[0], np.cumsum(counts)])
        self._arrays = {}
        if len(self) == 0:
            raise ValueError(f"{where}: split {split!r} has no windows of {window} frames "
                             f"({len(self.files)} trajectories, lengths {self.lengths.tolist()[:8]})")

    def __len__(self):
        return int(self.cum[-1])

    def locate(self, index):
        """Dataset index -> (trajectory position in self.files, start frame)."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        i = int(np.searchsorted(self.cum, index, side="right")) - 1
        return i, int(index - self.cum[i])

    def arrays(self, i):
        """(tokens memmap [K, h, w] uint16, actions memmap [K-1, 7] float32) of trajectory i."""
        if i not in self._arrays:
            path = os.path.join(self.data_dir, self.files[i])
            tokens, actions = memmap_npz_member(path, "tokens"), memmap_npz_member(path, "actions")
            if len(tokens) != self.lengths[i] or len(actions) != len(tokens) - 1 or tokens.shape[1:] != self.grid:
                raise ValueError(f"{path}: tokens {tokens.shape} / actions {actions.shape} disagree with the "
                                 f"manifest (length {self.lengths[i]}, grid {self.grid})")
            self._arrays[i] = (tokens, actions)
        return self._arrays[i]

    def __getitem__(self, index):
        i, t = self.locate(index)
        tokens, actions = self.arrays(i)
        x = torch.from_numpy(tokens[t:t + self.window].astype(np.int64))              # (window, h, w)
        a = torch.from_numpy(np.array(actions[t:t + self.window - 1], dtype=np.float32))  # (window-1, 7)
        return x, a

    def __getstate__(self):  # memmaps are reopened in each worker instead of being pickled as copies
        state = dict(self.__dict__)
        state["_arrays"] = {}
        return state

    def window_weights(self, power=1.0, split_back=False):
        """[len(self)] float64 sampling weights that balance action categories (for a
        WeightedRandomSampler): each step gets a category from which components are active
        (camera, move, jump, sprint/sneak; split_back: walking back is a category of its own);
        a window weighs the mean of 1/frequency of its steps' categories, raised to `power`
        (0 = uniform). Normalised to mean 1."""
        cats = []
        for i in range(len(self.files)):
            a = np.asarray(self.arrays(i)[1])
            cats.append(action_categories(a, split_back))
        freq = np.bincount(np.concatenate(cats), minlength=32).astype(np.float64)
        inv = np.where(freq > 0, freq.sum() / np.maximum(freq, 1), 0.0) ** power
        out = []
        for c, n in zip(cats, self.lengths):
            per_step = inv[c]
            if self.window == 1:
                out.append(np.ones(max(n, 0)))
                continue
            csum = np.concatenate([[0.0], np.cumsum(per_step)])
            starts = np.arange(max(n - self.window + 1, 0))
            out.append((csum[starts + self.window - 1] - csum[starts]) / (self.window - 1))
        w = np.concatenate(out) if out else np.zeros(0)
        return w / w.mean() if len(w) and w.mean() > 0 else w


def action_categories(a: np.ndarray, split_back=False) -> np.ndarray:
    """[T, 7] normalized actions -> [T] int category in 0..31 (bits: camera, move, jump, sprint/sneak,
    and with split_back: walking back)."""
    A = act.A
    cam = (np.abs(a[:, A["yaw"]]) > 0.02) | (np.abs(a[:, A["pitch"]]) > 0.02)
    move = (np.abs(a[:, A["move_x"]]) > 0.25) | (np.abs(a[:, A["move_z"]]) > 0.25)
    jump = a[:, A["jump"]] > 0.5
    other = (a[:, A["sprint"]] > 0.5) | (a[:, A["sneak"]] > 0.5)
    back = (a[:, A["move_z"]] < -0.25) if split_back else np.zeros(len(a), bool)
    return (cam * 1 + move * 2 + jump * 4 + other * 8 + back * 16).astype(np.int64)
