"""``camera_replay``: publish frames as a camera would (sensor_msgs/Image + CameraInfo).

Sources (one of):

* ``--sequence DIR``: a folder written by ``lechpe-synth sequence`` (``frame_*.jpg``,
  ``ground_truth.csv``, ``sequence.json`` with the intrinsics and fps);
* ``--video FILE``: any file OpenCV's ``VideoCapture`` reads;
* ``--camera INDEX``: a camera device (``/dev/videoINDEX``).

Each frame is published as ``bgr8`` with ``header.stamp`` = now and
``header.frame_id`` = ``--frame-id``, together with a CameraInfo carrying the
same header (intrinsics from ``sequence.json``, or a pinhole with ``--hfov``).
Frames are sent by a ROS timer at ``--rate`` Hz; ``--stamps-out`` writes
``frame,sec,nanosec`` per published frame so a listener can match its results
to ground truth by stamp.

Example::

    camera_replay --sequence out/seq --rate 30 --topic /camera/image_raw --qos best_effort
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np


class FrameSource:
    """Frames and intrinsics from a sequence folder, a video file or a camera."""

    def __init__(
        self, sequence: Path | None = None, video: str | None = None, camera: int | None = None
    ):
        self.sequence = sequence
        self.capture = None
        self.meta: dict = {}
        self.index = 0
        if sequence is not None:
            meta_path = sequence / "sequence.json"
            if not meta_path.is_file():
                raise FileNotFoundError(
                    f"{meta_path} not found; write a sequence with `lechpe-synth sequence DIR`"
                )
            self.meta = json.loads(meta_path.read_text())
            self.count = int(self.meta["frames"])
            self.pattern = self.meta.get("frame_pattern", "frame_{:06d}.jpg")
            self.fps = float(self.meta.get("fps", 30.0))
        else:
            target = video if video is not None else int(camera)
            self.capture = cv2.VideoCapture(target)
            if not self.capture.isOpened():
                what = f"video file {video}" if video is not None else f"camera device {camera}"
                raise FileNotFoundError(f"OpenCV cannot open {what}")
            frames = int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            self.count = frames if video is not None and frames > 0 else None
            fps = float(self.capture.get(cv2.CAP_PROP_FPS) or 0.0)
            self.fps = fps if math.isfinite(fps) and fps > 0 else 30.0

    def intrinsics(
        self, width: int, height: int, hfov_deg: float
    ) -> tuple[float, float, float, float]:
        """``(fx, fy, cx, cy)``: the sequence's, else a pinhole with ``hfov_deg``."""
        if all(k in self.meta for k in ("fx", "fy", "cx", "cy")):
            return (
                float(self.meta["fx"]),
                float(self.meta["fy"]),
                float(self.meta["cx"]),
                float(self.meta["cy"]),
            )
        f = (width / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
        return (f, f, (width - 1) / 2.0, (height - 1) / 2.0)

    def read(self, loop: bool = False) -> tuple[int, np.ndarray] | None:
        """Next ``(index, bgr frame)``, or None at the end."""
        if self.sequence is not None:
            if self.index >= self.count:
                if not loop:
                    return None
                self.index = 0
            path = self.sequence / self.pattern.format(self.index)
            frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if frame is None:
                raise FileNotFoundError(f"cannot read frame {path}")
        else:
            ok, frame = self.capture.read()
            if not ok and loop and self.count:
                self.capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                self.index = 0
                ok, frame = self.capture.read()
            if not ok:
                return None
        index = self.index
        self.index += 1
        return index, frame

    def close(self) -> None:
        if self.capture is not None:
            self.capture.release()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="camera_replay", description=__doc__.split("\n\n")[0])
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--sequence", type=Path, help="folder from `lechpe-synth sequence`")
    src.add_argument("--video", help="video file")
    src.add_argument("--camera", type=int, help="camera device index")
    parser.add_argument("--rate", type=float, default=None, help="Hz (default: the source's fps)")
    parser.add_argument("--topic", default="/camera/image_raw")
    parser.add_argument("--info-topic", default=None, help="default: camera_info next to --topic")
    parser.add_argument("--frame-id", default="camera_optical_frame")
    parser.add_argument("--qos", choices=("reliable", "best_effort"), default="reliable")
    parser.add_argument(
        "--hfov", type=float, default=60.0, help="deg, for CameraInfo without intrinsics"
    )
    parser.add_argument("--no-camera-info", action="store_true", help="publish images only")
    parser.add_argument("--loop", action="store_true", help="start again at the end")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after this many")
    parser.add_argument(
        "--wait-subscribers",
        type=int,
        default=1,
        help="wait until the image topic has this many subscribers",
    )
    parser.add_argument(
        "--wait-timeout", type=float, default=120.0, help="s, for --wait-subscribers"
    )
    parser.add_argument(
        "--stamps-out", type=Path, default=None, help="CSV frame,sec,nanosec per frame"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``camera_replay``; returns the exit status."""
    args, ros_args = build_parser().parse_known_args(argv)
    try:
        source = FrameSource(args.sequence, args.video, args.camera)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        print(f"camera_replay: {exc}", file=sys.stderr)
        return 2
    rate = args.rate or source.fps
    if not (math.isfinite(rate) and rate > 0):
        print(f"camera_replay: --rate must be > 0, got {rate}", file=sys.stderr)
        return 2

    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image

    from lechpe_ros.image_conversion import bgr_to_image
    from lechpe_ros.parameters import camera_info_topic_for

    rclpy.init(args=ros_args)
    node = rclpy.create_node("camera_replay")
    reliability = (
        ReliabilityPolicy.RELIABLE if args.qos == "reliable" else ReliabilityPolicy.BEST_EFFORT
    )
    qos = QoSProfile(depth=5, reliability=reliability)
    image_pub = node.create_publisher(Image, args.topic, qos)
    info_pub = None
    if not args.no_camera_info:
        info_pub = node.create_publisher(
            CameraInfo, args.info_topic or camera_info_topic_for(args.topic), qos
        )
    stamps = open(args.stamps_out, "w", newline="") if args.stamps_out else None
    writer = csv.writer(stamps) if stamps else None
    if writer:
        writer.writerow(["frame", "sec", "nanosec"])
    log = node.get_logger()
    state = {"published": 0, "done": False, "status": 0}

    def publish_next() -> None:
        if state["done"]:
            return
        if args.max_frames is not None and state["published"] >= args.max_frames:
            state["done"] = True
            return
        item = source.read(loop=args.loop)
        if item is None:
            state["done"] = True
            return
        index, frame = item
        msg = bgr_to_image(frame)
        msg.header.stamp = node.get_clock().now().to_msg()
        msg.header.frame_id = args.frame_id
        if info_pub is not None:
            height, width = frame.shape[:2]
            fx, fy, cx, cy = source.intrinsics(width, height, args.hfov)
            info = CameraInfo()
            info.header = msg.header
            info.width, info.height = width, height
            info.distortion_model = "plumb_bob"
            info.d = [0.0] * 5
            info.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
            info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
            info.p = [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
            info_pub.publish(info)
        image_pub.publish(msg)
        if writer:
            writer.writerow([index, msg.header.stamp.sec, msg.header.stamp.nanosec])
            stamps.flush()
        state["published"] += 1

    try:
        # Wait (bounded) until the listener is there, so the first frames are not lost.
        deadline = time.monotonic() + args.wait_timeout
        while image_pub.get_subscription_count() < args.wait_subscribers:
            if time.monotonic() > deadline:
                log.error(f"no subscriber on {args.topic} after {args.wait_timeout:.0f} s")
                state["status"] = 1
                state["done"] = True
                break
            rclpy.spin_once(node, timeout_sec=0.1)
        if not state["done"]:
            log.info(f"publishing {args.topic} at {rate:.1f} Hz ({args.qos})")
            node.create_timer(1.0 / rate, publish_next)
        while rclpy.ok() and not state["done"]:
            rclpy.spin_once(node, timeout_sec=0.5)
        log.info(f"published {state['published']} frames")
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if stamps:
            stamps.close()
        source.close()
        node.destroy_node()
        rclpy.try_shutdown()
    return state["status"]


if __name__ == "__main__":
    sys.exit(main())
