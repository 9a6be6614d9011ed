"""How well the predictor knows each drug: its skill on lines it has not seen, estimated within
the training lines, so that a reference carries it without a second build.

The ridge member (a shared level plus one ridge per drug, stack.py) is refitted 5 times, each
time without a fifth of the training lines, and predicts the lines it left out; a drug's skill is
the Pearson correlation over its training lines between these cross-fitted predictions and the
measured ln IC50, and its coverage the share of them inside the interval the predictor gives
(+- q sd). No refit is computed as such: a ridge of fixed penalty is a linear smoother, ŷ = H y
with H = 11'/n + K (K + alpha I)^-1 over the Gram matrix K of the centred profiles, and the
residuals of fold B fitted without it are (I - H_BB)^-1 (y - ŷ)_B. One Gram matrix of the
training lines serves every drug, so the 5 folds of 400 drugs take seconds. The penalties are those
the member chose on all training lines (leave-one-out), and the network is not refitted: skill is
an estimate of the member's, which carries most of the predictor (BENCHMARKS.md sets it against
the skill measured on held-out lines).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from predictor.baselines import line_level

FOLDS = 5
BAR = 0.3   # PERCEPTION's: below it a drug's predictions are marked as weakly known


@dataclass
class Skill:
    """Each training drug's cross-fitted Pearson over its training lines and its coverage."""
    drugs: list[str]
    pearson: np.ndarray    # [drugs]; NaN where the member has no model of the drug
    coverage: np.ndarray   # [drugs] share of the drug's lines inside +- q sd of the cross-fitted prediction
    lines: np.ndarray      # [drugs] training lines it was measured on

    def of(self, drugs) -> tuple[np.ndarray, np.ndarray]:
        """(skill, coverage) of each drug; NaN for a drug without one (new to the predictor)."""
        row = {d: i for i, d in enumerate(self.drugs)}
        i = np.array([row.get(str(d), -1) for d in drugs], dtype=np.int64)
        pick = lambda a: np.where(i >= 0, a[np.maximum(i, 0)], np.nan)  # noqa: E731
        return pick(self.pearson), pick(self.coverage)

    def state(self) -> dict:
        return {"drugs": list(self.drugs), "pearson": self.pearson, "coverage": self.coverage,
                "lines": self.lines}

    @classmethod
    def from_state(cls, s: dict) -> "Skill":
        return cls(list(s["drugs"]), np.asarray(s["pearson"], dtype=np.float64),
                   np.asarray(s["coverage"], dtype=np.float64), np.asarray(s["lines"], dtype=np.int64))

    @classmethod
    def fit(cls, design, ridge, q: float, seed: int = 0, alone=(), q_alone: float | None = None
            ) -> "Skill":
        """design: the training pairs (drug, LN_IC50, profile) and their profiles' standardised
        x; ridge: the fitted member, with the penalties it chose (RidgePerDrug.alphas); q: the
        interval's quantile in drug sd (q_alone for the drugs the member answers `alone`)."""
        predicted = cross_fitted(design, ridge.alphas, seed, level_drugs=ridge.level_drugs)
        train = design.train.assign(cv=predicted)
        train = train[train["drug"].isin(ridge.drugs)]   # the drugs the member models
        drugs, pearson, coverage, lines = [], [], [], []
        alone = set(alone or ())
        for drug, part in train.groupby("drug", sort=True):
            y, cv = part["LN_IC50"].to_numpy(), part["cv"].to_numpy()
            ok = np.isfinite(cv)
            sd = np.std(y, ddof=1) if len(y) > 1 else np.nan
            drugs.append(str(drug))
            lines.append(len(y))
            pearson.append(float(np.corrcoef(cv[ok], y[ok])[0, 1]) if ok.sum() >= 3 and np.ptp(cv[ok]) > 0
                           else np.nan)
            half = (q_alone if drug in alone else q) * sd
            coverage.append(float(np.mean(np.abs(y[ok] - cv[ok]) <= half)) if ok.any() else np.nan)
        return cls(drugs, np.asarray(pearson), np.asarray(coverage), np.asarray(lines, dtype=np.int64))


def cross_fitted(design, alphas: dict, seed: int = 0, folds: int = FOLDS, level_drugs=None) -> np.ndarray:
    """Each training pair's ln IC50 predicted by the ridge member fitted without its line's fold
    (NaN for a drug without a member): mean + sd (level + own part), each part cross-fitted."""
    train = design.train
    profile = train["profile"].to_numpy()
    lines, of_line = np.unique(profile, return_inverse=True)
    fold = np.random.default_rng(seed).permutation(len(lines)) % folds   # each line's fold
    x = design.x[lines]
    gram = x @ x.T                                                         # one for every drug
    drugs = [d for d in alphas if d != "level"]
    stats = train[train["drug"].isin(drugs)].groupby("drug")["LN_IC50"].agg(["mean", "std"])
    member = train["drug"].isin(drugs).to_numpy()
    mean = train["drug"].map(stats["mean"]).to_numpy()
    sd = train["drug"].map(stats["std"]).to_numpy()
    z = (train["LN_IC50"].to_numpy() - mean) / sd
    counted = member if level_drugs is None else member & train["drug"].isin(level_drugs).to_numpy()
    level = line_level(np.where(member, z, 0.0), of_line, len(lines), counted)
    out = np.full(len(train), np.nan)
    if not drugs:
        return out
    level_cv = kfold_predictions(gram, level, alphas["level"], fold)
    for drug, rows in train.groupby("drug").indices.items():
        if drug not in alphas:
            continue
        at = of_line[rows]
        own = z[rows] - level[at]
        own_cv = kfold_predictions(gram[np.ix_(at, at)], own, alphas[drug], fold[at])
        out[rows] = mean[rows] + sd[rows] * (level_cv[at] + own_cv)
    return out


def kfold_predictions(gram: np.ndarray, y: np.ndarray, alpha: float, fold: np.ndarray) -> np.ndarray:
    """Exact K-fold predictions of a ridge with an intercept and penalty alpha, from the raw Gram
    matrix of its rows (x x'): each fold predicted by the fit on the other folds."""
    n = len(y)
    ones = np.ones((n, 1)) / n
    centred = gram - gram @ ones - ones.T @ gram + (ones.T @ gram @ ones)      # the centred profiles' Gram
    smoother = np.linalg.solve(centred + alpha * np.eye(n), centred).T          # K (K + alpha I)^-1
    hat = smoother + 1.0 / n
    residual = y - hat @ y
    out = np.empty(n)
    for k in np.unique(fold):
        b = np.flatnonzero(fold == k)
        out[b] = y[b] - np.linalg.solve(np.eye(len(b)) - hat[np.ix_(b, b)], residual[b])
    return out
