"""Cells answered group by group: an .h5ad on disk (read in blocks), an AnnData in memory, or bulk
samples (one row each), set against a predictor's training lines.

The file's genes (symbols or Ensembl ids) are mapped onto the network's vocabulary through the
gene table the checkpoint carries (h5ad.map_genes). Then:

- a single-cell model predicts every cell; a group's ranking is its cells' median;
- a bulk model averages each group's cells into one profile (log1p counts per 10,000 first, for
  counts), brings it into its training domain (align.py) and predicts it; every cell carries its
  group's prediction.

Either way the answer is each group's drugs ranked by relative sensitivity (z against the drug's
training lines, most specifically sensitive first; or by potency), each group's general
sensitivity apart, and each cell's predictions, which `main.py predict` writes and a notebook
reads (an AnnData gets them in obsm and uns, as the .h5ad that `main.py predict` writes does).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pyarrow as pa
from scipy import sparse

from common import PipelineError
from ingest import h5ad
from ingest.drugs import read_smiles_table
from ingest.tokens import cell_tokens, vocab_index
from predictor.align import align
from predictor.samples import Samples
from predictor.skill import BAR

log = logging.getLogger("ic50.cells")

OUTPUT_KEY = "ln_ic50"   # obsm[OUTPUT_KEY]: cells x drugs; uns[OUTPUT_KEY + "_drugs"]: the drugs
RANK_BY = ("z", "ln_ic50")   # relative sensitivity (default), or potency
RANKING_COLUMNS = ["z", "z_low", "z_high", "percentile", "ln_ic50", "ln_ic50_low", "ln_ic50_high",
                   "median_ln_ic50", "q25", "q75", "iqr", "cells", "skill", "low_skill", "drivers",
                   "drivers_share", "z_linear", "z_network", "new_drug", "similarity_to_training"]


@dataclass
class Answer:
    """What `main.py predict` writes for cells, in memory."""
    ranking: pd.DataFrame          # ranking.csv: each group's drugs, most specifically sensitive first
    general: pd.DataFrame | None   # general_sensitivity.csv: each group's mean z (None without z)
    table: pd.DataFrame | None     # predictions.parquet of a bulk model: one row per group and drug
    cells: np.ndarray              # [cells, drugs] ln IC50: obsm['ln_ic50']
    z: np.ndarray | None           # [cells, drugs] z: obsm['ln_ic50_z']
    drugs: list[str]
    genes: dict                    # how the file's genes mapped onto the network's
    seconds: float
    drivers: pd.DataFrame | None = None   # drivers.parquet: each group and drug's strongest genes

    def entries(self) -> list[tuple[str, str, object]]:
        """(obsm or uns, key, value): what an AnnData gains."""
        out = [("obsm", OUTPUT_KEY, self.cells),
               ("uns", OUTPUT_KEY + "_drugs", np.array(self.drugs, dtype=object))]
        return out + ([("obsm", OUTPUT_KEY + "_z", self.z)] if self.z is not None else [])


@dataclass
class Query:
    """Cells mapped onto a predictor: their genes, groups and the drugs asked for."""
    cells: h5ad.Cells
    kind: str                   # the file's values: counts or normalised
    gmap: h5ad.GeneMap
    groups: np.ndarray
    drugs: dict[str, str]


def answer(predictor, data, drugs=None, *, smiles=None, groupby: str | None = None, rank_by: str = "z",
           layer: str | None = None, gene_column: str | None = None, gene_table: pd.DataFrame | None = None,
           min_fraction: float = 0.5, min_skill: float = BAR, block_cells: int = 8192, each_block=None
           ) -> Answer:
    """`data`: an AnnData (annotated in place), a DataFrame of bulk samples (rows: samples, named by
    the index; columns: genes) or an open h5ad.Cells. `drugs`: names the predictor knows, or
    name -> SMILES (default: every drug it knows, and those of `smiles`: a CSV of name,smiles or a
    mapping). `min_skill`: drugs whose skill on unseen lines (skill.py) is below it are marked
    `low_skill` in the ranking, and kept. `each_block`: a single-cell model's per-cell rows are
    handed to it, a block at a time (predictions.parquet), and not kept."""
    t0 = time.perf_counter()
    if rank_by not in RANK_BY:
        raise PipelineError(f"--rank-by {rank_by!r}: expected one of {list(RANK_BY)}.")
    if isinstance(data, pd.DataFrame):
        if groupby not in (None, "sample"):
            raise PipelineError("a matrix of samples: each sample is its own group, so --groupby does not "
                                "apply.")
        data, groupby = samples_anndata(data.index, data.columns, data.to_numpy(np.float32)), "sample"
    cells = h5ad.InMemory(data, layer, gene_column) if isinstance(data, anndata.AnnData) else data
    table = h5ad.checkpoint_gene_table(predictor.network.genes) if gene_table is None else gene_table
    q = query(predictor, cells, table, drugs, smiles, groupby, min_fraction)
    rank_by = rank_by if predictor.spread is not None else "ln_ic50"
    drivers = None
    if predictor.bulk:
        per_cell, table, ranking, drivers = _groups(predictor, q, block_cells, rank_by)
    else:
        per_cell, ranking = _cells(predictor, q, block_cells, rank_by, each_block)
        table = None
    if "skill" in ranking.columns:
        at = ranking.columns.get_loc("skill") + 1
        ranking.insert(at, "low_skill", (ranking["skill"] < min_skill).to_numpy())
        log.info("skill on unseen lines: %d of %d drugs below %.2f are marked low_skill (kept in the "
                 "ranking)", int(ranking.drop_duplicates("drug")["low_skill"].sum()),
                 ranking["drug"].nunique(), min_skill)
    if predictor.annotations is not None:   # a drug the annotations lack gets empty fields
        ranking = ranking.merge(predictor.annotations[["drug", "target", "pathway"]], on="drug", how="left")
        ranking[["target", "pathway"]] = ranking[["target", "pathway"]].fillna("")
    z = None
    if predictor.spread is not None:
        mean, sd = predictor.spread.of(list(q.drugs))
        z = ((per_cell - mean) / sd).astype(np.float32)
    result = Answer(ranking, general_sensitivity(ranking, predictor.bulk), table, per_cell, z, list(q.drugs),
                    q.gmap.counts, time.perf_counter() - t0, drivers)
    if isinstance(data, anndata.AnnData):
        for group, key, value in result.entries():
            getattr(data, group)[key] = value
    _summary(result, rank_by)
    return result


def samples_anndata(names, genes, values: np.ndarray) -> anndata.AnnData:
    """Bulk samples (one row each, one column per gene) as an AnnData whose obs 'sample' names
    them: each sample a group of one."""
    names = [str(n) for n in names]
    obs = pd.DataFrame({"sample": names}, index=pd.Index(names, dtype=object))
    return anndata.AnnData(X=sparse.csr_matrix(np.asarray(values, dtype=np.float32)), obs=obs,
                           var=pd.DataFrame(index=pd.Index([str(g) for g in genes], dtype=object)))


def wanted_drugs(predictor, names, smiles) -> dict[str, str]:
    """Drug name -> SMILES for every drug asked for: the named ones, or every drug the predictor
    knows plus those of the SMILES table."""
    given = (read_smiles_table(smiles) if isinstance(smiles, (str, Path)) else dict(smiles or {}))
    if isinstance(names, dict):
        return {**given, **names}
    known = predictor.known_drugs()
    if not names:
        return {**known, **given}
    unknown = [n for n in names if n not in given and n not in known]
    if unknown:
        raise PipelineError(f"drug(s) {unknown} are not known to the checkpoint (it knows "
                            f"{sorted(known)[:8]}{' ...' if len(known) > 8 else ''}); give their "
                            f"SMILES in a CSV of name,smiles with --smiles.")
    return {n: given.get(n) or known[n] for n in names}   # None: a drug the ridge member answers alone


def query(predictor, h: h5ad.Cells, table: pd.DataFrame | None, drugs, smiles, groupby,
          min_fraction: float) -> Query:
    """The file's genes mapped onto the network's (coverage logged, refused below min_fraction),
    its groups, and the drugs asked for."""
    network = predictor.network
    kind = network.cfg.value_kind
    if table is None:
        raise PipelineError(f"the checkpoint does not name its genes (it was trained without a gene "
                            f"table), so '{h.path}' cannot be mapped onto it: pass --gene-table (the "
                            f"table the model's token ids come from).")
    declared = h.declared_value_kind()
    if predictor.bulk:
        if network.domain is None:
            raise PipelineError(f"this checkpoint of a bulk model predates the per-gene statistics "
                                f"that bring '{h.path}' into its training domain; retrain it to predict "
                                f".h5ad files, or predict a table of its own platform.")
        kind = declared or ("counts" if h.looks_like_counts() else "normalised")
        log.info("'%s': %s values, averaged per group and aligned to the bulk model's training profiles",
                 Path(str(h.path)).name, kind)
    elif declared and declared != kind:
        raise PipelineError(f"'{h.path}' declares {declared} values, but the model was trained on "
                            f"{kind} values; give it values of the same kind (--layer).")
    gmap = h5ad.map_genes(h.gene_ids, table, kind)
    gmap.counts["genes_found"] = int(np.isin(gmap.token_ids, network.vocab).sum())
    h5ad.report_coverage(gmap, h.path, len(network.vocab), "the model's", min_fraction)
    groups = (h5ad.obs_column(h, groupby, "--groupby").astype(str).to_numpy() if groupby
              else np.full(h.n_cells, "all cells", dtype=object))
    wanted = wanted_drugs(predictor, drugs, smiles)
    # new SMILES encoded now: a fine-tuned encoder refuses them before any work
    network.rows_of({d: s for d, s in wanted.items() if s})
    predictor.describe_new_drugs(wanted)
    log.info("predicting %d cells x %d drugs from %s (%s)", h.n_cells, len(wanted), h.path, h.where)
    return Query(h, kind, gmap, groups, wanted)


def _cells(predictor, q: Query, block_cells: int, rank_by: str, each_block
           ) -> tuple[np.ndarray, pd.DataFrame]:
    """A single-cell model: [cells, drugs] predictions, block by block, each block's rows handed to
    `each_block`; each group's ranking by its cells' median."""
    cfg, h, names = predictor.network.cfg, q.cells, list(q.drugs)
    preds = np.empty((h.n_cells, len(names)), dtype=np.float32)
    ids = h.obs.index.astype(str).to_numpy()
    relative = predictor.spread is not None
    for start, block in h.blocks(block_cells):
        h.check_values(block, cfg.value_kind, start == 0)
        g, e = q.gmap.lists(block, keep_zeros=cfg.value_kind == "normalised")
        n = block.shape[0]
        toks = cell_tokens(pa.table({"genes": g, "expressions": e}), cfg.top_k, cfg.value_kind)
        cols = predictor.answer(Samples(toks, np.arange(n)), q.drugs)
        preds[start:start + n] = cols["ln_ic50"].to_numpy().reshape(n, len(names))
        if each_block is not None:
            each_block(pd.DataFrame({
                "cell": np.repeat(ids[start:start + n], len(names)),
                "group": np.repeat(q.groups[start:start + n], len(names)), "drug": cols["drug"],
                **{k: cols[k].astype(np.float32) for k in ["ln_ic50"] + ["z", "percentile"] * relative},
                "new_drug": cols["new_drug"], "similarity_to_training": cols["similarity_to_training"]
                .astype(np.float32)}))
    new, sim = predictor.novelty(q.drugs)
    if new.any():
        log.warning("a single-cell model predicts its %d new drug(s) with the network alone, without "
                    "an interval (the new-drug predictor serves bulk references)", int(new.sum()))
    ranking = rank_cells(preds, q.groups, names, predictor.spread, rank_by)
    flags = pd.DataFrame({"drug": names, "new_drug": new, "similarity_to_training": sim})
    return preds, ranked(ranking.drop(columns="rank").merge(flags, on="drug", how="left"), rank_by)


def group_means(q: Query, block_cells: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(groups, [groups, file tokens] mean value over each group's cells, cells per group):
    counts as log1p(count per 10,000 of the cell's total over all its genes), normalised values
    as they are."""
    names, group_of = np.unique(q.groups.astype(str), return_inverse=True)
    sums = np.zeros((len(names), len(q.gmap.token_ids)))
    for start, block in q.cells.blocks(block_cells):
        q.cells.check_values(block, q.kind, start == 0)
        m = (block @ q.gmap.merge).tocsr()
        if q.kind == "counts":
            totals = np.asarray(block.sum(1)).ravel()
            m = sparse.diags(1e4 / np.maximum(totals, 1e-12)) @ m
            m.data = np.log1p(m.data)
        n = m.shape[0]
        members = sparse.csr_matrix((np.ones(n), (group_of[start:start + n], np.arange(n))),
                                    shape=(len(names), n))
        sums += (members @ m).toarray()
    cells = np.bincount(group_of, minlength=len(names))
    return names.tolist(), sums / np.maximum(cells, 1)[:, None], cells


