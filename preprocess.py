"""Turn raw Minecraft videos + actions into token files for world-model training.

    python preprocess.py --input data/sandbox_gf --tokenizer checkpoints/tokenizer/tokenizer.pt
                         --out data/tokens [--format auto] [--fps 16] [--workers 2] [--shard 0/4]

Per trajectory: keep every `stride` = round(source_fps / fps) aligned frames, aggregate the
raw ticks between kept frames into one normalized action (actions.aggregate), resize frames to
the tokenizer's frame size (cv2.INTER_AREA), encode them in batches, and write `<name>.npz`
(tokens [K, h, w] uint16, actions [K-1, 7] float32, action_mask [7], frame_index [K] int64,
raw_degrees [K-1, 2] float32, meta: a JSON string). Then `manifest.json` is rebuilt from every
finished .npz in --out, so shards on different machines can share one folder.

Resumable: a trajectory whose .npz already exists (same tokenizer, same stride) is skipped; every
file is written to a temp name and renamed, so a killed run never leaves a half file that looks
finished. Bad inputs are skipped with one line each and counted in the summary; the exit status
is non-zero only when nothing could be processed.
"""
import collections
import io
import json
import multiprocessing as mp
import os
import sys
import time
import zipfile
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from tqdm import tqdm

import actions as act
import datasets
from config import format_config, opt, parse_config
from utils import BadFile, atomic_write_bytes, atomic_write_json, resolve_device


@dataclass
class Config:
    input: str = opt("", "dataset root (GF-Minecraft data_* folders, MineRL env folders, or VPT mp4+jsonl)")
    format: str = opt("auto", "gamefactory | minerl | vpt | auto (detected from the folder layout)")
    tokenizer: str = opt("", "tokenizer checkpoint, e.g. checkpoints/tokenizer/tokenizer.pt (vq_vae.train)")
    out: str = opt("", "output folder for <name>.npz token files and manifest.json")
    fps: float = opt(0.0, "target frame rate; kept frames are every round(source_fps / fps) ticks (0 = every frame)")
    skip_seconds: float = opt(0.0, "drop the first S seconds of every trajectory (e.g. world loading)")
    workers: int = opt(1, "decoder processes feeding the encoder (0 = decode in the main process)")
    shard: str = opt("0/1", "I/N: only trajectories whose index in sorted-name order is I mod N (split across machines)")
    device: str = opt("auto", "encoder device: auto | cpu | cuda | cuda:1 ...")
    batch_size: int = opt(64, "frames per encoder batch")
    sticky: float = opt(0.0, "a cell keeps the previous frame's code while its cosine similarity is within this of the "
                             "best code's (0 = plain nearest code; EMA tokenizers only): fewer near-duplicate flips")
    sticky_track: int = opt(0, "with --sticky: the kept codes follow the picture by whole cells, the offset (up to this "
                               "many cells per frame) that keeps the most of them, so camera turns move codes (0 = off)")
    threads: int = opt(0, "torch CPU threads for the encoder (0 = auto: CPU cores minus decoder workers, at least 1)")
    min_frames: int = opt(2, "skip trajectories with fewer kept frames than this")
    limit: int = opt(0, "process at most this many trajectories of this shard (0 = all), for quick tries")
    manifest_only: bool = opt(False, "only rebuild manifest.json from the .npz files in --out (after all shards)")


# ----------------------------------------------------------------------------- token files

