"""Test metrics for the model and for naive baselines fitted on the same training split.

A model is only worth its complexity if it beats predicting each drug's mean: on GDSC the drug
mean alone already gives a high global Pearson. Every run therefore scores, on the same test rows:
global mean, drug mean, cell-line mean and mean effects (global + drug + cell-line effect), each
fitted on the training PAIRS (one value per pair, so pairs with more cells do not weigh more),
and a classical model (ridge on pseudobulk expression of highly variable genes + drug vector).
Each is scored over cells, over pairs (a pair's mean prediction against its label: IC50 is a
property of the pair), and per drug (correlation within each drug, averaged over drugs with at
least 3 test pairs, so differences between drugs cannot carry the score).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
from scipy import sparse, stats  # noqa: E402

from common import atomic_path  # noqa: E402
from data import gene_vocabulary, normalised_counts, vocab_index  # noqa: E402


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


def score(test: pd.DataFrame, pred: np.ndarray) -> dict:
    """Metrics over cells, over pairs, and per drug (test has drug, cell_line_id, LN_IC50)."""
    df = test[["drug", "cell_line_id", "LN_IC50"]].assign(prediction=np.asarray(pred, float))
    pairs = pair_table(df)
    return {**regression_metrics(df["LN_IC50"].to_numpy(), df["prediction"].to_numpy()),
            "pairs": regression_metrics(pairs["LN_IC50"].to_numpy(), pairs["prediction"].to_numpy()),
            "per_drug": per_drug(pairs)}


# ----------------------------------------------------------------------------- ridge baseline

def pseudobulk(table: pa.Table, vocab: np.ndarray, max_cells: int = 50, seed: int = 0
               ) -> tuple[pd.DataFrame, sparse.csr_matrix]:
    """Mean log1p(CP10k) expression of each (drug, cell line) pair over up to max_cells cells."""
    keys = table.select(["drug", "cell_line_id"]).to_pandas()
    rank = keys.assign(r=np.random.default_rng(seed).random(len(keys))).groupby(
        ["drug", "cell_line_id"])["r"].rank(method="first")
    keep = np.flatnonzero(rank.to_numpy() <= max_cells)
    rows, genes, values, _ = normalised_counts(table.take(pa.array(keep)))
    col, ok = vocab_index(vocab, genes)
    x = sparse.csr_matrix((values[ok], (rows[ok], col[ok])),
                          shape=(len(keep), len(vocab)))
    pair_keys = keys.iloc[keep].reset_index(drop=True)
    pair_id = pair_keys.groupby(["drug", "cell_line_id"], sort=True).ngroup().to_numpy()
    n_pairs = int(pair_id.max()) + 1 if len(pair_id) else 0
    counts = np.bincount(pair_id, minlength=n_pairs)
    agg = sparse.csr_matrix((1.0 / counts[pair_id], (pair_id, np.arange(len(pair_id)))),
                            shape=(n_pairs, len(pair_id)))
    index = pair_keys.drop_duplicates().sort_values(["drug", "cell_line_id"]).reset_index(drop=True)
    return index, (agg @ x).tocsr()


def ridge_baseline(train: pa.Table, test: pa.Table, drug_vectors: dict[str, np.ndarray],
                   n_genes: int = 2000, seed: int = 0) -> np.ndarray:
    """Ridge regression on per-pair pseudobulk of the training pairs' most variable genes plus
    the drug's vector (standardised), fitted on training pairs with alpha chosen by leave-one-out
    over them; a test cell gets its pair's prediction."""
    from sklearn.linear_model import RidgeCV
    from sklearn.preprocessing import StandardScaler
    vocab = gene_vocabulary(train["genes"])
    tr_index, tr_x = pseudobulk(train, vocab, seed=seed)
    te_index, te_x = pseudobulk(test, vocab, seed=seed)
    mean = np.asarray(tr_x.mean(0)).ravel()
    var = np.asarray(tr_x.multiply(tr_x).mean(0)).ravel() - mean ** 2
    hvg = np.sort(np.argsort(-var, kind="stable")[:n_genes])
    labels = train.select(["drug", "cell_line_id", "LN_IC50"]).to_pandas().groupby(
        ["drug", "cell_line_id"], as_index=False)["LN_IC50"].mean()
    y = tr_index.merge(labels, on=["drug", "cell_line_id"], how="left")["LN_IC50"].to_numpy()

    def design(index: pd.DataFrame, x: sparse.csr_matrix) -> np.ndarray:
        return np.hstack([x[:, hvg].toarray(), np.stack([drug_vectors[d] for d in index["drug"]])])

    scaler = StandardScaler().fit(design(tr_index, tr_x))
    model = RidgeCV(alphas=np.logspace(-2, 5, 15)).fit(scaler.transform(design(tr_index, tr_x)), y)
    pair_pred = te_index.assign(prediction=model.predict(scaler.transform(design(te_index, te_x))))
    cells = test.select(["drug", "cell_line_id"]).to_pandas()
    return cells.merge(pair_pred, on=["drug", "cell_line_id"], how="left")["prediction"].to_numpy()


def evaluate(train: pa.Table, test: pa.Table, pred: np.ndarray,
             drug_vectors: dict[str, np.ndarray] | None = None, seed: int = 0) -> dict:
    """metrics.json's test and baseline sections, every one scored the same three ways."""
    tr = train.select(["drug", "cell_line_id", "LN_IC50"]).to_pandas()
    te = test.select(["drug", "cell_line_id", "LN_IC50"]).to_pandas()
    preds = predict_baselines(fit_baselines(tr), te)
    if drug_vectors is not None:
        preds = {"ridge": ridge_baseline(train, test, drug_vectors, seed=seed), **preds}
    return {"test": score(te, pred), "baselines": {k: score(te, p) for k, p in preds.items()}}


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


