"""Two-stage trainer: end to end, exact resume, DDP (gloo, 2 processes) == 1 process."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from training_fixtures import write_300wlp

from lechpe_model.checkpoint import load_checkpoint, read_metadata
from training import evaluate, train
from training.checkpointing import load_training_state
from training.occlusion import write_occluded_replica

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Tiny and fast: 32 faces (24 train / 8 val), 64 px input, resnet18 (configs/tiny.yaml).
TINY = [
    "--config",
    "tiny",
    "--set",
    "train.threads=1",
    "--no-progress",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_data")
    clean, occluded = str(root / "clean"), str(root / "occluded")
    write_300wlp(clean, 32, seed=3, size=80)
    write_occluded_replica(clean, occluded, seed=5)
    return clean, occluded


def _run(out, data, *extra):
    clean, occluded = data
    argv = TINY + ["--data", clean, "--occluded-data", occluded, "--out", str(out)] + list(extra)
    assert train.main(argv) == 0


def _weights(path):
    return load_file(str(path))


def test_end_to_end_stage1_kmeans_stage2_eval(tmp_path, data):
    out = tmp_path / "run"
    _run(out, data)
    for name in (
        "stage1.safetensors",
        "model.safetensors",
        "kmeans.json",
        "metrics.jsonl",
        "config.yaml",
    ):
        assert (out / name).is_file(), name
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out / "tb"))
    records = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["stage"] for r in records] == ["stage1", "stage2"]
    assert "val_occluded_mae_mean" in records[-1]
    assert records[-1]["kl"] > 1e-3  # stage 2 optimised a non-trivial clustering term

    # The node's format: loads with the library's validating loader.
    model, meta = load_checkpoint(out / "model.safetensors")
    assert meta.architecture == "resnet18" and meta.num_clusters == 3
    assert meta.input_size == 64  # the configured size, which the runtime resizes to
    assert meta.training_config["stage2"]["beta"] == 100.0
    kmeans = json.load(open(out / "kmeans.json"))
    assert kmeans["k"] == 3 and sum(kmeans["cluster_sizes"]) == 24
    init = _weights(out / "kmeans_centroids.safetensors")["centroids"]
    assert not torch.equal(init, _weights(out / "model.safetensors")["centroids"])  # trained
    # Stage 2 changed the centroids that k-means set (beta > 0 trains them).
    stage1 = _weights(out / "stage1.safetensors")
    final = _weights(out / "model.safetensors")
    assert not torch.equal(stage1["heads.yaw.weight"], final["heads.yaw.weight"])

    ev = tmp_path / "eval"
    clean, occluded = data
    assert (
        evaluate.main(
            [
                "--model",
                str(out / "model.safetensors"),
                "--data",
                clean,
                "--occluded-data",
                occluded,
                "--out",
                str(ev),
                "--name",
                "fixture",
                "--tsne-max",
                "40",
            ]
        )
        == 0
    )
    rows = list(csv.reader(open(ev / "results.csv")))
    assert rows[0][0] == "fixture" and rows[0][-1] == "Combined MAE" and len(rows[0]) == 10
    table = [float(v) for v in rows[1][1:]]
    # Independent MAE from the per-face predictions.
    preds = list(csv.DictReader(open(ev / "predictions.csv")))
    for offset, name in ((0, "non_occluded"), (4, "occluded")):
        sel = [r for r in preds if r["set"] == name]
        assert len(sel) == 32
        for k, angle in enumerate(("yaw", "pitch", "roll")):
            err = np.mean([abs(float(r[f"pred_{angle}"]) - float(r[f"gt_{angle}"])) for r in sel])
            assert table[offset + k] == pytest.approx(err, abs=2e-3)
        assert table[offset + 3] == pytest.approx(np.mean(table[offset : offset + 3]), abs=2e-3)
    assert table[8] == pytest.approx((table[3] + table[7]) / 2, abs=2e-3)
    assert (ev / "tsne.png").is_file() and (ev / "error_vs_angle.png").is_file()


def test_resume_after_interruptions_matches_uninterrupted_run(tmp_path, data):
    settings = [
        "--set",
        "stage1.epochs=2",
        "--set",
        "stage2.epochs=2",
        "--set",
        "data.max_samples=16",
    ]
    # 16 faces, batch 8: 2 steps per epoch; stage 1 = steps 1-4, stage 2 = steps 5-8.
    full = tmp_path / "full"
    _run(full, data, *settings)
    parts = tmp_path / "parts"
    _run(parts, data, *settings, "--set", "train.max_steps=3")  # mid-epoch 2 of stage 1
    _, state = load_training_state(str(parts / "state.safetensors"))
    assert (state["phase"], state["epoch"], state["step_in_epoch"]) == ("stage1", 1, 1)
    assert not (parts / "model.safetensors").exists()
    _run(parts, data, *settings, "--set", "train.max_steps=6", "--resume")  # mid-epoch 1 of stage 2
    _, state = load_training_state(str(parts / "state.safetensors"))
    assert (state["phase"], state["stage_step"]) == ("stage2", 2)
    assert state["p_schedule"]["updates"] == 1
    _run(parts, data, *settings, "--resume")
    a, b = _weights(full / "model.safetensors"), _weights(parts / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    assert read_metadata(parts / "model.safetensors").num_clusters == 3


@pytest.mark.slow
def test_ddp_two_gloo_processes_equal_one_process(tmp_path, data):
    clean, occluded = data
    settings = [
        # Per-process BatchNorm batch statistics would differ from one process's.
        *("--set", "model.freeze_bn=true"),
        *("--set", "data.max_samples=16"),
        # SGD: Adam divides by sqrt(v) and turns float rounding noise of near-zero
        # gradients (summation order differs across processes) into lr-sized steps.
        *("--set", "optim.name=sgd"),
        *("--set", "optim.lr=1.0e-6"),
        *("--set", "stage2.p_update=batch"),  # exercises the cross-rank gather of q
    ]
    single = tmp_path / "single"
    _run(single, data, *settings)
    ddp = tmp_path / "ddp"
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("_ROS_WHEELS_BOOTSTRAP_COMPLETE", None)
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "training.train"]
    cmd += [*TINY, *settings, "--data", clean, "--occluded-data", occluded, "--out", str(ddp)]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("stage1.safetensors", "kmeans_centroids.safetensors", "model.safetensors"):
        a, b = _weights(single / name), _weights(ddp / name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=f"{name}: {key}")
    # Stage 2 moved the heads far more than the single/DDP difference.
    a, b = _weights(single / "model.safetensors"), _weights(ddp / "model.safetensors")
    s1 = _weights(single / "stage1.safetensors")
    moved = (a["heads.yaw.weight"] - s1["heads.yaw.weight"]).abs().max()
    assert moved > 20 * (a["heads.yaw.weight"] - b["heads.yaw.weight"]).abs().max()
    kl = [json.loads(line)["kl"] for line in open(ddp / "metrics.jsonl")]
    assert kl[-1] > 1e-3  # the clustering term was active


# --------------------------------------------------------------------------- splits


def _samples(groups):
    from training.datasets import PoseSample

    return [
        PoseSample(key=f"{g}/{i}.jpg", angles=np.zeros(3), image_path="", group=g)
        for g, n in groups.items()
        for i in range(n)
    ]


def test_split_by_group_never_puts_a_group_on_both_sides():
    groups = {f"id{i}": 1 + i % 4 for i in range(30)}
    groups.update({f"AFW_{i}_1": 3 for i in range(10)})
    samples = _samples(groups)
    group_of = {s.key: s.split_group for s in samples}
    split = train.split_by_group(samples, 0.25, seed=3)
    train_g = {group_of[k] for k in split.train}
    val_g = {group_of[k] for k in split.val}
    assert train_g.isdisjoint(val_g)
    assert set(split.train).isdisjoint(split.val)
    assert sorted(split.train + split.val) == sorted(group_of)  # nothing lost
    assert len(val_g) == 10 and len(train_g) == 30  # 25 % of the 40 groups
    assert train.split_by_group(samples, 0.25, seed=3) == split  # seeded
    assert train.split_by_group(samples, 0.25, seed=4).val != split.val
    # Explicit held-out identities: validation ids 0-4, test ids 5-9 never used.
    explicit = train.split_by_group(
        samples,
        0.25,
        seed=3,
        val_identities=[0, 4],
        test_identities=[5, 9],
        test_groups=["AFW_0_1"],
    )
    assert {group_of[k] for k in explicit.val} == {f"id{i}" for i in range(5)}
    used = {group_of[k] for k in explicit.train + explicit.val}
    assert used.isdisjoint({f"id{i}" for i in range(5, 10)} | {"AFW_0_1"})
    assert {group_of[k] for k in explicit.held_out} == {f"id{i}" for i in range(5, 10)} | {
        "AFW_0_1"
    }
    assert len(explicit.train) + len(explicit.val) + len(explicit.held_out) == len(samples)


def _add_identities(folder, identity_of_index):
    import scipy.io

    for i, ident in enumerate(identity_of_index):
        path = os.path.join(folder, f"img_{i:04d}.mat")
        mat = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
        mat["identity"] = np.array([[ident]], dtype=np.int32)
        scipy.io.savemat(path, mat)


def test_run_data_splits_by_identity_in_both_replicas(tmp_path):
    from training.config import load_config

    clean, occluded = str(tmp_path / "c"), str(tmp_path / "o")
    write_300wlp(clean, 24, seed=1, size=48)
    _add_identities(clean, [i % 8 for i in range(24)])  # 8 people, 3 views each
    write_occluded_replica(clean, occluded, seed=2)
    config = load_config("tiny", ["data.val_fraction=0.25", "data.test_identities=[6, 7]"])
    data = train.RunData(config, clean, occluded)

    def ids(samples):
        return {s.key: s.split_group for s in samples}

    train_ids, val_ids = set(ids(data.stage1_train).values()), set(ids(data.val_clean).values())
    assert train_ids.isdisjoint(val_ids) and len(train_ids | val_ids) == 6
    assert not (train_ids | val_ids) & {"id6", "id7"}  # held-out test identities unused
    assert set(ids(data.val_occluded).values()) == val_ids
    assert all(s.occluded for s in data.val_occluded + data.stage2_train)
    assert [s.key for s in data.stage2_train] == [s.key for s in data.stage1_train]
    assert len(data.stage1_train) == 3 * len(train_ids)


# --------------------------------------------------------------------------- stage 2


def test_stage2_target_is_eq7_of_each_crops_own_q_mirrored_included(tmp_path):
    """The P row of every sample comes from the q of the very (mirrored) crop trained on,
    with the data-set cluster frequencies f held fixed (catches rolled or misaligned rows
    and rows computed from the un-mirrored crop)."""
    from lechpe_model.network import build_model
    from training.augment import AugmentConfig
    from training.clustering import PSchedule
    from training.datasets import load_dataset
    from training.distributed import DistInfo
    from training.torch_data import FaceCropDataset, collate

    write_300wlp(str(tmp_path), 8, seed=6, size=64)
    samples = load_dataset(str(tmp_path)).samples
    torch.manual_seed(0)
    net = build_model({"backbone": "resnet18", "num_clusters": 3, "pretrained": False}).eval()
    mirror = AugmentConfig(flip_prob=1.0, blur_prob=0, resample_prob=0)
    crops = FaceCropDataset(samples, 64, train=True, augment=mirror, seed=1)
    batch = collate([crops[i] for i in range(len(samples))])
    with torch.no_grad():  # centroids at three un-mirrored crops: distinct, sharp q rows
        net.set_centroids(net.forward_train(batch["image"][:3].flip(-1)).latent)
    freq = torch.tensor([3.0, 1.0, 2.0])
    schedule = PSchedule("dataset")
    schedule.update(np.tile((freq / 8).numpy(), (8, 1)), 0)  # f = column sums of q
    torch.testing.assert_close(schedule.cluster_frequency, freq)
    module = train._LossForward(net, 1.0, DistInfo(), schedule)
    beta = 7.0
    with torch.no_grad():
        loss = module(batch["image"], batch["angles"], beta)
        q = net.forward_train(batch["image"]).q.double().numpy()
        q_unflipped = net.forward_train(batch["image"].flip(-1)).q.double().numpy()
    # eq. (7) by hand, row by row, with the fixed f
    w = q**2 / freq.double().numpy()
    p = w / w.sum(1, keepdims=True)
    kl = float(np.mean(np.sum(p * np.log(p / q), axis=1)))
    assert loss.kl.item() == pytest.approx(kl, rel=1e-4)
    assert loss.total.item() == pytest.approx(loss.angle.item() + beta * kl, rel=1e-4)
    # The alternatives differ: rows of the un-mirrored crops, or rows rolled by one.
    w0 = q_unflipped**2 / freq.double().numpy()
    p0 = w0 / w0.sum(1, keepdims=True)
    for wrong in (p0, np.roll(p, 1, axis=0)):
        assert abs(float(np.mean(np.sum(wrong * np.log(wrong / q), axis=1))) - kl) > 0.05 * kl


def test_stage2_uses_configured_beta_refreshes_p_and_trains_on_occluded(tmp_path, data):
    out = tmp_path / "run"
    _run(
        out,
        data,
        *("--set", "stage2.epochs=2", "--set", "stage2.beta=7", "--set", "data.max_samples=16"),
    )
    records = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["stage"] for r in records] == ["stage1", "stage2", "stage2"]
    # stage 1 sees only clean faces, stage 2 only occluded ones (clean_fraction 0)
    assert records[0]["occluded_share"] == 0.0
    assert [r["occluded_share"] for r in records[1:]] == [1.0, 1.0]
    for r in records[1:]:
        assert r["kl"] > 1e-4
        # eq. (9) with the configured beta (not 1, not 100)
        assert r["loss_total"] == pytest.approx(r["loss_angles"] + 7.0 * r["kl"], rel=1e-5)
    assert records[0]["loss_total"] == pytest.approx(records[0]["loss_angles"], rel=1e-9)
    # f from k-means (#1), refreshed at the start of epoch 2 (#2): 16 faces, batch 8
    _, state = load_training_state(str(out / "state.safetensors"))
    assert state["p_schedule"]["updates"] == 2
    assert state["p_schedule"]["last_update_step"] == 2


def test_training_margin_range_is_centred_on_the_test_margin(tmp_path, data):
    from training.augment import NO_AUGMENT
    from training.config import DEFAULTS, load_config
    from training.datasets import load_dataset
    from training.torch_data import FaceCropDataset

    for name in (None, "paper", "tiny", "default_model", "ablation_cpu"):
        cfg = load_config(name) if name else DEFAULTS
        lo, hi = cfg["data"]["train_margin"]
        assert (lo + hi) / 2 == pytest.approx(cfg["data"]["test_margin"]), name
        assert hi > lo
    samples = load_dataset(data[0]).samples
    ds = FaceCropDataset(samples, 32, train=True, augment=NO_AUGMENT, seed=0)
    margins = [ds[i]["margin"] for i in range(len(samples))]
    for epoch in (1, 2, 3):
        ds.set_epoch(epoch)
        margins += [ds[i]["margin"] for i in range(len(samples))]
    lo, hi = DEFAULTS["data"]["train_margin"]
    assert lo <= min(margins) and max(margins) <= hi
    assert np.mean(margins) == pytest.approx(DEFAULTS["data"]["test_margin"], abs=0.015)


def test_elbow_crops_with_the_runs_test_margin():
    from types import SimpleNamespace

    from lechpe_model.preprocessing import TEST_MARGIN
    from training.elbow import run_test_margin

    meta = SimpleNamespace(training_config={"data": {"test_margin": 0.4}})
    assert run_test_margin(meta) == 0.4
    assert run_test_margin(meta, 0.3) == 0.3
    assert run_test_margin(SimpleNamespace(training_config={})) == TEST_MARGIN
