"""The merged table -> leak-free splits -> fixed-size tensors the model reads.

Every cell of a (drug, cell line) pair carries the same IC50, so splitting cells at random puts
each test pair in training too. Splits here assign whole GROUPS (pairs, cell lines or drugs) to
train/val/test; `random` (cells) is kept only to compare with the original study.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common import PipelineError, flat_list, ragged_positions, require_file

log = logging.getLogger("ic50.data")

# the merged-table contract (see README): column -> accepted Arrow type check
CONTRACT = {
    "genes": lambda t: pa.types.is_list(t) and pa.types.is_integer(t.value_type),
    "expressions": lambda t: pa.types.is_list(t) and pa.types.is_floating(t.value_type),
    "cell_line_id": pa.types.is_string,
    "drug": pa.types.is_string,
    "canonical_smiles": pa.types.is_string,
    "LN_IC50": lambda t: pa.types.is_floating(t) or pa.types.is_integer(t),
}
OPTIONAL = ("dose_uM", "cell_name", "gdsc_dataset")
# What `expressions` holds: raw counts (normalised per cell here) or values already normalised
# (log-TPM, z-scores; used as they are, negatives included). A table declares it in its parquet
# metadata under this key; tables without it hold counts.
VALUE_KINDS = ("counts", "normalised")
VALUE_KIND_KEY = "value_kind"
GROUP_COLUMNS = {"pair": ["drug", "cell_line_id"], "cell_line": ["cell_line_id"],
                 "drug": ["drug"], "random": None}
PARTS = ("train", "val", "test")
PAD, UNK = 0, 1


def _as_regular_lists(table: pa.Table) -> pa.Table:
    """large_list columns (e.g. written by polars) -> list, which the feature code reads."""
    for name in ("genes", "expressions"):
        col = table[name]
        if pa.types.is_large_list(col.type):
            table = table.set_column(table.schema.get_field_index(name), name,
                                     col.cast(pa.list_(col.type.value_type)))
    return table


def declared_value_kind(path: str | Path) -> str | None:
    """The value kind a merged table declares in its parquet metadata (an .h5ad in its uns), or None."""
    if str(path).lower().endswith(".h5ad"):
        import h5ad
        return h5ad.declared_value_kind(path)
    path = require_file(path, "merged table")
    try:
        meta = pq.read_schema(path).metadata or {}
    except Exception as e:
        raise PipelineError(f"'{path}' is not a readable parquet file: {e}") from e
    kind = meta.get(VALUE_KIND_KEY.encode())
    if kind is None:
        return None
    kind = kind.decode()
    if kind not in VALUE_KINDS:
        raise PipelineError(f"merged table '{path}' declares {VALUE_KIND_KEY}={kind!r} in its "
                            f"metadata; expected one of {list(VALUE_KINDS)}.")
    return kind


def resolve_value_kind(setting: str, path: str | Path | None) -> str:
    """`auto` -> the table's declaration, else counts; an explicit setting wins over it."""
    declared = declared_value_kind(path) if path else None
    if setting == "auto":
        return declared or "counts"
    if declared and declared != setting:
        log.warning("merged table '%s' declares %s values; --value-kind %s overrides that.", path,
                    declared, setting)
    return setting


def with_value_kind(table: pa.Table, kind: str) -> pa.Table:
    """The table with its value kind declared in its (parquet) metadata."""
    meta = dict(table.schema.metadata or {})
    meta[VALUE_KIND_KEY.encode()] = kind.encode()
    return table.replace_schema_metadata(meta)


def load_merged(path: str | Path, labelled: bool = True, value_kind: str = "counts") -> pa.Table:
    """Read and check a merged table; the error names the file, the column and what was expected.

    `labelled=False` (prediction) makes LN_IC50 optional. Counts must not be negative.
    """
    path = require_file(path, "merged table")
    try:
        schema = pq.read_schema(path)
    except Exception as e:
        raise PipelineError(f"'{path}' is not a readable parquet file: {e}") from e
    contract = {k: v for k, v in CONTRACT.items() if labelled or k != "LN_IC50"}
    missing = [c for c in contract if c not in schema.names]
    if missing:
        raise PipelineError(f"merged table '{path}' lacks column(s) {missing}; expected the "
                            f"merged-table contract: {list(CONTRACT)} (+ optional {list(OPTIONAL)}).")
    for name, ok in CONTRACT.items():
        if name not in schema.names:
            continue
        t = schema.field(name).type
        if pa.types.is_large_list(t):
            t = pa.list_(t.value_type)
        if pa.types.is_large_string(t):
            t = pa.string()
        if not ok(t):
            expected = {"genes": "list<int>", "expressions": "list<float>", "LN_IC50": "float"}
            raise PipelineError(f"merged table '{path}': column {name!r} has type {t}, expected "
                                f"{expected.get(name, 'string')}.")
    cols = [c for c in CONTRACT if c in schema.names] + [c for c in OPTIONAL if c in schema.names]
    table = _as_regular_lists(pq.read_table(path, columns=cols))
    for name in ("cell_line_id", "drug", "canonical_smiles"):
        if pa.types.is_large_string(table[name].type):
            table = table.set_column(table.schema.get_field_index(name), name,
                                     table[name].cast(pa.string()))
    if table.num_rows == 0:
        raise PipelineError(f"merged table '{path}' has no rows.")
    check_rows(table, str(path), value_kind)
    return table


