"""The merged table, the contract between data preparation and training: its schema and checks,
its key columns (drug, cell line, label) read without its expression, and the gene tables that
name its token ids.

Training data is a merged table (one profile per row: a cell, with its drug and label), or a
reference (bulk.py): a table of pairs (drug, cell line, label) beside one profile per cell line,
each profile stored once however many drugs its line was screened with. Both read alike here.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common import PipelineError, require_file

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
ROW_GROUP = 16_384   # rows per row group of the merged tables written here: read a group at a time
FIRST_TOKEN = 3      # gene token ids 0-2 are reserved, as in Tahoe-100M
# A reference (bulk profiles) is a pairs table without genes/expressions that names, under this
# metadata key, the file beside it holding one profile per cell line (cell_line_id, genes, expressions)
PROFILES_KEY = "profiles"
STRUCTURELESS = "pairs_without_smiles.parquet"   # beside a reference's pairs: drugs without a SMILES
PROFILE_COLUMNS = ("cell_line_id", "genes", "expressions")


def _as_regular_lists(table: pa.Table) -> pa.Table:
    """large_list columns (e.g. written by polars) -> list, which the feature code reads."""
    for name in ("genes", "expressions"):
        col = table[name]
        if pa.types.is_large_list(col.type):
            table = table.set_column(table.schema.get_field_index(name), name,
                                     col.cast(pa.list_(col.type.value_type)))
    return table


def declared_value_kind(path: str | Path) -> str | None:
    """The value kind a merged table declares in its parquet metadata, or None."""
    path = require_file(path, "merged table")
    kind = (_schema(path).metadata or {}).get(VALUE_KIND_KEY.encode())
    if kind is None:
        return None
    kind = kind.decode()
    if kind not in VALUE_KINDS:
        raise PipelineError(f"merged table '{path}' declares {VALUE_KIND_KEY}={kind!r} in its "
                            f"metadata; expected one of {list(VALUE_KINDS)}.")
    return kind


def resolve_value_kind(setting: str, declared: str | None, source: str | Path | None) -> str:
    """`auto` -> what the source declares, else counts; an explicit setting wins over it."""
    if setting == "auto":
        return declared or "counts"
    if declared and declared != setting:
        log.warning("'%s' declares %s values; --value-kind %s overrides that.", source, declared, setting)
    return setting


def with_value_kind(table: pa.Table, kind: str) -> pa.Table:
    """The table with its value kind declared in its (parquet) metadata."""
    meta = dict(table.schema.metadata or {})
    meta[VALUE_KIND_KEY.encode()] = kind.encode()
    return table.replace_schema_metadata(meta)


def _schema(path: Path) -> pa.Schema:
    try:
        return pq.read_schema(path)
    except Exception as e:
        raise PipelineError(f"'{path}' is not a readable parquet file: {e}") from e


def profiles_path(path: str | Path) -> Path | None:
    """The profiles file a reference's pairs table names (beside it), or None for a merged table."""
    name = (_schema(require_file(path, "merged table")).metadata or {}).get(PROFILES_KEY.encode())
    if name is None:
        return None
    profiles = Path(path).parent / name.decode()
    if not profiles.exists():
        raise PipelineError(f"reference '{path}' names its profiles '{name.decode()}', which is not "
                            f"beside it ({profiles}); keep pairs.parquet and profiles.parquet together.")
    return profiles


def structureless_pairs(path: str | Path) -> pd.DataFrame | None:
    """The labelled pairs of drugs without a SMILES beside a reference's pairs table (drug,
    cell_line_id, LN_IC50), which the ridge member alone learns; None where there are none."""
    beside = Path(path).parent / STRUCTURELESS
    return pd.read_parquet(beside) if beside.exists() else None


def _check_types(path: Path, schema: pa.Schema, names) -> None:
    for name in names:
        if name not in schema.names:
            continue
        t = schema.field(name).type
        if pa.types.is_large_list(t):
            t = pa.list_(t.value_type)
        if pa.types.is_large_string(t) or pa.types.is_dictionary(t):
            t = pa.string() if not pa.types.is_dictionary(t) else t.value_type
        if not CONTRACT[name](t):
            expected = {"genes": "list<int>", "expressions": "list<float>", "LN_IC50": "float"}
            raise PipelineError(f"merged table '{path}': column {name!r} has type {t}, expected "
                                f"{expected.get(name, 'string')}.")


