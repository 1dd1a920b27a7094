"""Property tests of lechpe_model.conventions: the signs every published pose relies on.

Expected values are built here independently of the module (hand-written
elementary rotations, axis columns written from the words of the docstring,
a hand quaternion-from-matrix), never by calling the code under test twice.
"""

from __future__ import annotations

import numpy as np
import pytest

from lechpe_model import conventions as cv

RNG_SEED = 1234


def _rx(a):
    c, s = np.cos(np.radians(a)), np.sin(np.radians(a))
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _ry(a):
    c, s = np.cos(np.radians(a)), np.sin(np.radians(a))
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rz(a):
    c, s = np.cos(np.radians(a)), np.sin(np.radians(a))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _quat_from_matrix(m: np.ndarray) -> np.ndarray:
    """Hand-written (x, y, z, w) from a rotation matrix, w >= 0 (Shepperd's method)."""
    tr = np.trace(m)
    if tr > 0:
        w = np.sqrt(1.0 + tr) / 2.0
        x = (m[2, 1] - m[1, 2]) / (4 * w)
        y = (m[0, 2] - m[2, 0]) / (4 * w)
        z = (m[1, 0] - m[0, 1]) / (4 * w)
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        r = np.sqrt(1.0 + m[i, i] - m[j, j] - m[k, k])
        v = np.zeros(3)
        v[i] = r / 2.0
        v[j] = (m[j, i] + m[i, j]) / (2 * r)
        v[k] = (m[k, i] + m[i, k]) / (2 * r)
        w = (m[k, j] - m[j, k]) / (2 * r)
        x, y, z = v
    q = np.array([x, y, z, w])
    return -q if q[3] < 0 else q


def _random_angles(n: int, seed: int = RNG_SEED, limit: float = 80.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-limit, limit, size=(n, 3))


# Axis columns (forward, left, up) in the optical frame (x right, y down, z forward),
# written from the words of the conventions docstring for single-angle poses.
FRONTAL = np.array([[0, 1, 0], [0, 0, -1], [-1, 0, 0]], dtype=float)  # fwd -z, left +x, up -y
EXPECTED_OPTICAL = {
    # (yaw, pitch, roll): columns forward, left, up
    (0.0, 0.0, 0.0): FRONTAL,
    # +yaw 90: nose to the image's left (-x); the person's left side faces the camera (-z).
    (90.0, 0.0, 0.0): np.column_stack([[-1, 0, 0], [0, 0, -1], [0, -1, 0]]).astype(float),
    # +pitch 90: nose up in the image (-y); top of the head tips away from the camera (+z).
    (0.0, 90.0, 0.0): np.column_stack([[0, -1, 0], [1, 0, 0], [0, 0, 1]]).astype(float),
    # +roll 90 (clockwise): top of head to the image's right (+x), person's left down (+y).
    (0.0, 0.0, 90.0): np.column_stack([[0, 0, -1], [0, 1, 0], [1, 0, 0]]).astype(float),
}


def test_label_matrix_matches_hand_built_3ddfa_rotation():
    # 3DDFA builds R = Rx'(pitch) Ry'(yaw) Rz'(roll) from transposed elementary
    # rotations, i.e. (Rz Ry Rx)^T of the right-handed ones.
    for yaw, pitch, roll in _random_angles(20):
        expected = _rx(-pitch) @ _ry(-yaw) @ _rz(-roll)
        np.testing.assert_allclose(cv.euler_to_matrix(yaw, pitch, roll), expected, atol=1e-12)
        np.testing.assert_allclose(expected, (_rz(roll) @ _ry(yaw) @ _rx(pitch)).T, atol=1e-12)


def test_euler_matrix_round_trip_batched():
    angles = _random_angles(200, limit=85.0)
    angles[:, 1:] *= 2.0  # pitch and roll may exceed 90 degrees; yaw is the [-90, 90] branch
    mats = cv.euler_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2])
    assert mats.shape == (200, 3, 3)
    np.testing.assert_allclose(
        mats @ np.swapaxes(mats, -1, -2), np.broadcast_to(np.eye(3), mats.shape), atol=1e-12
    )
    np.testing.assert_allclose(np.linalg.det(mats), 1.0, atol=1e-12)
    np.testing.assert_allclose(cv.matrix_to_euler(mats), angles, atol=1e-9)


