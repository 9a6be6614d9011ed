"""Scores and reports: the model's test metrics beside naive and classical baselines fitted on the
same training split, the plots, report.md, and the mean over runs. Nothing here fits a model but
the naive baselines; the classical ones (baselines.py) arrive as predictions.

A model is only worth its complexity if it beats predicting each drug's mean: on GDSC the drug
mean alone already gives a high global Pearson. Every run therefore scores, on the same test rows:
global mean, drug mean, cell-line mean and mean effects (global + drug + cell-line effect), each
fitted on the training PAIRS (one value per pair, so pairs with more cells do not weigh more),
and the classical predictors on expression. Each is scored over cells, over pairs (a pair's mean
prediction against its label: IC50 is a property of the pair), and per drug (correlation within
each drug, averaged over drugs with at least 3 test pairs, so differences between drugs cannot
carry the score).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
from scipy import stats  # noqa: E402

from common import atomic_path, write_json, write_parquet, write_text  # noqa: E402
from relative import DrugSpread, line_scores  # noqa: E402


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    y, pred = np.asarray(y, float), np.asarray(pred, float)
    mse = float(np.mean((y - pred) ** 2))
    constant = np.ptp(pred) == 0 or np.ptp(y) == 0
    pcc = float("nan") if constant else float(stats.pearsonr(y, pred)[0])
    scc = float("nan") if constant else float(stats.spearmanr(y, pred)[0])
    return {"mse": mse, "rmse": float(np.sqrt(mse)), "pcc": pcc, "scc": scc, "n": int(len(y))}


def fit_baselines(train: pd.DataFrame) -> dict[str, object]:
    """Per-pair training labels -> the statistics each baseline predicts from."""
    pairs = train.groupby(["drug", "cell_line_id"], as_index=False)["LN_IC50"].mean()
    mu = float(pairs["LN_IC50"].mean())
    return {"global": mu,
            "drug": pairs.groupby("drug")["LN_IC50"].mean(),
            "cell_line": pairs.groupby("cell_line_id")["LN_IC50"].mean()}


def predict_baselines(fit: dict, test: pd.DataFrame) -> dict[str, np.ndarray]:
    """Unseen drugs or cell lines fall back to the global mean (their effect counts as zero)."""
    mu = fit["global"]
    drug = test["drug"].map(fit["drug"]).fillna(mu).to_numpy(float)
    line = test["cell_line_id"].map(fit["cell_line"]).fillna(mu).to_numpy(float)
    return {"global_mean": np.full(len(test), mu), "drug_mean": drug, "cell_line_mean": line,
            "mean_effects": mu + (drug - mu) + (line - mu)}


def pair_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (drug, cell line): its label and the mean prediction over its cells."""
    return df.groupby(["drug", "cell_line_id"], as_index=False).agg(
        LN_IC50=("LN_IC50", "mean"), prediction=("prediction", "mean"), cells=("prediction", "size"))


def per_drug(pairs: pd.DataFrame, min_pairs: int = 3) -> dict:
    """Pearson/Spearman within each drug (over its test pairs), averaged over drugs with at least
    `min_pairs` pairs: drug-mean differences cannot carry this score."""
    rows = {}
    for drug, p in pairs.groupby("drug"):
        if len(p) >= min_pairs:
            m = regression_metrics(p["LN_IC50"].to_numpy(), p["prediction"].to_numpy())
            rows[drug] = {"pcc": m["pcc"], "scc": m["scc"], "pairs": int(len(p))}
    pcc = [r["pcc"] for r in rows.values() if r["pcc"] is not None and np.isfinite(r["pcc"])]
    scc = [r["scc"] for r in rows.values() if r["scc"] is not None and np.isfinite(r["scc"])]
    return {"pcc": float(np.mean(pcc)) if pcc else float("nan"),
            "scc": float(np.mean(scc)) if scc else float("nan"), "drugs": len(rows), "by_drug": rows}