def npz_bytes(arrays: dict) -> bytes:
    """An uncompressed .npz (memory-mappable) with fixed zip timestamps, so identical inputs give
    byte-identical files (np.savez stamps the current time)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, value in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0)), member.getvalue())
    return buf.getvalue()


def read_meta(path):
    """The JSON `meta` member of a token file, or None if the file is unreadable."""
    try:
        with zipfile.ZipFile(path) as zf, zf.open("meta.npy") as f:
            return json.loads(str(np.lib.format.read_array(f, allow_pickle=False)))
    except Exception:
        return None


def token_files(out_dir):
    """Finished token files: <name>.npz, excluding temp files (.tmp_*) a killed run left behind."""
    if not os.path.isdir(out_dir):
        return []
    return sorted(f for f in os.listdir(out_dir) if f.endswith(".npz") and not f.startswith("."))


def build_manifest(out_dir) -> dict:
    """manifest.json from what is on disk. Refuses a folder that mixes tokenizers."""
    entries, tokenizers, bad = [], {}, []
    for f in token_files(out_dir):
        meta = read_meta(os.path.join(out_dir, f))
        if meta is None:
            bad.append(f)
            continue
        tokenizers.setdefault(meta["tokenizer"]["hash"], meta["tokenizer"])
        entries.append({"file": f, **{k: meta[k] for k in datasets.TRAJECTORY_KEYS if k != "file"},
                        "skip_frames": meta["skip_frames"], "action_mask": meta["action_mask"]})
    for f in bad:
        print(f"manifest: {os.path.join(out_dir, f)}: unreadable token file, left out (delete it and re-run)")
    if len(tokenizers) > 1:
        raise SystemExit(f"{out_dir}: token files from {len(tokenizers)} tokenizers ({', '.join(tokenizers)}); "
                         "one output folder must hold one tokenizer's tokens")
    if not entries:
        raise SystemExit(f"{out_dir}: no token files to put in a manifest")
    fps_values = sorted({round(e["fps"], 6) for e in entries})
    if len(fps_values) > 1:
        print(f"manifest: WARNING trajectories have different effective fps {fps_values}; top-level fps is null")
    return {"version": 1, "action_names": list(act.ACTION_NAMES), "tokenizer": next(iter(tokenizers.values())),
            "fps": fps_values[0] if len(fps_values) == 1 else None,
            "num_frames": int(sum(e["length"] for e in entries)), "trajectories": entries}


def write_manifest(out_dir):
    manifest = build_manifest(out_dir)
    path = os.path.join(out_dir, "manifest.json")
    atomic_write_json(manifest, path)
    os.chmod(path, 0o644)
    print(f"wrote {path}: {len(manifest['trajectories'])} trajectories, {manifest['num_frames']} frames")


# ----------------------------------------------------------------------------- planning

@dataclass
class Job:
    traj: datasets.Trajectory
    stride: int
    skip: int          # aligned frames dropped at the start (--skip_seconds)
    length: int        # K kept frames
    size: tuple        # (W, H) for cv2

    def frame_index(self):  # [K] indices of kept frames among the trajectory's aligned frames
        return self.skip + np.arange(self.length, dtype=np.int64) * self.stride

    def decode(self):
        """Iterator of the K kept frames, resized: uint8 (H, W, 3) each."""
        stop = self.skip + (self.length - 1) * self.stride + 1
        return self.traj.frames(start=self.skip, stop=stop, size=self.size, step=self.stride)


def plan_job(traj, cfg, size):
    """Stride, skip and kept-frame count for one trajectory; raises DataError when too short."""
    source_fps = traj.fps
    if source_fps <= 0:
        raise datasets.DataError(f"{traj.video_path}: the container reports no frame rate")
    stride = max(1, int(round(source_fps / cfg.fps))) if cfg.fps > 0 else 1
    skip = int(round(cfg.skip_seconds * source_fps))
    usable = traj.num_frames - skip
    length = len(act.kept_frame_indices(usable, stride)) if usable > 0 else 0
    if length < max(cfg.min_frames, 2):
        raise datasets.DataError(f"{traj.video_path}: only {length} kept frames after skipping {skip} and stride "
                                 f"{stride} (need {max(cfg.min_frames, 2)})")
    return Job(traj, stride, skip, length, size)


def parse_shard(text):
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise SystemExit(f"--shard must look like I/N (e.g. 0/4), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise SystemExit(f"--shard {text}: need 0 <= I < N")
    return i, n


def decode_job(job: Job):
    """Worker: decode + resize all kept frames. Returns (frames [K, H, W, 3] uint8, None) or (None, reason)."""
    cv2.setNumThreads(1)  # the processes are the parallelism
    try:
        frames = np.stack(list(job.decode()))
        return frames, None
    except datasets.DataError as e:
        return None, str(e)
    except Exception as e:
        return None, f"{job.traj.video_path}: {type(e).__name__}: {e}"


# ----------------------------------------------------------------------------- encode + write

def batches(frames, batch_size):
    batch = []
    for f in frames:
        batch.append(f)
        if len(batch) == batch_size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


@torch.inference_mode()
def encode_all(tokenizer, frames, batch_size, device, pbar, sticky=0.0, track=0):
    """frames: iterable of uint8 (H, W, 3) -> tokens [K, h, w] uint16. Batches never span trajectories,
    so a trajectory's tokens do not depend on what else is processed (resume gives identical files).
    sticky > 0 carries each cell's code from frame to frame, moved by up to `track` cells (Tokenizer.encode)."""
    out, prev = [], None
    for batch in batches(frames, batch_size):  # (B, H, W, 3)
        codes = tokenizer.encode(torch.from_numpy(batch).to(device), sticky=sticky, prev=prev, track=track)  # (B, h, w)
        prev = codes[-1]
        out.append(codes.cpu().numpy().astype(np.uint16))
        pbar.update(len(batch))
    return np.concatenate(out)