def plot_per_drug(metrics: dict, path: Path) -> None:
    """Per-drug Pearson of the model beside mean effects (drugs with >= 3 test pairs)."""
    model = metrics["test"]["per_drug"]["by_drug"]
    base = metrics["baselines"].get("mean_effects", {}).get("per_drug", {}).get("by_drug", {})
    drugs = sorted(model, key=lambda d: -(model[d]["pcc"] if model[d]["pcc"] is not None else -9))
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(drugs) + 1.5))
    y = np.arange(len(drugs))
    ax.barh(y - 0.2, [model[d]["pcc"] or 0 for d in drugs], height=0.4, label="model")
    ax.barh(y + 0.2, [(base.get(d) or {}).get("pcc") or 0 for d in drugs], height=0.4,
            label="mean effects")
    ax.set_yticks(y, drugs, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel("Pearson r within the drug (test pairs)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


ROWS = ("model", "ridge", "mean_effects", "drug_mean", "cell_line_mean", "global_mean")


def _fmt(v) -> str:
    if isinstance(v, dict):  # mean +- sd over runs
        return "–" if v.get("mean") is None else f"{v['mean']:.3f} ± {v['sd']:.3f}"
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.3f}"


def results_table(metrics: dict) -> str:
    """Markdown: one row per predictor, metrics over cells, pairs and per drug."""
    head = ("| predictor | MSE | RMSE | Pearson | Spearman | pairs: Pearson | pairs: Spearman | "
            "per drug: Pearson | per drug: Spearman |\n|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for name in ROWS:
        m = metrics["test"] if name == "model" else metrics["baselines"].get(name)
        if m is None:
            continue
        cells = [m["mse"], m["rmse"], m["pcc"], m["scc"], m["pairs"]["pcc"], m["pairs"]["scc"],
                 m["per_drug"]["pcc"], m["per_drug"]["scc"]]
        label = f"**{name}**" if name == "model" else name
        lines.append(f"| {label} | " + " | ".join(_fmt(c) for c in cells) + " |")
    return "\n".join(lines)


SPLIT_TEXT = {
    "pair": "unseen (drug, cell line) pairs: every cell of a pair is on one side",
    "cell_line": "unseen cell lines: every cell of a test cell line is held out",
    "drug": "unseen drugs: every cell treated with a test drug is held out",
    "random": "RANDOM CELLS — LEAKY: cells of every test pair are also in training, so these "
              "numbers measure memorisation of pair labels, not prediction (kept to compare with "
              "the original study)",
}


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
    lines += ["", "## Model and baselines on the same test rows", "", results_table(metrics), "",
              "Baselines are fitted on the training split only. *pairs*: each pair's mean "
              "prediction against its label. *per drug*: correlation within each drug over its "
              "test pairs, averaged over the drugs with at least 3 test pairs — differences "
              "between drugs cannot carry it. "
              "A model that does not beat *mean effects* has learned nothing beyond drug and "
              "cell-line averages."]
    if parts:
        lines += ["", "## Split", "", "| part | cells | pairs | drugs | cell lines |", "|---|---|---|---|---|"]
        lines += [f"| {p} | {s['cells']} | {s['pairs']} | {s['drugs']} | {s['cell_lines']} |"
                  for p, s in parts.items()]
    if not runs:
        lines += ["", "## Plots", "", "![predicted vs measured per pair](pred_vs_measured.png)",
                  "![per-drug Pearson](per_drug_pearson.png)", "![loss curves](loss_curve.png)"]
    from common import write_text
    write_text("\n".join(lines) + "\n", run_dir / "report.md")


def aggregate(results: dict[str, dict]) -> dict:
    """Mean and sd of every scalar metric over runs (seeds and/or folds)."""
    first = next(iter(results.values()))

    def walk(parts: list[dict], template):
        if isinstance(template, dict):
            return {k: walk([p[k] for p in parts], v) for k, v in template.items()
                    if k not in ("by_drug", "n")}
        vals = [v for v in parts if isinstance(v, (int, float)) and v is not None and np.isfinite(v)]
        return {"mean": float(np.mean(vals)) if vals else None,
                "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0}

    return {"split": first["split"], "runs": list(results),
            "test": walk([r["test"] for r in results.values()], first["test"]),
            "baselines": {b: walk([r["baselines"][b] for r in results.values()], first["baselines"][b])
                          for b in first["baselines"]}}


def format_table(result: dict) -> str:
    rows = [("model", result["test"])] + [(k, result["baselines"][k]) for k in ROWS[1:]
                                          if k in result["baselines"]]
    lines = [f"{'':16s}{'MSE':>8s}{'PCC':>8s}{'SCC':>8s}{'pair PCC':>10s}{'drug PCC':>10s}"]
    val = lambda v: v["mean"] if isinstance(v, dict) else v  # noqa: E731
    num = lambda v: f"{val(v):8.3f}" if val(v) is not None and np.isfinite(val(v)) else f"{'-':>8s}"  # noqa: E731
    for name, m in rows:
        lines.append(f"{name:16s}{num(m['mse'])}{num(m['pcc'])}{num(m['scc'])}  {num(m['pairs']['pcc'])}"
                     f"  {num(m['per_drug']['pcc'])}")
    return "\n".join(lines)
