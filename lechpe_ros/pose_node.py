"""``pose_node``: the ``lechpe_pose`` ROS 2 node, a thin adapter over ``lechpe_model``.

Threading (latest-frame policy)
-------------------------------
The subscription callbacks only store the newest message of each camera in a
one-element slot (a message still waiting there is overwritten and counted as
*dropped*) and wake the worker thread. The worker takes the newest frame of
every camera, converts it, runs detection + the network, and publishes. The
executor therefore never blocks on inference, there is never a backlog, and
under overload the node processes the newest frames and counts the rest.

Multi-camera: one node, one engine, ``image_topics`` lists the cameras. A
processing cycle takes the newest frame of each camera and runs them back to
back through the shared engine. With one camera the outputs are ``head_pose``,
``head_poses``, ``head_pose_faces`` and ``~/debug_image``; with several, each
camera's outputs carry its name as a prefix (``front/head_pose``, ...), the
same names one node per camera in namespace ``front`` would give. See
docs/NODE.md.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lechpe_ros.parameters import (
    PARAMETERS,
    SPECS,
    ParameterError,
    camera_info_topic_for,
    format_help,
    validate_all,
    validate_value,
)

NODE_NAME = "lechpe_pose"

#: How users get weights; appended to every model loading error.
HOW_TO_GET_WEIGHTS = (
    "To obtain weights: leave model_path empty to use the default model shipped in "
    "lechpe_model/assets (reinstall the package if it is missing), train one with "
    "`lechpe-train` (docs/RESULTS.md), or export a trained checkpoint to ONNX with "
    "`lechpe-export` and pass that file."
)

EXIT_OK = 0
EXIT_MODEL = 1
EXIT_PARAMETERS = 2


class StartupError(RuntimeError):
    """The node cannot start (model, detector); the text says what and how to fix it."""


def _wants_help(args: list[str]) -> bool:
    """``-h``/``--help`` before any ``--ros-args``."""
    user_args = args[: args.index("--ros-args")] if "--ros-args" in args else args
    return any(a in ("-h", "--help") for a in user_args)


def resolve_model_path(model_path: str) -> Path:
    """The model file to load: ``model_path`` or the embedded default model.

    Raises:
        StartupError: the file does not exist (names the path and how to get weights).
    """
    if model_path:
        path = Path(model_path).expanduser()
        if not path.is_file():
            raise StartupError(f"model file not found: {path}. {HOW_TO_GET_WEIGHTS}")
        return path
    try:
        from lechpe_model.default_model import default_model_path

        path = Path(default_model_path())
    except Exception as exc:  # ImportError or the asset's own error
        raise StartupError(
            f"no model_path given and the default model is unavailable ({exc}). {HOW_TO_GET_WEIGHTS}"
        ) from exc
    if not path.is_file():
        raise StartupError(
            f"no model_path given and the default model is missing at {path}. {HOW_TO_GET_WEIGHTS}"
        )
    return path


def build_estimator(values: dict):
    """Detector + backend + PoseEstimator from the node parameters.

    Returns:
        ``(estimator, backend, detector, model_path)``.

    Raises:
        StartupError: naming the model path / detector and what to do.
    """
    from lechpe_model.backends import create_backend
    from lechpe_model.detection import create_detector
    from lechpe_model.pipeline import PoseEstimator

    model_path = resolve_model_path(values["model_path"])
    # Backends ignore the options that do not concern them.
    options = {
        "precision": values["tensorrt_precision"],
        "force_rebuild": values["force_engine_rebuild"],
        "onnx_precision": values["onnx_precision"],
    }
    if values["engine_cache_dir"]:
        options["cache_dir"] = values["engine_cache_dir"]
    try:
        backend = create_backend(values["backend"], model_path, device=values["device"], **options)
    except Exception as exc:  # CheckpointError, BackendUnavailable, ORT/torch load errors
        raise StartupError(
            f"cannot load model {model_path} with backend {values['backend']!r}: "
            f"{type(exc).__name__}: {exc}. {HOW_TO_GET_WEIGHTS}"
        ) from exc
    try:
        detector = create_detector(
            values["detector"],
            score_threshold=values["detection_threshold"],
            model_path=values["detector_model_path"] or None,
            max_input_side=values["max_detection_side"] or None,
        )
    except Exception as exc:
        raise StartupError(f"cannot create face detector {values['detector']!r}: {exc}") from exc
    estimator = PoseEstimator(
        detector=detector,
        backend=backend,
        max_faces=values["max_faces"],
        detect_every=values["detect_every"],
    )
    try:  # first-call allocations / autotuning now, not on the first camera frame
        backend.warmup()
    except Exception as exc:
        raise StartupError(
            f"model {model_path} fails on a test input: {exc}. {HOW_TO_GET_WEIGHTS}"
        ) from exc
    return estimator, backend, detector, model_path


@dataclass
class Camera:
    """One input stream: its topics, latest-frame slot, counters and publishers."""

    index: int
    name: str
    image_topic: str
    info_topic: str
    prefix: str  # "" with one camera, "<name>/" with several
    lock: threading.Lock = field(default_factory=threading.Lock)
    pending: object = None
    pending_time: float = 0.0
    last_sequence: int | None = None
    info: object = None
    counters: object = None
    input_rate: object = None
    processed_rate: object = None
    pub_pose: object = None
    pub_poses: object = None
    pub_faces: object = None
    pub_debug: object = None

    def offer(self, msg, now: float, sequence: int | None = None) -> None:
        """Store the newest message; an untaken older one is dropped (counted).

        ``sequence`` is the publisher's sequence number (DDS): a jump counts
        the messages lost in transport (exact with one publisher per topic;
        a lower number means another or a restarted publisher and is not counted).
        """
        with self.lock:
            self.counters.received += 1
            self.counters.last_receive = now
            if sequence:
                if self.last_sequence is not None and sequence > self.last_sequence + 1:
                    self.counters.lost += sequence - self.last_sequence - 1
                self.last_sequence = sequence
            if self.pending is not None:
                self.counters.dropped += 1
            self.pending, self.pending_time = msg, now

    def take(self):
        with self.lock:
            msg, when = self.pending, self.pending_time
            self.pending = None
            return msg, when


def _make_node_class():
    """Define the Node subclass (rclpy is imported only when the node really starts)."""
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseArray, PoseStamped
    from rcl_interfaces.msg import SetParametersResult
    from rclpy.node import Node
    from rclpy.qos import (
        HistoryPolicy,
        QoSProfile,
        ReliabilityPolicy,
        qos_profile_sensor_data,
    )
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

    from lechpe_ros import diagnostics as diag
    from lechpe_ros import image_conversion as conv
    from lechpe_ros import pose_messages as pm

    class PoseNode(Node):
        """Head pose estimation node (see the module docstring)."""

        def __init__(self, **kwargs) -> None:
            super().__init__(NODE_NAME, **kwargs)
            self.values = self._declare_and_validate()
            self.add_on_set_parameters_callback(self._on_set_parameters)
            self.estimator, self.backend, self.detector, self.model_path = build_estimator(
                self.values
            )
            self.latency = diag.LatencyWindow()
            self.processing = diag.LatencyWindow()
            self.stage_ms: dict[str, diag.LatencyWindow] = {}
            self._wake = threading.Event()
            self._stop = threading.Event()
            self.cameras = self._create_cameras()
            self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
            self.diag_timer = self.create_timer(
                self.values["diagnostics_period_s"], self._publish_diagnostics
            )
            self.worker = threading.Thread(
                target=self._work, name="lechpe_pose_worker", daemon=True
            )
            self.worker.start()
            self.get_logger().info(
                f"ready: backend={self.backend.name} on {self.backend.device}, model={self.model_path}, "
                f"detector={self.detector.name}, image conversion={conv.converter_name()}, "
                f"cameras={[c.image_topic for c in self.cameras]}"
            )

        # ------------------------------------------------------------ parameters
        def _declare_and_validate(self) -> dict:
            from rclpy.exceptions import (
                InvalidParameterTypeException,
                InvalidParameterValueException,
            )
            from rclpy.parameter import Parameter

            from lechpe_ros.parameters import descriptor

            values = {}
            for spec in PARAMETERS:
                default = spec.default
                if spec.kind == "string_array" and not default:
                    default = Parameter.Type.STRING_ARRAY  # typed, initialised below
                try:
                    param = self.declare_parameter(spec.name, default, descriptor(spec))
                except (InvalidParameterValueException, InvalidParameterTypeException) as exc:
                    raise ParameterError(f"parameter {spec.name}: {exc}") from exc
                value = param.value
                if value is None and spec.kind == "string_array":
                    value = []
                if spec.kind == "string_array":
                    # YAML cannot type an empty list: [""] means "none given".
                    value = (
                        [v for v in value if v != ""]
                        if spec.name != "image_topics"
                        else list(value)
                    )
                if spec.kind == "double" and isinstance(value, int):
                    value = float(value)
                values[spec.name] = value
            validate_all(values)
            return values

        def _on_set_parameters(self, params):
            for param in params:
                spec = SPECS.get(param.name)
                if spec is None:
                    continue
                if not spec.dynamic:
                    return SetParametersResult(
                        successful=False,
                        reason=f"{param.name} is read-only; restart the node to change it",
                    )
                try:
                    value = param.value
                    if (
                        spec.kind == "double"
                        and isinstance(value, int)
                        and not isinstance(value, bool)
                    ):
                        value = float(value)
                    validate_value(param.name, value)
                except ParameterError as exc:
                    return SetParametersResult(successful=False, reason=str(exc))
            for param in params:
                if param.name in SPECS:
                    value = param.value
                    self.values[param.name] = (
                        float(value) if SPECS[param.name].kind == "double" else value
                    )
            return SetParametersResult(successful=True)

        # ------------------------------------------------------------ topics
        def _input_qos(self) -> QoSProfile:
            if self.values["qos"] == "reliable":
                return QoSProfile(
                    history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE
                )
            # Best effort with a small DDS queue: the node keeps only the newest anyway.
            return qos_profile_sensor_data

        def _create_cameras(self) -> list[Camera]:
            topics = self.values["image_topics"]
            infos = self.values["camera_info_topics"] or [camera_info_topic_for(t) for t in topics]
            names = self.values["camera_names"] or [f"camera{i}" for i in range(len(topics))]
            qos = self._input_qos()
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
                if self.values["compressed_input"]:
                    self.create_subscription(
                        CompressedImage,
                        f"{topic.rstrip('/')}/compressed",
                        lambda msg, info, cam=cam: self._on_image(cam, msg, info),
                        qos,
                    )
                else:
                    self.create_subscription(
                        Image, topic, lambda msg, info, cam=cam: self._on_image(cam, msg, info), qos
                    )
                self.create_subscription(
                    CameraInfo, info_topic, lambda msg, cam=cam: setattr(cam, "info", msg), qos
                )
                cameras.append(cam)
            return cameras

        def _on_image(self, cam: Camera, msg, info=None) -> None:
            # Executor thread: store and wake, nothing else (never blocks on inference).
            sequence = None
            if isinstance(info, dict):
                sequence = info.get("publication_sequence_number")
            cam.offer(msg, time.monotonic(), sequence)
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
                    if msg is not None:
                        self._process(cam, msg, received)

        def _convert(self, msg):
            if isinstance(msg, CompressedImage):
                return conv.compressed_to_bgr(msg)
            return conv.image_to_bgr(msg)

        def _process(self, cam: Camera, msg, received: float) -> None:
            log = self.get_logger()
            try:
                bgr = self._convert(msg)
            except conv.ImageConversionError as exc:
                with cam.lock:
                    cam.counters.rejected += 1
                    cam.counters.last_error = f"rejected frame: {exc}"
                log.warning(f"camera {cam.name}: rejected frame: {exc}", throttle_duration_sec=5.0)
                return
            try:
                # never raises (see result.error); boxes are reused per camera only
                result = self.estimator.estimate(bgr, stream=cam.name)
                faces = list(result.faces)
                if result.error and not faces and not result.dropped:
                    raise RuntimeError(result.error)  # the frame was not processed
                if result.error:  # e.g. some faces dropped for non-finite outputs
                    log.warning(f"camera {cam.name}: {result.error}", throttle_duration_sec=5.0)
                self._publish(cam, msg.header, bgr, faces)
            except Exception as exc:  # never let a frame kill the worker
                with cam.lock:
                    cam.counters.failed += 1
                    cam.counters.last_error = f"failed frame: {type(exc).__name__}: {exc}"
                log.error(
                    f"camera {cam.name}: frame failed: {type(exc).__name__}: {exc}",
                    throttle_duration_sec=5.0,
                )
                return
            for stage, ms in (result.timings_ms or {}).items():
                self.stage_ms.setdefault(stage, diag.LatencyWindow()).add(ms)
            now_stamp = self.get_clock().now().nanoseconds
            stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            if stamp > 0:
                self.latency.add((now_stamp - stamp) / 1e6)
            self.processing.add((time.monotonic() - received) * 1e3)
            with cam.lock:
                cam.counters.processed += 1
                cam.counters.faces += len(faces)

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
            reports = []
            for cam in self.cameras:
                with cam.lock:
                    counters = diag.StreamCounters(**vars(cam.counters))
                silent = None if counters.last_receive is None else now - counters.last_receive
                reports.append(
                    diag.CameraReport(
                        name=cam.name,
                        topic=cam.image_topic,
                        counters=counters,
                        input_rate_hz=cam.input_rate.update(counters.received, now),
                        processed_rate_hz=cam.processed_rate.update(counters.processed, now),
                        silent_s=silent,
                        timeout_s=self.values["camera_timeout_s"],
                        has_camera_info=cam.info is not None,
                    )
                )
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
            )
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
