"""Rates, drop counters and latency percentiles -> ``diagnostic_msgs/DiagnosticArray``.

The node keeps one :class:`StreamCounters` per camera (updated from the
subscription callback and the worker thread under a lock) and one
:class:`LatencyWindow` for the whole node; :func:`build_diagnostics` turns a
snapshot of them into the message published on ``/diagnostics``.

Levels (each message names the cause and the fix):

* ERROR: the worker thread is not alive, has been stuck on frames for longer
  than ``WORKER_STALL_S``, or handles fewer than ``MIN_HANDLED_FRACTION`` of
  the frames that arrive (a watchdog: frames keep arriving, nothing comes out).
* WARN (per camera): no image yet or silent longer than its timeout; more than
  ``MAX_LOSS_FRACTION`` (5 %) of the frames lost in transport, or rejected
  (bad encoding, size, corrupt data).
* OK otherwise.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

OK = DiagnosticStatus.OK
WARN = DiagnosticStatus.WARN
ERROR = DiagnosticStatus.ERROR

#: Fraction of lost-in-transport or rejected frames above which a camera WARNs.
MAX_LOSS_FRACTION = 0.05
#: Seconds a frame may wait for the worker before the watchdog reports ERROR.
WORKER_STALL_S = 10.0
#: Fewer handled frames than this fraction of the arriving ones (between two
#: diagnostics ticks, at least ``MIN_FRAMES_FOR_RATIO`` arriving) is an ERROR.
MIN_HANDLED_FRACTION = 0.05
MIN_FRAMES_FOR_RATIO = 20
#: Stamps older than this (or more than ``MAX_STAMP_AHEAD_S`` in the future)
#: are not on the node's clock (bag/simulation stamps without use_sim_time).
MAX_STAMP_AGE_S = 60.0
MAX_STAMP_AHEAD_S = 1.0


def comparable_latency_ms(now_ns: int, stamp_ns: int) -> float | None:
    """Stamp -> now in milliseconds, or None when the two clocks are not comparable.

    ``now_ns`` is the node's clock (ROS time: /clock with use_sim_time). A zero
    stamp, a stamp older than :data:`MAX_STAMP_AGE_S` or ahead by more than
    :data:`MAX_STAMP_AHEAD_S` means the images are stamped by another clock.
    """
    if stamp_ns <= 0 or now_ns <= 0:
        return None
    age_s = (now_ns - stamp_ns) / 1e9
    if age_s > MAX_STAMP_AGE_S or age_s < -MAX_STAMP_AHEAD_S:
        return None
    return age_s * 1e3


def stamp_clock_warning(now_ns: int, stamp_ns: int) -> str:
    """The one WARN the node logs when latencies are omitted (names the fix)."""
    return (
        f"image stamps are not comparable with the node's clock (stamp {stamp_ns / 1e9:.3f} s, "
        f"node clock {now_ns / 1e9:.3f} s): latency_p50_ms/p95 are omitted. Replaying a bag or "
        "running a simulation? Set use_sim_time:=true (and publish /clock); otherwise stamp "
        "images with the camera host's synchronised clock."
    )


class LatencyWindow:
    """The last ``size`` latency samples (milliseconds) with percentiles; thread-safe."""

    def __init__(self, size: int = 300) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, value_ms: float) -> None:
        with self._lock:
            self._values.append(float(value_ms))

    def percentiles(self, qs=(50, 95)) -> list[float]:
        """Percentiles (linear interpolation) of the window; NaN while it is empty."""
        with self._lock:
            values = np.array(self._values, dtype=np.float64)
        if values.size == 0:
            return [float("nan")] * len(qs)
        return [float(v) for v in np.percentile(values, qs)]

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)


@dataclass
class StreamCounters:
    """Per-camera counts since start (monotonic, never reset).

    Invariant once the stream is idle:
    ``received == processed + dropped + rejected + failed``.

    Attributes:
        received: messages that reached the subscription callback.
        lost: messages lost in transport before the callback (gaps in the
            publisher's DDS sequence numbers; exact with one publisher per topic).
        dropped: messages overwritten in the latest-frame slot before the
            worker took them (overload).
        rejected: messages that could not be converted (bad encoding, size...).
        failed: frames whose estimation raised (logged; the node goes on).
        processed: frames estimated and published.
        faces: faces published in total.
        debug_images: debug images drawn (only while ``~/debug_image`` has subscribers).
        last_receive: monotonic time of the last message, or None.
        last_error: text of the last rejection/failure.
    """

    received: int = 0
    lost: int = 0
    dropped: int = 0
    rejected: int = 0
    failed: int = 0
    processed: int = 0
    faces: int = 0
    debug_images: int = 0
    last_receive: float | None = None
    last_error: str = ""


@dataclass
class RateTracker:
    """Rate of a growing counter between two diagnostics ticks."""

    last_count: int = 0
    last_time: float | None = None
    rate: float = 0.0

    def update(self, count: int, now: float) -> float:
        if self.last_time is not None and now > self.last_time:
            self.rate = (count - self.last_count) / (now - self.last_time)
        self.last_count, self.last_time = count, now
        return self.rate


@dataclass
class CameraReport:
    """What the diagnostics show for one camera."""

    name: str
    topic: str
    counters: StreamCounters
    input_rate_hz: float
    processed_rate_hz: float
    silent_s: float | None
    timeout_s: float
    has_camera_info: bool
    qos: str = ""  # the input reliability in use (auto resolves to one of them)


@dataclass
class NodeReport:
    """What the diagnostics show for the node as a whole."""

    node_name: str
    backend: str
    device: str
    model: str
    detector: str
    converter: str
    latency_ms: list[float]  # stamp -> publish, p50, p95
    processing_ms: list[float]  # receive -> publish, p50, p95
    stage_ms: dict[str, float] = field(default_factory=dict)
    cameras: list[CameraReport] = field(default_factory=list)
    worker_alive: bool = True
    worker_waiting_s: float | None = None  # age of the oldest frame waiting for the worker
    received_delta: int = 0  # frames that arrived since the previous report
    handled_delta: int = 0  # frames processed, rejected or failed since the previous report
    worker_error: str = ""  # last exception that escaped a frame


def worker_status(report: NodeReport) -> tuple[int, str]:
    """The watchdog: ERROR when the worker is dead, stuck or far behind the input."""
    if not report.worker_alive:
        return ERROR, (
            "inference worker thread is not running"
            + (f" (last error: {report.worker_error})" if report.worker_error else "")
            + ": no frame will be processed; restart the node and report the log"
        )
    if report.worker_waiting_s is not None and report.worker_waiting_s > WORKER_STALL_S:
        return ERROR, (
            f"inference worker stuck: a frame has waited {report.worker_waiting_s:.1f} s; "
            "check the backend/device (GPU hang?) and restart the node"
        )
    if (
        report.received_delta >= MIN_FRAMES_FOR_RATIO
        and report.handled_delta < MIN_HANDLED_FRACTION * report.received_delta
    ):
        return ERROR, (
            f"inference worker handled {report.handled_delta} of {report.received_delta} "
            "frames since the last report: it cannot keep up; use a faster backend/device, "
            "detect_every > 1 or max_rate_hz"
        )
    return OK, "running"


def _kv(key: str, value) -> KeyValue:
    if isinstance(value, float):
        text = "nan" if value != value else f"{value:.2f}"
    else:
        text = str(value)
    return KeyValue(key=key, value=text)


def camera_status(report: CameraReport, node_name: str) -> DiagnosticStatus:
    """Status of one camera: WARN when silent longer than its timeout, or when more than
    5 % of its frames are lost in transport or rejected (see the module docstring)."""
    c = report.counters
    level, message = OK, "receiving"
    lost_fraction = c.lost / (c.received + c.lost) if c.received + c.lost else 0.0
    rejected_fraction = c.rejected / c.received if c.received else 0.0
    if report.silent_s is None:
        level, message = WARN, "no image received yet"
    elif report.silent_s > report.timeout_s:
        level, message = WARN, f"no image for {report.silent_s:.1f} s (camera dropout?)"
    elif lost_fraction > MAX_LOSS_FRACTION:
        level, message = (
            WARN,
            (
                f"{100 * lost_fraction:.0f} % of frames lost in transport ({c.lost} of "
                f"{c.received + c.lost}, input QoS {report.qos or 'unknown'}): use qos auto or "
                "reliable, or the robot DDS profile (docs/NODE.md, Transport)"
            ),
        )
    elif rejected_fraction > MAX_LOSS_FRACTION:
        level, message = (
            WARN,
            (
                f"{100 * rejected_fraction:.0f} % of frames rejected ({c.rejected} of "
                f"{c.received}; last: {c.last_error}): check the camera's encoding, size and data"
            ),
        )
    elif c.rejected or c.failed:
        message = f"receiving; {c.rejected} rejected, {c.failed} failed so far"
    status = DiagnosticStatus(
        level=level,
        name=f"{node_name}: camera {report.name}",
        message=message,
        hardware_id=report.topic,
    )
    status.values = [
        _kv("topic", report.topic),
        _kv("qos", report.qos),
        _kv("input_rate_hz", report.input_rate_hz),
        _kv("processed_rate_hz", report.processed_rate_hz),
        _kv("received_frames", c.received),
        _kv("lost_in_transport", c.lost),
        _kv("processed_frames", c.processed),
        _kv("dropped_frames", c.dropped),
        _kv("rejected_frames", c.rejected),
        _kv("failed_frames", c.failed),
        _kv("faces_published", c.faces),
        _kv("debug_images", c.debug_images),
        _kv(
            "camera_info", "yes" if report.has_camera_info else "no (pixel ray at default distance)"
        ),
        _kv("last_error", c.last_error),
    ]
    return status


def build_diagnostics(report: NodeReport, stamp) -> DiagnosticArray:
    """One summary status for the node plus one per camera.

    The summary holds backend, model, input rate, processed rate, dropped /
    rejected / failed frames (sums over cameras) and latency p50/p95.
    """
    cams = report.cameras
    totals = StreamCounters(
        received=sum(c.counters.received for c in cams),
        lost=sum(c.counters.lost for c in cams),
        dropped=sum(c.counters.dropped for c in cams),
        rejected=sum(c.counters.rejected for c in cams),
        failed=sum(c.counters.failed for c in cams),
        processed=sum(c.counters.processed for c in cams),
        faces=sum(c.counters.faces for c in cams),
    )
    camera_statuses = [camera_status(c, report.node_name) for c in cams]
    level = max((_level(s) for s in camera_statuses), default=_level(OK))
    message = (
        "running"
        if level == _level(OK)
        else "; ".join(
            f"{c.name}: {s.message}"
            for c, s in zip(cams, camera_statuses, strict=True)
            if _level(s) != _level(OK)
        )
    )
    worker_level, worker_message = worker_status(report)
    if _level(worker_level) > level:
        level, message = _level(worker_level), worker_message
    summary = DiagnosticStatus(
        level=bytes([level]),
        name=f"{report.node_name}: head pose estimation",
        message=message,
        hardware_id=report.device,
    )
    summary.values = [
        _kv("backend", report.backend),
        _kv("device", report.device),
        _kv("model", report.model),
        _kv("detector", report.detector),
        _kv("image_conversion", report.converter),
        _kv("cameras", len(cams)),
        _kv("input_rate_hz", float(sum(c.input_rate_hz for c in cams))),
        _kv("processed_rate_hz", float(sum(c.processed_rate_hz for c in cams))),
        _kv("received_frames", totals.received),
        _kv("lost_in_transport", totals.lost),
        _kv("processed_frames", totals.processed),
        _kv("dropped_frames", totals.dropped),
        _kv("rejected_frames", totals.rejected),
        _kv("failed_frames", totals.failed),
        _kv("faces_published", totals.faces),
        _kv("worker_alive", report.worker_alive),
        _kv("latency_p50_ms", report.latency_ms[0]),
        _kv("latency_p95_ms", report.latency_ms[1]),
        _kv("processing_p50_ms", report.processing_ms[0]),
        _kv("processing_p95_ms", report.processing_ms[1]),
    ]
    summary.values += [_kv(f"stage_{k}_p50_ms", v) for k, v in sorted(report.stage_ms.items())]
    array = DiagnosticArray()
    array.header.stamp = stamp
    array.status = [summary, *camera_statuses]
    return array


def _level(status) -> int:
    """The level of a status (or a level constant) as an int."""
    level = getattr(status, "level", status)  # a 'byte' field: bytes of length 1 in rclpy
    return level[0] if isinstance(level, bytes) else int(level)


def status_values(status: DiagnosticStatus) -> dict[str, str]:
    """``key -> value`` of a status (for consumers and tests)."""
    return {kv.key: kv.value for kv in status.values}
