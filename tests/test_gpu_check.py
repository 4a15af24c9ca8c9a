"""gpu_check.py: a clear one-line refusal without CUDA, and its stages end to end on CPU at tiny sizes."""
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the check would run")
def test_without_cuda_one_line_and_nonzero():
    r = subprocess.run([sys.executable, "gpu_check.py"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "no CUDA device" in r.stderr


def test_dry_run_on_cpu(tmp_path):
    env = dict(os.environ, SDL_VIDEODRIVER="dummy", SDL_AUDIODRIVER="dummy")
    r = subprocess.run([sys.executable, "gpu_check.py", "--device", "cpu", "--tiny", "--steps", "6",
                        "--work", str(tmp_path / "work")], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "gpu_check: all stages passed" in r.stdout and "steps/s" in r.stdout