def _groups(predictor, q: Query, block_cells: int, rank_by: str
            ) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """A bulk model: one aligned profile per group, predicted for every drug, with its drivers;
    each cell carries its group's prediction."""
    vocab = predictor.network.vocab
    names, means, cells = group_means(q, block_cells)
    pos, known = vocab_index(vocab, q.gmap.token_ids)
    values = np.zeros((len(names), len(vocab)))
    values[:, pos[known]] = means[:, known]
    found = np.zeros(len(vocab), dtype=bool)
    found[pos[known]] = True
    aligned = align(values, found, predictor.network.domain)
    cols = predictor.answer(Samples.of_values(aligned, vocab, found=found, centred=len(names) >= 2), q.drugs)
    table = cols.drop(columns="sample").assign(group=np.asarray(names, dtype=object)[cols["sample"]])
    table = table[["group", *[c for c in table.columns if c != "group"]]]
    table["cells"] = cells[cols["sample"]]
    pred = table["ln_ic50"].to_numpy().reshape(len(names), len(q.drugs))
    group_of = {g: i for i, g in enumerate(names)}
    per_cell = pred[[group_of[g] for g in q.groups.astype(str)]].astype(np.float32)
    drivers = predictor.drivers_table(aligned, cols["drug"].to_numpy(), cols["sample"].to_numpy())
    if drivers is not None:
        drivers.insert(0, "group", np.asarray(names, dtype=object)[drivers.pop("sample").to_numpy(np.int64)])
    return per_cell, table, ranked(table, rank_by), drivers


