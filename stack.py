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

from baselines import Design, RidgePerDrug

LEVEL = 0.9   # the interval's nominal coverage


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

    def inputs(self, profiles: np.ndarray, vocab: np.ndarray) -> np.ndarray:
        """[profiles, vocabulary genes] values -> the ridge member's standardised columns."""
        return self.ridge.standardise(profiles, vocab)

    def columns(self, drugs, network: np.ndarray, x: np.ndarray, rows: np.ndarray,
                column: str = "ln_ic50") -> dict[str, np.ndarray]:
        """The predictor's columns for pairs whose profiles are rows of x (standardised: a
        Design's x, or inputs()), `rows` the profile of each pair: the blend (named `column`),
        its members' own predictions (network, ridge: NaN for a drug without a ridge model), and
        the interval's bounds."""
        drugs = list(drugs)
        network = np.asarray(network, dtype=np.float64)
        ridge = self.ridge.predict(x, drugs, rows)
        final, low, high = self.blend(drugs, network, ridge)
        return {column: final, "network": network, "ridge": ridge, "ln_ic50_low": low, "ln_ic50_high": high}

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


def fit_stack(design: Design, val: pd.DataFrame, network: np.ndarray) -> Stack:
    """A bulk reference's predictor: the ridge member (one ridge per drug beside a shared level)
    fitted on the design's training pairs, and its blend with the network fitted on the validation
    pairs `val` (drug, cell_line_id, LN_IC50; `network`: their predictions), never on test pairs."""
    ridge = RidgePerDrug.fit_with_level(design)
    val = val[["drug", "cell_line_id", "LN_IC50"]].assign(
        network=np.asarray(network, dtype=np.float64),
        ridge=ridge.predict(design.x, val["drug"], design.profile_of(val)))
    return Stack.fit(ridge, design.train.groupby("drug")["LN_IC50"].mean().to_dict(), val)