def score(test: pd.DataFrame, pred: np.ndarray, mean_effects: np.ndarray | None = None,
          spread: DrugSpread | None = None) -> dict:
    """Metrics over cells, over pairs, and per drug (test has drug, cell_line_id, LN_IC50); with
    the mean-effects prediction of the same rows, also DrEval's normalised Pearson; with the
    training drugs' spread (test lines unseen), the per-line scores of relative sensitivity."""
    df = test[["drug", "cell_line_id", "LN_IC50"]].assign(prediction=np.asarray(pred, float))
    pairs = pair_table(df)
    out = {**regression_metrics(df["LN_IC50"].to_numpy(), df["prediction"].to_numpy()),
           "pairs": regression_metrics(pairs["LN_IC50"].to_numpy(), pairs["prediction"].to_numpy()),
           "per_drug": per_drug(pairs)}
    if mean_effects is not None:
        me = pair_table(df.assign(prediction=np.asarray(mean_effects, float)))["prediction"].to_numpy()
        out["normalised_pcc"] = normalised_pcc(pairs["LN_IC50"].to_numpy(), pairs["prediction"].to_numpy(),
                                               me)
    if spread is not None:
        out["per_line"] = line_scores(pairs, spread)
    return out


def normalised_pcc(y: np.ndarray, pred: np.ndarray, mean_effects: np.ndarray) -> float:
    """DrEval's normalised Pearson: the naive mean-effects prediction (global + drug + cell-line
    effect, from the training pairs) taken from the truth and from the prediction, then Pearson
    over all test pairs, so that what drug and line averages explain counts for nothing."""
    a, b = np.asarray(y, float) - mean_effects, np.asarray(pred, float) - mean_effects
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(stats.pearsonr(a, b)[0])


def interval_coverage(test: pd.DataFrame, low: np.ndarray, high: np.ndarray, train: pd.DataFrame,
                      scales: dict[str, float] | None = None, level: float = 0.9, widest: int = 10,
                      min_pairs: int = 10) -> dict:
    """How many test pairs the intervals hold and how sharp they are: coverage overall, mean width
    and its ratio to the naive interval (the drug's own 5-95% range over its training pairs:
    what knowing the drug alone gives; for a drug new to the model, the range of its own test pairs,
    which no predictor knows), the share of drugs (with `min_pairs` test pairs or more)
    covered within 80-97%, and the `widest` drugs with the widest intervals, each named. With the
    quantile of each level (`scales`: level -> q, every level in one unit; the bounds are those of
    `level`), the observed coverage at each nominal level: the calibration. Pairs without an
    interval (NaN bounds: a drug the predictor has none for) are counted apart, never covered."""
    has = np.isfinite(low) & np.isfinite(high)
    if not has.any():   # e.g. every test drug new to the predictor: no interval, no coverage to claim
        return {"coverage": None, "mean_width": None, "pairs_without_interval": int(len(has)),
                "coverage_widest": None, "widest_drugs": []}
    y = test["LN_IC50"].to_numpy()
    df = test[["drug", "LN_IC50"]].assign(inside=(y >= low) & (y <= high), width=high - low)[has]
    by = df.groupby("drug").agg(coverage=("inside", "mean"), width=("width", "mean"),
                                pairs=("inside", "size"))
    top = by.sort_values("width", ascending=False).head(widest)
    q = train.groupby("drug")["LN_IC50"].quantile([0.05, 0.95]).unstack()
    own = df[~df["drug"].isin(q.index)].groupby("drug")["LN_IC50"].quantile([0.05, 0.95]).unstack()
    q = pd.concat([q, own])   # a drug new to the model: its own test pairs' range, the oracle's
    naive_low, naive_high = df["drug"].map(q[0.05]).to_numpy(), df["drug"].map(q[0.95]).to_numpy()
    naive = df["LN_IC50"].between(naive_low, naive_high)
    enough = by[by["pairs"] >= min_pairs]
    out = {"coverage": float(df["inside"].mean()), "mean_width": float(df["width"].mean()),
           "naive_width": float(np.nanmean(naive_high - naive_low)), "naive_coverage": float(naive.mean()),
           "drugs_within_80_97": float(enough["coverage"].between(0.80, 0.97).mean()),
           "pairs_without_interval": int((~has).sum()),
           "coverage_widest": float(df[df["drug"].isin(top.index)]["inside"].mean()),
           "widest_drugs": [{"drug": d, **{k: float(v) for k, v in r.items()}} for d, r in top.iterrows()]}
    out["width_ratio"] = out["mean_width"] / out["naive_width"]
    if scales:
        centre, half = (low[has] + high[has]) / 2, (high[has] - low[has]) / 2
        err, unit = np.abs(df["LN_IC50"].to_numpy() - centre), half / scales[str(level)]
        out["calibration"] = {k: float((err <= q * unit).mean()) for k, q in scales.items()}
    return out