def merged_columns(path: str | Path, labelled: bool = True) -> list[str]:
    """Check a merged table's schema (the error names the file, the column and what was
    expected) and return the columns to read: the contract's and the optional ones present.
    A reference's pairs table holds the contract without genes and expressions, which its
    profiles file holds, one row per cell line. `labelled=False` (prediction) makes LN_IC50 optional."""
    path = require_file(path, "merged table")
    schema = _schema(path)
    profiles = profiles_path(path)
    contract = [k for k in CONTRACT if (labelled or k != "LN_IC50")
                and not (profiles and k in ("genes", "expressions"))]
    missing = [c for c in contract if c not in schema.names]
    if missing:
        what = (f"a reference's pairs: {[c for c in CONTRACT if c not in ('genes', 'expressions')]}"
                if profiles else f"the merged-table contract: {list(CONTRACT)}")
        raise PipelineError(f"merged table '{path}' lacks column(s) {missing}; expected {what} "
                            f"(+ optional {list(OPTIONAL)}).")
    _check_types(path, schema, CONTRACT)
    if profiles:
        p_schema = _schema(profiles)
        lacking = [c for c in PROFILE_COLUMNS if c not in p_schema.names]
        if lacking:
            raise PipelineError(f"profiles '{profiles}' of reference '{path}' lack column(s) {lacking}; "
                                f"expected one row per cell line: {list(PROFILE_COLUMNS)}.")
        _check_types(profiles, p_schema, PROFILE_COLUMNS)
    return [c for c in CONTRACT if c in schema.names] + [c for c in OPTIONAL if c in schema.names]


def _regular(table: pa.Table) -> pa.Table:
    """large_list and large_string columns (e.g. written by polars) -> list and string."""
    table = _as_regular_lists(table) if "genes" in table.column_names else table
    for name in ("cell_line_id", "drug", "canonical_smiles"):
        if name in table.column_names and pa.types.is_large_string(table[name].type):
            table = table.set_column(table.schema.get_field_index(name), name,
                                     table[name].cast(pa.string()))
    return table


def load_merged(path: str | Path, labelled: bool = True, value_kind: str = "counts") -> pa.Table:
    """Read and check a whole merged table (prediction, conversion). Counts must not be negative."""
    cols = merged_columns(path, labelled)
    table = _regular(pq.read_table(path, columns=cols))
    if table.num_rows == 0:
        raise PipelineError(f"merged table '{path}' has no rows.")
    check_rows(table, str(path), value_kind)
    return table


KEY_COLUMNS = ("drug", "cell_line_id", "canonical_smiles", "LN_IC50", "dose_uM")
STRING_KEYS = ["drug", "cell_line_id", "canonical_smiles"]


def read_keys(path: str | Path, labelled: bool = True) -> pa.Table:
    """A merged table without its expression: the cheap columns of every row, checked. This is
    all of the table that training holds in memory; the tokens live in the token store."""
    cols = [c for c in merged_columns(path, labelled) if c in KEY_COLUMNS]
    # strings dictionary-encoded: a few bytes per row, however long the names and SMILES. Read a
    # row group at a time into one contiguous copy, then hand the decoding buffers back: read at
    # once, the file leaves about twice the keys' own size behind in Arrow's memory pool.
    pf = pq.ParquetFile(path, read_dictionary=STRING_KEYS)
    groups = [pf.read_row_group(i, columns=cols) for i in range(pf.num_row_groups)]
    table = (pa.concat_tables(groups) if groups else pf.schema_arrow.empty_table().select(cols))
    table = _regular(table).unify_dictionaries().combine_chunks()
    del groups
    pa.default_memory_pool().release_unused()
    if table.num_rows == 0:
        raise PipelineError(f"merged table '{path}' has no rows.")
    check_rows(table, str(path))
    return table


def read_rows(path: str | Path, rows: np.ndarray, columns: list[str], batch: int = ROW_GROUP) -> pa.Table:
    """Some rows of a parquet table, in the order given, read `batch` rows at a time: memory holds
    the rows asked for and one batch, never a whole row group (a table of under a million rows
    written by pandas or pyarrow is one row group: reading it whole held 1.8 GB more for a
    200,000 x 512 table; BENCHMARKS.md)."""
    pf = pq.ParquetFile(path)
    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    wanted = rows[order]
    starts = np.cumsum([0] + [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)])
    parts = []
    for g in np.unique(np.searchsorted(starts, wanted, side="right") - 1):
        first = int(starts[g])
        for b in pf.iter_batches(batch_size=batch, row_groups=[int(g)], columns=columns):
            lo, hi = np.searchsorted(wanted, [first, first + b.num_rows])
            if hi > lo:
                parts.append(_regular(pa.Table.from_batches([b])).take(pa.array(wanted[lo:hi] - first)))
            first += b.num_rows
    if not parts:
        return _regular(pf.schema_arrow.empty_table().select(columns))
    taken = pa.concat_tables(parts).take(pa.array(np.argsort(order, kind="stable")))   # the order asked for
    del parts
    pa.default_memory_pool().release_unused()   # the batches' decoding buffers, back to the system
    return taken


