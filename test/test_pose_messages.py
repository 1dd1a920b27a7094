"""FacePose -> PoseStamped / PoseArray / PointCloud2: positions by hand, quaternions via conventions."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CameraInfo, PointCloud2
from std_msgs.msg import Header

from lechpe_model.conventions import (
    camera_to_ray_euler,
    euler_to_quaternion,
    quaternion_to_euler,
)
from lechpe_ros.pose_messages import (
    AVERAGE_FACE_WIDTH_M,
    FACE_FIELDS,
    assumed_camera_model,
    build_face_messages,
    camera_model_from_info,
    cloud_to_table,
    face_position,
)

try:  # the runtime's record type; the messages only read its attributes
    from lechpe_model.pipeline import FacePose
except ImportError:  # pragma: no cover - while the pipeline module is being written
    FacePose = None


def _face(box, angles, uncertainty=(2.0, 3.0, 4.0), score=0.9, confidence=0.8, cluster=3):
    fields = dict(
        box=np.asarray(box, np.float32),
        score=score,
        angles=np.asarray(angles, np.float32),
        uncertainty=np.asarray(uncertainty, np.float32),
        assignment=np.full(5, 0.2, np.float32),
        cluster=cluster,
        confidence=confidence,
        landmarks=None,
    )
    if FacePose is not None:
        import dataclasses

        names = {f.name for f in dataclasses.fields(FacePose)}
        return FacePose(**{k: v for k, v in fields.items() if k in names})
    from types import SimpleNamespace

    return SimpleNamespace(**fields)


def _info(fx=500.0, fy=520.0, cx=330.0, cy=250.0, width=640, height=480, d=(), model="plumb_bob"):
    info = CameraInfo()
    info.width, info.height = width, height
    info.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
    info.d = list(d)
    info.distortion_model = model
    return info


def _header(sec=41, nanosec=123456789, frame_id="head_cam_optical_frame"):
    header = Header()
    header.stamp.sec, header.stamp.nanosec, header.frame_id = sec, nanosec, frame_id
    return header


def test_position_from_intrinsics_hand_computed():
    camera = camera_model_from_info(_info(), 640, 480)
    assert camera is not None and camera.metric
    # Box 70 px wide centred at (400, 200): Z = 500 * 0.14 / 70 = 1.0 m.
    box = (365.0, 160.0, 435.0, 240.0)
    position = face_position(box, camera, face_width_m=0.14)
    z = 500.0 * 0.14 / 70.0
    expected = [(400.0 - 330.0) / 500.0 * z, (200.0 - 250.0) / 520.0 * z, z]
    np.testing.assert_allclose(position, expected, rtol=1e-12)
    np.testing.assert_allclose(position, [0.14, -0.0961538462, 1.0], atol=1e-9)


def test_position_with_distortion_lies_on_the_distorted_pixel_ray():
    d = (-0.3, 0.1, 0.001, -0.002, 0.0)
    camera = camera_model_from_info(_info(d=d), 640, 480)
    assert camera.dist is not None
    box = (500.0, 60.0, 580.0, 150.0)
    position = face_position(box, camera, face_width_m=0.14)
    # Projecting the 3D point through the distorted camera gives back the box centre.
    k = np.array([[500.0, 0, 330.0], [0, 520.0, 250.0], [0, 0, 1]])
    pixel, _ = cv2.projectPoints(position.reshape(1, 3), np.zeros(3), np.zeros(3), k, np.array(d))
    np.testing.assert_allclose(pixel.reshape(2), [540.0, 105.0], atol=1e-3)
    assert position[2] == pytest.approx(500.0 * 0.14 / 80.0)


def test_position_without_camera_info_is_along_the_ray_at_the_default_distance():
    camera = assumed_camera_model(640, 480, hfov_deg=90.0)
    assert not camera.metric
    assert camera.fx == pytest.approx(320.0)  # tan(45 deg) = 1
    box = (600.0, 220.0, 680.0, 260.0)  # centre (640, 240): the right image border
    position = face_position(box, camera, default_distance_m=2.0)
    # Ray (1, 0, 1)/sqrt(2) at 2 m.
    np.testing.assert_allclose(position, [math.sqrt(2), 0.0, math.sqrt(2)], atol=1e-12)


@pytest.mark.parametrize(
    ("info", "reason"),
    [
        (None, "no CameraInfo"),
        (_info(fx=0.0), "uncalibrated K"),
        (_info(width=1280, height=960), "another resolution"),
    ],
)
def test_unusable_camera_info_is_ignored(info, reason):
    assert camera_model_from_info(info, 640, 480) is None, reason


def test_messages_share_the_input_header_and_use_conventions_quaternions():
    header = _header()
    faces = [
        _face((10, 10, 40, 50), (30.0, -10.0, 5.0), cluster=1),
        _face((100, 100, 240, 260), (-45.0, 20.0, -12.5), cluster=4),  # the largest
        _face((300, 50, 350, 110), (0.0, 0.0, 0.0), cluster=0),
    ]
    camera = camera_model_from_info(_info(), 640, 480)
    msgs = build_face_messages(header, faces, camera, face_width_m=0.15)
    for msg in (msgs.pose, msgs.poses, msgs.faces):
        assert msg.header.stamp.sec == 41 and msg.header.stamp.nanosec == 123456789
        assert msg.header.frame_id == "head_cam_optical_frame"
    assert len(msgs.poses.poses) == 3
    for face, pose in zip(faces, msgs.poses.poses, strict=True):
        q = [pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w]
        position = [pose.position.x, pose.position.y, pose.position.z]
        # The published orientation is in the optical frame; seen along the face's
        # ray it is what the network predicted.
        camera_angles = quaternion_to_euler(np.array(q))
        np.testing.assert_allclose(
            camera_to_ray_euler(camera_angles, position), face.angles, atol=1e-4
        )
        np.testing.assert_allclose(q, euler_to_quaternion(*camera_angles), atol=1e-9)
    # The primary face is the largest box (index 1), not the first.
    assert msgs.pose.pose == msgs.poses.poses[1]
    z = 500.0 * 0.15 / 140.0
    assert msgs.pose.pose.position.z == pytest.approx(z)
    assert msgs.pose.pose.position.x == pytest.approx((170.0 - 330.0) / 500.0 * z)


@pytest.mark.parametrize(
    "box",
    [(27, 19, 37, 29), (0, 0, 10, 10), (50, 30, 64, 48)],
    ids=["centred", "top-left", "bottom-right"],
)
def test_frontal_face_points_its_x_axis_at_the_camera(box):
    # All angles 0 = looking straight at the camera: the head's forward axis points
    # back along the face's viewing ray (optical -z only for a centred face).
    msgs = build_face_messages(_header(), [_face(box, (0, 0, 0))], assumed_camera_model(64, 48, 60))
    q = msgs.pose.pose.orientation
    from scipy.spatial.transform import Rotation

    forward = Rotation.from_quat([q.x, q.y, q.z, q.w]).apply([1.0, 0.0, 0.0])
    p = msgs.pose.pose.position
    towards_camera = -np.array([p.x, p.y, p.z]) / math.dist((0, 0, 0), (p.x, p.y, p.z))
    np.testing.assert_allclose(forward, towards_camera, atol=1e-9)
    if box == (27, 19, 37, 29):
        np.testing.assert_allclose(forward, [0.0, 0.0, -1.0], atol=1e-12)
    else:
        assert abs(forward[2] + 1.0) > 0.05  # off-centre: not optical -z


def test_face_cloud_fields_round_trip_through_serialization():
    faces = [
        _face(
            (10, 20, 50, 70),
            (12.5, -3.0, 7.0),
            (1.5, 2.5, 3.5),
            score=0.75,
            confidence=0.6,
            cluster=2,
        ),
        _face(
            (100, 100, 150, 140),
            (-60.0, 30.0, -8.0),
            (9.0, 8.0, 7.0),
            score=0.55,
            confidence=0.2,
            cluster=None,
        ),
    ]
    camera = assumed_camera_model(320, 240, 60.0)
    msgs = build_face_messages(_header(), faces, camera, default_distance_m=1.5)
    cloud = deserialize_message(serialize_message(msgs.faces), PointCloud2)
    assert [f.name for f in cloud.fields] == list(FACE_FIELDS)
    assert cloud.width == 2 and cloud.height == 1 and cloud.point_step == 4 * len(FACE_FIELDS)
    table = cloud_to_table(cloud)
    np.testing.assert_allclose(table["yaw"], [12.5, -60.0])
    np.testing.assert_allclose(table["pitch"], [-3.0, 30.0])
    np.testing.assert_allclose(table["roll"], [7.0, -8.0])
    np.testing.assert_allclose(table["yaw_std"], [1.5, 9.0])
    np.testing.assert_allclose(table["roll_std"], [3.5, 7.0])
    np.testing.assert_allclose(table["confidence"], [0.6, 0.2], rtol=1e-6)
    np.testing.assert_allclose(table["score"], [0.75, 0.55], rtol=1e-6)
    np.testing.assert_allclose(table["cluster"], [2.0, -1.0])
    np.testing.assert_allclose(table["box_x2"], [50.0, 150.0])
    positions = np.stack([table["x"], table["y"], table["z"]], axis=1)
    np.testing.assert_allclose(np.linalg.norm(positions, axis=1), [1.5, 1.5], rtol=1e-6)
    first = msgs.poses.poses[0].position
    np.testing.assert_allclose(positions[0], [first.x, first.y, first.z], rtol=1e-6)


def test_no_faces_gives_empty_array_and_no_primary_pose():
    msgs = build_face_messages(_header(), [], assumed_camera_model(64, 48, 60.0))
    assert msgs.pose is None
    assert msgs.poses.poses == [] and msgs.poses.header.frame_id == "head_cam_optical_frame"
    assert msgs.faces.width == 0 and len(msgs.faces.data) == 0


def test_average_face_width_is_documented_value():
    assert 0.12 <= AVERAGE_FACE_WIDTH_M <= 0.16
