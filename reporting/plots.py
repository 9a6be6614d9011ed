"""Plots: what people would rather see than read, for a run's report and a prediction's ranking."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from common import atomic_path  # noqa: E402
from reporting.metrics import _finite, _value, pair_table  # noqa: E402


def plot_loss(history: list[dict], best_epoch: int, path: Path) -> None:
    h = pd.DataFrame(history)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(h["epoch"], h["train_mse"], label="train")
    ax.plot(h["epoch"], h["val_mse"], label="validation")
    ax.axvline(best_epoch, color="grey", ls="--", lw=1, label=f"best (epoch {best_epoch})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE (ln IC50)")
    ax.set_title("Training and validation loss")
    ax.legend()
    fig.tight_layout()
    _save(fig, path)


def plot_pairs(pred: pd.DataFrame, path: Path, title: str) -> None:
    """Predicted vs measured ln IC50 per test pair (mean over the pair's cells)."""
    pairs = pair_table(pred)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(pairs["LN_IC50"], pairs["prediction"], s=14, alpha=0.7)
    lo = float(min(pairs["LN_IC50"].min(), pairs["prediction"].min()))
    hi = float(max(pairs["LN_IC50"].max(), pairs["prediction"].max()))
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
    ax.set_xlabel("measured ln IC50 (pair)")
    ax.set_ylabel("predicted ln IC50 (mean over the pair's cells)")
    ax.set_title(title)
    fig.tight_layout()
    _save(fig, path)


def plot_skill(estimate: dict[str, float], by_drug: dict, path: Path) -> None:
    """One dot per drug: its skill estimated on the training lines against its Pearson measured on
    the test pairs, with the bar below which predictions are marked."""
    from predictor.skill import BAR
    drugs = [d for d, r in by_drug.items() if _finite(estimate.get(d)) and _finite((r or {}).get("pcc"))]
    est = np.array([estimate[d] for d in drugs])
    measured = np.array([by_drug[d]["pcc"] for d in drugs])
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(est, measured, s=10, alpha=0.6)
    ax.plot([-0.2, 1], [-0.2, 1], color="grey", lw=0.8, ls="--")
    ax.axvline(BAR, color="red", lw=0.8, ls=":", label=f"bar ({BAR})")
    ax.set_xlabel("skill estimated on the training lines (cross-fitted)")
    ax.set_ylabel("Pearson within the drug, test pairs")
    r = np.corrcoef(est, measured)[0, 1] if len(drugs) >= 3 else float("nan")
    ax.set_title(f"{len(drugs)} drugs; r = {r:.2f}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_calibration(calibration: dict, path: Path) -> None:
    """Nominal against observed coverage of the intervals at each calibrated level (on the
    diagonal: as promised; below it: they hold fewer pairs than they say)."""
    nominal = [float(k) for k in calibration]
    observed = [_value(v) for v in calibration.values()]
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="as promised")
    ax.plot(nominal, observed, "o-", label="test pairs")
    for x, y in zip(nominal, observed):
        ax.annotate(f"{100 * y:.1f}%", (x, y), textcoords="offset points", xytext=(6, -10), fontsize=8)
    ax.set_xlim(0.4, 1.0)
    ax.set_ylim(0.4, 1.0)
    ax.set_xlabel("nominal coverage")
    ax.set_ylabel("observed coverage")
    ax.set_title("Interval calibration")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def plot_per_drug(metrics: dict, path: Path) -> None:
    """Per-drug Pearson of the model beside the best baseline per drug, and mean effects where
    it has a within-drug correlation (it has none under the cell_line split)."""
    model = metrics["test"]["per_drug"]["by_drug"]
    shown = [("model", model)]
    best = metrics.get("verdict", {}).get("best_baseline")
    for name in dict.fromkeys([best, "mean_effects"]):
        by_drug = metrics["baselines"].get(name, {}).get("per_drug", {}).get("by_drug", {})
        if any(_finite((r or {}).get("pcc")) for r in by_drug.values()):
            shown.append((name.replace("_", " "), by_drug))
    drugs = sorted(model, key=lambda d: -(model[d]["pcc"] if _finite(model[d]["pcc"]) else -9))
    if len(drugs) > MAX_BARS and len(shown) > 1:
        return _plot_per_drug_scatter(shown[0][1], *shown[1], path)
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(drugs) * len(shown) / 2 + 1.5))
    y = np.arange(len(drugs))
    height = 0.8 / len(shown)
    for i, (label, by_drug) in enumerate(shown):
        vals = [(by_drug.get(d) or {}).get("pcc") for d in drugs]
        ax.barh(y - 0.4 + height * (i + 0.5), [v if _finite(v) else 0.0 for v in vals],
                height=height, label=label)
    ax.set_yticks(y, drugs, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel("Pearson r within the drug (test pairs)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


MAX_BARS = 40   # more drugs than this (a table of every GDSC drug) are drawn as one dot each


def _plot_per_drug_scatter(model: dict, name: str, baseline: dict, path: Path) -> None:
    """One dot per drug, the model's per-drug Pearson against the best baseline's: a few hundred
    drugs stay readable, and the dots above the diagonal are the drugs the model wins."""
    pairs = [(model[d]["pcc"], (baseline.get(d) or {}).get("pcc")) for d in model]
    pairs = np.array([p for p in pairs if _finite(p[0]) and _finite(p[1])], dtype=float).reshape(-1, 2)
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.scatter(pairs[:, 1], pairs[:, 0], s=10, alpha=0.6)
    lo, hi = (float(pairs.min()), float(pairs.max())) if len(pairs) else (0.0, 1.0)
    ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8)
    wins = int((pairs[:, 0] > pairs[:, 1]).sum())
    ax.set_xlabel(f"{name}: Pearson r within the drug")
    ax.set_ylabel("model: Pearson r within the drug")
    ax.set_title(f"{len(pairs)} drugs; the model is higher for {wins}", fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


HEATMAP_DRUGS = 50       # more drugs than this: the heatmap shows those ranked highest in any group


def plot_ranking(ranking: pd.DataFrame, path: Path, groupby: str) -> None:
    """Heatmap of groups x drugs: z against the training lines (red: more sensitive than they
    are), or predicted ln IC50 where the checkpoint has no z; drugs from the most sensitive
    overall, and with many drugs only those ranked highest in any group."""
    relative = "z" in ranking.columns
    value = "z" if relative else ("median_ln_ic50" if "median_ln_ic50" in ranking.columns else "ln_ic50")
    shown = ranking
    if ranking["drug"].nunique() > HEATMAP_DRUGS:
        best = ranking.groupby("drug")["rank"].min().sort_values(kind="stable")
        shown = ranking[ranking["drug"].isin(best.index[:HEATMAP_DRUGS])]
    grid = shown.pivot(index="group", columns="drug", values=value)
    grid = grid[grid.median(axis=0).sort_values().index]
    fig, ax = plt.subplots(figsize=(min(2 + 0.35 * grid.shape[1], 30), min(1.5 + 0.3 * grid.shape[0], 30)))
    if relative:
        top = float(np.nanmax(np.abs(grid.to_numpy()))) if np.isfinite(grid.to_numpy()).any() else 1.0
        im = ax.imshow(grid.to_numpy(), aspect="auto", cmap="RdBu", vmin=-top, vmax=top)
    else:
        im = ax.imshow(grid.to_numpy(), aspect="auto", cmap="viridis_r")
    ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=90, fontsize=7)
    ax.set_yticks(range(grid.shape[0]), grid.index, fontsize=7)
    ax.set_xlabel("drug (most sensitive overall on the left)"
                  + (f"; the {grid.shape[1]} ranked highest in any group" if shown is not ranking else ""))
    ax.set_ylabel(groupby)
    fig.colorbar(im, ax=ax, label="z against the training lines (negative: more sensitive)" if relative
                 else "predicted ln IC50 (uM)")
    ax.set_title("Relative sensitivity per group" if relative else "Predicted drug sensitivity per group")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


GROUP_DRUGS = 20   # drugs drawn in each group's picture


def pathway_colours(ranking: pd.DataFrame) -> dict[str, tuple]:
    """One colour per pathway, the same in every group's picture (grey where none is known)."""
    names = sorted({p for p in ranking.get("pathway", pd.Series(dtype=str)).fillna("") if p})
    cmap = plt.get_cmap("tab20")
    return {p: cmap(i % 20) for i, p in enumerate(names)}


def plot_group(part: pd.DataFrame, path: Path, title: str, colours: dict, min_skill: float) -> None:
    """A group's first drugs by z, each with its interval, coloured by pathway; a drug the
    predictor knows weakly (skill below min_skill) is drawn hollow and says so."""
    part = part.sort_values("rank").head(GROUP_DRUGS)
    y = np.arange(len(part))[::-1]
    z = part["z"].to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.32 * len(part)))
    low = part["z_low"].to_numpy(dtype=float) if "z_low" in part else np.full(len(part), np.nan)
    high = part["z_high"].to_numpy(dtype=float) if "z_high" in part else np.full(len(part), np.nan)
    pathway = part["pathway"].fillna("").to_numpy() if "pathway" in part else np.full(len(part), "")
    skill = part["skill"].to_numpy(dtype=float) if "skill" in part else np.full(len(part), np.nan)
    for yi, zi, lo, hi, pw, sk in zip(y, z, low, high, pathway, skill):
        colour = colours.get(pw, (0.45, 0.45, 0.45, 1.0))
        if np.isfinite(lo) and np.isfinite(hi):
            ax.plot([lo, hi], [yi, yi], color=colour, lw=2, alpha=0.6)
        weak = np.isfinite(sk) and sk < min_skill
        ax.scatter([zi], [yi], s=40, zorder=3, edgecolors=[colour], linewidths=1.5,
                   facecolors="white" if weak else [colour])
    labels = [f"{d}  (skill {s:.2f}{', low' if s < min_skill else ''})" if np.isfinite(s) else f"{d}  (new)"
              for d, s in zip(part["drug"], skill)]
    ax.set_yticks(y, labels, fontsize=7)
    ax.axvline(0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("z against the training lines, with its 90% interval\n(negative: more sensitive)",
                  fontsize=8)
    shown = [p for p in dict.fromkeys(pathway) if p]
    if shown:
        handles = [plt.Line2D([], [], marker="o", ls="", color=colours[p], label=p) for p in shown]
        ax.legend(handles=handles, fontsize=6, loc="lower right", title="pathway", title_fontsize=7)
    ax.set_title(f"{title}: its {len(part)} most specific drugs\n(hollow: skill below {min_skill})",
                 fontsize=9)
    fig.tight_layout()
    _save(fig, path)