def write_token_file(job: Job, tokens, tok_info, out_dir):
    traj, k, s = job.traj, job.length, job.stride
    raw = traj.raw_actions[job.skip: job.skip + (k - 1) * s]  # (K-1)*stride ticks
    actions = act.aggregate(raw, s) * traj.mask                 # (K-1, 7); masked components are 0
    degrees = act.raw_degrees(raw, s)                           # (K-1, 2)
    if len(tokens) != k or len(actions) != k - 1:
        raise datasets.DataError(f"{traj.video_path}: got {len(tokens)} frames and {len(actions)} actions, expected {k}")
    meta = {"name": traj.name, "length": k, "source": traj.source, "fps": traj.fps / s, "source_fps": traj.fps,
            "stride": s, "skip_frames": job.skip, "video_path": traj.video_path, "groundtruth": traj.groundtruth,
            "action_mask": traj.mask.tolist(), "tokenizer": tok_info}
    data = npz_bytes({"tokens": tokens, "actions": actions.astype(np.float32),
                      "action_mask": traj.mask.astype(np.float32), "frame_index": job.frame_index(),
                      "raw_degrees": degrees.astype(np.float32), "meta": np.array(json.dumps(meta))})
    path = os.path.join(out_dir, traj.name + ".npz")
    atomic_write_bytes(path, data)
    os.chmod(path, 0o644)  # mkstemp makes 0600 files; token folders are shared between users and jobs


def load_tokenizer_info(path, device):
    from vq_vae import load_tokenizer  # imported here: the data readers do not need the model code
    tok = load_tokenizer(path, device=str(device), what="--tokenizer")
    if tok.codebook_size > np.iinfo(np.uint16).max + 1:
        raise SystemExit(f"{path}: codebook_size {tok.codebook_size} does not fit the uint16 token files")
    info = {"hash": tok.hash, "codebook_size": int(tok.codebook_size), "grid": [int(x) for x in tok.grid],
            "frame_size": [int(x) for x in tok.frame_size], "path": os.path.abspath(path)}
    return tok, info


# ----------------------------------------------------------------------------- main