def evaluate(train: pd.DataFrame, test: pd.DataFrame, pred: np.ndarray, *,
             baselines: dict[str, np.ndarray] | None = None, members: dict[str, np.ndarray] | None = None,
             spread: DrugSpread | None = None) -> dict:
    """metrics.json's test, member and baseline sections, every one scored the same ways.
    train/test: drug, cell_line_id and LN_IC50 of every row (train may be one row per pair with
    its mean label, as pair_labels gives: the fit is the same); `baselines`: the classical
    predictors' predictions of the test rows (baselines.py), scored beside the naive ones, mean
    effects standing in where one has no model for a drug; `members`: the predictor's parts,
    scored beside it; `spread`: each training drug's spread, for the per-line scores (when the
    test lines are unseen)."""
    tr = train[["drug", "cell_line_id", "LN_IC50"]].reset_index(drop=True)
    te = test[["drug", "cell_line_id", "LN_IC50"]].reset_index(drop=True)
    preds = predict_baselines(fit_baselines(tr), te)
    me = preds["mean_effects"]
    preds = {**{k: np.where(np.isnan(p), me, p) for k, p in (baselines or {}).items()}, **preds}
    out = {"test": score(te, pred, me, spread),
           "baselines": {k: score(te, p, me, spread) for k, p in preds.items()}}
    if members:
        out["members"] = {k: score(te, p, me, spread) for k, p in members.items()}
    return out


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


ROWS = ("model", "ridge_per_drug", "boosted_trees", "ridge", "structure_knn", "mean_effects",
        "drug_mean", "cell_line_mean", "global_mean")


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and np.isfinite(v)


def _value(v) -> float | None:
    """A metric, or its mean over runs; None where it is undefined."""
    v = v.get("mean") if isinstance(v, dict) else v
    return float(v) if _finite(v) else None


def verdict(metrics: dict) -> dict:
    """The best baseline (highest per-drug Pearson; lowest MSE where no baseline has one), the
    lowest-MSE baseline, and whether the model beats them, said in one plain paragraph."""
    base = metrics["baselines"]
    per_drug = {k: _value(b["per_drug"]["pcc"]) for k, b in base.items()}
    per_drug = {k: v for k, v in per_drug.items() if v is not None}
    mse = {k: _value(b["mse"]) for k, b in base.items() if _value(b["mse"]) is not None}
    model_pd, model_mse = _value(metrics["test"]["per_drug"]["pcc"]), _value(metrics["test"]["mse"])
    lowest = min(mse, key=mse.get)
    best = max(per_drug, key=per_drug.get) if per_drug else lowest
    beats_mse = model_mse is not None and model_mse <= mse[lowest]
    beats_pd = None
    lines = [f"Best baseline: **{best}**"
             + (f" (per-drug Pearson {per_drug[best]:.3f})." if per_drug else ".")]
    if per_drug:
        beats_pd = model_pd is not None and model_pd > per_drug[best]
        gap = "–" if model_pd is None else f"{model_pd - per_drug[best]:+.3f}"
        lines.append(f"Per drug, the model's Pearson is {_fmt(model_pd)} ({gap}): "
                     f"{'**better**' if beats_pd else '**not better**'}.")
    lines.append(f"In MSE the model scores {_fmt(model_mse)} against {mse[lowest]:.3f} for the lowest "
                 f"baseline, {lowest}: {'**no higher**' if beats_mse else '**higher**'}.")
    won = beats_mse and beats_pd is not False
    lines.append("The model beats the best baseline." if won else
                 "The model does **not** beat the best baseline: a simpler predictor does as well "
                 "or better on these test rows.")
    return {"best_baseline": best, "lowest_mse_baseline": lowest, "beats_per_drug": beats_pd,
            "beats_mse": beats_mse, "beats_best_baseline": won, "text": " ".join(lines)}


