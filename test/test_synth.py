"""Synthetic head-pose renderer (training.synth): exact labels, signs, files, determinism.

Everything renders small images (96-224 px) so the file runs in seconds on 2 cores.
"""

from __future__ import annotations

import csv
import json
import math

import cv2
import numpy as np
import pytest
import scipy.io

from lechpe_model.conventions import (
    MODEL_TO_OPTICAL,
    euler_to_matrix,
    matrix_to_euler,
    pose_para_to_euler,
)
from training.synth import cli
from training.synth.contact_sheet import make_contact_sheet
from training.synth.dataset_writer import sample_mat, write_dataset, write_sample
from training.synth.mesh import IBUG68_VERTICES, NOSE_TIP, load_face_mesh
from training.synth.renderer import (
    Appearance,
    Camera,
    Fragments,
    build_head_model,
    composite,
    rasterize,
    render_head,
)
from training.synth.scene import (
    PoseDistribution,
    SceneConfig,
    render_sample,
    sample_rng,
    texture_base,
)
from training.synth.sequence import GT_COLUMNS, SequenceConfig, write_sequence

# ---------------------------------------------------------------- helpers


def _rotation_angle_deg(r1: np.ndarray, r2: np.ndarray) -> float:
    """Geodesic distance between two rotations, degrees."""
    cos = (np.trace(r1.T @ r2) - 1.0) / 2.0
    return math.degrees(math.acos(np.clip(cos, -1.0, 1.0)))


MARKER_RED, MARKER_GREEN, MARKER_BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _marker_appearance() -> Appearance:
    """Grey texture with coloured discs at the nose tip and both eye centres.

    Flat lighting (ambient 1, diffuse 0) keeps the marker colours exact, so the
    rendered *pixels* can be located independently of the projected labels.
    """
    mesh = load_face_mesh()
    tex = np.full((512, 512, 3), 128, np.uint8)
    xy = mesh.tex_xy

    def disc(vertices, colour):
        centre = xy[vertices].mean(axis=0)
        cv2.circle(tex, (round(centre[0]), round(centre[1])), 3, colour, -1)

    disc([NOSE_TIP], MARKER_RED)
    disc(IBUG68_VERTICES[36:42], MARKER_GREEN)  # image-left eye (person's right)
    disc(IBUG68_VERTICES[42:48], MARKER_BLUE)  # image-right eye (person's left)
    return Appearance(
        texture=tex, tex_xy=xy, light_dir=np.array([0, 0, 1.0]), ambient=1.0, diffuse=0.0
    )


def _render_markers(yaw, pitch, roll, size=224):
    camera = Camera.from_fov(size, size, 30.0)
    model = build_head_model(False)
    t = np.array([0.0, 0.0, camera.fx * model.face.width_cm / (0.5 * size)])
    result = render_head(model, _marker_appearance(), yaw, pitch, roll, t, camera)
    image = composite(result, np.zeros((size, size, 3), np.uint8), feather=0)
    return image, result


def _centroid(image: np.ndarray, colour) -> np.ndarray:
    diff = np.abs(image.astype(int) - np.array(colour)).sum(axis=2)
    ys, xs = np.nonzero(diff < 60)
    assert xs.size >= 3, f"marker {colour} not visible in the render"
    return np.array([xs.mean(), ys.mean()])


# ---------------------------------------------------------------- rasteriser


def test_rasterizer_coverage_matches_point_in_polygon():
    # A quad made of two CCW (model frame) triangles; image y points down, so the
    # screen order is clockwise. A pixel is covered iff its centre is inside the
    # quad (independent check: cv2.pointPolygonTest per pixel centre).
    uv = np.array([[20.3, 70.2], [80.6, 75.1], [75.4, 15.7], [25.2, 20.9]])
    tris = np.array([[0, 1, 2], [0, 2, 3]])
    frags = rasterize(uv, np.ones(4), tris, 100, 100)
    mine = np.zeros(100 * 100, bool)
    mine[frags.pixel] = True
    contour = uv.astype(np.float32).reshape(-1, 1, 2)
    ref = np.array(
        [
            cv2.pointPolygonTest(contour, (float(x), float(y)), False) >= 0
            for y in range(100)
            for x in range(100)
        ]
    )
    assert np.count_nonzero(mine != ref) == 0
    assert len(np.unique(frags.pixel)) == len(frags.pixel)  # one fragment per pixel
    np.testing.assert_allclose(frags.bary.sum(axis=1), 1.0, atol=1e-5)
    # Pixel count ~ polygon area (shoelace).
    x, y = uv[:, 0], uv[:, 1]
    area = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
    assert abs(mine.sum() - area) < 0.03 * area


def test_rasterizer_depth_test_and_back_face_culling():
    uv = np.array([[10, 60], [60, 60], [35, 10], [10, 60], [60, 60], [35, 10.0]])
    near_first = np.array([1.0, 1.0, 1.0, 2.0, 2.0, 2.0])
    tris = np.array([[3, 4, 5], [0, 1, 2]])  # far triangle listed first
    frags = rasterize(uv, near_first, tris, 80, 80)
    assert frags.pixel.size > 500
    assert np.all(frags.triangle == 1)  # the nearer triangle wins everywhere
    # Reversed winding (a back face) draws nothing.
    assert rasterize(uv, near_first, tris[:, ::-1], 80, 80).pixel.size == 0
    assert isinstance(rasterize(uv + 1000, near_first, tris, 80, 80), Fragments)


# ---------------------------------------------------------------- exact labels


