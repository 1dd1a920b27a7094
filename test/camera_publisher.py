"""A camera in its own process: bgr8 frames (640x480 by default), RELIABLE, at a fixed rate.

    python test/camera_publisher.py TOPIC --frames N --rate HZ [--width W --height H]
        [--best-effort] [--wait-subscribers K]

Frames are stamped with the publisher's clock; frame_id is "frame_<k>" so a
receiver can count exactly which arrived. Prints "matched" once K
subscriptions are matched (condition, with a timeout), then waits for a line
on stdin (the test's go) before the first frame, and prints "sent N" at the
end. Used by the transport tests.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import rclpy
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("topic")
    parser.add_argument("--frames", type=int, default=25)
    parser.add_argument("--rate", type=float, default=5.0)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--best-effort", action="store_true")
    parser.add_argument("--wait-subscribers", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument(
        "--wait-reliable-reader",
        help="after the go, also wait until this participant has discovered a RELIABLE "
        "reader of the topic from this node name (a reader that replaced another one is "
        "matched asynchronously: frames sent before that would not reach it)",
    )
    args = parser.parse_args()
    rclpy.init()
    node = rclpy.create_node("test_camera")
    # A reliable writer keeps every frame of the run: a reader whose own side of the
    # match completes a little after the first frames (a loaded machine) gets them
    # re-sent instead of finding them already dropped from a short history.
    qos = QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=5 if args.best_effort else max(5, args.frames),
        reliability=ReliabilityPolicy.BEST_EFFORT
        if args.best_effort
        else ReliabilityPolicy.RELIABLE,
    )
    pub = node.create_publisher(Image, args.topic, qos)
    deadline = time.monotonic() + args.timeout
    while pub.get_subscription_count() < args.wait_subscribers:
        if time.monotonic() > deadline:
            print("no subscriber matched", flush=True)
            return 1
        rclpy.spin_once(node, timeout_sec=0.1)
    print("matched", flush=True)
    sys.stdin.readline()  # the test says go
    if args.wait_reliable_reader:

        def reliable_reader_matched() -> bool:
            # the node's readers are all reliable (the replaced one is gone) and the writer
            # counts as many matched readers as asked: then the reliable one is among them
            readers = [
                i
                for i in node.get_subscriptions_info_by_topic(args.topic)
                if i.node_name == args.wait_reliable_reader
            ]
            return (
                bool(readers)
                and all(i.qos_profile.reliability == ReliabilityPolicy.RELIABLE for i in readers)
                and pub.get_subscription_count() >= args.wait_subscribers
            )

        while not reliable_reader_matched():
            if time.monotonic() > deadline:
                print("no reliable reader matched", flush=True)
                return 1
            rclpy.spin_once(node, timeout_sec=0.1)
    rng = np.random.default_rng(0)
    width, height = args.width, args.height
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8).tobytes()
    period = 1.0 / args.rate
    start = time.monotonic()
    for k in range(args.frames):
        msg = Image(height=height, width=width, encoding="bgr8", step=width * 3)
        msg.header.stamp = node.get_clock().now().to_msg()
        msg.header.frame_id = f"frame_{k}"
        msg.data = pixels
        pub.publish(msg)
        rclpy.spin_once(node, timeout_sec=max(0.0, start + (k + 1) * period - time.monotonic()))
    # Give reliable retransmissions time to complete before the writer disappears.
    end = time.monotonic() + 3.0
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.1)
    print(f"sent {args.frames}", flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