def read_profiles(path: str | Path, value_kind: str) -> pa.Table:
    """A reference's profiles (cell_line_id, genes, expressions), one row per cell line, checked."""
    table = _regular(pq.read_table(path, columns=list(PROFILE_COLUMNS)))
    if table["cell_line_id"].null_count:
        raise PipelineError(f"profiles '{path}': column 'cell_line_id' has missing values.")
    lines = table["cell_line_id"].to_pylist()
    if len(set(lines)) < len(lines):
        dup = pd.Series(lines)[pd.Series(lines).duplicated()].iloc[0]
        raise PipelineError(f"profiles '{path}': cell line {dup!r} has several profiles; a reference "
                            f"holds one profile per line.")
    check_rows(table, str(path), value_kind)
    return table


def profile_index(keys: pa.Table, lines: list[str], source: str) -> np.ndarray:
    """Each row's profile: the position of its cell line among the profiles' lines (int32)."""
    idx, values = codes(keys["cell_line_id"])
    position = {line: i for i, line in enumerate(lines)}
    names = values.to_pylist()
    lacking = [n for n in names if n not in position]
    if lacking:
        raise PipelineError(f"reference '{source}': cell line(s) {lacking[:5]} have pairs but no profile.")
    return np.array([position[n] for n in names], dtype=np.int32)[idx] if names else idx.astype(np.int32)


def check_rows(table: pa.Table, source: str, value_kind: str = "counts", first_row: int = 0) -> None:
    """Missing values, non-finite labels and values, lists that are not parallel, negative counts:
    whichever of these columns the table holds (a whole table, its keys, or a chunk of rows
    starting at `first_row`)."""
    for name in ("drug", "cell_line_id", "canonical_smiles", "LN_IC50", "genes", "expressions"):
        n = table[name].null_count if name in table.column_names else 0
        if n:
            raise PipelineError(f"merged table '{source}': column {name!r} has {n} missing value(s).")
    if "LN_IC50" in table.column_names and not np.isfinite(table["LN_IC50"].to_numpy()).all():
        raise PipelineError(f"merged table '{source}': column 'LN_IC50' has non-finite values.")
    if "genes" not in table.column_names:
        return
    g_len = pc.list_value_length(table["genes"]).to_numpy()
    e_len = pc.list_value_length(table["expressions"]).to_numpy()
    bad = np.flatnonzero(g_len != e_len)
    if bad.size:
        raise PipelineError(f"merged table '{source}': row {first_row + bad[0]} has {g_len[bad[0]]} "
                            f"genes but {e_len[bad[0]]} expressions; the two lists must be parallel.")
    values = pc.list_flatten(table["expressions"])
    if len(values) and not pc.all(pc.is_finite(values)).as_py():
        raise PipelineError(f"merged table '{source}': column 'expressions' has NaN or infinite values.")
    low = pc.min(values).as_py() if len(values) else None
    if value_kind == "counts" and low is not None and low < 0:
        raise PipelineError(f"merged table '{source}': column 'expressions' has negative values (min "
                            f"{low:.3g}), but they are read as raw counts. If they are already "
                            f"normalised (log-TPM, z-scores), pass --value-kind normalised or declare "
                            f"it in the table's metadata ({VALUE_KIND_KEY}=normalised).")


