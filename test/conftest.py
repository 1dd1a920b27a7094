"""Test-wide setup. DDS is confined to this machine for every test process.

This is the one place where the test environment is set: localhost discovery,
a shared-memory-only Fast DDS profile and a ROS_DOMAIN_ID private to this run.
Child processes started by tests inherit it through os.environ.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from lechpe_model.local_dds import apply_local_dds_environment  # noqa: E402

apply_local_dds_environment(int(os.environ.get("LECHPE_TEST_DOMAIN_ID", 1 + os.getpid() % 100)))
# Refuse to run ROS tests unconfined: localhost discovery and the SHM-only profile.
assert os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
assert os.path.isfile(os.environ["FASTDDS_DEFAULT_PROFILES_FILE"])
assert os.environ["FASTRTPS_DEFAULT_PROFILES_FILE"] == os.environ["FASTDDS_DEFAULT_PROFILES_FILE"]
assert "ROS_LOCALHOST_ONLY" not in os.environ  # on Jazzy it would override the range
# ament_index needs the venv prefix (the ROS wheels do not set it).
os.environ.setdefault("AMENT_PREFIX_PATH", sys.prefix)
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT
