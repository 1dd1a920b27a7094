"""Training-state checkpoints for ``--resume``, without pickle.

One file, ``RUN_DIR/state.safetensors``, written atomically (temporary file in
the same folder, fsync, ``os.replace``) at the end of every epoch and, when
``train.checkpoint_every_steps`` is set, every N steps:

* tensors (safetensors): ``model.*`` (weights and buffers), ``optim.<i>.<key>``
  (Adam moments and step counts), ``rng.torch`` / ``rng.cuda.<i>`` (the torch
  generator states, uint8), ``cluster_frequency`` (the data-set cluster
  frequencies f of the stage-2 target, when held);
* everything else as JSON in the safetensors header under ``training_state``:
  stage, epoch, step within the epoch, global step, the optimiser's
  param_groups, the scheduler's ``state_dict``, Python and NumPy RNG states,
  the P schedule (mode, interval, step of the last update) and the config.

Nothing is unpickled when resuming. A SHA-256 over every tensor (name, dtype,
shape, bytes) and the JSON part is stored in the header (``state_sha256``) and
verified on resume; an unknown phase and non-finite weights or optimiser
moments are refused, each with an error naming the file. Temporary files left
by a killed run (``.state.*.tmp``) are removed before the next write.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import random
import tempfile
from typing import Any

import numpy as np
import torch

STATE_FILE = "state.safetensors"
STATE_KEY = "training_state"
CHECKSUM_KEY = "state_sha256"
#: 2: with the checksum (version 1 files cannot be verified and are refused).
STATE_VERSION = 2
#: The phases a run goes through, in order.
PHASES = ("stage1", "kmeans", "stage2", "done")
_TMP_PATTERN = ".state.*.tmp"

LOG = logging.getLogger(__name__)


class ResumeError(RuntimeError):
    """A training state cannot be used to resume."""


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimiser ``state_dict`` into tensors and JSON-able values."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    other: dict[str, dict[str, Any]] = {}
    for pid, values in sd["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value.detach().cpu().contiguous().clone()
            else:
                other.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "other": other}


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict
) -> None:
    """Inverse of :func:`optimizer_state`."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith("optim."):
            continue
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for pid, values in meta.get("other", {}).items():
        state.setdefault(int(pid), {}).update(values)
    groups = meta["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """Torch (CPU + CUDA), Python and NumPy global generator states."""
    tensors = {"rng.torch": torch.get_rng_state().clone()}
    if torch.cuda.is_available():
        for i, st in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = st.clone()
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)  # noqa: NPY002 - MT19937: {"key": uint32 array, "pos": int}
    np_state = {
        "bit_generator": np_state["bit_generator"],
        "state": {"key": np_state["state"]["key"].tolist(), "pos": int(np_state["state"]["pos"])},
        "has_gauss": int(np_state["has_gauss"]),
        "gauss": float(np_state["gauss"]),
    }
    return tensors, {
        "python": [version, list(internal), gauss],
        "numpy": np_state,
    }


def restore_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
        if states:
            torch.cuda.set_rng_state_all(states)
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    np_meta = meta["numpy"]
    np.random.set_state(  # noqa: NPY002 - the global state third-party code may use
        {
            "bit_generator": np_meta["bit_generator"],
            "state": {
                "key": np.asarray(np_meta["state"]["key"], dtype=np.uint32),
                "pos": int(np_meta["state"]["pos"]),
            },
            "has_gauss": int(np_meta["has_gauss"]),
            "gauss": float(np_meta["gauss"]),
        }
    )


def state_checksum(tensors: dict[str, torch.Tensor], state_json: str) -> str:
    """SHA-256 over every tensor (sorted by name: name, dtype, shape, bytes) and the JSON."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(
            tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        )
    digest.update(state_json.encode())
    return digest.hexdigest()


def remove_stale_temporaries(folder: str) -> list[str]:
    """Delete temporary state files a killed run left in ``folder``; returns their paths."""
    removed = []
    for path in glob.glob(os.path.join(folder, _TMP_PATTERN)):
        try:
            os.unlink(path)
            removed.append(path)
        except OSError:
            pass
    if removed:
        LOG.info("removed %d stale temporary state file(s) in %s", len(removed), folder)
    return removed


def save_training_state(path: str, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    """Write tensors + JSON state (+ checksum) to ``path`` atomically.

    Raises:
        ValueError: an unknown phase (a programming error: never written).
    """
    from safetensors.torch import save_file

    if state.get("phase") not in PHASES:
        raise ValueError(f"training state phase {state.get('phase')!r} is not one of {PHASES}")
    payload = json.dumps({"version": STATE_VERSION, **state}, sort_keys=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    header = {STATE_KEY: payload, CHECKSUM_KEY: state_checksum(tensors, payload)}
    folder = os.path.dirname(os.path.abspath(path))
    remove_stale_temporaries(folder)
    fd, tmp = tempfile.mkstemp(prefix=".state.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=header)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_training_state(path: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a state written by :func:`save_training_state`.

    Raises:
        ResumeError: naming ``path``: missing file, unreadable file or header,
            unknown version, checksum mismatch (corruption), unknown phase,
            non-finite weights or optimiser values.
    """
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise ResumeError(f"no training state to resume from: {path} does not exist")
    try:
        with safe_open(path, framework="pt", device="cpu") as handle:
            meta = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as exc:
        raise ResumeError(f"{path}: unreadable training state: {exc}") from exc
    if STATE_KEY not in meta:
        raise ResumeError(f"{path}: not a training state (no {STATE_KEY!r} in the header)")
    try:
        state = json.loads(meta[STATE_KEY])
        if not isinstance(state, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        raise ResumeError(f"{path}: the training state's header is corrupt ({exc})") from exc
    if state.get("version") != STATE_VERSION:
        raise ResumeError(
            f"{path}: training state version {state.get('version')} unsupported (this version "
            f"writes {STATE_VERSION}, with a checksum); start the run again with --overwrite"
        )
    expected = meta.get(CHECKSUM_KEY)
    if expected != state_checksum(tensors, meta[STATE_KEY]):
        raise ResumeError(
            f"{path}: checksum mismatch, the training state is corrupt (disk or copy error); "
            "restore a copy or start again with --overwrite"
        )
    if state.get("phase") not in PHASES:
        raise ResumeError(
            f"{path}: unknown phase {state.get('phase')!r} (expected one of {', '.join(PHASES)})"
        )
    for name, tensor in tensors.items():
        if name.startswith(("model.", "optim.")) and tensor.is_floating_point():
            if not bool(torch.isfinite(tensor).all()):
                raise ResumeError(
                    f"{path}: tensor {name} holds NaN or infinite values (the run diverged "
                    "before this state was saved); resume from an earlier copy or lower the "
                    "learning rate and start again with --overwrite"
                )
    return tensors, state


def export_model_from_state(state_path: str, out_path: str) -> dict[str, Any]:
    """Write the weights held in a training state as a model checkpoint (the node's format).

    Useful to evaluate an interrupted run.  Returns the state's JSON part
    (phase, epoch, step ...).
    """
    from lechpe_model.network import build_model
    from training.train import save_model

    tensors, state = load_training_state(state_path)
    config = state["config"]
    net = build_model(
        {
            "backbone": config["model"]["backbone"],
            "num_clusters": int(config["model"]["num_clusters"]),
            "pretrained": False,
        }
    )
    net.load_state_dict(
        {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    )
    # Provenance of the exported weights, stored with the training config.
    config = {
        **config,
        "exported_from_state": {k: state[k] for k in ("phase", "epoch", "global_step")},
    }
    save_model(out_path, net, config)
    return state
