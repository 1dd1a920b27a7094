"""``lechpe-ablation``: the beta study of section IV-D with seeds, and the K check.

::

    lechpe-ablation --config ablation_cpu --data data/abl --occluded-data data/abl_occ \\
        --out runs/ablation --seeds 0 1 2 --ks 5 10 20 --k-beta 100 \\
        --set data.test_identities=[900,999] \\
        --eval heldout=data/abl_test,data/abl_test_occ

1. Stage 1 is trained **once** (``OUT/stage1/``, seed ``--split-seed``; or given
   with ``--stage1 CKPT``): every run below starts from the same stage-1
   weights, so the comparison isolates the clustering term.
2. For each beta in ``--betas`` (default 0 10 100 1000) and each seed in
   ``--seeds`` (default 0 1 2): k-means + stage 2 with ``stage2.beta = beta``
   and ``seed = s`` into ``OUT/beta_<beta>_seed<s>/``.  The train/validation
   split stays the one of stage 1 (``data.split_seed``); the seed changes
   k-means, the batch order and the augmentation of stage 2: the spread over
   seeds is the noise a beta difference must beat.  A finished run is
   reused, an interrupted one resumed.
3. With ``--ks``: the same for K in ``--ks`` at ``--k-beta``
   (``OUT/k_<K>_seed<s>/``; the configured K reuses the beta runs).
4. Each ``--eval NAME=CLEAN[,OCCLUDED]`` set (``--eval-format``,
   ``--eval-channel-order`` for BIWI ``.npz`` files) is evaluated with every
   model; without ``--eval`` the runs' validation split (held-out groups) is
   used.  ``OUT/ablation_<NAME>.md/.csv`` has one row per beta,
   ``| β = 0 | clean mean ± std | occluded mean ± std |`` (sample standard
   deviation over the seeds), ``ablation_<NAME>.png`` the same with error
   bars, ``ablation_<NAME>_runs.csv`` every run; ``ablation_k_<NAME>.*`` the
   K rows (with the mean k-means inertia, the elbow check with accuracy).

Never choose beta or K on the test identities: pick on the validation split,
report the held-out ``--eval`` set.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
from collections.abc import Sequence

import numpy as np

LOG = logging.getLogger("training.ablation")

DEFAULT_BETAS = (0.0, 10.0, 100.0, 1000.0)
DEFAULT_SEEDS = (0, 1, 2)


def parse_eval(text: str) -> tuple[str, str | None, str | None]:
    """``NAME=CLEAN[,OCCLUDED]`` (either path may be empty) -> (name, clean, occluded)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--eval {text!r}: expected NAME=CLEAN[,OCCLUDED]")
    name, paths = text.split("=", 1)
    clean, _, occluded = paths.partition(",")
    if not clean and not occluded:
        raise argparse.ArgumentTypeError(f"--eval {text!r}: no dataset path")
    return name, clean or None, occluded or None


