"""Environment that confines ROS 2 / DDS traffic to this machine.

Used by the test suite and the demo (never by the node on a robot): localhost
discovery (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST), a shared-memory-only Fast DDS
profile (no UDP transport at all) and a private domain id.
Kept ROS-free so it can run before rclpy is imported.
"""

from __future__ import annotations

import os
from pathlib import Path

_PROFILE_NAME = "fastdds_localhost.xml"


def shm_profile_path() -> Path:
    """The shared-memory-only Fast DDS profile shipped in ``lechpe_model/assets``."""
    path = Path(__file__).resolve().parent / "assets" / _PROFILE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"Fast DDS profile missing from the installation: {path}")
    return path


def local_dds_environment(domain_id: int | None = None) -> dict[str, str]:
    """Variables that keep DDS on this host; ``domain_id`` defaults to one per process."""
    if domain_id is None:
        domain_id = 1 + os.getpid() % 100
    profile = str(shm_profile_path())
    return {
        "ROS_DOMAIN_ID": str(domain_id),
        # Jazzy's switch; the deprecated ROS_LOCALHOST_ONLY would override it with a
        # warning on every start, and the shared-memory profile blocks UDP anyway.
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
        "FASTDDS_DEFAULT_PROFILES_FILE": profile,
        "FASTRTPS_DEFAULT_PROFILES_FILE": profile,
    }


def apply_local_dds_environment(domain_id: int | None = None) -> dict[str, str]:
    """Set :func:`local_dds_environment` in ``os.environ`` (inherited by child processes)."""
    env = local_dds_environment(domain_id)
    os.environ.pop("ROS_LOCALHOST_ONLY", None)
    os.environ.update(env)
    return env
