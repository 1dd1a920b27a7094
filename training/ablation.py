"""``lechpe-ablation``: the beta study of section IV-D (Tables IV-VI layout).

::

    lechpe-ablation --config paper --data 300W_LP --occluded-data 300W_LP_occ --out ablation/ \\
        --eval BIWI=BIWI.npz,BIWI_occ/BIWI.npz --eval AFLW2000=AFLW2000,AFLW2000_occ \\
        --eval Pandora=,Pandora_occluded

1. Stage 1 is trained once (``OUT/stage1/``; or given with ``--stage1 CKPT``):
   every beta starts from the same stage-1 weights and the same k-means
   centroids (same seed), so the table isolates the clustering term.
2. For each beta in ``--betas`` (default 0 10 100 1000): k-means + stage 2
   with ``stage2.beta = beta`` into ``OUT/beta_<beta>/`` (a finished run is
   reused, an interrupted one resumed).
3. Each ``--eval NAME=CLEAN[,OCCLUDED]`` set is evaluated with every model;
   ``OUT/ablation_<NAME>.md/.csv`` has one row per beta with the
   non-occluded MAE, the occluded MAE and their mean (the paper's "MAE"
   column, e.g. BIWI beta = 100: (4.086 + 5.778) / 2 = 4.932).  Without
   ``--eval`` the runs' own validation split is used (last stage-2 epoch).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence

LOG = logging.getLogger("training.ablation")

DEFAULT_BETAS = (0.0, 10.0, 100.0, 1000.0)


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


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lechpe-ablation", description="beta ablation (Tables IV-VI).")
    p.add_argument("--config", default="paper")
    p.add_argument("--data", required=True)
    p.add_argument("--occluded-data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--betas", type=float, nargs="+", default=list(DEFAULT_BETAS))
    p.add_argument("--stage1", default=None, help="existing stage-1 checkpoint to start from")
    p.add_argument("--eval", dest="evals", type=parse_eval, action="append", default=[])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    common = ["--config", args.config, "--data", args.data, "--occluded-data", args.occluded_data]
    for item in args.overrides:
        common += ["--set", item]
    if args.no_progress:
        common.append("--no-progress")

    stage1 = args.stage1
    if stage1 is None:
        stage1_dir = os.path.join(args.out, "stage1")
        stage1 = os.path.join(stage1_dir, "stage1.safetensors")
        if not os.path.isfile(stage1):
            resume = (
                ["--resume"]
                if os.path.isfile(os.path.join(stage1_dir, "state.safetensors"))
                else []
            )
            _train(common + ["--out", stage1_dir, "--set", "stage2.epochs=0"] + resume)
    runs: dict[float, str] = {}
    for beta in args.betas:
        run_dir = os.path.join(args.out, f"beta_{beta:g}")
        runs[beta] = run_dir
        if os.path.isfile(os.path.join(run_dir, "model.safetensors")):
            LOG.info("beta %g: reusing %s", beta, run_dir)
            continue
        extra = (
            ["--resume"]
            if os.path.isfile(os.path.join(run_dir, "state.safetensors"))
            else ["--init-stage1", stage1]
        )
        _train(common + ["--out", run_dir, "--set", f"stage2.beta={beta:g}"] + extra)

    from training.evaluate import evaluate_sets, write_tables
    from training.plots import plot_ablation

    evals = args.evals or [("validation split", None, None)]
    for name, clean, occluded in evals:
        rows: dict[str, list[float]] = {}
        for beta, run_dir in runs.items():
            if clean is None and occluded is None:
                c, o = validation_row(run_dir)
            else:
                result = evaluate_sets(os.path.join(run_dir, "model.safetensors"), clean, occluded)[
                    "sets"
                ]
                c = result["non_occluded"]["mean"] if "non_occluded" in result else float("nan")
                o = result["occluded"]["mean"] if "occluded" in result else float("nan")
            if clean is None and occluded is not None:
                rows[beta_label(beta)] = [o]
            elif occluded is None and clean is not None:
                rows[beta_label(beta)] = [c]
            else:
                rows[beta_label(beta)] = [c, o, 0.5 * (c + o)]
        columns = (
            ["Occluded"]
            if clean is None and occluded is not None
            else ["Non-occluded"]
            if occluded is None and clean is not None
            else ["Non-occluded", "Occluded", "MAE"]
        )
        stem = "ablation_" + "".join(ch if ch.isalnum() else "_" for ch in name)
        md, _ = write_tables(rows, columns, name, args.out, stem=stem)
        plot_ablation(
            list(runs),
            {col: [rows[beta_label(b)][i] for b in runs] for i, col in enumerate(columns)},
            os.path.join(args.out, stem + ".png"),
        )
        with open(md, encoding="utf-8") as handle:
            print(handle.read())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
