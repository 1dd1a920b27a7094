"""lechpe-eval tables, elbow and beta ablation."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
import torch
from training_fixtures import write_300wlp

from lechpe_model.checkpoint import save_checkpoint
from lechpe_model.network import LECHPENet
from lechpe_model.preprocessing import preprocess_face
from training import ablation, elbow, evaluate
from training.datasets import load_dataset
from training.occlusion import write_occluded_replica


def test_table_layout_and_combined_mae(tmp_path):
    sets = {
        "non_occluded": {"mae": np.array([4.602, 3.897, 3.759]), "mean": 4.086},
        "occluded": {"mae": np.array([6.153, 6.576, 4.605]), "mean": 5.778},
    }
    columns = evaluate.table_columns(list(sets))
    row = evaluate.table_row(sets)
    assert columns[0] == "Non-occluded Yaw" and columns[-1] == "Combined MAE" and len(columns) == 9
    assert row[-1] == pytest.approx(4.932)  # the paper's BIWI row: (4.086 + 5.778) / 2
    md, path = evaluate.write_tables({"LEC-HPE (ours)": row}, columns, "BIWI", str(tmp_path))
    text = open(md).read()
    assert text.splitlines()[0].startswith("| BIWI | Non-occluded Yaw |")
    assert (
        "| LEC-HPE (ours) | 4.602 | 3.897 | 3.759 | 4.086 | 6.153 | 6.576 | 4.605 | 5.778 | 4.932 |"
        in text
    )
    assert list(csv.reader(open(path)))[1][-1] == "4.932"
    only_occ = {"occluded": sets["occluded"]}
    assert evaluate.table_columns(list(only_occ)) == [
        "Occluded Yaw",
        "Occluded Pitch",
        "Occluded Roll",
        "Occluded MAE",
    ]


def test_eval_occluded_only_matches_direct_forward(tmp_path):
    """Pandora-style (occluded set only): the table equals an independent forward pass."""
    torch.manual_seed(0)
    net = LECHPENet("mobilenet_v3_small", num_clusters=2)
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(ckpt, net, training_config={"model": {"input_size": 64}}, input_size=64)
    data = tmp_path / "data"
    write_300wlp(
        str(data),
        6,
        seed=1,
        size=80,
        angles=[[10, 0, 0], [-20, 5, 3], [0, 0, 0], [30, -10, 5], [0, 120, 0], [5, 5, 5]],
    )
    out = tmp_path / "out"
    assert (
        evaluate.main(
            [
                "--model",
                str(ckpt),
                "--occluded-data",
                str(data),
                "--out",
                str(out),
                "--name",
                "Pandora",
                "--no-plots",
            ]
        )
        == 0
    )
    summary = json.load(open(out / "summary.json"))
    occ = summary["sets"]["occluded"]
    assert occ["faces"] == 5 and occ["excluded_out_of_range"] == 1
    net.eval()
    errs, spreads = [], []
    for s in load_dataset(str(data)).samples:
        x = torch.from_numpy(preprocess_face(cv2.imread(s.image_path), s.box, input_size=64))
        with torch.no_grad():
            angles, uncertainty, _ = (t[0].numpy() for t in net(x))
        errs.append(np.abs(angles - s.angles))
        spreads.append(uncertainty)
    expected = np.mean(errs, axis=0)
    got = [occ["mae"][a] for a in ("yaw", "pitch", "roll")]
    np.testing.assert_allclose(got, expected, atol=1e-3)
    rows = [r for r in csv.DictReader(open(out / "predictions.csv")) if r["valid"] == "1"]
    written = [[float(r[f"unc_{a}"]) for a in ("yaw", "pitch", "roll")] for r in rows]
    np.testing.assert_allclose(written, spreads, atol=2e-3)
    assert set(occ["calibration"]) == {
        "mean_uncertainty",
        "spearman_uncertainty_vs_error",
        "mean_confidence",
        "spearman_confidence_vs_error",
    }
    assert occ["calibration"]["mean_uncertainty"]["yaw"] == pytest.approx(
        np.mean(spreads, axis=0)[0], abs=1e-3
    )
    header = list(csv.reader(open(out / "results.csv")))[0]
    assert header == ["Pandora", "Occluded Yaw", "Occluded Pitch", "Occluded Roll", "Occluded MAE"]


def test_calibration_signs_follow_the_error():
    rng = np.random.default_rng(0)
    target = rng.uniform(-60, 60, (50, 3))
    err = rng.uniform(0, 10, (50, 3))
    q_sharp, q_flat = np.eye(4)[rng.integers(0, 4, 50)] * 0.96 + 0.01, np.full((50, 4), 0.25)
    # uncertainty grows with the error; confidence falls with it (sharp q where error is small)
    result = {
        "valid": np.ones(50, bool),
        "target": target,
        "angles": target + err,
        "uncertainty": 2.0 * err + 1.0,
        "q": np.where((err.mean(1) < 5)[:, None], q_sharp, q_flat),
    }
    cal = evaluate.calibration(result)
    assert all(v == pytest.approx(1.0) for v in cal["spearman_uncertainty_vs_error"].values())
    assert cal["spearman_confidence_vs_error"] < -0.5
    assert cal["mean_uncertainty"]["roll"] == pytest.approx(np.mean(2.0 * err[:, 2] + 1.0))
    assert evaluate.normalised_confidence(q_flat)[0] == pytest.approx(0.0)
    result["uncertainty"] = -result["uncertainty"]  # the wrong direction is reported as such
    assert all(
        v == pytest.approx(-1.0)
        for v in evaluate.calibration(result)["spearman_uncertainty_vs_error"].values()
    )


def test_elbow_table_on_separated_latents(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 20, (10, 8))
    latents = np.concatenate([c + rng.normal(0, 0.5, (30, 8)) for c in centres])
    rows = elbow.elbow_table(latents, [5, 10, 15], seed=0, n_init=3)
    inertias = [r["inertia"] for r in rows]
    assert inertias[0] > inertias[1] > inertias[2]
    # The elbow: the drop 5 -> 10 is far larger than 10 -> 15 for ten true clusters.
    assert rows[1]["drop"] > 20 * rows[2]["drop"]
    md, path, png = elbow.write_elbow(rows, str(tmp_path))
    assert [r["k"] for r in csv.DictReader(open(path))] == ["5", "10", "15"]
    assert open(png, "rb").read(4) == b"\x89PNG"


@pytest.mark.slow
def test_ablation_and_elbow_cli_on_tiny_runs(tmp_path):
    data, occ = tmp_path / "d", tmp_path / "o"
    write_300wlp(str(data), 20, seed=4, size=72)
    write_occluded_replica(str(data), str(occ), seed=1)
    out = tmp_path / "abl"
    argv = [
        "--config",
        "tiny",
        "--data",
        str(data),
        "--occluded-data",
        str(occ),
        "--out",
        str(out),
        "--betas",
        "0",
        "100",
        "--seeds",
        "0",
        "1",
        "--ks",
        "2",
        "3",
        "--k-beta",
        "100",
        "--no-progress",
        "--set",
        "data.max_samples=16",
        "--eval",
        f"fixture={data},{occ}",
    ]
    assert ablation.main(argv) == 0
    rows = list(csv.reader(open(out / "ablation_fixture.csv")))
    assert rows[0] == [
        "fixture",
        "clean mean",
        "clean std",
        "occluded mean",
        "occluded std",
        "seeds",
    ]
    assert [r[0] for r in rows[1:]] == ["β = 0", "β = 100"]
    all_runs = list(csv.DictReader(open(out / "ablation_fixture_runs.csv")))
    assert [r["study"] for r in all_runs] == ["β"] * 4 + ["K"] * 4  # 2 x 2 seeds each
    runs = all_runs[:4]
    for r in rows[1:]:
        beta = r[0].split("= ")[1]
        for col, name in ((1, "clean MAE"), (3, "occluded MAE")):
            vals = [float(x[name]) for x in runs if x["value"] == beta]
            assert float(r[col]) == pytest.approx(np.mean(vals), abs=2e-4)
            assert float(r[col + 1]) == pytest.approx(np.std(vals, ddof=1), abs=2e-4)
    md = open(out / "ablation_fixture.md").read()
    assert "| β = 0 | " in md and " ± " in md and "seeds" in md
    assert (out / "ablation_fixture.png").is_file()
    k_rows = list(csv.reader(open(out / "ablation_k_fixture.csv")))
    assert [r[0] for r in k_rows[1:]] == ["K = 2", "K = 3"]
    assert k_rows[0][5:7] == ["k-means inertia mean", "k-means inertia std"]
    assert k_rows[2][1] == rows[2][1]  # K = 3 is the configured K: the beta = 100 runs
    # Every run started from the one stage 1. Values, not key sets: k-means (same
    # seed, same faces) gives bit-identical centroids only from identical weights.
    from safetensors.torch import load_file

    s1 = load_file(str(out / "stage1" / "stage1.safetensors"))
    b0 = load_file(str(out / "beta_0_seed0" / "model.safetensors"))
    assert s1.keys() == b0.keys()
    shared = load_file(str(out / "stage1" / "kmeans_centroids.safetensors"))["centroids"]
    for run in ("beta_0_seed0", "beta_100_seed0"):
        run_c = load_file(str(out / run / "kmeans_centroids.safetensors"))["centroids"]
        assert torch.equal(run_c, shared), run
    assert not torch.equal(s1["heads.yaw.weight"], b0["heads.yaw.weight"])  # stage 2 trained
    assert (
        elbow.main(
            [
                "--model",
                str(out / "stage1" / "stage1.safetensors"),
                "--data",
                str(occ),
                "--out",
                str(tmp_path / "elbow"),
                "--ks",
                "2",
                "3",
                "4",
                "--n-init",
                "2",
            ]
        )
        == 0
    )
    assert len(list(csv.DictReader(open(tmp_path / "elbow" / "elbow.csv")))) == 3


# --------------------------------------------------------------- held-out-identity protocol


def test_mae_by_yaw_range_hand_computed():
    target = np.array(
        [[10.0, 0, 0], [-29.9, 5, 5], [30.0, 0, 0], [-60.0, 10, 0], [75.0, 0, 0], [-61, 0, 0]]
    )
    err = np.array([[1.0, 2, 3], [3, 2, 1], [4, 4, 4], [2, 0, 1], [10, 5, 0], [99, 99, 99]])
    pred = target + err * np.array([1, -1, 1])  # signs must not matter
    valid = np.array([True, True, True, True, True, False])  # the last is unreadable
    out = evaluate.mae_by_yaw_range(pred, target, valid)
    assert out["|yaw| < 30"] == {"faces": 2, "yaw": 2.0, "pitch": 2.0, "roll": 2.0, "mean": 2.0}
    mid = out["|yaw| 30-60"]  # 30 and -60 are both in 30-60
    assert mid["faces"] == 2
    assert (mid["yaw"], mid["pitch"], mid["roll"]) == (3.0, 2.0, 2.5)
    assert mid["mean"] == pytest.approx(7.5 / 3)
    assert out["|yaw| > 60"]["faces"] == 1 and out["|yaw| > 60"]["mean"] == pytest.approx(5.0)
    assert out["all"]["faces"] == 5
    assert out["all"]["yaw"] == pytest.approx(20 / 5)
    assert out["all"]["mean"] == pytest.approx(err[:5].mean())
    empty = evaluate.mae_by_yaw_range(target[:1], target[:1])
    assert empty["|yaw| > 60"]["faces"] == 0 and np.isnan(empty["|yaw| > 60"]["mean"])


def test_identity_split_keeps_test_identities_out_of_training():
    ids = np.repeat(np.arange(20), 7)  # 20 identities, 7 faces each
    split = evaluate.identity_split(ids, 0.15, 0.15, seed=3)
    assert sorted(split) == list(range(20))
    parts = {p: {i for i, s in split.items() if s == p} for p in ("train", "val", "test")}
    assert (len(parts["train"]), len(parts["val"]), len(parts["test"])) == (14, 3, 3)
    assert not parts["test"] & parts["train"] and not parts["val"] & parts["train"]
    assert not parts["test"] & parts["val"]
    assert evaluate.identity_split(ids, 0.15, 0.15, seed=3) == split  # deterministic
    assert evaluate.identity_split(ids, 0.15, 0.15, seed=4) != split
    # unknown identities (-1) are never assigned; too few identities is an error
    assert -1 not in evaluate.identity_split([-1, 1, 2, 3, 4], 0.25, 0.25)
    with pytest.raises(ValueError, match="3 identities cannot be split"):
        evaluate.identity_split([1, 2, 3], 0.5, 0.5)


def write_identity_index(folder, identities):
    """index.csv with an identity column, as lechpe-synth writes it."""
    with open(folder / "index.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "yaw", "pitch", "roll", "identity"])
        for i, ident in enumerate(identities):
            writer.writerow([f"img_{i:04d}", 0, 0, 0, ident])


def test_protocol_on_held_out_identities_uses_the_runs_test_margin(tmp_path):
    """Training identities are excluded and counted; crops use data.test_margin."""
    import scipy.io

    torch.manual_seed(0)
    net = LECHPENet("mobilenet_v3_small", num_clusters=2)
    ckpt = tmp_path / "m.safetensors"
    with torch.no_grad():  # an untrained net barely looks at its input: make it
        for head in net.heads.values():
            head.weight.mul_(300.0)
    save_checkpoint(ckpt, net, {"data": {"test_margin": 0.6}}, input_size=64)
    data = tmp_path / "test"
    angles = [[10, 0, 0], [-40, 5, 3], [0, 0, 0], [70, -10, 5], [5, 5, 5], [-35, 0, 1]]
    write_300wlp(str(data), 6, seed=1, size=80, angles=angles)
    write_identity_index(data, [7, 7, 8, 8, 9, 9])
    train = tmp_path / "train"
    write_300wlp(str(train), 2, seed=2, size=80)
    # the training set names its identities in the .mat files instead of index.csv
    for i, ident in enumerate([8, 11]):
        mat = train / f"img_{i:04d}.mat"
        content = scipy.io.loadmat(mat)
        scipy.io.savemat(
            mat,
            {
                "Pose_Para": content["Pose_Para"],
                "pt2d": content["pt2d"],
                "identity": np.array([[ident]]),
            },
        )
    out = tmp_path / "out"
    args = [
        "--model",
        str(ckpt),
        "--data",
        str(data),
        "--out",
        str(out),
        "--no-plots",
        "--train-data",
        str(train),
    ]
    assert evaluate.main(args) == 0
    protocol = json.load(open(out / "protocol.json"))
    clean = protocol["sets"]["non_occluded"]
    assert clean["identities"] == {"7": 2, "9": 2}  # identity 8 was trained on
    assert clean["left_out_by_identity_selection"] == 2
    assert protocol["selection"]["training_identities_excluded"] == [8, 11]
    assert protocol["test_margin"] == 0.6
    net.eval()
    kept = [s for s in load_dataset(str(data)).samples if s.key.split(".")[0][-1] in "0145"]
    direct = {}
    for margin in (0.6, 0.25):
        rows = []
        for s in kept:
            img = cv2.imread(s.image_path)
            x = torch.from_numpy(preprocess_face(img, s.box, margin=margin, input_size=64))
            with torch.no_grad():
                rows.append(net(x)[0][0].numpy())
        direct[margin] = np.array(rows)
    errs = {m: np.abs(p - np.array([s.angles for s in kept])) for m, p in direct.items()}
    run = evaluate.evaluate_sets(str(ckpt), str(data), None, exclude_identities={8})
    got = run["sets"]["non_occluded"]["result"]["angles"]
    assert run["test_margin"] == 0.6
    off_06, off_025 = np.abs(got - direct[0.6]).max(), np.abs(got - direct[0.25]).max()
    assert off_06 < 1e-4 and off_025 > 10 * off_06  # the crops used the run's margin
    by_range = clean["mae_by_yaw_range"]
    assert by_range["all"]["faces"] == 4
    np.testing.assert_allclose(by_range["all"]["yaw"], errs[0.6][:, 0].mean(), atol=1e-3)
    # |yaw| of the kept faces: 10, 5 (< 30), -40, -35 (30-60); 70 is identity 8's (left out)
    assert by_range["|yaw| < 30"]["faces"] == 2 and by_range["|yaw| 30-60"]["faces"] == 2
    assert by_range["|yaw| > 60"]["faces"] == 0
    np.testing.assert_allclose(by_range["|yaw| 30-60"]["mean"], errs[0.6][[1, 3]].mean(), atol=1e-3)
    text = open(out / "protocol.md").read()
    assert "| \\|yaw\\| < 30 | 2 |" in text and "clean: 4 faces of 2 identities" in text
    assert "published (uncalibrated: raw)" in text
    # --split test takes the test identities of the data's own identity split
    out2 = tmp_path / "out2"
    assert (
        evaluate.main(
            [
                "--model",
                str(ckpt),
                "--data",
                str(data),
                "--out",
                str(out2),
                "--no-plots",
                "--split",
                "test",
                "--test-fraction",
                "0.34",
                "--val-fraction",
                "0.3",
            ]
        )
        == 0
    )
    split = evaluate.identity_split([7, 8, 9], 0.3, 0.34, 0)
    want = {str(i): 2 for i, p in split.items() if p == "test"}
    assert json.load(open(out2 / "protocol.json"))["sets"]["non_occluded"]["identities"] == want


def small_model_and_faces(tmp_path, faces: int, mirror_average: bool = False):
    """A seeded small random model's checkpoint and ``faces`` rendered faces of
    ``faces / 3`` identities (3 each): the setup of the calibration tests."""
    torch.manual_seed(0)
    net = LECHPENet("mobilenet_v3_small", num_clusters=2, mirror_average=mirror_average)
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(ckpt, net, {"data": {"test_margin": 0.25}}, input_size=64)
    data = tmp_path / "val"
    write_300wlp(str(data), faces, seed=1, size=80)
    write_identity_index(data, np.repeat(np.arange(faces // 3), 3))
    return net, ckpt, data


def test_calibrate_uncertainty_writes_a_calibrated_checkpoint(tmp_path):
    from lechpe_model.checkpoint import load_checkpoint, read_metadata
    from lechpe_model.uncertainty import UncertaintyCalibration

    net, ckpt, data = small_model_and_faces(tmp_path, 24)
    out = tmp_path / "cal.safetensors"
    assert (
        evaluate.main(
            [
                "calibrate-uncertainty",
                "--checkpoint",
                str(ckpt),
                "--data",
                str(data),
                "--out",
                str(out),
                "--split",
                "all",
            ]
        )
        == 0
    )
    meta = read_metadata(out)
    cal = UncertaintyCalibration.from_dict(meta.uncertainty_calibration)
    assert "24 faces" in cal.fitted_on
    report = json.load(open(tmp_path / "cal_calibration.json"))
    # on the fitting set the coverage is the target by construction
    for a in ("yaw", "pitch", "roll"):
        assert report["fit_set"]["coverage_1sigma"][a] == pytest.approx(0.6827, abs=1 / 24 + 1e-9)
    assert (tmp_path / "cal_reliability_fit.png").stat().st_size > 1000
    model, _ = load_checkpoint(out)  # same weights, verified
    for k, v in net.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(model.state_dict()[k], v)
    # lechpe-eval reports the calibrated sigma's ranking and coverage
    ev = tmp_path / "ev"
    assert evaluate.main(["--model", str(out), "--data", str(data), "--out", str(ev)]) == 0
    unc = json.load(open(ev / "protocol.json"))["sets"]["non_occluded"]["uncertainty"]
    assert unc["calibrated"] and unc["published"]["faces"] == 24
    assert unc["published"]["coverage_1sigma"] == report["fit_set"]["coverage_1sigma"]
    assert (ev / "reliability.png").stat().st_size > 1000
    # --mirror-average on: fitted on (and written with) test-time mirroring
    mirrored = tmp_path / "cal_mirror.safetensors"
    args = ["calibrate-uncertainty", "--checkpoint", str(ckpt), "--data", str(data)]
    args += ["--out", str(mirrored), "--split", "all", "--mirror-average", "on", "--no-plot"]
    assert evaluate.main(args) == 0
    assert read_metadata(mirrored).mirror_average and not read_metadata(out).mirror_average
    assert sorted(p.name for p in tmp_path.glob("*mirror_tmp*")) == []  # temp copy removed
    fit = json.load(open(tmp_path / "cal_mirror_calibration.json"))["calibration"]
    assert fit["weights"] != report["calibration"]["weights"]  # other outputs, other fit


def test_calibrate_uncertainty_fits_an_error_head_on_other_renders(tmp_path):
    from lechpe_model.checkpoint import load_checkpoint, read_metadata
    from lechpe_model.uncertainty import UncertaintyCalibration

    net, ckpt, data = small_model_and_faces(tmp_path, 30, mirror_average=True)
    head_data = tmp_path / "val_head"
    write_300wlp(str(head_data), 24, seed=2, size=80)
    write_identity_index(head_data, np.repeat(np.arange(8), 3))
    out = tmp_path / "cal.safetensors"
    args = ["calibrate-uncertainty", "--checkpoint", str(ckpt), "--data", str(data)]
    args += ["--error-head-data", str(head_data), "--error-head-ridges", "0.1,1e6"]
    assert evaluate.main([*args, "--out", str(out), "--split", "all", "--no-plot"]) == 0
    meta = read_metadata(out)
    assert meta.error_head
    cal = UncertaintyCalibration.from_dict(meta.uncertainty_calibration)
    assert (
        cal.uses_error_head and "error head (ridge" in cal.fitted_on and "30 faces" in cal.fitted_on
    )
    report = json.load(open(tmp_path / "cal_calibration.json"))
    head = report["error_head"]
    assert set(head["scores"]) == {"0.1", "1000000.0"} and head["faces"] == 24
    assert head["scores"][str(head["ridge"])] == max(head["scores"].values())
    # the written head is what an independent ridge fit on the head set gives
    from sklearn.linear_model import Ridge

    from training.evaluate import evaluate_sets

    ev = evaluate_sets(str(ckpt), str(head_data), None, device="cpu")["sets"]["non_occluded"]
    r = ev["result"]
    target = np.log(np.maximum(np.abs(r["angles"] - r["target"]), 0.05))
    want = Ridge(alpha=head["ridge"]).fit(r["head_input"], target)
    model, _ = load_checkpoint(out)
    np.testing.assert_allclose(model.error_head.weight.detach().numpy(), want.coef_, atol=1e-3)
    np.testing.assert_allclose(model.error_head.bias.detach().numpy(), want.intercept_, atol=1e-3)
    for k, v in net.state_dict().items():  # the network itself is unchanged
        torch.testing.assert_close(model.state_dict()[k], v)
    # lechpe-eval publishes the v2 sigma from the head's output; on the fitting set
    # its coverage is the target by construction
    ev_dir = tmp_path / "ev"
    assert evaluate.main(["--model", str(out), "--data", str(data), "--out", str(ev_dir)]) == 0
    unc = json.load(open(ev_dir / "protocol.json"))["sets"]["non_occluded"]["uncertainty"]
    assert unc["published"]["coverage_1sigma"] == report["fit_set"]["coverage_1sigma"]
    # recalibrating the calibrated file without head data keeps its head and uses it
    again = tmp_path / "again.safetensors"
    args = ["calibrate-uncertainty", "--checkpoint", str(out), "--data", str(data)]
    assert evaluate.main([*args, "--out", str(again), "--split", "all", "--no-plot"]) == 0
    assert UncertaintyCalibration.from_dict(
        read_metadata(again).uncertainty_calibration
    ).uses_error_head
    bad = [*args, "--out", str(again), "--error-head-data", str(head_data)]
    with pytest.raises(SystemExit, match="--error-head-ridges must be > 0"):
        evaluate.main([*bad, "--error-head-ridges", "0"])
    with pytest.raises(SystemExit, match="not a comma-separated list"):
        evaluate.main([*bad, "--error-head-ridges", "a,b"])


def test_detector_crops_are_the_runtimes_crops_and_misses_are_counted(tmp_path, monkeypatch):
    """--detector-crops / --add-detector-crops: each face found is cropped from the
    detector's deployed square (training.detector_boxes), the missed ones are counted."""
    import lechpe_model.detection as detection
    from lechpe_model.checkpoint import read_metadata
    from lechpe_model.detection import FaceDetection, FaceDetector
    from lechpe_model.uncertainty import UncertaintyCalibration
    from training import detector_boxes as db

    _, ckpt, data = small_model_and_faces(tmp_path, 30)
    samples = load_dataset(str(data)).samples

    def moved(box):  # the labelled face moved right by 10 % of its width
        x1, y1, x2, y2 = (float(v) for v in box)
        shift = 0.1 * (x2 - x1)
        return np.array([x1 + shift, y1, x2 + shift, y2], np.float32)

    class EveryThirdMissed(FaceDetector):
        """Sees the faces in the data's order (one call per face); misses every third."""

        name = "every_third_missed"
        crop_margin, crop_shift_y = 0.3, 0.05

        def __init__(self):
            super().__init__(max_input_side=0)
            self.index = 0

        def _detect(self, image):
            box = moved(samples[self.index].box)
            self.index += 1
            return [] if self.index % 3 == 0 else [FaceDetection(box, 0.9)]

    monkeypatch.setattr(detection, "create_detector", lambda name, **kw: EveryThirdMissed())
    both = evaluate.evaluate_sets(str(ckpt), str(data), None, detector_crops="x")
    s = both["sets"]["non_occluded"]
    assert s["missed_by_detector"] == 10 and s["crops"] == "landmark + x detector"
    assert len(s["keys"]) == 30 + 20
    only = evaluate.evaluate_sets(
        str(ckpt), str(data), None, detector_crops="x", landmark_crops=False
    )["sets"]["non_occluded"]
    assert only["crops"] == "x detector" and len(only["keys"]) == 20
    # the crop of a found face is the runtime's: its deployed square, as a landmark box
    _, detected = db.detector_crop_samples(samples[:1], EveryThirdMissed())
    want = db.landmark_equivalent_box(db.deployed_square(moved(samples[0].box), 0.3, 0.05))
    np.testing.assert_allclose(detected[0].box, want, atol=1e-4)
    # the CLIs: the protocol names the crops and the misses; the calibration its data
    out = tmp_path / "ev"
    args = ["--model", str(ckpt), "--data", str(data), "--out", str(out), "--no-plots"]
    assert evaluate.main([*args, "--detector-crops", "x"]) == 0
    text = (out / "protocol.md").read_text()
    assert "clean: 20 faces of 10 identities, x detector crops (10 faces missed by" in text
    cal = tmp_path / "cal.safetensors"
    args = ["calibrate-uncertainty", "--checkpoint", str(ckpt), "--data", str(data)]
    args += ["--add-detector-crops", "x", "--out", str(cal), "--split", "all", "--no-plot"]
    assert evaluate.main(args) == 0
    fitted_on = UncertaintyCalibration.from_dict(
        read_metadata(cal).uncertainty_calibration
    ).fitted_on
    assert "50 faces" in fitted_on and "landmark and x detector crops" in fitted_on
