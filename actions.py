"""The one action vector, in one place.

Two representations:
- raw ticks, [N, 9] float32 in RAW_NAMES order: what a source records per game tick
  (camera in degrees, keys as 0/1). Tick i takes frame i to frame i+1.
- the normalized step vector, [K-1, 7] float32 in ACTION_NAMES order: a[t] is applied
  between kept frame t and kept frame t+1 after downsampling by an integer stride
  (`stride` raw ticks per kept frame).

Conventions (shared/DATA_FORMATS.md section 4): positive yaw turns right, positive pitch
looks down; yaw/pitch are the degrees turned over the window divided by (15 x stride),
clipped to [-1, 1]; move_z = forward - back and move_x = right - left, averaged; jump and
sprint are the max over the window (a tap counts); sneak is the mean.
"""
import numpy as np

ACTION_NAMES = ("yaw", "pitch", "move_x", "move_z", "jump", "sprint", "sneak")
ACTION_DIM = len(ACTION_NAMES)
RAW_NAMES = ("yaw_deg", "pitch_deg", "forward", "back", "left", "right", "jump", "sprint", "sneak")
RAW_DIM = len(RAW_NAMES)
DEG_PER_UNIT = 15.0  # GF-Minecraft's yaw_delta/pitch_delta unit; 1.0 normalized = 15 degrees per tick
CAMERA_INDICES = (ACTION_NAMES.index("yaw"), ACTION_NAMES.index("pitch"))
KEYBOARD_INDICES = tuple(i for i in range(ACTION_DIM) if i not in CAMERA_INDICES)

A = {name: i for i, name in enumerate(ACTION_NAMES)}
R = {name: i for i, name in enumerate(RAW_NAMES)}


def num_steps(num_ticks: int, stride: int) -> int:
    """Number of normalized steps (= kept frames - 1) that `num_ticks` raw ticks give."""
    return num_ticks // stride


def kept_frame_indices(num_frames: int, stride: int) -> np.ndarray:
    """Indices of the frames kept when `num_frames` frames (num_frames - 1 ticks) are downsampled."""
    return np.arange(0, num_steps(num_frames - 1, stride) * stride + 1, stride, dtype=np.int64)


def aggregate(raw: np.ndarray, stride: int) -> np.ndarray:
    """[N, 9] raw ticks -> [N // stride, 7] normalized step actions. A partial last window is dropped."""
    raw = np.asarray(raw, dtype=np.float64)
    if raw.ndim != 2 or raw.shape[1] != RAW_DIM:
        raise ValueError(f"raw actions must be [N, {RAW_DIM}] in order {RAW_NAMES}, got shape {raw.shape}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    k = num_steps(len(raw), stride)
    w = raw[: k * stride].reshape(k, stride, RAW_DIM)
    out = np.zeros((k, ACTION_DIM), dtype=np.float64)
    scale = DEG_PER_UNIT * stride
    out[:, A["yaw"]] = w[:, :, R["yaw_deg"]].sum(1) / scale
    out[:, A["pitch"]] = w[:, :, R["pitch_deg"]].sum(1) / scale
    out[:, A["move_x"]] = (w[:, :, R["right"]] - w[:, :, R["left"]]).mean(1)
    out[:, A["move_z"]] = (w[:, :, R["forward"]] - w[:, :, R["back"]]).mean(1)
    out[:, A["jump"]] = w[:, :, R["jump"]].max(1)
    out[:, A["sprint"]] = w[:, :, R["sprint"]].max(1)
    out[:, A["sneak"]] = w[:, :, R["sneak"]].mean(1)
    out[:, list(CAMERA_INDICES)] = np.clip(out[:, list(CAMERA_INDICES)], -1.0, 1.0)
    return out.astype(np.float32)


def raw_degrees(raw: np.ndarray, stride: int) -> np.ndarray:
    """[N, 9] raw ticks -> [N // stride, 2] total (yaw, pitch) degrees per step, unclipped."""
    raw = np.asarray(raw, dtype=np.float64)
    k = num_steps(len(raw), stride)
    w = raw[: k * stride].reshape(k, stride, RAW_DIM)
    return w[:, :, [R["yaw_deg"], R["pitch_deg"]]].sum(1).astype(np.float32)


def to_ticks(vec, stride: int) -> np.ndarray:
    """One normalized step action [7] -> [stride, 9] raw ticks that aggregate back to it
    (exactly for camera, jump and sprint; keys and sneak rounded to whole ticks)."""
    vec = np.asarray(vec, dtype=np.float64)
    ticks = np.zeros((stride, RAW_DIM), dtype=np.float64)
    ticks[:, R["yaw_deg"]] = vec[A["yaw"]] * DEG_PER_UNIT
    ticks[:, R["pitch_deg"]] = vec[A["pitch"]] * DEG_PER_UNIT

    def held(fraction):  # the first round(|f| * stride) ticks
        n = int(round(min(abs(float(fraction)), 1.0) * stride))
        return np.arange(stride) < n

    mz, mx = vec[A["move_z"]], vec[A["move_x"]]
    ticks[:, R["forward" if mz > 0 else "back"]] = held(mz)
    ticks[:, R["right" if mx > 0 else "left"]] = held(mx)
    ticks[0, R["jump"]] = 1.0 if vec[A["jump"]] >= 0.5 else 0.0
    ticks[:, R["sprint"]] = 1.0 if vec[A["sprint"]] >= 0.5 else 0.0
    ticks[:, R["sneak"]] = held(vec[A["sneak"]])
    return ticks.astype(np.float32)


def action_mask(has_camera: bool = True, has_keyboard: bool = True) -> np.ndarray:
    """[7] float32: 1 where the source records that component, 0 where it lacks it."""
    mask = np.ones(ACTION_DIM, dtype=np.float32)
    if not has_camera:
        mask[list(CAMERA_INDICES)] = 0.0
    if not has_keyboard:
        mask[list(KEYBOARD_INDICES)] = 0.0
    return mask


def make_action(yaw=0.0, pitch=0.0, move_x=0.0, move_z=0.0, jump=0.0, sprint=0.0, sneak=0.0) -> np.ndarray:
    return np.array([yaw, pitch, move_x, move_z, jump, sprint, sneak], dtype=np.float32)


def describe(vec) -> str:
    """Short human-readable form for a HUD, e.g. 'W D jump yaw+0.30'."""
    v = np.asarray(vec, dtype=np.float32)
    parts = []
    if v[A["move_z"]] > 0.25:
        parts.append("W")
    if v[A["move_z"]] < -0.25:
        parts.append("S")
    if v[A["move_x"]] < -0.25:
        parts.append("A")
    if v[A["move_x"]] > 0.25:
        parts.append("D")
    for name in ("jump", "sprint", "sneak"):
        if v[A[name]] > 0.25:
            parts.append(name)
    if abs(v[A["yaw"]]) > 1e-3:
        parts.append(f"yaw{v[A['yaw']]:+.2f}")
    if abs(v[A["pitch"]]) > 1e-3:
        parts.append(f"pitch{v[A['pitch']]:+.2f}")
    return " ".join(parts) or "idle"