@pytest.mark.parametrize(
    "angles", [(0.0, 0.0, 0.0), (30.0, -15.0, 10.0), (-55.0, 20.0, -20.0), (75.0, 5.0, 3.0)]
)
def test_solvepnp_recovers_the_label_from_written_landmarks(tmp_path, angles):
    """Render + write at a known pose; solvePnP on pt2d from the .mat recovers it."""
    config = SceneConfig(width=224, height=224)
    sample = render_sample(sample_rng(7, 0), config, angles=angles)
    write_sample(tmp_path, "s", sample)
    mat = scipy.io.loadmat(tmp_path / "s.mat")
    label = pose_para_to_euler(mat["Pose_Para"])
    np.testing.assert_allclose(label, angles, atol=1e-4)
    image_points = mat["pt2d"].T.astype(np.float64)
    # The image's face shape: canonical landmarks scaled by the stored shape_scale.
    assert np.all(np.abs(mat["shape_scale"] - 1) <= config.shape_jitter + 1e-9)
    object_points = load_face_mesh().landmark_points() * mat["shape_scale"].ravel()
    ok, rvec, tvec = cv2.solvePnP(
        object_points, image_points, mat["cam_K"], None, flags=cv2.SOLVEPNP_ITERATIVE
    )
    assert ok
    r_optical = cv2.Rodrigues(rvec)[0]  # model -> OpenCV camera (x right, y down, z forward)
    r_label = MODEL_TO_OPTICAL @ r_optical  # back into the 3DDFA camera frame
    recovered = matrix_to_euler(r_label)
    assert _rotation_angle_deg(r_label, euler_to_matrix(*label)) < 1.0
    np.testing.assert_allclose(recovered, label, atol=1.0)
    np.testing.assert_allclose(tvec.ravel(), mat["cam_t_cm"].ravel(), rtol=0.01, atol=0.2)


@pytest.mark.parametrize("angles", [(0.0, 0.0, 0.0), (40.0, 10.0, -10.0)])
def test_rendered_pixels_agree_with_the_projected_labels(angles):
    image, result = _render_markers(*angles)
    nose_px = _centroid(image, MARKER_RED)
    assert np.linalg.norm(nose_px - result.vertices_uv[NOSE_TIP]) < 1.5
    face = np.argwhere(result.face_mask)
    x1, y1, x2, y2 = result.face_box
    assert face[:, 1].min() >= x1 - 1 and face[:, 1].max() <= x2 + 1
    assert face[:, 0].min() >= y1 - 1 and face[:, 0].max() <= y2 + 1


# ---------------------------------------------------------------- signs (docs/CONVENTIONS.md)


def test_positive_yaw_turns_the_nose_to_the_image_left():
    front, _ = _render_markers(0, 0, 0)
    turned, _ = _render_markers(30, 0, 0)
    assert _centroid(turned, MARKER_RED)[0] < _centroid(front, MARKER_RED)[0] - 10
    back, _ = _render_markers(-30, 0, 0)
    assert _centroid(back, MARKER_RED)[0] > _centroid(front, MARKER_RED)[0] + 10


def test_positive_pitch_raises_the_nose():
    front, _ = _render_markers(0, 0, 0)
    up, _ = _render_markers(0, 25, 0)
    nose_shift = _centroid(up, MARKER_RED)[1] - _centroid(front, MARKER_RED)[1]
    eye_mid = lambda im: (_centroid(im, MARKER_GREEN) + _centroid(im, MARKER_BLUE)) / 2  # noqa: E731
    assert nose_shift < -5  # the nose moves up in the image
    # ... and toward the eye line: looking up shortens nose-to-eye distance less than
    # the face turns, the nose tip stays above its frontal place relative to the eyes.
    rel_front = _centroid(front, MARKER_RED)[1] - eye_mid(front)[1]
    rel_up = _centroid(up, MARKER_RED)[1] - eye_mid(up)[1]
    assert rel_up < rel_front


def test_positive_roll_turns_the_face_clockwise():
    for roll in (15.0, -20.0):
        image, _ = _render_markers(0, 0, roll)
        left, right = _centroid(image, MARKER_GREEN), _centroid(image, MARKER_BLUE)
        # Image y points down: a clockwise turn lowers the image-right eye.
        slope_deg = math.degrees(math.atan2(right[1] - left[1], right[0] - left[0]))
        assert np.sign(slope_deg) == np.sign(roll)
        assert abs(slope_deg - roll) < 2.0


# ---------------------------------------------------------------- textures


def test_mirrored_texture_changes_the_look_not_the_geometry():
    mesh = load_face_mesh()
    plain, mirrored = texture_base(False), texture_base(True)

    # Vertex i of the mirrored texture shows what its mirror vertex showed.
    def colours(base, index):
        xy = base.tex_xy[index].astype(np.float32)
        return cv2.remap(base.rgb, xy[:, None, 0], xy[:, None, 1], cv2.INTER_LINEAR)[:, 0]

    idx = np.arange(len(mesh.vertices))
    diff = np.abs(colours(mirrored, idx).astype(int) - colours(plain, mesh.mirror[idx]).astype(int))
    assert np.median(diff) <= 2
    camera = Camera.from_fov(128, 128, 30.0)
    model = build_head_model(True)
    t = np.array([1.0, -0.5, 60.0])
    renders = [
        render_head(
            model, Appearance(b.rgb, b.tex_xy, np.array([0.3, 0.3, 0.9])), 25, 5, -8, t, camera
        )
        for b in (plain, mirrored)
    ]
    np.testing.assert_array_equal(renders[0].face_mask, renders[1].face_mask)
    np.testing.assert_array_equal(renders[0].landmarks, renders[1].landmarks)
    assert np.abs(renders[0].rgb - renders[1].rgb).mean() > 1.0


