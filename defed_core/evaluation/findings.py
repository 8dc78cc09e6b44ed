"""Sentences that say where Defed is ahead, level or behind — made from the numbers, never by hand.

A difference in detection rate counts only when it exceeds two binomial standard errors of the
two measured rates; a difference in ROC-AUC only when it exceeds `AUC_MARGIN`. Anything smaller
is reported as level: with a few hundred examples per cell, smaller gaps are sampling noise.
"""

from __future__ import annotations

from typing import Any

from defed_core.evaluation.metrics import proportion_gap_is_clear

AUC_MARGIN = 0.02
BASELINES = {"feature-squeezing": "Feature Squeezing", "magnet": "the MagNet-style detector",
             "basenet": "the BaseNet ensemble (no edge features)"}


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def compare(cells: list[dict[str, Any]], ours: str, theirs: str) -> dict[str, list[str]]:
    """Cells where `ours` detects clearly more / clearly less / about the same as `theirs`."""
    verdict: dict[str, list[str]] = {"ahead": [], "behind": [], "level": []}
    for cell in cells:
        a, b = cell["results"][ours]["detection_rate"], cell["results"][theirs]["detection_rate"]
        if a is None or b is None:
            continue
        n = cell["adversarials"]
        side = "level" if not proportion_gap_is_clear(a, n, b, n) else ("ahead" if a > b else "behind")
        verdict[side].append(f"{cell['label']} ({pct(a)} vs {pct(b)})")
    return verdict


def compare_auc(cells: list[dict[str, Any]], ours: str, theirs: str) -> dict[str, list[str]]:
    verdict: dict[str, list[str]] = {"ahead": [], "behind": [], "level": []}
    for cell in cells:
        a, b = cell["results"][ours]["auc"], cell["results"][theirs]["auc"]
        if a is None or b is None:
            continue
        side = "level" if abs(a - b) <= AUC_MARGIN else ("ahead" if a > b else "behind")
        verdict[side].append(f"{cell['label']} ({a:.3f} vs {b:.3f})")
    return verdict


def listing(items: list[str]) -> str:
    return "; ".join(items) if items else "none"


def baseline_findings(summary: dict[str, Any]) -> list[str]:
    cells = summary["cells"]
    present = {s["key"] for s in summary["screens"]}
    out = []
    for key, name in BASELINES.items():
        if key not in present:
            continue
        det, auc = compare(cells, "defed", key), compare_auc(cells, "defed", key)
        total = len([c for c in cells if c["adversarials"]])
        out.append(
            f"**Defed vs {name}** — detection at the {pct(summary['plan']['budget'])} false-positive budget "
            f"(Defed vs {name}): Defed is clearly ahead in {len(det['ahead'])} of {total} cells "
            f"[{listing(det['ahead'])}], clearly behind in {len(det['behind'])} [{listing(det['behind'])}], "
            f"and level within sampling noise in {len(det['level'])} [{listing(det['level'])}]. "
            f"By ROC-AUC: ahead in {len(auc['ahead'])}, behind in {len(auc['behind'])} "
            f"[{listing(auc['behind'])}], level (±{AUC_MARGIN}) in {len(auc['level'])}."
        )
    return out


def best_detector_findings(summary: dict[str, Any]) -> list[str]:
    """Which detector (of the budget-calibrated ones) detects most in each cell."""
    skip = {"defed-shipped", "none"}
    titles = {s["key"]: s["title"] for s in summary["screens"]}
    wins: dict[str, list[str]] = {}
    for cell in summary["cells"]:
        rates = {k: v["detection_rate"] for k, v in cell["results"].items()
                 if k not in skip and v["detection_rate"] is not None}
        if rates:
            best = max(rates, key=lambda k: rates[k])
            wins.setdefault(best, []).append(f"{cell['label']} ({pct(rates[best])})")
    parts = [f"{titles[k]} in {len(v)} [{listing(v)}]" for k, v in sorted(wins.items(), key=lambda kv: -len(kv[1]))]
    return ["**Highest detection rate per cell** (at the budget): " + "; ".join(parts) + "."] if parts else []


def shipped_findings(summary: dict[str, Any]) -> list[str]:
    rows = {s["key"]: s for s in summary["screens"]}
    if "defed-shipped" not in rows:
        return []
    rates = [c["results"]["defed-shipped"]["detection_rate"] for c in summary["cells"]
             if c["results"]["defed-shipped"]["detection_rate"] is not None]
    if not rates:
        return []
    s = rows["defed-shipped"]
    return [f"**The product as shipped** (the bundle's own thresholds): {pct(s['test_fpr'])} of benign test images "
            f"flagged; detection from {pct(min(rates))} to {pct(max(rates))} across the cells."]


def adaptive_findings(summary: dict[str, Any]) -> list[str]:
    rows = summary.get("adaptive") or []
    if not rows:
        return []
    def name(r: dict[str, Any]) -> str:
        return f"{'L∞' if r['norm'] == 'linf' else 'L2'} ε={r.get('eps_text') or format(r['eps'], 'g')}"

    budget = ", ".join(f"{name(r)}: {pct(r['success_budget'])}" for r in rows)
    shipped = ", ".join(f"{name(r)}: {pct(r['success_shipped'])}" for r in rows)
    worst = max(rows, key=lambda r: r["success_budget"])
    top = worst["success_budget"]
    verdict = (f"Defed does not withstand a defence-aware attacker at {name(worst)}" if top >= 0.5 else
               "the defence-aware attack succeeds on a minority of images" if top > 0.05 else
               "the defence-aware attack rarely succeeds at these settings (a stronger attack may still)")
    return [f"**Adaptive attack** — share of correctly classified images turned into a wrong label that no member "
            f"flags, at the budget thresholds: {budget}; at the shipped thresholds: {shipped}. In short: {verdict}."]


def findings(summary: dict[str, Any]) -> list[str]:
    return (best_detector_findings(summary) + baseline_findings(summary) + shipped_findings(summary)
            + adaptive_findings(summary))