def beta_label(beta: float) -> str:
    return f"β = {beta:g}"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for one value), NaNs ignored."""
    arr = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    if len(arr) == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def format_mean_std(values: Sequence[float]) -> str:
    mean, std = mean_std(values)
    return f"{mean:.3f} ± {std:.3f}"


def _train(argv: list[str]) -> None:
    from training.train import main as train_main

    code = train_main(argv)
    if code:
        raise SystemExit(f"training failed ({code}): lechpe-train {' '.join(argv)}")


def validation_row(run_dir: str) -> tuple[float, float]:
    """(clean MAE, occluded MAE) of the last stage-2 epoch in ``metrics.jsonl``."""
    last = None
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            if record.get("stage") == "stage2":
                last = record
    if last is None:
        raise SystemExit(f"{run_dir}: no stage-2 epoch in metrics.jsonl")
    return float(last.get("val_clean_mae_mean", float("nan"))), float(
        last.get("val_occluded_mae_mean", float("nan"))
    )


def write_rows(
    rows: dict[str, dict[str, list[float]]],
    columns: Sequence[str],
    name: str,
    seeds: Sequence[int],
    out_dir: str,
    stem: str,
) -> tuple[str, str]:
    """``stem.md`` (``| β = 0 | mean ± std | ... |``) and ``stem.csv`` (means, stds, n)."""
    md_path, csv_path = os.path.join(out_dir, stem + ".md"), os.path.join(out_dir, stem + ".csv")
    lines = [
        f"| {name} | " + " | ".join(f"{c} (mean ± std)" for c in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for label, cells in rows.items():
        lines.append(
            f"| {label} | " + " | ".join(format_mean_std(cells[c]) for c in columns) + " |"
        )
    seed_text = ", ".join(str(s) for s in seeds)
    lines.append("")
    lines.append(
        f"MAE in degrees over {len(seeds)} seeds ({seed_text}) of stage 2 from one shared "
        "stage 1: mean ± sample standard deviation over the seeds."
    )
    with open(md_path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        header = [name]
        for c in columns:
            header += [f"{c} mean", f"{c} std"]
        writer.writerow(header + ["seeds"])
        for label, cells in rows.items():
            row = [label]
            for c in columns:
                mean, std = mean_std(cells[c])
                row += [f"{mean:.4f}", f"{std:.4f}"]
            writer.writerow(row + [len(seeds)])
    return md_path, csv_path


def plot_rows(
    xs: Sequence[float],
    rows: dict[str, dict[str, list[float]]],
    columns: Sequence[str],
    xlabel: str,
    path: str,
    log_x: bool,
) -> None:
    """Mean MAE with ±1 std error bars against beta (log axis, 0 at the left) or K."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    pos = [x if (x > 0 or not log_x) else 1.0 for x in xs]
    for column in columns:
        stats = [mean_std(cells[column]) for cells in rows.values()]
        ax.errorbar(
            pos,
            [m for m, _ in stats],
            yerr=[s for _, s in stats],
            marker="o",
            capsize=4,
            label=column,
        )
    if log_x:
        ax.set_xscale("log")
    ax.set_xticks(pos)
    ax.set_xticklabels([f"{x:g}" for x in xs])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("MAE (deg), mean ± std over seeds")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="lechpe-ablation", description="beta ablation with seeds (Tables IV-VI) and K check."
    )
    p.add_argument("--config", default="paper")
    p.add_argument("--data", required=True)
    p.add_argument("--occluded-data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--betas", type=float, nargs="+", default=list(DEFAULT_BETAS))
    p.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    p.add_argument(
        "--split-seed", type=int, default=None, help="seed of stage 1 and the split (first seed)"
    )
    p.add_argument("--ks", type=int, nargs="*", default=[], help="K values at --k-beta")
    p.add_argument("--k-beta", type=float, default=100.0)
    p.add_argument("--stage1", default=None, help="existing stage-1 checkpoint to start from")
    p.add_argument("--eval", dest="evals", type=parse_eval, action="append", default=[])
    p.add_argument("--eval-format", default="auto", help="format of the --eval clean sets")
    p.add_argument("--eval-occluded-format", default="auto")
    p.add_argument("--eval-channel-order", default="bgr", choices=("bgr", "rgb"))
    p.add_argument("--eval-list-file", default=None, help="Pandora list file of the --eval sets")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    split_seed = args.seeds[0] if args.split_seed is None else args.split_seed
    common = ["--config", args.config, "--data", args.data, "--occluded-data", args.occluded_data]
    for item in args.overrides:
        common += ["--set", item]
    common += ["--set", f"data.split_seed={split_seed}"]
    if args.no_progress:
        common.append("--no-progress")

    from training.config import load_config

    config_k = int(load_config(args.config, args.overrides)["model"]["num_clusters"])
    stage1 = args.stage1
    if stage1 is None:
        stage1_dir = os.path.join(args.out, "stage1")
        stage1 = os.path.join(stage1_dir, "stage1.safetensors")
        if not os.path.isfile(os.path.join(stage1_dir, "model.safetensors")):
            resume = (
                ["--resume"]
                if os.path.isfile(os.path.join(stage1_dir, "state.safetensors"))
                else []
            )
            _train(
                common
                + ["--out", stage1_dir, "--set", f"seed={split_seed}", "--set", "stage2.epochs=0"]
                + resume
            )

    def run(run_dir: str, seed: int, beta: float, k: int) -> str:
        if os.path.isfile(os.path.join(run_dir, "model.safetensors")):
            LOG.info("reusing %s", run_dir)
            return run_dir
        extra = (
            ["--resume"]
            if os.path.isfile(os.path.join(run_dir, "state.safetensors"))
            else ["--init-stage1", stage1]
        )
        settings = ["--set", f"seed={seed}", "--set", f"stage2.beta={beta:g}"]
        settings += ["--set", f"model.num_clusters={k}"]
        _train(common + ["--out", run_dir] + settings + extra)
        return run_dir

    beta_runs: dict[float, dict[int, str]] = {}
    for beta in args.betas:
        beta_runs[beta] = {
            s: run(os.path.join(args.out, f"beta_{beta:g}_seed{s}"), s, beta, config_k)
            for s in args.seeds
        }
    k_runs: dict[int, dict[int, str]] = {}
    for k in args.ks:
        if k == config_k and args.k_beta in beta_runs:
            k_runs[k] = beta_runs[args.k_beta]
            continue
        k_runs[k] = {
            s: run(os.path.join(args.out, f"k_{k}_seed{s}"), s, args.k_beta, k) for s in args.seeds
        }

    from training.evaluate import evaluate_sets

    scores: dict[str, tuple[float, float]] = {}

    def score(run_dir: str, clean: str | None, occluded: str | None) -> tuple[float, float]:
        key = f"{run_dir}|{clean}|{occluded}"
        if key not in scores:
            if clean is None and occluded is None:
                scores[key] = validation_row(run_dir)
            else:
                result = evaluate_sets(
                    os.path.join(run_dir, "model.safetensors"),
                    clean,
                    occluded,
                    fmt=args.eval_format,
                    occluded_fmt=args.eval_occluded_format,
                    list_file=args.eval_list_file,
                    channel_order=args.eval_channel_order,
                )["sets"]
                scores[key] = (
                    result["non_occluded"]["mean"] if "non_occluded" in result else float("nan"),
                    result["occluded"]["mean"] if "occluded" in result else float("nan"),
                )
        return scores[key]

    evals = args.evals or [("validation split", None, None)]
    for name, clean, occluded in evals:
        columns = [c for c, path in (("clean", clean), ("occluded", occluded)) if path] or [
            "clean",
            "occluded",
        ]
        stem = "ablation_" + "".join(ch if ch.isalnum() else "_" for ch in name)
        per_run = []
        tables = [("β", beta_runs, beta_label, True, stem)]
        if k_runs:
            tables.append(
                ("K", k_runs, lambda k: f"K = {k}", False, stem.replace("ablation_", "ablation_k_"))
            )
        for what, runs, label, log_x, table_stem in tables:
            rows: dict[str, dict[str, list[float]]] = {}
            for value, by_seed in runs.items():
                cells: dict[str, list[float]] = {"clean": [], "occluded": []}
                for seed, run_dir in by_seed.items():
                    c, o = score(run_dir, clean, occluded)
                    cells["clean"].append(c)
                    cells["occluded"].append(o)
                    inertia = float("nan")
                    kmeans_json = os.path.join(run_dir, "kmeans.json")
                    if os.path.isfile(kmeans_json):
                        with open(kmeans_json, encoding="utf-8") as handle:
                            inertia = float(json.load(handle)["inertia"])
                    cells.setdefault("k-means inertia", []).append(inertia)
                    per_run.append([what, f"{value:g}", seed, f"{c:.4f}", f"{o:.4f}", inertia])
                rows[label(value)] = cells
            table_columns = list(columns) + (["k-means inertia"] if what == "K" else [])
            md, _ = write_rows(rows, table_columns, name, args.seeds, args.out, table_stem)
            plot_rows(
                list(runs),
                rows,
                columns,
                "beta (clustering weight)" if what == "β" else "K (clusters)",
                os.path.join(args.out, table_stem + ".png"),
                log_x,
            )
            with open(md, encoding="utf-8") as handle:
                print(handle.read())
        with open(os.path.join(args.out, stem + "_runs.csv"), "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["study", "value", "seed", "clean MAE", "occluded MAE", "inertia"])
            writer.writerows(per_run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
