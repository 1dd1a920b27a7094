"""Safe training resume (issue 13, item 6): checksum, phase, run folder, CLI errors,
stale temporary files, non-finite weights. Real states written by a real (tiny) run."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from training_fixtures import write_300wlp

from training import train
from training.checkpointing import (
    CHECKSUM_KEY,
    STATE_KEY,
    ResumeError,
    load_training_state,
    save_training_state,
)

TINY = ["--config", "tiny", "--set", "train.threads=1", "--no-progress"]
SETTINGS = ["--set", "stage1.epochs=2", "--set", "data.max_samples=16"]


def _argv(data, out, *extra):
    return TINY + ["--data", str(data), "--out", str(out), *SETTINGS, *extra]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """An interrupted run: state after 1 step of stage 1."""
    root = tmp_path_factory.mktemp("resume_safety")
    data = root / "data"
    write_300wlp(str(data), 16, seed=3, size=80)
    out = root / "run"
    assert train.main(_argv(data, out, "--set", "train.max_steps=1")) == 0
    return data, out


@pytest.fixture
def copy(run, tmp_path):
    data, out = run
    target = tmp_path / "run"
    shutil.copytree(out, target)
    return data, target


def _rewrite(path, tensors=None, state=None):
    """Write a state through the real writer (valid checksum) with edits."""
    old_tensors, old_state = load_training_state(str(path))
    old_state.pop("version")
    save_training_state(str(path), tensors or old_tensors, state or old_state)


def _one_line_error(capsys, expected: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("lechpe-train: error: ")]
    assert len(lines) == 1 and expected in lines[0], err
    return lines[0]


def test_flipped_bit_in_a_weight_is_refused_naming_the_file(copy, capsys):
    data, out = copy
    state = out / "state.safetensors"
    with safe_open(str(state), framework="pt") as handle:
        header_len = int.from_bytes(state.read_bytes()[:8], "little")
        name = next(k for k in handle.keys() if k.startswith("model.") and "weight" in k)
    raw = bytearray(state.read_bytes())
    meta = json.loads(raw[8 : 8 + header_len])
    begin = 8 + header_len + meta[name]["data_offsets"][0]
    raw[begin + 1] ^= 0x40  # a high exponent bit of the first weight
    state.write_bytes(bytes(raw))
    with pytest.raises(ResumeError, match="checksum mismatch"):
        load_training_state(str(state))
    assert train.main(_argv(data, out, "--resume")) == 2
    line = _one_line_error(capsys, "checksum mismatch, the training state is corrupt")
    assert str(state) in line
    assert not (out / "model.safetensors").exists()


def test_unknown_phase_is_refused(copy, capsys):
    data, out = copy
    path = out / "state.safetensors"
    _, state = load_training_state(str(path))
    tensors, _ = load_training_state(str(path))
    state.pop("version")
    with pytest.raises(ValueError, match="phase 'stage3' is not one of"):
        save_training_state(str(path), tensors, {**state, "phase": "stage3"})
    # A file with a valid checksum but an unknown phase (written by other code).
    payload = json.dumps({"version": 2, **state, "phase": "stage3"}, sort_keys=True)
    from training.checkpointing import state_checksum

    save_file(
        tensors,
        str(path),
        metadata={STATE_KEY: payload, CHECKSUM_KEY: state_checksum(tensors, payload)},
    )
    assert train.main(_argv(data, out, "--resume")) == 2
    _one_line_error(capsys, "unknown phase 'stage3' (expected one of stage1, kmeans, stage2, done)")


def test_non_finite_weights_are_refused(copy, capsys):
    data, out = copy
    path = out / "state.safetensors"
    tensors, state = load_training_state(str(path))
    name = next(k for k in sorted(tensors) if k.startswith("model.") and k.endswith("weight"))
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("nan")
    state.pop("version")
    save_training_state(str(path), tensors, state)
    assert train.main(_argv(data, out, "--resume")) == 2
    _one_line_error(capsys, f"tensor {name} holds NaN or infinite values")


def test_corrupt_header_json_is_one_line(copy, capsys):
    data, out = copy
    path = out / "state.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={STATE_KEY: "{not json"})
    assert train.main(_argv(data, out, "--resume")) == 2
    _one_line_error(capsys, "the training state's header is corrupt")


def test_existing_run_folder_needs_resume_or_overwrite(copy, capsys):
    data, out = copy
    before = (out / "state.safetensors").read_bytes()
    assert train.main(_argv(data, out)) == 2
    _one_line_error(capsys, "already holds a run (state.safetensors): add --resume")
    assert (out / "state.safetensors").read_bytes() == before  # nothing touched
    assert train.main(_argv(data, out, "--resume", "--overwrite")) == 2
    _one_line_error(capsys, "--resume and --overwrite exclude each other")
    assert train.main(_argv(data, out, "--overwrite", "--set", "train.max_steps=1")) == 0
    _, state = load_training_state(str(out / "state.safetensors"))
    assert (state["phase"], state["global_step"]) == ("stage1", 1)  # started over


def test_cli_errors_without_tracebacks(tmp_path, run, capsys):
    data, _ = run
    assert train.main(_argv(data, tmp_path / "new", "--resume")) == 2
    _one_line_error(capsys, "--resume: no state.safetensors in")
    assert train.main(_argv(data, tmp_path / "new2", "--set", "nosuch.key=1")) == 2
    _one_line_error(capsys, "nosuch")


def test_stale_temporary_files_are_removed(copy):
    data, out = copy
    stale = out / ".state.killed123.tmp"
    stale.write_bytes(b"x" * 1000)  # what kill -9 during a save leaves
    assert train.main(_argv(data, out, "--resume", "--set", "train.max_steps=2")) == 0
    assert not stale.exists()
    assert list(out.glob(".state.*.tmp")) == []
    _, state = load_training_state(str(out / "state.safetensors"))
    assert state["global_step"] == 2
