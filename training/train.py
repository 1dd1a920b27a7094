"""``lechpe-train``: the paper's two-stage training (section III-B).

::

    lechpe-train --config paper --data 300W_LP --occluded-data 300W_LP_occ --out runs/paper
    torchrun --nproc_per_node 4 -m training.train --config paper ...   # DDP
    lechpe-train ... --resume                                          # continue exactly

1. **Stage 1**: multi-loss only (beta = 0) on the clean training split.
   Writes ``RUN_DIR/stage1.safetensors``.
2. **k-means**: latents of the whole (stage-2) training set -> K centroids
   (scikit-learn, fixed seed); ``RUN_DIR/kmeans.json`` records the inertia.
3. **Stage 2**: multi-loss + beta * KL(P || Q) on the occluded replica
   (optionally mixed with clean faces, ``stage2.clean_fraction``), P from
   ``training.clustering.PSchedule``.  Writes ``RUN_DIR/model.safetensors``
   (``lechpe_model.checkpoint`` format: what the node loads).

Every epoch (and every ``train.checkpoint_every_steps`` steps) the complete
training state goes to ``RUN_DIR/state.safetensors`` (see
``training.checkpointing``); ``--resume`` continues from it with the same
batches, augmentations, optimiser, scheduler, centroids and P.

The train/validation split (``data.val_fraction``, 80/20 in the paper) is
drawn over sample *groups* (source photo, subject, identity:
``PoseSample.split_group``) with the run's seed, or given explicitly
(``data.val_groups`` / ``data.val_identities``; ``data.test_groups`` /
``data.test_identities`` are never used); the occluded replica uses the same
keys, so validation faces - and their other views - are never trained on.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from lechpe_model.checkpoint import load_checkpoint, save_checkpoint
from lechpe_model.losses import soft_assignment, total_loss
from lechpe_model.network import build_model
from training.augment import AugmentConfig
from training.checkpointing import (
    STATE_FILE,
    ResumeError,
    load_optimizer_state,
    load_training_state,
    optimizer_state,
    remove_stale_temporaries,
    restore_rng_state,
    rng_state,
    save_training_state,
)
from training.clustering import PSchedule, kmeans_centroids, mae, run_inference
from training.config import ConfigError, dump_config, load_config
from training.datasets import PoseDataset, PoseSample, load_dataset
from training.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    broadcast_tensor,
    cleanup_distributed,
    init_distributed,
    seed_everything,
    setup_logging,
    use_deterministic_kernels,
)
from training.torch_data import EpochBatchSampler, FaceCropDataset, collate

LOG = logging.getLogger("training.train")

#: Seed offsets so stage 1 and stage 2 draw different orders/augmentations.
_STAGE_SEED = {"stage1": 0, "stage2": 1_000_003}


# --------------------------------------------------------------------------- data split


def _identity_of(group: str) -> int | None:
    """The integer of an ``id<N>`` group (synthetic identities), else None."""
    if group.startswith("id") and group[2:].lstrip("-").isdigit():
        return int(group[2:])
    return None


def group_selector(names: Sequence[str] | None, identities: Sequence[int] | None):
    """Predicate on group names: listed names, or ``id<N>`` with ``lo <= N <= hi``."""
    listed = {str(n) for n in names or ()}
    if identities is not None and len(identities) != 2:
        raise ValueError(f"an identity range is [first, last], got {identities!r}")
    lo, hi = (int(identities[0]), int(identities[1])) if identities is not None else (1, 0)

    def selected(group: str) -> bool:
        ident = _identity_of(group)
        return group in listed or (ident is not None and lo <= ident <= hi)

    return selected


class Split(NamedTuple):
    """A grouped split: keys per side and the groups behind them."""

    train: list[str]  #: permuted group order, sorted keys inside a group
    val: list[str]  #: sorted
    train_groups: list[str]
    val_groups: list[str]
    held_out: list[str]  #: keys of test groups, used for neither side


def split_by_group(
    samples: Sequence[PoseSample],
    val_fraction: float,
    seed: int,
    val_groups: Sequence[str] | None = None,
    val_identities: Sequence[int] | None = None,
    test_groups: Sequence[str] | None = None,
    test_identities: Sequence[int] | None = None,
) -> Split:
    """Seeded train/validation split that never puts one group on both sides.

    A group (``PoseSample.split_group``: source photo, subject, identity) goes
    wholly to one side.  Test groups (``test_groups`` / ``test_identities``)
    are left out of both.  With explicit ``val_groups`` / ``val_identities``
    those groups are the validation set; otherwise ``val_fraction`` of the
    remaining groups are drawn with ``seed``.
    """
    by_group: dict[str, list[str]] = {}
    for sample in samples:
        by_group.setdefault(sample.split_group, []).append(sample.key)
    is_test = group_selector(test_groups, test_identities)
    groups = sorted(g for g in by_group if not is_test(g))
    held_out = sorted(k for g in by_group if is_test(g) for k in by_group[g])
    perm = [groups[i] for i in np.random.default_rng(seed).permutation(len(groups))]
    if val_groups or val_identities is not None:
        is_val = group_selector(val_groups, val_identities)
        val_g = [g for g in perm if is_val(g)]
        train_g = [g for g in perm if not is_val(g)]
    else:
        n_val = int(round(val_fraction * len(groups)))
        val_g, train_g = perm[:n_val], perm[n_val:]
    train = [k for g in train_g for k in sorted(set(by_group[g]))]
    val = sorted(k for g in val_g for k in set(by_group[g]))
    return Split(train, val, train_g, sorted(val_g), held_out)


class RunData:
    """The sample lists of each phase of a run."""

    def __init__(self, config: dict, data_dir: str, occluded_dir: str | None) -> None:
        dcfg = config["data"]
        seed = int(config["seed"])
        clean = load_dataset(
            data_dir,
            dcfg["format"],
            float(dcfg["angle_limit"]),
            list_file=dcfg["list_file"],
            channel_order=dcfg["channel_order"],
        )
        LOG.info("%s: %d samples; %s", data_dir, len(clean), clean.report.summary())
        self.reports = [clean.report]
        occluded: PoseDataset | None = None
        if occluded_dir:
            occluded = load_dataset(
                occluded_dir,
                dcfg["occluded_format"],
                float(dcfg["angle_limit"]),
                occluded=True,
                list_file=dcfg["list_file"],
                channel_order=dcfg["channel_order"],
            )
            LOG.info("%s: %d samples; %s", occluded_dir, len(occluded), occluded.report.summary())
            self.reports.append(occluded.report)
        if len(clean) == 0:
            raise SystemExit(f"no usable sample in {data_dir}: {clean.report.summary()}")
        by_key = {s.key: s for s in clean.samples}
        split_seed = seed if dcfg["split_seed"] is None else int(dcfg["split_seed"])
        split = split_by_group(
            clean.samples,
            float(dcfg["val_fraction"]),
            split_seed,
            val_groups=dcfg["val_groups"],
            val_identities=dcfg["val_identities"],
            test_groups=dcfg["test_groups"],
            test_identities=dcfg["test_identities"],
        )
        self.split = split
        train_keys, val_keys = split.train, split.val
        if len(split.train_groups) + len(split.val_groups) == len(train_keys) + len(val_keys):
            LOG.warning(
                "every sample is its own split group: the split is by image, not by "
                "person or source photo (see docs/TRAINING.md, 'Splits')"
            )
        if dcfg["max_samples"]:
            n = int(dcfg["max_samples"])
            train_keys = train_keys[:n]
            val_keys = val_keys[: max(1, int(round(n * float(dcfg["val_fraction"]))))]
        self.stage1_train = [by_key[k] for k in train_keys]
        self.val_clean = [by_key[k] for k in val_keys]
        self.val_occluded: list[PoseSample] = []
        if occluded is not None:
            occ_by_key = {s.key: s for s in occluded.samples}
            missing = [k for k in train_keys if k not in occ_by_key]
            if missing:
                LOG.warning(
                    "%d training faces have no occluded replica (e.g. %s); stage 2 uses the clean image",
                    len(missing),
                    missing[0],
                )
            rng = np.random.default_rng([seed, 7])
            clean_pick = rng.random(len(train_keys)) < float(config["stage2"]["clean_fraction"])
            self.stage2_train = [
                by_key[k] if (pick or k not in occ_by_key) else occ_by_key[k]
                for k, pick in zip(train_keys, clean_pick, strict=True)
            ]
            self.val_occluded = [occ_by_key[k] for k in val_keys if k in occ_by_key]
        else:
            LOG.warning("no --occluded-data: stage 2 trains on the clean images")
            self.stage2_train = list(self.stage1_train)
        LOG.info(
            "split by group: %d train (%d groups) / %d val clean (%d groups) / %d val "
            "occluded; %d held-out test faces unused (seed %d)",
            len(self.stage1_train),
            len(split.train_groups),
            len(self.val_clean),
            len(split.val_groups),
            len(self.val_occluded),
            len(split.held_out),
            seed,
        )


# --------------------------------------------------------------------------- model helpers


class _LossForward(nn.Module):
    """Forward + loss in one module, so DDP sees every parameter use in ``forward``.

    The stage-2 target P is computed here from the q of the very crops of the
    batch (``PSchedule.target``), so it always belongs to what is trained on.
    """

    def __init__(
        self,
        net: nn.Module,
        alpha: float,
        info: DistInfo,
        p_schedule: PSchedule | None = None,
        kl_reduction: str = "batchmean",
    ) -> None:
        super().__init__()
        self.net = net
        self.alpha = float(alpha)
        self.info = info
        self.p_schedule = p_schedule or PSchedule("batch")
        self.kl_reduction = kl_reduction
        # DDP averages gradients over ranks: a per-rank *sum* over N/W samples
        # must count W times to be the sum over the global batch.
        self.kl_scale = float(info.world_size) if kl_reduction == "sum" else 1.0

    def forward(self, x: torch.Tensor, target: torch.Tensor, beta: float):
        out = self.net.forward_train(x)
        p = self.p_schedule.target(out.q.float(), self.info) if beta > 0 else None
        return total_loss(
            out.logits.float(),
            out.latent.float(),
            self.net.centroids.float(),
            target,
            alpha=self.alpha,
            beta=beta * self.kl_scale,
            p=p,
            bin_centers=self.net.bin_centers,
            bin_width=self.net.bin_width,
            kl_reduction=self.kl_reduction,
        )


def encoder_blocks(net: nn.Module) -> list[nn.Module]:
    """The encoder's stages in input-to-output order (the units ``trainable_blocks`` counts)."""
    encoder = net.encoder
    if hasattr(encoder, "features"):  # MobileNet V2 / V3
        return list(encoder.features.children())
    return [
        encoder.conv1,
        encoder.bn1,
        encoder.layer1,
        encoder.layer2,
        encoder.layer3,
        encoder.layer4,
    ]


