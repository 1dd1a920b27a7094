"""Training throughput benchmark: images/s of stage 1 and stage 2 (with the P updates).

::

    python -m training.bench --backbone resnet50 --batch-size 32 --device auto

Data loading is kept off the critical path: the batches are built once in
memory (normalised tensors of the configured input size) and only the
training step is timed - forward, the eq. (9) loss, backward and the Adam
update, with AMP on CUDA as in ``lechpe-train``.

* stage 1: beta = 0;
* stage 2 (batch P): beta = 100, P from the batch's own q;
* stage 2 (dataset P): beta = 100 with P rows given, plus the cost of the
  DEC target update - one inference pass over the training set per update;
  reported for one update per epoch (the default) as an effective rate:
  ``N / (N / train_rate + N / inference_rate)``.

Prints a Markdown table and writes ``--json`` when given.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Sequence

import torch


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def benchmark(
    backbone: str = "resnet50",
    batch_size: int = 32,
    input_size: int = 224,
    steps: int = 5,
    warmup: int = 2,
    device: str = "auto",
    num_clusters: int = 10,
    amp: bool = True,
) -> dict:
    """Measured images/s for each training mode (see the module docstring)."""
    from lechpe_model.network import LECHPENet
    from training.distributed import DistInfo, pick_device
    from training.train import _LossForward

    dev = pick_device(device)
    use_amp = amp and dev.type == "cuda"
    torch.manual_seed(0)
    net = LECHPENet(backbone, num_clusters=num_clusters, pretrained=False).to(dev)
    from training.clustering import PSchedule

    module = _LossForward(net, 1.0, DistInfo(device=dev))  # P from the batch (p_update: batch)
    fixed_f = PSchedule("dataset")  # P rows from each crop's q with a fixed data-set f
    fixed_f.update(torch.softmax(torch.randn(4 * batch_size, num_clusters), 1).numpy(), 0)
    module_dataset = _LossForward(net, 1.0, DistInfo(device=dev), fixed_f)
    opt = torch.optim.Adam([p for p in net.parameters()], lr=1e-5)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    x = torch.randn(batch_size, 3, input_size, input_size, device=dev)
    target = (torch.rand(batch_size, 3, device=dev) - 0.5) * 180

    def train_rate(beta: float, module) -> float:
        net.train()
        for i in range(warmup + steps):
            if i == warmup:
                _sync(dev)
                t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=use_amp):
                loss = module(x, target, beta)
            scaler.scale(loss.total).backward()
            scaler.step(opt)
            scaler.update()
        _sync(dev)
        return steps * batch_size / (time.perf_counter() - t0)

    @torch.no_grad()
    def inference_rate() -> float:
        net.eval()
        for i in range(warmup + steps):
            if i == warmup:
                _sync(dev)
                t0 = time.perf_counter()
            with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=use_amp):
                net.forward_train(x)
        _sync(dev)
        return steps * batch_size / (time.perf_counter() - t0)

    stage1 = train_rate(0.0, module)
    stage2_batch = train_rate(100.0, module)
    stage2_dataset = train_rate(100.0, module_dataset)
    infer = inference_rate()
    effective = 1.0 / (1.0 / stage2_dataset + 1.0 / infer)
    return {
        "device": torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else platform.processor() or "cpu",
        "device_type": dev.type,
        "torch_threads": torch.get_num_threads(),
        "backbone": backbone,
        "batch_size": batch_size,
        "input_size": input_size,
        "amp": use_amp,
        "stage1_img_s": stage1,
        "stage2_batch_p_img_s": stage2_batch,
        "stage2_dataset_p_train_only_img_s": stage2_dataset,
        "p_update_inference_img_s": infer,
        "stage2_dataset_p_effective_img_s": effective,
    }


def markdown(results: Sequence[dict]) -> str:
    lines = [
        "| device | backbone | batch | input | AMP | stage 1 img/s | stage 2 (batch P) img/s | "
        "stage 2 (dataset P, 1 update/epoch) img/s | P-update inference img/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['device']} ({r['device_type']}, {r['torch_threads']} threads) | {r['backbone']} | "
            f"{r['batch_size']} | {r['input_size']} | {'yes' if r['amp'] else 'no'} | "
            f"{r['stage1_img_s']:.1f} | {r['stage2_batch_p_img_s']:.1f} | "
            f"{r['stage2_dataset_p_effective_img_s']:.1f} | {r['p_update_inference_img_s']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.bench", description=__doc__.split("\n")[0])
    p.add_argument("--backbone", nargs="+", default=["resnet50"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-amp", action="store_true")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = [
        benchmark(
            b,
            args.batch_size,
            args.input_size,
            args.steps,
            args.warmup,
            args.device,
            amp=not args.no_amp,
        )
        for b in args.backbone
    ]
    print(markdown(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
