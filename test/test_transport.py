"""Frames lost in transport and ``qos: auto`` (issue 13, item 4), across real processes.

A camera process publishes 640x480 bgr8 frames (921,600 bytes) RELIABLE at 10 Hz.
Every process of this test except the test client loads
test/fastdds_udp_localhost.xml: Jazzy's default transports (shared memory with
the default 512 KiB segment + UDPv4) with UDP confined to 127.0.0.1, so the
frames, too large for the segment, travel over loopback UDP as on a robot with
the defaults, and nothing leaves this machine. The test client itself stays on
the shared-memory-only profile of conftest (small messages: diagnostics, poses).

A best-effort reader in another process (what ``qos: sensor_data`` gives) loses
frames there; the node on the default ``qos: auto`` switches to RELIABLE as soon
as the camera appears and receives every frame (``lost_in_transport`` 0).
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow]

pytest.importorskip("rclpy", reason="rclpy (ROS 2 Jazzy wheels) is not installed")

from test_pose_node import (  # noqa: E402
    START_TIMEOUT,
    Client,
    NodeProcess,
    _child_env,
    _params,
)

TEST_DIR = Path(__file__).resolve().parent
UDP_PROFILE = TEST_DIR / "fastdds_udp_localhost.xml"
FRAMES, RATE_HZ = 60, 10.0
TOPIC = "/lossy_cam/image_raw"


def _udp_env(env: dict[str, str]) -> dict[str, str]:
    env = dict(env)
    env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(UDP_PROFILE)
    env["FASTRTPS_DEFAULT_PROFILES_FILE"] = str(UDP_PROFILE)
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    return env


def _line(proc: subprocess.Popen) -> str:
    """Next stdout line of a helper process (the read is bounded by the helper's own
    --timeout: it always prints and exits)."""
    line = proc.stdout.readline()
    assert line, f"helper exited without output (status {proc.poll()})"
    return line.strip()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """Random-weight tiny checkpoint, exported to ONNX in the shared cache here."""
    import torch

    from lechpe_model.backends import create_backend
    from lechpe_model.checkpoint import save_checkpoint
    from lechpe_model.network import LECHPENet

    root = tmp_path_factory.mktemp("transport")
    torch.manual_seed(0)
    path = root / "random_tiny.safetensors"
    save_checkpoint(path, LECHPENet("mobilenet_v3_small", num_clusters=4), {"purpose": "transport"})
    env = _child_env(root / "cache")
    os.environ["LECHPE_CACHE_DIR"] = env["LECHPE_CACHE_DIR"]
    create_backend("onnxruntime", path, device="cpu")
    return {"root": root, "path": path, "env": env}


def test_qos_auto_receives_every_frame_best_effort_loses_over_udp(model):
    client = Client()
    env = _udp_env(model["env"])
    args = _params(
        image_topics=[TOPIC],
        model_path=str(model["path"]),
        backend="onnxruntime",
        device="cpu",
        diagnostics_period_s=0.5,
        max_face=3,  # misspelt on purpose: warned about at start
    ) + ["-r", "__node:=lechpe_pose_udp"]
    node = NodeProcess(args, env, model["root"] / "node.log")
    client.watch.append(node)
    helpers: list[subprocess.Popen] = []
    status = "lechpe_pose_udp: camera camera0"
    try:
        client.wait_for(lambda: status in client.diag, START_TIMEOUT, "the node's diagnostics")
        assert client.diag[status]["qos"] == "best_effort"  # no publisher yet: match anyone
        assert "unknown parameter 'max_face' is ignored (did you mean max_faces?)" in node.output()

        def helper(script: str, *extra: str) -> subprocess.Popen:
            proc = subprocess.Popen(
                [sys.executable, str(TEST_DIR / script), TOPIC, *extra],
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            helpers.append(proc)
            return proc

        counter = helper(
            "frame_counter.py",
            "--reliability",
            "best_effort",
            "--duration",
            "12",
            "--timeout",
            "240",
        )
        assert _line(counter) == "ready"
        camera = helper(
            "camera_publisher.py",
            "--frames",
            str(FRAMES),
            "--rate",
            str(RATE_HZ),
            "--wait-subscribers",
            "2",
            "--wait-reliable-reader",
            "lechpe_pose_udp",
            "--timeout",
            "120",
        )
        assert _line(camera) == "matched"
        # qos auto: the reliable camera appeared, the node re-subscribes RELIABLE.
        client.wait_for(
            lambda: client.diag.get(status, {}).get("qos") == "reliable",
            30,
            "qos auto switching to reliable",
            show=status,
        )
        client.wait_for(
            lambda: node_matched(client, TOPIC), 30, "the node's reliable reader matched"
        )
        camera.stdin.write("go\n")
        camera.stdin.flush()
        assert _line(camera) == f"sent {FRAMES}"
        best_effort = int(_line(counter).split()[1])

        def delivered():
            d = client.diag.get(status, {})
            return int(d.get("received_frames", 0)) >= FRAMES and d

        values = client.wait_for(delivered, 60, f"{FRAMES} frames at the node", show=status)
        assert int(values["received_frames"]) == FRAMES
        assert int(values["lost_in_transport"]) == 0
        # The camera left: no publisher, back to best effort (re-evaluated as they go).
        client.wait_for(
            lambda: client.diag.get(status, {}).get("qos") == "best_effort",
            30,
            "qos auto back to best effort after the camera left",
            show=status,
        )
        log = node.output()
        assert "camera camera0: input QoS best_effort -> reliable" in log
        assert "camera camera0: input QoS reliable -> best_effort" in log
        # The loss this fixes: the best-effort reader of the same frames usually misses
        # some (8-30 of 60 here). That is the transport's behaviour, not this package's,
        # and a fast idle host may deliver all of them, so it is reported, not asserted.
        if best_effort >= FRAMES:
            warnings.warn(
                f"best effort received all {FRAMES} frames over loopback UDP this time; "
                "the loss qos auto avoids did not reproduce on this host",
                stacklevel=1,
            )
        print(f"best effort: {best_effort}/{FRAMES}, qos auto: {FRAMES}/{FRAMES}")
    finally:
        for proc in helpers:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
        client.watch.remove(node)
        node.kill()
        client.close()


def node_matched(client: Client, topic: str) -> bool:
    """The node's reliable reader is in the graph (seen from the test client)."""
    from rclpy.qos import ReliabilityPolicy

    infos = client.node.get_subscriptions_info_by_topic(topic)
    return any(
        i.node_name == "lechpe_pose_udp" and i.qos_profile.reliability == ReliabilityPolicy.RELIABLE
        for i in infos
    )


