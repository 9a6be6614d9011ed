"""Predict ln IC50 with a trained checkpoint, for the rows of a table or the cells of an .h5ad.

    python main.py predict --checkpoint RUN/best.pt --data new_cells.parquet   # each row, its own drug
    python main.py predict --checkpoint RUN/best.pt --data cells.h5ad --groupby sample

A merged table (or a reference's pairs) gets one prediction per row, for the row's own drug. An
.h5ad gets every drug the checkpoint knows (or those asked for; new ones from their SMILES),
ranked per --groupby group. How depends on what the model was trained on:

- single cells (counts): every cell is predicted; a group's ranking is its cells' median;
- bulk profiles (normalised values, one profile per cell line): each group's cells are averaged
  into one profile (log1p counts per 10,000 first, for counts) and brought into the training
  domain (see `align`), then predicted; every cell carries its group's prediction.

Drugs are found by name through the SMILES the checkpoint holds (Trained.rows_of, the one
lookup); genes by symbol or Ensembl id through the gene table it carries (h5ad.map_genes).
Outputs appear only once everything is written; a bad input leaves nothing behind.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import anndata.io
import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import sparse
from tqdm import tqdm

import data
import drugs as drugs_mod
import h5ad
from common import PipelineError, atomic_path, write_parquet
from tokens import Features, TokenTable, cell_tokens, vocab_index
from train import Trained

log = logging.getLogger("ic50.predict")

OUTPUT_KEY = "ln_ic50"   # obsm[OUTPUT_KEY]: cells x drugs; uns[OUTPUT_KEY + "_drugs"]: the drugs


def is_bulk(trained: Trained) -> bool:
    """A model of normalised profiles (bulk expression), which reads groups, not single cells."""
    return trained.cfg.value_kind == "normalised"


# ----------------------------------------------------------------------------- drugs

def wanted_drugs(trained: Trained, names: list[str] | None, smiles_csv: str | None) -> dict[str, str]:
    """Drug name -> SMILES for every drug asked for: the named ones, or every drug the checkpoint
    knows plus those of the SMILES table."""
    given = drugs_mod.read_smiles_table(smiles_csv) if smiles_csv else {}
    known = dict(trained.drugs) or {s: s for s in trained.smiles}   # checkpoints before names: SMILES
    if not names:
        return {**known, **given}
    unknown = [n for n in names if n not in given and n not in known]
    if unknown:
        raise PipelineError(f"drug(s) {unknown} are not known to the checkpoint (it knows "
                            f"{sorted(known)[:8]}{' ...' if len(known) > 8 else ''}); give their "
                            f"SMILES in a CSV of name,smiles with --smiles.")
    return {n: given.get(n) or known[n] for n in names}


# ----------------------------------------------------------------------------- tables

def predict_table(trained: Trained, path: str | Path, out: str | Path | None = None) -> Path:
    """One prediction per row of a merged table or a reference's pairs, for the row's own drug."""
    kind = trained.cfg.value_kind
    declared = data.declared_value_kind(path)
    if declared and declared != kind:
        raise PipelineError(f"'{path}' declares {declared} values, but the model was trained on "
                            f"{kind} values; give it a table of the same kind.")
    feats, keys = table_features(trained, Path(path))
    pred = trained.predict(feats)
    cols = [c for c in ("drug", "cell_line_id", "dose_uM", "LN_IC50") if c in keys.column_names]
    result = data.plain(keys.select(cols))
    if trained.stack is not None:   # a bulk reference's predictor: blended, with intervals
        final, low, high = trained.stack.predict(result["drug"].to_pylist(), pred,
                                                 dense_values(feats.table, trained.vocab), trained.vocab,
                                                 feats.table.profiles(feats.rows))
        result = result.append_column("network", pa.array(pred))
        pred = final
        result = result.append_column("ln_ic50_low", pa.array(low))
        result = result.append_column("ln_ic50_high", pa.array(high))
    result = result.append_column("prediction", pa.array(pred))
    target = Path(out) if out else Path(path).with_name(Path(path).stem + "_predictions.parquet")
    write_parquet(result, target)
    log.info("%d predictions written to %s (drug encoder %s)", len(pred), target, trained.drug_encoder)
    return target


def dense_values(table: TokenTable, vocab: np.ndarray) -> np.ndarray:
    """[profiles, vocabulary genes] values of every profile of a token table (0 where a profile
    lists no value)."""
    index, values = table.indexed(vocab)
    out = np.zeros((index.shape[0], len(vocab)))
    rows, cols = np.nonzero(index >= 2)
    out[rows, index[rows, cols] - 2] = values[rows, cols]
    return out


def table_features(trained: Trained, path: Path) -> tuple[Features, pa.Table]:
    """Features of every row of a table (tokens in memory; a reference's once per profile) and
    the table's key columns."""
    kind, cfg = trained.cfg.value_kind, trained.cfg
    data.merged_columns(path, labelled=False)
    keys = data.read_keys(path, labelled=False)
    profiles = data.profiles_path(path)
    if profiles is not None:
        table = data.read_profiles(profiles, kind)
        toks = cell_tokens(table, cfg.top_k, kind).with_keys(
            keys, data.profile_index(keys, table["cell_line_id"].to_pylist(), str(path)))
    else:
        table = data.load_merged(path, labelled=False, value_kind=kind)
        toks = cell_tokens(table, cfg.top_k, kind).with_keys(keys)
    return trained.features(toks, drugs=data.drug_smiles(keys)), keys


# ----------------------------------------------------------------------------- aligning bulk models

def quantiles(values: np.ndarray, found: np.ndarray, reference: dict) -> np.ndarray:
    """Each profile's found genes ([profiles, vocabulary genes]; `found`: the genes the file
    measures) quantile-normalised to the training profiles' distribution over those genes (the
    sorted per-gene training means); genes the file lacks take their training mean, so that
    they say nothing. Quantiles keep each profile's order of genes and discard its platform's
    scale and shape (single-cell counts, arrays, RNA-seq)."""
    mean = np.asarray(reference["mean"], dtype=np.float64)
    out = np.broadcast_to(mean, values.shape).copy()
    if not found.any():
        return out
    target = np.sort(mean[found])
    for i, row in enumerate(values[:, found]):
        ranks = pd.Series(row).rank(method="average").to_numpy() - 1     # ties share a quantile
        out[i, found] = np.interp(ranks, np.arange(len(target)), target)
    return out


def align(values: np.ndarray, found: np.ndarray, reference: dict) -> np.ndarray:
    """Profiles from another platform brought into a bulk model's training domain: quantiles
    (above), then, with two profiles or more, each found gene centred on the profiles' own mean
    and put at its training mean. What a platform adds to a gene's level (capture, length, 3'
    bias) is shared by every profile of one file and cancels; what remains are the differences
    between the profiles, set where the training lines are on average. So a file's groups are
    ranked against each other, and a file of one group keeps its platform's offsets.
    BENCHMARKS.md has the search behind it (real cells of three lines)."""
    out = quantiles(values, found, reference)
    if len(out) >= 2:
        mean = np.asarray(reference["mean"], dtype=np.float64)
        out[:, found] += mean[found] - out[:, found].mean(0)
    return out


def profile_features(trained: Trained, values: np.ndarray, drug_rows: list[int]) -> Features:
    """Features of dense profiles over the model's vocabulary x drugs: row r * len(drugs) + j
    is profile r with drug j."""
    n, width = values.shape
    genes = np.tile(trained.vocab.astype(np.int32), n)
    offsets = np.arange(n + 1, dtype=np.int64) * width
    toks = TokenTable(genes, values.astype(np.float32).ravel(), offsets, width,
                  drug=np.tile(np.arange(len(drug_rows), dtype=np.int32), n),
                  drugs=[str(j) for j in range(len(drug_rows))],
                  label=np.full(n * len(drug_rows), np.nan, dtype=np.float32),
                  profile=np.repeat(np.arange(n, dtype=np.int32), len(drug_rows)))
    return Features(toks, np.arange(n * len(drug_rows)), np.asarray(drug_rows, dtype=np.int64))


def predict_profiles(trained: Trained, values: np.ndarray, drug_rows: list[int]) -> np.ndarray:
    """[profiles, drugs] predictions of dense profiles already in the training domain."""
    if len(values) == 0:
        return np.zeros((0, len(drug_rows)))
    pred = trained.predict(profile_features(trained, values, drug_rows))
    return pred.reshape(len(values), len(drug_rows))


# ----------------------------------------------------------------------------- .h5ad files

@dataclass
class Query:
    """An open .h5ad mapped onto a checkpoint: its genes, groups and drugs."""
    h: h5ad.H5ad
    kind: str                   # the file's values: counts or normalised
    gmap: h5ad.GeneMap
    groups: np.ndarray
    drugs: dict[str, str]
    rows: dict[str, int]


def predict_h5ad(trained: Trained, path: str | Path, out: Path, *, drugs: list[str] | None = None,
                 smiles_csv: str | None = None, groupby: str | None = None, layer: str | None = None,
                 gene_column: str | None = None, gene_table: pd.DataFrame | None = None,
                 min_fraction: float = 0.5, block_cells: int = 8192) -> dict:
    """Predicted ln IC50 for every cell x drug of an .h5ad, written into `out` (a new directory,
    which appears only once everything is written): a copy of the file with obsm['ln_ic50'],
    predictions.parquet, ranking.csv and ranking_heatmap.png."""
    t0 = time.perf_counter()
    table = h5ad.checkpoint_gene_table(trained.genes) if gene_table is None else gene_table
    if out.exists():
        raise PipelineError(f"output directory '{out}' already exists; pass another --out.")
    with h5ad.H5ad(path, layer, gene_column) as h:
        q = _query(trained, h, table, drugs=drugs, smiles_csv=smiles_csv, groupby=groupby,
                   min_fraction=min_fraction)
        out.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            if is_bulk(trained):
                preds, ranking = _predict_groups(trained, q, work, block_cells)
            else:
                preds, ranking = _predict_cells(trained, q, work, block_cells)
            shutil.copyfile(h.path, work / h.path.name)
            _annotate(work / h.path.name, preds, list(q.drugs))
            with atomic_path(work / "ranking.csv") as tmp:
                ranking.to_csv(tmp, index=False)
            plot_ranking(ranking, work / "ranking_heatmap.png", groupby or "all cells")
            work.rename(out)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    seconds = time.perf_counter() - t0
    best = ranking[ranking["rank"] == 1].head(5)
    log.info("%d cells x %d drugs in %.1fs; most sensitive: %s. Outputs in %s", len(preds), len(q.drugs),
             seconds, "; ".join(f"{g}: {d} ({m:.2f})" for g, d, m in
                                zip(best["group"], best["drug"], best[value_column(ranking)])), out)
    return {"cells": len(preds), "drugs": list(q.drugs), "seconds": seconds, "genes": q.gmap.counts}


def _query(trained: Trained, h: h5ad.H5ad, table: pd.DataFrame | None, *, drugs, smiles_csv, groupby,
           min_fraction) -> Query:
    """The file's genes mapped onto the model's (coverage logged, refused below min_fraction),
    its groups, and the drugs asked for with their rows of the drug table."""
    kind = trained.cfg.value_kind
    if table is None:
        raise PipelineError(f"the checkpoint does not name its genes (it was trained without a gene "
                            f"table), so '{h.path}' cannot be mapped onto it: pass --gene-table (the "
                            f"table the model's token ids come from).")
    declared = h.declared_value_kind()
    if is_bulk(trained):
        if trained.reference is None:
            raise PipelineError(f"this checkpoint of a bulk model predates the per-gene statistics "
                                f"that bring '{h.path}' into its training domain; retrain it to predict "
                                f".h5ad files, or predict a table of its own platform.")
        kind = declared or ("counts" if h.looks_like_counts() else "normalised")
        log.info("'%s': %s values, averaged per group and aligned to the bulk model's training profiles",
                 h.path.name, kind)
    elif declared and declared != kind:
        raise PipelineError(f"'{h.path}' declares {declared} values, but the model was trained on "
                            f"{kind} values; give it values of the same kind (--layer).")
    gmap = h5ad.map_genes(h.gene_ids, table, kind)
    gmap.counts["genes_found"] = int(np.isin(gmap.token_ids, trained.vocab).sum())
    h5ad.report_coverage(gmap, h.path, len(trained.vocab), "the model's", min_fraction)
    groups = (h5ad.obs_column(h, groupby, "--groupby").astype(str).to_numpy() if groupby
              else np.full(h.n_cells, "all cells", dtype=object))
    wanted = wanted_drugs(trained, drugs, smiles_csv)
    rows = trained.rows_of(wanted)
    log.info("predicting %d cells x %d drugs from %s (%s)", h.n_cells, len(wanted), h.path, h.where)
    return Query(h, kind, gmap, groups, wanted, rows)


def _predict_cells(trained: Trained, q: Query, work: Path, block_cells: int
                   ) -> tuple[np.ndarray, pd.DataFrame]:
    """A single-cell model: [cells, drugs] predictions, block by block, the long table streamed
    into predictions.parquet; each group's ranking by its cells' median."""
    kind, cfg, h = trained.cfg.value_kind, trained.cfg, q.h
    names = list(q.drugs)
    preds = np.empty((h.n_cells, len(names)), dtype=np.float32)
    cells = h.obs.index.astype(str).to_numpy()
    schema = pa.schema([("cell", pa.string()), ("group", pa.string()), ("drug", pa.string()),
                        ("ln_ic50", pa.float32())])
    bar = tqdm(total=h.n_cells, desc="predict", unit=" cells", leave=False)
    with pq.ParquetWriter(work / "predictions.parquet", schema, compression="zstd") as writer:
        for start, block in h.blocks(block_cells):
            h.check_values(block, kind, start == 0)
            g, e = q.gmap.lists(block, keep_zeros=kind == "normalised")
            n = block.shape[0]
            toks = cell_tokens(pa.table({"genes": g, "expressions": e}), cfg.top_k, kind)
            toks = replace(toks, drug=np.zeros(n, np.int32), drugs=[""], label=np.full(n, np.nan, np.float32))
            for j, name in enumerate(names):   # every cell with drug j: one drug-table row for all
                feats = Features(toks, np.arange(n), np.array([q.rows[name]], dtype=np.int64))
                preds[start:start + n, j] = trained.predict(feats)
            writer.write_table(pa.table({
                "cell": np.repeat(cells[start:start + n], len(names)),
                "group": np.repeat(q.groups[start:start + n], len(names)),
                "drug": np.tile(np.array(names, dtype=object), n), "ln_ic50": preds[start:start + n].ravel()},
                schema=schema))
            bar.update(n)
    bar.close()
    return preds, rank_cells(preds, q.groups, names)


def group_means(q: Query, block_cells: int, kind: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(groups, [groups, file tokens] mean value over each group's cells, cells per group):
    counts as log1p(count per 10,000 of the cell's total over all its genes), normalised values
    as they are."""
    names, group_of = np.unique(q.groups.astype(str), return_inverse=True)
    sums = np.zeros((len(names), len(q.gmap.token_ids)))
    for start, block in q.h.blocks(block_cells):
        q.h.check_values(block, kind, start == 0)
        m = (block @ q.gmap.merge).tocsr()
        if kind == "counts":
            totals = np.asarray(block.sum(1)).ravel()
            m = sparse.diags(1e4 / np.maximum(totals, 1e-12)) @ m
            m.data = np.log1p(m.data)
        n = m.shape[0]
        members = sparse.csr_matrix((np.ones(n), (group_of[start:start + n], np.arange(n))),
                                    shape=(len(names), n))
        sums += (members @ m).toarray()
    cells = np.bincount(group_of, minlength=len(names))
    return names.tolist(), sums / np.maximum(cells, 1)[:, None], cells


def _predict_groups(trained: Trained, q: Query, work: Path, block_cells: int
                    ) -> tuple[np.ndarray, pd.DataFrame]:
    """A bulk model: one aligned profile per group, predicted for every drug; each cell carries
    its group's prediction."""
    names, means, cells = group_means(q, block_cells, q.kind)
    pos, known = vocab_index(trained.vocab, q.gmap.token_ids)
    values = np.zeros((len(names), len(trained.vocab)))
    values[:, pos[known]] = means[:, known]
    found = np.zeros(len(trained.vocab), dtype=bool)
    found[pos[known]] = True
    aligned = align(values, found, trained.reference)
    drug_names = list(q.drugs)
    pred = predict_profiles(trained, aligned, [q.rows[d] for d in drug_names])
    table = pd.DataFrame({"group": np.repeat(names, len(drug_names)),
                          "drug": np.tile(drug_names, len(names)), "ln_ic50": pred.ravel(),
                          "cells": np.repeat(cells, len(drug_names))})
    columns = ["group", "rank", "drug", "ln_ic50", "cells"]
    if trained.stack is not None:   # blended with one ridge per drug, with intervals
        group = np.repeat(np.arange(len(names)), len(drug_names))   # the profile of each row
        final, low, high = trained.stack.predict(table["drug"], table["ln_ic50"].to_numpy(), aligned,
                                                 trained.vocab, group)
        table = table.assign(ln_ic50=final, ln_ic50_low=low, ln_ic50_high=high)
        pred = final.reshape(len(names), len(drug_names))
        columns = ["group", "rank", "drug", "ln_ic50", "ln_ic50_low", "ln_ic50_high", "cells"]
    write_parquet(pa.Table.from_pandas(table, preserve_index=False), work / "predictions.parquet")
    ranking = table.assign(rank=table.groupby("group")["ln_ic50"].rank(method="first").astype(int))
    ranking = ranking.sort_values(["group", "rank"])[columns]
    group_of = {g: i for i, g in enumerate(names)}
    per_cell = pred[[group_of[g] for g in q.groups.astype(str)]].astype(np.float32)
    return per_cell, ranking.reset_index(drop=True)


def _annotate(path: Path, preds: np.ndarray, names: list[str]) -> None:
    """obsm['ln_ic50'] (cells x drugs) and uns['ln_ic50_drugs'] written into the copy in place."""
    io = anndata.io
    with h5py.File(path, "r+") as f:
        for group in ("obsm", "uns"):
            if group not in f:
                io.write_elem(f, group, {})
        for group, key, value in (("obsm", OUTPUT_KEY, preds),
                                  ("uns", OUTPUT_KEY + "_drugs", np.array(names, dtype=object))):
            if key in f[group]:
                del f[group][key]
            io.write_elem(f[group], key, value)


def rank_cells(preds: np.ndarray, groups: np.ndarray, names: list[str]) -> pd.DataFrame:
    """Per group, the drugs from the lowest median predicted ln IC50 (most sensitive) up, with the
    spread over the group's cells."""
    rows = []
    for group, idx in sorted(pd.Series(groups).groupby(groups).indices.items()):
        p = preds[idx]
        q25, median, q75 = np.percentile(p, [25, 50, 75], axis=0)
        order = np.argsort(median, kind="stable")
        for rank, j in enumerate(order, start=1):
            rows.append({"group": group, "rank": rank, "drug": names[j], "median_ln_ic50": median[j],
                         "q25": q25[j], "q75": q75[j], "iqr": q75[j] - q25[j], "cells": len(p)})
    return pd.DataFrame(rows)


def value_column(ranking: pd.DataFrame) -> str:
    """ranking.csv's prediction: each group's median over its cells, or its profile's prediction."""
    return "median_ln_ic50" if "median_ln_ic50" in ranking.columns else "ln_ic50"


def plot_ranking(ranking: pd.DataFrame, path: Path, groupby: str) -> None:
    """Heatmap of predicted ln IC50 (a group's median over its cells, or its profile's), groups x
    drugs, drugs from the most sensitive overall."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    grid = ranking.pivot(index="group", columns="drug", values=value_column(ranking))
    grid = grid[grid.median(axis=0).sort_values().index]
    fig, ax = plt.subplots(figsize=(min(2 + 0.35 * grid.shape[1], 30), min(1.5 + 0.3 * grid.shape[0], 30)))
    im = ax.imshow(grid.to_numpy(), aspect="auto", cmap="viridis_r")
    ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=90, fontsize=7)
    ax.set_yticks(range(grid.shape[0]), grid.index, fontsize=7)
    ax.set_xlabel("drug (most sensitive overall on the left)")
    ax.set_ylabel(groupby)
    fig.colorbar(im, ax=ax, label="predicted ln IC50 (uM)")
    ax.set_title("Predicted drug sensitivity per group")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
