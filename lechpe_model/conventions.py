"""Head-pose conventions: Euler angles <-> rotation matrix <-> quaternion.

This module is the single owner of every angle convention in the package.

Label convention (300W-LP / AFLW2000, 3DDFA fitting)
----------------------------------------------------
The 3D head model lives in a frame with x to the image's right, y up and z
toward the viewer (out of the screen).  3DDFA projects a model vertex ``v`` as
``s * R @ v + t`` with

    R = (Rz(roll) @ Ry(yaw) @ Rx(pitch)).T

where Rx, Ry, Rz are the usual right-handed rotations about x, y and z.  The
image row grows downwards, so image ``v = H - y``.  Read in the image:

* positive **yaw** turns the nose toward the image's **left**
  (the person turns to their own right);
* positive **pitch** raises the nose (the person **looks up**);
* positive **roll** turns the face **clockwise** in the image
  (the top of the head moves toward the image's right).

A renderer that rotates by ``Rz @ Ry @ Rx`` without the transpose produces the
opposite signs; ``test/test_conventions.py`` pins every sign.

Head frame published to ROS
---------------------------
The head orientation is published in the camera optical frame (REP-103:
x right, y down, z forward into the scene) as the rotation of a *head frame*
that follows REP-103 body axes, as REP-155 face frames do:
x forward out of the face (through the nose), y to the person's left,
z up through the top of the head.  A frontal face looking into the camera
(all angles 0) therefore has its x axis along optical -z.

Angles are degrees in every public function; arrays of Euler angles are in
the order (yaw, pitch, roll), the order of the network outputs and of the
paper's tables.  Functions accept scalars or arrays (leading batch dims).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

#: Version of the convention written into checkpoints; bump on any change.
CONVENTION_VERSION = "300wlp-3ddfa-v1"

#: Order of the three angles in every (..., 3) array of the package.
ANGLE_NAMES = ("yaw", "pitch", "roll")

#: 3DDFA camera frame (x right, y up, z toward viewer) -> ROS optical frame.
MODEL_TO_OPTICAL = np.diag([1.0, -1.0, -1.0])

#: Columns are the REP-103 head axes (forward, left, up) expressed in the
#: head-model frame (x image-right = person's left, y up, z out of the face).
HEAD_TO_MODEL = np.array(
    [
        [0.0, 1.0, 0.0],
        [0.0, 0.0, 1.0],
        [1.0, 0.0, 0.0],
    ]
)

#: Mirroring the image about its vertical axis (x -> -x).
_MIRROR_X = np.diag([-1.0, 1.0, 1.0])


def _stack_euler(yaw, pitch, roll) -> np.ndarray:
    yaw, pitch, roll = np.broadcast_arrays(
        np.asarray(yaw, dtype=np.float64),
        np.asarray(pitch, dtype=np.float64),
        np.asarray(roll, dtype=np.float64),
    )
    return np.stack([roll, yaw, pitch], axis=-1)


def euler_to_matrix(yaw, pitch, roll) -> np.ndarray:
    """Rotation ``R = (Rz(roll) Ry(yaw) Rx(pitch))^T`` of the label convention.

    Args:
        yaw, pitch, roll: degrees, scalars or arrays of one shape ``S``.

    Returns:
        ``S + (3, 3)`` float64 matrices mapping head-model coordinates to the
        3DDFA camera frame (x right, y up, z toward the viewer).
    """
    zyx = _stack_euler(yaw, pitch, roll)
    shape = zyx.shape[:-1]
    # Intrinsic "ZYX" with (roll, yaw, pitch) is Rz(roll) @ Ry(yaw) @ Rx(pitch).
    rot = Rotation.from_euler("ZYX", zyx.reshape(-1, 3), degrees=True).inv()
    return rot.as_matrix().reshape(shape + (3, 3))


def matrix_to_euler(matrix: np.ndarray) -> np.ndarray:
    """Inverse of :func:`euler_to_matrix`.

    Args:
        matrix: ``(..., 3, 3)`` rotation matrices in the label convention.

    Returns:
        ``(..., 3)`` degrees in the order (yaw, pitch, roll), with
        yaw in [-90, 90] (the gimbal branch used by the datasets).
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    shape = matrix.shape[:-2]
    roll_yaw_pitch = (
        Rotation.from_matrix(matrix.reshape(-1, 3, 3)).inv().as_euler("ZYX", degrees=True)
    )
    ypr = roll_yaw_pitch[:, [1, 2, 0]]
    return ypr.reshape(shape + (3,))


def euler_to_optical_matrix(yaw, pitch, roll) -> np.ndarray:
    """Head-frame orientation in the ROS camera optical frame.

    Columns of the result are the head's forward, left and up axes expressed
    in optical coordinates (x right, y down, z forward).
    """
    return MODEL_TO_OPTICAL @ euler_to_matrix(yaw, pitch, roll) @ HEAD_TO_MODEL


