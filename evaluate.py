"""Test metrics for the model and for naive baselines fitted on the same training split.

A model is only worth its complexity if it beats predicting each drug's mean: on GDSC the drug
mean alone already gives a high global Pearson. Every run therefore scores, on the same test rows:
global mean, drug mean, cell-line mean and mean effects (global + drug + cell-line effect), each
fitted on the training PAIRS (one value per pair, so pairs with more cells do not weigh more).
"""
from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from common import atomic_path  # noqa: E402

log = logging.getLogger("ic50.evaluate")


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


def evaluate(train: pd.DataFrame, test: pd.DataFrame, pred: np.ndarray) -> dict:
    """metrics.json's test and baseline sections; train/test have drug, cell_line_id, LN_IC50."""
    y = test["LN_IC50"].to_numpy(float)
    result = {"test": regression_metrics(y, pred), "baselines": {}}
    for name, p in predict_baselines(fit_baselines(train), test).items():
        result["baselines"][name] = regression_metrics(y, p)
    return result


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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def format_table(result: dict) -> str:
    rows = [("model", result["test"])] + list(result["baselines"].items())
    lines = [f"{'':16s}{'MSE':>8s}{'PCC':>8s}{'SCC':>8s}"]
    for name, m in rows:
        lines.append(f"{name:16s}{m['mse']:8.3f}{m['pcc']:8.3f}{m['scc']:8.3f}")
    return "\n".join(lines)