def test_euler_quaternion_round_trip_and_unit_norm():
    angles = _random_angles(200, seed=7, limit=85.0)
    quat = cv.euler_to_quaternion(angles[:, 0], angles[:, 1], angles[:, 2])
    assert quat.shape == (200, 4)
    np.testing.assert_allclose(np.linalg.norm(quat, axis=-1), 1.0, atol=1e-12)
    assert np.all(quat[:, 3] >= 0)
    np.testing.assert_allclose(cv.quaternion_to_euler(quat), angles, atol=1e-9)


def test_optical_matrix_round_trip():
    angles = _random_angles(50, seed=3)
    mats = cv.euler_to_optical_matrix(angles[:, 0], angles[:, 1], angles[:, 2])
    np.testing.assert_allclose(np.linalg.det(mats), 1.0, atol=1e-12)
    np.testing.assert_allclose(cv.optical_matrix_to_euler(mats), angles, atol=1e-9)


def test_scalar_inputs_give_unbatched_shapes():
    assert cv.euler_to_matrix(10.0, 20.0, 30.0).shape == (3, 3)
    assert cv.euler_to_quaternion(10.0, 20.0, 30.0).shape == (4,)
    assert cv.matrix_to_euler(np.eye(3)).shape == (3,)


@pytest.mark.parametrize("pose", list(EXPECTED_OPTICAL))
def test_known_poses_map_to_expected_optical_axes_and_quaternions(pose):
    expected = EXPECTED_OPTICAL[pose]
    assert np.isclose(np.linalg.det(expected), 1.0)  # the hand-written axes form a rotation
    np.testing.assert_allclose(cv.euler_to_optical_matrix(*pose), expected, atol=1e-12)
    got, want = cv.euler_to_quaternion(*pose), _quat_from_matrix(expected)
    if abs(want[3]) < 1e-9:  # w = 0: q and -q are the same rotation, the sign is arbitrary
        want = want * np.sign(np.dot(got, want))
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_frontal_quaternion_hand_computed():
    # Trace 0 -> w = 1/2; x = (m21 - m12)/2 = 1/2, y = (m02 - m20)/2 = 1/2, z = (m10 - m01)/2 = -1/2.
    np.testing.assert_allclose(
        cv.euler_to_quaternion(0.0, 0.0, 0.0), [0.5, 0.5, -0.5, 0.5], atol=1e-12
    )


def test_combined_pose_matches_hand_composition():
    # optical = diag(1, -1, -1) @ (Rz Ry Rx)^T @ [left | up | forward] columns.
    to_optical = np.diag([1.0, -1.0, -1.0])
    head_axes_in_model = np.column_stack([[0, 0, 1], [1, 0, 0], [0, 1, 0]]).astype(float)
    for yaw, pitch, roll in _random_angles(10, seed=11):
        label = (_rz(roll) @ _ry(yaw) @ _rx(pitch)).T
        expected = to_optical @ label @ head_axes_in_model
        np.testing.assert_allclose(
            cv.euler_to_optical_matrix(yaw, pitch, roll), expected, atol=1e-12
        )
        np.testing.assert_allclose(
            cv.euler_to_quaternion(yaw, pitch, roll), _quat_from_matrix(expected), atol=1e-12
        )


def _project(yaw, pitch, roll, point_model) -> np.ndarray:
    """Image (u, v) offsets of a model point: u = x, v = -y (rows grow downwards)."""
    x, y, _ = cv.euler_to_matrix(yaw, pitch, roll) @ np.asarray(point_model, dtype=float)
    return np.array([x, -y])


NOSE = (0.0, 0.0, 1.0)  # model z points toward the viewer
TOP = (0.0, 1.0, 0.0)  # model y points up


