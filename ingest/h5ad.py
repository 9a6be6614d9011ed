"""AnnData (.h5ad) in and out: a user's own cells mapped onto a model's genes, predictions back.

Single-cell data lives in .h5ad files whose genes are symbols or Ensembl ids; the model knows gene
token ids (Tahoe-100M's). A gene table in Tahoe's gene_metadata format (gene_symbol, ensembl_id,
token_id) links the two. Training stores the vocabulary's symbols and Ensembl ids in the
checkpoint, so prediction needs nothing but the checkpoint.

A file is read with anndata's own element readers on the open HDF5 file: obs and var whole, the
values (X or a layer, sparse or dense) in blocks of rows, so memory stays flat in the number of
cells. Genes map by Ensembl id (version suffix ignored) or symbol (exact, then ignoring case); a
name the table gives to several genes is ambiguous and left out; several columns of one gene
(duplicated names, a symbol beside its Ensembl id) are merged: summed for counts, averaged for
normalised values. Genes that map to nothing are left out before normalisation.

    python main.py convert merged.parquet cells.h5ad        # and back
    python main.py --data cells.h5ad                        # train on labelled cells
Prediction from an .h5ad (predict.py) reads files through H5ad and map_genes.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator, Sequence

import anndata
import anndata.io
import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
from scipy import sparse

from common import PipelineError, atomic_path, flat_list, require_file, write_parquet
from ingest import drugs
from ingest.table import (
    VALUE_KIND_KEY,
    VALUE_KINDS,
    check_gene_table,
    check_rows,
    declared_value_kind,
    load_gene_table,
    load_merged,
    resolve_value_kind,
    with_value_kind,
)

log = logging.getLogger("ic50.h5ad")

ENSEMBL = re.compile(r"^ENS[A-Z]*G\d+(\.\d+)?$", re.IGNORECASE)


def is_h5ad(path: str | Path | None) -> bool:
    return path is not None and str(path).lower().endswith(".h5ad")


# ----------------------------------------------------------------------------- genes

@dataclass
class GeneMap:
    """Which columns of a file become which token ids. `merge` [file genes, tokens] adds each
    column into its token (weight 1 for counts, 1/columns for normalised values); a column that
    maps to nothing has no entry."""
    token_ids: np.ndarray       # [T] distinct token ids, ascending
    merge: sparse.csr_matrix    # [file genes, T]
    counts: dict

    @classmethod
    def from_columns(cls, token_of_column: np.ndarray, value_kind: str, counts: dict) -> "GeneMap":
        """token_of_column: each file column's token id, or -1 for none."""
        cols = np.flatnonzero(token_of_column >= 0)
        tokens, target = np.unique(token_of_column[cols], return_inverse=True)
        per_token = np.bincount(target, minlength=len(tokens))
        weight = np.ones(len(cols)) if value_kind == "counts" else 1.0 / per_token[target]
        merge = sparse.csr_matrix((weight, (cols, target)), shape=(len(token_of_column), len(tokens)))
        counts = {**counts, "genes_found": int(len(tokens)),
                  "duplicated": int(len(cols) - len(tokens))}   # columns merged into a shared token
        return cls(tokens.astype(np.int64), merge, counts)

    def lists(self, block: sparse.csr_matrix, keep_zeros: bool) -> tuple[pa.Array, pa.Array]:
        """A block of cells as the merged table's (genes, expressions) list columns, each row's
        genes in ascending token order."""
        m = (block @ self.merge).tocsr()
        if not keep_zeros:
            m.eliminate_zeros()
        m.sort_indices()
        offsets = pa.array(m.indptr.astype(np.int32))
        return (pa.ListArray.from_arrays(offsets, pa.array(self.token_ids[m.indices].astype(np.int32))),
                pa.ListArray.from_arrays(offsets, pa.array(m.data.astype(np.float32))))


def _lookup(keys: pd.Series, tokens: np.ndarray) -> dict[str, int]:
    """key -> token id where the key names one token only; -2 where it names several."""
    frame = pd.DataFrame({"key": keys.to_numpy(), "token": tokens}).dropna().drop_duplicates()
    n = frame.groupby("key")["token"].transform("size")
    return dict(zip(frame["key"], np.where(n.to_numpy() > 1, -2, frame["token"].to_numpy())))


