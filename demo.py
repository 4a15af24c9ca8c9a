"""The quickstart, end to end on the built-in sandbox: data -> tokenizer -> tokens -> world model -> report.

    python demo.py            # (or `make demo`) about 14 minutes on a 2-core CPU
    python demo.py --fresh    # start over instead of skipping finished stages

Each stage is skipped when its output is already there, so an interrupted demo picks up where it
stopped (world-model training resumes from its last checkpoint). At the end it compares the
trained model with an untrained one of the same size and prints the command to play.
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time

PY = sys.executable
DATA = "data/sandbox_gf"
TOKENIZER = "checkpoints/tokenizer"
TOKENS = "data/tokens"
WORLD = "checkpoints/world"
REPORTS = "reports/quickstart"

# A stage is done when its marker file exists; markers are written only after the stage succeeds.
STAGES = [
    ("sandbox data", os.path.join(DATA, ".done"),
     [PY, "-m", "sandbox.generate", "--format", "gamefactory", "--out", DATA,
      "--clips", "48", "--frames", "256", "--seed", "0"]),
    ("tokenizer", os.path.join(TOKENIZER, "tokenizer.pt"),
     [PY, "-m", "vq_vae.train", "--config", "configs/tokenizer_quickstart.yaml", "--data", DATA, "--out", TOKENIZER]),
    ("preprocess", os.path.join(TOKENS, ".done"),
     [PY, "preprocess.py", "--input", DATA, "--format", "gamefactory",
      "--tokenizer", os.path.join(TOKENIZER, "tokenizer.pt"), "--out", TOKENS, "--workers", "0", "--sticky", "0.04", "--sticky_track", "2"]),
    ("world model", os.path.join(WORLD, ".done"),
     [PY, "train.py", "--config", "configs/quickstart.yaml", "--data", TOKENS, "--out", WORLD]),
    ("evaluate trained", os.path.join(REPORTS, "trained", "report.json"),
     [PY, "evaluate.py", "--checkpoint", WORLD, "--data", TOKENS, "--episodes", "16", "--out", os.path.join(REPORTS, "trained")]),
    ("evaluate untrained", os.path.join(REPORTS, "untrained", "report.json"),
     [PY, "evaluate.py", "--checkpoint", WORLD, "--data", TOKENS, "--episodes", "16", "--untrained", "true",
      "--out", os.path.join(REPORTS, "untrained")]),
]


def run_stage(i, name, marker, cmd):
    print(f"\n=== [{i}/{len(STAGES)}] {name} ===", flush=True)
    if os.path.exists(marker):
        print(f"already done ({marker} exists): skipped", flush=True)
        return 0.0
    if name == "world model" and os.path.isdir(WORLD) and any(f.startswith("ckpt_") for f in os.listdir(WORLD)):
        cmd = cmd + ["--resume", "true"]
        print(f"found checkpoints in {WORLD}: resuming", flush=True)
    print("$ " + " ".join(cmd), flush=True)
    start = time.time()
    result = subprocess.run(cmd)
    if result.returncode != 0:
        sys.exit(f"\ndemo: stage '{name}' failed (exit {result.returncode}). Fix the error above and run "
                 f"the demo again: finished stages are skipped.")
    if marker.endswith(".done"):
        with open(marker, "w") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    return time.time() - start


# Which way is better, for the headline numbers where that is clear (the rest are diagnostics).
HIGHER_IS_BETTER = ("tf_accuracy", "tf_argmax_decoded_psnr", "tf_argmax_decoded_psnr_pooled", "tf_accuracy_guided",
                    "tf_argmax_decoded_psnr_pooled_guided", "psnr@1", "psnr_pooled@1", "psnr_pooled@16", "psnr@16",
                    "ssim@16", "psnr@32", "ssim@32", "psnr_video@16", "psnr_pooled_video@16", "psnr_sandbox@16",
                    "code_diversity_match", "controllability", "yaw_direction_accuracy", "pitch_direction_accuracy",
                    "action_response", "ws_assignment_accuracy")
LOWER_IS_BETTER = ("tf_cross_entropy", "tf_cross_entropy_guided")
CLOSER_TO_ONE_IS_BETTER = ("sharpness_ratio_min", "sharpness_ratio_mean", "code_diversity_ratio", "yaw_shift_vs_truth",
                           "pitch_shift_vs_truth")  # 1 = like the truth


def compare_reports():
    """Put the trained and untrained headline numbers side by side (reports/quickstart/summary.md)."""
    with open(os.path.join(REPORTS, "trained", "report.json")) as f:
        trained = json.load(f)["headline"]
    with open(os.path.join(REPORTS, "untrained", "report.json")) as f:
        untrained = json.load(f)["headline"]

    def fmt(v):
        return f"{v:.4g}" if isinstance(v, (int, float)) else str(v)

    lines = ["| metric | trained | untrained | trained better? |", "|---|---|---|---|"]
    for key, t in trained.items():
        u = untrained.get(key)
        verdict = ""
        if isinstance(t, (int, float)) and isinstance(u, (int, float)):
            if key in HIGHER_IS_BETTER:
                verdict = "yes" if t > u else "NO"
            elif key in LOWER_IS_BETTER:
                verdict = "yes" if t < u else "NO"
            elif key in CLOSER_TO_ONE_IS_BETTER and t > 0 and u > 0:
                verdict = "yes" if abs(math.log(t)) < abs(math.log(u)) else "NO"
        lines.append(f"| {key} | {fmt(t)} | {fmt(u)} | {verdict} |")
    table = "\n".join(lines)
    with open(os.path.join(REPORTS, "summary.md"), "w") as f:
        f.write("# Quickstart: trained vs untrained world model\n\n" + table + "\n")
    return table


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fresh", action="store_true", help="delete the demo's outputs first and run every stage")
    args = parser.parse_args()
    os.chdir(os.path.dirname(os.path.abspath(__file__)))
    if args.fresh:
        for path in (DATA, TOKENIZER, TOKENS, WORLD, REPORTS):
            shutil.rmtree(path, ignore_errors=True)
    timings = {}
    for i, (name, marker, cmd) in enumerate(STAGES, 1):
        timings[name] = run_stage(i, name, marker, cmd)
    print("\n=== summary ===")
    for name, seconds in timings.items():
        print(f"  {name:<20} {seconds / 60:6.1f} min" if seconds else f"  {name:<20}  (skipped)")
    print("\n" + compare_reports())
    print(f"\nReport: {os.path.join(REPORTS, 'trained', 'report.md')} (and {os.path.join(REPORTS, 'summary.md')})")
    print(f"Play:   {os.path.relpath(PY)} live_inference.py --checkpoint {WORLD}")


if __name__ == "__main__":
    main()