@pytest.mark.parametrize("angle", [5.0, 30.0, 60.0])
def test_image_signs_stated_in_docstring(angle):
    # Positive yaw turns the nose toward the image's left.
    u, v = _project(angle, 0.0, 0.0, NOSE)
    assert u < 0 and abs(v) < 1e-12
    # Positive pitch raises the nose (smaller image row).
    u, v = _project(0.0, angle, 0.0, NOSE)
    assert v < 0 and abs(u) < 1e-12
    # Positive roll turns the face clockwise: the top of the head moves right.
    u, v = _project(0.0, 0.0, angle, TOP)
    assert u > 0 and v < 0
    clockwise_angle = np.degrees(np.arctan2(u, -v))  # 0 = straight up, + = clockwise on screen
    assert clockwise_angle == pytest.approx(angle)
    # Negative angles mirror every sign.
    assert _project(-angle, 0.0, 0.0, NOSE)[0] > 0
    assert _project(0.0, -angle, 0.0, NOSE)[1] > 0
    assert _project(0.0, 0.0, -angle, TOP)[0] < 0


def test_optical_forward_axis_follows_the_nose():
    # The published forward (x) axis projects the same way as the nose in the image:
    # optical x right, y down, so (u, v) = (x, y) of the forward column.
    for yaw, pitch, roll in _random_angles(30, seed=5, limit=60.0):
        forward = cv.euler_to_optical_matrix(yaw, pitch, roll)[:, 0]
        nose = _project(yaw, pitch, roll, NOSE)
        np.testing.assert_allclose(forward[:2], nose, atol=1e-12)


def test_mirror_euler_matches_geometric_mirror():
    angles = _random_angles(300, seed=99, limit=80.0)
    mats = cv.euler_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2])
    mirrored = cv.mirror_euler(angles)
    np.testing.assert_allclose(mirrored[:, 1], angles[:, 1])
    np.testing.assert_allclose(mirrored[:, [0, 2]], -angles[:, [0, 2]])
    expected = cv.mirror_matrix(mats)
    got = cv.euler_to_matrix(mirrored[:, 0], mirrored[:, 1], mirrored[:, 2])
    np.testing.assert_allclose(got, expected, atol=1e-12)
    np.testing.assert_allclose(cv.mirror_euler(mirrored), angles)


def test_mirror_flips_projected_points_horizontally():
    # Mirroring the image maps every projected point (u, v) to (-u, v).
    rng = np.random.default_rng(21)
    points = rng.normal(size=(10, 3))
    for yaw, pitch, roll in _random_angles(20, seed=8, limit=80.0):
        myaw, mpitch, mroll = cv.mirror_euler([yaw, pitch, roll])
        for p in points:
            u, v = _project(yaw, pitch, roll, p * [-1, 1, 1])  # the mirrored head's point
            mu, mv = _project(myaw, mpitch, mroll, p)
            assert mu == pytest.approx(-u, abs=1e-12) and mv == pytest.approx(v, abs=1e-12)


def test_pose_para_round_trip_and_order():
    row = cv.euler_to_pose_para(30.0, -10.0, 5.0, translation=(1, 2, 3), scale=0.5)
    np.testing.assert_allclose(row[:3], np.radians([-10.0, 30.0, 5.0]))
    np.testing.assert_allclose(row[3:], [1, 2, 3, 0.5])
    np.testing.assert_allclose(cv.pose_para_to_euler(row), [30.0, -10.0, 5.0])
    with pytest.raises(ValueError, match="at least 3"):
        cv.pose_para_to_euler([0.1, 0.2])


def test_angle_names_and_version():
    assert cv.ANGLE_NAMES == ("yaw", "pitch", "roll")
    assert isinstance(cv.CONVENTION_VERSION, str) and cv.CONVENTION_VERSION