def test_pose_distribution_default_spread_and_limit():
    rng = np.random.default_rng(0)
    draws = np.array([PoseDistribution().sample(rng) for _ in range(3000)])
    assert np.abs(draws).max() <= 99.0
    assert np.mean(np.abs(draws[:, 0]) > 60) > 0.15  # many profiles, like 300W-LP
    assert 8 < draws[:, 1].std() < 20 and 5 < draws[:, 2].std() < 15
    with pytest.raises(ValueError, match="unknown pose distribution"):
        PoseDistribution(kind="gaussian").sample(rng)


# ---------------------------------------------------------------- files and CLI


def test_dataset_layout_determinism_and_loader_round_trip(tmp_path):
    config = SceneConfig(width=96, height=96)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_dataset(a, 4, seed=11, config=config, progress=False)
    write_dataset(b, 4, seed=11, config=config, workers=2, progress=False)
    write_dataset(c, 4, seed=12, config=config, progress=False)
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:  # same seed -> same bytes (also across worker counts)
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "synth_000000.jpg").read_bytes() != (c / "synth_000000.jpg").read_bytes()

    rows = list(csv.DictReader(open(a / "index.csv", encoding="utf-8")))
    assert [r["name"] for r in rows] == [f"synth_{i:06d}" for i in range(4)]
    assert (a / "files.txt").read_text().split() == [r["name"] for r in rows]
    meta = json.loads((a / "synth.json").read_text())
    assert meta["seed"] == 11 and meta["count"] == 4
    for row in rows:
        mat = scipy.io.loadmat(a / f"{row['name']}.mat")
        assert mat["Pose_Para"].shape == (1, 7) and mat["pt2d"].shape == (2, 68)
        assert mat["roi"].shape == (1, 4)
        angles = pose_para_to_euler(mat["Pose_Para"])
        np.testing.assert_allclose(
            angles, [float(row[k]) for k in ("yaw", "pitch", "roll")], atol=1e-4
        )
        image = cv2.imread(str(a / f"{row['name']}.jpg"))
        assert image.shape == (96, 96, 3)

    w300lp = pytest.importorskip("training.datasets.w300lp")
    dataset = w300lp.load_300wlp(str(a))
    assert len(dataset) == 4
    by_key = {s.key: s for s in dataset.samples}
    for row in rows:
        sample = next(s for k, s in by_key.items() if row["name"] in k)
        np.testing.assert_allclose(
            sample.angles, [float(row[k]) for k in ("yaw", "pitch", "roll")], atol=1e-4
        )


def test_mat_keys_documented_values():
    config = SceneConfig(width=128, height=128)
    sample = render_sample(sample_rng(3, 1), config, angles=(10.0, -5.0, 2.0))
    mat = sample_mat(sample)
    pose = mat["Pose_Para"].ravel()
    np.testing.assert_allclose(pose[:3], np.radians([-5.0, 10.0, 2.0]), atol=1e-6)
    # scale = fx / Z (pixels per cm at the head origin's depth)
    assert pose[6] == pytest.approx(sample.camera.fx / sample.t_cm[2], rel=1e-5)
    np.testing.assert_allclose(mat["pt2d"].T, sample.landmarks, atol=1e-3)
    np.testing.assert_allclose(mat["roi"].ravel(), sample.box, atol=1e-3)


def test_sequence_is_smooth_and_self_describing(tmp_path):
    config = SequenceConfig(frames=6, width=160, height=120)
    gt_path = write_sequence(tmp_path, config, seed=4)
    rows = list(csv.DictReader(open(gt_path, encoding="utf-8")))
    assert tuple(rows[0].keys()) == GT_COLUMNS
    assert [int(r["frame"]) for r in rows] == list(range(6))
    angles = np.array([[float(r[k]) for k in ("yaw", "pitch", "roll")] for r in rows])
    assert np.abs(np.diff(angles, axis=0)).max() < 5.0  # smooth at 30 fps
    assert np.all(np.abs(angles) <= np.array(config.amplitude) + 1e-6)
    meta = json.loads((tmp_path / "sequence.json").read_text())
    for key in ("fps", "width", "height", "fx", "fy", "cx", "cy", "face_width_m", "frames"):
        assert key in meta, key
    assert meta["face_width_m"] == pytest.approx(load_face_mesh().width_cm / 100)
    for r in rows:
        frame = cv2.imread(str(tmp_path / f"frame_{int(r['frame']):06d}.jpg"))
        assert frame.shape == (120, 160, 3)
        # Box width agrees with the mesh width seen at the stored distance (pinhole).
        width_px = float(r["x2"]) - float(r["x1"])
        expected = meta["fx"] * meta["face_width_m"] / float(r["z_m"])
        assert 0.3 * expected < width_px < 1.3 * expected


def test_cli_images_contact_sheet_and_errors(tmp_path, capsys):
    out = tmp_path / "imgs"
    assert cli.main(["images", str(out), "--count", "3", "--seed", "1", "--size", "64"]) == 0
    assert len(list(out.glob("*.jpg"))) == 3 and len(list(out.glob("*.mat"))) == 3
    sheet = tmp_path / "sheet.png"
    assert cli.main(["contact-sheet", str(out), str(sheet), "--count", "3"]) == 0
    png = cv2.imread(str(sheet))
    assert png is not None and png.shape[0] > 50 and png.shape[1] > 100
    with pytest.raises(FileNotFoundError, match="no labelled images"):
        make_contact_sheet(tmp_path / "nothing", tmp_path / "x.png")
    with pytest.raises(SystemExit):
        cli.main(["images", str(out), "--size", "12x"])
    assert "size must be" in capsys.readouterr().err
    assert cli.main(["images", str(out), "--count", "0"]) == 2


