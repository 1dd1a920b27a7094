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

* ``protocol.md`` / ``protocol.json``: the held-out-identity protocol: MAE per
  angle and mean by |yaw| range (< 30, 30-60, > 60 deg of the ground truth) and
  overall, clean and occluded, with the identities and face counts evaluated
  (a table for docs/RESULTS.md); and the uncertainty block: Spearman(sigma,
  |error|) and the fraction of errors within +-1 sigma per angle;
* ``reliability.png``: predicted sigma against observed RMS error / coverage.

Identities: ``--identities`` / ``--split test`` select identity ids (the synthetic
sets' ``identity`` field, ``index.csv`` column or ``.mat`` entry) and
``--train-data`` names the data the model was trained on: its identities are
excluded (and counted), so the numbers are on identities never trained on.

Crops use the run's test margin (``data.test_margin`` of the checkpoint's
training configuration; ``lechpe_model.preprocessing.TEST_MARGIN`` if absent)
and no augmentation; samples with any |angle| > 99 are excluded and counted
(31 of AFLW2000's 2000 in the paper).

Subcommands (``lechpe-eval SUBCOMMAND --help``):

* ``consistency``: real-photo consistency check (rotations and mirroring of
  scikit-image's astronaut and camera photos; exact transformed predictions);
* ``calibrate-uncertainty``: fit the uncertainty calibration on validation
  identities and write a calibrated copy of the checkpoint.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
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


def run_test_margin(meta) -> float:
    """The crop margin the run validated with (``data.test_margin``), else ``TEST_MARGIN``."""
    from lechpe_model.preprocessing import TEST_MARGIN

    data = (meta.training_config or {}).get("data") or {}
    value = data.get("test_margin", TEST_MARGIN)
    return float(TEST_MARGIN if value is None else value)


#: Identity id of faces whose data set has none.
UNKNOWN_IDENTITY = -1


def _index_identities(root: str) -> dict[str, int]:
    """``name -> identity`` from a synthetic set's ``index.csv`` ({} without the column)."""
    path = os.path.join(root, "index.csv")
    if not os.path.isfile(path):
        return {}
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or "identity" not in reader.fieldnames:
            return {}
        return {row["name"]: int(float(row["identity"])) for row in reader}


def sample_identities(samples) -> np.ndarray:
    """``(N,)`` int identity id of each sample, ``UNKNOWN_IDENTITY`` where unknown.

    Read from the ``index.csv`` next to the image (column ``identity``), else from
    the ``identity`` entry of the image's ``.mat`` annotation.
    """
    import scipy.io

    cache: dict[str, dict[str, int]] = {}
    out = np.full(len(samples), UNKNOWN_IDENTITY, dtype=np.int64)
    for i, sample in enumerate(samples):
        folder = os.path.dirname(sample.image_path)
        if folder not in cache:
            cache[folder] = _index_identities(folder)
        name = os.path.splitext(os.path.basename(sample.image_path))[0]
        if name in cache[folder]:
            out[i] = cache[folder][name]
            continue
        mat = os.path.splitext(sample.image_path)[0] + ".mat"
        if os.path.isfile(mat):
            try:
                entry = scipy.io.loadmat(mat, variable_names=["identity"]).get("identity")
            except (OSError, ValueError):
                entry = None
            if entry is not None and np.size(entry):
                out[i] = int(np.asarray(entry).reshape(-1)[0])
    return out


def identity_split(
    identities, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0
) -> dict[int, str]:
    """Assign each identity id to "train", "val" or "test" (deterministic in ``seed``).

    The ids are sorted, shuffled with ``seed``, and the first ``round(n *
    test_fraction)`` (at least 1 when the fraction is > 0 and n >= 3) go to test,
    the next ones to val; every face of one identity lands in one split.
    """
    ids = sorted({int(i) for i in np.asarray(list(identities)).reshape(-1)} - {UNKNOWN_IDENTITY})
    n = len(ids)

    def count(fraction: float) -> int:
        c = int(round(n * fraction))
        return max(c, 1) if fraction > 0 and n >= 3 else c

    n_test, n_val = count(test_fraction), count(val_fraction)
    if n_test + n_val >= n and n > 0:
        raise ValueError(
            f"{n} identities cannot be split into val {val_fraction} / test {test_fraction} "
            f"and leave any for training"
        )
    order = np.random.default_rng(seed).permutation(n)
    split = {}
    for rank, j in enumerate(order):
        split[ids[j]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return split


#: |yaw| ranges (ground truth, degrees) of the protocol: label, low, high
#: (boundaries as in :func:`mae_by_yaw_range`).
YAW_RANGES = (
    ("|yaw| < 30", 0.0, 30.0),
    ("|yaw| 30-60", 30.0, 60.0),
    ("|yaw| > 60", 60.0, float("inf")),
)


def mae_by_yaw_range(pred: np.ndarray, target: np.ndarray, valid=None) -> dict[str, dict]:
    """MAE per angle and mean by ground-truth |yaw| range and overall.

    A face with |yaw| = 30 exactly counts in 30-60, 60 exactly in 30-60 too
    (ranges ``[0, 30)``, ``[30, 60]``, ``(60, inf)``).

    Returns:
        ``{label: {"faces": n, "yaw": .., "pitch": .., "roll": .., "mean": ..}}`` with
        the labels of :data:`YAW_RANGES` and ``"all"`` (NaN for an empty range).
    """
    pred = np.asarray(pred, dtype=np.float64).reshape(-1, 3)
    target = np.asarray(target, dtype=np.float64).reshape(-1, 3)
    valid = np.ones(len(pred), bool) if valid is None else np.asarray(valid, dtype=bool)
    err = np.abs(pred - target)
    abs_yaw = np.abs(target[:, 0])
    masks = {
        "|yaw| < 30": abs_yaw < 30.0,
        "|yaw| 30-60": (abs_yaw >= 30.0) & (abs_yaw <= 60.0),
        "|yaw| > 60": abs_yaw > 60.0,
        "all": np.ones(len(pred), bool),
    }
    out = {}
    for label, mask in masks.items():
        m = mask & valid
        row: dict = {"faces": int(m.sum())}
        for k, a in enumerate(ANGLE_NAMES):
            row[a] = float(err[m, k].mean()) if m.any() else float("nan")
        row["mean"] = float(err[m].mean()) if m.any() else float("nan")
        out[label] = row
    return out


def published_sigma(result: dict, meta) -> np.ndarray:
    """``(N, 3)`` the uncertainty the runtime publishes for these network outputs."""
    from lechpe_model.uncertainty import apply_calibration

    return apply_calibration(
        getattr(meta, "uncertainty_calibration", None),
        result["angles"],
        result["uncertainty"],
        result["q"],
        result.get("log_error"),
    ).astype(np.float64)


def protocol_summary(evaluation: dict) -> dict:
    """The held-out-identity protocol numbers of an :func:`evaluate_sets` result."""
    from lechpe_model.uncertainty import rank_and_coverage

    meta = evaluation["meta"]
    calibrated = bool(getattr(meta, "uncertainty_calibration", None))
    sets = {}
    for name, s in evaluation["sets"].items():
        r = s["result"]
        valid = np.asarray(r["valid"], dtype=bool)
        ids = np.asarray(s["identities"])[valid]
        uniq, counts = np.unique(ids, return_counts=True)
        err = np.abs(r["angles"] - r["target"])[valid]
        sets[name] = {
            "path": s.get("path"),
            "faces": int(valid.sum()),
            "identities": {str(int(i)): int(c) for i, c in zip(uniq, counts, strict=True)},
            "left_out_by_identity_selection": int(s.get("not_selected", 0)),
            "crops": s.get("crops", "landmark"),
            "missed_by_detector": int(s.get("missed_by_detector", 0)),
            "mae_by_yaw_range": mae_by_yaw_range(r["angles"], r["target"], valid),
            "uncertainty": {
                "calibrated": calibrated,
                "published": rank_and_coverage(published_sigma(r, meta)[valid], err),
                "raw_softmax_std": rank_and_coverage(np.asarray(r["uncertainty"])[valid], err),
            },
        }
    return {"test_margin": evaluation.get("test_margin"), "sets": sets}


def _fmt(value: float) -> str:
    return "-" if not np.isfinite(value) else f"{value:.2f}"


def protocol_markdown(protocol: dict, title: str = "held-out identities") -> str:
    """Markdown tables (MAE by |yaw| range; uncertainty) for docs/RESULTS.md."""
    sets = protocol["sets"]
    names = [n for n in ("non_occluded", "occluded") if n in sets]
    label = {"non_occluded": "clean", "occluded": "occluded"}
    header = f"| {title} |"
    rule = "|---|"
    for n in names:
        header += f" {label[n]} faces | {label[n]} yaw | pitch | roll | **mean** |"
        rule += "---|---|---|---|---|"
    lines = [header, rule]
    for rng in [r[0] for r in YAW_RANGES] + ["all"]:
        cells = f"| {rng.replace('|', chr(92) + '|')} |"  # escaped: a table cell
        for n in names:
            row = sets[n]["mae_by_yaw_range"][rng]
            cells += (
                f" {row['faces']} | {_fmt(row['yaw'])} | {_fmt(row['pitch'])} | "
                f"{_fmt(row['roll'])} | **{_fmt(row['mean'])}** |"
            )
        lines.append(cells)
    lines.append("")
    lines.append("MAE in degrees by ground-truth |yaw|.")
    for n in names:
        ids = sets[n]["identities"]
        listed = ", ".join(
            f"{'unknown' if int(i) == UNKNOWN_IDENTITY else i} ({c})" for i, c in ids.items()
        )
        crops = f"{sets[n].get('crops', 'landmark')} crops"
        missed = sets[n].get("missed_by_detector", 0)
        if missed:
            crops += f" ({missed} faces missed by the detector left out)"
        lines.append(
            f"{label[n]}: {sets[n]['faces']} faces of {len(ids)} identities, {crops} "
            f"(id (faces)): {listed}"
        )
    lines += [
        "",
        "| uncertainty | Spearman(sigma, abs. error) yaw / pitch / roll | "
        "within +-1 sigma yaw / pitch / roll | median sigma (deg) |",
        "|---|---|---|---|",
    ]
    for n in names:
        for kind in ("published", "raw_softmax_std"):
            u = sets[n]["uncertainty"][kind]
            what = (
                "published (calibrated)"
                if kind == "published" and sets[n]["uncertainty"]["calibrated"]
                else "published (uncalibrated: raw)"
                if kind == "published"
                else "raw softmax std"
            )
            lines.append(
                f"| {label[n]}, {what} | "
                + " / ".join(_fmt(u["spearman"][a]) for a in ANGLE_NAMES)
                + " | "
                + " / ".join(f"{100 * u['coverage_1sigma'][a]:.0f} %" for a in ANGLE_NAMES)
                + " | "
                + " / ".join(_fmt(u["median_sigma"][a]) for a in ANGLE_NAMES)
                + " |"
            )
    return "\n".join(lines) + "\n"


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
    identities: set[int] | None = None,
    exclude_identities: set[int] | None = None,
    detector_crops: str | None = None,
    landmark_crops: bool = True,
) -> dict:
    """Run a checkpoint over the clean and/or occluded sets.

    Crops use the run's ``data.test_margin`` (``training_config`` in the
    checkpoint metadata; ``TEST_MARGIN`` for checkpoints without it).

    Args:
        identities: keep only faces of these identity ids (``None``: all).
        exclude_identities: drop faces of these ids (e.g. the training identities);
            the number dropped is reported.
        detector_crops: a detector name (``lechpe_model.detection``): also crop
            each face as the runtime does, from this detector's box
            (``training.detector_boxes.detector_crop_samples``; faces it misses
            get no such crop, their number is reported as ``missed_by_detector``).
        landmark_crops: keep the landmark crops too (False with ``detector_crops``:
            only the runtime's crops).

    Returns:
        ``{"sets": {name: {"mae": (3,), "mean": float, "n": int, "excluded": int,
        "unreadable": int, "result": run_inference dict, "keys": [...],
        "identities": (N,) int}}, "meta": ModelMetadata, "test_margin": float}``
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
    margin = run_test_margin(meta)
    out: dict = {"sets": {}, "meta": meta, "input_size": input_size, "test_margin": margin}
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
        ids = sample_identities(ds.samples)
        keep = np.ones(len(ids), dtype=bool)
        if identities is not None:
            keep &= np.isin(ids, sorted(identities))
        if exclude_identities:
            keep &= ~np.isin(ids, sorted(exclude_identities))
        not_selected = int((~keep).sum())
        ds.samples = [smp for smp, k in zip(ds.samples, keep, strict=True) if k]
        missed = 0
        if detector_crops:
            from lechpe_model.detection import create_detector
            from training.detector_boxes import detector_crop_samples

            found, detected = detector_crop_samples(ds.samples, create_detector(detector_crops))
            missed = len(ds.samples) - len(found)
            ds.samples = (ds.samples if landmark_crops else []) + detected
        elif not landmark_crops:
            raise ValueError("landmark_crops=False needs detector_crops")
        ids = sample_identities(ds.samples)
        LOG.info(
            "%s (%s): %d faces of %d identities (%d left out by the identity selection); %s",
            name,
            path,
            len(ds),
            len(set(ids.tolist())),
            not_selected,
            ds.report.summary(),
        )
        if len(ds) == 0:
            raise SystemExit(f"{path}: no usable sample ({ds.report.summary()})")
        with torch.no_grad():
            res = run_inference(
                model,
                FaceCropDataset(ds.samples, input_size, train=False, test_margin=margin),
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
            "identities": ids,
            "not_selected": not_selected,
            "missed_by_detector": missed,
            "crops": " + ".join(
                (["landmark"] if landmark_crops else [])
                + ([f"{detector_crops} detector"] if detector_crops else [])
            ),
            "path": path,
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


def write_reliability_plot(evaluation: dict, path: str) -> str:
    """``reliability.png`` of the published sigma (clean and occluded sets)."""
    from training.plots import plot_reliability

    sets = {}
    for name, s in evaluation["sets"].items():
        r = s["result"]
        valid = np.asarray(r["valid"], dtype=bool)
        sets[name.replace("_", "-")] = (
            published_sigma(r, evaluation["meta"])[valid],
            np.abs(r["angles"] - r["target"])[valid],
        )
    plot_reliability(sets, path)
    return path


def _checkpoint_float_dtype(path: str):
    """torch dtype of the checkpoint's floating tensors (float16 files stay float16)."""
    import torch
    from safetensors import safe_open

    with safe_open(path, framework="pt") as handle:
        for key in handle.keys():
            value = handle.get_slice(key).get_dtype()
            if value in ("F16", "BF16", "F32", "F64"):
                return {"F16": torch.float16, "BF16": torch.bfloat16}.get(value)
    return None


def calibrate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lechpe-eval calibrate-uncertainty",
        description="Fit the published per-angle uncertainty (lechpe_model.uncertainty) on "
        "VALIDATION identities and write a calibrated copy of the checkpoint.",
    )
    p.add_argument("--checkpoint", required=True, help="model (.safetensors)")
    p.add_argument("--data", default=None, help="clean validation faces")
    p.add_argument("--occluded-data", default=None, help="occluded validation faces")
    p.add_argument("--out", required=True, help="calibrated checkpoint to write")
    p.add_argument("--ridge", type=float, default=1e-3)
    p.add_argument(
        "--error-head-data",
        default=None,
        help="clean faces of validation identities, OTHER renders than --data: fit the "
        "error head (a linear map latent -> log |error|) on them and use its output in "
        "the calibration (kind loglinear-v2)",
    )
    p.add_argument(
        "--error-head-occluded-data",
        default=None,
        help="occluded faces for the error head (as --error-head-data)",
    )
    p.add_argument(
        "--error-head-ridges",
        default=",".join(str(r) for r in ERROR_HEAD_RIDGES),
        help="L2 penalties tried for the error head; the one whose output ranks the "
        "errors of --data / --occluded-data best (mean Spearman) is kept",
    )
    p.add_argument(
        "--add-detector-crops",
        default=None,
        metavar="DETECTOR",
        help="fit on the runtime's crops too: each face is also cropped from this "
        "detector's box (e.g. blazeface_full, the node's default), for the error head and "
        "the calibration; faces it misses keep their landmark crop only",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument(
        "--mirror-average",
        choices=("keep", "on", "off"),
        default="keep",
        help="turn test-time mirroring (crop and mirrored crop averaged, twice the network "
        "work) on or off in the written model before fitting; keep: as in --checkpoint",
    )
    add_identity_arguments(p)
    p.set_defaults(split="val")
    return p


#: L2 penalties ``calibrate-uncertainty`` tries for the error head by default.
ERROR_HEAD_RIDGES = (1, 3, 10, 30, 100, 300, 1000)


def _valid_rows(evaluation: dict, key: str) -> np.ndarray:
    """``key`` of every readable face of an :func:`evaluate_sets` result, sets in order."""
    parts = []
    for s in evaluation["sets"].values():
        r = s["result"]
        v = np.asarray(r["valid"], dtype=bool)
        value = np.abs(r["angles"] - r["target"]) if key == "err" else r[key]
        parts.append(np.asarray(value)[v])
    return np.concatenate(parts)


def _set_slices(evaluation: dict) -> list[slice]:
    """Row ranges of each set in :func:`_valid_rows`' order."""
    out, start = [], 0
    for s in evaluation["sets"].values():
        n = int(np.asarray(s["result"]["valid"], dtype=bool).sum())
        out.append(slice(start, start + n))
        start += n
    return out


def fit_error_head_on(
    model, head_eval: dict, cal_eval: dict, ridges: Sequence[float], dtype=None
) -> dict:
    """Fit ``model``'s error head on ``head_eval``'s faces, choose the ridge on ``cal_eval``'s.

    Both are :func:`evaluate_sets` results of the same model. Each ridge's head is
    scored by the mean over angles and sets (clean, occluded) of the Spearman
    correlation between its output and the absolute error on ``cal_eval``; the
    best is installed (rounded through ``dtype``, the dtype the checkpoint is
    written in, so that what is fitted next is what the saved model gives).

    Returns:
        ``{"ridge", "scores": {ridge: mean Spearman}, "faces", "log_error": (N, 3)
        the installed head's output on cal_eval's readable faces}``.
    """
    import torch

    from lechpe_model.uncertainty import fit_error_head, rank_and_coverage

    if not ridges:
        raise ValueError("give at least one error-head ridge")
    latent, err = _valid_rows(head_eval, "head_input"), _valid_rows(head_eval, "err")
    cal_latent, cal_err = _valid_rows(cal_eval, "head_input"), _valid_rows(cal_eval, "err")
    scores, heads = {}, {}
    for ridge in ridges:
        weight, bias = fit_error_head(latent, err, float(ridge))
        predicted = cal_latent @ weight.T.astype(np.float64) + bias
        # Spearman of the head's output with the error; NaN where it is constant
        rhos = [
            rho
            for part in _set_slices(cal_eval)
            for rho in rank_and_coverage(predicted[part], cal_err[part])["spearman"].values()
        ]
        finite = [r for r in rhos if np.isfinite(r)]
        scores[float(ridge)] = float(np.mean(finite)) if finite else -1.0
        heads[float(ridge)] = (weight, bias)
    best = max(scores, key=scores.get)
    model.set_error_head(*heads[best])
    if dtype is not None:
        with torch.no_grad():
            for p in model.error_head.parameters():
                p.copy_(p.to(dtype).float())
    with torch.no_grad():
        log_error = model.error_head(torch.as_tensor(cal_latent, dtype=torch.float32)).numpy()
    LOG.info("error head: ridge %s (mean Spearman on the calibration set %s)", best, scores)
    return {"ridge": best, "scores": scores, "faces": int(len(latent)), "log_error": log_error}


def copy_with_mirror_average(src: str, dst: str, on: bool) -> None:
    """Write ``src`` to ``dst`` with ``mirror_average`` set (dtype and calibration kept)."""
    from lechpe_model.checkpoint import load_checkpoint, save_checkpoint

    model, meta = load_checkpoint(src)
    model.mirror_average = bool(on)
    save_checkpoint(
        dst,
        model,
        meta.training_config,
        dtype=_checkpoint_float_dtype(src),
        input_size=meta.input_size,
        uncertainty_calibration=meta.uncertainty_calibration,
    )


def calibrate_main(argv: Sequence[str]) -> int:
    """``lechpe-eval calibrate-uncertainty``: fit, save, report on the fitting set."""
    from lechpe_model.checkpoint import load_checkpoint, save_checkpoint
    from lechpe_model.uncertainty import fit_calibration, rank_and_coverage

    args = calibrate_parser().parse_args(list(argv))
    if not args.data and not args.occluded_data:
        raise SystemExit("lechpe-eval calibrate-uncertainty: give --data and/or --occluded-data")
    head_dirs = [args.error_head_data, args.error_head_occluded_data]
    try:
        ridges = [float(v) for v in str(args.error_head_ridges).split(",") if v.strip()]
    except ValueError as exc:
        raise SystemExit(
            f"lechpe-eval calibrate-uncertainty: --error-head-ridges {args.error_head_ridges!r} "
            f"is not a comma-separated list of numbers"
        ) from exc
    if any(head_dirs) and (not ridges or any(not r > 0 for r in ridges)):
        raise SystemExit("lechpe-eval calibrate-uncertainty: --error-head-ridges must be > 0")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    chosen = selected_identities(args, [args.data, args.occluded_data])
    source = args.checkpoint
    if args.mirror_average != "keep":  # fit on the outputs the written model will give
        source = os.path.splitext(args.out)[0] + "_mirror_tmp.safetensors"
        copy_with_mirror_average(args.checkpoint, source, args.mirror_average == "on")
    try:
        evaluation = evaluate_sets(
            source,
            args.data,
            args.occluded_data,
            batch_size=args.batch_size,
            device=args.device,
            identities=chosen,
            detector_crops=args.add_detector_crops,
        )
        head_evaluation = None
        if any(head_dirs):
            head_evaluation = evaluate_sets(
                source,
                *head_dirs,
                batch_size=args.batch_size,
                device=args.device,
                identities=selected_identities(args, head_dirs),
                detector_crops=args.add_detector_crops,
            )
        model, meta = load_checkpoint(source)
    finally:
        if source != args.checkpoint and os.path.exists(source):
            os.unlink(source)
    angles, raw, q, err = (
        _valid_rows(evaluation, k) for k in ("angles", "uncertainty", "q", "err")
    )
    ids = sorted(
        {int(i) for s in evaluation["sets"].values() for i in np.asarray(s["identities"]).tolist()}
    )
    fitted_on = (
        f"{len(angles)} faces of {', '.join(p for p in (args.data, args.occluded_data) if p)}; "
        f"identities {ids if len(ids) <= 40 else f'{len(ids)} ids'} (split {args.split})"
    )
    if args.add_detector_crops:
        fitted_on += f"; landmark and {args.add_detector_crops} detector crops"
    log_error = head_report = None
    if head_evaluation is not None:
        if model.error_head is not None:
            LOG.info("replacing the checkpoint's error head with a new fit")
        head_report = fit_error_head_on(
            model,
            head_evaluation,
            evaluation,
            ridges,
            dtype=_checkpoint_float_dtype(args.checkpoint),
        )
        log_error = head_report.pop("log_error")
        fitted_on += (
            f"; error head (ridge {head_report['ridge']:g}) fitted on {head_report['faces']} "
            f"faces of {', '.join(p for p in head_dirs if p)}"
        )
        for part, s in zip(_set_slices(evaluation), evaluation["sets"].values(), strict=True):
            r = s["result"]  # the head's output per face, for the reliability plot
            r["log_error"] = np.zeros((len(r["valid"]), 3), np.float32)
            r["log_error"][np.asarray(r["valid"], dtype=bool)] = log_error[part]
    elif model.error_head is not None:  # keep the checkpoint's head and use it
        log_error = _valid_rows(evaluation, "log_error")
    calibration = fit_calibration(
        angles, raw, q, err, ridge=args.ridge, fitted_on=fitted_on, log_error=log_error
    )
    save_checkpoint(
        args.out,
        model,
        meta.training_config,
        dtype=_checkpoint_float_dtype(args.checkpoint),
        input_size=meta.input_size,
        uncertainty_calibration=calibration.to_dict(),
    )
    sigma = calibration.sigma(angles, raw, q, log_error)
    report = {
        "checkpoint": args.checkpoint,
        "calibrated_checkpoint": args.out,
        "fitted_on": fitted_on,
        "error_head": head_report,
        "calibration": calibration.to_dict(),
        "fit_set": rank_and_coverage(sigma, err),
        "fit_set_raw_softmax_std": rank_and_coverage(raw, err),
    }
    stem = os.path.splitext(args.out)[0]
    with open(stem + "_calibration.json", "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
    if not args.no_plot:
        calibrated_meta = dataclasses.replace(
            evaluation["meta"],
            uncertainty_calibration=calibration.to_dict(),
            error_head=model.error_head is not None,
        )
        write_reliability_plot(
            dict(evaluation, meta=calibrated_meta), stem + "_reliability_fit.png"
        )
    fit = report["fit_set"]
    print(
        f"calibrated uncertainty written to {args.out} ({fitted_on}); on the fitting set: "
        f"Spearman "
        + "/".join(f"{v:+.2f}" for v in fit["spearman"].values())
        + ", within +-1 sigma "
        + "/".join(f"{100 * v:.0f} %" for v in fit["coverage_1sigma"].values())
        + ", median sigma "
        + "/".join(f"{v:.1f}" for v in fit["median_sigma"].values())
        + " deg. Evaluate it on TEST identities with lechpe-eval."
    )
    return 0


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
    p.add_argument(
        "--detector-crops",
        default=None,
        metavar="DETECTOR",
        help="crop each face as the runtime does, from this detector's box (e.g. "
        "blazeface_full, the node's default) instead of its landmark box; faces the "
        "detector misses are left out and counted",
    )
    p.add_argument("--tsne-max", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    add_identity_arguments(p)
    p.add_argument(
        "--train-data",
        action="append",
        default=[],
        help="data the model was trained on (repeatable): its identities are excluded "
        "and counted, so every face evaluated is of an identity never trained on",
    )
    return p


def add_identity_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--identities", default=None, help="comma-separated identity ids to evaluate (default all)"
    )
    p.add_argument(
        "--split",
        choices=("all", "train", "val", "test"),
        default="all",
        help="evaluate only the identities of this split of the data's identities "
        "(identity_split: --val-fraction, --test-fraction, --split-seed)",
    )
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--test-fraction", type=float, default=0.15)
    p.add_argument("--split-seed", type=int, default=0)


def selected_identities(args, data_dirs: Sequence[str | None]) -> set[int] | None:
    """The identity ids chosen by ``--identities`` / ``--split`` (None: all)."""
    from training.datasets import load_dataset

    chosen: set[int] | None = None
    if args.identities:
        chosen = {int(v) for v in str(args.identities).split(",") if v.strip()}
    if args.split != "all":
        ids: set[int] = set()
        for d in data_dirs:
            if d:
                ids |= set(sample_identities(load_dataset(d, "auto").samples).tolist())
        if ids <= {UNKNOWN_IDENTITY}:
            raise SystemExit(
                f"lechpe-eval: --split {args.split} needs identity ids in the data (index.csv "
                f"column or .mat field 'identity'); none found"
            )
        split = identity_split(ids, args.val_fraction, args.test_fraction, args.split_seed)
        in_split = {i for i, part in split.items() if part == args.split}
        chosen = in_split if chosen is None else chosen & in_split
    return chosen


def training_identities(train_dirs: Sequence[str]) -> set[int]:
    """Identity ids present in the training data folders (unknown ids left out)."""
    from training.datasets import load_dataset

    ids: set[int] = set()
    for d in train_dirs:
        ids |= set(sample_identities(load_dataset(d, "auto").samples).tolist())
    return ids - {UNKNOWN_IDENTITY}


def main(argv: Sequence[str] | None = None) -> int:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "consistency":
        from training.consistency import main as consistency_main

        return consistency_main(argv[1:])
    if argv and argv[0] == "calibrate-uncertainty":
        return calibrate_main(argv[1:])
    args = build_parser().parse_args(argv)
    if not args.data and not args.occluded_data:
        raise SystemExit("lechpe-eval: give --data and/or --occluded-data")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.makedirs(args.out, exist_ok=True)
    chosen = selected_identities(args, [args.data, args.occluded_data])
    trained = training_identities(args.train_data)
    if args.train_data:
        LOG.info("excluding %d training identities of %s", len(trained), args.train_data)
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
        identities=chosen,
        exclude_identities=trained,
        detector_crops=args.detector_crops,
        landmark_crops=not args.detector_crops,
    )
    sets = evaluation["sets"]
    protocol = protocol_summary(evaluation)
    protocol["selection"] = {
        "identities": None if chosen is None else sorted(chosen),
        "split": args.split,
        "split_seed": args.split_seed,
        "train_data": list(args.train_data),
        "training_identities_excluded": sorted(trained),
    }
    with open(os.path.join(args.out, "protocol.json"), "w", encoding="utf-8") as handle:
        json.dump(protocol, handle, indent=2)
    protocol_md = protocol_markdown(protocol, args.name)
    with open(os.path.join(args.out, "protocol.md"), "w", encoding="utf-8") as handle:
        handle.write(protocol_md)
    columns = table_columns(list(sets))
    md, csv_path = write_tables({args.method: table_row(sets)}, columns, args.name, args.out)
    write_predictions(evaluation, args.out)
    summary = {
        "model": args.model,
        "input_size": evaluation["input_size"],
        "test_margin": evaluation["test_margin"],
        "protocol": protocol,
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
        write_reliability_plot(evaluation, os.path.join(args.out, "reliability.png"))
    with open(md, encoding="utf-8") as handle:
        print(handle.read())
    print(protocol_md)
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
