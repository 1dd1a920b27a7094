"""Latents over a whole data set, k-means initialisation and the DEC target P.

* :func:`run_inference` - angles, latents and soft assignments of every item
  of a data set (eval mode, no augmentation, test margin), sharded across DDP
  ranks and gathered in item order.
* :func:`kmeans_centroids` - scikit-learn ``KMeans`` with a fixed
  ``random_state`` on the latents (section III-D: "k-means in the latent
  feature space mapped from the entire training input data").
* :class:`PSchedule` - when and how the target distribution P (eq. 7) is
  computed in stage 2:

  - ``"dataset"`` (default): as in DEC, Q is computed for the *whole*
    training set with the current network and its cluster frequencies
    ``f_j = sum_i q_ij`` are held fixed for the next ``interval`` steps
    (``0`` = at the start of every epoch).  Each training sample's row of P
    is eq. (7) of *its own* detached q - the q of the augmented (possibly
    mirrored, rotated, re-cropped) crop the step trains on - with that fixed
    f (:meth:`PSchedule.target`).  A stored per-sample P row would belong to
    the un-augmented crop: for a mirrored face it points at the mirror-pose
    cluster and the KL term would pull against the angle loss (see
    docs/MODEL.md, "Stage-2 target").  Why f from the data set: over a batch
    of 128 with K = 10 the frequency is noisy and the target moves with every
    batch.  Cost: one forward pass over the training set per update
    (measured in docs/BENCHMARKS.md).
  - ``"batch"``: P from the q of the current global batch (all DDP ranks'
    rows are gathered so the result does not depend on the process count);
    no extra pass, a noisier target.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from lechpe_model.losses import target_distribution
from training.distributed import DistInfo, all_gather_rows
from training.torch_data import FaceCropDataset, ShardSampler, collate

LOG = logging.getLogger("training.clustering")


@torch.no_grad()
def run_inference(
    model,
    dataset: FaceCropDataset,
    info: DistInfo | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    amp: bool = False,
    progress: bool = False,
    desc: str = "inference",
    cpu_bf16: bool = False,
) -> dict[str, np.ndarray]:
    """Network outputs for every item of ``dataset`` (model put in eval mode, then restored).

    Returns:
        dict with ``angles`` (N, 3) predicted degrees, ``uncertainty`` (N, 3)
        degrees (standard deviation of each bin softmax, as ``LECHPENet.forward``),
        ``target`` (N, 3) labels,
        ``latent`` (N, D) float32, ``q`` (N, K), ``valid`` (N,) bool (False for
        unreadable images, whose rows are zeros), ``occluded`` (N,) bool,
        ``head_input`` (N, D) what an error head reads (the latent averaged with
        the mirrored crop's under ``mirror_average``; without it, the ``latent``
        array itself) and, for a model with an error head, ``log_error`` (N, 3)
        its output.
    """
    info = info or DistInfo()
    net = model.module if hasattr(model, "module") else model
    was_training = net.training
    net.eval()
    sampler = ShardSampler(len(dataset), info.rank, info.world_size)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=info.device.type == "cuda",
    )
    if progress:
        from tqdm import tqdm

        loader = tqdm(loader, desc=desc, unit="batch", leave=False)
    rows: dict[str, list[torch.Tensor]] = {
        k: []
        for k in (
            "index",
            "angles",
            "uncertainty",
            "target",
            "latent",
            "q",
            "valid",
            "occluded",
            "head_input",
            "log_error",
        )
    }
    for batch in loader:
        x = batch["image"].to(info.device, non_blocking=True)
        on_cpu = info.device.type == "cpu"
        with torch.autocast(
            device_type=info.device.type,
            dtype=torch.bfloat16 if on_cpu else torch.float16,
            enabled=(cpu_bf16 and on_cpu) or (amp and info.device.type == "cuda"),
        ):
            out = net.forward_train(x)
            mirrored = net.forward_train(torch.flip(x, dims=[3])) if net.mirror_average else None
        # Decoded as LECHPENet.forward does (test-time mirroring included), with the latents
        angles, var = net.decode_logits(out.logits.float())
        if mirrored is not None:
            angles, spread = net.combine_mirrored(
                angles, var, *net.decode_logits(mirrored.logits.float())
            )
        else:
            spread = var.clamp_min(0.0).sqrt()
        rows["index"].append(batch["index"])
        rows["angles"].append(angles.cpu())
        rows["uncertainty"].append(spread.cpu())
        rows["target"].append(batch["angles"])
        rows["latent"].append(out.latent.float().cpu())
        head_input = net.error_head_input(
            out.latent.float(), None if mirrored is None else mirrored.latent.float()
        )
        if mirrored is not None:  # else it is the latent: not kept twice
            rows["head_input"].append(head_input.cpu())
        if net.error_head is not None:
            rows["log_error"].append(
                net.error_head(head_input.to(net.error_head.weight.dtype)).float().cpu()
            )
        rows["q"].append(out.q.float().cpu())
        rows["valid"].append(batch["valid"])
        rows["occluded"].append(batch["occluded"])
    if was_training:
        net.train()
    n = len(dataset)
    k, d = int(net.num_clusters), int(net.latent_dim)
    widths = {
        "index": None,
        "angles": 3,
        "uncertainty": 3,
        "target": 3,
        "latent": d,
        "q": k,
        "head_input": d,
        "log_error": 3,
    }
    local: dict[str, torch.Tensor] = {}
    for key, parts in rows.items():
        if parts:
            local[key] = torch.cat(parts)
        elif key in ("valid", "occluded"):
            local[key] = torch.zeros(0, dtype=torch.bool)
        elif key == "index":
            local[key] = torch.zeros(0, dtype=torch.long)
        else:
            local[key] = torch.zeros(0, widths[key])
    result: dict[str, np.ndarray] = {}
    index = torch.cat(all_gather_rows(local["index"], info)).numpy()
    keys = ["angles", "uncertainty", "target", "latent", "q", "valid", "occluded"]
    if net.mirror_average:
        keys.append("head_input")
    if net.error_head is not None:
        keys.append("log_error")
    for key in keys:
        gathered = torch.cat(all_gather_rows(local[key], info)).numpy()
        full = np.zeros((n,) + gathered.shape[1:], dtype=gathered.dtype)
        full[index] = gathered
        result[key] = full
    result.setdefault("head_input", result["latent"])
    return result


def kmeans_centroids(
    latents: np.ndarray, num_clusters: int, seed: int = 0, n_init: int = 10, max_iter: int = 300
) -> tuple[np.ndarray, float, np.ndarray]:
    """k-means (scikit-learn, fixed ``random_state``) on ``(N, D)`` latents.

    Returns:
        ``(centres (K, D) float32, inertia, labels (N,))``.
    """
    from sklearn.cluster import KMeans

    latents = np.asarray(latents, dtype=np.float64)
    if len(latents) < num_clusters:
        raise ValueError(f"k-means needs at least K = {num_clusters} latents, got {len(latents)}")
    km = KMeans(
        n_clusters=int(num_clusters),
        n_init=int(n_init),
        max_iter=int(max_iter),
        random_state=int(seed),
    )
    labels = km.fit_predict(latents)
    return km.cluster_centers_.astype(np.float32), float(km.inertia_), labels


def batch_target(q: torch.Tensor, info: DistInfo | None = None) -> torch.Tensor:
    """Eq. (7) with f over the *global* batch; returns this rank's rows (detached)."""
    info = info or DistInfo()
    q = q.detach()
    if not info.distributed:
        return target_distribution(q)
    parts = all_gather_rows(q.float().cpu(), info)
    full = target_distribution(torch.cat(parts))
    start = sum(p.shape[0] for p in parts[: info.rank])
    return full[start : start + q.shape[0]].to(q.device, q.dtype)


