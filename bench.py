"""Run every benchmark in bench/ and write one JSON file plus a table.

    python bench.py                     # all benchmarks -> reports/bench.json
    python bench.py --only sandbox,live --quick

Each bench/bench_<area>.py exposes run(quick) -> dict of figures and the configuration they
were measured with. Figures are wall-clock rates on whatever machine runs this: compare only
numbers taken on the same machine, with nothing else running. On a CUDA machine,
`python -m bench.bench_gpu` compares eager and compiled training and play steps on the GPU.
"""
import argparse
import importlib
import json
import os
import platform
import time
import traceback

import torch

AREAS = ["sandbox", "preprocess", "tokenizer", "train", "equal", "live", "memory"]


def flatten(prefix, value, out):
    if isinstance(value, dict):
        for k, v in value.items():
            flatten(f"{prefix}.{k}" if prefix else k, v, out)
    else:
        out[prefix] = value
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(AREAS), help="comma-separated areas to run")
    parser.add_argument("--quick", action="store_true", help="shorter runs (noisier figures)")
    parser.add_argument("--out", default="reports/bench.json", help="where to write the JSON")
    args = parser.parse_args()

    results = {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "quick": args.quick,
    }
    for area in [a.strip() for a in args.only.split(",") if a.strip()]:
        if area not in AREAS:
            raise SystemExit(f"unknown benchmark area {area!r}; choose from {', '.join(AREAS)}")
        print(f"\n##### {area}", flush=True)
        start = time.time()
        try:
            module = importlib.import_module(f"bench.bench_{area}")
            results[area] = module.run(quick=args.quick)
        except Exception as e:  # one broken benchmark should not hide the others
            traceback.print_exc()
            results[area] = {"error": f"{type(e).__name__}: {e}"}
        results[area]["seconds"] = round(time.time() - start, 1)

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print("\n| benchmark | figure |\n|---|---|")
    for area in AREAS:
        if area in results:
            for key, value in flatten("", results[area], {}).items():
                shown = f"{value:.4g}" if isinstance(value, float) else value
                print(f"| {area}.{key} | {shown} |")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
