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