def main(cfg: Config) -> dict:
    if cfg.manifest_only:
        write_manifest(cfg.out)
        return {}
    for flag in ("input", "tokenizer", "out"):
        if not getattr(cfg, flag):
            raise SystemExit(f"--{flag} is required")
    if cfg.format not in ("auto",) + datasets.SOURCES:
        raise SystemExit(f"--format must be auto or one of {', '.join(datasets.SOURCES)}, got {cfg.format!r}")
    if cfg.batch_size < 1 or cfg.workers < 0:
        raise SystemExit("--batch_size must be >= 1 and --workers >= 0")
    shard_i, shard_n = parse_shard(cfg.shard)
    if not os.path.isdir(cfg.input):
        raise BadFile(f"--input {cfg.input}: " + ("is a file, expected a dataset folder" if os.path.exists(cfg.input)
                                                   else "folder not found"))
    t_start = time.time()

    # deterministic partition by sorted name, before any file is parsed
    trajs, skipped = datasets.find_trajectories(cfg.input, cfg.format, shard=(shard_i, shard_n))
    for _, why in skipped:
        print(f"skip {why}")
    if cfg.limit > 0:
        trajs = trajs[:cfg.limit]
    for t in trajs:
        for note in t.notes:
            print(f"note {note}")

    # Spawned, not forked: a fork of a process whose OpenCV or torch thread pools already run (a caller
    # that decoded or encoded before, e.g. a test session) can deadlock inside cv2.setNumThreads.
    pool = mp.get_context("spawn").Pool(cfg.workers) if cfg.workers > 0 else None
    torch_threads = torch.get_num_threads()  # restored at the end: main() may run inside another program
    try:
        device = resolve_device(cfg.device)
        threads = encoder_threads(cfg, device)
        torch.set_num_threads(threads)
        tokenizer, tok_info = load_tokenizer_info(cfg.tokenizer, device)
        if cfg.sticky < 0 or (cfg.sticky > 0 and tokenizer.config.get("quantizer") != "ema"):
            raise SystemExit(f"--sticky {cfg.sticky}: needs a value >= 0, and > 0 needs an EMA (codebook) tokenizer; "
                             f"{cfg.tokenizer} uses {tokenizer.config.get('quantizer')}")
        if cfg.sticky_track < 0 or (cfg.sticky_track > 0 and cfg.sticky <= 0):
            raise SystemExit(f"--sticky_track {cfg.sticky_track}: needs a value >= 0, and > 0 needs --sticky > 0")
        if cfg.sticky > 0:
            tok_info["sticky"] = cfg.sticky
        if cfg.sticky_track > 0:
            tok_info["sticky_track"] = cfg.sticky_track
        os.makedirs(cfg.out, exist_ok=True)  # only once every input has been checked
        fh, fw = tok_info["frame_size"]
        print(f"tokenizer {cfg.tokenizer}: hash {tok_info['hash']}, {tok_info['codebook_size']} codes, "
              f"grid {tok_info['grid']}, frames {fw}x{fh}, device {device}, {threads} CPU threads, "
              f"{cfg.workers} decoder workers")

        jobs, rates = [], collections.Counter()
        for t in trajs:
            try:
                jobs.append(plan_job(t, cfg, (fw, fh)))
                rates[(t.source, jobs[-1].traj.fps, jobs[-1].stride)] += 1
            except datasets.DataError as e:
                skipped.append((t.video_path, str(e)))
                print(f"skip {e}")
        for (source, fps, stride), n in sorted(rates.items()):
            asked = f"asked for {cfg.fps:g}" if cfg.fps > 0 else "every frame kept"
            print(f"{source}: {n} trajectories at {fps:.3f} fps -> stride {stride} -> {fps / stride:.3f} fps ({asked})")

        todo, done = check_existing(jobs, tok_info, cfg.out)
        print(f"shard {shard_i}/{shard_n}: {len(jobs)} trajectories, {len(done)} already done, {len(todo)} to do")

        n_frames, processed, t_loop = 0, [], time.time()
        pbar = tqdm(total=sum(j.length for j in todo), unit="frame", desc="preprocess", dynamic_ncols=True,
                    file=sys.stderr, mininterval=0.5 if sys.stderr.isatty() else 10)  # a log file gets few lines
        for job, frames, err in decoded(todo, pool, cfg.workers):
            if err is None:
                try:
                    tokens = encode_all(tokenizer, frames, cfg.batch_size, device, pbar, cfg.sticky, cfg.sticky_track)
                    write_token_file(job, tokens, tok_info, cfg.out)
                    processed.append(job.traj.name)
                    n_frames += job.length
                    continue
                except datasets.DataError as e:  # truncated video noticed while streaming (workers=0)
                    err = str(e)
            skipped.append((job.traj.video_path, err))
            tqdm.write(f"skip {err}", file=sys.stdout)
            pbar.update(job.length)
        pbar.close()
        loop_seconds = time.time() - t_loop
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        torch.set_num_threads(torch_threads)

    elapsed = time.time() - t_start
    if token_files(cfg.out):
        write_manifest(cfg.out)
    fps = n_frames / max(loop_seconds, 1e-9)  # decode + resize + encode + write, without start-up
    print(f"summary: processed {len(processed)} trajectories ({n_frames} frames in {loop_seconds:.1f} s, {fps:.1f} "
          f"frames/s, {cfg.workers} workers; {elapsed:.1f} s in all), already done {len(done)}, skipped {len(skipped)}")
    reasons = collections.Counter(short_reason(why) for _, why in skipped)
    for why, n in reasons.most_common():
        print(f"  skipped {n}: {why}")
    warnings = collections.Counter(short_reason(note) for t in trajs for note in t.notes)
    for why, n in warnings.most_common():
        print(f"  warning {n}: {why} (processed)")
    if not processed and not done:
        print("nothing could be processed", file=sys.stderr)
        raise SystemExit(1)
    return {"processed": len(processed), "already_done": len(done), "skipped": len(skipped), "frames": n_frames,
            "seconds": loop_seconds, "total_seconds": elapsed, "frames_per_s": fps, "workers": cfg.workers,
            "threads": threads}