def optical_matrix_to_euler(matrix: np.ndarray) -> np.ndarray:
    """Inverse of :func:`euler_to_optical_matrix`; returns (yaw, pitch, roll)."""
    model = MODEL_TO_OPTICAL @ np.asarray(matrix, dtype=np.float64) @ HEAD_TO_MODEL.T
    return matrix_to_euler(model)


def euler_to_quaternion(yaw, pitch, roll) -> np.ndarray:
    """Head orientation in the camera optical frame as a quaternion.

    Returns:
        ``(..., 4)`` unit quaternions in ROS order (x, y, z, w), w >= 0.
    """
    matrix = euler_to_optical_matrix(yaw, pitch, roll)
    shape = matrix.shape[:-2]
    quat = Rotation.from_matrix(matrix.reshape(-1, 3, 3)).as_quat()
    quat = np.where(quat[:, 3:4] < 0, -quat, quat)
    return quat.reshape(shape + (4,))


def quaternion_to_euler(quat: np.ndarray) -> np.ndarray:
    """Inverse of :func:`euler_to_quaternion`; (x, y, z, w) -> (yaw, pitch, roll)."""
    quat = np.asarray(quat, dtype=np.float64)
    shape = quat.shape[:-1]
    matrix = Rotation.from_quat(quat.reshape(-1, 4)).as_matrix()
    return optical_matrix_to_euler(matrix).reshape(shape + (3,))


def mirror_euler(angles: np.ndarray) -> np.ndarray:
    """Angles of the pose seen in a horizontally mirrored image.

    Mirroring conjugates the rotation with diag(-1, 1, 1), which keeps pitch
    and negates yaw and roll; this is the flip augmentation of training.

    Args:
        angles: ``(..., 3)`` degrees (yaw, pitch, roll).
    """
    angles = np.asarray(angles, dtype=np.float64)
    return angles * np.array([-1.0, 1.0, -1.0])


def rotate_in_image_plane(angles: np.ndarray, theta_deg) -> np.ndarray:
    """Angles of the pose seen after rotating the image **clockwise** by ``theta_deg``.

    Rotating an image about the camera's viewing axis rotates every head in it by
    exactly that angle about the axis, so the new rotation is ``Rz(-theta) @ R`` in
    the 3DDFA camera frame (z toward the viewer; a clockwise turn as seen is negative
    about +z).  Only for a frontal head is this ``roll + theta``: a turned head also
    changes yaw and pitch.  ``cv2.getRotationMatrix2D(centre, -theta_deg, 1)`` turns
    the pixels the same way (OpenCV's positive angle is counter-clockwise as seen).

    Args:
        angles: ``(..., 3)`` degrees (yaw, pitch, roll).
        theta_deg: clockwise in-plane rotation in degrees, scalar or broadcastable
            to ``angles[..., 0]``.

    Returns:
        ``(..., 3)`` degrees (yaw, pitch, roll) of the rotated pose.
    """
    angles = np.asarray(angles, dtype=np.float64)
    theta = np.broadcast_to(np.asarray(theta_deg, dtype=np.float64), angles.shape[:-1])
    matrix = euler_to_matrix(angles[..., 0], angles[..., 1], angles[..., 2])
    turn = Rotation.from_euler("z", -theta.reshape(-1, 1), degrees=True).as_matrix()
    turned = turn.reshape(theta.shape + (3, 3)) @ matrix
    return matrix_to_euler(turned)


def image_tilt(angles: np.ndarray) -> np.ndarray:
    """How far a head is tilted in the image: the clockwise angle (degrees) of its up
    axis, projected on the image plane, from the image's up direction.

    Turning the image clockwise by ``theta`` adds exactly ``theta``
    (``image_tilt(rotate_in_image_plane(a, theta)) == image_tilt(a) + theta``,
    wrapped), so turning it by ``-image_tilt(a)`` makes the head upright. For a
    frontal head it is the roll; for a turned head it is not (a head at yaw 70
    with roll 18 and pitch -20 is tilted by about 5 deg in the image).

    Args:
        angles: ``(..., 3)`` degrees (yaw, pitch, roll).

    Returns:
        ``(...)`` degrees in (-180, 180]; undefined (0) for an up axis along the
        viewing axis (pitch +-90).
    """
    angles = np.asarray(angles, dtype=np.float64)
    up = euler_to_matrix(angles[..., 0], angles[..., 1], angles[..., 2])[..., :, 1]
    return np.degrees(np.arctan2(up[..., 0], up[..., 1]))


