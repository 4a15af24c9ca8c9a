"""Writers for the two real dataset layouts (shared/DATA_FORMATS.md) plus the ground-truth sidecar.

- GF-Minecraft: data_2003/{annotation.csv, metadata/<clip>.json, video/<clip>.mp4}; entry "0"
  is a zero action, entry i is tick i-1 (frame i-1 -> i) with the absolute pitch/yaw/pos of
  frame i; camera deltas in units of 15 degrees; ws/ad/scs categorical codes.
- MineRL v0.4: MineRLTreechop-v0/v4_<stream>/{recording.mp4, metadata.json, rendered.npz};
  the video has a few extra leading frames, aligned with the actions by the end.
- groundtruth JSON next to each clip: seed, dt, width, height, one PlayerState per aligned
  frame and the raw [N, 9] ticks, so `rollout` reproduces the clip exactly.
"""
import csv
import io
import json
import os
from fractions import Fraction

import av
import numpy as np

from .physics import BACK, FORWARD, JUMP, LEFT, PITCH, RIGHT, SNEAK, SPRINT, YAW, PlayerState

DEG_PER_UNIT = 15.0  # GF yaw_delta / pitch_delta unit


# ----------------------------------------------------------------------------- video

class VideoWriter:
    """H.264 (libx264, yuv420p) mp4 writer fed with uint8 RGB frames [H, W, 3]."""

    def __init__(self, path, width, height, fps, crf=14, preset="ultrafast"):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.container = av.open(path, mode="w")
        self.stream = self.container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        self.stream.width, self.stream.height = width, height
        self.stream.pix_fmt = "yuv420p"
        # One thread and a fixed preset keep the bytes reproducible for a given seed. ultrafast is
        # both the quickest and, at equal crf, the closest to the render on small pixel-art frames
        # (no B-frames, no deblocking); the price is ~2x bigger files than veryfast.
        self.stream.options = {"crf": str(crf), "preset": preset, "threads": "1"}
        self.stream.codec_context.thread_count = 1
        self.count = 0

    def write(self, frame: np.ndarray):
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        for packet in self.stream.encode(vf):
            self.container.mux(packet)
        self.count += 1

    def close(self):
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()


def read_video(path) -> np.ndarray:
    """All frames of an mp4 as uint8 [N, H, W, 3] RGB (for tests and checks)."""
    with av.open(path) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


# ----------------------------------------------------------------------------- ground truth

def groundtruth_dict(seed, dt, width, height, states, raw_actions) -> dict:
    raw = np.asarray(raw_actions, dtype=np.float32).reshape(-1, 9)
    assert len(states) == len(raw) + 1, "one state per aligned frame, one action per tick"
    return {"seed": int(seed), "dt": float(dt), "width": int(width), "height": int(height),
            "states": [s.to_dict() for s in states], "raw_actions": raw.astype(np.float64).tolist()}


def write_json(obj, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def load_groundtruth(path) -> dict:
    """-> dict(seed, dt, width, height, states=[PlayerState ...], raw_actions=float32 [N, 9])."""
    with open(path) as f:
        d = json.load(f)
    d["states"] = [PlayerState.from_dict(s) for s in d["states"]]
    d["raw_actions"] = np.asarray(d["raw_actions"], dtype=np.float32).reshape(-1, 9)
    return d


# ----------------------------------------------------------------------------- GF-Minecraft

def gf_codes(raw):
    """Raw tick [9] -> (ws, ad, scs) codes. scs: 0 none, 1 jump, 2 sneak, 3 sprint."""
    ws = 1 if raw[FORWARD] > 0.5 else 2 if raw[BACK] > 0.5 else 0
    ad = 1 if raw[LEFT] > 0.5 else 2 if raw[RIGHT] > 0.5 else 0
    flags = [raw[JUMP] > 0.5, raw[SNEAK] > 0.5, raw[SPRINT] > 0.5]
    if sum(flags) > 1:
        raise ValueError(f"GF-Minecraft cannot record jump/sneak/sprint together: {raw}")
    scs = 1 if flags[0] else 2 if flags[1] else 3 if flags[2] else 0
    return ws, ad, scs


def gf_metadata(states, raw_actions, biome, weather="clear", start_time="Noon") -> dict:
    """F states (frames) and F-1 ticks -> the metadata dict with F entries "0" .. "F-1"."""
    actions = {}
    for i, s in enumerate(states):
        if i == 0:
            ws = ad = scs = 0
            dp = dy = 0.0
        else:
            raw = raw_actions[i - 1]
            ws, ad, scs = gf_codes(raw)
            dp, dy = float(raw[PITCH]) / DEG_PER_UNIT, float(raw[YAW]) / DEG_PER_UNIT
        actions[str(i)] = {"ws": ws, "ad": ad, "scs": scs, "pitch": float(s.pitch), "yaw": float(s.yaw),
                           "pitch_delta": dp, "yaw_delta": dy, "pos": [float(v) for v in s.pos]}
    return {"biome": biome, "initial_weather": weather, "start_time": start_time, "actions": actions}


def gf_paths(root, clip):
    base = os.path.join(root, "data_2003")
    return {"video": os.path.join(base, "video", f"{clip}.mp4"),
            "metadata": os.path.join(base, "metadata", f"{clip}.json"),
            "groundtruth": os.path.join(base, "groundtruth", f"{clip}.json"),
            "annotation": os.path.join(base, "annotation.csv")}


def write_gf_annotation(root, rows):
    """rows: (clip, start_frame, end_frame, prompt). Columns as in GF-Minecraft."""
    path = gf_paths(root, "x")["annotation"]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["Original video name", "Start frame index", "End frame index", "Prompt"])
    for clip, start, end, prompt in rows:
        w.writerow([f"{clip}.mp4", start, end, prompt])
    with open(path, "w") as f:
        f.write(buf.getvalue())


# ----------------------------------------------------------------------------- MineRL

MINERL_ENV = "MineRLTreechop-v0"


def minerl_dir(root, stream):
    return os.path.join(root, MINERL_ENV, stream)


def minerl_arrays(raw_actions) -> dict:
    """Raw ticks [N, 9] -> rendered.npz arrays keyed the way MineRL v0.4 keys them."""
    raw = np.asarray(raw_actions, dtype=np.float32).reshape(-1, 9)
    key = lambda i: (raw[:, i] > 0.5).astype(np.int64)
    return {
        "reward": np.zeros(len(raw), dtype=np.float32),
        "action$forward": key(FORWARD), "action$back": key(BACK), "action$left": key(LEFT),
        "action$right": key(RIGHT), "action$jump": key(JUMP), "action$sneak": key(SNEAK),
        "action$sprint": key(SPRINT), "action$attack": np.zeros(len(raw), dtype=np.int64),
        "action$camera": np.stack([raw[:, PITCH], raw[:, YAW]], axis=1).astype(np.float32),
    }


def minerl_metadata(stream, num_actions, video_frames) -> dict:
    return {"success": False, "duration_ms": int(num_actions) * 50, "duration_steps": int(num_actions),
            "total_reward": 0.0, "stream_name": stream, "true_video_frame_count": int(video_frames)}


def write_npz(path, arrays):
    tmp = path + ".tmp.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
