"""Parameters of the ``lechpe_pose`` node: one table, declared with descriptors, validated.

The table :data:`PARAMETERS` is the single source for the declarations (with
``ParameterDescriptor`` descriptions and ranges), ``pose_node --help``,
``config/pose.yaml`` and the table in docs/NODE.md. Importing this module does
not import rclpy (``--help`` must not start ROS).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any


class ParameterError(ValueError):
    """An invalid parameter value; the text names the parameter and the reason."""


@dataclass(frozen=True)
class ParamSpec:
    """One node parameter.

    Attributes:
        name: parameter name.
        default: default value (its Python type gives the ROS type unless ``kind`` says).
        kind: ``bool``, ``int``, ``double``, ``string`` or ``string_array``.
        description: one line for users.
        range: ``(min, max)`` inclusive for numbers.
        choices: allowed strings.
        dynamic: may be changed while the node runs (``ros2 param set``).
    """

    name: str
    default: Any
    kind: str
    description: str
    range: tuple[float, float] | None = None
    choices: tuple[str, ...] | None = None
    dynamic: bool = False


BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")
DETECTORS = (
    "blazeface_full",
    "blazeface_occluded",
    "blazeface",
    "yuface",
    "yunet",
    "haar",
    "blazeface_full+yuface",
    "blazeface_full+blazeface_occluded",
    "auto",
)
QOS_CHOICES = ("auto", "sensor_data", "reliable")

PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec(
        "image_topics",
        ["/camera/image_raw"],
        "string_array",
        "Camera image topics (sensor_msgs/Image); several cameras share one engine. "
        "With compressed_input the node subscribes to <topic>/compressed instead.",
    ),
    ParamSpec(
        "camera_info_topics",
        [],
        "string_array",
        "CameraInfo topic per camera; empty: 'camera_info' next to each image topic "
        "(/camera/image_raw -> /camera/camera_info).",
    ),
    ParamSpec(
        "camera_names",
        [],
        "string_array",
        "Output namespace per camera when there are several (default camera0, camera1, ...); "
        "with one camera the outputs are not prefixed.",
    ),
    ParamSpec(
        "compressed_input",
        False,
        "bool",
        "Subscribe to sensor_msgs/CompressedImage on <image_topic>/compressed (JPEG/PNG).",
    ),
    ParamSpec(
        "qos",
        "auto",
        "string",
        "Input QoS: auto (reliable while every publisher of the topic is reliable, else best "
        "effort; re-checked as publishers come and go), sensor_data (best effort, matches every "
        "camera, frames may be lost over UDP) or reliable (reliable cameras only).",
        choices=QOS_CHOICES,
    ),
    ParamSpec(
        "backend",
        "auto",
        "string",
        "Inference backend; auto tries tensorrt, onnxruntime, torch in this order.",
        choices=BACKENDS,
    ),
    ParamSpec(
        "model_path",
        "",
        "string",
        "Model checkpoint (.safetensors) or exported .onnx; empty: the default model "
        "shipped in lechpe_model/assets.",
    ),
    ParamSpec(
        "engine_cache_dir",
        "",
        "string",
        "Folder of the exported ONNX files and TensorRT engines (built on first use, reused "
        "while the model, GPU and TensorRT version match); empty: $LECHPE_CACHE_DIR or ~/.cache/lechpe.",
    ),
    ParamSpec(
        "tensorrt_precision",
        "fp16",
        "string",
        "Precision of the TensorRT engine.",
        choices=("fp16", "fp32"),
    ),
    ParamSpec(
        "onnx_precision",
        "fp32",
        "string",
        "Precision of the ONNX Runtime model: int8 runs <model>.int8.onnx made by "
        "`lechpe-export --int8` (static INT8 for the CPU).",
        choices=("fp32", "int8"),
    ),
    ParamSpec(
        "force_engine_rebuild",
        False,
        "bool",
        "Rebuild the TensorRT engine even when the cached one matches.",
    ),
    ParamSpec("device", "auto", "string", "Inference device: auto, cpu, cuda or cuda:N."),
    ParamSpec(
        "detector",
        "blazeface_full",
        "string",
        "Face detector (docs/BENCHMARKS.md): blazeface_full (BlazeFace full range, ONNX), "
        "blazeface_occluded (full range fine-tuned on occluded renders: finds far more "
        "masked/covered faces, larger boxes on real faces), blazeface (short range, close "
        "faces), yuface (YuNet), yunet (needs detector_model_path), haar, "
        "blazeface_full+yuface (union: more faces, both costs), "
        "blazeface_full+blazeface_occluded (full range's boxes where it finds a face, the "
        "fine-tuned detector's other faces; both costs); auto picks blazeface_full, then "
        "yuface, yunet, haar.",
        choices=DETECTORS,
    ),
    ParamSpec(
        "detector_model_path",
        "",
        "string",
        "ONNX file for detector 'yunet' (required, cv2.FaceDetectorYN) or 'blazeface'/"
        "'blazeface_full'/'blazeface_occluded' (optional, default: the shipped file; e.g. "
        "one made by lechpe-train-detector).",
    ),
    ParamSpec(
        "detection_threshold",
        0.5,
        "double",
        "Minimum face detector score.",
        range=(0.0, 1.0),
    ),
    ParamSpec("max_faces", 10, "int", "Largest faces estimated per frame.", range=(1, 64)),
    ParamSpec(
        "detect_every",
        1,
        "int",
        "Run the face detector on one frame in N per camera; the N-1 frames between use "
        "the tracker's predicted boxes (constant velocity); 1: every frame.",
        range=(1, 30),
    ),
    ParamSpec(
        "track_max_misses",
        15,
        "int",
        "Frames a tracked face is carried through detector misses (occlusion): its box is "
        "predicted and its pose still estimated, flagged tracked; 0: no prediction.",
        range=(0, 100),
    ),
    ParamSpec(
        "track_min_confidence",
        0.0,
        "double",
        "A predicted (tracked) face whose network confidence is below this ends its track "
        "and is not published; 0: off.",
        range=(0.0, 1.0),
    ),
    ParamSpec(
        "derotate_above_deg",
        15.0,
        "double",
        "A face whose estimated tilt in the image (the angle of its up axis as seen; the "
        "roll only for a frontal head) exceeds this is estimated again on a crop turned "
        "upright, and the answer turned back exactly (a second network call for tilted "
        "faces only); negative: off.",
        range=(-1.0, 180.0),
    ),
    ParamSpec(
        "max_detection_side",
        0,
        "int",
        "Frames are downscaled to this longest side for face detection (boxes are mapped back); "
        "0: the detector's default (320 px for YuNet, 640 for Haar). Raise it for small, far faces.",
        range=(0, 8192),
    ),
    ParamSpec(
        "publish_debug_image",
        True,
        "bool",
        "Offer ~/debug_image (boxes and head axes); drawn only while someone subscribes.",
        dynamic=True,
    ),
    ParamSpec(
        "max_rate_hz",
        0.0,
        "double",
        "Upper limit on processing cycles per second (each cycle takes the newest frame of "
        "every camera); 0: as fast as frames come.",
        range=(0.0, 1000.0),
        dynamic=True,
    ),
    ParamSpec(
        "face_width_m",
        0.14,
        "double",
        "Average face width in metres used with CameraInfo to place faces in depth.",
        range=(0.05, 0.5),
        dynamic=True,
    ),
    ParamSpec(
        "default_distance_m",
        1.0,
        "double",
        "Without CameraInfo: faces are placed this far along their pixel ray (metres).",
        range=(0.05, 100.0),
        dynamic=True,
    ),
    ParamSpec(
        "fallback_hfov_deg",
        60.0,
        "double",
        "Without CameraInfo: horizontal field of view assumed for the pixel rays (degrees).",
        range=(1.0, 179.0),
        dynamic=True,
    ),
    ParamSpec(
        "diagnostics_period_s",
        1.0,
        "double",
        "Period of the /diagnostics message (seconds).",
        range=(0.1, 60.0),
    ),
    ParamSpec(
        "camera_timeout_s",
        2.0,
        "double",
        "A camera silent for this long is reported as WARN in /diagnostics (dropout).",
        range=(0.1, 3600.0),
        dynamic=True,
    ),
)

SPECS: dict[str, ParamSpec] = {spec.name: spec for spec in PARAMETERS}

# ROS name tokens: letters, digits, underscores, not starting with a digit.
_TOKEN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _describe_range(spec: ParamSpec) -> str:
    if spec.range is not None:
        return f"[{spec.range[0]}, {spec.range[1]}]"
    if spec.choices is not None:
        return " | ".join(spec.choices)
    return ""


def format_help() -> str:
    """The ``pose_node --help`` text: usage and every parameter with default and range."""
    lines = [
        "usage: pose_node [--ros-args -p NAME:=VALUE ... --params-file config/pose.yaml]",
        "",
        "LEC-HPE head pose node (node name 'lechpe_pose').",
        "Subscribes: <image_topics> (sensor_msgs/Image or CompressedImage), camera_info.",
        "Publishes:  head_pose (geometry_msgs/PoseStamped), head_poses (geometry_msgs/PoseArray),",
        "            head_pose_faces (sensor_msgs/PointCloud2), ~/debug_image (sensor_msgs/Image),",
        "            /diagnostics (diagnostic_msgs/DiagnosticArray).",
        "",
        "parameters (name, type, default, range/choices, description):",
    ]
    for spec in PARAMETERS:
        extra = _describe_range(spec)
        dyn = " (dynamic)" if spec.dynamic else ""
        lines.append(
            f"  {spec.name} ({spec.kind}, default {spec.default!r}{', ' + extra if extra else ''}){dyn}"
        )
        lines.append(f"      {spec.description}")
    lines.append("")
    lines.append("Documentation: docs/NODE.md")
    return "\n".join(lines)


def descriptor(spec: ParamSpec):
    """``rcl_interfaces/ParameterDescriptor`` of ``spec`` (description, type, range, read-only)."""
    from rcl_interfaces.msg import (
        FloatingPointRange,
        IntegerRange,
        ParameterDescriptor,
        ParameterType,
    )

    types = {
        "bool": ParameterType.PARAMETER_BOOL,
        "int": ParameterType.PARAMETER_INTEGER,
        "double": ParameterType.PARAMETER_DOUBLE,
        "string": ParameterType.PARAMETER_STRING,
        "string_array": ParameterType.PARAMETER_STRING_ARRAY,
    }
    constraints = ""
    if spec.choices:
        constraints = "one of: " + ", ".join(spec.choices)
    desc = ParameterDescriptor(
        name=spec.name,
        type=types[spec.kind],
        description=spec.description,
        additional_constraints=constraints,
        read_only=not spec.dynamic,
    )
    if spec.range is not None and spec.kind == "double":
        desc.floating_point_range = [
            FloatingPointRange(
                from_value=float(spec.range[0]), to_value=float(spec.range[1]), step=0.0
            )
        ]
    elif spec.range is not None and spec.kind == "int":
        desc.integer_range = [
            IntegerRange(from_value=int(spec.range[0]), to_value=int(spec.range[1]), step=1)
        ]
    return desc


def validate_value(name: str, value: Any) -> None:
    """Check one value against its spec (choices, range, finiteness).

    Raises:
        ParameterError: ``"parameter NAME = VALUE: reason"``.
    """
    spec = SPECS[name]

    def fail(reason: str) -> ParameterError:
        return ParameterError(f"parameter {name} = {value!r}: {reason}")

    if spec.choices is not None and value not in spec.choices:
        raise fail(f"must be one of {', '.join(spec.choices)}")
    if spec.kind in ("double", "int"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise fail(f"must be a number ({spec.kind})")
        if not math.isfinite(float(value)):
            raise fail("must be finite")
        low, high = spec.range if spec.range else (-math.inf, math.inf)
        if not low <= value <= high:
            raise fail(f"out of range [{low}, {high}]")
    if spec.kind == "string_array" and any(not isinstance(v, str) for v in value):
        raise fail("must be a list of strings")


def _check_topic(name: str, topic: str) -> None:
    from rclpy.exceptions import InvalidTopicNameException
    from rclpy.validate_topic_name import validate_topic_name

    try:
        validate_topic_name(topic)
    except InvalidTopicNameException as exc:
        raise ParameterError(
            f"parameter {name}: {topic!r} is not a valid topic name ({exc})"
        ) from exc


def validate_all(values: dict[str, Any]) -> None:
    """Check every value and the relations between them.

    Raises:
        ParameterError: the first problem, naming the parameter and the reason.
    """
    for name, value in values.items():
        if name in SPECS:
            validate_value(name, value)
    topics = list(values["image_topics"])
    if not topics:
        raise ParameterError("parameter image_topics: give at least one image topic")
    if len(set(topics)) != len(topics):
        raise ParameterError(f"parameter image_topics = {topics!r}: topics must be distinct")
    for topic in topics:
        _check_topic("image_topics", topic)
    infos = list(values["camera_info_topics"])
    if infos and len(infos) != len(topics):
        raise ParameterError(
            f"parameter camera_info_topics has {len(infos)} entries for {len(topics)} image_topics "
            "(give one per camera or none)"
        )
    for topic in infos:
        _check_topic("camera_info_topics", topic)
    names = list(values["camera_names"])
    if names and len(names) != len(topics):
        raise ParameterError(
            f"parameter camera_names has {len(names)} entries for {len(topics)} image_topics "
            "(give one per camera or none)"
        )
    if len(set(names)) != len(names):
        raise ParameterError(f"parameter camera_names = {names!r}: names must be distinct")
    for cam in names:
        if not _TOKEN.match(cam):
            raise ParameterError(
                f"parameter camera_names: {cam!r} is not a valid ROS name token "
                "(letters, digits, underscores; not starting with a digit)"
            )
    side = values["max_detection_side"]
    if 0 < side < 64:
        raise ParameterError(
            f"parameter max_detection_side = {side}: use 0 (detector default) or >= 64"
        )
    if values["detector"] == "yunet" and not values["detector_model_path"]:
        raise ParameterError(
            "parameter detector = 'yunet' needs detector_model_path (a YuNet ONNX file, e.g. "
            "face_detection_yunet_2023mar.onnx from the OpenCV model zoo)"
        )


def camera_info_topic_for(image_topic: str) -> str:
    """image_transport convention: ``/ns/image_raw`` -> ``/ns/camera_info``."""
    head, _, _ = image_topic.rstrip("/").rpartition("/")
    return f"{head}/camera_info" if head or image_topic.startswith("/") else "camera_info"


def launch_overrides(
    camera_topic: str = "",
    cameras: str = "",
    camera_names: str = "",
    backend: str = "",
    use_sim_time: str | bool = "",
) -> dict:
    """Parameter overrides ``launch/pose.launch.py`` gives the node, from its string arguments.

    Only the arguments that were given (not empty) override the params file:
    launch passes these after the file, so a default here would silently
    replace the file's cameras or sim time.

    Args:
        camera_topic: the single camera's image topic; empty keeps the params file's.
        cameras: comma-separated image topics; when given it replaces ``camera_topic``
            (one node, one shared engine, outputs prefixed by the camera names).
        camera_names: comma-separated names for ``cameras`` (optional).
        backend: overrides the params file's backend when not empty.
        use_sim_time: ``"true"``/``"false"`` (launch arguments are strings) or a bool;
            empty keeps the params file's (default false).

    Raises:
        ParameterError: an unknown backend or a use_sim_time that is not true/false.
    """
    overrides: dict = {}
    topics = [t.strip() for t in cameras.split(",") if t.strip()] or (
        [camera_topic.strip()] if camera_topic.strip() else []
    )
    if topics:
        overrides["image_topics"] = topics
    names = [n.strip() for n in camera_names.split(",") if n.strip()]
    if names:
        overrides["camera_names"] = names
    if backend:
        validate_value("backend", backend)
        overrides["backend"] = backend
    if isinstance(use_sim_time, str):
        if use_sim_time.strip() == "":
            return overrides
        if use_sim_time.lower() not in ("true", "false"):
            raise ParameterError(f"use_sim_time = {use_sim_time!r}: must be true or false")
        use_sim_time = use_sim_time.lower() == "true"
    overrides["use_sim_time"] = bool(use_sim_time)
    return overrides


def unknown_parameter_warnings(names: list[str]) -> list[str]:
    """One warning per parameter name the node does not know (a misspelling is ignored by ROS).

    ``use_sim_time`` and other names every ROS node has are not reported;
    the closest known name is suggested.
    """
    import difflib

    known_elsewhere = {"use_sim_time", "start_type_description_service"}
    warnings = []
    for name in sorted(set(names)):
        if name in SPECS or name in known_elsewhere or name.startswith("qos_overrides."):
            continue
        close = difflib.get_close_matches(name, list(SPECS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        warnings.append(
            f"unknown parameter {name!r} is ignored{hint}; `pose_node --help` lists them"
        )
    return warnings
