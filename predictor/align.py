"""Profiles from another platform (single cells averaged per group, RNA-seq, arrays) brought into a
bulk model's training domain, which the checkpoint describes by each vocabulary gene's mean over
the training profiles (`Network.domain`). BENCHMARKS.md has the search behind it (real cells of
three lines).
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def quantiles(values: np.ndarray, found: np.ndarray, domain: dict) -> np.ndarray:
    """Each profile's found genes ([profiles, vocabulary genes]; `found`: the genes the file
    measures) quantile-normalised to the training profiles' distribution over those genes (the
    sorted per-gene training means); genes the file lacks take their training mean, so that
    they say nothing. Quantiles keep each profile's order of genes and discard its platform's
    scale and shape (single-cell counts, arrays, RNA-seq)."""
    mean = np.asarray(domain["mean"], dtype=np.float64)
    out = np.broadcast_to(mean, values.shape).copy()
    if not found.any():
        return out
    target = np.sort(mean[found])
    for i, row in enumerate(values[:, found]):
        ranks = pd.Series(row).rank(method="average").to_numpy() - 1     # ties share a quantile
        out[i, found] = np.interp(ranks, np.arange(len(target)), target)
    return out


def align(values: np.ndarray, found: np.ndarray, domain: dict, centre: bool | None = None) -> np.ndarray:
    """Quantiles (above), then, with two profiles or more, each found gene centred on the
    profiles' own mean and put at its training mean. What a platform adds to a gene's level
    (capture, length, 3' bias) is shared by every profile of one file and cancels; what remains
    are the differences between the profiles, set where the training lines are on average. So a
    file's groups are ranked against each other, and a file of one group keeps its platform's
    offsets."""
    out = quantiles(values, found, domain)
    if len(out) >= 2 if centre is None else centre:
        mean = np.asarray(domain["mean"], dtype=np.float64)
        out[:, found] += mean[found] - out[:, found].mean(0)
    return out
