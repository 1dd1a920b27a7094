"""Input QoS of the node's image subscriptions, including ``qos: auto``.

``auto`` subscribes RELIABLE while every publisher of the topic is reliable
and BEST_EFFORT otherwise (a reliable subscription does not match a
best-effort camera). It is re-evaluated as publishers come and go. Either way
the history is keep-last depth 1: the node keeps only the newest frame.

Why not always best effort: large frames (640x480 bgr8 is 921 kB, above Fast
DDS's default 512 kB shared-memory segment) travel over UDP in fragments, and
a best-effort reader drops a whole frame for one lost fragment; measured 27 to
55 % of 5 Hz frames answered with best effort against 100 % with reliable
(issue 13, docs/NODE.md "Transport").
"""

from __future__ import annotations

QOS_AUTO = "auto"
#: Longest time the previous reader is kept after a switch (until the new one matched).
SWITCH_GRACE_S = 5.0
RELIABLE = "reliable"
BEST_EFFORT = "best_effort"


def choose_reliability(publisher_reliable: list[bool]) -> str:
    """``"reliable"`` when there is a publisher and all are reliable, else ``"best_effort"``.

    Args:
        publisher_reliable: one flag per publisher of the topic (from the ROS graph).
    """
    if publisher_reliable and all(publisher_reliable):
        return RELIABLE
    return BEST_EFFORT


def fixed_reliability(qos_parameter: str) -> str | None:
    """The reliability of a non-auto ``qos`` parameter; None for ``auto``."""
    return {"sensor_data": BEST_EFFORT, "reliable": RELIABLE}.get(qos_parameter)


def qos_profile(reliability: str):
    """rclpy ``QoSProfile``: keep-last 1 with the given reliability."""
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=1,
        reliability=ReliabilityPolicy.RELIABLE
        if reliability == RELIABLE
        else ReliabilityPolicy.BEST_EFFORT,
    )


def publishers_reliable(node, topic: str) -> list[bool]:
    """One flag per publisher of ``topic`` in the graph (``True`` = reliable)."""
    from rclpy.qos import ReliabilityPolicy

    name = node.resolve_topic_name(topic)
    return [
        info.qos_profile.reliability == ReliabilityPolicy.RELIABLE
        for info in node.get_publishers_info_by_topic(name)
    ]
