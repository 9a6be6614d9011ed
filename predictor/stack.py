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

The interval is in each drug's own unit, its sd over the training lines: a prediction's interval
is +- q sd, q the split-conformal quantile of |error| / sd over the validation pairs, so that 90%
of them fall inside, and so, on average, do 90% of new pairs from the same distribution. Drugs
whose responses spread five times more get intervals five times wider, and in z units every
prediction's interval is +- q. On real GDSC2 (5 folds over lines) it holds 89.5% of the unseen
lines' pairs at 0.80 of the width of the drug's own 5-95% range, with 99% of drugs covered
within 80-97%; the members' disagreement |network - ridge|, alone or added, scored wider
(docs/search.md, "Intervals"). Inputs aligned from another platform (align.py) are bounded
by the same quantile re-measured on the validation lines sent through that alignment, with the
genes the input measures: the checkpoint keeps those lines' profiles and labels for it
(`Calibration`). Everything here is a few arrays, stored in the checkpoint, so that `main.py
predict` blends and bounds every prediction the same way. Checkpoints before format 8 keep the
interval they were calibrated with: +- q (|network - ridge| + the validation pairs' median).

A screened drug without a SMILES never enters the network, which reads a drug's structure; the
ridge member needs none, so it learns such a drug's own part over the level the other drugs
taught it and answers it alone (`alone`), with an interval of its own: the quantile of the
member's errors alone over the validation pairs (`alone_scales`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from predictor.baselines import Design, RidgePerDrug

log = logging.getLogger("ic50.stack")

LEVEL = 0.9                      # the interval's nominal coverage
LEVELS = (0.5, 0.8, LEVEL, 0.95)  # the levels calibrated, for the report's calibration plot


@dataclass
class Calibration:
    """The validation lines' profiles (raw values over the ridge member's genes) and their labelled
    pairs: what re-measures the interval for inputs aligned from another platform."""
    profiles: np.ndarray   # [lines, genes] float32
    drugs: list[str]       # each pair's drug, profile row and ln IC50
    rows: np.ndarray
    labels: np.ndarray


@dataclass
class Stack:
    """The blend of the network and one ridge per drug, and its conformal interval."""
    ridge: RidgePerDrug
    drug_mean: dict[str, float]   # each training drug's mean ln IC50: what the weights act around
    weights: np.ndarray           # [2]: the network's and the ridge's
    drug_sd: dict[str, float] | None = None    # each training drug's sd: the interval's unit
    scales: dict[float, float] | None = None   # nominal level -> conformal quantile q
    calibration: Calibration | None = None
    floor: float | None = None    # before format 8: the interval on |network - ridge| + floor
    scale: float | None = None
    alone: list[str] | None = None              # drugs the ridge member answers alone (no SMILES)
    alone_scales: dict[float, float] | None = None   # their interval: the ridge alone's quantiles

    @classmethod
    def fit(cls, ridge: RidgePerDrug, drug_mean: dict[str, float], drug_sd: dict[str, float],
            val: pd.DataFrame, calibration: Calibration | None = None, alone: list[str] | None = None,
            alone_val: pd.DataFrame | None = None) -> "Stack":
        """val: the validation pairs' drug, LN_IC50, network and ridge predictions; alone: drugs
        without a structure, which the ridge member answers alone, and alone_val their validation
        pairs (drug, LN_IC50, ridge)."""
        val = val.dropna(subset=["ridge"])
        m = val["drug"].map(drug_mean).to_numpy()
        x = np.column_stack([val["network"].to_numpy() - m, val["ridge"].to_numpy() - m])
        weights = np.linalg.lstsq(x, val["LN_IC50"].to_numpy() - m, rcond=None)[0]
        stack = cls(ridge, dict(drug_mean), weights, dict(drug_sd), calibration=calibration)
        pred, _, _ = stack.blend(val["drug"], val["network"].to_numpy(), val["ridge"].to_numpy())
        stack.scales = stack.quantiles(val["drug"], val["LN_IC50"].to_numpy(), pred)
        stack.alone = sorted(set(alone or []) & set(ridge.drugs)) or None
        if stack.alone:   # the ridge alone, calibrated on every validation pair it predicts
            both = pd.concat([val[["drug", "LN_IC50", "ridge"]], alone_val[["drug", "LN_IC50", "ridge"]]])
            both = both.dropna(subset=["ridge"])
            stack.alone_scales = stack.quantiles(both["drug"], both["LN_IC50"].to_numpy(),
                                                 both["ridge"].to_numpy())
        return stack

    @property
    def interval(self) -> str:
        """Which interval this stack gives, in words, for the log."""
        if self.drug_sd is None:
            return (f"{100 * LEVEL:.0f}% intervals on the members' disagreement (checkpoint before "
                    f"format 8)")
        return (f"{100 * LEVEL:.0f}% intervals of +- {self.scales[LEVEL]:.2f} sd of each drug's "
                f"training lines, calibrated on the validation lines")

    def quantiles(self, drugs, labels: np.ndarray, pred: np.ndarray) -> dict[float, float]:
        """Each level's conformal quantile of |error| / the drug's sd over these pairs."""
        sd = self.unit(drugs)
        score = np.abs(np.asarray(labels, dtype=np.float64) - pred) / sd
        score = score[np.isfinite(score)]
        return {level: conformal_quantile(score, level) for level in LEVELS}

    def unit(self, drugs) -> np.ndarray:
        return pd.Series(list(drugs), dtype=object).map(self.drug_sd).to_numpy(dtype=np.float64)

    def blend(self, drugs, network: np.ndarray, ridge: np.ndarray, scale: float | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(prediction, low, high) of each pair, the interval's quantile `scale` (default: the
        validation lines' at LEVEL). A drug without a ridge model (too few training pairs, or new
        to the model) has the network's prediction and no interval (NaN bounds): the quantile was
        measured on the blend. A drug the member answers alone has its prediction and interval."""
        m = pd.Series(list(drugs), dtype=object).map(self.drug_mean).to_numpy(dtype=np.float64)
        alone = self.is_alone(drugs) & ~np.isnan(ridge)
        both = ~np.isnan(ridge) & ~np.isnan(m) & ~alone
        pred = np.asarray(network, dtype=np.float64).copy()
        pred[both] = (m[both] + self.weights[0] * (network[both] - m[both])
                      + self.weights[1] * (ridge[both] - m[both]))
        pred[alone] = ridge[alone]
        if self.drug_sd is None:   # the interval of checkpoints before format 8
            spread = np.zeros(len(pred))
            spread[both] = np.abs(network[both] - ridge[both])
            half = self.scale * (spread + self.floor)
        else:
            q = scale if scale is not None else self.scales[LEVEL] if self.scales else np.nan
            half = np.where(both, q * self.unit(drugs), np.nan)
            if alone.any():   # widened for an alignment as the blend's is
                q_alone = self.alone_scales[LEVEL] * (1.0 if scale is None else scale / self.scales[LEVEL])
                half[alone] = q_alone * self.unit(np.asarray(list(drugs), dtype=object)[alone])
        return pred, pred - half, pred + half

    def is_alone(self, drugs) -> np.ndarray:
        """Whether each drug is one the ridge member answers alone (it has no structure)."""
        return np.isin(np.asarray(list(drugs), dtype=object), list(self.alone or []))

    def inputs(self, profiles: np.ndarray, vocab: np.ndarray) -> np.ndarray:
        """[profiles, vocabulary genes] values -> the ridge member's standardised columns."""
        return self.ridge.standardise(profiles, vocab)

    def columns(self, drugs, network: np.ndarray, x: np.ndarray, rows: np.ndarray,
                column: str = "ln_ic50", scale: float | None = None) -> dict[str, np.ndarray]:
        """The predictor's columns for pairs whose profiles are rows of x (standardised: a
        Design's x, or inputs()), `rows` the profile of each pair: the blend (named `column`),
        its members' own predictions (network, ridge: NaN for a drug without a ridge model), and
        the interval's bounds (its quantile `scale`, for aligned inputs)."""
        drugs = list(drugs)
        network = np.asarray(network, dtype=np.float64)
        ridge = self.ridge.predict(x, drugs, rows)
        final, low, high = self.blend(drugs, network, ridge, scale)
        return {column: final, "network": network, "ridge": ridge, "ln_ic50_low": low, "ln_ic50_high": high}

    def state(self) -> dict:
        """Arrays, numbers and names, for the checkpoint."""
        r, c = self.ridge, self.calibration
        return {"genes": r.genes, "mean": r.mean, "sd": r.sd, "drugs": list(r.drugs), "coef": r.coef,
                "intercept": r.intercept, "drug_mean": dict(self.drug_mean), "weights": self.weights,
                "drug_sd": dict(self.drug_sd), "levels": list(self.scales),
                "scales": [self.scales[k] for k in self.scales],
                "calibration": None if c is None else {"profiles": c.profiles, "drugs": list(c.drugs),
                                                       "rows": c.rows, "labels": c.labels},
                "alone": list(self.alone or []),
                "alone_scales": [self.alone_scales[k] for k in self.scales] if self.alone_scales else []}

    @classmethod
    def from_state(cls, s: dict) -> "Stack":
        coef = np.asarray(s["coef"], dtype=np.float64).reshape(len(s["drugs"]), len(s["genes"]))
        ridge = RidgePerDrug(np.asarray(s["genes"], dtype=np.int64), np.asarray(s["mean"]),
                             np.asarray(s["sd"]), list(s["drugs"]), coef,
                             np.asarray(s["intercept"], dtype=np.float64))
        if "drug_sd" not in s:   # before format 8
            return cls(ridge, dict(s["drug_mean"]), np.asarray(s["weights"]), floor=float(s["floor"]),
                       scale=float(s["scale"]))
        c = s["calibration"]
        calibration = None if c is None else Calibration(
            np.asarray(c["profiles"], dtype=np.float32), list(c["drugs"]),
            np.asarray(c["rows"], dtype=np.int64), np.asarray(c["labels"], dtype=np.float64))
        levels = [float(k) for k in s["levels"]]
        alone_scales = dict(zip(levels, map(float, s.get("alone_scales") or []))) or None
        return cls(ridge, dict(s["drug_mean"]), np.asarray(s["weights"]),
                   {str(k): float(v) for k, v in s["drug_sd"].items()},
                   dict(zip(levels, map(float, s["scales"]))), calibration,
                   alone=list(s.get("alone") or []) or None, alone_scales=alone_scales)


def conformal_quantile(scores: np.ndarray, level: float = LEVEL) -> float:
    """The split-conformal quantile: the ceil((n + 1) level)-th smallest score, so that a new
    score from the same distribution falls at or below it with probability >= level."""
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    if len(scores) == 0:
        return float("inf")
    k = int(np.ceil((len(scores) + 1) * level))
    return float(scores[min(k, len(scores)) - 1])


def fit_stack(design: Design, val: pd.DataFrame, network: np.ndarray, alone: list[str] | None = None,
              alone_val: pd.DataFrame | None = None) -> Stack | None:
    """A bulk reference's predictor: the ridge member (one ridge per drug beside a shared level)
    fitted on the design's training pairs, and its blend with the network fitted on the validation
    pairs `val` (drug, cell_line_id, LN_IC50; `network`: their predictions), never on test pairs;
    its interval calibrated on them, in each drug's sd over the training pairs, with the validation
    lines' profiles kept for aligned inputs. None where no validation pair is of a drug the ridge
    member knows (a split over drugs holds out drugs, not lines: nothing to fit the blend on).
    `alone`: drugs without a structure, whose training pairs are in the design, and `alone_val`
    their validation pairs (drug, LN_IC50, profile): the ridge member answers them alone, its
    interval calibrated apart; the lines' general level is learnt from the other drugs."""
    level_drugs = set(design.train["drug"]) - set(alone) if alone else None
    ridge = RidgePerDrug.fit_with_level(design, level_drugs=level_drugs)
    profile = design.profile_of(val)
    val = val[["drug", "cell_line_id", "LN_IC50"]].assign(
        network=np.asarray(network, dtype=np.float64), ridge=ridge.predict(design.x, val["drug"], profile))
    if val["ridge"].isna().all():
        log.info("no validation pair is of a training drug (the validation drugs are new): the "
                 "network alone predicts the training drugs, without the ridge member or an interval")
        return None
    labels = design.train.groupby("drug")["LN_IC50"]
    used, rows = np.unique(profile, return_inverse=True)
    at = pd.Series(np.arange(len(design.genes)), index=design.genes).reindex(ridge.genes).to_numpy()
    raw = (design.x[used][:, at] * design.sd[at] + design.mean[at]).astype(np.float32)   # unstandardised
    calibration = Calibration(raw, val["drug"].astype(str).tolist(), rows.astype(np.int64),
                              val["LN_IC50"].to_numpy(np.float64))
    if alone:
        profile = alone_val["profile"].to_numpy()
        alone_val = alone_val.assign(ridge=ridge.predict(design.x, alone_val["drug"], profile))
    return Stack.fit(ridge, labels.mean().to_dict(), labels.std(ddof=1).to_dict(), val, calibration, alone,
                     alone_val)
