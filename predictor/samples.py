"""What a predictor answers for: samples, as the network reads them (tokens) and, for a bulk
reference, as its ridge member and new-drug predictor read them (values over the vocabulary).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ingest.tokens import TokenTable


@dataclass
class Samples:
    """Profiles to answer for. The network reads their tokens; a bulk reference's ridge member
    and new-drug predictor read their values over the vocabulary."""
    tokens: TokenTable                 # the samples are rows `rows` of it
    rows: np.ndarray
    drug: np.ndarray | None = None     # each sample's own drug (a table's rows); None: every drug asked for
    lines: np.ndarray | None = None    # each sample's cell line, where samples are the training lines'
    values: np.ndarray | None = None   # [profiles of tokens, vocabulary], where given as values
    found: np.ndarray | None = None    # aligned input: the vocabulary genes it measures
    centred: bool = False              # aligned input: centred on its own mean (two groups or more)

    @classmethod
    def of_rows(cls, table: TokenTable, rows: np.ndarray | None = None, lines=None) -> "Samples":
        """Rows of a token table (a token store, a table read in memory), each for its own drug;
        `lines`: their cell lines, where they are lines the predictor was trained on (a run's)."""
        rows = np.arange(len(table)) if rows is None else np.asarray(rows)
        drug = np.asarray(table.drugs, dtype=object)[np.asarray(table.drug[rows])]
        return cls(table, rows, drug, None if lines is None else np.asarray(lines, dtype=object))

    @classmethod
    def of_values(cls, values: np.ndarray, vocab: np.ndarray, found: np.ndarray | None = None,
                  centred: bool = False) -> "Samples":
        """Profiles as values over the vocabulary ([profiles, genes]); `found`, for an input aligned
        from another platform: the genes it measures."""
        return cls(TokenTable.dense(values, vocab), np.arange(len(values)), values=values, found=found,
                   centred=centred)

    def __len__(self) -> int:
        return len(self.rows)
