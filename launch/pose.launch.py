"""Launch the lechpe_pose head pose node.

    ros2 launch lechpe_ros pose.launch.py camera_topic:=/camera/color/image_raw
    ros2 launch lechpe_ros pose.launch.py cameras:=/front/image_raw,/back/image_raw camera_names:=front,back
    ros2 launch lechpe_ros pose.launch.py params_file:=/path/to/my_pose.yaml backend:=tensorrt namespace:=robot1

Several cameras run in ONE node that shares one inference engine (docs/NODE.md,
"Several cameras"); each camera's outputs are prefixed with its name.
Arguments override the params file (default: the package's config/pose.yaml).
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from lechpe_ros.parameters import launch_overrides

ARGUMENTS = (
    ("camera_topic", "/camera/image_raw", "Image topic of the camera (sensor_msgs/Image)."),
    (
        "cameras",
        "",
        "Comma-separated image topics of several cameras; replaces camera_topic when set.",
    ),
    (
        "camera_names",
        "",
        "Comma-separated output prefixes for `cameras` (default camera0, camera1, ...).",
    ),
    (
        "backend",
        "",
        "Inference backend: auto, tensorrt, onnxruntime or torch; empty keeps the params file's.",
    ),
    ("namespace", "", "Namespace of the node and of its outputs."),
    ("use_sim_time", "false", "Use /clock (true for bag replay and simulation)."),
)


def _pose_node(context, *args, **kwargs):
    value = {name: LaunchConfiguration(name).perform(context) for name, _, _ in ARGUMENTS}
    overrides = launch_overrides(
        camera_topic=value["camera_topic"],
        cameras=value["cameras"],
        camera_names=value["camera_names"],
        backend=value["backend"],
        use_sim_time=value["use_sim_time"],
    )
    params_file = LaunchConfiguration("params_file").perform(context)
    return [
        Node(
            package="lechpe_ros",
            executable="pose_node",
            name="lechpe_pose",
            namespace=value["namespace"],
            parameters=[params_file, overrides],
            output="screen",
            emulate_tty=True,
        )
    ]


def generate_launch_description() -> LaunchDescription:
    default_params = PathJoinSubstitution([FindPackageShare("lechpe_ros"), "config", "pose.yaml"])
    declared = [
        DeclareLaunchArgument(
            "params_file",
            default_value=default_params,
            description="YAML file with the node parameters.",
        )
    ]
    for name, default, description in ARGUMENTS:
        if name == "use_sim_time":
            declared.append(
                DeclareLaunchArgument(
                    name, default_value=default, description=description, choices=["true", "false"]
                )
            )
        else:
            declared.append(
                DeclareLaunchArgument(name, default_value=default, description=description)
            )
    return LaunchDescription([*declared, OpaqueFunction(function=_pose_node)])
