"""``lechpe-elbow``: the elbow method over K on the stage-1 latents (section IV-C).

::

    lechpe-elbow --model runs/paper/stage1.safetensors --data 300W_LP_occ --out elbow/

Extracts the latents of every face of ``--data`` (and ``--extra-data``, e.g.
the clean set too) with the checkpoint (test crop with the run's
``data.test_margin``, no augmentation), runs
scikit-learn k-means (fixed ``random_state``) for each K in ``--ks`` (default
5 10 15 20 30 40, the paper's candidates) and writes ``elbow.md``,
``elbow.csv`` (K, inertia, inertia relative to the first K, drop from the
previous K) and ``elbow.png``.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
from collections.abc import Sequence

import numpy as np

LOG = logging.getLogger("training.elbow")

DEFAULT_KS = (5, 10, 15, 20, 30, 40)


def elbow_table(
    latents: np.ndarray, ks: Sequence[int], seed: int = 0, n_init: int = 10
) -> list[dict]:
    """k-means inertia for each K -> rows {k, inertia, relative, drop}."""
    from training.clustering import kmeans_centroids

    rows = []
    for k in ks:
        _, inertia, _ = kmeans_centroids(latents, int(k), seed=seed, n_init=n_init)
        rows.append({"k": int(k), "inertia": inertia})
        LOG.info("K=%d: inertia %.6g", k, inertia)
    first = rows[0]["inertia"] if rows else 1.0
    for i, row in enumerate(rows):
        row["relative"] = row["inertia"] / first if first else float("nan")
        row["drop"] = (rows[i - 1]["inertia"] - row["inertia"]) if i else float("nan")
    return rows


def write_elbow(rows: list[dict], out_dir: str) -> tuple[str, str, str]:
    from training.plots import plot_elbow

    md = os.path.join(out_dir, "elbow.md")
    csv_path = os.path.join(out_dir, "elbow.csv")
    png = os.path.join(out_dir, "elbow.png")
    with open(md, "w", encoding="utf-8") as handle:
        handle.write(
            "| K | inertia | relative to first K | drop from previous K |\n|---|---|---|---|\n"
        )
        for r in rows:
            drop = "" if np.isnan(r["drop"]) else f"{r['drop']:.6g}"
            handle.write(f"| {r['k']} | {r['inertia']:.6g} | {r['relative']:.4f} | {drop} |\n")
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["k", "inertia", "relative", "drop"])
        for r in rows:
            writer.writerow(
                [r["k"], f"{r['inertia']:.6g}", f"{r['relative']:.6f}", f"{r['drop']:.6g}"]
            )
    plot_elbow([r["k"] for r in rows], [r["inertia"] for r in rows], png)
    return md, csv_path, png


def run_test_margin(meta, override: float | None = None) -> float:
    """The test margin the model's run used (``data.test_margin`` of its stored config).

    ``override`` wins; a checkpoint without a training config gets the package's
    ``TEST_MARGIN``.
    """
    from lechpe_model.preprocessing import TEST_MARGIN

    if override is not None:
        return float(override)
    config = getattr(meta, "training_config", None) or {}
    return float(config.get("data", {}).get("test_margin", TEST_MARGIN))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lechpe-elbow", description="Elbow method over K on latents.")
    p.add_argument("--model", required=True, help="checkpoint, normally RUN_DIR/stage1.safetensors")
    p.add_argument("--data", required=True, help="dataset whose latents are clustered")
    p.add_argument("--extra-data", default=None, help="a second dataset added to the latents")
    p.add_argument("--out", required=True)
    p.add_argument("--ks", type=int, nargs="+", default=list(DEFAULT_KS))
    p.add_argument("--max-samples", type=int, default=None, help="seeded subset of faces")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-init", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--test-margin",
        type=float,
        default=None,
        help="crop margin (default: data.test_margin of the model's training run)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.makedirs(args.out, exist_ok=True)

    from lechpe_model.checkpoint import load_checkpoint
    from training.clustering import run_inference
    from training.datasets import load_dataset
    from training.distributed import DistInfo, pick_device
    from training.evaluate import model_input_size
    from training.torch_data import FaceCropDataset

    device = pick_device(args.device)
    model, meta = load_checkpoint(args.model, device=device)
    samples = load_dataset(args.data).samples
    if args.extra_data:
        samples += load_dataset(args.extra_data, occluded=True).samples
    if args.max_samples and len(samples) > args.max_samples:
        pick = np.sort(
            np.random.default_rng(args.seed).permutation(len(samples))[: args.max_samples]
        )
        samples = [samples[i] for i in pick]
    res = run_inference(
        model,
        FaceCropDataset(
            samples,
            model_input_size(meta),
            train=False,
            test_margin=run_test_margin(meta, args.test_margin),
        ),
        DistInfo(device=device),
        batch_size=args.batch_size,
        num_workers=args.workers,
    )
    latents = res["latent"][res["valid"]]
    ks = [k for k in args.ks if k <= len(latents)]
    if len(ks) < len(args.ks):
        LOG.warning(
            "K values above the %d faces dropped: %s", len(latents), sorted(set(args.ks) - set(ks))
        )
    rows = elbow_table(latents, ks, args.seed, args.n_init)
    md, _, png = write_elbow(rows, args.out)
    with open(md, encoding="utf-8") as handle:
        print(handle.read())
    print(f"plot: {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
