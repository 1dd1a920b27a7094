"""Matplotlib figures for evaluation and model selection (PNG files, Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lechpe_model.conventions import ANGLE_NAMES


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_error_vs_angle(
    sets: dict[str, tuple[np.ndarray, np.ndarray]], path: str, bin_width: float = 10.0
) -> None:
    """Mean absolute error against the ground-truth angle, one panel per angle.

    Args:
        sets: ``{label: (pred (N, 3), target (N, 3))}`` degrees, e.g. clean and occluded.
        path: output PNG.
        bin_width: width (degrees) of the ground-truth bins the error is averaged over.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
    edges = np.arange(-99.0, 99.0 + bin_width, bin_width)
    centres = 0.5 * (edges[:-1] + edges[1:])
    for k, (ax, name) in enumerate(zip(axes, ANGLE_NAMES, strict=True)):
        for label, (pred, target) in sets.items():
            if len(pred) == 0:
                continue
            err = np.abs(np.asarray(pred)[:, k] - np.asarray(target)[:, k])
            idx = np.digitize(np.asarray(target)[:, k], edges) - 1
            means = [
                err[idx == b].mean() if np.any(idx == b) else np.nan for b in range(len(centres))
            ]
            ax.plot(centres, means, marker="o", ms=3, label=f"{label} (MAE {err.mean():.2f})")
            ax.set_xlim(-100, 100)
        ax.set_title(name)
        ax.set_xlabel(f"ground-truth {name} (deg)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel(f"mean |error| (deg), {bin_width:g}-deg bins")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_tsne(
    embedding: np.ndarray,
    clusters: np.ndarray,
    occluded: np.ndarray,
    path: str,
    title: str = "t-SNE of the latent embeddings",
) -> None:
    """Two panels (Fig. 1b style): coloured by cluster, and by clean / occluded.

    Args:
        embedding: ``(N, 2)`` t-SNE coordinates.
        clusters: ``(N,)`` cluster index (argmax of q).
        occluded: ``(N,)`` bool.
    """
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 5))
    cmap = plt.get_cmap("tab20")
    for c in np.unique(clusters):
        sel = clusters == c
        ax1.scatter(
            embedding[sel, 0], embedding[sel, 1], s=6, color=cmap(int(c) % 20), label=f"c{c}"
        )
    ax1.set_title("coloured by cluster (argmax q)")
    ax1.legend(fontsize=6, loc="best", markerscale=2)
    occluded = np.asarray(occluded, bool)
    ax2.scatter(embedding[~occluded, 0], embedding[~occluded, 1], s=6, c="tab:blue", label="clean")
    ax2.scatter(embedding[occluded, 0], embedding[occluded, 1], s=6, c="tab:red", label="occluded")
    ax2.set_title("clean vs occluded")
    ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_elbow(ks: Sequence[int], inertias: Sequence[float], path: str) -> None:
    """k-means inertia against K (the elbow method, section IV-C)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(list(ks), list(inertias), marker="o")
    ax.set_xlabel("number of clusters K")
    ax.set_ylabel("k-means inertia (sum of squared distances)")
    ax.set_title("Elbow method on the stage-1 latents")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_ablation(betas: Sequence[float], rows: dict[str, Sequence[float]], path: str) -> None:
    """MAE against beta (log x axis, beta = 0 drawn at the left edge)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    xs = [b if b > 0 else 1.0 for b in betas]
    for label, values in rows.items():
        ax.plot(xs, values, marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{b:g}" for b in betas])
    ax.set_xlabel("beta (clustering weight)")
    ax.set_ylabel("MAE (deg)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_reliability(
    sets: dict[str, tuple[np.ndarray, np.ndarray]], path: str, num_bins: int = 8
) -> None:
    """Reliability of a per-angle sigma: observed RMS error and coverage per sigma bin.

    Args:
        sets: ``{label: (sigma (N, 3), abs_error (N, 3))}`` degrees.
        path: output PNG. Top row: RMS |error| against mean predicted sigma in
            equal-count sigma bins (calibrated: on the diagonal). Bottom row: the
            fraction of errors within +-sigma per bin (calibrated: 0.68).
    """
    plt = _pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for k, name in enumerate(ANGLE_NAMES):
        top, bottom = axes[0, k], axes[1, k]
        limit = 1.0
        for label, (sigma, err) in sets.items():
            s, e = np.asarray(sigma)[:, k], np.asarray(err)[:, k]
            if len(s) < num_bins:
                continue
            order = np.argsort(s, kind="stable")
            groups = np.array_split(order, num_bins)
            mean_sigma = np.array([s[g].mean() for g in groups])
            rms = np.array([np.sqrt(np.mean(e[g] ** 2)) for g in groups])
            cover = np.array([np.mean(e[g] <= s[g]) for g in groups])
            top.plot(mean_sigma, rms, "o-", label=label)
            bottom.plot(mean_sigma, cover, "o-", label=label)
            limit = max(limit, float(mean_sigma.max()), float(rms.max()))
        top.plot([0, limit], [0, limit], "k--", lw=0.8, label="calibrated")
        top.set_title(name)
        top.set_xlabel("predicted sigma (deg)")
        top.set_ylabel("RMS |error| (deg)")
        bottom.axhline(0.6827, color="k", ls="--", lw=0.8)
        bottom.set_ylim(0, 1)
        bottom.set_xlabel("predicted sigma (deg)")
        bottom.set_ylabel("fraction |error| <= sigma")
        top.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
