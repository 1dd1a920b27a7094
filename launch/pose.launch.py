"""Launch the lechpe_pose head pose node.

    ros2 launch lechpe_ros pose.launch.py camera_topic:=/camera/color/image_raw
    ros2 launch lechpe_ros pose.launch.py cameras:=/front/image_raw,/back/image_raw camera_names:=front,back
    ros2 launch lechpe_ros pose.launch.py params_file:=/path/to/my_pose.yaml backend:=tensorrt namespace:=robot1

    ros2 launch lechpe_ros pose.launch.py dds_profile:=robot   # shipped Fast DDS profile

Several cameras run in ONE node that shares one inference engine (docs/NODE.md,
"Several cameras"); each camera's outputs are prefixed with its name.
Arguments override the params file (default: the package's config/pose.yaml)
only when given: an argument left empty keeps the file's value
(lechpe_ros.parameters.launch_overrides decides, tested without launch).
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from lechpe_ros.dds_profile import dds_profile_environment
from lechpe_ros.parameters import launch_overrides

ARGUMENTS = (
    (
        "camera_topic",
        "",
        "Image topic of the camera (sensor_msgs/Image); empty keeps the params file's "
        "image_topics (default /camera/image_raw).",
    ),
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
    (
        "use_sim_time",
        "",
        "true: use /clock (bag replay, simulation); false: wall clock; empty keeps the "
        "params file's (default false).",
    ),
    (
        "dds_profile",
        "",
        "Fast DDS profile for the node: 'robot' (config/fastdds_robot.xml: large shared "
        "memory, larger UDP buffers), a path to an XML profile, or empty (environment's).",
    ),
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
    config_dir = PathJoinSubstitution([FindPackageShare("lechpe_ros"), "config"]).perform(context)
    environment = dds_profile_environment(value["dds_profile"], config_dir)
    return [
        Node(
            package="lechpe_ros",
            executable="pose_node",
            name="lechpe_pose",
            namespace=value["namespace"],
            parameters=[params_file, overrides],
            output="screen",
            emulate_tty=True,
            additional_env=environment,
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
        declared.append(DeclareLaunchArgument(name, default_value=default, description=description))
    return LaunchDescription([*declared, OpaqueFunction(function=_pose_node)])
