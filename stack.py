"""The default predictor for bulk references: the network and one ridge per drug, blended, with an
interval on every prediction.

On real GDSC the network and ridge regression per drug (the classical GDSC approach) are near
parity and make partly different errors, so the predictor a bulk reference trains is their blend.
Both are fitted on the training lines; the blend's two weights, on each prediction's distance from its
drug's training mean, are fitted on the validation lines (least squares), never on test lines.
Boosted trees were measured as a third member and added nothing (docs/search.md).

The ridge member splits each pair's relative sensitivity (its z against the drug's training
lines) into the line's general level, its mean z over all drugs, learnt by one ridge from every
drug's pairs, and the drug's own part, learnt by one ridge per drug; both linear, they fold back
into one linear model per drug. The level is the part one drug's few hundred lines estimate
worst, and on real GDSC2 sharing it scores higher than the classical ridge per drug, per drug and
per line, in every fold (docs/search.md).

The interval: the members' disagreement |network - ridge| is the spread of this two-member
ensemble; a prediction's interval is +- q (spread + floor), the floor being the validation pairs'
median spread (so that agreeing members still get a width), and q the split-conformal quantile
of |error| / (spread + floor) over the validation pairs: 90% of them fall inside, and so, on
average, do 90% of new pairs from the same distribution. Everything here is a few arrays, stored
in the checkpoint, so that `main.py predict` blends and bounds every prediction the same way.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

LEVEL = 0.9   # the interval's nominal coverage
ALPHAS = np.logspace(-1, 6, 15)   # ridge penalties tried (leave-one-out); all genes choose ~1e4


def _ridge(x: np.ndarray, y: np.ndarray, alphas: np.ndarray) -> tuple[np.ndarray, float]:
    """(coefficients, intercept) of a ridge with alpha by leave-one-out (scikit-learn's RidgeCV)."""
    from sklearn.linear_model import RidgeCV
    fit = RidgeCV(alphas=alphas).fit(x, y)
    return fit.coef_, float(fit.intercept_)


@dataclass
class RidgePerDrug:
    """One ridge per drug on standardised expression of a fixed set of genes (alpha by
    leave-one-out over the drug's training pairs): its coefficients, and how to standardise."""
    genes: np.ndarray        # [G] token ids of the columns
    mean: np.ndarray         # [G] training mean and sd of each column
    sd: np.ndarray
    drugs: list[str]         # the drugs with a model (enough training pairs)
    coef: np.ndarray         # [drugs, G]
    intercept: np.ndarray    # [drugs]

    @classmethod
    def fit(cls, design, min_pairs: int = 5, alphas: np.ndarray = ALPHAS) -> "RidgePerDrug":
        """The classical GDSC approach, fitted on a design's training pairs (evaluate.Design): a
        model for every drug with at least min_pairs of them."""
        drugs, coefs, intercepts = [], [], []
        y = design.train["LN_IC50"].to_numpy()
        for drug, rows in design.train.groupby("drug").indices.items():
            if len(rows) >= min_pairs:
                coef, intercept = _ridge(design.x_train(rows), y[rows], alphas)
                drugs.append(drug)
                coefs.append(coef)
                intercepts.append(intercept)
        return cls._of(design, drugs, coefs, intercepts)

    @classmethod
    def fit_with_level(cls, design, min_pairs: int = 5, alphas: np.ndarray = ALPHAS) -> "RidgePerDrug":
        """One ridge for each line's general level (its mean z over its training drugs) from every
        drug's pairs, and one ridge per drug for the drug's own part (z less the level), folded
        into one model per drug: ln IC50 = mean + sd (level + own part)."""
        train = design.train
        stats = train.groupby("drug")["LN_IC50"].agg(["mean", "std", "size"])
        stats = stats[(stats["size"] >= min_pairs) & (stats["std"] > 0)]
        train = train[train["drug"].isin(stats.index)]
        mean = train["drug"].map(stats["mean"]).to_numpy()
        sd = train["drug"].map(stats["std"]).to_numpy()
        z = (train["LN_IC50"].to_numpy() - mean) / sd
        profile = train["profile"].to_numpy()
        lines, of_line = np.unique(profile, return_inverse=True)
        level = np.bincount(of_line, weights=z) / np.bincount(of_line)
        level_coef, level_icpt = _ridge(design.x[lines], level, alphas)
        own = z - level[of_line]
        drugs, coefs, intercepts = [], [], []
        for drug, rows in train.groupby("drug").indices.items():
            coef, intercept = _ridge(design.x[profile[rows]], own[rows], alphas)
            m, s = stats.loc[drug, "mean"], stats.loc[drug, "std"]
            drugs.append(drug)
            coefs.append(s * (level_coef + coef))
            intercepts.append(m + s * (level_icpt + intercept))
        return cls._of(design, drugs, coefs, intercepts)

    @classmethod
    def _of(cls, design, drugs: list[str], coefs: list, intercepts: list) -> "RidgePerDrug":
        return cls(np.asarray(design.genes), np.asarray(design.mean), np.asarray(design.sd), list(drugs),
                   np.asarray(coefs).reshape(len(drugs), design.x.shape[1]),
                   np.asarray(intercepts, dtype=np.float64))

    def predict(self, x: np.ndarray, drugs, rows: np.ndarray | None = None) -> np.ndarray:
        """x: [N, G] standardised columns, one row per pair, or one per profile with `rows` the
        profile of each pair (a reference's pairs share their line's profile: no copy per pair).
        NaN for a drug without a model."""
        row = {d: i for i, d in enumerate(self.drugs)}
        idx = np.array([row.get(d, -1) for d in drugs], dtype=np.int64)
        rows = np.arange(len(idx)) if rows is None else np.asarray(rows)
        out = np.full(len(idx), np.nan)
        for i in np.unique(idx[idx >= 0]):
            pairs = np.flatnonzero(idx == i)
            out[pairs] = x[rows[pairs]] @ self.coef[i] + self.intercept[i]
        return out

    def standardise(self, values: np.ndarray, vocab: np.ndarray) -> np.ndarray:
        """[N, vocabulary genes] profiles -> their standardised columns."""
        pos = np.searchsorted(vocab, self.genes)
        return (values[:, pos] - self.mean) / self.sd


@dataclass
class Stack:
    """The blend of the network and one ridge per drug, and its conformal interval."""
    ridge: RidgePerDrug
    drug_mean: dict[str, float]   # each training drug's mean ln IC50: what the weights act around
    weights: np.ndarray           # [2]: the network's and the ridge's
    floor: float                  # the validation pairs' median spread
    scale: float                  # the conformal quantile q

    @classmethod
    def fit(cls, ridge: RidgePerDrug, drug_mean: dict[str, float], val: pd.DataFrame) -> "Stack":
        """val: the validation pairs' drug, LN_IC50, network and ridge predictions."""
        val = val.dropna(subset=["ridge"])
        m = val["drug"].map(drug_mean).to_numpy()
        x = np.column_stack([val["network"].to_numpy() - m, val["ridge"].to_numpy() - m])
        weights = np.linalg.lstsq(x, val["LN_IC50"].to_numpy() - m, rcond=None)[0]
        spread = np.abs(val["network"] - val["ridge"]).to_numpy()
        floor = float(np.median(spread)) if len(spread) else 1.0
        stack = cls(ridge, dict(drug_mean), weights, floor, 1.0)
        pred, _, _ = stack.blend(val["drug"], val["network"].to_numpy(), val["ridge"].to_numpy())
        stack.scale = conformal_quantile(np.abs(val["LN_IC50"].to_numpy() - pred) / (spread + floor))
        return stack

    def blend(self, drugs, network: np.ndarray, ridge: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(prediction, low, high) of each pair. A drug without a ridge model (too few training
        pairs, or new to the model) has the network's prediction, with the floor for its spread."""
        m = pd.Series(list(drugs)).map(self.drug_mean).to_numpy(dtype=np.float64)
        both = ~np.isnan(ridge) & ~np.isnan(m)
        pred = np.asarray(network, dtype=np.float64).copy()
        pred[both] = (m[both] + self.weights[0] * (network[both] - m[both])
                      + self.weights[1] * (ridge[both] - m[both]))
        spread = np.zeros(len(pred))
        spread[both] = np.abs(network[both] - ridge[both])
        half = self.scale * (spread + self.floor)
        return pred, pred - half, pred + half

    def predict(self, drugs, network: np.ndarray, profiles: np.ndarray, vocab: np.ndarray,
                rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """blend() for pairs read off [profiles, vocabulary genes], `rows` the profile of each
        pair (main.py predict)."""
        drugs = list(drugs)
        ridge = self.ridge.predict(self.ridge.standardise(profiles, vocab), drugs, rows)
        return self.blend(drugs, np.asarray(network, dtype=np.float64), ridge)

    def state(self) -> dict:
        """Arrays, numbers and names, for the checkpoint."""
        r = self.ridge
        return {"genes": r.genes, "mean": r.mean, "sd": r.sd, "drugs": list(r.drugs), "coef": r.coef,
                "intercept": r.intercept, "drug_mean": dict(self.drug_mean), "weights": self.weights,
                "floor": self.floor, "scale": self.scale}

    @classmethod
    def from_state(cls, s: dict) -> "Stack":
        coef = np.asarray(s["coef"], dtype=np.float64).reshape(len(s["drugs"]), len(s["genes"]))
        ridge = RidgePerDrug(np.asarray(s["genes"], dtype=np.int64), np.asarray(s["mean"]),
                             np.asarray(s["sd"]), list(s["drugs"]), coef,
                             np.asarray(s["intercept"], dtype=np.float64))
        return cls(ridge, dict(s["drug_mean"]), np.asarray(s["weights"]), float(s["floor"]),
                   float(s["scale"]))


def conformal_quantile(scores: np.ndarray, level: float = LEVEL) -> float:
    """The split-conformal quantile: the ceil((n + 1) level)-th smallest score, so that a new
    score from the same distribution falls at or below it with probability >= level."""
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    if len(scores) == 0:
        return float("inf")
    k = int(np.ceil((len(scores) + 1) * level))
    return float(scores[min(k, len(scores)) - 1])
