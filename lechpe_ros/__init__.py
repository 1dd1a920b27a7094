"""ROS 2 adapters of LEC-HPE: the ``lechpe_pose`` node, message conversions, demo.

Only this package imports rclpy; the model, detector and pipeline live in the
ROS-free ``lechpe_model`` library (docs/ARCHITECTURE.md).
"""