def test_cli_occluded_replica_uses_the_occlusion_generator(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "occ"
    args = ["images", str(src), "--count", "2", "--size", "64", "--occluded-replica", str(dst)]
    try:
        from training.occlusion import write_occluded_replica  # noqa: F401
    except ImportError:
        with pytest.raises(SystemExit, match="write_occluded_replica"):
            cli.main(args)
        return
    assert cli.main(args) == 0
    assert len(list(dst.rglob("*.jpg"))) == 2 and len(list(dst.rglob("*.mat"))) == 2
    for mat_path in src.glob("*.mat"):  # the identity travels with the replica
        original = scipy.io.loadmat(mat_path)["identity"]
        replica = scipy.io.loadmat(next(dst.rglob(mat_path.name)))["identity"]
        assert replica.shape == (1, 1) and replica[0, 0] == original[0, 0] >= 0


def test_shape_scale_changes_the_face_not_the_label():
    camera = Camera.from_fov(160, 160, 30.0)
    model = build_head_model(False)
    base = texture_base(False)
    app = Appearance(base.rgb, base.tex_xy, np.array([0.0, 0.0, 1.0]))
    t = np.array([0.0, 0.0, 70.0])
    plain = render_head(model, app, 0, 0, 0, t, camera)
    wide = render_head(model, app, 0, 0, 0, t, camera, shape_scale=(1.1, 1.0, 1.0))
    ratio = (wide.face_box[2] - wide.face_box[0]) / (plain.face_box[2] - plain.face_box[0])
    assert ratio == pytest.approx(1.1, abs=0.01)
    assert wide.face_box[3] - wide.face_box[1] == pytest.approx(
        plain.face_box[3] - plain.face_box[1], rel=0.01
    )
    with pytest.raises(ValueError, match="shape_scale must be positive"):
        render_head(model, app, 0, 0, 0, t, camera, shape_scale=(1.0, 0.0, 1.0))


def test_unrenderable_items_are_skipped_counted_and_named(tmp_path, capsys):
    # Faces wider than the image put the head behind the camera for some draws.
    config = SceneConfig(width=64, height=64, face_fraction=(0.4, 6.0))
    write_dataset(tmp_path, 8, seed=5, config=config, progress=False)
    meta = json.loads((tmp_path / "synth.json").read_text())
    rows = list(csv.DictReader(open(tmp_path / "index.csv", encoding="utf-8")))
    assert 0 < len(meta["skipped"]) < 8
    assert meta["count"] == len(rows) == 8 - len(meta["skipped"])
    assert all("behind the camera" in s for s in meta["skipped"])
    assert sorted(p.stem for p in tmp_path.glob("*.jpg")) == [r["name"] for r in rows]
    assert f"skipped {len(meta['skipped'])} of 8 images" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="no image could be rendered"):
        write_dataset(tmp_path / "none", 2, config=SceneConfig(face_fraction=(40.0, 50.0)))


# ---------------------------------------------------------------- identities


def _identity_with(seed: int, key: str, predicate) -> int:
    """The first identity id whose parameter ``key`` satisfies ``predicate``."""
    from training.synth.identity import identity_params

    return next(k for k in range(500) if predicate(identity_params(seed, k)[key]))


def test_identity_is_a_pure_function_of_seed_and_id():
    from training.synth import identity as ident

    a = ident.build_identity(0, 5)
    ident.build_identity.cache_clear()
    b = ident.build_identity(0, 5)
    assert a is not b
    assert a.params == b.params == ident.identity_params(0, 5)
    np.testing.assert_array_equal(a.face_vertices, b.face_vertices)
    np.testing.assert_array_equal(a.texture, b.texture)
    assert ident.identity_params(1, 5) != a.params  # another identity seed, another person
    c = ident.build_identity(0, 6)
    # Different identities differ in shape (mm-scale displacements) and in appearance.
    shape_diff = np.linalg.norm(a.face_vertices - c.face_vertices, axis=1)
    assert shape_diff.max() > 0.1 and shape_diff.mean() > 0.02
    assert not np.array_equal(a.texture, c.texture)
    # Deformations stay bounded (plausible faces): a few millimetres, at most ~1.5 cm.
    canonical = load_face_mesh().vertices
    for k in range(30):
        d = np.linalg.norm(ident.build_identity(0, k).face_vertices - canonical, axis=1)
        assert d.max() < 1.6
    with pytest.raises(ValueError, match="identity id must be >= 0"):
        ident.identity_params(0, -1)
    # The texture option changes only the base texture.
    kinds = {ident.identity_params(0, k, "procedural")["texture"] for k in range(20)}
    assert kinds == {"procedural"}
    photo = [ident.identity_params(0, k, "photo") for k in range(20)]
    assert {p["texture"] for p in photo} == {"astronaut", "astronaut_mirrored"}
    assert all(
        {**p, "texture": None} == {**ident.identity_params(0, k), "texture": None}
        for k, p in enumerate(photo)
    )
    with pytest.raises(ValueError, match="texture must be one of"):
        ident.identity_params(0, 1, "cartoon")


def test_skin_tones_span_light_to_dark_and_follow_the_parameter():
    from scipy.stats import spearmanr

    from training.synth.identity import build_identity

    tones, lightness = [], []
    for k in range(40):
        ident = build_identity(0, k)
        skin = np.asarray(ident.skin_rgb, np.float32)[None, None] / 255.0
        lightness.append(cv2.cvtColor(skin, cv2.COLOR_RGB2LAB)[0, 0, 0])
        tones.append(ident.params["skin_tone"])
    assert max(lightness) - min(lightness) > 40  # CIELAB L from light to dark skin
    assert spearmanr(tones, lightness)[0] < -0.9