def mirror_matrix(matrix: np.ndarray) -> np.ndarray:
    """Rotation of the mirrored pose, computed geometrically (used by tests)."""
    return _MIRROR_X @ np.asarray(matrix, dtype=np.float64) @ _MIRROR_X


def _wrap180(a) -> np.ndarray:
    return (np.asarray(a, np.float64) + 180.0) % 360.0 - 180.0


def closest_euler(matrix: np.ndarray, reference) -> np.ndarray:
    """Euler angles (yaw, pitch, roll) of one ``matrix`` nearest to ``reference``.

    A rotation has two triples in this convention, ``(y, p, r)`` and ``(180 - y,
    p + 180, r + 180)`` (wrapped); :func:`matrix_to_euler` always returns |yaw| <= 90.
    Past 90 degrees of yaw the other triple is the continuous one.
    """
    a = matrix_to_euler(matrix)
    b = _wrap180(np.array([180.0 - a[0], a[1] + 180.0, a[2] + 180.0]))
    ref = np.asarray(reference, np.float64)
    dist_a = np.abs(_wrap180(a - ref)).sum()
    dist_b = np.abs(_wrap180(b - ref)).sum()
    return a if dist_a <= dist_b else b


def ray_rotation(direction) -> np.ndarray:
    """Smallest rotation (optical frame) taking the optical axis onto ``direction``.

    Args:
        direction: ``(3,)`` a vector along the viewing ray to the head (optical
            frame: x right, y down, z forward), e.g. ``(x_n, y_n, 1)`` of its pixel.
    """
    d = np.asarray(direction, np.float64).reshape(3)
    d = d / np.linalg.norm(d)
    z = np.array([0.0, 0.0, 1.0])
    axis = np.cross(z, d)
    s, c = float(np.linalg.norm(axis)), float(d @ z)
    if s < 1e-12:
        return np.eye(3)
    k = axis / s
    kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + s * kx + (1.0 - c) * kx @ kx


def camera_to_ray_euler(angles, direction) -> np.ndarray:
    """(yaw, pitch, roll) of a head relative to the viewing ray ``direction``.

    What a crop centred on the head shows: the rotation seen by a camera turned,
    by the smallest rotation, to look straight at the head. Equals ``angles`` (the
    camera-frame angles, degrees) for a head on the optical axis. Networks trained
    on ``lechpe-synth``'s robot camera predict this ray-relative pose.
    """
    q = ray_rotation(direction)
    r_opt = MODEL_TO_OPTICAL @ euler_to_matrix(*np.asarray(angles, np.float64)[:3])
    return closest_euler(MODEL_TO_OPTICAL @ (q.T @ r_opt), angles)


def ray_to_camera_euler(ray_angles, direction) -> np.ndarray:
    """Inverse of :func:`camera_to_ray_euler`: camera-frame angles of a ray-relative pose."""
    q = ray_rotation(direction)
    r_opt = q @ (MODEL_TO_OPTICAL @ euler_to_matrix(*np.asarray(ray_angles, np.float64)[:3]))
    return closest_euler(MODEL_TO_OPTICAL @ r_opt, ray_angles)


def ray_relative_to_quaternion(angles, direction) -> np.ndarray:
    """Optical-frame quaternion (x, y, z, w; w >= 0) of a ray-relative pose.

    The same orientation as ``euler_to_quaternion(*ray_to_camera_euler(angles,
    direction))``, built from one matrix product instead of a round trip through
    Euler angles (the node does this for every face).
    """
    matrix = ray_rotation(direction) @ euler_to_optical_matrix(*np.asarray(angles, np.float64)[:3])
    quat = Rotation.from_matrix(matrix).as_quat()
    return -quat if quat[3] < 0 else quat


def pose_para_to_euler(pose_para: np.ndarray) -> np.ndarray:
    """300W-LP/AFLW2000 ``Pose_Para`` ([pitch, yaw, roll, ...] radians) -> degrees.

    Returns:
        ``(3,)`` degrees in the order (yaw, pitch, roll).
    """
    values = np.asarray(pose_para, dtype=np.float64).reshape(-1)
    if values.size < 3:
        raise ValueError(f"Pose_Para needs at least 3 values, got {values.size}")
    pitch, yaw, roll = np.degrees(values[:3])
    return np.array([yaw, pitch, roll])


def euler_to_pose_para(
    yaw: float, pitch: float, roll: float, translation=(0.0, 0.0, 0.0), scale: float = 1.0
) -> np.ndarray:
    """Degrees -> ``Pose_Para`` row [pitch, yaw, roll, tx, ty, tz, scale] (radians)."""
    angles = np.radians([pitch, yaw, roll])
    return np.concatenate([angles, np.asarray(translation, dtype=np.float64), [scale]])
