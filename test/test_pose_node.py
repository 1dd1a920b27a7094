"""The lechpe_pose node over real ROS 2 transport, in separate processes.

The node runs as ``python -m lechpe_ros.pose_node`` in a child process (DDS
confined to this host by conftest); this process publishes frames and
subscribes to the outputs with rclpy. Every wait is a condition wait with a
timeout. Frames come from a short rendered sequence (``lechpe-synth sequence``
run as a command); the model is a random-weight checkpoint written here unless
noted (the default-model accuracy test needs the shipped asset).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow]

rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2 Jazzy wheels) is not installed")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import PoseArray, PoseStamped  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2  # noqa: E402

from lechpe_model.conventions import euler_to_quaternion, ray_to_camera_euler  # noqa: E402
from lechpe_ros.diagnostics import status_values  # noqa: E402
from lechpe_ros.image_conversion import bgr_to_compressed, bgr_to_image  # noqa: E402
from lechpe_ros.pose_messages import cloud_to_table  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 180.0  # torch/ONNX import + export on 2 busy cores
ANSWER_TIMEOUT = 60.0
FRAME_ID = "synth_camera_optical_frame"
NUM_FRAMES = 12


# ----------------------------------------------------------------------------- processes
def _child_env(cache_dir: Path) -> dict[str, str]:
    env = dict(os.environ)  # DDS confinement from conftest
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["LECHPE_CACHE_DIR"] = str(cache_dir)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class NodeProcess:
    """``python -m lechpe_ros.pose_node --ros-args ...`` with output captured in a file."""

    def __init__(self, ros_args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.cmd = [sys.executable, "-m", "lechpe_ros.pose_node", "--ros-args", *ros_args]
        self.proc = subprocess.Popen(
            self.cmd, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def interrupt(self, timeout: float = 60.0) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._log.close()


def _run_node_to_exit(ros_args: list[str], env: dict[str, str], timeout: float = 120.0):
    result = subprocess.run(
        [sys.executable, "-m", "lechpe_ros.pose_node", "--ros-args", *ros_args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return result.returncode, result.stdout + result.stderr


def _params(**values) -> list[str]:
    args = []
    for key, value in values.items():
        if isinstance(value, list):
            value = "[" + ", ".join(value) + "]"
        elif isinstance(value, bool):
            value = str(value).lower()
        args += ["-p", f"{key}:={value}"]
    return args


# ----------------------------------------------------------------------------- test client
class Client:
    """A node in this process: publishers, subscriptions that record, condition waits."""

    def __init__(self) -> None:
        self.context = rclpy.context.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("lechpe_test_client", context=self.context)
        self.cond = threading.Condition()
        self.received: dict[str, list] = defaultdict(list)
        self.diag: dict[str, dict[str, str]] = {}
        self.diag_levels: dict[str, int] = {}
        self.diag_messages: dict[str, str] = {}
        self.subscriptions: dict[str, object] = {}
        self.diag_counts: dict[str, int] = {}  # messages per status name
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.subscribe("/diagnostics", DiagnosticArray, self._on_diag)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()
        self.watch: list[NodeProcess] = []

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # shutdown while spinning
            pass

    def fresh_diagnostics(self, name: str, timeout: float = 30.0) -> None:
        """Wait for two more messages carrying status ``name``: the second was built after
        this call. Counted per name: other nodes on the graph publish /diagnostics too."""
        with self.cond:
            target = self.diag_counts.get(name, 0) + 2
        self.wait_for(
            lambda: self.diag_counts.get(name, 0) >= target, timeout, f"fresh diagnostics of {name}"
        )

    def _on_diag(self, msg: DiagnosticArray) -> None:
        with self.cond:
            for status in msg.status:
                self.diag_counts[status.name] = self.diag_counts.get(status.name, 0) + 1
                self.diag[status.name] = status_values(status)
                level = status.level  # a 'byte' field: bytes of length 1 in rclpy
                self.diag_levels[status.name] = level[0] if isinstance(level, bytes) else int(level)
                self.diag_messages[status.name] = status.message
            self.cond.notify_all()

    def subscribe(self, topic: str, msg_type, callback=None, qos: int | QoSProfile = 50):
        if topic in self.subscriptions:  # one recording subscription per topic
            return self.subscriptions[topic]

        def record(msg):
            with self.cond:
                self.received[topic].append(msg)
                if callback is not None:
                    callback(msg)
                self.cond.notify_all()

        sub = self.node.create_subscription(msg_type, topic, callback or record, qos)
        self.subscriptions[topic] = sub
        return sub

    def publisher(self, topic: str, msg_type, reliable: bool = True):
        qos = QoSProfile(
            depth=10,
            reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        )
        return self.node.create_publisher(msg_type, topic, qos)

    def wait_for(self, predicate, timeout: float, what: str, show: str | None = None):
        """Wait until ``predicate()`` is truthy (checked on every message); fail with context."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                value = predicate()
                if value:
                    return value
                for proc in self.watch:
                    if not proc.alive():
                        pytest.fail(f"node died while waiting for {what}:\n{proc.output()[-4000:]}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    logs = "\n".join(p.output()[-3000:] for p in self.watch)
                    if show is not None:
                        logs = f"diagnostics {show}: {self.diag.get(show)}\n{logs}"
                    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{logs}")
                self.cond.wait(min(remaining, 0.5))

    def wait_connected(self, publisher, topics: list[str], timeout: float = 60.0) -> None:
        """Wait until DDS matched our publisher to the node and the node's outputs to us.

        A reliable, volatile publisher drops what it sends before it is matched, so a
        frame sent once right after creating the publisher could be lost.
        """
        self.wait_for(
            lambda: (
                publisher.get_subscription_count() > 0
                and all(self.subscriptions[t].get_publisher_count() > 0 for t in topics)
            ),
            timeout,
            f"DDS matching of {publisher.topic_name} and {', '.join(topics)}",
        )

    def matched(self, topic: str, stamp) -> list:
        return [m for m in self.received[topic] if _stamp(m.header) == stamp]

    def send_until_answered(
        self, publisher, msg, topic: str, retry_s: float = 5.0, timeout: float | None = None
    ) -> list:
        """Publish ``msg`` every ``retry_s`` until ``topic`` carries its stamp; the answers.

        The first frame of a fresh node went unanswered in 2 of ~8 full CI runs although
        DDS had matched (cause not found), and a best-effort publisher left on a topic by
        an earlier test makes ``qos: auto`` drop frames: resending within one overall
        timeout covers both.
        """
        stamp = _stamp(msg.header)
        deadline = time.monotonic() + (ANSWER_TIMEOUT if timeout is None else timeout)
        while not self.matched(topic, stamp):
            if time.monotonic() >= deadline:
                pytest.fail(f"no {topic} for the frame stamped {stamp}")
            publisher.publish(msg)
            with self.cond:
                self.cond.wait_for(lambda: self.matched(topic, stamp), timeout=retry_s)
        return self.matched(topic, stamp)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self.thread.join(timeout=10)


def _stamp(header) -> tuple[int, int]:
    return (int(header.stamp.sec), int(header.stamp.nanosec))


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Rendered sequence, random-weight checkpoint, shared ONNX cache."""
    import torch

    from lechpe_model.checkpoint import save_checkpoint
    from lechpe_model.network import LECHPENet

    root = tmp_path_factory.mktemp("pose_node")
    seq = root / "sequence"
    env = _child_env(root / "cache")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "training.synth.cli",
            "sequence",
            str(seq),
            "--frames",
            str(NUM_FRAMES),
            "--seed",
            "5",
        ],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    torch.manual_seed(0)
    model_path = root / "random_tiny.safetensors"
    save_checkpoint(
        model_path,
        LECHPENet("mobilenet_v3_small", num_clusters=4),
        {"purpose": "node test"},
        dtype=torch.float16,
    )
    meta = json.loads((seq / "sequence.json").read_text())
    frames = [cv2.imread(str(seq / meta["frame_pattern"].format(i))) for i in range(NUM_FRAMES)]
    with open(seq / "ground_truth.csv") as f:
        truth = list(csv.DictReader(f))
    return {
        "root": root,
        "seq": seq,
        "meta": meta,
        "frames": frames,
        "truth": truth,
        "model": model_path,
        "env": env,
    }


@pytest.fixture(scope="module")
def reference(assets):
    """The runtime library in this process on the same model: the independent computation.

    Building it also exports the checkpoint to ONNX in the shared cache, so the
    node processes start from the cached file.
    """
    from lechpe_model.backends import create_backend
    from lechpe_model.detection import create_detector
    from lechpe_model.pipeline import PoseEstimator

    os.environ["LECHPE_CACHE_DIR"] = assets["env"]["LECHPE_CACHE_DIR"]
    backend = create_backend("onnxruntime", assets["model"], device="cpu")
    return PoseEstimator(create_detector("auto"), backend, max_faces=10)


@pytest.fixture(scope="module")
def client():
    c = Client()
    yield c
    c.close()


@pytest.fixture(scope="module")
def node(assets, reference, client):
    """One single-camera node loaded from config/pose.yaml with a few overrides."""
    args = ["--params-file", str(REPO / "config" / "pose.yaml")] + _params(
        model_path=str(assets["model"]),
        backend="onnxruntime",
        device="cpu",
        diagnostics_period_s=0.5,
    )
    proc = NodeProcess(args, assets["env"], assets["root"] / "node.log")
    client.watch.append(proc)
    client.wait_for(
        lambda: "lechpe_pose: head pose estimation" in client.diag,
        START_TIMEOUT,
        "the node's first diagnostics",
    )
    yield proc
    if proc in client.watch:
        client.watch.remove(proc)
    proc.kill()


@pytest.fixture(scope="module")
def multi_node(assets, reference, client):
    """Two compressed cameras in one node (reliable QoS, short camera timeout), namespace /multi."""
    args = _params(
        image_topics=["/cam_front/image_raw", "/cam_back/image_raw"],
        camera_names=["front", "back"],
        model_path=str(assets["model"]),
        backend="onnxruntime",
        device="cpu",
        qos="reliable",
        compressed_input=True,
        camera_timeout_s=1.0,
        diagnostics_period_s=0.3,
    ) + ["-r", "__node:=lechpe_pose_multi", "-r", "__ns:=/multi"]
    proc = NodeProcess(args, assets["env"], assets["root"] / "multi_node.log")
    client.watch.append(proc)
    client.wait_for(
        lambda: "lechpe_pose_multi: head pose estimation" in client.diag,
        START_TIMEOUT,
        "the multi node's diagnostics",
    )
    yield proc
    if proc in client.watch:
        client.watch.remove(proc)
    proc.kill()


def _compressed_msg(assets, index: int, stamp: tuple[int, int], frame_id: str) -> CompressedImage:
    msg = bgr_to_compressed(assets["frames"][index % NUM_FRAMES], fmt="png")
    msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
    msg.header.frame_id = frame_id
    return msg


def _frame_msg(assets, index: int, stamp: tuple[int, int], frame_id: str = FRAME_ID) -> Image:
    msg = bgr_to_image(assets["frames"][index % NUM_FRAMES])
    msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
    msg.header.frame_id = frame_id
    return msg


@contextlib.contextmanager
def _named_node(client: Client, assets, name: str, namespace: str, params: list[str]):
    """A node process of its own (``name`` in ``/namespace``) for one test: started,
    waited for until its first diagnostics arrive, killed afterwards."""
    proc = NodeProcess(
        params + ["-r", f"__node:={name}", "-r", f"__ns:=/{namespace}"],
        assets["env"],
        assets["root"] / f"{name}.log",
    )
    client.watch.append(proc)
    try:
        client.wait_for(
            lambda: f"{name}: head pose estimation" in client.diag, START_TIMEOUT, f"node {name}"
        )
        yield proc
    finally:
        if proc in client.watch:
            client.watch.remove(proc)
        proc.kill()


def _camera_info(assets, header) -> CameraInfo:
    meta = assets["meta"]
    info = CameraInfo()
    info.header = header
    info.width, info.height = meta["width"], meta["height"]
    info.k = [meta["fx"], 0.0, meta["cx"], 0.0, meta["fy"], meta["cy"], 0.0, 0.0, 1.0]
    info.distortion_model = "plumb_bob"
    info.d = [0.0] * 5
    return info


def _diag_int(client: Client, status: str, key: str) -> int:
    return int(client.diag.get(status, {}).get(key, "0"))


# ----------------------------------------------------------------------------- tests
def test_help_needs_no_ros_graph():
    # --help prints the parameters and exits 0 before rclpy.init (no participant).
    env = dict(os.environ, PYTHONPATH=str(REPO), ROS_DOMAIN_ID="not-a-number")
    out = subprocess.run(
        [sys.executable, "-m", "lechpe_ros.pose_node", "--help"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    for name in (
        "image_topics",
        "backend",
        "model_path",
        "max_rate_hz",
        "qos",
        "detection_threshold",
    ):
        assert name in out.stdout
    assert "default 'auto'" in out.stdout and "[0.0, 1.0]" in out.stdout


def test_known_pose_frames_match_the_runtime_library(assets, reference, client, node):
    """Plumbing: same model + PoseEstimator here -> same angles; quaternion from conventions."""
    pub = client.publisher("/camera/image_raw", Image)
    info_pub = client.publisher("/camera/camera_info", CameraInfo)
    client.subscribe("/head_pose", PoseStamped)
    client.subscribe("/head_pose_faces", PointCloud2)
    client.subscribe("/head_poses", PoseArray)
    status = "lechpe_pose: camera camera0"
    # Real cameras send CameraInfo with every frame; wait until the node has one.
    first = _frame_msg(assets, 0, (100, 0))
    info_pub.publish(_camera_info(assets, first.header))
    client.wait_for(
        lambda: client.diag.get(status, {}).get("camera_info") == "yes",
        60,
        "CameraInfo at the node",
    )
    meta = assets["meta"]
    for i in range(6):
        stamp = (100 + i, 1000 * i)
        msg = _frame_msg(assets, i, stamp)
        info_pub.publish(_camera_info(assets, msg.header))
        pub.publish(msg)
        pose = client.wait_for(
            lambda s=stamp: client.matched("/head_pose", s), ANSWER_TIMEOUT, f"/head_pose {stamp}"
        )[0]
        cloud = client.wait_for(
            lambda s=stamp: client.matched("/head_pose_faces", s), ANSWER_TIMEOUT, "faces"
        )[0]
        poses = client.wait_for(
            lambda s=stamp: client.matched("/head_poses", s), ANSWER_TIMEOUT, "poses"
        )[0]
        for out in (pose, cloud, poses):
            assert out.header.frame_id == FRAME_ID and _stamp(out.header) == stamp
        expected = reference.estimate(assets["frames"][i])
        assert expected.error is None and len(expected.faces) >= 1
        table = cloud_to_table(cloud)
        assert len(table["yaw"]) == len(expected.faces) == len(poses.poses)
        angles = np.stack([table["yaw"], table["pitch"], table["roll"]], axis=1)
        np.testing.assert_allclose(angles, [f.angles for f in expected.faces], atol=1e-3)
        np.testing.assert_allclose(
            table["yaw_std"], [f.uncertainty[0] for f in expected.faces], atol=1e-3
        )
        np.testing.assert_allclose(
            table["confidence"], [f.confidence for f in expected.faces], atol=1e-4
        )
        primary = expected.faces[0]  # largest box first
        q = pose.pose.orientation
        p = pose.pose.position
        # The network's ray-relative pose turned into the optical frame along the face's ray.
        camera_angles = ray_to_camera_euler(primary.angles.astype(float), [p.x, p.y, p.z])
        np.testing.assert_allclose(
            [q.x, q.y, q.z, q.w], euler_to_quaternion(*camera_angles), atol=2e-5
        )
        # Position from CameraInfo: on the box centre's ray, depth fx * face_width / box width.
        x1, y1, x2, y2 = (float(v) for v in primary.box)
        p = pose.pose.position
        z = meta["fx"] * 0.14 / (x2 - x1)
        assert p.z == pytest.approx(z, rel=1e-4)
        assert meta["fx"] * p.x / p.z + meta["cx"] == pytest.approx((x1 + x2) / 2, abs=1e-2)
        assert meta["fy"] * p.y / p.z + meta["cy"] == pytest.approx((y1 + y2) / 2, abs=1e-2)
        # The detector found the rendered face: the box centre is near the ground truth's.
        gt = assets["truth"][i]
        gt_u = (float(gt["x1"]) + float(gt["x2"])) / 2
        assert abs((x1 + x2) / 2 - gt_u) < 40


def test_default_model_pose_within_tolerance(assets, client):
    """With the shipped default model: /head_pose angles within tolerance of ground truth."""
    try:
        from lechpe_model.default_model import default_model_path

        path = Path(default_model_path())
    except Exception as exc:
        pytest.skip(
            f"default model not available yet ({exc}); trained by the lead (docs/RESULTS.md)"
        )
    if not path.is_file():
        pytest.skip(f"default model asset {path} is absent (trained by the lead, docs/RESULTS.md)")
    # detect_every=2: half the frames reuse the previous frame's box (lag of one frame)
    params = _params(
        image_topics=["/default_cam/image_raw"], backend="onnxruntime", device="cpu", detect_every=2
    )
    with _named_node(client, assets, "lechpe_pose_default", "default", params):
        pub = client.publisher("/default_cam/image_raw", Image)
        client.subscribe("/default/head_pose", PoseStamped)
        client.subscribe("/default/head_pose_faces", PointCloud2)
        client.wait_connected(pub, ["/default/head_pose", "/default/head_pose_faces"])
        errors = []
        for i in range(NUM_FRAMES):
            stamp = (300 + i, 0)
            client.send_until_answered(pub, _frame_msg(assets, i, stamp), "/default/head_pose")
            cloud = client.wait_for(
                lambda s=stamp: client.matched("/default/head_pose_faces", s),
                ANSWER_TIMEOUT,
                "faces",
            )[0]
            table = cloud_to_table(cloud)
            primary = int(
                np.argmax((table["box_x2"] - table["box_x1"]) * (table["box_y2"] - table["box_y1"]))
            )
            gt = assets["truth"][i]
            predicted = [table[k][primary] for k in ("yaw", "pitch", "roll")]
            errors.append(
                np.abs(np.array(predicted) - [float(gt[k]) for k in ("yaw", "pitch", "roll")])
            )
        mae = np.mean(errors, axis=0)
        # The default model's MAE on held-out synthetic identities is 2.5-5.8 deg per
        # angle (docs/RESULTS.md); 12 frames are noisy, so allow about twice that.
        assert np.all(mae < 8.0), f"per-angle MAE (yaw, pitch, roll) {mae} deg"


def test_malformed_messages_interleaved_with_good_ones(assets, client, node):
    """200 malformed images between 20 good ones: every good one answered, drops counted."""
    pub = client.publisher("/camera/image_raw", Image)
    client.subscribe("/head_pose", PoseStamped)
    status = "lechpe_pose: camera camera0"
    client.wait_for(lambda: status in client.diag, 30, "camera diagnostics")
    client.wait_connected(pub, ["/head_pose"])
    keys = (
        "received_frames",
        "lost_in_transport",
        "rejected_frames",
        "dropped_frames",
        "processed_frames",
    )
    client.fresh_diagnostics(status)  # counters after the previous test's frames
    before = {k: _diag_int(client, status, k) for k in keys}

    def malformed(k: int) -> Image:
        good = _frame_msg(assets, 0, (900, k))
        kind = k % 5
        if kind == 0:  # truncated data
            good.data = bytes(good.data)[: len(good.data) // 2]
        elif kind == 1:  # step disagrees with width
            good.step = good.step - 7
        elif kind == 2:  # unknown encoding
            good.encoding = "bayer_xyz16"
        elif kind == 3:  # zero size
            good.width, good.height, good.step, good.data = 0, 0, 0, b""
        else:  # more data than step*height
            good.data = bytes(good.data) + b"\x00" * 11
        return good

    bad_sent = 0
    for i in range(20):
        stamp = (500 + i, 7)
        pub.publish(_frame_msg(assets, i, stamp))
        client.wait_for(
            lambda s=stamp: client.matched("/head_pose", s),
            ANSWER_TIMEOUT,
            f"answer to good frame {i}",
        )
        for _ in range(10):
            pub.publish(malformed(bad_sent))
            bad_sent += 1
    assert bad_sent == 200
    assert node.alive()
    # The node still serves the next good frame (it also closes the publisher's sequence,
    # so that malformed messages lost in transport at the end are counted as gaps).
    pub.publish(_frame_msg(assets, 3, (777, 0)))
    client.wait_for(
        lambda: client.matched("/head_pose", (777, 0)), ANSWER_TIMEOUT, "good frame after the storm"
    )

    def settled():
        d = client.diag.get(status, {})
        delta = {k: int(d.get(k, 0)) - before[k] for k in keys}
        # Every one of the 221 messages is accounted for: received (then processed,
        # rejected or overwritten in the latest-frame slot) or lost in transport.
        done = delta["received_frames"] + delta["lost_in_transport"] == 221
        return done and delta["processed_frames"] == 21 and delta

    delta = client.wait_for(
        settled, 60, f"diagnostics accounting for 221 messages (before {before})", show=status
    )
    assert delta["rejected_frames"] + delta["dropped_frames"] + delta["lost_in_transport"] == 200
    assert delta["rejected_frames"] >= 1
    assert "rejected frame" in client.diag[status]["last_error"]
    assert node.alive()


@pytest.mark.parametrize("reliable", [True, False], ids=["reliable", "best_effort"])
def test_reliable_and_best_effort_cameras(assets, client, node, reliable):
    pub = client.publisher("/camera/image_raw", Image, reliable=reliable)
    client.subscribe("/head_pose", PoseStamped)
    base = 600 if reliable else 650
    for i in range(3):
        stamp = (base + i, 0)
        # Best effort may lose a sample before discovery completes: resend until answered.
        client.send_until_answered(pub, _frame_msg(assets, i, stamp), "/head_pose", retry_s=2.0)


def test_debug_image_only_while_subscribed(assets, client, node):
    pub = client.publisher("/camera/image_raw", Image)
    client.subscribe("/head_pose", PoseStamped)
    status = "lechpe_pose: camera camera0"
    stamp = (700, 0)
    client.wait_connected(pub, ["/head_pose"])
    pub.publish(_frame_msg(assets, 2, stamp))
    client.wait_for(
        lambda: client.matched("/head_pose", stamp), ANSWER_TIMEOUT, "pose without debug subscriber"
    )
    client.fresh_diagnostics(status)
    assert client.diag[status]["debug_images"] == "0"
    client.subscribe("/lechpe_pose/debug_image", Image)
    for i in range(40):  # until the node has discovered the subscription
        stamp = (701 + i, 0)
        pub.publish(_frame_msg(assets, 2, stamp))
        client.wait_for(lambda s=stamp: client.matched("/head_pose", s), ANSWER_TIMEOUT, "pose")
        if client.received["/lechpe_pose/debug_image"]:
            break
    debug = client.wait_for(
        lambda: client.received["/lechpe_pose/debug_image"], 30, "a debug image"
    )[0]
    assert debug.header.frame_id == FRAME_ID
    assert (debug.width, debug.height, debug.encoding) == (
        assets["meta"]["width"],
        assets["meta"]["height"],
        "bgr8",
    )
    drawn = np.frombuffer(bytes(debug.data), np.uint8).reshape(debug.height, debug.width, 3)
    assert np.any(drawn != assets["frames"][2])  # boxes and axes were drawn
    client.wait_for(
        lambda: int(client.diag[status]["debug_images"]) >= 1, 30, "debug image counter"
    )


def test_two_cameras_share_one_node(assets, reference, client, multi_node):
    # compressed_input: the node subscribes to <image_topic>/compressed (image_transport names)
    front = client.publisher("/cam_front/image_raw/compressed", CompressedImage)
    back = client.publisher("/cam_back/image_raw/compressed", CompressedImage)
    client.subscribe("/multi/front/head_pose", PoseStamped)
    client.subscribe("/multi/back/head_pose", PoseStamped)
    client.subscribe("/multi/front/head_pose_faces", PointCloud2)
    for i in range(3):
        sf, sb = (800 + i, 1), (800 + i, 2)
        front.publish(_compressed_msg(assets, i, sf, "front_optical_frame"))
        back.publish(_compressed_msg(assets, i + 5, sb, "back_optical_frame"))
        a = client.wait_for(
            lambda s=sf: client.matched("/multi/front/head_pose", s), ANSWER_TIMEOUT, "front"
        )[0]
        b = client.wait_for(
            lambda s=sb: client.matched("/multi/back/head_pose", s), ANSWER_TIMEOUT, "back"
        )[0]
        assert (
            a.header.frame_id == "front_optical_frame" and b.header.frame_id == "back_optical_frame"
        )
    # PNG is lossless: the front camera's faces equal the library's on the raw frame.
    cloud = client.wait_for(
        lambda: client.matched("/multi/front/head_pose_faces", (802, 1)), ANSWER_TIMEOUT, "faces"
    )[0]
    expected = reference.estimate(assets["frames"][2])
    np.testing.assert_allclose(
        cloud_to_table(cloud)["yaw"], [f.angles[0] for f in expected.faces], atol=1e-3
    )
    # Each camera's outputs carry only its own frames.
    assert all(
        m.header.frame_id == "front_optical_frame"
        for m in client.received["/multi/front/head_pose"]
    )
    assert all(
        m.header.frame_id == "back_optical_frame" for m in client.received["/multi/back/head_pose"]
    )
    # Dropout: the front camera goes silent -> WARN in its status; frames resume -> served again.
    name = "lechpe_pose_multi: camera front"
    client.wait_for(
        lambda: (
            client.diag_levels.get(name) == 1
            and "no image for" in client.diag_messages.get(name, "")
        ),
        30,
        "dropout warning",
    )
    stamp = (850, 0)
    front.publish(_compressed_msg(assets, 1, stamp, "front_optical_frame"))
    client.wait_for(
        lambda: client.matched("/multi/front/head_pose", stamp),
        ANSWER_TIMEOUT,
        "frame after dropout",
    )
    summary = client.diag["lechpe_pose_multi: head pose estimation"]
    assert summary["cameras"] == "2" and summary["backend"] == "onnxruntime"


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"max_faces": 0}, "max_faces"),
        ({"detect_every": 0}, "detect_every"),
        ({"detection_threshold": 1.5}, "detection_threshold"),
        (
            {"backend": "magic"},
            "parameter backend = 'magic': must be one of auto, tensorrt, onnxruntime, torch",
        ),
        ({"qos": "fast"}, "parameter qos = 'fast': must be one of auto, sensor_data, reliable"),
        (
            {"image_topics": ["/a/image", "/b/image"], "camera_names": ["only_one"]},
            "camera_names has 1 entries for 2 image_topics",
        ),
        ({"image_topics": ["/bad topic"]}, "is not a valid topic name"),
    ],
)
def test_invalid_parameters_are_rejected_with_the_reason(assets, params, expected):
    rc, out = _run_node_to_exit(_params(**params), assets["env"])
    assert rc == 2, out
    assert "invalid parameter" in out and expected in out, out
    assert "Traceback" not in out
    if params.get("max_faces") == 0:
        assert "out of range" in out


def test_missing_model_fails_at_start_with_path_and_instructions(assets):
    missing = assets["root"] / "no_such_model.safetensors"
    rc, out = _run_node_to_exit(_params(model_path=str(missing)), assets["env"])
    assert rc == 1, out
    assert str(missing) in out and "To obtain weights" in out and "lechpe-train" in out
    assert "Traceback" not in out


def test_corrupt_model_fails_at_start_with_path_and_instructions(assets):
    corrupt = assets["root"] / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + bytes(100))
    rc, out = _run_node_to_exit(
        _params(model_path=str(corrupt), backend="onnxruntime"), assets["env"]
    )
    assert rc == 1, out
    assert f"cannot load model {corrupt}" in out and "To obtain weights" in out
    assert "Traceback" not in out


def test_latency_only_for_stamps_on_the_node_clock(assets, client, node):
    """Issue 13: bag/simulation stamps gave latency_p50_ms ~ 1.8e12. Frames stamped far
    from the node's clock are left out with one WARN; a frame stamped now is counted."""
    summary = "lechpe_pose: head pose estimation"
    pub = client.publisher("/camera/image_raw", Image)
    client.subscribe("/head_pose", PoseStamped)
    client.wait_connected(pub, ["/head_pose"])

    def send_until_answered(stamp):
        # Earlier tests leave a best-effort publisher on this topic (qos: auto drops frames)
        client.send_until_answered(pub, _frame_msg(assets, 1, stamp), "/head_pose", retry_s=3.0)

    for stamp in ((40, 0), (41, 0)):  # a simulation clock, far from the wall clock
        send_until_answered(stamp)
    client.fresh_diagnostics(summary)
    assert client.diag[summary]["latency_p50_ms"] == "nan"  # every frame so far: other clock
    assert node.output().count("image stamps are not comparable with the node's clock") == 1
    now = client.node.get_clock().now().to_msg()
    stamp = (int(now.sec), int(now.nanosec))
    send_until_answered(stamp)
    # The latency is recorded before the answer is published, so the next diagnostics
    # built after the answer carry it; wait on that condition rather than a count.
    client.wait_for(
        lambda: client.diag[summary]["latency_p50_ms"] != "nan", 30.0, "latency in diagnostics"
    )
    latency = float(client.diag[summary]["latency_p50_ms"])
    assert 0.0 < latency < ANSWER_TIMEOUT * 1000.0


def test_unavailable_device_names_the_device_without_the_weights_hint(assets):
    # Before: exit 1 with the unrelated "To obtain weights" hint.
    rc, out = _run_node_to_exit(
        _params(model_path=str(assets["model"]), backend="onnxruntime", device="cuda:7"),
        assets["env"],
    )
    assert rc == 1, out
    assert "cannot use backend 'onnxruntime' on device 'cuda:7'" in out, out
    assert "To obtain weights" not in out and "Traceback" not in out


def test_hostile_compressed_images_do_not_stop_the_worker(assets, client, multi_node):
    """Issue 13: a 312-byte PNG declaring 40000x40000 and random bytes behind a GIF
    signature killed the worker (cv2.error escaped); now both are counted `rejected`
    and the next good frame is answered."""
    from hostile_images import gif_garbage, jpeg_declaring, png_declaring

    front = client.publisher("/cam_front/image_raw/compressed", CompressedImage)
    client.subscribe("/multi/front/head_pose", PoseStamped)
    status = "lechpe_pose_multi: camera front"
    summary = "lechpe_pose_multi: head pose estimation"
    client.wait_connected(front, ["/multi/front/head_pose"])
    client.fresh_diagnostics(status)
    before = {k: _diag_int(client, status, k) for k in ("rejected_frames", "failed_frames")}
    hostile = [png_declaring(40000, 40000), gif_garbage(), jpeg_declaring(30000, 30000)]
    for k, data in enumerate(hostile):
        msg = CompressedImage(format="png", data=data)
        msg.header.stamp.sec, msg.header.stamp.nanosec = 870, k
        front.publish(msg)
        client.wait_for(
            lambda n=k + 1: (
                _diag_int(client, status, "rejected_frames") >= before["rejected_frames"] + n
            ),
            ANSWER_TIMEOUT,
            f"hostile image {k} rejected",
            show=status,
        )
    stamp = (871, 0)
    front.publish(_compressed_msg(assets, 2, stamp, "front_optical_frame"))
    client.wait_for(
        lambda: client.matched("/multi/front/head_pose", stamp), ANSWER_TIMEOUT, "good frame"
    )
    client.fresh_diagnostics(status)
    assert _diag_int(client, status, "rejected_frames") == before["rejected_frames"] + 3
    assert _diag_int(client, status, "failed_frames") == before["failed_frames"]
    assert "declares 30000x30000 px" in client.diag[status]["last_error"]
    assert client.diag[summary]["worker_alive"] == "True"
    assert client.diag_levels[summary] < 2 and multi_node.alive()


def _set_parameters(client: Client, node_name: str, **values):
    from rcl_interfaces.msg import Parameter as ParameterMsg
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    service = client.node.create_client(SetParameters, f"/{node_name}/set_parameters")
    try:
        assert service.wait_for_service(timeout_sec=30.0), "set_parameters service not found"
        request = SetParameters.Request()
        request.parameters = [Parameter(k, value=v).to_parameter_msg() for k, v in values.items()]
        assert all(isinstance(p, ParameterMsg) for p in request.parameters)
        future = service.call_async(request)

        def wake(_future) -> None:
            with client.cond:
                client.cond.notify_all()

        future.add_done_callback(wake)
        with client.cond:
            client.cond.wait_for(future.done, timeout=30.0)
        assert future.done(), "set_parameters did not answer"
        return future.result().results
    finally:
        client.node.destroy_client(service)


def test_parameters_changed_at_run_time_are_validated(client, node):
    (ok,) = _set_parameters(client, "lechpe_pose", max_rate_hz=50.0)
    assert ok.successful, ok.reason
    (bad,) = _set_parameters(client, "lechpe_pose", face_width_m=5.0)
    assert not bad.successful and "face_width_m" in bad.reason
    (read_only,) = _set_parameters(client, "lechpe_pose", max_faces=3)
    assert not read_only.successful and "read-only" in read_only.reason.lower()
    (_,) = _set_parameters(client, "lechpe_pose", max_rate_hz=0.0)


def test_sigint_shuts_down_cleanly(client, node):
    """Last test of the module: Ctrl-C on the shared node -> exit 0, no traceback."""
    assert node.alive()
    client.watch.remove(node)
    rc = node.interrupt(timeout=60)
    out = node.output()
    assert rc == 0, out
    assert "Traceback" not in out


def test_face_hidden_for_a_frame_keeps_its_track_id(assets, reference, client):
    """head_pose_faces carries track_id and tracked: a face covered on one frame is predicted."""
    params = _params(
        image_topics=["/track_cam/image_raw"],
        model_path=str(assets["model"]),
        backend="onnxruntime",
        device="cpu",
        track_max_misses=3,
    )
    with _named_node(client, assets, "lechpe_pose_track", "track", params):
        pub = client.publisher("/track_cam/image_raw", Image)
        client.subscribe("/track/head_pose_faces", PointCloud2)
        client.subscribe("/track/head_poses", PoseArray)
        client.wait_connected(pub, ["/track/head_pose_faces", "/track/head_poses"])
        gt = assets["truth"][3]
        x1, y1, x2, y2 = (int(float(gt[k])) for k in ("x1", "y1", "x2", "y2"))
        covered = assets["frames"][3].copy()
        pad = (x2 - x1) // 3
        covered[max(y1 - pad, 0) : y2 + pad, max(x1 - pad, 0) : x2 + pad] = 100  # flat occluder
        tables = []
        for stamp, image in (((900, 0), assets["frames"][3]), ((901, 0), covered)):
            msg = bgr_to_image(image)
            msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
            msg.header.frame_id = FRAME_ID
            cloud = client.send_until_answered(pub, msg, "/track/head_pose_faces")[0]
            poses = client.wait_for(
                lambda s=stamp: client.matched("/track/head_poses", s), ANSWER_TIMEOUT, "poses"
            )[0]
            table = cloud_to_table(cloud)
            assert len(poses.poses) == len(table["track_id"]) == 1
            tables.append(table)
        detected, predicted = tables
        assert detected["tracked"][0] == 0.0 and predicted["tracked"][0] == 1.0
        assert predicted["track_id"][0] == detected["track_id"][0] >= 0
        np.testing.assert_allclose(predicted["box_x1"], detected["box_x1"], atol=30)
