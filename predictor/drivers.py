"""Why a prediction: the genes that move it, and the genes each drug reads.

A bulk predictor's prediction is the blend of the network and the ridge member (stack.py):
pred - m = w_net (network - m) + w_ridge (ridge - m), m the drug's training mean. The ridge
member is linear in the sample's standardised expression x (its value less the training lines'
mean, over their sd), ridge = b + sum_g coef_g x_g, so in z units (the drug's sd over its training
lines) gene g moves the prediction by exactly

    c_g = w_ridge coef_g x_g / sd,

away from what a sample at the training lines' mean profile gets. That is a gene's contribution,
its `driver` weight w_ridge coef_g / sd is the drug's weight on it (z per sd of the gene:
negative, sensitive when high; positive, resistant when high), and the contributions add up to
the linear part of z, `z_linear` = w_ridge (ridge - m) / sd. The network's part, `z_network` =
w_net (network - m) / sd, is not attributed to genes: drivers cover the linear part only, and
each answer says how large each part is. On real GDSC the ridge member carries 0.59-0.90 of the
blend, fold by fold (BENCHMARKS.md). A drug without a structure is the ridge member's alone
(w_ridge = 1), and its drivers cover all of it.

The member's weights on a drug are the line's general level (shared by every drug, in z units)
plus the drug's own part; both count, since both move the drug's z.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

TOP = 5        # drivers named in ranking.csv
KEPT = 50      # drivers kept per prediction in drivers.parquet
CHUNK = 1024   # pairs whose contributions are held at once ([CHUNK, genes] floats)


@dataclass
class Drivers:
    """Each drug's weight on each gene of the ridge member, in z per sd of the gene."""
    drugs: list[str]
    genes: np.ndarray        # [genes] names (symbols where the checkpoint's gene table has them)
    weight: np.ndarray       # [drugs, genes]

    @classmethod
    def of(cls, stack, genes: dict | None = None) -> "Drivers | None":
        """A stack's drivers (None for a stack before format 8, which keeps no drug sd); genes: the
        network's gene table (token_id, gene_symbol lists), which names them."""
        if stack is None or stack.drug_sd is None:
            return None
        r = stack.ridge
        sd = np.array([stack.drug_sd.get(d, np.nan) for d in r.drugs])
        symbol = dict(zip((genes or {}).get("token_id", []), (genes or {}).get("gene_symbol", [])))
        names = np.array([str(symbol.get(int(t)) or t) for t in r.genes], dtype=object)
        return cls(list(r.drugs), names, ridge_weight(stack, r.drugs)[:, None] * r.coef / sd[:, None])

    def _rows(self, drugs) -> np.ndarray:
        row = {d: i for i, d in enumerate(self.drugs)}
        return np.array([row.get(str(d), -1) for d in drugs], dtype=np.int64)

    def of_drug(self, drug: str, top: int | None = None) -> pd.DataFrame:
        """A drug's genes, strongest weight first: gene, weight and what a high value means."""
        w = self.weight[self.drugs.index(drug)]
        order = np.argsort(-np.abs(w), kind="stable")[:top]
        return pd.DataFrame({"rank": np.arange(1, len(order) + 1), "gene": self.genes[order],
                             "weight": w[order],
                             "when_high": np.where(w[order] < 0, "sensitive", "resistant")})

    def table(self, top: int = KEPT) -> pd.DataFrame:
        """Every drug's `top` genes (drug_drivers.csv)."""
        return pd.concat([self.of_drug(d, top).assign(drug=d) for d in self.drugs], ignore_index=True)[
            ["drug", "rank", "gene", "weight", "when_high"]]

    def contributions(self, x: np.ndarray, drugs, rows: np.ndarray, top: int):
        """For pairs of (profile row of x, drug): yields (pair positions, [n, top] gene columns,
        [n, top] contributions, [n] the sum of all |contributions|), strongest first, a chunk of
        pairs at a time. x: the member's standardised inputs."""
        idx = self._rows(drugs)
        rows = np.asarray(rows)
        for i in np.unique(idx[idx >= 0]):
            pairs = np.flatnonzero(idx == i)
            for start in range(0, len(pairs), CHUNK):
                at = pairs[start:start + CHUNK]
                c = x[rows[at]] * self.weight[i]
                k = min(top, c.shape[1])
                part = np.argpartition(-np.abs(c), k - 1, axis=1)[:, :k]
                vals = np.take_along_axis(c, part, 1)
                order = np.argsort(-np.abs(vals), axis=1, kind="stable")
                yield (at, np.take_along_axis(part, order, 1), np.take_along_axis(vals, order, 1),
                       np.abs(c).sum(1))

    def columns(self, x: np.ndarray, drugs, rows: np.ndarray, top: int = TOP) -> dict[str, np.ndarray]:
        """Each pair's `drivers` ("GENE +0.12; ..." in z units, the strongest first; empty for a drug
        without weights) and `drivers_share`, the share of the linear part's gene-by-gene movement
        (sum of |contributions|) these genes carry."""
        n = len(rows)
        text, share = np.full(n, "", dtype=object), np.full(n, np.nan)
        for at, genes, vals, total in self.contributions(x, drugs, rows, top):
            names = self.genes[genes]
            text[at] = ["; ".join(f"{g} {v:+.2f}" for g, v in zip(gs, vs)) for gs, vs in zip(names, vals)]
            share[at] = np.abs(vals).sum(1) / np.where(total > 0, total, np.nan)
        return {"drivers": text, "drivers_share": share}

    def long(self, x: np.ndarray, drugs, rows: np.ndarray, top: int = KEPT) -> pd.DataFrame:
        """drivers.parquet: one row per (pair, rank): pair (its position), rank, gene, contribution
        (z) and expression (the sample's value in sd from the training lines' mean)."""
        parts = []
        rows = np.asarray(rows)
        for at, genes, vals, _ in self.contributions(x, drugs, rows, top):
            k = genes.shape[1]
            parts.append(pd.DataFrame({
                "pair": np.repeat(at, k), "rank": np.tile(np.arange(1, k + 1), len(at)),
                "gene": self.genes[genes].ravel(), "contribution": vals.ravel(),
                "expression": np.take_along_axis(x[rows[at]], genes, 1).ravel()}))
        if not parts:
            return pd.DataFrame({"pair": np.zeros(0, np.int64), "rank": np.zeros(0, np.int64),
                                 "gene": np.zeros(0, object), "contribution": np.zeros(0),
                                 "expression": np.zeros(0)})
        return pd.concat(parts, ignore_index=True).sort_values(["pair", "rank"], kind="stable")


def parts(stack, drugs, network: np.ndarray, ridge: np.ndarray, sd: np.ndarray) -> dict[str, np.ndarray]:
    """`z_network` and `z_linear`: the network's and the ridge member's parts of each prediction's
    z (NaN where the drug has no ridge member)."""
    m = pd.Series(list(drugs), dtype=object).map(stack.drug_mean).to_numpy(dtype=np.float64)
    return {"z_network": stack.weights[0] * (np.asarray(network) - m) / sd,
            "z_linear": ridge_weight(stack, drugs) * (ridge - m) / sd}


def ridge_weight(stack, drugs) -> np.ndarray:
    """The ridge member's weight in each drug's prediction: the blend's, or 1 for a drug it
    answers alone (no structure for the network)."""
    return np.where(stack.is_alone(drugs), 1.0, stack.weights[1])