class PSchedule:
    """State of the stage-2 target distribution (saved for exact resume).

    Args:
        mode: ``"dataset"`` or ``"batch"`` (see the module docstring).
        interval: steps between whole-set updates; 0 = every epoch start.
    """

    def __init__(self, mode: str = "dataset", interval: int = 0) -> None:
        if mode not in ("dataset", "batch"):
            raise ValueError(f"p_update must be 'dataset' or 'batch', got {mode!r}")
        self.mode = mode
        self.interval = int(interval)
        #: (K,) f_j = sum_i q_ij over the data set at the last update ("dataset")
        self.cluster_frequency: torch.Tensor | None = None
        self.last_update_step: int | None = None
        self.updates = 0

    def due(self, stage_step: int, step_in_epoch: int) -> bool:
        """Whether P must be recomputed before stage-2 step ``stage_step``."""
        if self.mode != "dataset":
            return False
        if self.cluster_frequency is None:
            return True
        if self.interval <= 0:
            return step_in_epoch == 0 and self.last_update_step != stage_step
        return stage_step - int(self.last_update_step or 0) >= self.interval

    def update(self, q_all: np.ndarray, stage_step: int) -> None:
        """New f from the q of the whole set (rows of unreadable items are zeros)."""
        q = torch.as_tensor(np.asarray(q_all), dtype=torch.float64)
        self.cluster_frequency = q.sum(dim=0).float()
        self.last_update_step = int(stage_step)
        self.updates += 1

    def target(self, q: torch.Tensor, info: DistInfo | None = None) -> torch.Tensor:
        """P rows for the batch whose soft assignments are ``q`` (detached).

        ``"dataset"``: eq. (7) of each row with the fixed data-set f;
        ``"batch"``: f of the global batch (:func:`batch_target`).
        """
        if self.mode == "batch":
            return batch_target(q, info)
        if self.cluster_frequency is None:
            raise RuntimeError("stage-2 target requested before the first P update")
        return target_distribution(q, self.cluster_frequency)

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = (
            {"cluster_frequency": self.cluster_frequency.clone()}
            if self.cluster_frequency is not None
            else {}
        )
        return tensors, {
            "mode": self.mode,
            "interval": self.interval,
            "last_update_step": self.last_update_step,
            "updates": self.updates,
        }

    def load(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        self.mode = meta["mode"]
        self.interval = int(meta["interval"])
        self.last_update_step = meta["last_update_step"]
        self.updates = int(meta.get("updates", 0))
        # A state written before f was stored (per-sample "p_target" rows) has no f:
        # the next step recomputes it from the data set.
        self.cluster_frequency = tensors.get("cluster_frequency")


def mae(pred: np.ndarray, target: np.ndarray, mask: Sequence[bool] | None = None) -> np.ndarray:
    """Mean absolute error per angle ``(3,)`` degrees over the rows in ``mask``."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    if mask is not None:
        pred, target = pred[np.asarray(mask, bool)], target[np.asarray(mask, bool)]
    if len(pred) == 0:
        return np.full(3, np.nan)
    return np.abs(pred - target).mean(axis=0)