def test_conventions_picture_renders(repo_root, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "draw_conventions", repo_root / "docs/img/draw_conventions.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.draw(tmp_path / "conventions.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (repo_root / "docs/img/conventions.png").exists()


def test_rotate_in_image_plane_frontal_is_roll_shift():
    from lechpe_model.conventions import rotate_in_image_plane

    out = rotate_in_image_plane(np.array([0.0, 0.0, 10.0]), 25.0)
    np.testing.assert_allclose(out, [0.0, 0.0, 35.0], atol=1e-9)


def test_rotate_in_image_plane_turns_each_row_by_its_own_angle():
    """A batch with one angle per row equals the rows turned one by one (the runtime
    turns every tilted face back by its own roll in one call)."""
    from lechpe_model.conventions import rotate_in_image_plane

    poses = np.array([[50.0, -20.0, 5.0], [-70.0, 15.0, -10.0], [0.0, 0.0, 0.0]])
    thetas = np.array([30.0, -45.0, 12.0])
    batch = rotate_in_image_plane(poses, thetas)
    for pose, theta, row in zip(poses, thetas, batch, strict=True):
        np.testing.assert_allclose(row, rotate_in_image_plane(pose, theta), atol=1e-9)
    np.testing.assert_allclose(batch[2], [0.0, 0.0, 12.0], atol=1e-9)


def test_rotate_in_image_plane_matches_projected_points():
    """A turned head's projected landmarks, rotated in the image, equal the projection
    of the head posed with the returned angles (orthographic camera, y up)."""
    from lechpe_model.conventions import euler_to_matrix, rotate_in_image_plane

    rng = np.random.default_rng(3)
    points = rng.normal(size=(20, 3))
    for yaw, pitch, roll, theta in [(50, -20, 5, 30), (-70, 15, -10, -45), (20, 30, 0, 90)]:
        before = (euler_to_matrix(yaw, pitch, roll) @ points.T).T[:, :2]
        t = np.radians(theta)
        # Clockwise as seen with x right and y up.
        turn2d = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
        expected = before @ turn2d.T
        new = rotate_in_image_plane(np.array([yaw, pitch, roll], float), theta)
        after = (euler_to_matrix(*new) @ points.T).T[:, :2]
        np.testing.assert_allclose(after, expected, atol=1e-9)
        # and it is not the naive roll shift for a turned head
        assert not np.allclose(new, [yaw, pitch, roll + theta], atol=0.5)


def test_image_tilt_adds_the_image_turn_and_is_the_roll_only_when_frontal():
    from lechpe_model.conventions import euler_to_matrix, image_tilt, rotate_in_image_plane

    rng = np.random.default_rng(7)
    poses = rng.uniform([-85, -50, -50], [85, 50, 50], (200, 3))
    thetas = rng.uniform(-60, 60, 200)
    turned = image_tilt(rotate_in_image_plane(poses, thetas))
    wrapped = (turned - image_tilt(poses) - thetas + 180.0) % 360.0 - 180.0
    np.testing.assert_allclose(wrapped, 0.0, atol=1e-6)
    # turning by -tilt makes the projected up axis point straight up
    upright = rotate_in_image_plane(poses, -image_tilt(poses))
    up = euler_to_matrix(upright[:, 0], upright[:, 1], upright[:, 2])[:, :, 1]
    np.testing.assert_allclose(up[:, 0], 0.0, atol=1e-9)
    assert np.all(up[:, 1] > 0)
    # a frontal head: the roll; a head at yaw 90: no tilt whatever its roll
    assert image_tilt(np.array([0.0, 0.0, 23.0])) == pytest.approx(23.0)
    assert image_tilt(np.array([90.0, 10.0, 40.0])) == pytest.approx(0.0, abs=1e-9)
    # hand-computed: yaw 60, roll 20 -> up = (cos60 sin20, cos20, .) -> atan(0.5 tan 20)
    assert image_tilt(np.array([60.0, 0.0, 20.0])) == pytest.approx(
        np.degrees(np.arctan(0.5 * np.tan(np.radians(20.0))))
    )


def test_ray_relative_quaternion_matches_the_euler_round_trip():
    from lechpe_model.conventions import (
        euler_to_quaternion,
        ray_relative_to_quaternion,
        ray_to_camera_euler,
    )

    rng = np.random.default_rng(5)
    for _ in range(20):
        angles = rng.uniform([-80, -40, -40], [80, 40, 40])
        direction = np.array([*rng.uniform(-0.6, 0.6, 2), 1.0])
        expected = euler_to_quaternion(*ray_to_camera_euler(angles, direction))
        np.testing.assert_allclose(
            ray_relative_to_quaternion(angles, direction), expected, atol=1e-9
        )