def test_procedural_texture_is_not_the_photo():
    from training.synth.identity import build_identity

    k = _identity_with(0, "texture", lambda t: t == "procedural")
    tex = build_identity(0, k).texture
    photo = texture_base(False).rgb
    assert tex.shape == photo.shape
    g1 = cv2.cvtColor(tex, cv2.COLOR_RGB2GRAY).astype(float)
    g2 = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY).astype(float)
    # High-pass detail of the photo is absent from the procedural texture.
    hp = lambda g: g - cv2.GaussianBlur(g, (0, 0), 3)  # noqa: E731
    assert np.corrcoef(hp(g1).ravel(), hp(g2).ravel())[0, 1] < 0.5


@pytest.mark.parametrize("angles", [(0.0, 0.0, 0.0), (-50.0, 15.0, 12.0), (70.0, -10.0, -5.0)])
def test_solvepnp_recovers_the_label_for_identities_with_expressions(tmp_path, angles):
    config = SceneConfig(
        width=224, height=224, identities=(0, 50), expression_prob=1.0, label_frame="camera"
    )
    sample = render_sample(sample_rng(3, 1), config, angles=angles, identity=7)
    assert sample.identity == 7 and sample.info["expression"] != "neutral"
    write_sample(tmp_path, "s", sample)
    mat = scipy.io.loadmat(tmp_path / "s.mat")
    assert mat["identity"].shape == (1, 1) and int(mat["identity"][0, 0]) == 7
    object_points = mat["pt3d_model"].T
    canonical = load_face_mesh().landmark_points() * mat["shape_scale"].ravel()
    assert np.abs(object_points - canonical).max() > 0.2  # the landmarks moved with the mesh
    ok, rvec, tvec = cv2.solvePnP(
        object_points, mat["pt2d"].T.astype(np.float64), mat["cam_K"], None
    )
    assert ok
    r_label = MODEL_TO_OPTICAL @ cv2.Rodrigues(rvec)[0]
    assert _rotation_angle_deg(r_label, euler_to_matrix(*angles)) < 0.01
    np.testing.assert_allclose(tvec.ravel(), mat["cam_t_cm"].ravel(), atol=0.01)


def test_identity_dataset_round_trip_and_determinism(tmp_path):
    config = SceneConfig(width=96, height=96, identities=(10, 13))
    a, b = tmp_path / "a", tmp_path / "b"
    write_dataset(a, 7, seed=2, config=config, progress=False)
    write_dataset(b, 7, seed=2, config=config, workers=2, progress=False)
    for path in sorted(a.iterdir()):
        assert path.read_bytes() == (b / path.name).read_bytes(), path.name
    rows = list(csv.DictReader(open(a / "index.csv", encoding="utf-8")))
    assert [int(r["identity"]) for r in rows] == [10 + i % 3 for i in range(7)]
    for row in rows:
        mat = scipy.io.loadmat(a / f"{row['name']}.mat")
        assert int(mat["identity"][0, 0]) == int(row["identity"])
    meta = json.loads((a / "synth.json").read_text())
    assert meta["identities"]["range"] == [10, 13] and meta["identities"]["identity_seed"] == 0
    params = json.loads((a / "identities.json").read_text())
    from training.synth.identity import identity_params

    assert params == {str(k): identity_params(0, k) for k in (10, 11, 12)}
    # The same identity in two images: same texture choice and shape in the manifest.
    same = [r for r in rows if r["identity"] == "10"]
    assert len(same) == 3 and len({r["texture"] for r in same}) == 1
    # Legacy mode keeps identity -1.
    legacy = scipy.io.loadmat(
        write_sample(tmp_path, "legacy", render_sample(sample_rng(1, 1), SceneConfig(96, 96)))
        and tmp_path / "legacy.mat"
    )
    assert int(legacy["identity"][0, 0]) == -1


def test_cli_identity_ranges_are_disjoint(tmp_path, capsys):
    train, test = tmp_path / "train", tmp_path / "test"
    common = ["--count", "6", "--size", "64", "--seed", "0"]
    assert cli.main(["images", str(train), "--identity-range", "0:4", *common]) == 0
    assert cli.main(["images", str(test), "--identity-range", "4:6", *common]) == 0

    def ids(folder):
        return {int(r["identity"]) for r in csv.DictReader(open(folder / "index.csv"))}

    assert ids(train) == {0, 1, 2, 3} and ids(test) == {4, 5}
    assert cli.main(["images", str(tmp_path / "n"), "--identities", "3", *common]) == 0
    assert ids(tmp_path / "n") == {0, 1, 2}
    assert cli.main(["images", str(tmp_path / "l"), "--identities", "0", *common]) == 0
    assert ids(tmp_path / "l") == {-1}
    with pytest.raises(SystemExit):
        cli.main(["images", str(train), "--identity-range", "5:5"])
    assert "identity range must be START:STOP" in capsys.readouterr().err
    with pytest.raises(ValueError, match="identity range must satisfy"):
        SceneConfig(identities=(3, 1))