def codes(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(each row's code, the distinct values the codes index) of a key column, plain or
    dictionary-encoded: keys are grouped and looked up by code, not as a Python object per row."""
    column = pa.chunked_array([column]) if isinstance(column, pa.Array) else column
    if pa.types.is_dictionary(column.type):
        column = pa.table({"c": column}).unify_dictionaries()["c"]
    else:
        column = column.dictionary_encode()
    chunks = [c for c in column.chunks if len(c)]
    if not chunks:
        return np.zeros(0, dtype=np.int32), pa.array([], getattr(column.type, "value_type", column.type))
    idx = np.concatenate([c.indices.to_numpy() for c in chunks])
    return idx.astype(np.promote_types(idx.dtype, np.int32), copy=False), chunks[0].dictionary


def group_ids(keys: pa.Table | pd.DataFrame, cols: list[str]) -> np.ndarray:
    """Each row's group over the columns' distinct value combinations, numbered in sorted order
    (as pandas' groupby(sort=True).ngroup()), computed on codes."""
    if isinstance(keys, pd.DataFrame):
        keys = pa.Table.from_pandas(keys[cols], preserve_index=False)
    combined, size = np.zeros(keys.num_rows, dtype=np.int64), 1
    for name in cols:
        idx, values = codes(keys[name])
        rank = np.empty(len(values), dtype=np.int64)
        rank[pc.array_sort_indices(values).to_numpy()] = np.arange(len(values))
        combined *= len(values)
        combined += rank[idx]
        size *= len(values)
    if size > 8 * len(combined) + 4096:   # too many combinations to count in a table
        return np.unique(combined, return_inverse=True)[1].reshape(-1)
    present = np.zeros(size, dtype=bool)
    present[combined] = True
    number = np.cumsum(present) - 1
    return number.astype(np.int32 if size < 2 ** 31 else np.int64)[combined]


def distinct(keys: pa.Table, cols: list[str]) -> pd.DataFrame:
    """The distinct value combinations of some key columns, in order of first appearance."""
    first = np.unique(group_ids(keys, cols), return_index=True)[1]
    return plain(keys.select(cols).take(pa.array(np.sort(first)))).to_pandas()


def key_columns(keys: pa.Table, rows: np.ndarray | None = None) -> pa.Table:
    """What every prediction output repeats of its rows (all, or these): drug, cell_line_id,
    dose_uM (where there is one) and LN_IC50 (where labelled), as plain columns."""
    keys = keys.select([c for c in ("drug", "cell_line_id", "dose_uM", "LN_IC50") if c in keys.column_names])
    return plain(keys if rows is None else keys.take(pa.array(rows)))


def key_rows(keys: pa.Table, rows: np.ndarray) -> pd.DataFrame:
    """Some rows of key_columns as a frame."""
    return key_columns(keys, rows).to_pandas()


def pair_labels(keys: pa.Table, rows: np.ndarray, pair: np.ndarray | None = None) -> pd.DataFrame:
    """The mean label of each (drug, cell line) pair over some rows of the keys, pairs in sorted
    order, given each row's pair id (group_ids; computed when not given): what the naive
    baselines and each drug's spread are fitted on, without a frame of every row."""
    if pair is None:
        pair = group_ids(keys, ["drug", "cell_line_id"])[rows]
    count = np.bincount(pair)
    seen = np.flatnonzero(count)
    label = keys["LN_IC50"].take(pa.array(rows)).to_numpy().astype(float)
    means = np.bincount(pair, weights=label)[seen] / count[seen]
    some = np.empty(len(count), dtype=np.int64)
    some[pair] = rows                       # a row of each pair, for its names
    frame = plain(keys.select(["drug", "cell_line_id"]).take(pa.array(some[seen]))).to_pandas()
    return frame.assign(LN_IC50=means)


def plain(table: pa.Table) -> pa.Table:
    """The table with dictionary-encoded columns decoded (for a few rows: outputs, reports)."""
    for i, f in enumerate(table.schema):
        if pa.types.is_dictionary(f.type):
            table = table.set_column(i, f.name, table[f.name].cast(f.type.value_type))
    return table


def drug_smiles(table: pa.Table) -> dict[str, str]:
    """Drug name -> its SMILES, over the distinct (drug, canonical_smiles) pairs of a table."""
    pairs = distinct(table, ["drug", "canonical_smiles"])
    dup = pairs[pairs.duplicated("drug", keep=False)]
    if len(dup):
        raise PipelineError(f"drug {dup['drug'].iloc[0]!r} appears with several SMILES in the table "
                            f"({', '.join(dup['canonical_smiles'].iloc[:2])}); each drug name must have "
                            f"one canonical_smiles.")
    return dict(sorted(zip(pairs["drug"], pairs["canonical_smiles"])))


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


def gene_table_lists(gene_table: pd.DataFrame, vocab: np.ndarray) -> dict[str, list]:
    """A gene table as plain lists, for a checkpoint: every gene it names, so that an .h5ad maps
    onto token ids as Tahoe's own cells do (genes outside the vocabulary become unknown tokens,
    but still count towards a cell's total)."""
    named = np.isin(vocab, gene_table["token_id"].to_numpy())
    log.info("gene table: %d genes; %d of the %d vocabulary genes named", len(gene_table),
             int(named.sum()), len(vocab))
    clean = lambda col: [v if isinstance(v, str) and v else None for v in gene_table[col]]  # noqa: E731
    return {"token_id": [int(t) for t in gene_table["token_id"]], "gene_symbol": clean("gene_symbol"),
            "ensembl_id": clean("ensembl_id")}


def gene_vocabulary(genes: pa.ChunkedArray) -> np.ndarray:
    """Sorted gene token ids of a list column (the classical baselines' columns)."""
    return np.unique(pc.list_flatten(genes).to_numpy())