def rank_cells(preds: np.ndarray, groups: np.ndarray, names: list[str], spread, rank_by: str) -> pd.DataFrame:
    """Per group, each drug's median predicted ln IC50 over the group's cells with its spread
    over them, and the median's z and percentile; ranked (see `ranked`)."""
    rows = []
    for group, idx in sorted(pd.Series(groups).groupby(groups).indices.items()):
        q25, median, q75 = np.percentile(preds[idx], [25, 50, 75], axis=0)
        rows.append(pd.DataFrame({"group": group, "drug": names, "median_ln_ic50": median, "q25": q25,
                                  "q75": q75, "iqr": q75 - q25, "cells": len(idx)}))
    table = pd.concat(rows, ignore_index=True)
    if spread is not None:
        table = table.assign(**spread.columns(table["drug"], table["median_ln_ic50"]))
    return ranked(table, rank_by)


def value_column(ranking: pd.DataFrame, rank_by: str = "ln_ic50") -> str:
    """The column a ranking orders by: z, or the prediction (each group's median over its cells,
    or its profile's)."""
    if rank_by == "z":
        return "z"
    return "median_ln_ic50" if "median_ln_ic50" in ranking.columns else "ln_ic50"


def ranked(table: pd.DataFrame, rank_by: str) -> pd.DataFrame:
    """ranking.csv: each group's drugs from the lowest z (or ln IC50) up, the most specifically
    sensitive (or the most potent) first; a drug without a z (new to a checkpoint before format 9)
    comes last."""
    value = value_column(table, rank_by)
    rank = table.groupby("group")[value].rank(method="first", na_option="bottom").astype(int)
    columns = ["group", "rank", "drug"] + [c for c in RANKING_COLUMNS if c in table.columns]
    return table.assign(rank=rank).sort_values(["group", "rank"])[columns].reset_index(drop=True)