def _fmt(v) -> str:
    if isinstance(v, dict):  # mean +- sd over runs
        return "–" if v.get("mean") is None else f"{v['mean']:.3f} ± {v['sd']:.3f}"
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.3f}"


def _rows(metrics: dict) -> list[tuple[str, dict]]:
    """(name, metrics) of the model, its members and the baselines, in the report's order."""
    return ([("model", metrics["test"])] + list(metrics.get("members", {}).items())
            + [(k, metrics["baselines"][k]) for k in ROWS[1:] if k in metrics["baselines"]])


def results_table(metrics: dict) -> str:
    """Markdown: one row per predictor, metrics over cells, pairs and per drug (and per line, where
    the test lines are unseen)."""
    per_line = "per_line" in metrics["test"]
    head = ("| predictor | MSE | RMSE | Pearson | Spearman | pairs: Pearson | pairs: Spearman | "
            "per drug: Pearson | per drug: Spearman | normalised Pearson |"
            + (" per line: z Spearman | per line: top-10 |" if per_line else "") + "\n"
            "|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if per_line else ""))
    lines = [head]
    for name, m in _rows(metrics):
        cells = [m["mse"], m["rmse"], m["pcc"], m["scc"], m["pairs"]["pcc"], m["pairs"]["scc"],
                 m["per_drug"]["pcc"], m["per_drug"]["scc"], m.get("normalised_pcc")]
        if per_line:
            cells += [m.get("per_line", {}).get("z_spearman"), m.get("per_line", {}).get("top_precision")]
        label = f"**{name}**" if name == "model" else (f"model: {name}" if name in metrics.get("members", {})
                                                      else name)
        lines.append(f"| {label} | " + " | ".join(_fmt(c) for c in cells) + " |")
    return "\n".join(lines)


def relative_text(metrics: dict) -> list[str]:
    """report.md's section on relative sensitivity (the test lines are unseen)."""
    pl = metrics["test"].get("per_line")
    if not pl:
        return []
    lines_ = _value(pl["lines"])
    return ["", "## Relative sensitivity: each line's own list of drugs", "",
            "What a user reads for a sample: its drugs ordered by z, each drug's predicted ln IC50 "
            "against the drug's training lines ((prediction - their mean) / their sd), most "
            "specifically sensitive first. *per line: z Spearman*: for each test line, Spearman over "
            "its drugs between predicted and measured z, averaged over "
            f"{'–' if lines_ is None else f'{lines_:.0f}'} lines. *per line: top-10*: of each line's "
            f"10 most specifically sensitive drugs (measured z), the share among its predicted 10 "
            f"(a random order scores {_fmt(pl['chance'])}). For the model: z Spearman "
            f"**{_fmt(pl['z_spearman'])}**, top-10 **{_fmt(pl['top_precision'])}**."]


def interval_text(metrics: dict) -> list[str]:
    """report.md's section on the intervals (a bulk reference's predictor has them)."""
    iv = metrics.get("interval")
    if not iv:
        return []
    level = 100 * _value(iv["level"])   # a run's level, or the same level's mean over runs
    if _value(iv.get("coverage")) is None:
        n = _value(iv["pairs_without_interval"])
        return ["", "## Intervals", "", f"No test pair has an interval ({n:.0f} pairs): an interval is "
                f"calibrated for the drugs the predictor was trained on, and "
                f"every test drug is new to it, so no coverage is claimed."]
    if _value(iv.get("new_drugs")):
        return ["", "## Intervals", "",
                f"Every test drug is new to the model. {level:.0f}% intervals (each drug's predicted sd "
                f"over the lines, from its similarity to the training drugs, times the quantile that "
                f"puts {level:.0f}% of the training drugs' pairs inside, each drug predicted with itself "
                f"left out) hold **{_pct(iv['coverage'])}** of the test pairs, with a mean width of "
                f"{_fmt(iv['mean_width'])} (ln IC50): {_fmt(iv.get('width_ratio'))} of the width of "
                f"each test drug's own 5-95% range over its test lines ({_fmt(iv.get('naive_width'))}), "
                f"which no predictor knows. Drugs covered within 80-97%: "
                f"{_pct(iv.get('drugs_within_80_97'))}.",
                *_calibration_lines(iv)]
    lines = ["", "## Intervals", "",
             f"{level:.0f}% intervals (each drug's sd over its training lines, times the quantile that "
             f"puts {level:.0f}% of the validation pairs inside) hold **{_pct(iv['coverage'])}** of the "
             f"test pairs, with a mean width of {_fmt(iv['mean_width'])} (ln IC50): "
             f"**{_fmt(iv.get('width_ratio'))}** of the naive interval's width, the drug's own 5-95% "
             f"range over its training lines ({_fmt(iv.get('naive_width'))}, holding "
             f"{_pct(iv.get('naive_coverage'))}). "
             f"Drugs covered within 80-97% (drugs with 10 test pairs or more): "
             f"{_pct(iv.get('drugs_within_80_97'))}; in the 10 drugs with the widest intervals, "
             f"{_pct(iv['coverage_widest'])}."]
    if _value(iv.get("pairs_without_interval")):
        lines.append(f"{_value(iv['pairs_without_interval']):.0f} test pairs have no interval (a drug "
                     f"without a ridge member or training spread) and are not counted.")
    lines += _calibration_lines(iv)
    if metrics.get("interval_drugs"):
        lines += ["", "| drug | mean width | coverage | test pairs |", "|---|---|---|---|"]
        lines += [f"| {d['drug']} | {d['width']:.2f} | {100 * d['coverage']:.0f}% | {d['pairs']:.0f} |"
                  for d in metrics["interval_drugs"]]
    return lines


def _calibration_lines(iv: dict) -> list[str]:
    if not iv.get("calibration"):
        return []
    return ["", "| nominal | observed |", "|---|---|",
            *[f"| {100 * float(k):.0f}% | {_pct(v)} |" for k, v in iv["calibration"].items()],
            "", "![calibration](calibration.png)"]


def _pct(v) -> str:
    v = v.get("mean") if isinstance(v, dict) else v
    return "–" if v is None else f"{100 * v:.1f}%"


SPLIT_TEXT = {
    "pair": "unseen (drug, cell line) pairs: every cell of a pair is on one side",
    "cell_line": "unseen cell lines: every cell of a test cell line is held out",
    "drug": "unseen drugs: every cell treated with a test drug is held out",
    "random": "RANDOM CELLS — LEAKY: cells of every test pair are also in training, so these "
              "numbers measure memorisation of pair labels, not prediction (kept to compare with "
              "the original study)",
}


NEW_DRUGS_TEXT = (
    " Test drugs new to the model are predicted by the new-drug predictor (newdrugs.py): the line's "
    "general level over the training drugs plus the training drugs' own responses at the line, "
    "weighted by kernel ridge on structural similarity; *model: network* is the network alone. "
    "*structure_knn*: the 5 training drugs most similar by Tanimoto (Morgan fingerprints), their "
    "responses at the same line weighted by similarity; *cell_line_mean*: the line's mean over the "
    "training drugs, which ignores the drug.")


def write_report(run_dir: Path, metrics: dict, runs: list[str] | None = None) -> None:
    """report.md: the table of model vs baselines, the split, the part sizes, the plots."""
    split = metrics["split"]
    parts = metrics.get("parts", {})
    lines = [f"# Results: {split} split", "",
             f"Test set: {SPLIT_TEXT.get(split, split)}."]
    if runs:
        lines += ["", f"Mean ± sd over {len(runs)} runs ({', '.join(runs)}); each run's own "
                  "report is in its directory."]
    else:
        lines += [f"Seed {metrics['seed']}; drug encoder `{metrics['drug_encoder']}`; best epoch "
                  f"{metrics['best_epoch']} of {metrics['epochs_run']}."]
    if metrics.get("verdict"):
        lines += ["", "## Verdict", "", metrics["verdict"]["text"]]
    lines += ["", "## Model and baselines on the same test rows", "", results_table(metrics), "",
              "Baselines are fitted on the training split only. *pairs*: each pair's mean "
              "prediction against its label. *per drug*: correlation within each drug over its "
              "test pairs, averaged over the drugs with at least 3 test pairs — differences "
              "between drugs cannot carry it. "
              "A model that does not beat *mean effects* has learned nothing beyond drug and "
              "cell-line averages. Classical baselines, on per-pair pseudobulk of the training "
              "pairs' 2,000 most variable genes (a bulk reference: each line's profile, every gene): "
              "*ridge_per_drug*, one ridge per drug (the "
              "classical GDSC approach); *boosted_trees*, gradient-boosted trees on expression "
              "and drug identity; *ridge*, one ridge for all drugs on expression with a per-drug "
              "intercept (the drug's training mean). *normalised Pearson* (DrEval's): Pearson over "
              "all test pairs once the mean-effects prediction is taken from truth and prediction."
              + (NEW_DRUGS_TEXT if "structure_knn" in metrics["baselines"] else
                 " The model of a bulk reference is the network blended with a ridge member (weights "
                 "fitted on the validation lines): one ridge per drug beside a general level that "
                 "one ridge learns from every drug's pairs; *model: network* and *model: "
                 "ridge_with_level* are the members alone." if metrics.get("members") else "")]
    lines += relative_text(metrics)
    lines += interval_text(metrics)
    if parts:
        lines += ["", "## Split", "", "| part | cells | pairs | drugs | cell lines |",
                  "|---|---|---|---|---|"]
        lines += [f"| {p} | {s['cells']} | {s['pairs']} | {s['drugs']} | {s['cell_lines']} |"
                  for p, s in parts.items()]
    if not runs:
        lines += ["", "## Plots", "", "![predicted vs measured per pair](pred_vs_measured.png)",
                  "![per-drug Pearson](per_drug_pearson.png)", "![loss curves](loss_curve.png)"]
    write_text("\n".join(lines) + "\n", run_dir / "report.md")


def aggregate(results: dict[str, dict]) -> dict:
    """Mean and sd of every scalar metric over runs (seeds and/or folds)."""
    first = next(iter(results.values()))

    def walk(parts: list[dict], template):
        if isinstance(template, dict):
            return {k: walk([p[k] for p in parts], v) for k, v in template.items()
                    if k not in ("by_drug", "by_line", "n", "widest_drugs")}
        vals = [v for v in parts if isinstance(v, (int, float)) and v is not None and np.isfinite(v)]
        return {"mean": float(np.mean(vals)) if vals else None,
                "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0}

    out = {}
    for key in ("members", "interval"):
        if key in first and all(key in r for r in results.values()):
            out[key] = walk([r[key] for r in results.values()], first[key])
    return {"split": first["split"], "runs": list(results), **out,
            "test": walk([r["test"] for r in results.values()], first["test"]),
            "baselines": {b: walk([r["baselines"][b] for r in results.values()], first["baselines"][b])
                          for b in first["baselines"] if all(b in r["baselines"] for r in results.values())}}


def format_table(result: dict) -> str:
    per_line = "per_line" in result["test"]
    lines = [f"{'':16s}{'MSE':>8s}{'PCC':>8s}{'SCC':>8s}{'pair PCC':>10s}{'drug PCC':>10s}{'norm PCC':>10s}"
             + (f"{'line zSCC':>11s}{'top-10':>8s}" if per_line else "")]
    val = lambda v: v["mean"] if isinstance(v, dict) else v  # noqa: E731
    num = lambda v: f"{val(v):8.3f}" if val(v) is not None and np.isfinite(val(v)) else f"{'-':>8s}"  # noqa: E731
    for name, m in _rows(result):
        pl = m.get("per_line", {})
        lines.append(f"{name:16s}{num(m['mse'])}{num(m['pcc'])}{num(m['scc'])}  {num(m['pairs']['pcc'])}"
                     f"  {num(m['per_drug']['pcc'])}  {num(m.get('normalised_pcc'))}"
                     + (f"   {num(pl.get('z_spearman'))}{num(pl.get('top_precision'))}" if per_line else ""))
    iv = result.get("interval")
    if iv and _value(iv.get("coverage")) is not None:
        lines.append(f"90% intervals hold {_pct(iv['coverage'])} of the test pairs, at "
                     f"{_value(iv['width_ratio']):.2f} of the width of the drug's own 5-95% range")
    elif iv:
        lines.append("no test pair has an interval (every test drug is new to the predictor)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the run's report

def report(run_dir: Path, preds: pd.DataFrame, train_pairs: pd.DataFrame, *, run: dict,
           baselines: dict[str, np.ndarray], spread: DrugSpread | None = None) -> dict:
    """A run's results, written by rank 0: predictions.parquet, metrics.json, the plots and
    report.md. `preds`: the test rows (row, drug, cell_line_id, LN_IC50, prediction; from a stack
    also its members' predictions, network and ridge, and the interval's bounds; z ...);
    `train_pairs`: each training pair's mean label (data.pair_labels), which the naive baselines
    are fitted on; `run`: what the report records of the run (split, seed, fold, parts, and the
    model's record, Trained.record); `baselines`: the classical predictors' predictions of the
    same rows; `spread`: the training drugs' spread, for the per-line scores where the test lines
    are unseen (the cell_line split)."""
    members = None
    if "network" in preds:   # a stack or new drugs, scored beside the network alone
        members = {"network": preds["network"].to_numpy()}
        if "ridge" in preds and not preds["ridge"].isna().any():
            members["ridge_with_level"] = preds["ridge"].to_numpy()
    write_parquet(pa.Table.from_pandas(preds, preserve_index=False), run_dir / "predictions.parquet")
    result = evaluate(train_pairs, preds, preds["prediction"].to_numpy(), baselines=baselines,
                      members=members, spread=spread if run["split"] == "cell_line" else None)
    metrics = {**{k: v for k, v in run.items() if k not in ("history", "stack", "newdrugs")}, **result,
               "history": run["history"]}
    if "ln_ic50_low" in preds:
        # every test drug new (a split over drugs): the new-drug interval's quantiles at training lines
        new = "new_drug" in preds and bool(preds["new_drug"].all()) and run.get("newdrugs")
        source = run["newdrugs"] if new or not run.get("stack") else run["stack"]
        interval = interval_coverage(preds, preds["ln_ic50_low"].to_numpy(), preds["ln_ic50_high"].to_numpy(),
                                     train_pairs, source.get("scales"), source["level"])
        metrics["interval"] = {"level": source["level"], "new_drugs": bool(new),
                               **{k: v for k, v in interval.items() if k != "widest_drugs"}}
        metrics["interval_drugs"] = interval["widest_drugs"]
        if run.get("stack"):
            metrics["stack"] = {k: v for k, v in run["stack"].items() if k != "level"}
    if run.get("newdrugs"):
        metrics["newdrugs"] = run["newdrugs"]
    metrics["verdict"] = verdict(metrics)
    write_json(metrics, run_dir / "metrics.json")
    plot_loss(run["history"], run["best_epoch"], run_dir / "loss_curve.png")
    plot_pairs(preds, run_dir / "pred_vs_measured.png", f"test pairs, {run['split']} split")
    plot_per_drug(metrics, run_dir / "per_drug_pearson.png")
    if metrics.get("interval", {}).get("calibration"):
        plot_calibration(metrics["interval"]["calibration"], run_dir / "calibration.png")
    write_report(run_dir, metrics)
    return metrics


def report_runs(results: dict[str, dict], work: Path, *, seeds: list[int], folds: int) -> dict:
    """Several runs (seeds, folds): every metric's mean and sd, metrics.json and report.md."""
    first = next(iter(results.values()))
    metrics = {**aggregate(results), "seeds": seeds, "folds": folds, "drug_encoder": first["drug_encoder"],
               "per_run": {k: {"test": v["test"], "baselines": v["baselines"], "members": v.get("members")}
                           for k, v in results.items()}}
    metrics["verdict"] = verdict(metrics)
    write_json(metrics, work / "metrics.json")
    if metrics.get("interval", {}).get("calibration"):
        plot_calibration(metrics["interval"]["calibration"], work / "calibration.png")
    write_report(work, metrics, runs=list(results))
    return metrics
