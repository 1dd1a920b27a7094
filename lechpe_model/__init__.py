"""LEC-HPE head pose estimation library (ROS-free).

Importing this package is cheap: it pulls in neither torch nor rclpy. Import
the submodules you need (see docs/ARCHITECTURE.md).
"""

__version__ = "0.1.0"
