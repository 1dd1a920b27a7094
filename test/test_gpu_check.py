"""scripts/gpu_check.sh: its CPU dry run (every step's CPU path) and the no-GPU exit."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_check.sh"
STEPS = [
    "detect",
    "install",
    "tensorrt_tests",
    "ort_cuda_parity",
    "bench",
    "train_amp_resume",
    "ddp",
]


def _env() -> dict:
    env = dict(os.environ, LECHPE_PYTHON=sys.executable)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("_ROS_WHEELS_BOOTSTRAP_COMPLETE", None)
    env.pop("LECHPE_GPU_CHECK_DRY_RUN", None)
    return env


def _results(report: Path) -> dict:
    text = report.read_text(encoding="utf-8")
    block = re.search(r"## All results \(JSON\)\n\n```json\n(.*?)\n```", text, re.S)
    assert block, text[-2000:]
    return json.loads(block.group(1))


def test_dry_run_runs_every_cpu_path_and_reports_it(tmp_path):
    report = tmp_path / "report.md"
    # Generous boxes: the time limits are for the GPU machine, not a shared 2-core CI CPU.
    env = dict(_env(), LECHPE_GPU_CHECK_DRY_RUN="1", LECHPE_GPU_CHECK_LIMIT_S="1500")
    proc = subprocess.run(
        [str(SCRIPT), "--report", str(report), "--budget", "1400", "--box-scale", "5"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = _results(report)
    assert data["dry_run"] is True
    steps = {s["step"]: s for s in data["steps"]}
    assert [s["step"] for s in data["steps"]] == STEPS
    bad = {
        k: (v["status"], v["summary"], v.get("output_tail", "")[-800:])
        for k, v in steps.items()
        if v["status"] != "dry-run"
    }
    assert not bad, bad
    assert data["verdict"] == "Every step passed."
    text = report.read_text(encoding="utf-8")
    assert "DRY RUN (CPU paths only)" in text
    for name in STEPS:
        assert f"| {name} | dry-run |" in text
    # what a GPU machine would install: the GPU build of the locked onnxruntime
    import onnxruntime

    assert f"onnxruntime-gpu[cuda,cudnn]=={onnxruntime.__version__}" in steps["install"]["summary"]
    assert "passed" in steps["tensorrt_tests"]["summary"]
    parity = steps["ort_cuda_parity"]
    assert parity["providers"][0] == "CPUExecutionProvider"
    assert parity["max_abs_deg"] <= 0.05 and parity["faces"] == 18
    assert parity["angle_spread_deg"] > 1.0  # the random model's outputs vary: not a vacuous match
    rows = steps["bench"]["network_rows"]
    assert {(r["backend"], r["batch"]) for r in rows} == {
        (b, n) for b in ("onnxruntime", "torch") for n in (1, 2)
    }
    assert all(r["ms"] > 0 for r in rows)
    assert any(line.startswith("| onnxruntime | 1 |") for line in steps["bench"]["lechpe_bench"])
    resume = steps["train_amp_resume"]
    assert resume["max_abs_diff"] <= 1e-6 and resume["tensors"] > 50
    # the run really stopped inside stage 2 (9 steps in all) and resumed there
    assert resume["stopped_at_step"] == 5 and resume["resumed_phase"] == "stage2"
    assert (steps["ddp"]["processes"], steps["ddp"]["backend"]) == (1, "gloo")


def test_without_a_gpu_it_says_so_and_exits_0(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the real check would run")
    report = tmp_path / "report.md"
    proc = subprocess.run(
        [str(SCRIPT), "--report", str(report)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no NVIDIA GPU (nvidia-smi / torch.cuda): nothing to check" in proc.stderr
    data = _results(report)
    assert data["verdict"] == "No NVIDIA GPU here: nothing to check (exit 0)."
    assert [s["step"] for s in data["steps"]] == ["detect"]
    assert data["steps"][0]["status"] == "no-gpu"
    assert "torch.cuda.is_available() = False" in data["steps"][0]["summary"]
