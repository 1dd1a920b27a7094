"""End-to-end benchmark: camera stream -> pose_node -> /head_pose, over real ROS 2 transport.

Three processes, as on a robot: ``camera_replay`` publishes a rendered
640x480 head sequence (looped) at 30 Hz with ``header.stamp`` = publish time,
``pose_node`` estimates, and this process subscribes to ``/head_pose``.

Measured:

* latency = reception time of ``/head_pose`` here - the image's header stamp
  (same machine clock), p50 / p95 / p99 / max after a warm-up;
* processed rate = ``/head_pose`` messages per second (the node drops frames it
  cannot keep up with: latest-frame policy) and the node's own counters;
* stability: latency p50 per time window and its linear trend (ms per minute),
  the node's resident memory (``/proc/PID/status`` VmRSS) sampled every second
  and its trend (MiB per minute).

Writes ``e2e_bench.json`` and ``e2e_bench.png`` into ``--out`` and prints a
Markdown table for docs/BENCHMARKS.md. ``--duration 300`` is the 5-minute run.

    python -m lechpe_ros.e2e_bench --duration 300 --out out/e2e_bench
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from lechpe_model.local_dds import apply_local_dds_environment
from lechpe_ros.demo import Child, DemoError, Listener, render_sequence

IMAGE_TOPIC = "/bench_camera/image_raw"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lechpe-e2e-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--duration", type=float, default=60.0, help="s of measurement (default 60; 300 = 5 min)"
    )
    parser.add_argument(
        "--warmup", type=float, default=5.0, help="s discarded at the start (default 5)"
    )
    parser.add_argument("--rate", type=float, default=30.0, help="camera Hz (default 30)")
    parser.add_argument(
        "--sequence", type=Path, default=None, help="existing sequence (default: render 60 frames)"
    )
    parser.add_argument(
        "--model", default="", help="model file (default: the shipped default model)"
    )
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--detector", default="auto", help="auto | yuface | yunet | haar")
    parser.add_argument("--qos", choices=("reliable", "best_effort"), default="best_effort")
    parser.add_argument(
        "--windows", type=int, default=10, help="time windows for the trend (default 10)"
    )
    parser.add_argument("--out", type=Path, default=Path("out/e2e_bench"))
    parser.add_argument("--domain-id", type=int, default=None)
    return parser


def rss_mib(pid: int) -> float:
    """Resident set size of process ``pid`` in MiB (Linux /proc), NaN when unavailable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def trend_per_minute(times_s: np.ndarray, values: np.ndarray) -> float:
    """Least-squares slope of ``values`` over time, per minute (NaN with < 2 points)."""
    ok = np.isfinite(values)
    if ok.sum() < 2 or np.ptp(times_s[ok]) == 0:
        return float("nan")
    return float(np.polyfit(times_s[ok], values[ok], 1)[0] * 60.0)


def summarise(
    samples: list[tuple[float, float]],
    rss: list[tuple[float, float]],
    start: float,
    end: float,
    windows: int,
) -> dict:
    """Latency/rate/memory statistics of the measurement interval [start, end] (wall time, s)."""
    lat = np.array([(t, ms) for t, ms in samples if start <= t <= end], dtype=np.float64).reshape(
        -1, 2
    )
    mem = np.array([(t, m) for t, m in rss if start <= t <= end], dtype=np.float64).reshape(-1, 2)
    duration = end - start
    out = {
        "duration_s": duration,
        "answers": int(len(lat)),
        "processed_rate_hz": len(lat) / duration if duration > 0 else float("nan"),
    }
    if len(lat):
        out.update({f"latency_p{q}_ms": float(np.percentile(lat[:, 1], q)) for q in (50, 95, 99)})
        out["latency_max_ms"] = float(lat[:, 1].max())
        edges = np.linspace(start, end, windows + 1)
        per_window = []
        for a, b in zip(edges[:-1], edges[1:], strict=True):
            sel = lat[(lat[:, 0] >= a) & (lat[:, 0] < b), 1]
            per_window.append(float(np.percentile(sel, 50)) if len(sel) else float("nan"))
        out["latency_p50_per_window_ms"] = per_window
        out["latency_trend_ms_per_min"] = trend_per_minute(lat[:, 0] - start, lat[:, 1])
    if len(mem):
        out["rss_start_mib"] = float(mem[0, 1])
        out["rss_end_mib"] = float(mem[-1, 1])
        out["rss_max_mib"] = float(mem[:, 1].max())
        out["rss_trend_mib_per_min"] = trend_per_minute(mem[:, 0] - start, mem[:, 1])
    return out


