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


def test_a_failed_stage_skips_what_needs_it_and_the_check_fails(tmp_path, capsys):
    import json

    import gpu_check
    check = gpu_check.Check(str(tmp_path / "work"), timeout=60, stop_on_failure=False)
    made = tmp_path / "made.txt"
    assert check.run("writes a file", [sys.executable, "-c", f"open({str(made)!r}, 'w').write('x'); "
                                       "print('peak GPU memory: 1.50 GiB allocated, 2.00 GiB reserved')"]) is not None
    assert check.run("fails", [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]) is None
    assert check.run("needs the missing output", [sys.executable, "-c", "pass"], needs=[str(tmp_path / "never")]) is None
    assert check.run("needs the made file", [sys.executable, "-c", "pass"], needs=[str(made)]) is not None
    with pytest.raises(SystemExit) as e:
        check.finish()
    assert e.value.code == 1
    out = capsys.readouterr().out
    assert "FAILED: fails (exit 3)" in out and "1 stage(s) FAILED: fails" in out
    summary = json.loads((tmp_path / "work" / "summary.json").read_text())
    assert [s["status"] for s in summary["stages"]] == ["ok", "failed", "skipped", "ok"]
    assert summary["stages"][0]["peak_gib_allocated"] == 1.5
    assert "boom" in (tmp_path / "work" / summary["stages"][1]["log"]).read_text()


def test_time_limit_skips_the_stages_after_it(tmp_path, capsys):
    import gpu_check
    check = gpu_check.Check(str(tmp_path / "work"), timeout=60, stop_on_failure=False, time_limit=0.5)
    import time
    time.sleep(0.6)
    assert check.run("too late", [sys.executable, "-c", "pass"]) is None
    assert check.results[-1]["status"] == "skipped" and "time_limit" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        check.finish()
    assert e.value.code == 1


def test_bench_gpu_play_figures_on_cpu(tmp_path):
    """bench/bench_gpu.py (run on a GPU machine) checked here on CPU at tiny size: the play step
    eager and compiled, each a figure, and the compiled one made graphs."""
    import json
    out = tmp_path / "bench_gpu.json"
    r = subprocess.run([sys.executable, "-m", "bench.bench_gpu", "--device", "cpu", "--tiny", "--configs", "",
                        "--play_configs", "quickstart", "--play_steps", "3", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    play = json.loads(out.read_text())["play"]
    assert play["quickstart eager"]["model_step_ms"] > 0 and play["quickstart eager"]["graphs"] == 0
    assert play["quickstart compiled"]["model_step_ms"] > 0 and play["quickstart compiled"]["graphs"] >= 1