def encoder_threads(cfg, device) -> int:
    """--threads, or on CPU the cores left after the decoder workers (oversubscribing a small CPU
    measured ~1.7x slower); on GPU torch's default."""
    if cfg.threads > 0:
        return cfg.threads
    if device.type != "cpu":
        return torch.get_num_threads()
    return max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) - cfg.workers))


def check_existing(jobs, tok_info, out_dir):
    """Split jobs into (to do, already done). A finished file made by another tokenizer or with
    another stride is an error: one folder holds one consistent dataset."""
    todo, done = [], []
    for job in jobs:
        path = os.path.join(out_dir, job.traj.name + ".npz")
        meta = read_meta(path) if os.path.exists(path) else None
        if meta is None:
            todo.append(job)  # absent, or unreadable (then rewritten)
            continue
        if meta["tokenizer"]["hash"] != tok_info["hash"]:
            raise SystemExit(f"{path} was made by tokenizer {meta['tokenizer']['hash']}, this run uses "
                             f"{tok_info['hash']}; write to a new --out folder")
        for key in ("sticky", "sticky_track"):
            if meta["tokenizer"].get(key, 0) != tok_info.get(key, 0):
                raise SystemExit(f"{path} was made with --{key} {meta['tokenizer'].get(key, 0)}, this run uses "
                                 f"{tok_info.get(key, 0)}; write to a new --out folder")
        if (meta["stride"], meta["skip_frames"], meta["length"]) != (job.stride, job.skip, job.length):
            raise SystemExit(f"{path} was made with stride {meta['stride']} / skip {meta['skip_frames']} / "
                             f"{meta['length']} frames, this run gives stride {job.stride} / skip {job.skip} / "
                             f"{job.length} frames; write to a new --out folder")
        done.append(job)
    return todo, done


def decoded(jobs, pool, workers):
    """Yield (job, frames, error) in job order. With a pool, at most 2 x workers trajectories are
    decoded ahead of the encoder, which bounds memory; without one, frames stream lazily."""
    if pool is None:
        for job in jobs:
            yield job, job.decode(), None
        return
    pending, it = collections.deque(), iter(jobs)
    for job in it:
        pending.append((job, pool.apply_async(decode_job, (job,))))
        if len(pending) >= 2 * workers:
            break
    while pending:
        job, result = pending.popleft()
        nxt = next(it, None)
        if nxt is not None:
            pending.append((nxt, pool.apply_async(decode_job, (nxt,))))
        frames, err = result.get()
        yield job, frames, err


def short_reason(why: str) -> str:
    """The problem part of a skip line, for the summary (drops the file name)."""
    return why.split(": ", 1)[1].split(" (")[0] if ": " in why else why


if __name__ == "__main__":
    config = parse_config(Config, description=__doc__)
    print(format_config(config))
    main(config)
