"""``lechpe-eval``: MAE tables in the layout of the paper's Tables I-III, and plots.

::

    lechpe-eval --model runs/paper/model.safetensors --data AFLW2000 \\
        --occluded-data AFLW2000_occ --out eval/aflw2000 --name AFLW2000

Writes to ``--out``:

* ``results.md`` / ``results.csv``: one row (``--method``, default
  "LEC-HPE (ours)"): Yaw, Pitch, Roll, MAE for the non-occluded set, the same
  for the occluded set, and the combined MAE.  The combined MAE is the mean of
  the two set MAEs (this reproduces the paper's Combined column, e.g. BIWI
  (4.086 + 5.778) / 2 = 4.932).  With only ``--occluded-data`` (Pandora) the
  table has the occluded columns only (Table III layout); with only
  ``--data``, the non-occluded columns.
* ``predictions.csv``: key, set, ground truth, prediction, uncertainty (deg),
  cluster and confidence per face;
* ``summary.json``: the numbers, counts of used / excluded / unreadable items,
  and per set whether the uncertainty and confidence outputs track the error
  (mean values and Spearman rank correlations with the absolute error);
* ``error_vs_angle.png``: mean |error| against the ground-truth angle;
* ``tsne.png``: t-SNE of the latents coloured by cluster and by clean/occluded
  (Fig. 1b style; at most ``--tsne-max`` points, seeded).

Crops use the fixed test margin (``lechpe_model.preprocessing.TEST_MARGIN``)
and no augmentation; samples with any |angle| > 99 are excluded and counted
(31 of AFLW2000's 2000 in the paper).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
from collections.abc import Sequence

import numpy as np

from lechpe_model.conventions import ANGLE_NAMES

LOG = logging.getLogger("training.evaluate")

DEFAULT_METHOD = "LEC-HPE (ours)"


def model_input_size(meta) -> int:
    """Input side the model was trained with (recorded by ``save_checkpoint``)."""
    return int(meta.input_size)


def evaluate_sets(
    model_path: str,
    clean_dir: str | None,
    occluded_dir: str | None,
    fmt: str = "auto",
    occluded_fmt: str = "auto",
    list_file: str | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str = "auto",
    channel_order: str = "bgr",
) -> dict:
    """Run a checkpoint over the clean and/or occluded sets.

    Returns:
        ``{"sets": {name: {"mae": (3,), "mean": float, "n": int, "excluded": int,
        "unreadable": int, "result": run_inference dict, "keys": [...]}}, "meta": ModelMetadata}``
    """
    import torch

    from lechpe_model.checkpoint import load_checkpoint
    from training.clustering import mae, run_inference
    from training.datasets import REASON_OUT_OF_RANGE, load_dataset
    from training.distributed import DistInfo, pick_device
    from training.torch_data import FaceCropDataset

    dev = pick_device(device)
    model, meta = load_checkpoint(model_path, device=dev)
    input_size = model_input_size(meta)
    out: dict = {"sets": {}, "meta": meta, "input_size": input_size}
    for name, path, f, occluded in (
        ("non_occluded", clean_dir, fmt, False),
        ("occluded", occluded_dir, occluded_fmt, True),
    ):
        if not path:
            continue
        ds = load_dataset(
            path,
            f,
            angle_limit=float(meta.angle_limit),
            occluded=occluded,
            list_file=list_file,
            channel_order=channel_order,
        )
        excluded = sum(1 for _, r in ds.report.items if r.startswith(REASON_OUT_OF_RANGE))
        LOG.info("%s (%s): %d faces; %s", name, path, len(ds), ds.report.summary())
        if len(ds) == 0:
            raise SystemExit(f"{path}: no usable sample ({ds.report.summary()})")
        with torch.no_grad():
            res = run_inference(
                model,
                FaceCropDataset(ds.samples, input_size, train=False),
                DistInfo(device=dev),
                batch_size=batch_size,
                num_workers=num_workers,
            )
        valid = res["valid"]
        err = mae(res["angles"], res["target"], valid)
        out["sets"][name] = {
            "mae": err,
            "mean": float(np.mean(err)),
            "n": int(valid.sum()),
            "excluded": excluded,
            "skipped": ds.report.count - excluded,
            "unreadable": int((~valid).sum()),
            "result": res,
            "keys": [s.key for s in ds.samples],
        }
    return out


def normalised_confidence(q: np.ndarray) -> np.ndarray:
    """``1 - entropy(q) / log K`` per row: the confidence the runtime publishes."""
    q = np.clip(np.asarray(q, dtype=np.float64), 1e-12, 1.0)
    return 1.0 - (-(q * np.log(q)).sum(axis=1)) / np.log(q.shape[1])


def calibration(result: dict) -> dict:
    """Do the uncertainty / confidence outputs track the error? (per set)

    Returns mean uncertainty per angle, the Spearman rank correlation of each
    angle's uncertainty with its absolute error (> 0: larger spread, larger
    error, as it should be), the mean confidence and its correlation with the
    mean absolute error (< 0 is the useful direction).
    """
    from scipy.stats import spearmanr

    valid = np.asarray(result["valid"], dtype=bool)
    err = np.abs(result["angles"] - result["target"])[valid]
    unc = np.asarray(result["uncertainty"])[valid]
    conf = normalised_confidence(result["q"])[valid]

    def rank_corr(a: np.ndarray, b: np.ndarray) -> float:
        if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
            return float("nan")
        return float(spearmanr(a, b)[0])

    return {
        "mean_uncertainty": {a: float(unc[:, k].mean()) for k, a in enumerate(ANGLE_NAMES)},
        "spearman_uncertainty_vs_error": {
            a: rank_corr(unc[:, k], err[:, k]) for k, a in enumerate(ANGLE_NAMES)
        },
        "mean_confidence": float(conf.mean()) if len(conf) else float("nan"),
        "spearman_confidence_vs_error": rank_corr(conf, err.mean(axis=1)),
    }


def table_columns(set_names: Sequence[str]) -> list[str]:
    cols = []
    if "non_occluded" in set_names:
        cols += [f"Non-occluded {a.capitalize()}" for a in ANGLE_NAMES] + ["Non-occluded MAE"]
    if "occluded" in set_names:
        cols += [f"Occluded {a.capitalize()}" for a in ANGLE_NAMES] + ["Occluded MAE"]
    if len(set_names) == 2:
        cols.append("Combined MAE")
    return cols


def table_row(sets: dict) -> list[float]:
    row: list[float] = []
    for name in ("non_occluded", "occluded"):
        if name in sets:
            row += [float(v) for v in sets[name]["mae"]] + [sets[name]["mean"]]
    if len(sets) == 2:
        row.append(0.5 * (sets["non_occluded"]["mean"] + sets["occluded"]["mean"]))
    return row


def write_tables(
    rows: dict[str, list[float]],
    columns: list[str],
    dataset_name: str,
    out_dir: str,
    stem: str = "results",
) -> tuple[str, str]:
    """Markdown + CSV tables (first column: the method / setting); 3 decimals like the paper."""
    md_path = os.path.join(out_dir, f"{stem}.md")
    csv_path = os.path.join(out_dir, f"{stem}.csv")
    with open(md_path, "w", encoding="utf-8") as handle:
        handle.write(f"| {dataset_name} | " + " | ".join(columns) + " |\n")
        handle.write("|---" * (len(columns) + 1) + "|\n")
        for method, values in rows.items():
            handle.write(f"| {method} | " + " | ".join(f"{v:.3f}" for v in values) + " |\n")
        handle.write("\nMAE in degrees.\n")
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow([dataset_name] + columns)
        for method, values in rows.items():
            writer.writerow([method] + [f"{v:.3f}" for v in values])
    return md_path, csv_path


def tsne_embedding(latents: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE (scikit-learn, PCA init, fixed seed) of ``(N, D)`` latents."""
    from sklearn.manifold import TSNE

    n = len(latents)
    perplexity = float(min(30.0, max(2.0, (n - 1) / 3.0)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
        np.asarray(latents, np.float64)
    )


def write_plots(evaluation: dict, out_dir: str, tsne_max: int = 1000, seed: int = 0) -> list[str]:
    from training.plots import plot_error_vs_angle, plot_tsne

    paths = []
    sets = evaluation["sets"]
    err_sets = {
        name.replace("_", "-"): (
            s["result"]["angles"][s["result"]["valid"]],
            s["result"]["target"][s["result"]["valid"]],
        )
        for name, s in sets.items()
    }
    path = os.path.join(out_dir, "error_vs_angle.png")
    plot_error_vs_angle(err_sets, path)
    paths.append(path)
    latents, q, occ = [], [], []
    for s in sets.values():
        v = s["result"]["valid"]
        latents.append(s["result"]["latent"][v])
        q.append(s["result"]["q"][v])
        occ.append(s["result"]["occluded"][v])
    latents, q, occ = np.concatenate(latents), np.concatenate(q), np.concatenate(occ)
    if len(latents) >= 5 and tsne_max > 0:
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.permutation(len(latents))[:tsne_max])
        emb = tsne_embedding(latents[pick], seed)
        path = os.path.join(out_dir, "tsne.png")
        plot_tsne(emb, q[pick].argmax(1), occ[pick], path)
        paths.append(path)
    return paths