def map_genes(ids: Sequence[str], table: pd.DataFrame, value_kind: str) -> GeneMap:
    """Map a file's gene ids (symbols or Ensembl ids) onto a gene table's token ids."""
    table = table.dropna(subset=["token_id"])
    ens = _lookup(table["ensembl_id"].map(lambda s: s.split(".")[0].upper() if isinstance(s, str) else None),
                  table["token_id"].to_numpy())
    exact = _lookup(table["gene_symbol"], table["token_id"].to_numpy())
    upper = _lookup(table["gene_symbol"].map(lambda s: s.upper() if isinstance(s, str) else None),
                    table["token_id"].to_numpy())
    token = np.full(len(ids), -1, dtype=np.int64)
    how = {"ensembl_id": 0, "symbol": 0, "symbol_ignoring_case": 0, "ambiguous": 0, "unknown": 0}
    for j, raw in enumerate(ids):
        name = str(raw).strip()
        if ENSEMBL.match(name):
            found = [("ensembl_id", ens.get(name.split(".")[0].upper()))]
        else:
            found = [("symbol", exact.get(name)), ("symbol_ignoring_case", upper.get(name.upper()))]
        rule, t = next(((r, t) for r, t in found if t is not None), ("unknown", None))
        if t == -2:
            rule = "ambiguous"
        elif t is not None:
            token[j] = t
        how[rule] += 1
    return GeneMap.from_columns(token, value_kind, {"file_genes": len(ids), **how})


def checkpoint_gene_table(genes: dict | None) -> pd.DataFrame | None:
    """The gene table a checkpoint carries (the one its token ids come from)."""
    return None if not genes else pd.DataFrame(genes)


# ----------------------------------------------------------------------------- reading

class Cells:
    """Cells to read: obs and var whole, the values (X or a layer) in blocks of rows, so that
    memory stays flat in the number of cells. An .h5ad on disk (H5ad) or an AnnData in memory
    (InMemory) reads alike."""
    path: Path | str        # what messages call it
    obs: pd.DataFrame
    var: pd.DataFrame
    values: object          # [cells, genes], sliced by rows: sparse or dense
    dense: bool
    where: str              # X, or the layer's name
    layers: list[str]

    def _genes(self, gene_column: str | None) -> None:
        if tuple(self.values.shape) != (len(self.obs), len(self.var)):
            raise PipelineError(f"'{self.path}': {self.where} has shape {tuple(self.values.shape)}, "
                                f"expected cells x genes = ({len(self.obs)}, {len(self.var)}).")
        if gene_column is None:
            self.gene_ids = self.var.index.astype(str).tolist()
        elif gene_column in self.var.columns:
            self.gene_ids = self.var[gene_column].astype(str).tolist()
        else:
            raise PipelineError(f"'{self.path}': var has no column {gene_column!r} (--gene-column); "
                                f"var columns: {list(self.var.columns)}.")

    def _layer(self, layer: str | None, has_x: bool):
        """The name of the values read, checked: X, or the layer named."""
        if layer is None and not has_x:
            raise PipelineError(f"'{self.path}' has no X; name a layer with --layer.")
        if layer is not None and layer not in self.layers:
            raise PipelineError(f"'{self.path}' has no layer {layer!r} (--layer); its layers: {self.layers}.")
        return "X" if layer is None else layer

    def __enter__(self) -> "Cells":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        pass

    @property
    def n_cells(self) -> int:
        return len(self.obs)

    def declared_value_kind(self) -> str | None:
        raise NotImplementedError

    def blocks(self, size: int) -> Iterator[tuple[int, sparse.csr_matrix]]:
        for start in range(0, self.n_cells, size):
            stop = min(start + size, self.n_cells)
            block = self.values[start:stop]
            if self.dense:   # every gene listed, zeros included (explicit entries of a full CSR)
                block = np.asarray(block, dtype=np.float64)
                n, g = block.shape
                block = sparse.csr_matrix((block.ravel(), np.tile(np.arange(g), n), np.arange(n + 1) * g),
                                          shape=(n, g))
            yield start, sparse.csr_matrix(block, dtype=np.float64)

    def looks_like_counts(self, cells: int = 1000) -> bool:
        """Whether the first cells' values are whole numbers, none negative (raw counts)."""
        block = next(self.blocks(cells), (0, sparse.csr_matrix((0, 0))))[1]
        values = block.data
        return bool(values.size == 0 or (values.min() >= 0 and np.allclose(values, np.round(values))))

    def check_values(self, block: sparse.csr_matrix, value_kind: str, first: bool) -> None:
        """Values must be finite; counts must not be negative (and should be whole numbers)."""
        if block.nnz == 0:
            return
        if not np.isfinite(block.data).all():
            raise PipelineError(f"'{self.path}': {self.where} holds NaN or infinite values.")
        if value_kind == "counts" and block.data.min() < 0:
            raise PipelineError(
                f"'{self.path}': {self.where} holds negative values (min {block.data.min():.3g}), but the "
                f"model reads raw counts. Name the layer of raw counts with --layer "
                f"(layers: {self.layers}).")
        if value_kind == "counts" and first and not np.allclose(block.data, np.round(block.data)):
            log.warning("'%s': %s holds values that are not whole numbers, but the model reads raw "
                        "counts (normalised to 10,000 per cell, then log1p here); if these are already "
                        "normalised, name the raw counts with --layer.", self.path, self.where)


