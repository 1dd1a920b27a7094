"""One check of every GPU path, for a machine with an NVIDIA GPU (run by scripts/gpu_check.sh).

Steps, each time-boxed and run in its own subprocess; a failed step is
recorded (status, numbers, the tail of its output) and the next one runs:

1. ``detect``: ``nvidia-smi -L`` and ``torch.cuda``; without a GPU the report
   says so and the script exits 0 (unless ``--dry-run``).
2. ``install``: onnxruntime-gpu (same version as the locked onnxruntime), a
   CUDA torch when the installed one is CPU-only, TensorRT when pip can
   install it (the builder wheels usually cannot be: then the TensorRT steps
   are skipped, saying why). The package index is probed first and each wheel
   downloaded before anything is uninstalled: an offline machine keeps what it has.
3. ``tensorrt_tests``: ``pytest test/test_tensorrt.py`` (engines build only
   with TensorRT + a GPU; the rest of the file runs everywhere).
4. ``ort_cuda_parity``: the same exported model on ONNX Runtime CUDA and
   CPU, max |angle difference| over real face crops <= 0.05 degrees.
5. ``bench``: network-only latency of the CUDA backends at batch 1/8/32,
   fp32 and fp16 (TensorRT fp16/fp32, torch fp32 and fp16 autocast, ONNX
   Runtime CUDA fp32), plus ``lechpe-bench`` one-face pipeline rows.
6. ``train_amp_resume``: tiny stage 1 + stage 2 on CUDA with AMP, then the
   same run interrupted inside stage 2 (``train.max_steps``) and ``--resume``d:
   the log must show the stop and the resume, and the weights must match the
   uninterrupted run.
7. ``ddp``: one ``torchrun`` training run (NCCL on GPUs; 2 processes when
   there are 2 GPUs, else 1).

``--dry-run`` (or ``LECHPE_GPU_CHECK_DRY_RUN=1``) runs every step's CPU path
with tiny sizes (no installs, CPU instead of CUDA, gloo instead of NCCL)
and writes the same report; the test suite runs it
(``test/test_gpu_check.py``).

The report is one Markdown file (default ``gpu_check_report.md``): a table
of step / status / seconds / summary, then each step's numbers and output
tail, and at the end the whole result as a JSON block.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TAIL_CHARS = 2500
PARITY_LIMIT_DEG = 0.05
#: Seconds each step may take (clipped to what is left of the overall budget).
BOXES = {
    "detect": 30,
    "install": 180,
    "tensorrt_tests": 90,
    "ort_cuda_parity": 60,
    "bench": 100,
    "train_amp_resume": 150,
    "ddp": 90,
}
TOTAL_BUDGET_S = 460  # under 8 minutes including the report


class Check:
    """Runs the steps and collects their results."""

    def __init__(
        self, dry_run: bool, report: Path, work: Path, budget_s: float, box_scale: float = 1.0
    ) -> None:
        self.dry_run = dry_run
        self.box_scale = box_scale
        self.report = report
        self.work = work
        self.deadline = time.monotonic() + budget_s
        self.python = sys.executable
        self.results: list[dict] = []
        self.gpus = 0
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = str(REPO) + os.pathsep + self.env.get("PYTHONPATH", "")
        self.env.pop("_ROS_WHEELS_BOOTSTRAP_COMPLETE", None)
        self.env["PYTHONUNBUFFERED"] = "1"

    # ------------------------------------------------------------------ plumbing

    def run(self, cmd: list[str], box: float, env: dict | None = None) -> tuple[int, str, float]:
        """Run a command with a timeout; returns (exit code, stdout+stderr, seconds).

        Exit code 124 means the time box ran out.
        """
        timeout = max(1.0, min(box * self.box_scale, self.deadline - time.monotonic()))
        start = time.monotonic()
        try:
            proc = subprocess.run(
                cmd,
                cwd=REPO,
                env=env or self.env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start
        except subprocess.TimeoutExpired as exc:
            out = (exc.stdout or b"") + (exc.stderr or b"")
            if isinstance(out, bytes):
                out = out.decode(errors="replace")
            return 124, out + f"\n[timed out after {timeout:.0f} s]", time.monotonic() - start
        except OSError as exc:
            return 127, f"{type(exc).__name__}: {exc}", time.monotonic() - start

    def left(self, name: str, start: float) -> float:
        """What is left of step ``name``'s (scaled) box, in unscaled seconds for :meth:`run`."""
        return (BOXES[name] * self.box_scale - (time.monotonic() - start)) / self.box_scale

    def python_step(self, code: str, box: float, args: list[str] | None = None):
        """Run Python code in a subprocess; its last stdout line ``RESULT {json}`` is parsed."""
        rc, out, secs = self.run([self.python, "-c", code, *(args or [])], box)
        data = {}
        for line in reversed(out.splitlines()):
            if line.startswith("RESULT "):
                data = json.loads(line[len("RESULT ") :])
                break
        return rc, out, secs, data

    def record(self, name: str, status: str, seconds: float, summary: str, **extra) -> dict:
        entry = {"step": name, "status": status, "seconds": round(seconds, 1), "summary": summary}
        entry.update(extra)
        if "output" in entry:
            entry["output_tail"] = entry.pop("output")[-TAIL_CHARS:]
        self.results.append(entry)
        print(f"gpu_check: {name}: {status} ({seconds:.0f} s) {summary}", file=sys.stderr)
        return entry

    def step(self, name: str, func) -> None:
        if time.monotonic() >= self.deadline - 5:
            self.record(name, "skipped", 0.0, "out of time (overall budget spent)")
            return
        start = time.monotonic()
        try:
            func(name)
        except Exception as exc:  # a step's own bug must not stop the others
            self.record(name, "error", time.monotonic() - start, f"{type(exc).__name__}: {exc}")

    # --------------------------------------------------------------------- steps

    def detect(self, name: str) -> None:
        smi = shutil.which("nvidia-smi")
        smi_out = ""
        if smi:
            _, smi_out, _ = self.run([smi, "-L"], 15)
        rc, out, secs, data = self.python_step(
            "import json, torch\n"
            "ok = torch.cuda.is_available()\n"
            "names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] "
            "if ok else []\n"
            "print('RESULT ' + json.dumps({'torch': torch.__version__, "
            "'torch_cuda': torch.version.cuda, 'cuda_available': ok, 'gpus': names}))",
            BOXES[name],
        )
        self.gpus = len(data.get("gpus", []))
        summary = (
            f"{self.gpus} GPU(s): {', '.join(data.get('gpus', []))}"
            if self.gpus
            else "no usable NVIDIA GPU ("
            + ("nvidia-smi absent" if not smi else "nvidia-smi present")
            + f", torch.cuda.is_available() = {data.get('cuda_available')})"
        )
        self.record(
            name,
            "pass" if self.gpus else ("dry-run" if self.dry_run else "no-gpu"),
            secs,
            summary,
            nvidia_smi=smi_out.strip()[-1000:],
            **data,
            output=out,
        )

    def install(self, name: str) -> None:
        pip = [self.python, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        rc, out, _, versions = self.python_step(
            "import json, importlib.metadata as m\n"
            "v = {}\n"
            "for p in ('onnxruntime', 'onnxruntime-gpu', 'torch', 'tensorrt'):\n"
            "    try: v[p] = m.version(p)\n"
            "    except m.PackageNotFoundError: v[p] = None\n"
            "import torch; v['torch_cuda'] = torch.version.cuda\n"
            "print('RESULT ' + json.dumps(v))",
            30,
        )
        ort_version = versions.get("onnxruntime") or versions.get("onnxruntime-gpu")
        plan = []
        if not versions.get("onnxruntime-gpu"):
            # Both wheels provide the `onnxruntime` module: remove the CPU one first,
            # restore it if the GPU one cannot be installed.
            pin = f"=={ort_version}" if ort_version else ""
            plan.append(
                (
                    "onnxruntime-gpu",
                    [self.python, "-m", "pip", "uninstall", "-y", "-q", "onnxruntime"],
                    [
                        [*pip, f"onnxruntime-gpu[cuda,cudnn]{pin}"],
                        [*pip, f"onnxruntime-gpu{pin}"],
                        [*pip, "onnxruntime-gpu"],
                    ],
                    [*pip, f"onnxruntime{pin}"],
                )
            )
        if not versions.get("torch_cuda"):
            pin = f"=={versions['torch'].split('+')[0]}" if versions.get("torch") else ""
            plan.append(("torch (CUDA)", None, [[*pip, "torchvision", f"torch{pin}"]], None))
        if not versions.get("tensorrt"):
            plan.append(("tensorrt", None, [[*pip, "tensorrt"]], None))
        if self.dry_run:
            words = "; ".join(f"{label}: {' '.join(tries[0][3:])}" for label, _, tries, _ in plan)
            self.record(
                name,
                "dry-run",
                0.0,
                f"would install: {words or 'nothing'}",
                versions=versions,
            )
            return
        log, done, failed, start = [], [], [], time.monotonic()
        if plan:
            # One quick probe: an offline machine (no package index) is reported in
            # seconds instead of each install waiting out pip's retries.
            probe = [*pip[:3], "index", "versions", "pip", "--timeout", "5", "--retries", "0"]
            rc, out, _ = self.run(probe, 30)
            if rc != 0:
                self.record(
                    name,
                    "fail",
                    time.monotonic() - start,
                    "the package index is unreachable from this machine: nothing installed "
                    f"(wanted: {', '.join(label for label, *_ in plan)}); the next steps use "
                    "what is installed",
                    before=versions,
                    output=f"$ pip index versions pip\n{out[-800:]}",
                )
                return
        wheels = self.work / "wheels"
        for label, before, tries, restore in plan:
            for cmd in tries:
                # Download first (short timeouts, no retries): an offline machine or a
                # missing wheel fails here in seconds, before anything is uninstalled.
                spec = cmd[-1]
                get = [*pip[:3], "download", "--no-deps", "--timeout", "10", "--retries", "0"]
                rc, out, _ = self.run(
                    [*get, "-d", str(wheels / label), spec], self.left(name, start)
                )
                log.append(f"$ pip download --no-deps {spec}\n{out[-600:]}")
                if rc != 0:
                    continue
                if before:
                    self.run(before, 60)
                rc, out, _ = self.run(
                    [
                        *cmd[:-1],
                        "--timeout",
                        "10",
                        "--retries",
                        "1",
                        "--find-links",
                        str(wheels / label),
                        spec,
                    ],
                    self.left(name, start),
                )
                log.append(f"$ {' '.join(cmd[3:])}\n{out[-600:]}")
                if rc == 0:
                    done.append(label)
                    break
                if restore:
                    self.run(restore, 60)
            else:
                failed.append(label)
        status = "pass" if not failed else ("partial" if done else "fail")
        summary = (
            f"installed: {', '.join(done) or '-'}; not installable: {', '.join(failed) or '-'}"
        )
        self.record(
            name,
            status,
            time.monotonic() - start,
            summary,
            before=versions,
            output="\n".join(log),
        )

    def tensorrt_tests(self, name: str) -> None:
        cmd = [self.python, "-m", "pytest", "test/test_tensorrt.py", "-q", "-rs"]
        cmd += ["-p", "no:cacheprovider"]
        if self.dry_run:  # the cache-logic tests only (no export, no torch): seconds
            cmd += ["-k", "rebuild_reason or record_round_trip or key_digest or clear_error"]
        rc, out, secs = self.run(cmd, BOXES[name])
        last = [line for line in out.splitlines() if " passed" in line or " failed" in line]
        summary = last[-1].strip() if last else f"pytest exit code {rc}"
        skipped_engines = "TensorRT engine tests need" in out
        status = "pass" if rc == 0 else "fail"
        if rc == 0 and self.dry_run:
            status = "dry-run"
            summary += " (dry run: the cache-logic tests only)"
        elif rc == 0 and skipped_engines:
            status = "dry-run" if self.dry_run else "partial"
            summary += " (engine tests skipped: TensorRT or GPU absent, see the tail)"
        self.record(name, status, secs, summary, exit_code=rc, output=out)

    def ort_cuda_parity(self, name: str) -> None:
        device = "cpu" if self.dry_run else "cuda"
        rc, out, secs, data = self.python_step(PARITY_CODE, BOXES[name], [str(self.work), device])
        if rc == 0 and data.get("unavailable"):
            status = "unavailable"
            summary = (
                f"this onnxruntime {data['available_providers']} has no CUDA provider "
                "(onnxruntime-gpu not installed: see install)"
            )
        elif rc == 0 and data:
            ok = data["max_abs_deg"] <= PARITY_LIMIT_DEG and data["providers"][0] == (
                "CPUExecutionProvider" if self.dry_run else "CUDAExecutionProvider"
            )
            status = ("dry-run" if self.dry_run else "pass") if ok else "fail"
            summary = (
                f"max |angle difference| {data['max_abs_deg']:.4f} deg over {data['faces']} crops "
                f"(limit {PARITY_LIMIT_DEG}); providers {data['providers']}"
            )
        else:
            status, summary = "fail", f"exit code {rc}"
        self.record(name, status, secs, summary, **data, output=out)

    def bench(self, name: str) -> None:
        device = "cpu" if self.dry_run else "cuda"
        sizes = "1,2" if self.dry_run else "1,8,32"
        arch = "resnet18" if self.dry_run else "resnet50"
        rc, out, secs, data = self.python_step(
            BENCH_CODE, BOXES[name] * 0.6, [str(self.work), device, sizes, arch]
        )
        rows = [json.loads(line[4:]) for line in out.splitlines() if line.startswith("ROW ")]
        bench_cmd = [
            self.python,
            "-m",
            "lechpe_model.cli.bench",
            "--arch",
            arch,
            "--batch-sizes",
            "1",
            "--repeats",
            "2" if self.dry_run else "20",
            "--warmup",
            "1" if self.dry_run else "5",
            "--backends",
            "onnxruntime" if self.dry_run else "tensorrt,onnxruntime,torch",
        ]
        rc2, out2, secs2 = self.run(bench_cmd, self.left(name, time.monotonic() - secs))
        table = [
            line for line in out2.splitlines() if line.startswith("|") or line.startswith("- ")
        ]
        ok_rows = [r for r in rows if r.get("ms") is not None]
        status = "pass" if rc == 0 and ok_rows and rc2 == 0 else ("partial" if ok_rows else "fail")
        if self.dry_run and status == "pass":
            status = "dry-run"
        summary = f"{len(ok_rows)} of {len(rows)} network rows timed; lechpe-bench exit {rc2}"
        self.record(
            name,
            status,
            secs + secs2,
            summary,
            network_rows=rows,
            lechpe_bench=table,
            output=out + "\n" + out2,
        )

    def _train_cmd(self, data: Path, out: Path, device: str, *extra: str) -> list[str]:
        return [
            "-m",
            "training.train",
            "--config",
            "tiny",
            "--no-progress",
            "--data",
            str(data / "clean"),
            "--occluded-data",
            str(data / "occluded"),
            "--out",
            str(out),
            "--set",
            f"train.device={device}",
            "--set",
            "train.amp=true",
            "--set",
            "data.max_samples=16",
            # 12 training faces in batches of 4: 3 steps per epoch, stage 1 then 2 x 3 steps
            # of stage 2, so train.max_steps=5 stops inside stage 2
            "--set",
            "stage1.batch_size=4",
            "--set",
            "stage2.batch_size=4",
            "--set",
            "stage2.epochs=2",
            "--set",
            "train.threads=2",
            *extra,
        ]

    def _synth_data(self) -> tuple[Path | None, str]:
        data = self.work / "train_data"
        if (data / "clean").is_dir():
            return data, ""
        rc, out, _ = self.run(
            [
                self.python,
                "-m",
                "training.synth.cli",
                "images",
                str(data / "clean"),
                "--count",
                "16",
                "--size",
                "80",
                "--seed",
                "3",
                "--workers",
                "1",
                "--occluded-replica",
                str(data / "occluded"),
            ],
            120,
        )
        return (data if rc == 0 else None), out

    def train_amp_resume(self, name: str) -> None:
        device = "cpu" if self.dry_run else "cuda"
        start = time.monotonic()
        data, out = self._synth_data()
        if data is None:
            self.record(name, "fail", time.monotonic() - start, "lechpe-synth failed", output=out)
            return
        full, parts = self.work / "full", self.work / "parts"
        logs = [out]
        runs = [
            self._train_cmd(data, full, device),
            self._train_cmd(data, parts, device, "--set", "train.max_steps=5"),
            self._train_cmd(data, parts, device, "--resume"),
        ]
        outputs = []
        for cmd in runs:
            rc, out, _ = self.run([self.python, *cmd], self.left(name, start))
            outputs.append(out)
            logs.append(f"$ lechpe-train {' '.join(cmd[2:])}\n{out[-1500:]}")
            if rc != 0:
                self.record(
                    name,
                    "fail",
                    time.monotonic() - start,
                    f"training exit code {rc}",
                    output="\n".join(logs),
                )
                return
        rc, out, _, diff = self.python_step(COMPARE_CODE, 30, [str(full), str(parts)])
        logs.append(out)
        exact = rc == 0 and diff.get("max_abs_diff") is not None and diff["max_abs_diff"] <= 1e-6
        # the comparison means something only if the run really stopped inside stage 2
        stopped = re.search(r"stopped at global step (\d+)", outputs[1])
        resumed = re.search(r"resumed .*: phase (\w+)", outputs[2])
        diff["stopped_at_step"] = int(stopped.group(1)) if stopped else None
        diff["resumed_phase"] = resumed.group(1) if resumed else None
        interrupted = diff["stopped_at_step"] is not None and diff["resumed_phase"] == "stage2"
        status = ("dry-run" if self.dry_run else "pass") if exact and interrupted else "fail"
        summary = (
            f"stage 1 + stage 2 on {device} (AMP on: CUDA only), stopped at step "
            f"{diff['stopped_at_step']} (phase {diff['resumed_phase']}) and resumed; resumed vs "
            f"uninterrupted weights: max |diff| {diff.get('max_abs_diff')} over "
            f"{diff.get('tensors')} tensors"
        )
        self.record(name, status, time.monotonic() - start, summary, **diff, output="\n".join(logs))

    def ddp(self, name: str) -> None:
        device = "cpu" if self.dry_run else "cuda"
        nproc = 2 if self.gpus >= 2 else 1
        start = time.monotonic()
        data, out = self._synth_data()
        if data is None:
            self.record(name, "fail", time.monotonic() - start, "lechpe-synth failed", output=out)
            return
        torchrun = [self.python, "-m", "torch.distributed.run", "--standalone"]
        cmd = [
            *torchrun,
            "--nproc_per_node",
            str(nproc),
            *self._train_cmd(data, self.work / "ddp", device, "--set", "train.max_steps=2"),
        ]
        rc, out, secs = self.run(cmd, BOXES[name])
        backend = "nccl" if device == "cuda" else "gloo"
        state = (self.work / "ddp" / "state.safetensors").is_file()
        ok = rc == 0 and state
        status = ("dry-run" if self.dry_run else "pass") if ok else "fail"
        summary = (
            f"torchrun {nproc} process(es), {backend}, 2 optimiser steps: exit {rc}, "
            f"training state {'written' if state else 'missing'}"
        )
        self.record(
            name,
            status,
            time.monotonic() - start,
            summary,
            processes=nproc,
            backend=backend,
            output=out,
        )

    # ------------------------------------------------------------------- report

    def write_report(self, verdict: str) -> None:
        lines = [
            "# GPU check report",
            "",
            f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, "
            f"{platform.node()}, Python {platform.python_version()}, "
            f"{'DRY RUN (CPU paths only)' if self.dry_run else 'GPU run'}. {verdict}",
            "",
            "| step | status | seconds | summary |",
            "|---|---|---:|---|",
        ]
        for r in self.results:
            summary = str(r["summary"]).replace("|", "/").replace("\n", " ")
            lines.append(f"| {r['step']} | {r['status']} | {r['seconds']} | {summary} |")
        for r in self.results:
            lines += ["", f"## {r['step']}: {r['status']}", "", str(r["summary"])]
            extra = {
                k: v
                for k, v in r.items()
                if k not in ("step", "status", "seconds", "summary", "output_tail")
            }
            if extra:
                lines += ["", "```json", json.dumps(extra, indent=1), "```"]
            if r.get("output_tail"):
                lines += ["", "Output tail:", "", "```text", r["output_tail"].rstrip(), "```"]
        lines += [
            "",
            "## All results (JSON)",
            "",
            "```json",
            json.dumps(
                {"dry_run": self.dry_run, "verdict": verdict, "steps": self.results}, indent=1
            ),
            "```",
            "",
        ]
        self.report.parent.mkdir(parents=True, exist_ok=True)
        self.report.write_text("\n".join(lines), encoding="utf-8")
        print(f"gpu_check: wrote {self.report}", file=sys.stderr)


# ------------------------------------------------------------- step programs

PARITY_CODE = r"""
import json, sys
from pathlib import Path
import numpy as np, cv2
from skimage import data as skdata
work, device = Path(sys.argv[1]), sys.argv[2]
import onnxruntime as ort
if hasattr(ort, "preload_dlls") and device == "cuda":
    ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* wheels torch installed
available = ort.get_available_providers()
if device == "cuda" and "CUDAExecutionProvider" not in available:
    print("RESULT " + json.dumps({"unavailable": True, "available_providers": available}))
    sys.exit(0)
from lechpe_model import backends, preprocessing as pp
from lechpe_model.cli.bench import random_checkpoint
from lechpe_model.export import export_onnx
ckpt = random_checkpoint(work / "parity.safetensors", "resnet18", num_clusters=4)
onnx_path = export_onnx(ckpt, work / "parity.onnx")
img = cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR)
box = np.array([179, 87, 271, 175], np.float32)
crops = [pp.crop_face(img, pp.expand_box(box + d, m)) for d in (0, 8, -8) for m in (0.1, 0.25, 0.5)]
crops += [c[:, ::-1].copy() for c in crops]
batch = pp.preprocess_crops(crops)
cpu = backends.create_backend("onnxruntime", onnx_path, device="cpu")
other = backends.create_backend("onnxruntime", onnx_path, device=device)
a, b = cpu.infer(batch), other.infer(batch)
print("RESULT " + json.dumps({
    "max_abs_deg": float(np.abs(a.angles - b.angles).max()),
    "max_abs_q": float(np.abs(a.assignment - b.assignment).max()),
    "angle_spread_deg": float(a.angles.std()),
    "faces": len(crops),
    "providers": other.session.get_providers(),
}))
"""

BENCH_CODE = r"""
import json, sys, time, traceback
from pathlib import Path
import numpy as np
work, device, sizes, arch = Path(sys.argv[1]), sys.argv[2], [int(s) for s in sys.argv[3].split(",")], sys.argv[4]
import onnxruntime as ort
if hasattr(ort, "preload_dlls") and device == "cuda":
    ort.preload_dlls()
from lechpe_model import backends
from lechpe_model.cli.bench import random_checkpoint
from lechpe_model.export import export_onnx
ckpt = random_checkpoint(work / f"bench_{arch}.safetensors", arch, num_clusters=4)
onnx_path = export_onnx(ckpt, work / f"bench_{arch}.onnx")
repeats = 3 if device == "cpu" else 30
configs = [("onnxruntime", "fp32", dict(device=device))]
configs.append(("torch", "fp32", dict(device=device)))
if device == "cuda":
    configs.append(("torch", "fp16-autocast", dict(device=device)))
    configs.append(("torch", "bf16-autocast", dict(device=device)))
    configs.append(("tensorrt", "fp32", dict(precision="fp32", max_batch=max(sizes), cache_dir=str(work / "trt"))))
    configs.append(("tensorrt", "fp16", dict(precision="fp16", max_batch=max(sizes), cache_dir=str(work / "trt"))))
rows = []
for name, precision, options in configs:
    try:
        model = ckpt if name == "torch" else onnx_path
        backend = backends.create_backend(name, model, **options)
    except Exception as exc:
        rows.append({"backend": name, "precision": precision, "batch": None, "ms": None,
                     "error": f"{type(exc).__name__}: {exc}"[:300]})
        print("ROW " + json.dumps(rows[-1]), flush=True)
        continue
    for n in sizes:
        x = np.random.default_rng(0).standard_normal((n, 3, 224, 224)).astype(np.float32)
        try:
            import contextlib
            ctx = contextlib.nullcontext()
            if precision.endswith("-autocast"):
                import torch
                dtype = torch.float16 if precision == "fp16-autocast" else torch.bfloat16
                ctx = torch.autocast("cuda", dtype=dtype)
            with ctx:
                for _ in range(3):
                    backend.infer(x)
                times = []
                for _ in range(repeats):
                    t = time.perf_counter(); backend.infer(x); times.append(time.perf_counter() - t)
            rows.append({"backend": name, "precision": precision, "batch": n, "device": backend.device,
                         "ms": round(1000 * float(np.median(times)), 3),
                         "faces_per_s": round(n / float(np.median(times)), 1)})
        except Exception as exc:
            traceback.print_exc()
            rows.append({"backend": name, "precision": precision, "batch": n, "ms": None,
                         "error": f"{type(exc).__name__}: {exc}"[:300]})
        print("ROW " + json.dumps(rows[-1]), flush=True)
    backend.close()
print("RESULT " + json.dumps({"arch": arch, "rows": rows}))
"""

COMPARE_CODE = r"""
import json, sys
from safetensors.torch import load_file
a = load_file(sys.argv[1] + "/model.safetensors"); b = load_file(sys.argv[2] + "/model.safetensors")
assert a.keys() == b.keys(), "different tensors"
diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
print("RESULT " + json.dumps({"max_abs_diff": diff, "tensors": len(a)}))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU paths only, tiny sizes")
    parser.add_argument("--report", type=Path, default=REPO / "gpu_check_report.md")
    parser.add_argument("--budget", type=float, default=TOTAL_BUDGET_S, help="overall seconds")
    parser.add_argument("--steps", help="comma list of steps to run (default: all)")
    parser.add_argument(
        "--box-scale",
        type=float,
        default=1.0,
        help="multiply every step's time box (a slow or shared CPU in dry runs)",
    )
    args = parser.parse_args(argv)
    dry_run = args.dry_run or os.environ.get("LECHPE_GPU_CHECK_DRY_RUN") == "1"
    with tempfile.TemporaryDirectory(prefix="lechpe_gpu_check_") as work:
        check = Check(dry_run, args.report.resolve(), Path(work), args.budget, args.box_scale)
        check.step("detect", check.detect)
        if check.gpus == 0 and not dry_run:
            check.write_report("No NVIDIA GPU here: nothing to check (exit 0).")
            print(
                "gpu_check: no NVIDIA GPU (nvidia-smi / torch.cuda): nothing to check",
                file=sys.stderr,
            )
            return 0
        wanted = args.steps.split(",") if args.steps else list(BOXES)[1:]
        for name in list(BOXES)[1:]:
            if name in wanted:
                check.step(name, getattr(check, name))
        bad = [
            r["step"]
            for r in check.results
            if r["status"] in ("fail", "error", "skipped", "unavailable")
        ]
        verdict = f"Failed or skipped: {', '.join(bad)}." if bad else "Every step passed."
        check.write_report(verdict)
    return 0


if __name__ == "__main__":
    sys.exit(main())
