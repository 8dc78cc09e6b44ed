"""The report's PNG figures, drawn with matplotlib's non-interactive backend.

- roc-<cell>.png and roc-all.png: ROC curve of every detector per attack cell;
- hist-member-<i>.png: benign vs adversarial scores of each Defed member, one panel per attack;
- detection-vs-eps.png: detection rate at the budget against ε for the budgeted attacks;
- adaptive.png: the adaptive attack's success against ε beside plain PGD's.

When the report has a figure caption (CIFAR-10: the images are JPEG-compressed), every figure
carries it above the plot; budgets counted in grey levels label the ε axes as "8/255".
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a gateway host or in CI

import matplotlib.pyplot as plt  # after the backend choice
import numpy as np

from defed_core.evaluation.experiment import Evaluation
from defed_core.evaluation.metrics import roc

ROC_SKIP = ("none", "defed-shipped")  # no scores / the same curve as "defed"


def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", label.lower().replace("ε=", "eps")).strip("-")


def titles(summary: dict[str, Any]) -> dict[str, str]:
    return {s["key"]: s["title"] for s in summary["screens"]}


def save(fig: Any, path: Path, dpi: int, summary: dict[str, Any]) -> None:
    """Write the figure, with the report's caption above it if it has one."""
    caption = summary["meta"].get("figure_caption")
    if caption:
        # Above the plots: several figures keep their legend along the bottom edge.
        fig.text(0.5, 1.0, caption, ha="center", va="bottom", fontsize=7, color="0.3")
        fig.savefig(path, dpi=dpi, bbox_inches="tight")  # grow the canvas to hold the caption
    else:
        fig.savefig(path, dpi=dpi)
    plt.close(fig)


def eps_axis(ax: Any, rows: list[dict[str, Any]]) -> None:
    """Tick the ε axis at the budgets, labelled as the tables show them, when that is not plain "0.3"."""
    texts = [r.get("eps_text") or f"{r['eps']:g}" for r in rows]
    if any(t != f"{r['eps']:g}" for t, r in zip(texts, rows, strict=True)):
        ax.set_xticks([r["eps"] for r in rows], texts)


def roc_axes(ax: Any, ev: Evaluation, summary: dict[str, Any], cell: dict[str, Any]) -> None:
    names = titles(summary)
    for key, scores in ev.cell_scores.get(cell["label"], {}).items():
        if key in ROC_SKIP or len(scores) == 0:
            continue
        fpr, tpr = roc(ev.benign_scores[key], scores)
        auc = cell["results"][key]["auc"]
        ax.plot(fpr, tpr, lw=1.2, label=f"{names[key]} ({auc:.3f})" if auc is not None else names[key])
    ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls=":")
    ax.axvline(summary["plan"]["budget"], color="0.5", lw=0.8, ls="--")
    ax.set_title(f"{cell['label']} (n={cell['adversarials']})", fontsize=9)
    ax.set_xlabel("false-positive rate", fontsize=8)
    ax.set_ylabel("detection rate", fontsize=8)


def draw_rocs(ev: Evaluation, summary: dict[str, Any], root: Path) -> list[str]:
    files = []
    cells = [c for c in summary["cells"] if c["adversarials"]]
    for cell in cells:
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        roc_axes(ax, ev, summary, cell)
        ax.legend(fontsize=7, loc="lower right", title="ROC-AUC", title_fontsize=7)
        name = f"roc-{slug(cell['label'])}.png"
        fig.tight_layout()
        save(fig, root / name, 110, summary)
        files.append(name)
    if cells:
        cols = 5
        rows = -(-len(cells) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
        for ax, cell in zip(axes.flat, cells, strict=False):
            roc_axes(ax, ev, summary, cell)
        for ax in list(axes.flat)[len(cells) :]:
            ax.axis("off")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, [re.sub(r" \(.*\)$", "", x) for x in labels], loc="lower center",
                   ncol=min(6, len(labels)), fontsize=8)
        fig.tight_layout(rect=(0, 0.05, 1, 1))
        save(fig, root / "roc-all.png", 90, summary)
        files.insert(0, "roc-all.png")
    return files


