"""Dataset loaders on fixtures written in each real format."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import scipy.io
from training_fixtures import write_300wlp

from lechpe_model.conventions import euler_to_matrix, euler_to_pose_para
from training.datasets import REASON_OUT_OF_RANGE, detect_format, load_dataset, load_image
from training.datasets.biwi import HEAD_SIZE_MM, biwi_matrix_to_euler
from training.torch_data import FaceCropDataset

F = np.diag([-1.0, 1.0, 1.0])


def _peer_biwi_angles(r_file: np.ndarray) -> np.ndarray:
    """The conversion of peer code (Hopenet/FSA-Net BIWI loaders), written out independently."""
    m = r_file.T
    roll = -np.degrees(np.arctan2(m[1, 0], m[0, 0]))
    yaw = -np.degrees(np.arctan2(-m[2, 0], np.sqrt(m[2, 1] ** 2 + m[2, 2] ** 2)))
    pitch = np.degrees(np.arctan2(m[2, 1], m[2, 2]))
    return np.array([yaw, pitch, roll])


# --------------------------------------------------------------------------- 300W-LP


def test_300wlp_angles_boxes_and_format(tmp_path):
    angles = np.array([[10.0, -20.0, 5.0], [-45.0, 30.0, -12.0], [80.0, 2.0, 0.5]])
    write_300wlp(str(tmp_path), 3, seed=0, size=64, angles=angles)
    assert detect_format(str(tmp_path)) == "300wlp"
    ds = load_dataset(str(tmp_path))
    assert len(ds) == 3 and ds.report.count == 0
    for sample, expected in zip(ds.samples, angles, strict=True):
        np.testing.assert_allclose(sample.angles, expected, atol=1e-9)
        mat = scipy.io.loadmat(os.path.splitext(sample.image_path)[0] + ".mat")
        pts = mat["pt2d"]
        np.testing.assert_allclose(
            sample.box, [pts[0].min(), pts[1].min(), pts[0].max(), pts[1].max()], atol=1e-4
        )
        assert load_image(sample).shape == (64, 64, 3)


def test_300wlp_excludes_out_of_range_and_counts(tmp_path):
    angles = np.array([[10.0, 0.0, 0.0], [120.0, 0.0, 0.0], [0.0, -99.5, 0.0], [0.0, 0.0, 99.0]])
    write_300wlp(str(tmp_path), 4, seed=0, size=48, angles=angles)
    ds = load_dataset(str(tmp_path))
    assert len(ds) == 2  # |angle| == 99 is kept, > 99 excluded
    assert ds.report.counts()[REASON_OUT_OF_RANGE] == 2
    assert {k for k, _ in ds.report.items} == {"img_0001.jpg", "img_0002.jpg"}


def test_300wlp_bad_items_are_skipped_with_path_and_reason(tmp_path):
    write_300wlp(str(tmp_path), 6, seed=1, size=48)
    os.remove(tmp_path / "img_0000.mat")  # missing annotation
    (tmp_path / "img_0001.mat").write_bytes(b"not a mat file")  # unreadable
    scipy.io.savemat(tmp_path / "img_0002.mat", {"pt2d": np.zeros((2, 68))})  # no Pose_Para
    scipy.io.savemat(
        tmp_path / "img_0003.mat",
        {"Pose_Para": euler_to_pose_para(1, 2, 3).reshape(1, 7), "pt2d": np.zeros((5, 5))},
    )
    (tmp_path / "img_0004.jpg").write_bytes(b"garbage")  # unreadable image: found when decoded
    ds = load_dataset(str(tmp_path))
    reasons = dict(ds.report.items)
    assert reasons[str(tmp_path / "img_0000.jpg")].startswith("missing annotation")
    assert "unreadable .mat" in reasons[str(tmp_path / "img_0001.mat")]
    assert "Pose_Para" in reasons[str(tmp_path / "img_0002.mat")]
    assert "pt2d has shape (5, 5)" in reasons[str(tmp_path / "img_0003.mat")]
    assert ds.report.count == 4 and len(ds) == 2
    items = FaceCropDataset(ds.samples, input_size=32)
    got = [items[i] for i in range(len(items))]
    bad = [g for g in got if not g["valid"]]
    assert len(bad) == 1 and "img_0004.jpg" in bad[0]["error"] and "unreadable" in bad[0]["error"]
    assert got[[g["valid"] for g in got].index(True)]["image"].shape == (3, 32, 32)


# --------------------------------------------------------------------------- BIWI


@pytest.mark.parametrize(
    "ypr", [(30.0, 0.0, 0.0), (0.0, 25.0, 0.0), (0.0, 0.0, -15.0), (-50.0, 20.0, 10.0)]
)
def test_biwi_matrix_conversion_matches_peer_convention(ypr):
    label = euler_to_matrix(*ypr)  # our convention
    r_file = F @ label @ F  # what BIWI stores for that pose (the documented assumption)
    np.testing.assert_allclose(biwi_matrix_to_euler(r_file), ypr, atol=1e-9)
    np.testing.assert_allclose(_peer_biwi_angles(r_file), ypr, atol=1e-9)


def test_biwi_matrix_rejects_non_rotation():
    with pytest.raises(ValueError, match="not a rotation"):
        biwi_matrix_to_euler(np.ones((3, 3)))


def _write_biwi_raw(folder, angles, centre=(0.0, 0.0, 1000.0), focal=500.0, box=None):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "rgb.cal"), "w") as f:
        f.write(
            f"{focal} 0 320\n0 {focal} 240\n0 0 1\n\n0 0 0 0\n\n1 0 0\n0 1 0\n0 0 1\n\n0 0 0\n640 480\n"
        )
    for i, ypr in enumerate(angles):
        stem = os.path.join(folder, f"frame_{i:05d}")
        cv2.imwrite(stem + "_rgb.png", np.full((480, 640, 3), 90, np.uint8))
        r_file = F @ euler_to_matrix(*ypr) @ F
        with open(stem + "_pose.txt", "w") as f:
            for row in r_file:
                f.write(" ".join(f"{v:.10f}" for v in row) + " \n")
            f.write("\n" + " ".join(str(v) for v in centre) + " \n")
        if box is not None and i == 0:
            with open(stem + "_bbox.txt", "w") as f:
                f.write(" ".join(str(v) for v in box))


def test_biwi_raw_layout(tmp_path):
    root = tmp_path / "hpdb"
    angles = [(20.0, -10.0, 5.0), (-35.0, 15.0, 0.0), (0.0, 0.0, 105.0)]
    _write_biwi_raw(str(root / "01"), angles, box=(100, 50, 300, 260))
    (root / "01" / "frame_00009_rgb.png").write_bytes(b"x")  # frame without pose
    with open(root / "01" / "frame_00008_rgb.png", "wb") as f:
        f.write(b"x")
    (root / "01" / "frame_00008_pose.txt").write_text("1 0 0\n0 1\n")  # malformed
    assert detect_format(str(root)) == "biwi_raw"
    ds = load_dataset(str(root))
    assert [s.key for s in ds.samples] == ["01/frame_00000_rgb.png", "01/frame_00001_rgb.png"]
    np.testing.assert_allclose(ds.samples[0].angles, angles[0], atol=1e-6)
    np.testing.assert_allclose(ds.samples[1].angles, angles[1], atol=1e-6)
    np.testing.assert_allclose(ds.samples[0].box, [100, 50, 300, 260])  # the _bbox.txt
    # Projected head centre (0, 0, 1000 mm) -> principal point; side f * 220 mm / 1000 mm.
    half = 0.5 * 500.0 * HEAD_SIZE_MM / 1000.0
    np.testing.assert_allclose(
        ds.samples[1].box, [320 - half, 240 - half, 320 + half, 240 + half], atol=1e-3
    )
    counts = ds.report.counts()
    assert counts[REASON_OUT_OF_RANGE] == 1
    assert counts["missing annotation"] == 1 and counts["malformed annotation"] == 1


def test_biwi_npz_layout(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (5, 64, 64, 3), dtype=np.uint8)
    poses = np.array([[10, 20, 30], [-5, 0, 2], [100, 0, 0], [0, 0, 0], [np.nan, 0, 0]], float)
    path = str(tmp_path / "BIWI_noTrack.npz")
    np.savez(path, image=images, pose=poses)
    assert detect_format(path) == "biwi_npz"
    ds = load_dataset(path)
    assert [s.array_index for s in ds.samples] == [0, 1, 3]
    np.testing.assert_array_equal(ds.samples[0].angles, [10, 20, 30])
    np.testing.assert_array_equal(load_image(ds.samples[1]), images[1])  # stored BGR by default
    rgb = load_dataset(path, channel_order="rgb")
    np.testing.assert_array_equal(load_image(rgb.samples[1]), images[1][:, :, ::-1])
    assert ds.report.counts() == {REASON_OUT_OF_RANGE: 1, "malformed annotation": 1}
    # Pre-cropped faces: the whole image is the crop (no margin added).
    item = FaceCropDataset(ds.samples, input_size=64)[0]
    from lechpe_model.preprocessing import preprocess_crops

    np.testing.assert_allclose(item["image"].numpy(), preprocess_crops([images[0]], 64)[0])


def test_biwi_npz_missing_arrays_reported(tmp_path):
    path = str(tmp_path / "bad.npz")
    np.savez(path, pictures=np.zeros((2, 4, 4, 3)))
    ds = load_dataset(path)
    assert len(ds) == 0 and "expected arrays 'image' and 'pose'" in ds.report.items[0][1]


# --------------------------------------------------------------------------- Pandora


def _write_pandora(root, frames):
    for rel, (angles, box) in frames.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        cv2.imwrite(path, np.full((120, 100, 3), 50, np.uint8))
        with open(path.replace("_RGB.png", "_pose.txt"), "w") as f:
            f.write(" ".join(str(a) for a in angles) + "\n")
            if box is not None:
                f.write(" ".join(str(b) for b in box) + "\n")


def test_pandora_layout_and_list_file(tmp_path):
    frames = {
        "01/base_1_ID01/RGB/frame_000001_RGB.png": ((10.0, -5.0, 2.0), (10, 20, 60, 80)),
        "01/base_1_ID01/RGB/frame_000002_RGB.png": ((-30.0, 8.0, 1.0), None),
        "02/base_2_ID02/RGB/frame_000007_RGB.png": ((0.0, 0.0, 0.0), None),
    }
    _write_pandora(str(tmp_path), frames)
    bad = tmp_path / "02/base_2_ID02/RGB/frame_000008_RGB.png"
    cv2.imwrite(str(bad), np.zeros((10, 10, 3), np.uint8))
    (tmp_path / "02/base_2_ID02/RGB/frame_000008_pose.txt").write_text("1 2\n")
    assert detect_format(str(tmp_path)) == "pandora"
    everything = load_dataset(str(tmp_path))
    assert len(everything) == 3 and not any(s.occluded for s in everything.samples)
    assert everything.report.counts()["malformed annotation"] == 1
    (tmp_path / "occluded.txt").write_text(
        "# occluded subset\n01/base_1_ID01/RGB/frame_000002_RGB.png\n"
        "02/base_2_ID02/RGB/frame_000007_RGB.png\n02/missing_RGB.png\n"
    )
    subset = load_dataset(str(tmp_path), "pandora", list_file="occluded.txt")
    assert [s.key for s in subset.samples] == [
        "01/base_1_ID01/RGB/frame_000002_RGB.png",
        "02/base_2_ID02/RGB/frame_000007_RGB.png",
    ]
    assert all(s.occluded for s in subset.samples)
    assert subset.report.counts() == {"missing image": 1}
    first = everything.samples[0]
    np.testing.assert_allclose(first.box, [10, 20, 60, 80])
    np.testing.assert_allclose(first.angles, [10.0, -5.0, 2.0])


# --------------------------------------------------------------------------- CSV


def test_csv_layout(tmp_path):
    (tmp_path / "faces").mkdir()
    for name in ("a.jpg", "b.png"):
        cv2.imwrite(str(tmp_path / "faces" / name), np.full((40, 50, 3), 100, np.uint8))
    (tmp_path / "labels.csv").write_text(
        "image,yaw,pitch,roll,x1,y1,x2,y2\n"
        "faces/a.jpg,12.5,-3,1.25,5,6,30,35\n"
        "faces/b.png,-30,8,0,,,,\n"
        "faces/missing.jpg,0,0,0,,,,\n"
        "faces/a.jpg,abc,0,0,,,,\n"
        "faces/a.jpg,0,0,0,30,6,5,35\n"
        "faces/b.png,0,150,0,,,,\n"
    )
    assert detect_format(str(tmp_path)) == "csv"
    ds = load_dataset(str(tmp_path))
    assert [s.key for s in ds.samples] == ["faces/a.jpg", "faces/b.png"]
    np.testing.assert_allclose(ds.samples[0].angles, [12.5, -3, 1.25])
    np.testing.assert_allclose(ds.samples[0].box, [5, 6, 30, 35])
    assert ds.samples[1].box is None
    bad_lines = sorted(
        path.rsplit(":", 1)[1]
        for path, reason in ds.report.items
        if reason != REASON_OUT_OF_RANGE and not reason.startswith(REASON_OUT_OF_RANGE)
    )
    assert bad_lines == ["4", "5", "6"]
    assert ds.report.counts() == {
        "missing image": 1,
        "malformed annotation": 2,
        REASON_OUT_OF_RANGE: 1,
    }


def test_csv_missing_columns(tmp_path):
    (tmp_path / "labels.csv").write_text("path,yaw\nx.jpg,1\n")
    ds = load_dataset(str(tmp_path / "labels.csv"))
    assert len(ds) == 0 and "missing column(s) ['image', 'pitch', 'roll']" in ds.report.items[0][1]


def test_unknown_layout_is_named(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(ValueError, match="no known dataset layout"):
        load_dataset(str(tmp_path))


# --------------------------------------------------------------------------- split groups


def test_300wlp_groups_by_source_photo_and_synthetic_identity(tmp_path):
    from training.datasets.w300lp import source_group

    root = tmp_path / "300W_LP"
    write_300wlp(str(root / "AFW"), 2, seed=0, size=48)
    names = {
        "AFW/img_0000": "AFW/AFW_134212_1_3",
        "AFW/img_0001": "AFW/AFW_134212_1_0",
    }
    write_300wlp(str(root / "AFW_Flip"), 1, seed=1, size=48)
    names["AFW_Flip/img_0000"] = "AFW_Flip/AFW_134212_1_3"
    write_300wlp(str(root / "HELEN"), 1, seed=2, size=48)
    names["HELEN/img_0000"] = "HELEN/HELEN_232194_1_12"
    write_300wlp(str(root / "AFLW2000"), 1, seed=3, size=48)
    names["AFLW2000/img_0000"] = "AFLW2000/image00002"
    for old, new in names.items():
        for ext in (".jpg", ".mat"):
            os.rename(root / (old + ext), root / (new + ext))
    # a synthetic face with an identity (1, 1) integer, as lechpe-synth writes it
    write_300wlp(str(root / "synth"), 2, seed=4, size=48)
    mat = scipy.io.loadmat(root / "synth" / "img_0001.mat")
    mat = {k: v for k, v in mat.items() if not k.startswith("__")}
    mat["identity"] = np.array([[17]], dtype=np.int32)
    scipy.io.savemat(root / "synth" / "img_0001.mat", mat)
    groups = {s.key: s.split_group for s in load_dataset(str(root)).samples}
    assert groups == {
        "AFW/AFW_134212_1_0.jpg": "AFW_134212_1",
        "AFW/AFW_134212_1_3.jpg": "AFW_134212_1",
        "AFW_Flip/AFW_134212_1_3.jpg": "AFW_134212_1",
        "HELEN/HELEN_232194_1_12.jpg": "HELEN_232194_1",
        "AFLW2000/image00002.jpg": "AFLW2000/image00002.jpg",  # its own group
        "synth/img_0000.jpg": "synth/img_0000.jpg",  # no identity: its own group
        "synth/img_0001.jpg": "id17",
    }
    assert source_group("x/IBUG_image_003_1_Flip_4.jpg") == "IBUG_image_003_1"
    # a malformed identity is a skipped, counted item
    mat["identity"] = np.array([[1.5, 2.0]])
    scipy.io.savemat(root / "synth" / "img_0001.mat", mat)
    ds = load_dataset(str(root))
    assert ds.report.counts()["malformed annotation"] == 1
    assert "identity must be one integer" in ds.report.items[0][1]


def test_biwi_pandora_csv_groups(tmp_path):
    root = tmp_path / "hpdb"
    _write_biwi_raw(str(root / "01"), [(0.0, 0.0, 0.0), (5.0, 0.0, 0.0)])
    _write_biwi_raw(str(root / "02"), [(1.0, 0.0, 0.0)])
    ds = load_dataset(str(root))
    assert [s.split_group for s in ds.samples] == ["subject:01", "subject:01", "subject:02"]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (4, 16, 16, 3), dtype=np.uint8)
    poses = np.zeros((4, 3))
    np.savez(tmp_path / "with.npz", image=images, pose=poses, subject=np.array([3, 3, 4, 4]))
    np.savez(tmp_path / "without.npz", image=images, pose=poses)
    with_subject = load_dataset(str(tmp_path / "with.npz"))
    assert [s.split_group for s in with_subject.samples] == ["subject3"] * 2 + ["subject4"] * 2
    without = load_dataset(str(tmp_path / "without.npz"))
    assert [s.split_group for s in without.samples] == [f"without.npz#{i}" for i in range(4)]
    _write_pandora(
        str(tmp_path / "pandora"),
        {
            "07/base_1/RGB/frame_000001_RGB.png": ((1.0, 2.0, 3.0), None),
            "09/base_1/RGB/frame_000001_RGB.png": ((1.0, 2.0, 3.0), None),
        },
    )
    pandora = load_dataset(str(tmp_path / "pandora"))
    assert [s.split_group for s in pandora.samples] == ["subject:07", "subject:09"]
    faces = tmp_path / "csv"
    faces.mkdir()
    for i in range(3):
        cv2.imwrite(str(faces / f"{i}.png"), np.zeros((8, 8, 3), np.uint8))
    (faces / "labels.csv").write_text(
        "image,yaw,pitch,roll,group\n0.png,1,2,3,alice\n1.png,1,2,3,alice\n2.png,1,2,3,\n"
    )
    csv_ds = load_dataset(str(faces))
    assert [s.split_group for s in csv_ds.samples] == ["alice", "alice", "2.png"]