class H5ad(Cells):
    """An open .h5ad file, read with anndata's element readers: nothing but obs and var whole."""

    def __init__(self, path: str | Path, layer: str | None = None, gene_column: str | None = None):
        io = anndata.io
        self.path = require_file(path, ".h5ad file")
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as e:
            raise PipelineError(f"'{self.path}' is not a readable .h5ad (HDF5) file: {e}") from e
        try:
            self.obs = io.read_elem(self.file["obs"])
            self.var = io.read_elem(self.file["var"])
            self.layers = list(self.file["layers"].keys()) if "layers" in self.file else []
            name = self._layer(layer, "X" in self.file)
            self.where = f"layer {layer!r}" if layer else "X"
            node = self.file["X"] if layer is None else self.file["layers"][name]
            self.dense = not isinstance(node, h5py.Group)
            self.values = node if self.dense else io.sparse_dataset(node)
            self._genes(gene_column)
        except PipelineError:
            self.close()
            raise
        except Exception as e:
            self.close()
            raise PipelineError(f"'{self.path}' could not be read as AnnData: {type(e).__name__}: {e}") from e

    def close(self) -> None:
        self.file.close()

    def declared_value_kind(self) -> str | None:
        return _declared(self.file, self.path)


class InMemory(Cells):
    """An AnnData held in memory (a notebook's)."""

    def __init__(self, adata: anndata.AnnData, layer: str | None = None, gene_column: str | None = None,
                 name: str = "the AnnData"):
        self.path, self.adata = name, adata
        self.obs, self.var, self.layers = adata.obs, adata.var, list(adata.layers.keys())
        self._layer(layer, adata.X is not None)
        self.where = f"layer {layer!r}" if layer else "X"
        self.values = adata.X if layer is None else adata.layers[layer]
        self.dense = not sparse.issparse(self.values)
        self._genes(gene_column)

    def declared_value_kind(self) -> str | None:
        kind = self.adata.uns.get(VALUE_KIND_KEY)
        if kind is not None and str(kind) not in VALUE_KINDS:
            raise PipelineError(f"'{self.path}' declares uns[{VALUE_KIND_KEY!r}]={kind!r}; expected one of "
                                f"{list(VALUE_KINDS)}.")
        return None if kind is None else str(kind)


def _declared(file, path: Path) -> str | None:
    if "uns" not in file or VALUE_KIND_KEY not in file["uns"]:
        return None
    kind = str(anndata.io.read_elem(file["uns"][VALUE_KIND_KEY]))
    if kind not in VALUE_KINDS:
        raise PipelineError(f"'{path}' declares uns[{VALUE_KIND_KEY!r}]={kind!r}; expected one of "
                            f"{list(VALUE_KINDS)}.")
    return kind


def value_kind_of(path: str | Path) -> str | None:
    """The value kind a merged table declares in its metadata, or an .h5ad in uns['value_kind']."""
    if not is_h5ad(path):
        return declared_value_kind(path)
    path = require_file(path, ".h5ad file")
    try:
        with h5py.File(path, "r") as f:
            return _declared(f, path)
    except OSError as e:
        raise PipelineError(f"'{path}' is not a readable .h5ad (HDF5) file: {e}") from e


def obs_column(h: Cells, name: str, flag: str) -> pd.Series:
    if name not in h.obs.columns:
        raise PipelineError(f"'{h.path}': obs has no column {name!r} ({flag}); obs columns: "
                            f"{list(h.obs.columns)}.")
    return h.obs[name]