def test_expressions_move_the_landmark_vertices():
    from training.synth.identity import build_identity, expression_displacement

    face = build_identity(0, 3).face_vertices
    lm = IBUG68_VERTICES

    def moved(**expr):
        base = {"eyes_closed": 0.0, "mouth_open_cm": 0.0, "smile": 0.0} | expr
        return face + expression_displacement(face, **base)

    closed = moved(eyes_closed=1.0)
    gap = lambda v: np.linalg.norm(v[lm[37]] - v[lm[41]])  # noqa: E731  upper lid - lower lid
    assert gap(closed) < 0.2 * gap(face)
    opened = moved(mouth_open_cm=1.2)
    lips = lambda v: v[lm[62], 1] - v[lm[66], 1]  # noqa: E731  inner upper - inner lower
    assert lips(opened) - lips(face) == pytest.approx(1.2, abs=0.25)
    assert abs(opened[lm[27], 1] - face[lm[27], 1]) < 1e-6  # the upper face stays
    smiling = moved(smile=1.0)
    assert smiling[lm[48], 1] > face[lm[48], 1] + 0.2  # mouth corners rise
    assert smiling[lm[54], 1] > face[lm[54], 1] + 0.2
    assert smiling[lm[54], 0] - smiling[lm[48], 0] > face[lm[54], 0] - face[lm[48], 0]


def test_glasses_are_drawn_in_front_and_hidden_behind_the_head():
    from training.synth.identity import build_identity
    from training.synth.renderer import RenderResult
    from training.synth.scene import draw_glasses

    k = _identity_with(0, "glasses", lambda g: g == "thin")
    ident = build_identity(0, k)
    camera = Camera.from_fov(128, 128, 30.0)
    rot = MODEL_TO_OPTICAL @ euler_to_matrix(0, 0, 0)

    def render(depth):
        return RenderResult(
            rgb=None, alpha=None, face_mask=None, landmarks=None, face_box=None,
            vertices_uv=None, depth=np.full((128, 128), depth, np.float32),
            rotation=rot, t=np.array([0.0, 0.0, 60.0]),
        )  # fmt: skip

    image = np.zeros((128, 128, 3), np.uint8)
    drawn = draw_glasses(image, render(np.inf), ident.params, ident.face_vertices, camera)
    assert np.count_nonzero(drawn.any(axis=2)) > 100
    # A surface nearer than the glasses everywhere hides all of them.
    hidden = draw_glasses(image, render(40.0), ident.params, ident.face_vertices, camera)
    assert np.count_nonzero(hidden) == 0


# ---------------------------------------------------------------- robot-camera variation

_NO_EFFECTS = dict(
    defocus_prob=0.0, motion_blur_prob=0.0, low_res_prob=0.0, grey_prob=0.0, ir_prob=0.0,
    low_jpeg_prob=0.0, clutter_prob=0.0, second_head_prob=0.0, noise_std=(0.0, 0.0),
    accessories=False, expression_prob=0.0,
)  # fmt: skip


def test_off_axis_head_is_a_rotated_camera_view_of_the_ray_relative_pose():
    """An off-axis head at label A and an on-axis head at the ray-relative angles
    differ by a pure camera rotation: their landmarks are related by a homography."""
    from training.synth.scene import ray_relative_angles, robot_camera

    config = SceneConfig(width=224, height=224, focal_px=(300.0, 300.0), off_centre=0.9)
    camera, t, info = robot_camera(np.random.default_rng(4), config, face_width_cm=15.5)
    assert info["off_axis_deg"] > 15  # a strongly off-axis head
    np.testing.assert_allclose(t / t[2], [t[0] / t[2], t[1] / t[2], 1.0])
    # The head origin projects near the crop centre (within the centre jitter).
    u = camera.fx * t[0] / t[2] + camera.cx
    assert abs(u - 111.5) <= config.center_jitter * 224 + 1e-6
    model = build_head_model(False)
    app = _marker_appearance()
    angles = (20.0, -10.0, 5.0)
    off = render_head(model, app, *angles, t, camera)
    ray = ray_relative_angles(np.array(angles), t)
    on_t = np.array([0.0, 0.0, np.linalg.norm(t)])
    centred = Camera(camera.fx, camera.fy, 111.5, 111.5, 224, 224)
    on = render_head(model, app, *ray, on_t, centred)
    naive = render_head(model, app, *angles, on_t, centred)
    src = off.vertices_uv.astype(np.float64)

    def homography_residual(dst):
        h, _ = cv2.findHomography(src, dst.astype(np.float64), 0)
        mapped = cv2.perspectiveTransform(src[None], h)[0]
        return np.abs(mapped - dst).max()

    assert homography_residual(on.vertices_uv) < 1e-3
    assert homography_residual(naive.vertices_uv) > 0.5
    assert np.abs(ray - np.array(angles)).max() > 5  # off-axis: the crop shows another pose


def test_shorter_distance_means_stronger_perspective():
    from training.synth.scene import robot_camera

    def layout(distance):
        config = SceneConfig(distance_cm=(distance, distance), off_centre=0.0, center_jitter=0.0)
        camera, t, _ = robot_camera(np.random.default_rng(0), config, 15.5)
        result = render_head(build_head_model(False), _marker_appearance(), 30, 0, 0, t, camera)
        return result.landmarks

    far, mid, near = layout(2000.0), layout(250.0), layout(40.0)

    # Residual after the best affine map onto the (nearly orthographic) far layout.
    def affine_residual(points):
        a, *_ = np.linalg.lstsq(np.c_[points, np.ones(68)], far, rcond=None)
        return np.abs(np.c_[points, np.ones(68)] @ a - far).max()

    assert affine_residual(near) > 3 * affine_residual(mid) > 0


