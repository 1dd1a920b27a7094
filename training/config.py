"""Training configuration: defaults <- YAML file <- ``--set dotted.key=value`` overrides.

The configuration is a plain nested dict (JSON-serialisable, stored in every
checkpoint).  Every key must exist in :data:`DEFAULTS`; a typo is an error that
names the closest valid key.  Values given with ``--set`` are parsed as YAML
(``--set stage1.epochs=2``, ``--set optim.betas=[0.9,0.99]``,
``--set data.max_samples=null``).  See docs/TRAINING.md for every key.
"""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from lechpe_model.preprocessing import TEST_MARGIN, TRAIN_MARGIN_RANGE

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "model": {
        "backbone": "resnet50",
        "pretrained": True,  # ImageNet weights (torchvision); see lechpe_model.network
        "num_clusters": 10,
        "input_size": 224,
        # BatchNorm layers in eval mode (running statistics): a fine-tuning
        # option, and what makes DDP bit-comparable to one process on CPU.
        "freeze_bn": False,
        "sync_bn": False,  # SyncBatchNorm across DDP processes (CUDA)
        # Train only the last N encoder stages (None: all). CPU speed-up for small runs.
        "trainable_blocks": None,
    },
    "data": {
        "format": "auto",  # training.datasets.FORMATS
        "occluded_format": "auto",
        "list_file": None,  # Pandora: frames to use
        "channel_order": "bgr",  # BIWI .npz images
        "val_fraction": 0.2,  # the paper's 80/20 split (of split groups: photo/subject/identity)
        # Explicit held-out groups (names as PoseSample.split_group, e.g. "id12",
        # "AFW_134212_1", "subject:07") or identity ranges [first, last] of "id<N>"
        # groups. val_*: the validation set (val_fraction then unused);
        # test_*: used for neither training nor validation.
        # Seed of the train/validation split (null: the run's seed); the ablation
        # keeps it fixed while the stage-2 seed varies.
        "split_seed": None,
        "val_groups": None,
        "val_identities": None,
        "test_groups": None,
        "test_identities": None,
        "max_samples": None,  # use only the first N keys of the split order (quick runs)
        "angle_limit": 99.0,
        "train_margin": list(TRAIN_MARGIN_RANGE),
        "test_margin": TEST_MARGIN,
        # JSON of `python -m training.detector_boxes measure`: training crops drawn like
        # the deployed detector's (centre offset and scale by |yaw| range); null: landmark box.
        "detector_box_stats": None,
        "detector_box_prob": 1.0,  # share of training crops drawn from those statistics
        "num_workers": 2,
    },
    "augment": {
        "flip_prob": 0.5,
        "blur_prob": 0.2,
        "blur_sigma": [0.5, 2.0],
        "resample_prob": 0.2,
        "resample_scale": [0.25, 0.75],
        # In-plane rotation, labels turned exactly (conventions.rotate_in_image_plane).
        "rotate_prob": 0.0,
        "rotate_max_deg": 30.0,
    },
    "optim": {
        "name": "adam",  # adam (the paper) | sgd (momentum 0.9)
        "lr": 1.0e-5,
        "eps": 1.0e-8,
        "betas": [0.9, 0.999],
        "weight_decay": 0.0,
        # Per-epoch schedule: "step" (x gamma every step_epochs), "cosine" or "none".
        "schedule": "step",
        "step_epochs": 10,
        "gamma": 0.5,
    },
    "loss": {
        "alpha": 1.0,
        # KL(P||Q) over a batch: "batchmean" (sum / N) or "sum" (eq. 8 as printed);
        # the same loss for beta_batchmean = N * beta_sum (docs/MODEL.md).
        "kl_reduction": "batchmean",
    },
    "stage1": {"epochs": 25, "batch_size": 128, "lr": None},
    "kmeans": {
        "n_init": 10,
        "max_iter": 300,
        # Latents k-means runs on: "stage2" (the stage-2 training images, i.e. the
        # data the clustering loss acts on, as in DEC), "clean" or "both".
        "data": "stage2",
    },
    "stage2": {
        "epochs": 25,
        "batch_size": 128,
        "lr": None,
        "beta": 100.0,
        "clean_fraction": 0.0,  # share of stage-2 training faces shown clean instead of occluded
        # Target P: "dataset" (DEC: Q over the whole training set every
        # p_update_interval steps; 0 = at the start of every epoch) or "batch".
        "p_update": "dataset",
        "p_update_interval": 0,
    },
    "train": {
        "device": "auto",  # auto | cpu | cuda | cuda:N
        "amp": True,  # CUDA only (float16 autocast + loss scaling)
        "cpu_bf16": False,  # bfloat16 autocast on the CPU (AVX512-BF16 / AMX)
        # CUDA: deterministic cuDNN/cuBLAS kernels, so a resumed run equals an
        # uninterrupted one bit for bit (a few % slower); the CPU path always is
        "deterministic": True,
        "threads": None,  # torch CPU threads per process (None: torch default)
        "checkpoint_every_steps": 0,  # besides every epoch; 0 = epochs only
        "max_steps": None,  # stop after this many optimiser steps (then --resume)
        "log_every_steps": 10,
        "progress": "auto",  # auto (TTY only) | true | false
        "eval_batch_size": 128,
        "validate": True,
    },
}