def plot(path: Path, samples, rss, start: float, end: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    lat = np.array(samples, dtype=np.float64).reshape(-1, 2)
    mem = np.array(rss, dtype=np.float64).reshape(-1, 2)
    t0 = start
    if len(lat):
        ax1.plot(lat[:, 0] - t0, lat[:, 1], ".", ms=2, alpha=0.5, label="per frame")
    ax1.axvspan(min(lat[:, 0].min() - t0, 0) if len(lat) else 0, 0, color="0.9", label="warm-up")
    ax1.set_ylabel("stamp -> /head_pose (ms)")
    ax1.set_yscale("log")
    ax1.grid(alpha=0.3)
    ax1.legend(loc="upper right")
    if len(mem):
        ax2.plot(mem[:, 0] - t0, mem[:, 1], "-", color="tab:green")
    ax2.set_ylabel("pose_node RSS (MiB)")
    ax2.set_xlabel("time since end of warm-up (s)")
    ax2.grid(alpha=0.3)
    fig.suptitle(f"lechpe end-to-end: latency and memory over {end - start:.0f} s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(result: dict) -> str:
    r = result
    rows = [
        ("camera", f"{r['camera_rate_hz']:.0f} Hz, {r['width']}x{r['height']} bgr8, {r['qos']}"),
        (
            "backend / model / detector",
            f"{r['backend']} on {r['device']} / {Path(str(r['model'])).name} / {r.get('detector')}",
        ),
        (
            "measured",
            f"{r['duration_s']:.0f} s after {r['warmup_s']:.0f} s warm-up, {r['answers']} answers",
        ),
        ("processed rate", f"{r['processed_rate_hz']:.1f} Hz"),
        (
            "latency p50 / p95 / p99 / max",
            "{:.1f} / {:.1f} / {:.1f} / {:.1f} ms".format(
                r.get("latency_p50_ms", math.nan),
                r.get("latency_p95_ms", math.nan),
                r.get("latency_p99_ms", math.nan),
                r.get("latency_max_ms", math.nan),
            ),
        ),
        (
            "latency p50 per window",
            ", ".join(f"{v:.0f}" for v in r.get("latency_p50_per_window_ms", [])) + " ms",
        ),
        ("latency trend", f"{r.get('latency_trend_ms_per_min', math.nan):+.2f} ms/min"),
        (
            "node RSS start / end / max",
            "{:.0f} / {:.0f} / {:.0f} MiB".format(
                r.get("rss_start_mib", math.nan),
                r.get("rss_end_mib", math.nan),
                r.get("rss_max_mib", math.nan),
            ),
        ),
        ("RSS trend", f"{r.get('rss_trend_mib_per_min', math.nan):+.2f} MiB/min"),
        ("node counters", ", ".join(f"{k} {v}" for k, v in r["node_counters"].items())),
        ("host", r["host"]),
        (
            "load average (1/5/15 min) at start / end",
            f"{r['load_average_start']} / {r['load_average_end']}",
        ),
    ]
    lines = ["| quantity | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict:
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    domain = args.domain_id
    if domain is None and os.environ.get("ROS_DOMAIN_ID", "").isdigit():
        domain = int(os.environ["ROS_DOMAIN_ID"])
    apply_local_dds_environment(domain)
    os.environ.setdefault("AMENT_PREFIX_PATH", sys.prefix)
    sequence = args.sequence or render_sequence(out / "sequence", 60, 0, out / "render.log")
    meta = json.loads((sequence / "sequence.json").read_text())

    children: list[Child] = []
    listener = Listener()
    listener.start()
    samples: list[tuple[float, float]] = []  # (reception wall time, latency ms)
    rss: list[tuple[float, float]] = []
    try:
        cmd = [sys.executable, "-m", "lechpe_ros.pose_node", "--ros-args",
               "-p", f"image_topics:=[{IMAGE_TOPIC}]", "-p", f"backend:={args.backend}",
               "-p", f"device:={args.device}"]  # fmt: skip
        if args.model:
            cmd += ["-p", f"model_path:={args.model}"]
        if args.detector != "auto":
            cmd += ["-p", f"detector:={args.detector}"]
        node = Child("pose_node", cmd, out / "pose_node.log")
        children.append(node)
        listener.wait(listener.summary, 300.0, "pose_node to start", children)
        listener.wait(listener.outputs_matched, 60.0, "discovery of /head_pose", children)
        load_start = [round(v, 2) for v in os.getloadavg()]
        total = args.warmup + args.duration
        frames = int(math.ceil(total * args.rate)) + 1
        replay = Child(
            "camera_replay",
            [
                sys.executable,
                "-m",
                "lechpe_ros.camera_replay",
                "--sequence",
                str(sequence),
                "--loop",
                "--topic",
                IMAGE_TOPIC,
                "--rate",
                str(args.rate),
                "--qos",
                args.qos,
                "--max-frames",
                str(frames),
            ],  # fmt: skip
            out / "camera_replay.log",
        )
        children.append(replay)
        print(
            f"e2e_bench: {args.warmup:.0f} s warm-up + {args.duration:.0f} s at {args.rate:.0f} Hz ...",
            flush=True,
        )
        first = listener.wait(
            lambda: listener.poses and min(r.received for r in listener.poses.values()),
            120.0,
            "the first /head_pose",
            children,
        )
        start, end = first + args.warmup, first + total
        # Sample memory once a second until the stream ends (bounded by the replay process).
        next_sample = time.time()
        while replay.alive() and time.time() < end + 30.0:
            if time.time() >= next_sample:
                rss.append((time.time(), rss_mib(node.proc.pid)))
                next_sample += 1.0
            try:
                replay.proc.wait(timeout=max(next_sample - time.time(), 0.01))
            except subprocess.TimeoutExpired:
                pass
            if not node.alive():
                raise DemoError(
                    f"pose_node died during the benchmark; log {node.log_path}:\n{node.tail()}"
                )
        target = listener.diag_count + 2
        listener.wait(lambda: listener.diag_count >= target, 30.0, "final diagnostics", children)
        with listener.cond:
            samples = sorted((r.received, r.latency_ms) for r in listener.poses.values())
            diag = dict(listener.summary())
        result = summarise(
            samples, rss, start, min(end, samples[-1][0] if samples else end), args.windows
        )
        result.update(
            camera_rate_hz=args.rate,
            width=int(meta["width"]),
            height=int(meta["height"]),
            qos=args.qos,
            warmup_s=args.warmup,
            backend=diag.get("backend"),
            detector=diag.get("detector"),
            device=diag.get("device"),
            model=diag.get("model"),
            node_counters={
                k: int(diag[k])
                for k in (
                    "received_frames",
                    "processed_frames",
                    "dropped_frames",
                    "lost_in_transport",
                    "rejected_frames",
                    "failed_frames",
                )
            },
            node_latency_p50_ms=float(diag.get("latency_p50_ms", "nan")),
            node_processing_p50_ms=float(diag.get("processing_p50_ms", "nan")),
            host=f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            load_average_end=[round(v, 2) for v in os.getloadavg()],
            load_average_start=load_start,
        )
        (out / "e2e_bench.json").write_text(json.dumps(result, indent=2, sort_keys=True))
        plot(out / "e2e_bench.png", samples, rss, start, end)
        return result
    finally:
        for child in reversed(children):
            child.stop()
        listener.stop()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except DemoError as exc:
        print(f"e2e_bench: {exc}", file=sys.stderr)
        return 1
    print(markdown(result))
    print(f"wrote {args.out / 'e2e_bench.json'} and {args.out / 'e2e_bench.png'}")
    return 0 if result["answers"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
