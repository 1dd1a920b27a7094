"""Per-camera state of the node: topics, the latest-frame slot, counters, publishers."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


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
    subscription: object = None
    retiring: object = None  # the previous reader while qos auto switches
    switched_at: float = 0.0
    subscribed_topic: str = ""
    reliability: str = ""  # "reliable" or "best_effort" (the QoS in use)

    def offer(self, msg, now: float, sequence: int | None = None, switching: bool = False) -> None:
        """Store the newest message; an untaken older one is dropped (counted).

        ``sequence`` is the publisher's sequence number (DDS): a jump counts
        the messages lost in transport (exact with one publisher per topic;
        a lower number means another or a restarted publisher and is not counted).
        ``switching``: two readers are active (qos auto): a sample not newer than
        the last one came through both and is ignored.
        """
        with self.lock:
            if switching and sequence and self.last_sequence and sequence <= self.last_sequence:
                return  # the same sample through both readers while qos auto switches
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

    def record(self, kind: str, text: str) -> None:
        """Count one ``rejected`` or ``failed`` frame and keep its reason."""
        with self.lock:
            setattr(self.counters, kind, getattr(self.counters, kind) + 1)
            self.counters.last_error = f"{kind} frame: {text}"

    def report(self, now: float, timeout_s: float):
        """``(diagnostics.CameraReport, seconds the waiting frame has waited or None)``."""
        from lechpe_ros.diagnostics import CameraReport, StreamCounters

        with self.lock:
            counters = StreamCounters(**vars(self.counters))
            waiting = None if self.pending is None else now - self.pending_time
        silent = None if counters.last_receive is None else now - counters.last_receive
        report = CameraReport(
            name=self.name,
            topic=self.image_topic,
            counters=counters,
            input_rate_hz=self.input_rate.update(counters.received, now),
            processed_rate_hz=self.processed_rate.update(counters.processed, now),
            silent_s=silent,
            timeout_s=timeout_s,
            has_camera_info=self.info is not None,
            qos=self.reliability,
        )
        return report, waiting
