"""``lechpe-demo``: the end-to-end demo over real ROS 2 transport.

1. Renders a head-motion sequence with known ground truth by running the
   ``lechpe-synth sequence OUT --frames N --seed S`` command in a subprocess
   (skipped with ``--sequence DIR``, ``--video FILE`` or ``--camera INDEX``).
2. Starts ``pose_node`` and ``camera_replay`` as separate processes (DDS kept on
   this machine by ``lechpe_model.local_dds``).
3. Subscribes to ``/head_pose`` (and ``/head_pose_faces`` for the boxes) here,
   waits for the replay to finish and the node to account for every frame.
4. Prints the per-angle MAE against ground truth, the achieved rate and the
   latency, and writes into ``--out``: ``angles_over_time.png`` (predicted vs
   true yaw/pitch/roll over time), ``annotated.mp4`` (or ``.avi``),
   ``contact_sheet.jpg``, ``predictions.csv`` and ``results.json``.

Every wait is a condition with a timeout; a step that fails says which and
where its log is, and the demo exits non-zero.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

# Imported up front: a first import inside a callback (scipy) would delay the first answers.
from lechpe_model.conventions import quaternion_to_euler
from lechpe_model.local_dds import apply_local_dds_environment
from lechpe_ros.camera_replay import FrameSource
from lechpe_ros.diagnostics import status_values
from lechpe_ros.pose_messages import cloud_to_table

ANGLES = ("yaw", "pitch", "roll")
IMAGE_TOPIC = "/demo_camera/image_raw"
FRAME_ID = "demo_camera_optical_frame"


class DemoError(RuntimeError):
    """A step of the demo failed; the text says which and where to look."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lechpe-demo", description=__doc__.split("\n\n")[0])
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--sequence", type=Path, help="existing `lechpe-synth sequence` folder")
    src.add_argument("--video", help="video file (no ground truth: no MAE)")
    src.add_argument("--camera", type=int, help="camera device index (no ground truth)")
    parser.add_argument("--frames", type=int, default=150, help="frames to render (default 150)")
    parser.add_argument("--seed", type=int, default=0, help="render seed (default 0)")
    parser.add_argument(
        "--rate", type=float, default=None, help="camera Hz (default: the source's fps)"
    )
    parser.add_argument(
        "--max-frames", type=int, default=None, help="stop the camera after this many"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("out/demo"), help="output folder (default out/demo)"
    )
    parser.add_argument(
        "--model", default="", help="model file (default: the shipped default model)"
    )
    parser.add_argument("--backend", default="auto", help="auto | tensorrt | onnxruntime | torch")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--qos", choices=("reliable", "best_effort"), default="best_effort", help="camera QoS"
    )
    parser.add_argument(
        "--domain-id", type=int, default=None, help="ROS_DOMAIN_ID (default: per process)"
    )
    parser.add_argument(
        "--start-timeout", type=float, default=300.0, help="s for the node to start"
    )
    parser.add_argument("--no-video", action="store_true", help="skip annotated.mp4")
    return parser


# --------------------------------------------------------------------------- processes
def _child_env() -> dict[str, str]:
    """This interpreter's environment with this package importable (source checkout or install)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def render_sequence(out: Path, frames: int, seed: int, log_path: Path) -> Path:
    """``lechpe-synth sequence OUT --frames N --seed S`` in a subprocess (this interpreter)."""
    cmd = [
        sys.executable,
        "-m",
        "training.synth.cli",
        "sequence",
        str(out),
        "--frames",
        str(frames),
        "--seed",
        str(seed),
    ]
    print(
        f"lechpe-demo: rendering {frames} frames: lechpe-synth sequence {out} --frames {frames} --seed {seed}"
    )
    with open(log_path, "wb") as log:
        result = subprocess.run(
            cmd, env=_child_env(), stdout=log, stderr=subprocess.STDOUT, check=False
        )
    if result.returncode != 0 or not (out / "sequence.json").is_file():
        tail = log_path.read_text(errors="replace")[-2000:]
        raise DemoError(
            f"rendering the sequence failed (exit {result.returncode}; needs the training extras: "
            f"pip install -e .[train]); log {log_path}:\n{tail}"
        )
    return out


class Child:
    """A child process whose output goes to a log file."""

    def __init__(self, name: str, cmd: list[str], log_path: Path) -> None:
        self.name, self.log_path = name, log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            cmd, env=_child_env(), stdout=self._log, stderr=subprocess.STDOUT
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, chars: int = 3000) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGINT (Ctrl-C), then SIGKILL if it does not end in ``timeout``."""
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode


