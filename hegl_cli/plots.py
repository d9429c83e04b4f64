"""Pictures next to the machine-readable files: training curves, robustness curves, heat-map overlays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def upsample(maps: np.ndarray, size: int) -> np.ndarray:
    """(C, h, w) -> (C, size, size), bilinear; each map keeps its total mass."""
    t = torch.from_numpy(maps).unsqueeze(0).float()
    up = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0]
    up = up.clamp_min(0)
    up = up / up.flatten(1).sum(1).clamp_min(1e-12).view(-1, 1, 1) * torch.from_numpy(maps).flatten(1).sum(1).view(-1, 1, 1)
    return up.numpy()


def draw_heatmap(ax, image: np.ndarray, heat: np.ndarray, title: str | None = None, alpha: float = 0.4,
                 title_color: str = "black") -> None:
    """A grey (S, S) image in [0, 1] under a jet heat map (S, S) scaled to its own maximum, no axes."""
    ax.imshow(image, cmap="gray", vmin=0, vmax=1)
    ax.imshow(heat / max(float(heat.max()), 1e-12), cmap="jet", alpha=alpha, vmin=0, vmax=1)
    if title is not None:
        ax.set_title(title, fontsize=9, color=title_color)
    ax.axis("off")


def loss_terms(record: dict[str, Any]) -> list[str]:
    """The loss keys a training epoch record logs: ``train_loss`` (the weighted total) first,
    then ``train_<term>`` for every term the criterion returned, in its order, whatever the terms are."""
    return sorted((k for k in record if k.startswith("train_")), key=lambda k: k != "train_loss")


def plot_training_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Loss terms and validation metrics per epoch."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 4))
    for key in loss_terms(history[0]):
        ax_loss.plot(epochs, [h.get(key, float("nan")) for h in history], label=key[6:])
    ax_loss.set(xlabel="epoch", ylabel="loss", title="training loss terms")
    ax_loss.legend()
    for key in ("val_auc", "val_f1", "val_mcc"):
        ax_val.plot(epochs, [h[key] if h[key] is not None else float("nan") for h in history], label=key[4:].upper())
    ax_val.set(xlabel="epoch", ylabel="score", title="validation (macro)", ylim=(min(0, ax_val.get_ylim()[0]), 1))
    ax_val.legend()
    for ax in (ax_loss, ax_val):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def plot_robustness(records: list[dict[str, Any]], path: Path, metrics: tuple[str, ...] = ("auc", "f1", "mcc", "energy_in_mask")) -> None:
    """Metric vs noise sigma, one line per run (mean with min-max band over draws)."""
    runs = list(dict.fromkeys(r["run"] for r in records))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.8))
    for ax, metric in zip(axes, metrics):
        for run in runs:
            rows = sorted((r for r in records if r["run"] == run), key=lambda r: r["sigma"])
            sigmas = [r["sigma"] for r in rows]
            means = [r[metric]["mean"] if r.get(metric) else float("nan") for r in rows]
            ax.plot(sigmas, means, marker="o", label=run)
            lows = [r[metric]["min"] if r.get(metric) else float("nan") for r in rows]
            highs = [r[metric]["max"] if r.get(metric) else float("nan") for r in rows]
            ax.fill_between(sigmas, lows, highs, alpha=0.15)
        ax.set(xlabel="Gaussian noise sigma", title=metric.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def plot_reliability(curve: list[dict[str, Any]], path: Path, title: str = "reliability") -> None:
    """Observed share of positives against the mean predicted probability, per bin (dot size: pairs)."""
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfectly calibrated")
    if curve:
        pairs = np.array([b["pairs"] for b in curve], dtype=float)
        ax.plot([b["mean_probability"] for b in curve], [b["positive_share"] for b in curve], color="C0", lw=1)
        ax.scatter([b["mean_probability"] for b in curve], [b["positive_share"] for b in curve],
                   s=20 + 180 * pairs / pairs.max(), color="C0", zorder=3)
    ax.set(xlabel="mean predicted probability", ylabel="share of positives", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def plot_methods(report: dict[str, Any], path: Path, title: str = "explanation methods") -> None:
    """Per method: energy in mask (flat map dashed), pointing game, deletion gain over random order,
    and the sanity check's similarity to the trained maps after each randomisation stage."""
    rows = report["methods"]["methods"]
    names = list(rows)
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    x = np.arange(len(names))
    for ax, key, label in ((axes[0], "energy_in_mask", "energy in mask"), (axes[1], "pointing_game", "pointing game"),
                           (axes[2], "deletion_gain", "deletion gain over a random order")):
        ax.bar(x, [rows[m][key] for m in names], color=[f"C{k % 10}" for k in range(len(names))])
        if key == "energy_in_mask":
            ax.axhline(np.mean([rows[m]["energy_uniform"] for m in names]), color="grey", ls="--", lw=1,
                       label="a flat map")
            ax.legend(fontsize=7)
        ax.set_xticks(x, names, rotation=35, ha="right", fontsize=7)
        ax.set_title(label, fontsize=9)
    sanity = (report.get("sanity") or {}).get("methods", {})
    for k, (method, entry) in enumerate(sanity.items()):
        stages = entry["stages"]
        axes[3].plot(range(len(stages)), [s["similarity"] for s in stages], marker="o", ms=3, color=f"C{k % 10}",
                     label=method + (" (flagged)" if entry["flagged"] else ""))
        axes[3].set_xticks(range(len(stages)), [s["stage"] for s in stages], rotation=60, ha="right", fontsize=6)
    if sanity:
        axes[3].axhline(report["sanity"]["survives_at"], color="grey", ls="--", lw=1)
        axes[3].legend(fontsize=6)
    axes[3].set_title("sanity: similarity to the trained maps (Spearman)", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
