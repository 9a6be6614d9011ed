"""Scores: the model's test metrics beside naive and classical baselines fitted on the same
training split, and their mean over runs. Nothing here fits a model but the naive baselines; the
classical ones (predictor/baselines.py) arrive as predictions.

A model is only worth its complexity if it beats predicting each drug's mean: on GDSC the drug
mean alone already gives a high global Pearson. Every run therefore scores, on the same test rows:
global mean, drug mean, cell-line mean and mean effects (global + drug + cell-line effect), each
fitted on the training PAIRS (one value per pair, so pairs with more cells do not weigh more),
and the classical predictors on expression. Each is scored over cells, over pairs (a pair's mean
prediction against its label: IC50 is a property of the pair), and per drug (correlation within
each drug, averaged over drugs with at least 3 test pairs, so differences between drugs cannot
carry the score). Where the test lines are unseen, also per line, as a user reads one sample's
list (`line_scores`): Spearman over drugs between predicted and measured z, and how many of the
line's 10 most specifically sensitive drugs (by measured z) are among its predicted 10.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from predictor.skill import BAR
from predictor.spread import DrugSpread

TOP = 10   # the length of the list a user reads: top-k precision


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
    predictors' predictions of the test rows (predictor/baselines.py), scored beside the naive ones, mean
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


def line_scores(pairs: pd.DataFrame, spread: DrugSpread, k: int = TOP, min_drugs: int = 5) -> dict:
    """Per test line, over the drugs it was measured with: Spearman between predicted and
    measured z, and top-k precision (of its k most specifically sensitive drugs by measured z,
    the share among its k lowest predicted z; lines with fewer than 2k drugs are left out of it,
    where most of the list would be right by chance). Each averaged over lines; `chance` is the
    top-k precision of a random order. pairs: drug, cell_line_id, LN_IC50, prediction."""
    df = pairs.assign(z_true=spread.z(pairs["drug"], pairs["LN_IC50"]),
                      z_pred=spread.z(pairs["drug"], pairs["prediction"]))
    df = df.dropna(subset=["z_true", "z_pred"])
    rows = {}
    for line, g in df.groupby("cell_line_id", sort=True):
        if len(g) < min_drugs:
            continue
        constant = np.ptp(g["z_pred"].to_numpy()) == 0 or np.ptp(g["z_true"].to_numpy()) == 0
        rho = float("nan") if constant else float(stats.spearmanr(g["z_pred"], g["z_true"])[0])
        top = None
        if len(g) >= 2 * k:
            truth = set(g.sort_values("z_true", kind="stable")["drug"].head(k))
            guess = set(g.sort_values("z_pred", kind="stable")["drug"].head(k))
            top = len(truth & guess) / k
        rows[str(line)] = {"z_spearman": rho, "top_precision": top, "drugs": int(len(g))}
    rho = [r["z_spearman"] for r in rows.values() if np.isfinite(r["z_spearman"])]
    top = [r["top_precision"] for r in rows.values() if r["top_precision"] is not None]
    listed = [r["drugs"] for r in rows.values() if r["top_precision"] is not None]
    return {"z_spearman": float(np.mean(rho)) if rho else float("nan"),
            "top_precision": float(np.mean(top)) if top else float("nan"), "k": k,
            "chance": float(np.mean([k / n for n in listed])) if listed else float("nan"),
            "lines": len(rows), "by_line": rows}


def skill_check(estimate: dict[str, float], by_drug: dict, coverage: dict[str, float] | None = None,
                measured_coverage: dict[str, float] | None = None) -> dict:
    """Each drug's skill estimated on the training lines against its Pearson measured on the test
    pairs (per_drug's by_drug): their correlation over drugs, and the measured Pearson of the drugs
    estimated below the bar beside that of the others; with each drug's estimated and measured
    interval coverage, their means and correlation."""
    drugs = [d for d, r in by_drug.items() if _finite(estimate.get(d)) and _finite((r or {}).get("pcc"))]
    if len(drugs) < 3:
        return {"drugs": len(drugs), "pearson": None, "spearman": None}
    est = np.array([estimate[d] for d in drugs])
    measured = np.array([by_drug[d]["pcc"] for d in drugs])
    low = est < BAR
    out = {"drugs": len(drugs), "pearson": float(np.corrcoef(est, measured)[0, 1]),
           "spearman": float(stats.spearmanr(est, measured)[0]), "below_bar": int(low.sum()),
           "measured_below_bar": float(measured[low].mean()) if low.any() else None,
           "measured_above_bar": float(measured[~low].mean()) if (~low).any() else None,
           "mean_gap": float(np.mean(est - measured))}
    coverage, measured_coverage = coverage or {}, measured_coverage or {}
    both = [d for d in drugs if _finite(coverage.get(d)) and _finite(measured_coverage.get(d))]
    if len(both) >= 3:
        a, b = np.array([coverage[d] for d in both]), np.array([measured_coverage[d] for d in both])
        out["coverage"] = {"estimate": float(a.mean()), "measured": float(b.mean()),
                           "pearson": float(np.corrcoef(a, b)[0, 1])}
    return out


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
    if all("check" in r.get("skill", {}) for r in results.values()):
        checks = [r["skill"]["check"] for r in results.values()]
        out["skill"] = {"check": walk(checks, first["skill"]["check"])}
    return {"split": first["split"], "runs": list(results), **out,
            "test": walk([r["test"] for r in results.values()], first["test"]),
            "baselines": {b: walk([r["baselines"][b] for r in results.values()], first["baselines"][b])
                          for b in first["baselines"] if all(b in r["baselines"] for r in results.values())}}
