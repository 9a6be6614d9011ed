"""Drugs the model never saw: each new drug's response as a structure-weighted combination of the
training drugs' responses, with an interval calibrated on drugs held out like new ones.

The network reads a drug only through its vector, and a few hundred training drugs do not teach it
a structure -> response map that carries: on real GDSC2 under a split over drugs it ranks a new
drug's lines worse than each line's mean over the training drugs (docs/search.md, "New drugs").
What does carry is the lines' general sensitivity and what structurally close drugs do beyond it.
So a new drug's ln IC50 at a line is

    its predicted mean  +  the line's general level  +  sum_k w_k (drug k's residual at the line)

with the residuals those of an additive model (drug mean + line level) over the training drugs, and
the weights w those of kernel ridge regression over drugs with the Tanimoto kernel of Morgan
fingerprints: w = s (K + lambda I)^-1, s the new drug's similarity to each training drug, K theirs
to each other. The same weights predict its mean and its sd (in logs) from the training drugs'.
Unlike a top-5 kNN, it weighs every training drug, discounts near-duplicates among neighbours and
shrinks a dissimilar drug towards the lines' general level. lambda is chosen by leave-one-drug-out
(a closed form for kernel ridge) over the training drugs, never the validation or test drugs.

At a training line the residuals are the measured ones; at a new sample (main.py predict) they are
those of the reference's own predictions for the training drugs (`from_predictions`).

Intervals: +- q x the predicted sd, q the conformal quantile of |error| / predicted sd over the
training drugs, each predicted with itself left out (a jackknife over drugs: each is held out as a
new drug is). `scales` holds q at the training lines (a new drug at a screened line: the drug
split's test pairs), `line_scales` at new samples: the reference's validation lines, with each left-
out drug predicted from the reference's predictions of the others, scored on its labels there.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ingest.drugs import morgan_fingerprints
from predictor.stack import LEVEL, LEVELS, conformal_quantile

log = logging.getLogger("ic50.newdrugs")

BITS, RADIUS = 2048, 2                     # ECFP4-like Morgan fingerprints: what similarity reads
LAMBDAS = (0.03, 0.1, 0.3, 1.0, 3.0)      # kernel ridge penalties tried (leave-one-drug-out)
NEIGHBOURS = 5                             # the kNN baseline's neighbours, and the log's
FAR = 0.4   # below this similarity to every training drug, structure added nothing on GDSC2
MIN_LINES = 3                              # a training drug with fewer lines joins no pool


def fingerprints(smiles: list[str]) -> np.ndarray:
    """[drugs, BITS] bool Morgan fingerprints."""
    return morgan_fingerprints(list(smiles), n_bits=BITS, radius=RADIUS).astype(bool)


def tanimoto(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[len(a), len(b)] Tanimoto similarity of bool fingerprints (0 where both are empty)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def additive(y: np.ndarray, iters: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """(drug means, line levels) of an additive model of a [lines, drugs] matrix with gaps,
    alternating means; the line levels sum to zero."""
    seen = np.isfinite(y)
    filled = np.where(seen, y, 0.0)
    level = np.zeros(y.shape[0])
    mean = filled.sum(0) / np.maximum(seen.sum(0), 1)
    for _ in range(iters):
        level = (filled - seen * mean[None]).sum(1) / np.maximum(seen.sum(1), 1)
        level -= level.mean()
        mean = (filled - seen * level[:, None]).sum(0) / np.maximum(seen.sum(0), 1)
    return mean, level


@dataclass
class NewDrugs:
    """What predicts a drug new to the model: the training drugs' fingerprints, means and sds, the
    kernel ridge penalty and the interval's quantiles. `lines`/`values`/`level` (the training
    lines' labels and levels) serve a run's own test pairs and are not kept in the checkpoint."""
    drugs: list[str]
    bits: np.ndarray                 # [drugs, BITS / 8] packed fingerprints
    mean: np.ndarray                 # [drugs] mean ln IC50 over the training lines (additive model)
    log_sd: np.ndarray               # [drugs] log sd over the training lines
    lam: float
    scales: dict[float, float]       # level -> q at training lines
    line_scales: dict[float, float] | None = None   # level -> q at new samples
    lines: list[str] | None = None
    level: np.ndarray | None = None       # [lines]
    values: np.ndarray | None = None      # [lines, drugs] ln IC50, NaN where not measured

    # ------------------------------------------------------------------ fitting

    @classmethod
    def fit(cls, pairs: pd.DataFrame, smiles: dict[str, str]) -> "NewDrugs | None":
        """pairs: the training pairs (drug, cell_line_id, LN_IC50); smiles: drug -> SMILES. None
        where fewer than 3 training drugs have a SMILES and MIN_LINES lines."""
        pairs = pairs[pairs["drug"].isin(smiles.keys())]
        counts = pairs.groupby("drug")["LN_IC50"].count()
        pairs = pairs[pairs["drug"].isin(counts.index[counts >= MIN_LINES])]
        y = pairs.pivot_table(index="cell_line_id", columns="drug", values="LN_IC50", aggfunc="mean")
        if y.shape[1] < 3:
            return None
        drugs, lines = [str(d) for d in y.columns], [str(x) for x in y.index]
        values = y.to_numpy(np.float64)
        fp = fingerprints([smiles[d] for d in drugs])
        mean, level = additive(values)
        residuals = np.nan_to_num(values - mean[None] - level[:, None])
        log_sd = np.log(np.maximum(np.nanstd(values, axis=0, ddof=1), 1e-3))
        kernel = tanimoto(fp, fp)
        best = None
        for lam in LAMBDAS:   # leave-one-drug-out error of each drug's whole column
            loo = _loo_weights(kernel, lam)
            pred = _centred(loo, mean)[None] + level[:, None] + residuals @ loo.T
            err = np.nanmean((values - pred) ** 2)
            if best is None or err < best[0]:
                best = (err, lam, loo, pred)
        _, lam, loo, pred = best
        sd = np.exp(_centred(loo, log_sd))
        score = (np.abs(values - pred) / sd[None])[np.isfinite(values)]
        out = cls(drugs, np.packbits(fp, axis=1), mean, log_sd, float(lam),
                  {k: conformal_quantile(score, k) for k in LEVELS}, lines=lines, level=level,
                  values=values)
        log.info("new drugs: kernel ridge over %d training drugs (lambda %.2g by leave-one-drug-out); "
                 "%.0f%% intervals +- %.2f predicted sd at screened lines", len(drugs), lam,
                 100 * LEVEL, out.scales[LEVEL])
        return out

    def calibrate_lines(self, known: np.ndarray, labels: pd.DataFrame) -> None:
        """The quantiles at new samples: `known` the reference's predictions [lines, self.drugs]
        of held-out lines, `labels` their measured pairs (line: row of known, drug, LN_IC50); each
        training drug is predicted from the others' predictions, as a new drug would be."""
        kernel = tanimoto(self.fingerprints, self.fingerprints)
        loo = _loo_weights(kernel, self.lam)
        pred = self._combine(known, loo, _centred(loo, self.mean))
        sd = np.exp(_centred(loo, self.log_sd))
        col = pd.Series(np.arange(len(self.drugs)), index=self.drugs)
        labels = labels[labels["drug"].isin(col.index)]
        j = col[labels["drug"]].to_numpy()
        r = labels["line"].to_numpy()
        score = np.abs(labels["LN_IC50"].to_numpy() - pred[r, j]) / sd[j]
        if len(score):
            self.line_scales = {k: conformal_quantile(score, k) for k in LEVELS}

    # ------------------------------------------------------------------ predicting

    @property
    def fingerprints(self) -> np.ndarray:
        return np.unpackbits(self.bits, axis=1, count=BITS).astype(bool)

    def similarity(self, smiles: list[str]) -> np.ndarray:
        """[new drugs, training drugs] Tanimoto similarity."""
        return tanimoto(fingerprints(smiles), self.fingerprints)

    def weights(self, smiles: list[str]) -> np.ndarray:
        """[new drugs, training drugs]: the kernel ridge weights of each new drug."""
        kernel = tanimoto(self.fingerprints, self.fingerprints)
        inverse = np.linalg.inv(kernel + self.lam * np.eye(len(self.drugs)))
        return self.similarity(smiles) @ inverse

    def moments(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(predicted mean, predicted sd) of each new drug from its weights."""
        return _centred(w, self.mean), np.exp(_centred(w, self.log_sd))

    def at_training_lines(self, smiles: list[str], lines) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(prediction, predicted mean, predicted sd) of pairs (new drug by its SMILES, training
        line by name); the prediction NaN at a line the model was not trained on."""
        uniq, inv = np.unique(np.asarray(smiles, dtype=object), return_inverse=True)
        w = self.weights(list(uniq))
        mean, sd = self.moments(w)
        r, ok = self._lines(lines)
        d = inv[ok]
        residuals = np.nan_to_num(self.values[r] - self.mean[None] - self.level[r, None])
        pred = np.full(len(inv), np.nan)
        pred[ok] = mean[d] + self.level[r] + np.einsum("ij,ij->i", residuals, w[d])
        return pred, mean[inv], sd[inv]

    def knn_at_lines(self, smiles: list[str], lines) -> np.ndarray:
        """The structure-kNN baseline (`knn`) of the same pairs; NaN at a line the model was not
        trained on."""
        uniq, inv = np.unique(np.asarray(smiles, dtype=object), return_inverse=True)
        r, ok = self._lines(lines)
        out = np.full(len(inv), np.nan)
        out[ok] = knn(self.similarity(list(uniq))[inv[ok]], self.values[r])
        return out

    def _lines(self, lines) -> tuple[np.ndarray, np.ndarray]:
        """The training-line row of each line by name, and which lines are training lines."""
        row = pd.Series(np.arange(len(self.lines)), index=self.lines).reindex(
            [str(x) for x in lines]).to_numpy()
        ok = np.isfinite(row)
        return row[ok].astype(np.int64), ok

    def from_predictions(self, w: np.ndarray, known: np.ndarray) -> np.ndarray:
        """[samples, new drugs] predictions from the reference's [samples, self.drugs] predictions
        of the training drugs at the same samples."""
        return self._combine(known, w, _centred(w, self.mean))

    def _combine(self, known: np.ndarray, w: np.ndarray, mean: np.ndarray) -> np.ndarray:
        """mean + the sample's level + w . (residuals), the level and residuals taken from the
        predictions `known` of the training drugs (the level: their mean departure from the drugs'
        means)."""
        centred = known - self.mean[None]
        level = centred.mean(1, keepdims=True)
        return mean[None] + level + (centred - level) @ w.T

    def interval(self, sd: np.ndarray, at_lines: bool, scale: float | None = None) -> np.ndarray:
        """Half-widths for new drugs of predicted sd `sd`: at training lines, or at new samples
        (NaN where the checkpoint has no held-out lines to calibrate them on); `scale`: how much
        an aligned input widens the known drugs' quantile, applied alike."""
        q = (self.scales if at_lines else self.line_scales or {}).get(LEVEL, np.nan)
        return q * sd * (1.0 if scale is None else scale)

    def columns(self, pred: np.ndarray, mean: np.ndarray, sd: np.ndarray, at_lines: bool,
                scale: float | None = None, column: str = "ln_ic50") -> dict[str, np.ndarray]:
        """What every prediction output holds for pairs of new drugs: ln IC50 (named `column`), the
        interval's bounds, and z against the drug's predicted mean and sd over the lines GDSC
        screened (no percentile: there are no measured lines to place it among)."""
        half = self.interval(sd, at_lines, scale)
        low, high = pred - half, pred + half
        return {column: pred, "ln_ic50_low": low, "ln_ic50_high": high, "z": (pred - mean) / sd,
                "percentile": np.full(len(pred), np.nan), "z_low": (low - mean) / sd,
                "z_high": (high - mean) / sd}

    # ------------------------------------------------------------------ the checkpoint

    def record(self) -> dict:
        return {"training_drugs": len(self.drugs), "lambda": self.lam, "level": LEVEL,
                "scales": {str(k): v for k, v in self.scales.items()},
                "line_scales": None if self.line_scales is None else
                {str(k): v for k, v in self.line_scales.items()}}

    def state(self) -> dict:
        return {"drugs": list(self.drugs), "bits": self.bits, "mean": self.mean, "log_sd": self.log_sd,
                "lam": self.lam, "levels": list(self.scales), "scales": list(self.scales.values()),
                "line_scales": None if self.line_scales is None else list(self.line_scales.values())}

    @classmethod
    def from_state(cls, s: dict) -> "NewDrugs":
        levels = [float(k) for k in s["levels"]]
        line = s["line_scales"]
        return cls(list(s["drugs"]), np.asarray(s["bits"], dtype=np.uint8),
                   np.asarray(s["mean"], dtype=np.float64), np.asarray(s["log_sd"], dtype=np.float64),
                   float(s["lam"]), dict(zip(levels, map(float, s["scales"]))),
                   None if line is None else dict(zip(levels, map(float, line))))


def fill(columns: dict, rows: np.ndarray, new: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Output columns (name -> array) with `rows` taken from `new`; a column only `new` has is NaN
    in the other rows."""
    n = len(next(iter(columns.values())))
    out = dict(columns)
    for k, v in new.items():
        out[k] = np.asarray(out[k], dtype=np.float64).copy() if k in out else np.full(n, np.nan)
        out[k][rows] = v
    return out


def _loo_weights(kernel: np.ndarray, lam: float) -> np.ndarray:
    """[drugs, drugs] kernel ridge weights with each drug left out of its own prediction: the
    closed form (H - diag H) / (1 - diag H), H = K (K + lambda I)^-1."""
    hat = kernel @ np.linalg.inv(kernel + lam * np.eye(len(kernel)))
    d = np.diag(hat)
    return (hat - np.diag(d)) / (1.0 - d)[:, None]


def _centred(w: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Kernel ridge of a per-drug quantity around its mean over the training drugs."""
    m = values.mean()
    return m + w @ (values - m)


def nearest(names: list[str], fps: np.ndarray, smiles: str, k: int = NEIGHBOURS) -> list[tuple[str, float]]:
    """The k drugs (of `names`, fingerprints `fps`) most similar to one SMILES, with the similarity."""
    s = tanimoto(fingerprints([smiles]), fps)[0]
    top = np.argsort(-s, kind="stable")[:k]
    return [(names[i], float(s[i])) for i in top]


def similarity_to_training(training_smiles: list[str], smiles: list[str]) -> np.ndarray:
    """Each drug's highest Tanimoto similarity to the training drugs (1 for a training drug)."""
    if not training_smiles:
        return np.zeros(len(smiles))
    return tanimoto(fingerprints(smiles), fingerprints(training_smiles)).max(1)


def knn(sim: np.ndarray, labels: np.ndarray, k: int = NEIGHBOURS) -> np.ndarray:
    """The structure-kNN baseline: per row, the k most similar training drugs' labels at the same
    line, weighted by similarity (only those measured there); sim [pairs, drugs], labels [pairs,
    drugs] (NaN where not measured); NaN where none of the k was measured."""
    top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    s = np.take_along_axis(sim, top, 1)
    v = np.take_along_axis(labels, top, 1)
    seen = np.isfinite(v)
    den = (s * seen).sum(1)
    return np.where(den > 0, (np.where(seen, v, 0) * s).sum(1) / np.where(den > 0, den, 1), np.nan)