def test_coloured_lights_specular_and_shadows():
    from training.synth.renderer import shadow_visibility

    model = build_head_model(False)
    camera = Camera.from_fov(128, 128, 30.0)
    white = np.full((512, 512, 3), 200, np.uint8)
    xy = load_face_mesh().tex_xy
    t = np.array([0.0, 0.0, 60.0])
    front = np.array([0.0, 0.0, 1.0])

    def face_rgb(**light):
        app = Appearance(white, xy, front, **light)
        result = render_head(model, app, 0, 0, 0, t, camera)
        return result.rgb[result.face_mask]

    red = face_rgb(lights=((front, (1.0, 0.0, 0.0)),), ambient_rgb=(0.0, 0.0, 0.0))
    assert red[:, 0].mean() > 100 and red[:, 1:].max() == 0
    two = face_rgb(lights=((front, (1.0, 0, 0)), (front, (0, 0, 1.0))), ambient_rgb=(0, 0, 0))
    assert two[:, 2].mean() > 100 and two[:, 1].max() == 0
    matte = face_rgb(lights=((front, (0.6, 0.6, 0.6)),), ambient_rgb=(0.2, 0.2, 0.2))
    shiny = face_rgb(lights=((front, (0.6, 0.6, 0.6)),), ambient_rgb=(0.2, 0.2, 0.2), specular=0.5)
    assert shiny.max() > matte.max() + 30 and np.all(shiny >= matte - 1e-3)
    # Grazing light from the person's right: the nose shades the other cheek.
    side = np.array([-0.95, 0.0, 0.31])
    lit = face_rgb(lights=((side, (1.0, 1.0, 1.0)),), ambient_rgb=(0.1, 0.1, 0.1))
    shadowed = face_rgb(
        lights=((side, (1.0, 1.0, 1.0)),), ambient_rgb=(0.1, 0.1, 0.1), shadows=True
    )
    assert np.all(shadowed <= lit + 1e-3) and (lit - shadowed).max() > 50
    # The shadow map itself: a square in front of another along the light.
    quad = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0.0]])
    points = np.vstack([quad + [0, 0, 10], quad * 3 + [0, 0, 20]])  # optical frame, z forward
    tris = np.array([[0, 2, 1], [0, 3, 2], [4, 6, 5], [4, 7, 6]])
    vis = shadow_visibility(points, tris, np.array([0.0, 0.0, -1.0]), resolution=64)
    assert vis[:4].tolist() == [1, 1, 1, 1]  # the near square is lit
    assert vis[4:].tolist() == [1, 1, 1, 1]  # far corners (x 3) are outside its shadow
    inner = np.vstack([points, [[0.5, 0.5, 20.0]]])
    tris2 = np.vstack([tris, [[4, 8, 5]]])
    assert shadow_visibility(inner, tris2, np.array([0.0, 0.0, -1.0]), 64)[8] == 0


def test_degradations_each_have_their_effect():
    from training.synth import degrade

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    sharp = lambda im: cv2.Laplacian(im.astype(np.float64), cv2.CV_64F).var()  # noqa: E731
    for blurred in (
        degrade.defocus(image, 1.5),
        degrade.motion_blur(image, 7, 30),
        degrade.low_resolution(image, 3.0),
    ):
        assert blurred.shape == image.shape and sharp(blurred) < 0.3 * sharp(image)
    # Horizontal motion blur smears a vertical line sideways only.
    line = np.zeros((41, 41, 3), np.uint8)
    line[:, 20] = 255
    smeared = degrade.motion_blur(line, 9, 0)
    assert np.count_nonzero(smeared[20, :, 0]) >= 7
    np.testing.assert_array_equal(smeared[5, :, 0], smeared[30, :, 0])
    for mono in (degrade.to_grey(image), degrade.to_infrared(image, rng)):
        assert np.array_equal(mono[..., 0], mono[..., 1]) and np.array_equal(
            mono[..., 1], mono[..., 2]
        )
    noisy = degrade.sensor_noise(degrade.to_grey(image), 5.0, rng)
    assert np.array_equal(noisy[..., 0], noisy[..., 2]) and not np.array_equal(
        noisy, degrade.to_grey(image)
    )
    assert not np.array_equal(degrade.add_clutter(image, rng), image)


@pytest.mark.parametrize("mode", ["grey", "ir"])
def test_grey_and_infrared_samples_have_equal_channels(mode):
    config = SceneConfig(
        width=96, height=96, identities=(0, 5), **(_NO_EFFECTS | {f"{mode}_prob": 1.0})
    )
    sample = render_sample(sample_rng(0, 3), config)
    assert sample.info["effects"] == mode
    img = sample.image.astype(int)
    assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2])


def test_second_head_is_behind_the_main_face():
    background = np.full((128, 128, 3), 128, np.uint8)
    base = dict(width=128, height=128, identities=(0, 20), **_NO_EFFECTS)
    alone = render_sample(sample_rng(1, 2), SceneConfig(**base), background=background)
    crowd = render_sample(
        sample_rng(1, 2), SceneConfig(**(base | {"second_head_prob": 1.0})), background=background
    )
    assert crowd.info["second_head"] >= 0 and crowd.info["second_head"] != crowd.identity
    np.testing.assert_array_equal(alone.landmarks, crowd.landmarks)
    diff = np.abs(alone.image.astype(int) - crowd.image.astype(int)).max(axis=2) > 0
    assert diff.mean() > 0.02  # another person is in view
    x1, y1, x2, y2 = np.round(alone.box).astype(int)
    assert not diff[y1 + 3 : y2 - 3, x1 + 3 : x2 - 3].any()  # ... but not over the face