def test_robot_profile_carries_1080p_frames_in_shared_memory(tmp_path):
    """config/fastdds_robot.xml: 1920x1080 bgr8 (6.2 MB) frames, best effort, all arrive.

    The shipped profile's UDP transport is confined to 127.0.0.1 for this test (a
    copy with an interface allowlist), so only the shared-memory segment size is
    under test and nothing leaves this machine."""
    import xml.etree.ElementTree as ET

    ns = "http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles"
    ET.register_namespace("", ns)
    tree = ET.parse(TEST_DIR.parent / "config" / "fastdds_robot.xml")
    for descriptor in tree.getroot().iter(f"{{{ns}}}transport_descriptor"):
        if descriptor.find(f"{{{ns}}}type").text == "UDPv4":
            allow = ET.SubElement(descriptor, f"{{{ns}}}interfaceWhiteList")
            ET.SubElement(allow, f"{{{ns}}}address").text = "127.0.0.1"
    confined = tmp_path / "robot_confined.xml"
    tree.write(confined, xml_declaration=True, encoding="UTF-8")
    env = dict(os.environ)
    env["FASTDDS_DEFAULT_PROFILES_FILE"] = env["FASTRTPS_DEFAULT_PROFILES_FILE"] = str(confined)
    frames = 20
    procs = []
    try:
        counter = subprocess.Popen(
            [sys.executable, str(TEST_DIR / "frame_counter.py"), "/hd_cam/image_raw"]
            + ["--reliability", "best_effort", "--duration", "8", "--timeout", "180"],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(counter)
        assert _line(counter) == "ready"
        camera = subprocess.Popen(
            [sys.executable, str(TEST_DIR / "camera_publisher.py"), "/hd_cam/image_raw"]
            + ["--frames", str(frames), "--rate", "5", "--width", "1920", "--height", "1080"]
            + ["--best-effort", "--wait-subscribers", "1", "--timeout", "120"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(camera)
        assert _line(camera) == "matched"
        camera.stdin.write("go\n")
        camera.stdin.flush()
        assert _line(camera) == f"sent {frames}"
        assert _line(counter) == f"received {frames}"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
