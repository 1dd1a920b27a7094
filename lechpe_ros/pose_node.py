"""``pose_node``: the ``lechpe_pose`` ROS 2 node, a thin adapter over ``lechpe_model``.

Threading (latest-frame policy)
-------------------------------
The subscription callbacks only store the newest message of each camera in a
one-element slot (a message still waiting there is overwritten and counted as
*dropped*) and wake the worker thread. The worker takes the newest frame of
every camera, converts it, runs detection + the network, and publishes. The
executor therefore never blocks on inference, there is never a backlog, and
under overload the node processes the newest frames and counts the rest.
Every exception from one frame is caught, counted (``rejected`` for frames
that cannot be used, ``failed`` otherwise) and logged (throttled): the worker
cannot die from a frame, and a watchdog in the diagnostics reports ERROR if it
stops anyway (lechpe_ros/diagnostics.py).

Multi-camera: one node, one engine, ``image_topics`` lists the cameras. A
processing cycle takes the newest frame of each camera and runs them back to
back through the shared engine. With one camera the outputs are ``head_pose``,
``head_poses``, ``head_pose_faces`` and ``~/debug_image``; with several, each
camera's outputs carry its name as a prefix (``front/head_pose``, ...), the
same names one node per camera in namespace ``front`` would give. See
docs/NODE.md.

Per-camera state lives in camera_stream.py, start-up in startup.py, the input
QoS (``qos: auto``) in qos_selection.py and the diagnostics logic in
diagnostics.py.
"""

from __future__ import annotations

import sys
import threading
import time

import numpy as np

from lechpe_ros.camera_stream import Camera
from lechpe_ros.parameters import (
    ParameterError,
    camera_info_topic_for,
    format_help,
    unknown_parameter_warnings,
)
from lechpe_ros.startup import (  # noqa: F401  (re-exported: the node's public names)
    HOW_TO_GET_WEIGHTS,
    StartupError,
    build_estimator,
    resolve_model_path,
)

NODE_NAME = "lechpe_pose"
EXIT_OK = 0
EXIT_MODEL = 1
EXIT_PARAMETERS = 2
#: Seconds between re-evaluations of ``qos: auto`` (publishers come and go).
QOS_CHECK_PERIOD_S = 1.0


def _wants_help(args: list[str]) -> bool:
    """``-h``/``--help`` before any ``--ros-args``."""
    user_args = args[: args.index("--ros-args")] if "--ros-args" in args else args
    return any(a in ("-h", "--help") for a in user_args)


