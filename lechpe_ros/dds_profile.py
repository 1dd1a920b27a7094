"""The ``dds_profile`` launch argument -> environment of the node process (ROS-free).

``robot`` selects the Fast DDS profile shipped in ``config/fastdds_robot.xml``
(large shared-memory segments, larger UDP socket buffers; docs/NODE.md
"Transport"); a path selects that XML file; empty keeps the environment's.
"""

from __future__ import annotations

from pathlib import Path

ROBOT_PROFILE = "fastdds_robot.xml"


def dds_profile_environment(choice: str, config_dir: str | Path) -> dict[str, str]:
    """Environment variables that make Fast DDS load the chosen profile.

    Args:
        choice: ``""`` (keep the environment), ``"robot"`` or a path to an XML file.
        config_dir: the package's installed ``config`` folder.

    Raises:
        FileNotFoundError: the chosen XML file does not exist (names it).
    """
    choice = choice.strip()
    if not choice:
        return {}
    path = Path(config_dir) / ROBOT_PROFILE if choice == "robot" else Path(choice).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"dds_profile {choice!r}: Fast DDS profile {path} does not exist "
            "(use 'robot', a path to an XML profile, or leave it empty)"
        )
    profile = str(path.resolve())
    # Fast DDS 2.x reads the first name, older releases the second.
    return {
        "FASTDDS_DEFAULT_PROFILES_FILE": profile,
        "FASTRTPS_DEFAULT_PROFILES_FILE": profile,
    }