# --------------------------------------------------------------------------- listener
@dataclass
class Received:
    """One /head_pose answer."""

    stamp: tuple[int, int]
    angles: np.ndarray  # (3,) degrees from the published quaternion
    received: float  # wall time (s) at reception
    latency_ms: float  # stamp -> reception


@dataclass
class Listener:
    """rclpy node in this process recording /head_pose, /head_pose_faces, /diagnostics."""

    node_name: str = "lechpe_pose"
    poses: dict = field(default_factory=dict)
    faces: dict = field(default_factory=dict)
    diag: dict = field(default_factory=dict)
    diag_count: int = 0
    cond: threading.Condition = field(default_factory=threading.Condition)

    def start(self) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseStamped
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import PointCloud2

        rclpy.init()
        self.node = rclpy.create_node("lechpe_demo_listener")
        self.node.create_subscription(PoseStamped, "/head_pose", self._on_pose, 100)
        self.node.create_subscription(PointCloud2, "/head_pose_faces", self._on_faces, 100)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # shutdown
            pass

    def _on_pose(self, msg) -> None:
        now = time.time()
        stamp = (int(msg.header.stamp.sec), int(msg.header.stamp.nanosec))
        q = msg.pose.orientation
        angles = quaternion_to_euler(np.array([q.x, q.y, q.z, q.w]))
        latency = (now - (stamp[0] + stamp[1] * 1e-9)) * 1e3
        with self.cond:
            self.poses[stamp] = Received(stamp, angles, now, latency)
            self.cond.notify_all()

    def _on_faces(self, msg) -> None:
        stamp = (int(msg.header.stamp.sec), int(msg.header.stamp.nanosec))
        with self.cond:
            self.faces[stamp] = cloud_to_table(msg)
            self.cond.notify_all()

    def _on_diag(self, msg) -> None:
        with self.cond:
            for status in msg.status:
                self.diag[status.name] = status_values(status)
            self.diag_count += 1
            self.cond.notify_all()

    def outputs_matched(self) -> bool:
        return all(self.node.count_publishers(t) >= 1 for t in ("/head_pose", "/head_pose_faces"))

    def summary(self) -> dict[str, str] | None:
        return self.diag.get(f"{self.node_name}: head pose estimation")

    def wait(self, predicate, timeout: float, what: str, children: list[Child]):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                value = predicate()
                if value:
                    return value
                for child in children:
                    if not child.alive() and child.name == "pose_node":
                        raise DemoError(
                            f"pose_node exited while waiting for {what}; log {child.log_path}:\n{child.tail()}"
                        )
                if time.monotonic() > deadline:
                    raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}")
                self.cond.wait(min(0.5, max(deadline - time.monotonic(), 0.01)))

    def stop(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown()
        self.thread.join(timeout=10)


# --------------------------------------------------------------------------- results
def read_ground_truth(sequence: Path | None) -> dict[int, np.ndarray]:
    """frame index -> (yaw, pitch, roll) degrees from ``ground_truth.csv`` (empty without one)."""
    if sequence is None or not (sequence / "ground_truth.csv").is_file():
        return {}
    with open(sequence / "ground_truth.csv") as f:
        return {int(r["frame"]): np.array([float(r[a]) for a in ANGLES]) for r in csv.DictReader(f)}


def read_stamps(path: Path) -> dict[tuple[int, int], int]:
    """stamp -> frame index from ``camera_replay --stamps-out``."""
    if not path.is_file():
        return {}
    with open(path) as f:
        return {(int(r["sec"]), int(r["nanosec"])): int(r["frame"]) for r in csv.DictReader(f)}


def compute_results(
    poses: dict, stamps: dict, truth: dict, camera_rate: float
) -> tuple[dict, list[dict]]:
    """Per-frame rows and the summary (MAE per angle, achieved rate, latency)."""
    rows = []
    for stamp, rec in sorted(poses.items(), key=lambda kv: kv[1].received):
        if stamp not in stamps:
            continue  # not from this replay
        index = stamps[stamp]
        row = {"frame": index, "sec": stamp[0], "nanosec": stamp[1], "latency_ms": rec.latency_ms}
        row.update({f"{a}_pred": float(v) for a, v in zip(ANGLES, rec.angles, strict=True)})
        if index in truth:
            row.update({f"{a}_true": float(v) for a, v in zip(ANGLES, truth[index], strict=True)})
        rows.append(row)
    received = [poses[(r["sec"], r["nanosec"])].received for r in rows]
    duration = (max(received) - min(received)) if len(received) > 1 else 0.0
    summary = {
        "frames_published": len(stamps),
        "frames_answered": len(rows),
        "camera_rate_hz": camera_rate,
        "achieved_rate_hz": (len(rows) - 1) / duration if duration > 0 else float("nan"),
        "latency_p50_ms": float(np.percentile([r["latency_ms"] for r in rows], 50))
        if rows
        else float("nan"),
        "latency_p95_ms": float(np.percentile([r["latency_ms"] for r in rows], 95))
        if rows
        else float("nan"),
    }
    with_truth = [r for r in rows if "yaw_true" in r]
    summary["frames_with_ground_truth"] = len(with_truth)
    for a in ANGLES:
        errors = [abs(r[f"{a}_pred"] - r[f"{a}_true"]) for r in with_truth]
        summary[f"mae_{a}"] = float(np.mean(errors)) if errors else float("nan")
    summary["mae_mean"] = float(np.mean([summary[f"mae_{a}"] for a in ANGLES]))
    return summary, rows


def write_predictions(path: Path, rows: list[dict]) -> None:
    columns = ["frame", "sec", "nanosec", "latency_ms"]
    columns += [f"{a}_pred" for a in ANGLES] + [f"{a}_true" for a in ANGLES]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        for row in sorted(rows, key=lambda r: r["frame"]):
            writer.writerow(row)


def plot_angles(path: Path, rows: list[dict], truth: dict, fps: float) -> None:
    """PNG: predicted (markers) vs true (line) yaw, pitch, roll over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(9, 7), sharex=True)
    frames = sorted(truth)
    for ax, (i, name) in zip(axes, enumerate(ANGLES), strict=True):
        if frames:
            ax.plot(
                np.array(frames) / fps,
                [truth[f][i] for f in frames],
                "-",
                color="0.3",
                label="ground truth",
            )
        pred = sorted((r["frame"], r[f"{name}_pred"]) for r in rows)
        if pred:
            t, v = zip(*pred, strict=True)
            ax.plot(np.array(t) / fps, v, "o", ms=3, color="tab:red", label="/head_pose")
        ax.set_ylabel(f"{name} (deg)")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper right")
    axes[-1].set_xlabel("time (s)")
    fig.suptitle("lechpe-demo: predicted vs true head angles")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def annotate_frame(frame: np.ndarray, index: int, faces: dict | None, pred, true) -> np.ndarray:
    """Frame with the predicted face box and axes (thick) and the true axes (thin)."""
    from lechpe_model.visualization import draw_pose_axes

    out = frame.copy()
    if faces is not None and len(faces["yaw"]):
        k = int(
            np.argmax((faces["box_x2"] - faces["box_x1"]) * (faces["box_y2"] - faces["box_y1"]))
        )
        x1, y1, x2, y2 = (float(faces[n][k]) for n in ("box_x1", "box_y1", "box_x2", "box_y2"))
        cv2.rectangle(out, (int(x1), int(y1)), (int(x2), int(y2)), (0, 255, 255), 1, cv2.LINE_AA)
        center, size = ((x1 + x2) / 2, (y1 + y2) / 2), 0.7 * (x2 - x1)
        if true is not None:
            draw_pose_axes(out, true, center, size, thickness=1)
        if pred is not None:
            draw_pose_axes(out, pred, center, size, thickness=3)
    lines = [f"frame {index}"]
    if pred is not None:
        lines.append("pred  y{:+6.1f} p{:+6.1f} r{:+6.1f}".format(*pred))
    else:
        lines.append("pred  (frame dropped or no face)")
    if true is not None:
        lines.append("true  y{:+6.1f} p{:+6.1f} r{:+6.1f}".format(*true))
    for i, text in enumerate(lines):
        cv2.putText(
            out,
            text,
            (8, 20 + 18 * i),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.5,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
    return out


def write_visuals(
    out: Path,
    source,
    rows: list[dict],
    listener: Listener,
    truth: dict,
    fps: float,
    video: bool,
) -> list[Path]:
    """Annotated video and contact sheet of a replayable source (sequence or video file).

    ``source`` is a fresh ``camera_replay.FrameSource`` (read again from the start) or
    None for a live camera, whose frames cannot be read twice.
    """
    if source is None:
        return []
    by_frame = {r["frame"]: r for r in rows}
    written = []
    writer = None
    sheet_frames = []
    answered = sorted(by_frame)
    picks = set(answered[:: max(1, len(answered) // 12)][:12]) if answered else set()
    while True:
        item = source.read()
        if item is None:
            break
        index, frame = item
        if video and writer is None and not written:
            size = (frame.shape[1], frame.shape[0])
            for name, fourcc in (("annotated.mp4", "mp4v"), ("annotated.avi", "MJPG")):
                writer = cv2.VideoWriter(
                    str(out / name), cv2.VideoWriter_fourcc(*fourcc), fps, size
                )
                if writer.isOpened():
                    written.append(out / name)
                    break
                writer = None
        if writer is None and index not in picks:
            continue
        row = by_frame.get(index)
        pred = [row[f"{a}_pred"] for a in ANGLES] if row else None
        faces = listener.faces.get((row["sec"], row["nanosec"])) if row else None
        annotated = annotate_frame(frame, index, faces, pred, truth.get(index))
        if writer is not None:
            writer.write(annotated)
        if index in picks:
            sheet_frames.append(annotated)
    source.close()
    if writer is not None:
        writer.release()
    if sheet_frames:
        columns = 4
        thumbs = [cv2.resize(f, (320, int(320 * f.shape[0] / f.shape[1]))) for f in sheet_frames]
        while len(thumbs) % columns:
            thumbs.append(np.zeros_like(thumbs[0]))
        grid = np.vstack(
            [np.hstack(thumbs[i : i + columns]) for i in range(0, len(thumbs), columns)]
        )
        cv2.imwrite(str(out / "contact_sheet.jpg"), grid)
        written.append(out / "contact_sheet.jpg")
    return written


# --------------------------------------------------------------------------- main
def run(args: argparse.Namespace) -> dict:
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    domain = args.domain_id
    if domain is None and os.environ.get("ROS_DOMAIN_ID", "").isdigit():
        domain = int(os.environ["ROS_DOMAIN_ID"])  # keep the caller's domain
    apply_local_dds_environment(domain)
    os.environ.setdefault("AMENT_PREFIX_PATH", sys.prefix)  # ament_index needs it (ROS wheels)

    sequence = args.sequence
    if sequence is None and args.video is None and args.camera is None:
        sequence = render_sequence(out / "sequence", args.frames, args.seed, out / "render.log")
    truth = read_ground_truth(sequence)
    fps = 30.0
    if sequence is not None:
        fps = float(json.loads((sequence / "sequence.json").read_text()).get("fps", 30.0))
    rate = args.rate or fps

    children: list[Child] = []
    listener = Listener()
    listener.start()
    try:
        node_cmd = [sys.executable, "-m", "lechpe_ros.pose_node", "--ros-args"]
        params = {
            "image_topics": f"[{IMAGE_TOPIC}]",
            "backend": args.backend,
            "device": args.device,
            "model_path": args.model,
            "diagnostics_period_s": "0.5",
        }
        for key, value in params.items():
            if value != "":  # empty: the node's default (e.g. the shipped model)
                node_cmd += ["-p", f"{key}:={value}"]
        print("lechpe-demo: starting pose_node (loading the model takes a few seconds)")
        node = Child("pose_node", node_cmd, out / "pose_node.log")
        children.append(node)
        listener.wait(listener.summary, args.start_timeout, "pose_node to start", children)
        # The node's outputs must be matched here before frames flow, or the first answers
        # arrive late (retransmitted after discovery) and distort the latency.
        listener.wait(listener.outputs_matched, 60.0, "discovery of /head_pose", children)
        print(
            f"lechpe-demo: pose_node ready ({listener.summary().get('backend')} on {listener.summary().get('device')})"
        )

        stamps_path = out / "stamps.csv"
        replay_cmd = [
            sys.executable,
            "-m",
            "lechpe_ros.camera_replay",
            "--topic",
            IMAGE_TOPIC,
            "--frame-id",
            FRAME_ID,
            "--qos",
            args.qos,
            "--rate",
            str(rate),
            "--stamps-out",
            str(stamps_path),
        ]
        if sequence is not None:
            replay_cmd += ["--sequence", str(sequence)]
        elif args.video is not None:
            replay_cmd += ["--video", args.video]
        else:
            replay_cmd += ["--camera", str(args.camera)]
        if args.max_frames:
            replay_cmd += ["--max-frames", str(args.max_frames)]
        replay = Child("camera_replay", replay_cmd, out / "camera_replay.log")
        children.append(replay)
        print(f"lechpe-demo: camera_replay publishing {IMAGE_TOPIC} at {rate:.1f} Hz ({args.qos})")
        expected = args.max_frames or (
            int(json.loads((sequence / "sequence.json").read_text())["frames"])
            if sequence
            else None
        )
        budget = (expected / rate if expected else 3600.0) + 120.0
        try:
            replay.proc.wait(timeout=budget)
        except subprocess.TimeoutExpired as exc:
            raise DemoError(
                f"camera_replay did not finish in {budget:.0f} s; log {replay.log_path}"
            ) from exc
        if replay.proc.returncode != 0:
            raise DemoError(
                f"camera_replay failed (exit {replay.proc.returncode}); log {replay.log_path}:\n{replay.tail()}"
            )
        stamps = read_stamps(stamps_path)

        # The node has accounted for every published frame (processed, dropped, rejected or lost).
        def settled():
            s = listener.summary() or {}
            n = {
                k: int(s.get(k, 0))
                for k in (
                    "received_frames",
                    "lost_in_transport",
                    "processed_frames",
                    "dropped_frames",
                    "rejected_frames",
                    "failed_frames",
                )
            }
            in_flight = (
                n["received_frames"]
                - n["processed_frames"]
                - n["dropped_frames"]
                - n["rejected_frames"]
                - n["failed_frames"]
            )
            return (
                n["received_frames"] + n["lost_in_transport"] >= len(stamps)
                and in_flight == 0
                and n
            )

        counts = listener.wait(settled, 120.0, "pose_node to finish the published frames", children)
        # Answers are published before the diagnostics that count them; take a later snapshot.
        target = listener.diag_count + 1
        listener.wait(
            lambda: listener.diag_count >= target, 30.0, "a final diagnostics message", children
        )
        with listener.cond:
            poses = dict(listener.poses)
        summary, rows = compute_results(poses, stamps, truth, rate)
        summary["node_counters"] = counts
        node_summary = listener.summary()
        for key in ("latency_p50_ms", "latency_p95_ms", "processing_p50_ms", "processing_p95_ms"):
            summary[f"node_{key}"] = float(node_summary.get(key, "nan"))
        summary["backend"] = listener.summary().get("backend")
        summary["model"] = listener.summary().get("model")
        write_predictions(out / "predictions.csv", rows)
        plot_angles(out / "angles_over_time.png", rows, truth, fps)
        replayable = None
        if sequence is not None or args.video is not None:
            replayable = FrameSource(sequence=sequence, video=args.video)
        visuals = write_visuals(
            out, replayable, rows, listener, truth, fps, video=not args.no_video
        )
        (out / "results.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
        summary["files"] = [
            str(p)
            for p in [
                out / "angles_over_time.png",
                *visuals,
                out / "predictions.csv",
                out / "results.json",
            ]
        ]
        return summary
    finally:
        for child in reversed(children):
            child.stop()
        listener.stop()


def print_summary(summary: dict) -> None:
    print(
        f"lechpe-demo: {summary['frames_published']} frames published at {summary['camera_rate_hz']:.1f} Hz, "
        f"{summary['frames_answered']} answered on /head_pose "
        f"(achieved rate {summary['achieved_rate_hz']:.1f} Hz)"
    )
    if summary["frames_with_ground_truth"]:
        print(
            f"MAE (deg) over {summary['frames_with_ground_truth']} frames: "
            + "  ".join(f"{a} {summary[f'mae_{a}']:.2f}" for a in ANGLES)
            + f"  mean {summary['mae_mean']:.2f}"
        )
    else:
        print("MAE: no ground truth for this source")
    print(
        f"latency image stamp -> /head_pose: p50 {summary['latency_p50_ms']:.1f} ms, p95 {summary['latency_p95_ms']:.1f} ms"
    )
    print("wrote " + ", ".join(summary["files"]))


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``lechpe-demo``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        summary = run(args)
    except DemoError as exc:
        print(f"lechpe-demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lechpe-demo: interrupted", file=sys.stderr)
        return 130
    print_summary(summary)
    return (
        0 if summary["frames_answered"] > 0 and not math.isnan(summary["achieved_rate_hz"]) else 1
    )


if __name__ == "__main__":
    sys.exit(main())