def _make_node_class():
    """Define the Node subclass (rclpy is imported only when the node really starts)."""
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseArray, PoseStamped
    from rclpy.node import Node
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

    from lechpe_ros import diagnostics as diag
    from lechpe_ros import image_conversion as conv
    from lechpe_ros import node_parameters
    from lechpe_ros import pose_messages as pm
    from lechpe_ros import qos_selection as qsel

    class PoseNode(Node):
        """Head pose estimation node (see the module docstring)."""

        def __init__(self, **kwargs) -> None:
            super().__init__(NODE_NAME, **kwargs)
            self.values = node_parameters.declare_and_validate(self)
            for warning in unknown_parameter_warnings(list(self._parameter_overrides)):
                self.get_logger().warning(warning)
            self.add_on_set_parameters_callback(
                lambda params: node_parameters.on_set_parameters(self.values, params)
            )
            self.estimator, self.backend, self.detector, self.model_path = build_estimator(
                self.values
            )
            self.latency = diag.LatencyWindow()
            self.processing = diag.LatencyWindow()
            self.stage_ms: dict[str, diag.LatencyWindow] = {}
            self._stamp_warned = False
            self._worker_error = ""
            self._ticks = {"received": 0, "handled": 0}
            self._wake = threading.Event()
            self._stop = threading.Event()
            self.cameras = self._create_cameras()
            self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
            self.diag_timer = self.create_timer(
                self.values["diagnostics_period_s"], self._publish_diagnostics
            )
            if self.values["qos"] == qsel.QOS_AUTO:
                self.qos_timer = self.create_timer(QOS_CHECK_PERIOD_S, self._update_qos)
            self.worker = threading.Thread(
                target=self._work, name="lechpe_pose_worker", daemon=True
            )
            self.worker.start()
            self.get_logger().info(
                f"ready: backend={self.backend.name} on {self.backend.device}, model={self.model_path}, "
                f"detector={self.detector.name}, image conversion={conv.converter_name()}, "
                f"qos={self.values['qos']}, cameras={[c.image_topic for c in self.cameras]}"
            )

        # ------------------------------------------------------------ topics
        def _create_cameras(self) -> list[Camera]:
            topics = self.values["image_topics"]
            infos = self.values["camera_info_topics"] or [camera_info_topic_for(t) for t in topics]
            names = self.values["camera_names"] or [f"camera{i}" for i in range(len(topics))]
            cameras = []
            for i, (topic, info_topic, name) in enumerate(zip(topics, infos, names, strict=True)):
                prefix = "" if len(topics) == 1 else f"{name}/"
                cam = Camera(
                    index=i, name=name, image_topic=topic, info_topic=info_topic, prefix=prefix
                )
                cam.counters = diag.StreamCounters()
                cam.input_rate = diag.RateTracker()
                cam.processed_rate = diag.RateTracker()
                cam.pub_pose = self.create_publisher(PoseStamped, f"{prefix}head_pose", 10)
                cam.pub_poses = self.create_publisher(PoseArray, f"{prefix}head_poses", 10)
                cam.pub_faces = self.create_publisher(PointCloud2, f"{prefix}head_pose_faces", 10)
                cam.pub_debug = self.create_publisher(Image, f"~/{prefix}debug_image", 1)
                compressed = self.values["compressed_input"]
                cam.subscribed_topic = f"{topic.rstrip('/')}/compressed" if compressed else topic
                fixed = qsel.fixed_reliability(self.values["qos"])
                self._subscribe(cam, fixed or self._auto_reliability(cam))
                self.create_subscription(
                    CameraInfo,
                    info_topic,
                    lambda msg, cam=cam: setattr(cam, "info", msg),
                    qos_profile_sensor_data,
                )
                cameras.append(cam)
            return cameras

        def _auto_reliability(self, cam: Camera) -> str:
            return qsel.choose_reliability(qsel.publishers_reliable(self, cam.subscribed_topic))

        def _subscribe(self, cam: Camera, reliability: str) -> None:
            # Make before break: the old reader stays until the new one has matched every
            # publisher (see _update_qos), so no frame is lost in the switch; samples that
            # come through both are dropped by sequence number (Camera.offer).
            if cam.retiring is not None:
                self.destroy_subscription(cam.retiring)
            cam.retiring = cam.subscription
            msg_type = CompressedImage if self.values["compressed_input"] else Image
            cam.subscription = self.create_subscription(
                msg_type,
                cam.subscribed_topic,
                lambda msg, info, cam=cam: self._on_image(cam, msg, info),
                qsel.qos_profile(reliability),
            )
            cam.reliability = reliability
            cam.switched_at = time.monotonic()

        def _update_qos(self) -> None:
            """``qos: auto``: follow the publishers' reliability as they come and go."""
            for cam in self.cameras:
                publishers = qsel.publishers_reliable(self, cam.subscribed_topic)
                if cam.retiring is not None and (
                    cam.subscription.get_publisher_count() >= len(publishers)
                    or time.monotonic() - cam.switched_at > qsel.SWITCH_GRACE_S
                ):
                    self.destroy_subscription(cam.retiring)
                    cam.retiring = None
                wanted = qsel.choose_reliability(publishers)
                if wanted != cam.reliability:
                    self.get_logger().info(
                        f"camera {cam.name}: input QoS {cam.reliability} -> {wanted} "
                        f"(publishers of {cam.subscribed_topic} changed; qos auto)"
                    )
                    self._subscribe(cam, wanted)

        def _on_image(self, cam: Camera, msg, info=None) -> None:
            # Executor thread: store and wake, nothing else (never blocks on inference).
            sequence = None
            if isinstance(info, dict):
                sequence = info.get("publication_sequence_number")
            cam.offer(msg, time.monotonic(), sequence, switching=cam.retiring is not None)
            self._wake.set()

        # ------------------------------------------------------------ worker
        def _work(self) -> None:
            next_cycle = 0.0
            while not self._stop.is_set():
                if not self._wake.wait(timeout=0.2):
                    continue
                rate = self.values["max_rate_hz"]
                if rate > 0:
                    wait = next_cycle - time.monotonic()
                    if wait > 0 and self._stop.wait(wait):
                        break
                    next_cycle = time.monotonic() + 1.0 / rate
                self._wake.clear()
                for cam in self.cameras:
                    msg, received = cam.take()
                    if msg is None:
                        continue
                    try:
                        self._process(cam, msg, received)
                    except Exception as exc:  # anything a frame raises: count, log, go on
                        text = f"{type(exc).__name__}: {exc}"
                        cam.record("failed", text)
                        self._worker_error = text
                        self.get_logger().error(
                            f"camera {cam.name}: frame failed: {text}", throttle_duration_sec=5.0
                        )

        def _process(self, cam: Camera, msg, received: float) -> None:
            log = self.get_logger()
            try:
                bgr = conv.message_to_bgr(msg)
            except conv.ImageConversionError as exc:
                cam.record("rejected", str(exc))
                log.warning(f"camera {cam.name}: rejected frame: {exc}", throttle_duration_sec=5.0)
                return
            # never raises (see result.error); boxes are reused per camera only
            result = self.estimator.estimate(bgr, stream=cam.name)
            faces = list(result.faces)
            if result.error and not faces and not result.dropped:
                raise RuntimeError(result.error)  # the frame was not processed
            if result.error:  # e.g. some faces dropped for non-finite outputs
                log.warning(f"camera {cam.name}: {result.error}", throttle_duration_sec=5.0)
            # Latency is recorded before publishing: whoever sees the answer then also sees
            # it in the next diagnostics (stamp -> publish, not counting the publish calls).
            self._add_latency(msg.header.stamp)
            self._publish(cam, msg.header, bgr, faces)
            for stage, ms in (result.timings_ms or {}).items():
                self.stage_ms.setdefault(stage, diag.LatencyWindow()).add(ms)
            self.processing.add((time.monotonic() - received) * 1e3)
            with cam.lock:
                cam.counters.processed += 1
                cam.counters.faces += len(faces)

        def _add_latency(self, stamp) -> None:
            """Stamp -> now on the node's clock (sim time with use_sim_time); else one WARN."""
            now_ns = self.get_clock().now().nanoseconds
            stamp_ns = stamp.sec * 1_000_000_000 + stamp.nanosec
            latency = diag.comparable_latency_ms(now_ns, stamp_ns)
            if latency is not None:
                self.latency.add(latency)
            elif stamp_ns > 0 and not self._stamp_warned:
                self._stamp_warned = True
                self.get_logger().warning(diag.stamp_clock_warning(now_ns, stamp_ns))

        def _publish(self, cam: Camera, header, bgr: np.ndarray, faces: list) -> None:
            height, width = bgr.shape[:2]
            camera = pm.camera_model_from_info(cam.info, width, height)
            if camera is None:
                camera = pm.assumed_camera_model(width, height, self.values["fallback_hfov_deg"])
            msgs = pm.build_face_messages(
                header,
                faces,
                camera,
                face_width_m=self.values["face_width_m"],
                default_distance_m=self.values["default_distance_m"],
            )
            if msgs.pose is not None:
                cam.pub_pose.publish(msgs.pose)
            cam.pub_poses.publish(msgs.poses)
            cam.pub_faces.publish(msgs.faces)
            if self.values["publish_debug_image"] and cam.pub_debug.get_subscription_count() > 0:
                cam.pub_debug.publish(conv.bgr_to_image(self._draw(bgr, faces), header))
                with cam.lock:
                    cam.counters.debug_images += 1

        def _draw(self, bgr: np.ndarray, faces: list) -> np.ndarray:
            from lechpe_model.visualization import annotate

            return annotate(bgr, faces)  # a copy with boxes, labels and head axes

        # ------------------------------------------------------------ diagnostics
        def _publish_diagnostics(self) -> None:
            now = time.monotonic()
            snapshots = [cam.report(now, self.values["camera_timeout_s"]) for cam in self.cameras]
            reports = [r for r, _ in snapshots]
            waiting = [w for _, w in snapshots if w is not None]
            received = sum(r.counters.received for r in reports)
            # Taken by the worker: not overwritten in the slot and not waiting there.
            handled = sum(r.counters.received - r.counters.dropped for r in reports) - len(waiting)
            report = diag.NodeReport(
                node_name=self.get_name(),
                backend=self.backend.name,
                device=str(self.backend.device),
                model=str(self.model_path),
                detector=self.detector.name,
                converter=conv.converter_name(),
                latency_ms=self.latency.percentiles(),
                processing_ms=self.processing.percentiles(),
                stage_ms={k: w.percentiles((50,))[0] for k, w in list(self.stage_ms.items())},
                cameras=reports,
                worker_alive=self.worker.is_alive(),
                worker_waiting_s=max(waiting, default=None),
                received_delta=received - self._ticks["received"],
                handled_delta=handled - self._ticks["handled"],
                worker_error=self._worker_error,
            )
            self._ticks = {"received": received, "handled": handled}
            self.pub_diag.publish(diag.build_diagnostics(report, self.get_clock().now().to_msg()))

        def stop(self) -> None:
            """Stop the worker thread (waits for the frame in progress)."""
            self._stop.set()
            self._wake.set()
            if self.worker.is_alive():
                self.worker.join(timeout=30.0)

    return PoseNode