def general_sensitivity(ranking: pd.DataFrame, bulk: bool) -> pd.DataFrame | None:
    """Each group's mean z over its drugs: how sensitive it is to drugs in general, apart from the
    ranking, which it never orders. It does not carry across platforms (README): a bulk model's
    groups are aligned to the training profiles, so their levels compare the groups of this file
    with each other, never with the training lines."""
    if "z" not in ranking.columns:
        return None
    note = ("aligned from another platform: compare the groups of this file with each other, not "
            "with the training lines" if bulk else
            "comparable with the training lines only for cells profiled as the training cells were")
    general = ranking.groupby("group", sort=True).agg(mean_z=("z", "mean"), drugs=("z", "count"),
                                                      cells=("cells", "first")).reset_index()
    log.info("general sensitivity (each group's mean z over the drugs; %s): %s", note,
             "; ".join(f"{g} {z:+.2f}" for g, z in zip(general["group"], general["mean_z"])))
    return general.assign(note=note)


def _summary(result: Answer, rank_by: str) -> None:
    """The log's last word: each group's first drugs, and how they were ordered."""
    ranking = result.ranking
    value = value_column(ranking, rank_by)
    first = ranking[ranking["rank"] <= 3].head(15)
    listed = "; ".join(f"{g}: " + ", ".join(f"{d} ({v:+.2f})" if rank_by == "z" else f"{d} ({v:.2f})"
                                           for d, v in zip(part["drug"], part[value]))
                       for g, part in first.groupby("group", sort=False))
    what = ("z against the training lines, most specifically sensitive first" if rank_by == "z"
            else "predicted ln IC50, most potent first")
    log.info("%d cells x %d drugs in %.1fs; ranked by %s: %s", len(result.cells), len(result.drugs),
             result.seconds, what, listed)