def write_predictions(evaluation: dict, out_dir: str) -> str:
    path = os.path.join(out_dir, "predictions.csv")
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(
            ["key", "set", "valid"]
            + [f"gt_{a}" for a in ANGLE_NAMES]
            + [f"pred_{a}" for a in ANGLE_NAMES]
            + [f"unc_{a}" for a in ANGLE_NAMES]
            + ["cluster", "confidence"]
        )
        for name, s in evaluation["sets"].items():
            r = s["result"]
            confidence = normalised_confidence(r["q"])
            for i, key in enumerate(s["keys"]):
                writer.writerow(
                    [key, name, int(r["valid"][i])]
                    + [f"{v:.3f}" for v in r["target"][i]]
                    + [f"{v:.3f}" for v in r["angles"][i]]
                    + [f"{v:.3f}" for v in r["uncertainty"][i]]
                    + [int(np.argmax(r["q"][i])), f"{confidence[i]:.4f}"]
                )
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lechpe-eval", description="MAE tables (paper Tables I-III) and plots."
    )
    p.add_argument("--model", required=True, help="checkpoint (.safetensors)")
    p.add_argument("--data", default=None, help="non-occluded test set")
    p.add_argument("--occluded-data", default=None, help="occluded test set (replica or Pandora)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--name", default="dataset", help="dataset name in the table header (e.g. AFLW2000)"
    )
    p.add_argument("--method", default=DEFAULT_METHOD, help="row label")
    p.add_argument("--format", default="auto")
    p.add_argument("--occluded-format", default="auto")
    p.add_argument("--list-file", default=None, help="Pandora: list of (occluded) frames")
    p.add_argument("--channel-order", default="bgr", help="BIWI .npz image channel order")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--tsne-max", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.data and not args.occluded_data:
        raise SystemExit("lechpe-eval: give --data and/or --occluded-data")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.makedirs(args.out, exist_ok=True)
    evaluation = evaluate_sets(
        args.model,
        args.data,
        args.occluded_data,
        args.format,
        args.occluded_format,
        args.list_file,
        args.batch_size,
        args.workers,
        args.device,
        args.channel_order,
    )
    sets = evaluation["sets"]
    columns = table_columns(list(sets))
    md, csv_path = write_tables({args.method: table_row(sets)}, columns, args.name, args.out)
    write_predictions(evaluation, args.out)
    summary = {
        "model": args.model,
        "input_size": evaluation["input_size"],
        "table": dict(zip(columns, table_row(sets), strict=True)),
        "sets": {
            name: {
                "path": args.data if name == "non_occluded" else args.occluded_data,
                "mae": {a: float(v) for a, v in zip(ANGLE_NAMES, s["mae"], strict=True)},
                "mean": s["mean"],
                "faces": s["n"],
                "excluded_out_of_range": s["excluded"],
                "skipped_bad_items": s["skipped"],
                "unreadable_images": s["unreadable"],
                "calibration": calibration(s["result"]),
            }
            for name, s in sets.items()
        },
    }
    with open(os.path.join(args.out, "summary.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)
    if not args.no_plots:
        write_plots(evaluation, args.out, args.tsne_max, args.seed)
    with open(md, encoding="utf-8") as handle:
        print(handle.read())
    for name, s in summary["sets"].items():
        print(
            f"{name}: {s['faces']} faces, {s['excluded_out_of_range']} excluded (|angle| > 99), "
            f"{s['skipped_bad_items']} bad items, {s['unreadable_images']} unreadable images"
        )
        cal = s["calibration"]
        print(
            f"{name}: mean uncertainty (yaw/pitch/roll) "
            + "/".join(f"{v:.1f}" for v in cal["mean_uncertainty"].values())
            + " deg, Spearman(uncertainty, |error|) "
            + "/".join(f"{v:+.2f}" for v in cal["spearman_uncertainty_vs_error"].values())
            + f", mean confidence {cal['mean_confidence']:.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