def main(args: list[str] | None = None) -> int:
    """Entry point of ``pose_node``; returns the exit status.

    Exit codes: 0 normal (also after Ctrl-C), 1 model/detector cannot be
    loaded, 2 invalid parameters.
    """
    argv = list(sys.argv[1:] if args is None else args)
    if _wants_help(argv):
        try:
            print(format_help(), flush=True)
        except BrokenPipeError:  # `pose_node --help | head`
            sys.stdout = None
        return EXIT_OK

    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    rclpy.init(args=argv)
    node = None
    status = EXIT_OK
    try:
        node_class = _make_node_class()
        try:
            node = node_class()
        except ParameterError as exc:
            _startup_failure(f"invalid parameter: {exc}")
            status = EXIT_PARAMETERS
        except StartupError as exc:
            _startup_failure(str(exc))
            status = EXIT_MODEL
        else:
            executor = SingleThreadedExecutor()
            executor.add_node(node)
            executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass  # Ctrl-C / SIGTERM: clean shutdown below, no traceback
    finally:
        if node is not None:
            node.stop()
            node.destroy_node()
        rclpy.try_shutdown()
    return status


def _startup_failure(message: str) -> None:
    """Report why the node cannot start (the ROS log, which prints to stderr)."""
    try:
        import rclpy.logging

        rclpy.logging.get_logger(NODE_NAME).fatal(f"cannot start: {message}")
    except Exception:
        print(f"[{NODE_NAME}] cannot start: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