def freeze_early_blocks(net: nn.Module, trainable_blocks: int | None) -> list[nn.Module]:
    """Freeze all but the last ``trainable_blocks`` encoder stages (None: train everything).

    Frozen stages keep their (ImageNet) weights and BatchNorm statistics; no
    gradient flows through them, which makes CPU training several times faster.
    Returns the frozen modules (kept in eval mode by :func:`set_train_mode`).
    """
    if trainable_blocks is None:
        return []
    blocks = encoder_blocks(net)
    frozen = blocks[: max(0, len(blocks) - int(trainable_blocks))]
    for module in frozen:
        module.requires_grad_(False)
    return frozen


def save_model(path: str, net: nn.Module, config: dict) -> None:
    """``lechpe_model.checkpoint.save_checkpoint`` with the training input size recorded."""
    save_checkpoint(path, net, config, input_size=int(config["model"]["input_size"]))


def set_train_mode(net: nn.Module, freeze_bn: bool, frozen: Sequence[nn.Module] = ()) -> None:
    """``train()``, with BatchNorm layers (``freeze_bn``) and frozen stages in eval mode."""
    net.train()
    if freeze_bn:
        for module in net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    for module in frozen:
        module.eval()


def make_optimizer(params, config: dict, lr: float) -> torch.optim.Optimizer:
    ocfg = config["optim"]
    if ocfg["name"] == "sgd":
        # Plain SGD (momentum 0.9): no per-weight normalisation, so rounding noise in
        # near-zero gradients is not amplified (used by the DDP equivalence test).
        return torch.optim.SGD(
            params, lr=lr, momentum=0.9, weight_decay=float(ocfg["weight_decay"])
        )
    return torch.optim.Adam(
        params,
        lr=lr,
        betas=tuple(float(b) for b in ocfg["betas"]),
        eps=float(ocfg["eps"]),
        weight_decay=float(ocfg["weight_decay"]),
    )