def draw_member_histograms(ev: Evaluation, summary: dict[str, Any], root: Path) -> list[str]:
    benign = ev.member_scores.get("benign")
    if benign is None:
        return []
    families: dict[str, list[np.ndarray]] = {}
    for cell in summary["cells"]:
        scores = ev.member_scores.get(cell["label"])
        if scores is not None and len(scores):
            families.setdefault(cell["attack"], []).append(scores)
    thresholds = summary["meta"]["bundle"]["thresholds"]
    members = summary["meta"]["bundle"]["members"]
    files = []
    for i in range(benign.shape[1]):
        cols = max(1, min(4, len(families)))
        rows = max(1, -(-len(families) // cols))
        fig, axes = plt.subplots(rows, cols, figsize=(max(3.4 * cols, 6.0), 2.8 * rows + 0.4), squeeze=False)
        floor = max(float(np.min(benign[:, i])), 1e-6)
        everything = np.concatenate([benign[:, i], *(np.concatenate(v)[:, i] for v in families.values())])
        bins = np.logspace(np.log10(floor), np.log10(max(float(everything.max()), floor * 10)), 50)
        for ax, (family, parts) in zip(axes.flat, families.items(), strict=False):
            adv = np.concatenate(parts)[:, i]
            ax.hist(np.clip(benign[:, i], floor, None), bins=bins, alpha=0.6, density=True, label="benign test")
            ax.hist(np.clip(adv, floor, None), bins=bins, alpha=0.6, density=True, label=f"{family} (all ε)")
            ax.axvline(thresholds[i], color="k", lw=0.9, ls="--", label="shipped threshold")
            ax.set_xscale("log")
            ax.set_title(family, fontsize=9)
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=6)
        for ax in list(axes.flat)[len(families) :]:
            ax.axis("off")
        fig.suptitle(f"Defed member σ={members[i]['sigma']:g}: score s_i, benign vs adversarial", fontsize=10)
        fig.tight_layout()
        name = f"hist-member-{i}.png"
        save(fig, root / name, 100, summary)
        files.append(name)
    return files


def draw_detection_vs_eps(summary: dict[str, Any], root: Path) -> list[str]:
    budgeted: dict[str, list[dict[str, Any]]] = {}
    for cell in summary["cells"]:
        if cell["eps"] is not None and cell["adversarials"]:
            budgeted.setdefault(cell["attack"], []).append(cell)
    if not budgeted:
        return []
    names = titles(summary)
    fig, axes = plt.subplots(1, len(budgeted), figsize=(3.6 * len(budgeted), 3.4), squeeze=False)
    for ax, (attack, cells) in zip(axes[0], budgeted.items(), strict=False):
        for key in names:
            if key == "none":
                continue
            ax.plot([c["eps"] for c in cells], [c["results"][key]["detection_rate"] for c in cells], marker="o",
                    lw=1.2, ls="--" if key.startswith("defed-member") else "-", label=names[key])
        ax.set_title(attack, fontsize=9)
        ax.set_xlabel("ε", fontsize=8)
        eps_axis(ax, cells)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel(f"detection rate at {summary['plan']['budget']:.0%} FPR", fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    save(fig, root / "detection-vs-eps.png", 100, summary)
    return ["detection-vs-eps.png"]


def draw_adaptive(summary: dict[str, Any], root: Path) -> list[str]:
    rows = summary.get("adaptive") or []
    if not rows:
        return []
    plain = {("linf", c["eps"]): c for c in summary["cells"] if c["attack"] == "pgd-linf"}
    plain |= {("l2", c["eps"]): c for c in summary["cells"] if c["attack"] == "pgd-l2"}
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4))
    for ax, norm in zip(axes, ("linf", "l2"), strict=True):
        mine = [r for r in rows if r["norm"] == norm]
        eps = [r["eps"] for r in mine]
        ax.plot(eps, [r["success_budget"] for r in mine], marker="o", label="adaptive: evades (budget thresholds)")
        ax.plot(eps, [r["success_shipped"] for r in mine], marker="s", label="adaptive: evades (shipped thresholds)")
        pgd = [plain.get((norm, e)) for e in eps]
        if all(p is not None and p["adversarials"] for p in pgd):
            ax.plot(eps, [1 - p["results"]["defed"]["detection_rate"] for p in pgd if p], marker="^", ls=":",
                    label="plain PGD: undetected share of its successes")
        ax.set_title("L∞" if norm == "linf" else "L2", fontsize=9)
        ax.set_xlabel("ε", fontsize=8)
        eps_axis(ax, mine)
        ax.set_ylim(0, 1.02)
    axes[0].set_ylabel("share of images", fontsize=8)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    save(fig, root / "adaptive.png", 100, summary)
    return ["adaptive.png"]


def draw_all(ev: Evaluation, summary: dict[str, Any], root: Path) -> list[str]:
    return (draw_detection_vs_eps(summary, root) + draw_adaptive(summary, root)
            + draw_member_histograms(ev, summary, root) + draw_rocs(ev, summary, root))