def check_rows(table: pa.Table, source: str, value_kind: str = "counts") -> None:
    for name in ("drug", "cell_line_id", "canonical_smiles", "LN_IC50", "genes", "expressions"):
        n = table[name].null_count if name in table.column_names else 0
        if n:
            raise PipelineError(f"merged table '{source}': column {name!r} has {n} missing value(s).")
    if "LN_IC50" in table.column_names and not np.isfinite(table["LN_IC50"].to_numpy()).all():
        raise PipelineError(f"merged table '{source}': column 'LN_IC50' has non-finite values.")
    g_len = pc.list_value_length(table["genes"]).to_numpy()
    e_len = pc.list_value_length(table["expressions"]).to_numpy()
    bad = np.flatnonzero(g_len != e_len)
    if bad.size:
        raise PipelineError(f"merged table '{source}': row {bad[0]} has {g_len[bad[0]]} genes but "
                            f"{e_len[bad[0]]} expressions; the two lists must be parallel.")
    values = pc.list_flatten(table["expressions"])
    if len(values) and not pc.all(pc.is_finite(values)).as_py():
        raise PipelineError(f"merged table '{source}': column 'expressions' has NaN or infinite values.")
    low = pc.min(values).as_py() if len(values) else None
    if value_kind == "counts" and low is not None and low < 0:
        raise PipelineError(f"merged table '{source}': column 'expressions' has negative values (min "
                            f"{low:.3g}), but they are read as raw counts. If they are already "
                            f"normalised (log-TPM, z-scores), pass --value-kind normalised or declare "
                            f"it in the table's metadata ({VALUE_KIND_KEY}=normalised).")


def drug_smiles(table: pa.Table) -> dict[str, str]:
    """Drug name -> its SMILES, over the distinct (drug, canonical_smiles) pairs of a table."""
    pairs = table.select(["drug", "canonical_smiles"]).group_by(["drug", "canonical_smiles"]).aggregate([])
    return dict(sorted(zip(pairs["drug"].to_pylist(), pairs["canonical_smiles"].to_pylist())))


GENE_TABLE_COLUMNS = ("gene_symbol", "ensembl_id", "token_id")


def load_gene_table(path: str | Path) -> pd.DataFrame:
    """A gene table in Tahoe-100M's gene_metadata format (gene_symbol, ensembl_id, token_id), from
    parquet or csv: what links gene symbols and Ensembl ids to token ids."""
    path = require_file(path, "gene table")
    try:
        frame = (pd.read_csv(path) if path.suffix.lower() in (".csv", ".gz")
                 else pd.read_parquet(path))
    except Exception as e:
        raise PipelineError(f"gene table '{path}' could not be read as parquet or csv: {e}") from e
    return check_gene_table(frame, str(path))


