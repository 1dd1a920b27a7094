"""Count the frames of an image topic in its own process (transport tests).

    python test/frame_counter.py TOPIC --reliability best_effort|reliable --duration S

Prints "ready" once subscribed, then "received K" (distinct frame_ids) after
``--duration`` seconds counted from the first frame (or ``--timeout`` without one).
"""

from __future__ import annotations

import argparse
import sys
import time

import rclpy
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("topic")
    parser.add_argument("--reliability", choices=("best_effort", "reliable"), required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    rclpy.init()
    node = rclpy.create_node("test_frame_counter")
    reliability = (
        ReliabilityPolicy.RELIABLE
        if args.reliability == "reliable"
        else ReliabilityPolicy.BEST_EFFORT
    )
    seen: set[str] = set()
    first: list[float] = []

    def on_image(msg: Image) -> None:
        if not first:
            first.append(time.monotonic())
        seen.add(msg.header.frame_id)

    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=reliability)
    node.create_subscription(Image, args.topic, on_image, qos)
    print("ready", flush=True)
    start = time.monotonic()
    while True:
        now = time.monotonic()
        if (first and now > first[0] + args.duration) or now > start + args.timeout:
            break
        rclpy.spin_once(node, timeout_sec=0.1)
    print(f"received {len(seen)}", flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