def test_cli_variation_options(tmp_path):
    common = ["--count", "3", "--size", "64", "--identities", "3"]
    assert cli.main(["images", str(tmp_path / "g"), "--grey-prob", "1", *common]) == 0
    rows = list(csv.DictReader(open(tmp_path / "g" / "index.csv")))
    assert all("grey" in r["effects"].split("+") for r in rows)
    assert cli.main(["images", str(tmp_path / "p"), "--no-variation", *common]) == 0
    for row in csv.DictReader(open(tmp_path / "p" / "index.csv")):
        mat = scipy.io.loadmat(tmp_path / "p" / f"{row['name']}.mat")
        np.testing.assert_allclose(mat["cam_K"][:2, 2], [31.5, 31.5])  # centred, 30 deg FOV
        assert row["effects"] == "none" and float(row["off_axis_deg"]) < 4.0
        np.testing.assert_allclose(mat["angles_ray_deg"], mat["angles_deg"], atol=5)
    assert cli.main(["images", str(tmp_path / "f"), "--focal-range", "1500:1500", *common]) == 0
    for row in csv.DictReader(open(tmp_path / "f" / "index.csv")):
        assert float(row["focal_px"]) == pytest.approx(1500, abs=0.1)
        assert float(row["off_axis_deg"]) <= math.degrees(math.atan(0.9 * 320 * 1.25 / 1500))


def test_label_frame_ray_writes_the_ray_relative_pose(tmp_path):
    from training.synth.scene import camera_angles_from_ray, ray_relative_angles

    config = SceneConfig(
        width=128, height=128, identities=(0, 4), focal_px=(300.0, 300.0), label_frame="ray"
    )
    # The given pose is the label (what the crop shows); the render pose is derived.
    sample = render_sample(sample_rng(0, 1), config, angles=(10.0, 5.0, 0.0), identity=1)
    write_sample(tmp_path, "s", sample)
    mat = scipy.io.loadmat(tmp_path / "s.mat")
    assert sample.info["off_axis_deg"] > 5
    camera_angles = camera_angles_from_ray(np.array([10.0, 5.0, 0.0]), sample.t_cm)
    assert np.abs(camera_angles - [10, 5, 0]).max() > 3
    np.testing.assert_allclose(sample.angles, camera_angles, atol=1e-9)
    np.testing.assert_allclose(pose_para_to_euler(mat["Pose_Para"]), [10, 5, 0], atol=1e-4)
    np.testing.assert_allclose(mat["angles_ray_deg"].ravel(), [10, 5, 0], atol=1e-9)
    np.testing.assert_allclose(mat["angles_camera_deg"].ravel(), camera_angles)
    # solvePnP on the pixels returns the camera-frame rotation.
    ok, rvec, _ = cv2.solvePnP(mat["pt3d_model"].T, mat["pt2d"].T.astype(float), mat["cam_K"], None)
    r_label = MODEL_TO_OPTICAL @ cv2.Rodrigues(rvec)[0]
    assert _rotation_angle_deg(r_label, euler_to_matrix(*camera_angles)) < 0.01
    # Past 90 degrees of yaw the continuous Euler triple is kept (no pitch/roll flip).
    t = np.array([-30.0, 0.0, 60.0])
    ray = ray_relative_angles(np.array([80.0, 3.0, 2.0]), t)
    assert abs(ray[1]) < 20 and abs(ray[2]) < 20 and abs(ray[0]) > 90
    np.testing.assert_allclose(camera_angles_from_ray(ray, t), [80.0, 3.0, 2.0], atol=1e-9)
    with pytest.raises(ValueError, match="label_frame must be"):
        SceneConfig(label_frame="crop")
    # auto: ray for the robot camera, camera frame for the fixed one and for legacy.
    assert SceneConfig(identities=(0, 2)).resolved_label_frame == "ray"
    assert SceneConfig(identities=(0, 2), camera_model="fixed").resolved_label_frame == "camera"
    assert SceneConfig().resolved_label_frame == "camera"


def test_ears_widen_the_frontal_silhouette_and_keep_the_labels():
    from training.synth.identity import build_identity

    camera = Camera.from_fov(128, 128, 30.0)
    base = texture_base(False)
    app = Appearance(base.rgb, base.tex_xy, np.array([0.0, 0.0, 1.0]))
    t = np.array([0.0, 0.0, 70.0])
    plain = render_head(build_head_model(True), app, 0, 0, 0, t, camera)
    eared_model = build_head_model(True, ears=True)
    eared = render_head(eared_model, app, 0, 0, 0, t, camera)
    width = lambda r: np.ptp(np.nonzero(r.alpha.any(axis=0))[0])  # noqa: E731
    assert width(eared) >= width(plain) + 2
    np.testing.assert_array_equal(plain.landmarks, eared.landmarks)
    n_extra = len(eared_model.vertices) - eared_model.n_face_vertices
    assert eared_model.n_ear_vertices > 0
    assert build_identity(0, 1).head_rgb.shape == (n_extra, 3)


def test_same_identity_same_shape_across_samples():
    config = SceneConfig(width=96, height=96, identities=(0, 10), expression_prob=0.0)
    a = render_sample(sample_rng(0, 1), config, identity=3)
    b = render_sample(sample_rng(9, 9), config, identity=3)
    c = render_sample(sample_rng(0, 1), config, identity=4)
    assert not np.allclose(a.angles, b.angles)  # different images ...
    np.testing.assert_array_equal(a.landmarks_3d, b.landmarks_3d)  # ... same person
    np.testing.assert_array_equal(a.shape_scale, b.shape_scale)
    assert a.info["texture"] == b.info["texture"] and a.info["skin_tone"] == b.info["skin_tone"]
    assert np.abs(a.landmarks_3d - c.landmarks_3d).max() > 0.1  # another person
