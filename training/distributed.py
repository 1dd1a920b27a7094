"""Process-group setup for one or many processes (``torchrun``), seeds, rank-aware logging.

``torchrun --nproc_per_node N -m training.train ...`` (or ``.venv/bin/torchrun
$(which lechpe-train) ...``) sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
without them the run is a single process.  The backend is NCCL when the run
uses CUDA and gloo on the CPU.  Each process sees ``global batch / WORLD_SIZE``
samples per step (``training.torch_data.EpochBatchSampler``).
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

LOG = logging.getLogger("training")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when CUDA is available, else ``cpu``."""
    if name == "auto":
        return (
            torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
        )
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} requested but CUDA is not available")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    return device


def init_distributed(device_name: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun; pick the device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistInfo(rank, world_size, local_rank, device)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def broadcast_tensor(tensor: torch.Tensor, info: DistInfo, src: int = 0) -> torch.Tensor:
    """Rank ``src``'s value on every rank (in place)."""
    if info.distributed:
        work = tensor.to(info.device) if info.device.type == "cuda" else tensor
        dist.broadcast(work, src)
        if work is not tensor:
            tensor.copy_(work.cpu())
    return tensor


def all_gather_rows(tensor: torch.Tensor, info: DistInfo) -> list[torch.Tensor]:
    """Every rank's ``(n_r, ...)`` tensor (sizes may differ), in rank order."""
    if not info.distributed:
        return [tensor]
    local = tensor.to(info.device) if info.device.type == "cuda" else tensor
    size = torch.tensor([local.shape[0]], device=local.device)
    sizes = [torch.zeros_like(size) for _ in range(info.world_size)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(
        (longest,) + tuple(local.shape[1:]), dtype=local.dtype, device=local.device
    )
    padded[: local.shape[0]] = local
    gathered = [torch.zeros_like(padded) for _ in range(info.world_size)]
    dist.all_gather(gathered, padded)
    return [g[: int(s.item())].cpu() for g, s in zip(gathered, sizes, strict=True)]


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.distributed:
        work = values.to(info.device) if info.device.type == "cuda" else values.clone()
        dist.all_reduce(work)
        return work.cpu()
    return values


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch (CPU and CUDA) generators."""
    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 - for third-party code using the global RNG
    torch.manual_seed(seed)


def use_deterministic_kernels(device: torch.device, enabled: bool) -> None:
    """Deterministic cuDNN and cuBLAS kernels on CUDA (cuDNN's fastest convolution
    backward passes add in a varying order, so two identical runs drift apart in the
    last bits and an exact resume is impossible). No effect on the CPU path."""
    if device.type != "cuda" or not enabled:
        return
    # read when cuBLAS creates its handle, i.e. before the first matrix product
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


def setup_logging(info: DistInfo, log_file: str | None = None) -> None:
    """INFO on rank 0 (console + file), warnings only on the other ranks."""
    level = logging.INFO if info.is_main else logging.WARNING
    fmt = f"%(asctime)s [rank {info.rank}] %(levelname)s %(name)s: %(message)s"
    root = logging.getLogger()
    root.setLevel(level)
    if not any(getattr(h, "_lechpe", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler._lechpe = True  # type: ignore[attr-defined]
        handler.setFormatter(logging.Formatter(fmt))
        root.addHandler(handler)
    for old in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        if getattr(old, "_lechpe", False):  # a previous run in this process
            root.removeHandler(old)
            old.close()
    if log_file and info.is_main:
        handler = logging.FileHandler(log_file)
        handler._lechpe = True  # type: ignore[attr-defined]
        handler.setFormatter(logging.Formatter(fmt))
        root.addHandler(handler)