def gene_map_for_training(h: Cells, gene_table: pd.DataFrame | None, value_kind: str,
                          min_fraction: float) -> tuple[GeneMap, pd.DataFrame]:
    """Token ids of the file's genes: var's token_id column (written by `main.py convert`), else
    the gene table. Also the gene table the checkpoint will name its vocabulary from."""
    if gene_table is None and "token_id" in h.var.columns:
        token = pd.to_numeric(h.var["token_id"], errors="coerce").fillna(-1).to_numpy(np.int64)
        gmap = GeneMap.from_columns(token, value_kind, {"file_genes": len(token),
                                                         "token_id column": int((token >= 0).sum())})
        names = {c: (h.var[c].astype(object).where(h.var[c].notna(), None) if c in h.var.columns
                     else None) for c in ("gene_symbol", "ensembl_id")}
        table = check_gene_table(pd.DataFrame({**names, "token_id": token})[token >= 0], str(h.path))
        return gmap, table
    if gene_table is None:
        raise PipelineError(f"'{h.path}': its var has no token_id column, so its genes need a gene "
                            f"table to become token ids: pass --gene-table (Tahoe-100M's "
                            f"metadata/gene_metadata.parquet, or a table in its format).")
    gmap = map_genes(h.gene_ids, gene_table, value_kind)
    report_coverage(gmap, h.path, gmap.counts["file_genes"], "the file's", min_fraction)
    return gmap, gene_table


def report_coverage(gmap: GeneMap, path: Path | str, total: int, whose: str, min_fraction: float) -> None:
    found = gmap.counts["genes_found"]
    how = ", ".join(f"{v} {k}" for k, v in gmap.counts.items()
                    if k not in ("genes_found", "file_genes") and v)
    log.info("'%s': %d of %s %d genes found (%.1f%%); file genes %d: %s", Path(path).name, found, whose,
             total, 100 * found / max(total, 1), gmap.counts["file_genes"], how)
    if found == 0:
        raise PipelineError(f"'{path}': none of its {gmap.counts['file_genes']} genes is among {whose} "
                            f"{total} genes. Are the gene ids symbols or Ensembl ids of the same "
                            f"species? Pick another var column with --gene-column.")
    if found < min_fraction * total:
        raise PipelineError(f"'{path}': only {found} of {whose} {total} genes ({100 * found / total:.1f}%) "
                            f"were found, below --min-gene-fraction {min_fraction}. Check --gene-column, "
                            f"or lower the threshold if the panel is known to be partial.")


def read_merged(path: str | Path, cfg: SimpleNamespace, labelled: bool = True, block_cells: int = 8192
                ) -> tuple[pa.Table, pd.DataFrame]:
    """An .h5ad of labelled cells as a merged table (the training contract), and the gene table
    naming its tokens. obs column names come from the settings (drug_column, ...)."""
    with H5ad(path, cfg.layer, cfg.gene_column) as h:
        kind = cfg.value_kind
        gmap, genes = gene_map_for_training(h, load_gene_table(cfg.gene_table) if cfg.gene_table else None,
                                            kind, cfg.min_gene_fraction)
        columns = _obs_columns(h, cfg, labelled)
        parts_g, parts_e = [], []
        for start, block in h.blocks(block_cells):
            h.check_values(block, kind, start == 0)
            g, e = gmap.lists(block, keep_zeros=kind == "normalised")
            parts_g.append(g)
            parts_e.append(e)
    table = pa.table({"genes": pa.chunked_array(parts_g, pa.list_(pa.int32())),
                      "expressions": pa.chunked_array(parts_e, pa.list_(pa.float32())), **columns})
    table = with_value_kind(table, kind)
    check_rows(table, str(path), kind)
    return table, genes