def check_gene_table(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    missing = [c for c in GENE_TABLE_COLUMNS if c not in frame.columns]
    if missing:
        raise PipelineError(f"gene table '{source}' lacks column(s) {missing}; expected Tahoe-100M's "
                            f"gene_metadata format: {list(GENE_TABLE_COLUMNS)}.")
    token = pd.to_numeric(frame["token_id"], errors="coerce")
    if token.isna().any():
        bad = frame["token_id"][token.isna()].iloc[0]
        raise PipelineError(f"gene table '{source}': column 'token_id' holds {bad!r}; expected "
                            f"integer token ids.")
    names = lambda col: frame[col].astype(object).where(frame[col].notna(), None)  # noqa: E731
    return pd.DataFrame({"gene_symbol": names("gene_symbol"), "ensembl_id": names("ensembl_id"),
                         "token_id": token.astype(np.int64)}).drop_duplicates("token_id")


def gene_names(vocab: np.ndarray, gene_table: pd.DataFrame) -> dict[str, list]:
    """The gene symbol and Ensembl id of each vocabulary token (None where the table has none)."""
    by_token = gene_table.set_index("token_id")
    found = np.isin(vocab, by_token.index.to_numpy())
    out = {}
    for col in ("gene_symbol", "ensembl_id"):
        values = by_token[col].reindex(vocab)
        out[col] = [v if ok and isinstance(v, str) and v else None for v, ok in zip(values, found)]
    log.info("gene table: %d of %d vocabulary genes have a symbol or an Ensembl id", int(sum(
        a is not None or b is not None for a, b in zip(out["gene_symbol"], out["ensembl_id"]))),
        len(vocab))
    return out


def make_split(keys: pd.DataFrame, mode: str, seed: int, *, val_frac: float = 0.1,
               test_frac: float = 0.1, fold: int = 0, n_folds: int = 0) -> np.ndarray:
    """train/val/test per row; whole groups go to one part, with a seeded shuffle of the groups.

    With n_folds >= 2 the shuffled groups are cut into n_folds folds: fold `fold` is the test
    set, and `val_frac` of all groups, taken from the other folds, the validation set.
    """
    if mode not in GROUP_COLUMNS:
        raise PipelineError(f"unknown split {mode!r}; expected one of {list(GROUP_COLUMNS)}.")
    cols = GROUP_COLUMNS[mode]
    if cols is None:
        group = np.arange(len(keys))
    else:
        group = keys.groupby(cols, sort=True).ngroup().to_numpy()
    n_groups = int(group.max()) + 1
    if n_groups < 3:
        raise PipelineError(f"split {mode!r} needs at least 3 groups, the data has {n_groups}.")
    perm = np.random.default_rng(seed).permutation(n_groups)
    if n_folds >= 2:
        if n_groups < n_folds + 1:
            raise PipelineError(f"{n_folds}-fold split {mode!r} needs more than {n_folds} groups, "
                                f"the data has {n_groups}.")
        chunks = np.array_split(perm, n_folds)
        perm = np.concatenate([chunks[fold]] + [c for i, c in enumerate(chunks) if i != fold])
        test_frac = len(chunks[fold]) / n_groups
    n_test = max(1, int(round(test_frac * n_groups)))
    n_val = max(1, int(round(val_frac * n_groups)))
    part_of_group = np.empty(n_groups, dtype=object)
    part_of_group[perm[:n_test]] = "test"
    part_of_group[perm[n_test:n_test + n_val]] = "val"
    part_of_group[perm[n_test + n_val:]] = "train"
    return part_of_group[group].astype(str)


@dataclass
class Features:
    """What the model reads for N cells: gene tokens (vocabulary indices) and their values.

    Dense [N, K] for top_k / pooled; ragged (flat arrays + offsets) when every gene is a token.
    Within a cell, tokens are ordered from the most to the least expressed gene.
    """
    genes: np.ndarray        # [N, K] int32 (0 = PAD), or flat [total] when offsets is set
    values: np.ndarray       # same shape: log1p(counts normalised to 10,000 per cell)
    drug: np.ndarray         # [N] int64 index into the drug table
    y: np.ndarray            # [N] float32 ln IC50
    offsets: np.ndarray | None = None   # [N + 1] row starts of the ragged layout

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets) if self.offsets is not None else (self.genes != PAD).sum(1)

    def tokens(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[B, L] genes and values of rows idx; ragged rows are padded to the longest."""
        if self.offsets is None:
            return self.genes[idx], self.values[idx]
        starts = self.offsets[idx]
        lens = self.offsets[np.asarray(idx) + 1] - starts
        width = max(int(lens.max(initial=0)), 1)
        rows, cols = ragged_positions(lens)
        src = np.repeat(starts, lens) + cols
        g = np.zeros((len(idx), width), dtype=np.int32)
        v = np.zeros((len(idx), width), dtype=np.float32)
        g[rows, cols], v[rows, cols] = self.genes[src], self.values[src]
        return g, v


def gene_vocabulary(genes: pa.ChunkedArray) -> np.ndarray:
    """Sorted gene token ids seen in training; index i+2 in the model (0 = PAD, 1 = unknown)."""
    return np.unique(pc.list_flatten(genes).to_numpy())


def normalised_values(table: pa.Table, value_kind: str = "counts"
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Flat (row, gene id, value) of every listed gene, and the number of genes per row: the
    values the model and the baselines all read. Counts become log1p(count / cell total x
    10,000); normalised values are used as they are."""
    offsets, genes = flat_list(table["genes"])
    raw = flat_list(table["expressions"])[1]
    lengths = np.diff(offsets)
    rows = ragged_positions(lengths)[0]
    if value_kind == "normalised":
        return rows, genes, raw.astype(np.float64), lengths
    counts = np.where(raw > 0, raw, 0).astype(np.float64)
    totals = np.bincount(rows, weights=counts, minlength=len(lengths))
    values = np.log1p(counts / np.maximum(totals[rows], 1e-12) * 1e4)  # float64; callers cast
    return rows, genes, values, lengths


def vocab_index(vocab: np.ndarray, genes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position of each gene id in the sorted vocabulary, and whether it is there at all."""
    idx = np.minimum(np.searchsorted(vocab, genes), len(vocab) - 1)
    return idx, vocab[idx] == genes


def ranked_tokens(table: pa.Table, vocab: np.ndarray, k: int | None, value_kind: str = "counts"
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[rows, K] token indices and values of each row's k highest-valued genes (all of them for
    k=None), highest first, and which entries are real tokens. A zero count is no token; with
    normalised values every listed gene is one, whatever its sign."""
    counts = value_kind == "counts"
    rows, gv, norm, cell_len = normalised_values(table, value_kind)
    width = max(int(cell_len.max(initial=0)), 1)
    cols = ragged_positions(cell_len)[1]
    dense_v = np.full((len(cell_len), width), -1.0 if counts else -np.inf, dtype=np.float32)
    dense_g = np.zeros((len(cell_len), width), dtype=np.int64)
    dense_v[rows, cols] = norm
    dense_g[rows, cols] = gv
    k = width if k is None else min(k, width)
    # most expressed first, ties by gene id: the tokens depend on the cell's genes and values
    # only, not on the order its genes are listed in (Tahoe rows, an .h5ad's columns)
    top = np.lexsort((dense_g, -dense_v), axis=1)[:, :k]
    tv = np.take_along_axis(dense_v, top, axis=1)
    tg = np.take_along_axis(dense_g, top, axis=1)
    idx, known = vocab_index(vocab, tg)
    return np.where(known, idx + 2, UNK).astype(np.int32), tv, (tv > 0 if counts else np.isfinite(tv))


def build_features(table: pa.Table, vocab: np.ndarray, drug_index: dict[str, int], top_k: int,
                   tokens: str = "top_k", chunk: int = 4096, value_kind: str = "counts") -> Features:
    """Normalise counts per cell and log1p them (normalised values stay as they are), order genes
    by value; keep the top_k (or all of them, ragged).

    Vectorised over chunks of cells: no per-row Python.
    """
    n = table.num_rows
    ragged = tokens == "all"
    parts_g, parts_v, lengths = [], [], []
    widest = pc.max(pc.list_value_length(table["genes"])).as_py() if n else 0
    top_k = max(1, min(top_k, widest or 1))   # no wider than the longest cell: top_k may mean "all"
    if not ragged:
        genes_out = np.zeros((n, top_k), dtype=np.int32)
        values_out = np.zeros((n, top_k), dtype=np.float32)
    for start in range(0, n, chunk):
        tok, tv, valid = ranked_tokens(table.slice(start, chunk), vocab, None if ragged else top_k,
                                       value_kind)
        if ragged:
            parts_g.append(tok[valid])      # row-major: each cell's tokens stay together, in order
            parts_v.append(tv[valid])
            lengths.append(valid.sum(1))
        else:
            k = tok.shape[1]
            genes_out[start:start + len(tok), :k] = np.where(valid, tok, PAD)
            values_out[start:start + len(tok), :k] = np.where(valid, tv, 0.0)
    drugs = table["drug"].to_numpy(zero_copy_only=False)
    try:
        drug = np.array([drug_index[d] for d in drugs], dtype=np.int64)
    except KeyError as e:
        raise PipelineError(f"drug {e.args[0]!r} has no drug embedding.") from e
    y = (table["LN_IC50"].to_numpy().astype(np.float32) if "LN_IC50" in table.column_names
         else np.full(n, np.nan, dtype=np.float32))
    if ragged:
        lens = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
        return Features(np.concatenate(parts_g) if parts_g else np.zeros(0, np.int32),
                        np.concatenate(parts_v) if parts_v else np.zeros(0, np.float32), drug, y,
                        np.concatenate([[0], np.cumsum(lens)]).astype(np.int64))
    return Features(genes_out, values_out, drug, y)


def split_table(table: pa.Table, split: np.ndarray) -> dict[str, pa.Table]:
    return {p: table.filter(pa.array(split == p)) for p in PARTS}


def split_frame(keys: pd.DataFrame, split: np.ndarray) -> pd.DataFrame:
    """split.parquet: every merged row -> its part, with the keys that define the groups."""
    out = keys[["drug", "cell_line_id"]].copy()
    out.insert(0, "row", np.arange(len(keys)))
    out["part"] = split
    return out


def summarise_split(frame: pd.DataFrame) -> dict:
    out = {}
    for p in PARTS:
        sub = frame[frame["part"] == p]
        out[p] = {"cells": int(len(sub)), "pairs": int(len(sub.drop_duplicates(["drug", "cell_line_id"]))),
                  "drugs": int(sub["drug"].nunique()), "cell_lines": int(sub["cell_line_id"].nunique())}
    return out