def make_scheduler(optimizer, config: dict, epochs: int):
    ocfg = config["optim"]
    if ocfg["schedule"] == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=max(1, int(ocfg["step_epochs"])), gamma=float(ocfg["gamma"])
        )
    if ocfg["schedule"] == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def _scheduler_state(scheduler) -> dict:
    return {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}


#: Keys that may change between an interrupted run and its resumption without notice.
_RESUME_FREE_KEYS = {"train.max_steps", "train.progress", "train.threads", "data.num_workers"}


def _config_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _config_differences(a, b, path + ".")
        elif a != b and path not in _RESUME_FREE_KEYS:
            diffs.append(f"{path}: {a!r} -> {b!r}")
    return diffs


def _progress_enabled(config: dict) -> bool:
    value = config["train"]["progress"]
    if value == "auto":
        return sys.stderr.isatty()
    return bool(value)


# --------------------------------------------------------------------------- the trainer


class Trainer:
    """Runs stage 1 -> k-means -> stage 2 with checkpoints (see the module docstring)."""

    def __init__(self, config: dict, args: argparse.Namespace, info: DistInfo) -> None:
        self.config = config
        self.args = args
        self.info = info
        self.out = args.out
        self.seed = int(config["seed"])
        mcfg = config["model"]
        self.input_size = int(mcfg["input_size"])
        self.freeze_bn = bool(mcfg["freeze_bn"])
        self.amp = bool(config["train"]["amp"]) and info.device.type == "cuda"
        # bf16 autocast on the CPU (no loss scaling needed; AVX512-BF16 / AMX CPUs).
        self.cpu_bf16 = bool(config["train"]["cpu_bf16"]) and info.device.type == "cpu"
        self.progress = _progress_enabled(config) and info.is_main
        self.data = RunData(config, args.data, args.occluded_data)
        seed_everything(self.seed)
        use_deterministic_kernels(info.device, bool(config["train"]["deterministic"]))
        self.net = build_model(
            {
                "backbone": mcfg["backbone"],
                "num_clusters": int(mcfg["num_clusters"]),
                "pretrained": bool(mcfg["pretrained"]),
            }
        )
        if mcfg["sync_bn"] and info.distributed:
            self.net = nn.SyncBatchNorm.convert_sync_batchnorm(self.net)
        self.frozen = freeze_early_blocks(self.net, mcfg["trainable_blocks"])
        self.net.to(info.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.p_schedule = PSchedule(
            config["stage2"]["p_update"], config["stage2"]["p_update_interval"]
        )
        self.state: dict[str, Any] = {
            "phase": "stage1",
            "epoch": 0,
            "step_in_epoch": 0,
            "global_step": 0,
            "stage_step": 0,
        }
        self.optimizer = None
        self.scheduler = None
        self.rotation_rejected = 0
        self.occluded_seen = 0
        self._cpu0 = 0.0
        self.box_jitter = None  # detector-like training boxes (data.detector_box_stats)
        if config["data"]["detector_box_stats"]:
            from training.detector_boxes import DetectorBoxSampler

            self.box_jitter = DetectorBoxSampler.from_json(
                config["data"]["detector_box_stats"], config["data"]["detector_box_prob"]
            )
        self.bad_items: set[str] = set()
        self.writer = None
        if info.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(os.path.join(self.out, "tb"))

    # ------------------------------------------------------------------ datasets

    def _train_dataset(self, stage: str) -> FaceCropDataset:
        samples = self.data.stage1_train if stage == "stage1" else self.data.stage2_train
        dcfg = self.config["data"]
        return FaceCropDataset(
            samples,
            self.input_size,
            train=True,
            augment=AugmentConfig.from_dict(self.config["augment"]),
            margin_range=tuple(dcfg["train_margin"]),
            test_margin=float(dcfg["test_margin"]),
            seed=self.seed + _STAGE_SEED[stage],
            angle_limit=float(dcfg["angle_limit"]),
            box_jitter=self.box_jitter,
        )

    def _eval_dataset(self, samples: list[PoseSample]) -> FaceCropDataset:
        return FaceCropDataset(
            samples,
            self.input_size,
            train=False,
            test_margin=float(self.config["data"]["test_margin"]),
        )

    def _infer(self, samples: list[PoseSample], desc: str) -> dict[str, np.ndarray]:
        return run_inference(
            self.net,
            self._eval_dataset(samples),
            self.info,
            batch_size=int(self.config["train"]["eval_batch_size"]),
            num_workers=int(self.config["data"]["num_workers"]),
            amp=self.amp,
            progress=self.progress,
            desc=desc,
            cpu_bf16=self.cpu_bf16,
        )

    # ------------------------------------------------------------------ state

    def _state_path(self) -> str:
        return os.path.join(self.out, STATE_FILE)

    def save_state(self) -> None:
        if not self.info.is_main:
            return
        tensors = {f"model.{k}": v for k, v in self.net.state_dict().items()}
        meta: dict[str, Any] = {**self.state, "config": self.config}
        if self.optimizer is not None:
            opt_tensors, opt_meta = optimizer_state(self.optimizer)
            tensors.update(opt_tensors)
            meta["optimizer"] = opt_meta
            meta["scheduler"] = _scheduler_state(self.scheduler)
        rng_tensors, rng_meta = rng_state()
        tensors.update(rng_tensors)
        meta["rng"] = rng_meta
        p_tensors, p_meta = self.p_schedule.state()
        tensors.update(p_tensors)
        meta["p_schedule"] = p_meta
        meta["grad_scaler"] = self.scaler.state_dict() if self.amp else None
        save_training_state(self._state_path(), tensors, meta)

    def load_state(self) -> None:
        tensors, meta = load_training_state(self._state_path())
        model_sd = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        self.net.load_state_dict(model_sd)
        self.state = {
            k: meta[k] for k in ("phase", "epoch", "step_in_epoch", "global_step", "stage_step")
        }
        self.p_schedule.load(tensors, meta["p_schedule"])
        if meta.get("grad_scaler") and self.amp:
            self.scaler.load_state_dict(meta["grad_scaler"])
        self._resume_optimizer = (tensors, meta.get("optimizer"), meta.get("scheduler"))
        changed = _config_differences(meta.get("config", {}), self.config)
        if changed:
            LOG.warning("resuming with a changed configuration: %s", "; ".join(changed))
        restore_rng_state(tensors, meta["rng"])
        LOG.info(
            "resumed %s: phase %s, epoch %d, step %d of the epoch, global step %d",
            self._state_path(),
            self.state["phase"],
            self.state["epoch"],
            self.state["step_in_epoch"],
            self.state["global_step"],
        )

    # ------------------------------------------------------------------ run

    def run(self) -> int:
        self._resume_optimizer = None
        if self.args.resume:
            self.load_state()
        elif self.args.init_stage1:
            stage1, meta = load_checkpoint(self.args.init_stage1, device="cpu")
            weights = stage1.state_dict()
            if weights["centroids"].shape != self.net.centroids.shape:
                # another K (the K study): k-means sets the centroids next anyway
                weights["centroids"] = self.net.centroids.detach().clone()
            self.net.load_state_dict(weights)
            self.state["phase"] = "kmeans"
            LOG.info("stage 1 weights from %s; starting at k-means", self.args.init_stage1)
        if self.info.is_main:
            dump_config(self.config, os.path.join(self.out, "config.yaml"))
        if self.state["phase"] == "stage1":
            if not self.run_stage("stage1"):
                return 0
            if self.info.is_main:
                save_model(os.path.join(self.out, "stage1.safetensors"), self.net, self.config)
            self._enter("kmeans")
        if self.state["phase"] == "kmeans":
            self.run_kmeans()
            self._enter("stage2")
        if self.state["phase"] == "stage2":
            if not self.run_stage("stage2"):
                return 0
            self._enter("done")
            if self.info.is_main:
                path = os.path.join(self.out, "model.safetensors")
                save_model(path, self.net, self.config)
                LOG.info("final model written to %s", path)
        if self.bad_items:
            LOG.warning("%d unreadable item(s) were skipped during training", len(self.bad_items))
        if self.writer is not None:
            self.writer.close()
        return 0

    def _enter(self, phase: str) -> None:
        self.state.update(phase=phase, epoch=0, step_in_epoch=0, stage_step=0)
        self.optimizer = self.scheduler = None
        self.save_state()
        barrier(self.info)

    def run_kmeans(self) -> None:
        kcfg = self.config["kmeans"]
        which = kcfg["data"]
        samples = {
            "stage2": self.data.stage2_train,
            "clean": self.data.stage1_train,
            "both": self.data.stage1_train + self.data.stage2_train,
        }[which]
        t0 = time.perf_counter()
        result = self._infer(samples, "latents")
        latents = result["latent"][result["valid"]]
        k = int(self.config["model"]["num_clusters"])
        centres = torch.zeros(k, self.net.latent_dim)
        inertia = float("nan")
        if self.info.is_main:
            c, inertia, labels = kmeans_centroids(
                latents, k, self.seed, int(kcfg["n_init"]), int(kcfg["max_iter"])
            )
            centres = torch.from_numpy(c)
            from safetensors.torch import save_file

            save_file(
                {"centroids": centres}, os.path.join(self.out, "kmeans_centroids.safetensors")
            )
            sizes = np.bincount(labels, minlength=k).tolist()
            with open(os.path.join(self.out, "kmeans.json"), "w", encoding="utf-8") as handle:
                json.dump(
                    {
                        "k": k,
                        "inertia": inertia,
                        "cluster_sizes": sizes,
                        "data": which,
                        "n": len(latents),
                    },
                    handle,
                    indent=2,
                )
            LOG.info(
                "k-means K=%d on %d latents (%s): inertia %.4g, sizes %s, %.1f s",
                k,
                len(latents),
                which,
                inertia,
                sizes,
                time.perf_counter() - t0,
            )
        broadcast_tensor(centres, self.info)
        self.net.set_centroids(centres)
        stage2_dec = self.p_schedule.mode == "dataset" and float(self.config["stage2"]["beta"]) > 0
        if which == "stage2" and stage2_dec:
            # The first DEC target needs f of the stage-2 set under these weights: the
            # latents k-means just used, against the new centroids; no second pass.
            with torch.no_grad():
                q = soft_assignment(
                    torch.as_tensor(result["latent"]), centres.to(torch.float32)
                ).numpy()
            q[~result["valid"]] = 0.0  # as the inference pass leaves unreadable rows
            self.p_schedule.update(q, 0)
            LOG.info("target P (#1) from the k-means latents of %d faces", len(latents))

    # ------------------------------------------------------------------ one stage

    def run_stage(self, stage: str) -> bool:
        """Train one stage to its end; False when stopped by ``train.max_steps``."""
        scfg = self.config[stage]
        epochs = int(scfg["epochs"])
        beta = 0.0 if stage == "stage1" else float(scfg["beta"])
        lr = float(scfg["lr"] if scfg["lr"] is not None else self.config["optim"]["lr"])
        self.net.centroids.requires_grad_(stage == "stage2" and beta > 0)
        params = [p for p in self.net.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(params, self.config, lr)
        self.scheduler = make_scheduler(self.optimizer, self.config, epochs)
        if self._resume_optimizer is not None and self._resume_optimizer[1] is not None:
            tensors, opt_meta, sched_meta = self._resume_optimizer
            load_optimizer_state(self.optimizer, tensors, opt_meta)
            self.scheduler.load_state_dict(sched_meta)
        self._resume_optimizer = None
        module = _LossForward(
            self.net,
            float(self.config["loss"]["alpha"]),
            self.info,
            self.p_schedule,
            str(self.config["loss"]["kl_reduction"]),
        )
        if self.info.distributed:
            ids = [self.info.device.index] if self.info.device.type == "cuda" else None
            module = nn.parallel.DistributedDataParallel(module, device_ids=ids)
        dataset = self._train_dataset(stage)
        sampler = EpochBatchSampler(
            len(dataset),
            int(scfg["batch_size"]),
            seed=self.seed + _STAGE_SEED[stage],
            rank=self.info.rank,
            world_size=self.info.world_size,
        )
        if sampler.batches_per_epoch == 0:
            raise SystemExit(
                f"{stage}: {len(dataset)} training samples are fewer than one batch of "
                f"{scfg['batch_size']}"
            )
        tcfg = self.config["train"]
        max_steps = tcfg["max_steps"]
        every = int(tcfg["checkpoint_every_steps"] or 0)
        while self.state["epoch"] < epochs:
            epoch = self.state["epoch"]
            dataset.set_epoch(epoch)
            sampler.set_epoch(epoch)
            sampler.set_start(self.state["step_in_epoch"])
            loader = DataLoader(
                dataset,
                batch_sampler=sampler,
                num_workers=int(self.config["data"]["num_workers"]),
                collate_fn=collate,
                pin_memory=self.info.device.type == "cuda",
            )
            set_train_mode(self.net, self.freeze_bn, self.frozen)
            iterator = loader
            if self.progress:
                from tqdm import tqdm

                iterator = tqdm(
                    loader, desc=f"{stage} epoch {epoch + 1}/{epochs}", unit="batch", leave=False
                )
            t0, seen = time.perf_counter(), 0
            self._cpu0 = time.process_time()
            self.rotation_rejected = 0
            self.occluded_seen = 0
            sums = torch.zeros(4, dtype=torch.float64)
            for batch in iterator:
                self.rotation_rejected += int(batch["rotation_rejected"].sum())
                self.occluded_seen += int((batch["occluded"] & batch["valid"]).sum())
                if (
                    stage == "stage2"
                    and beta > 0
                    and self.p_schedule.due(self.state["stage_step"], self.state["step_in_epoch"])
                ):
                    self.update_target()
                    set_train_mode(self.net, self.freeze_bn, self.frozen)
                loss = self.train_step(module, batch, beta)
                seen += int(batch["valid"].sum())
                if loss is not None:
                    sums += torch.tensor(
                        [loss.total.item(), loss.angle.item(), loss.kl.item(), 1.0]
                    )
                    self._log_step(stage, loss)
                self.state["step_in_epoch"] += 1
                self.state["global_step"] += 1
                self.state["stage_step"] += 1
                if every and self.state["global_step"] % every == 0:
                    self.save_state()
                if max_steps is not None and self.state["global_step"] >= int(max_steps):
                    self.save_state()
                    barrier(self.info)
                    LOG.info(
                        "stopped at global step %d (train.max_steps)", self.state["global_step"]
                    )
                    return False
            elapsed = time.perf_counter() - t0
            with warnings.catch_warnings():
                # A run resumed exactly at an epoch's end steps the scheduler with no
                # optimiser step in this process; the order is right, torch cannot tell.
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                self.scheduler.step()
            self.state["epoch"] += 1
            self.state["step_in_epoch"] = 0
            self._end_epoch(stage, epoch, sums, seen, elapsed)
            self.save_state()
            barrier(self.info)
        return True

    def train_step(self, module, batch: dict, beta: float):
        valid = batch["valid"]
        for key, error in zip(batch["index"].tolist(), batch["error"], strict=True):
            if error and key not in self.bad_items:
                self.bad_items.add(key)
                LOG.warning("skipped unreadable item: %s", error)
        x = batch["image"][valid].to(self.info.device, non_blocking=True)
        target = batch["angles"][valid].to(self.info.device, non_blocking=True)
        if len(x) == 0:
            return None
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(
            device_type=self.info.device.type,
            dtype=torch.bfloat16 if self.cpu_bf16 else torch.float16,
            enabled=self.amp or self.cpu_bf16,
        ):
            loss = module(x, target, beta)
        if not torch.isfinite(loss.total):
            LOG.warning("non-finite loss at step %d; batch skipped", self.state["global_step"])
            return None
        self.scaler.scale(loss.total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss

    def update_target(self) -> None:
        """DEC: Q of the whole stage-2 training set -> the cluster frequencies f of eq. (7)."""
        t0 = time.perf_counter()
        result = self._infer(self.data.stage2_train, "target P")
        self.p_schedule.update(result["q"], self.state["stage_step"])
        if self.info.is_main:
            freq = self.p_schedule.cluster_frequency
            LOG.info(
                "target P updated (#%d) at stage-2 step %d in %.1f s; cluster shares %s",
                self.p_schedule.updates,
                self.state["stage_step"],
                time.perf_counter() - t0,
                np.round((freq / freq.sum()).numpy(), 3).tolist(),
            )
            if self.writer is not None:
                self.writer.add_scalar(
                    "time/p_update_s", time.perf_counter() - t0, self.state["global_step"]
                )

    def _log_step(self, stage: str, loss) -> None:
        step = self.state["global_step"]
        if self.writer is None or step % max(1, int(self.config["train"]["log_every_steps"])):
            return
        self.writer.add_scalar(f"{stage}/loss_total", loss.total.item(), step)
        self.writer.add_scalar(f"{stage}/loss_angles", loss.angle.item(), step)
        self.writer.add_scalar(f"{stage}/kl", loss.kl.item(), step)
        self.writer.add_scalar(f"{stage}/lr", self.optimizer.param_groups[0]["lr"], step)

    def _end_epoch(
        self, stage: str, epoch: int, sums: torch.Tensor, seen: int, elapsed: float
    ) -> None:
        sums = all_reduce_sum(sums, self.info)
        seen_all = int(
            all_reduce_sum(torch.tensor([float(seen)], dtype=torch.float64), self.info).item()
        )
        steps = max(sums[3].item(), 1.0)
        record: dict[str, Any] = {
            "stage": stage,
            "epoch": epoch + 1,
            "global_step": self.state["global_step"],
            "loss_total": sums[0].item() / steps,
            "loss_angles": sums[1].item() / steps,
            "kl": sums[2].item() / steps,
            "images_per_s": seen_all / max(elapsed, 1e-9),
            # CPU seconds of the training process (threads summed; loader workers
            # excluded): images per CPU-second is comparable on a shared machine.
            "cpu_s": time.process_time() - self._cpu0,
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        counts = all_reduce_sum(
            torch.tensor([float(self.rotation_rejected), float(self.occluded_seen)]), self.info
        )
        # rotation draws rejected because the rotated pose left the angle range
        record["rotation_rejected"] = int(counts[0].item())
        # share of occluded faces among those trained on (stage 1: 0; stage 2: 1 - clean_fraction)
        record["occluded_share"] = counts[1].item() / max(seen_all, 1)
        if self.config["train"]["validate"]:
            sets = [("clean", self.data.val_clean)]
            if stage == "stage2" and self.data.val_occluded:
                sets.append(("occluded", self.data.val_occluded))
            for name, samples in sets:
                if not samples:
                    continue
                res = self._infer(samples, f"val {name}")
                err = mae(res["angles"], res["target"], res["valid"])
                record[f"val_{name}_mae"] = [float(v) for v in err]
                record[f"val_{name}_mae_mean"] = float(np.mean(err))
        if self.info.is_main:
            msg = ", ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                for k, v in record.items()
                if not isinstance(v, list)
            )
            LOG.info("%s epoch %d/%d: %s", stage, epoch + 1, int(self.config[stage]["epochs"]), msg)
            with open(os.path.join(self.out, "metrics.jsonl"), "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            if self.writer is not None:
                for k, v in record.items():
                    if isinstance(v, float) and math.isfinite(v):
                        self.writer.add_scalar(f"{stage}_epoch/{k}", v, self.state["global_step"])


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lechpe-train", description="Two-stage LEC-HPE training (stage 1, k-means, stage 2)."
    )
    parser.add_argument(
        "--config", default="paper", help="YAML file or shipped name (paper, tiny, default_model)"
    )
    parser.add_argument(
        "--data", required=True, help="clean training dataset (folder, .npz or .csv)"
    )
    parser.add_argument(
        "--occluded-data", default=None, help="occluded replica of --data (stage 2)"
    )
    parser.add_argument(
        "--out", required=True, help="run folder (checkpoints, logs, model.safetensors)"
    )
    parser.add_argument("--resume", action="store_true", help="continue from OUT/state.safetensors")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in an OUT that already holds a run (its run files are deleted)",
    )
    parser.add_argument(
        "--init-stage1",
        default=None,
        metavar="CKPT",
        help="skip stage 1: start at k-means from this stage-1 checkpoint (ablations)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set stage1.epochs=2 (repeatable)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


#: Files a run writes into its folder (an OUT holding one of them holds a run).
RUN_FILES = (STATE_FILE, "stage1.safetensors", "model.safetensors", "metrics.jsonl")


def check_run_folder(out: str, resume: bool, overwrite: bool) -> None:
    """Refuse to silently start over in a folder that holds a run.

    Raises:
        ResumeError: ``--resume`` without a state, or a run there without
            ``--resume``/``--overwrite`` (the message says which flag to add).
    """
    if resume and overwrite:
        raise ResumeError("--resume and --overwrite exclude each other")
    if resume:
        if not os.path.isfile(os.path.join(out, STATE_FILE)):
            raise ResumeError(f"--resume: no {STATE_FILE} in {out}")
        return
    present = [name for name in RUN_FILES if os.path.exists(os.path.join(out, name))]
    if present and not overwrite:
        raise ResumeError(
            f"{out} already holds a run ({', '.join(present)}): add --resume to continue it "
            "or --overwrite to start over"
        )
    for name in present:  # --overwrite: the old run's files must not mix with the new one's
        os.unlink(os.path.join(out, name))


def main(argv: Sequence[str] | None = None) -> int:
    """``lechpe-train``; errors are one line on stderr and exit status 2 (no traceback)."""
    args = build_parser().parse_args(argv)
    overrides = list(args.overrides)
    if args.no_progress:
        overrides.append("train.progress=false")
    try:
        config = load_config(args.config, overrides)
        check_run_folder(args.out, args.resume, args.overwrite)
    except (ConfigError, ResumeError, OSError) as exc:
        print(f"lechpe-train: error: {exc}", file=sys.stderr)
        return 2
    if config["train"]["threads"]:
        torch.set_num_threads(int(config["train"]["threads"]))
    info = init_distributed(config["train"]["device"])
    os.makedirs(args.out, exist_ok=True)
    remove_stale_temporaries(args.out)
    setup_logging(info, os.path.join(args.out, "train.log"))
    try:
        return Trainer(config, args, info).run()
    except ResumeError as exc:
        print(f"lechpe-train: error: {exc}", file=sys.stderr)
        return 2
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    raise SystemExit(main())