def _obs_columns(h: Cells, cfg, labelled: bool) -> dict[str, pa.Array]:
    drug = obs_column(h, cfg.drug_column, "--drug-column").astype(str)
    out = {"cell_line_id": pa.array(obs_column(h, cfg.cell_line_column, "--cell-line-column")
                                    .astype(str).tolist(), pa.string()),
           "drug": pa.array(drug.tolist(), pa.string())}
    smiles = (h.obs[cfg.smiles_column].astype(object) if cfg.smiles_column in h.obs.columns
              else pd.Series([None] * h.n_cells, index=h.obs.index, dtype=object))
    if cfg.smiles_table:
        smiles = smiles.where(smiles.notna(), drug.map(drugs.read_smiles_table(cfg.smiles_table)))
    if smiles.isna().any():
        lacking = sorted(drug[smiles.isna()].unique())
        raise PipelineError(f"'{h.path}': no SMILES for drug(s) {lacking[:5]}: obs has no "
                            f"{cfg.smiles_column!r} for them (--smiles-column); give them in a CSV of "
                            f"name,smiles with --smiles-table.")
    out["canonical_smiles"] = pa.array(smiles.astype(str).tolist(), pa.string())
    if labelled or cfg.label_column in h.obs.columns:
        label = pd.to_numeric(obs_column(h, cfg.label_column, "--label-column"), errors="coerce")
        out["LN_IC50"] = pa.array(label.to_numpy(np.float64))
    for name in ("dose_uM", "cell_name", "gdsc_dataset"):
        if name in h.obs.columns:
            col = h.obs[name]
            out[name] = (pa.array(pd.to_numeric(col, errors="coerce").to_numpy(np.float32))
                         if name == "dose_uM" else pa.array(col.astype(str).tolist(), pa.string()))
    return out


# ----------------------------------------------------------------------------- converting

def merged_to_h5ad(table: pa.Table, path: str | Path, value_kind: str,
                   gene_table: pd.DataFrame | None = None) -> None:
    """A merged table as an .h5ad: X cells x genes (sparse CSR, the table's values as they are),
    var token_id (+ gene_symbol, ensembl_id from the gene table), obs the other columns,
    uns value_kind. var_names are symbols where the table gives one gene one, else token ids."""
    offsets, genes = flat_list(table["genes"])
    values = flat_list(table["expressions"])[1]
    tokens, col = np.unique(genes, return_inverse=True)
    x = sparse.csr_matrix((values.astype(np.float32), col.ravel(), offsets),
                          shape=(table.num_rows, len(tokens)))
    x.sum_duplicates()
    var = pd.DataFrame({"token_id": tokens.astype(np.int64)})
    names = pd.Series([f"token_{t}" for t in tokens], dtype=object)
    if gene_table is not None:
        by_token = gene_table.drop_duplicates("token_id").set_index("token_id")
        for c in ("gene_symbol", "ensembl_id"):
            var[c] = by_token[c].reindex(tokens).astype(object).to_numpy()
        symbol = var["gene_symbol"]
        unique = symbol.notna() & ~symbol.duplicated(keep=False)
        names = names.where(~unique, symbol)
    var.index = pd.Index(names.astype(str).to_numpy(), dtype=object)
    obs = table.drop_columns(["genes", "expressions"]).to_pandas()
    obs.index = pd.Index([str(i) for i in range(table.num_rows)], dtype=object)
    adata = anndata.AnnData(X=x, obs=obs, var=var, uns={VALUE_KIND_KEY: value_kind})
    logging.getLogger("anndata").setLevel(logging.WARNING)   # not a line per categorical column
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp, compression="gzip")
    log.info("wrote %s: %d cells x %d genes (%s values)", path, adata.n_obs, adata.n_vars, value_kind)


def convert(src: str | Path, dst: str | Path, cfg: SimpleNamespace) -> None:
    """merged.parquet -> .h5ad, or .h5ad -> merged.parquet. cfg: the convert stage's settings
    (config.of_stage)."""
    if Path(dst).exists():
        raise PipelineError(f"'{dst}' already exists; choose another output path.")
    if is_h5ad(src) and str(dst).endswith(".parquet"):
        cfg = SimpleNamespace(**{**vars(cfg), "value_kind": resolve_value_kind(cfg.value_kind,
                                                                                value_kind_of(src), src)})
        table, _ = read_merged(src, cfg, labelled=False)
        write_parquet(table, dst)
        log.info("wrote %s: %d rows (%s values)", dst, table.num_rows, cfg.value_kind)
    elif str(src).endswith(".parquet") and is_h5ad(dst):
        kind = resolve_value_kind(cfg.value_kind, value_kind_of(src), src)
        table = load_merged(src, labelled=False, value_kind=kind)
        merged_to_h5ad(table, dst, kind, load_gene_table(cfg.gene_table) if cfg.gene_table else None)
    else:
        raise PipelineError(f"convert goes from a merged table (.parquet) to .h5ad or back; got "
                            f"'{src}' -> '{dst}'.")