class ConfigError(ValueError):
    """A configuration key or value is invalid."""


def _flat_keys(tree: Mapping, prefix: str = "") -> list[str]:
    keys = []
    for k, v in tree.items():
        path = f"{prefix}{k}"
        keys.append(path)
        if isinstance(v, Mapping):
            keys.extend(_flat_keys(v, path + "."))
    return keys


def _unknown(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, _flat_keys(DEFAULTS), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint}")


def _merge(base: dict, update: Mapping, prefix: str = "") -> None:
    for key, value in update.items():
        path = f"{prefix}{key}"
        if key not in base:
            raise _unknown(path)
        if isinstance(base[key], dict):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key {path!r} must be a mapping, got {value!r}")
            _merge(base[key], value, path + ".")
        else:
            base[key] = value


def set_dotted(config: dict, dotted: str, value: Any) -> None:
    """Set ``config["a"]["b"] = value`` for ``dotted == "a.b"`` (key must exist)."""
    parts = dotted.split(".")
    node = config
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            raise _unknown(dotted)
        if i == len(parts) - 1:
            if isinstance(node[part], dict):
                raise ConfigError(f"{dotted!r} is a section; set one of its keys")
            node[part] = value
        else:
            node = node[part]


def parse_override(text: str) -> tuple[str, Any]:
    """``"a.b=VALUE"`` -> ("a.b", YAML-parsed VALUE)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.subkey=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {exc}") from exc
    return key.strip(), value


def resolve_config_path(path: str) -> str:
    """A path, or the name of a shipped config (``paper``, ``tiny``, ``default_model``)."""
    if os.path.isfile(path):
        return path
    shipped = os.path.join(CONFIG_DIR, path if path.endswith(".yaml") else path + ".yaml")
    if os.path.isfile(shipped):
        return shipped
    raise ConfigError(f"config file not found: {path} (shipped configs are in {CONFIG_DIR})")


def load_config(path: str | None = None, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Defaults, updated by the YAML file at ``path`` and then by ``overrides``."""
    config = copy.deepcopy(DEFAULTS)
    if path:
        with open(resolve_config_path(path), encoding="utf-8") as handle:
            loaded = yaml.safe_load(handle) or {}
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"{path}: top level must be a mapping")
        _merge(config, loaded)
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(config, key, value)
    validate(config)
    return config


def validate(config: Mapping[str, Any]) -> None:
    """Check value ranges that would otherwise fail late in a run."""
    stage2 = config["stage2"]
    if stage2["p_update"] not in ("dataset", "batch"):
        raise ConfigError(
            f"stage2.p_update must be 'dataset' or 'batch', got {stage2['p_update']!r}"
        )
    if config["loss"]["kl_reduction"] not in ("batchmean", "sum"):
        raise ConfigError(
            f"loss.kl_reduction must be 'batchmean' or 'sum', got "
            f"{config['loss']['kl_reduction']!r}"
        )
    for key in ("val_identities", "test_identities"):
        value = config["data"][key]
        if value is not None and (not isinstance(value, (list, tuple)) or len(value) != 2):
            raise ConfigError(f"data.{key} must be [first, last] or null, got {value!r}")
    if config["kmeans"]["data"] not in ("stage2", "clean", "both"):
        raise ConfigError("kmeans.data must be 'stage2', 'clean' or 'both'")
    if config["optim"]["name"] not in ("adam", "sgd"):
        raise ConfigError("optim.name must be 'adam' or 'sgd'")
    if config["optim"]["schedule"] not in ("step", "cosine", "none"):
        raise ConfigError("optim.schedule must be 'step', 'cosine' or 'none'")
    if not 0.0 <= float(config["data"]["val_fraction"]) < 1.0:
        raise ConfigError("data.val_fraction must be in [0, 1)")
    if not 0.0 <= float(config["data"]["detector_box_prob"]) <= 1.0:
        raise ConfigError("data.detector_box_prob must be in [0, 1]")
    if not 0.0 <= float(stage2["clean_fraction"]) <= 1.0:
        raise ConfigError("stage2.clean_fraction must be in [0, 1]")
    for stage in ("stage1", "stage2"):
        if int(config[stage]["batch_size"]) < 1 or int(config[stage]["epochs"]) < 0:
            raise ConfigError(f"{stage}.batch_size must be >= 1 and {stage}.epochs >= 0")
    if int(config["model"]["input_size"]) < 32:
        raise ConfigError("model.input_size must be >= 32 pixels")


def dump_config(config: Mapping[str, Any], path: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(dict(config), handle, sort_keys=False)
