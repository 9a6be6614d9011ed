"""Relative sensitivity: each prediction set against the training lines of its drug.

A drug that kills every line at nanomolar doses has the lowest ln IC50 for every sample, so an
order by ln IC50 is an order of potency and puts the same drugs first for everyone. What is
special about a sample is where it sits among the lines the model learnt from, drug by drug (GDSC
reports each line's response the same way): its z-score, (ln IC50 - the drug's mean over the
training lines) / their sd, and its percentile among those lines' measured ln IC50. A sample's
mean z over the drugs, its general sensitivity, is a different quantity: it does not carry across
platforms (README), so it is reported apart and never orders the drugs. How well a run ranks
drugs this way is scored by reporting/metrics.py (line_scores).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass
class DrugSpread:
    """Each training drug's ln IC50 over its training lines: mean, sd and the sorted values (one
    per line), laid end to end with offsets, for percentiles."""
    drugs: list[str]
    mean: np.ndarray      # [drugs]
    sd: np.ndarray        # [drugs]; NaN where fewer than 2 lines or no spread (z undefined)
    values: np.ndarray    # every drug's training labels, each drug's sorted, end to end
    offsets: np.ndarray   # [drugs + 1]

    @classmethod
    def fit(cls, pairs: pd.DataFrame) -> "DrugSpread":
        """pairs: one row per training (drug, cell line) pair with its LN_IC50."""
        drugs, mean, sd, values = [], [], [], []
        for drug, y in pairs.groupby("drug", sort=True)["LN_IC50"]:
            y = np.sort(y.to_numpy(dtype=np.float64))
            s = float(np.std(y, ddof=1)) if len(y) >= 2 else float("nan")
            drugs.append(str(drug))
            mean.append(float(y.mean()))
            sd.append(s if s > 0 else float("nan"))
            values.append(y)
        offsets = np.concatenate([[0], np.cumsum([len(v) for v in values])]).astype(np.int64)
        return cls(drugs, np.asarray(mean), np.asarray(sd),
                   np.concatenate(values) if values else np.zeros(0), offsets)

    def _index(self, drugs) -> np.ndarray:
        """Each drug's row; -1 for a drug the model was not trained on."""
        row = {d: i for i, d in enumerate(self.drugs)}
        return np.array([row.get(str(d), -1) for d in drugs], dtype=np.int64)

    def of(self, drugs) -> tuple[np.ndarray, np.ndarray]:
        """(mean, sd) of each drug; NaN for a drug the model was not trained on."""
        i = self._index(drugs)
        mean, sd = np.full(len(i), np.nan), np.full(len(i), np.nan)
        mean[i >= 0], sd[i >= 0] = self.mean[i[i >= 0]], self.sd[i[i >= 0]]
        return mean, sd

    def z(self, drugs, values) -> np.ndarray:
        """(ln IC50 - the drug's training mean) / its training sd; NaN for a drug without one."""
        mean, sd = self.of(drugs)
        return (np.asarray(values, dtype=np.float64) - mean) / sd

    def percentile(self, drugs, values) -> np.ndarray:
        """The share (0-100) of the drug's training lines with a lower measured ln IC50 (ties count
        half): 5 means only 5% of the lines GDSC screened were more sensitive."""
        i = self._index(drugs)
        values = np.asarray(values, dtype=np.float64)
        out = np.full(len(i), np.nan)
        for k in np.unique(i[i >= 0]):
            at = np.flatnonzero(i == k)
            ref = self.values[self.offsets[k]:self.offsets[k + 1]]
            below = np.searchsorted(ref, values[at], side="left")
            upto = np.searchsorted(ref, values[at], side="right")
            out[at] = 100.0 * (below + upto) / (2 * len(ref))
        return out

    def columns(self, drugs, pred, low=None, high=None) -> dict[str, np.ndarray]:
        """The columns every prediction output gains: z, percentile and, with an interval, the
        interval in z units."""
        drugs = list(drugs)
        out = {"z": self.z(drugs, pred), "percentile": self.percentile(drugs, pred)}
        if low is not None:
            out["z_low"], out["z_high"] = self.z(drugs, low), self.z(drugs, high)
        return out

    def state(self) -> dict:
        return {"drugs": list(self.drugs), "mean": self.mean, "sd": self.sd, "values": self.values,
                "offsets": self.offsets}

    @classmethod
    def from_state(cls, s: dict) -> "DrugSpread":
        return cls(list(s["drugs"]), np.asarray(s["mean"], dtype=np.float64),
                   np.asarray(s["sd"], dtype=np.float64), np.asarray(s["values"], dtype=np.float64),
                   np.asarray(s["offsets"], dtype=np.int64))
