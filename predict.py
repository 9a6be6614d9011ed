"""Predict ln IC50 with a trained checkpoint, for the rows of a table or the cells of an .h5ad.

    python main.py predict --checkpoint RUN/best.pt --data new_cells.parquet   # each row, its own drug
    python main.py predict --checkpoint RUN/best.pt --data cells.h5ad --groupby sample

A merged table (or a reference's pairs) gets one prediction per row, for the row's own drug. An
.h5ad gets every drug the checkpoint knows (or those asked for; new ones from their SMILES),
ranked per --groupby group by relative sensitivity: each drug's prediction as a z-score against
the drug's training lines (relative.py), most specifically sensitive first, so that drugs potent
against every line do not head every list. How depends on what the model was trained on:

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

import bulk
import data
import drugs as drugs_mod
import h5ad
import newdrugs as newdrugs_mod
from common import PipelineError, atomic_path, write_parquet
from stack import LEVEL
from tokens import Features, TokenTable, cell_tokens, vocab_index
from train import Trained

log = logging.getLogger("ic50.predict")

OUTPUT_KEY = "ln_ic50"   # obsm[OUTPUT_KEY]: cells x drugs; uns[OUTPUT_KEY + "_drugs"]: the drugs
RANK_BY = ("z", "ln_ic50")   # relative sensitivity (default), or potency
HEATMAP_DRUGS = 50       # more drugs than this: the heatmap shows those ranked highest in any group


def is_bulk(trained: Trained) -> bool:
    """A model of normalised profiles (bulk expression), which reads groups, not single cells."""
    return trained.cfg.value_kind == "normalised"


def has_spread(trained: Trained) -> bool:
    """Whether the checkpoint can set predictions against its training lines (z, percentile);
    says why not where it cannot."""
    if trained.spread is None:
        log.warning("this checkpoint predates the per-drug statistics of its training lines "
                    "(checkpoint format 7), so its predictions come as ln IC50 alone, without z or "
                    "percentile, and drugs are ranked by ln IC50 (potency); retrain it for relative "
                    "sensitivity.")
    return trained.spread is not None


# ----------------------------------------------------------------------------- drugs

def wanted_drugs(trained: Trained, names: list[str] | None, smiles_csv: str | None) -> dict[str, str]:
    """Drug name -> SMILES for every drug asked for: the named ones, or every drug the checkpoint
    knows plus those of the SMILES table."""
    given = drugs_mod.read_smiles_table(smiles_csv) if smiles_csv else {}
    known = dict(trained.drugs)
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
    result = data.key_columns(keys)
    has_spread(trained)
    values = dense_values(feats.table, trained.vocab) if trained.stack is not None else None
    x = trained.stack.inputs(values, trained.vocab) if values is not None else None   # blended, intervals
    if trained.stack is not None:
        log.info("%s", trained.stack.interval)
    drugs = result["drug"].to_pylist()
    profiles = feats.table.profiles(feats.rows)
    columns = trained.answer(drugs, pred, x, profiles, column="prediction")
    smiles = data.drug_smiles(keys)
    new, sim = trained.novelty(smiles)
    describe_new_drugs(trained, smiles, new, sim)
    names = pd.Series(drugs, dtype=object)
    is_new = names.map(dict(zip(smiles, new))).to_numpy(bool)
    rows = np.flatnonzero(is_new)
    if len(rows) and trained.newdrugs is not None and values is not None:
        columns = newdrugs_mod.fill(columns, rows, new_drug_columns(
            trained, values, profiles[rows], [smiles[drugs[r]] for r in rows], None, "prediction"))
    columns.update(new_drug=is_new, similarity_to_training=names.map(dict(zip(smiles, sim))).to_numpy(float))
    for name, column in columns.items():
        result = result.append_column(name, pa.array(column))
    target = Path(out) if out else Path(path).with_name(Path(path).stem + "_predictions.parquet")
    write_parquet(result, target)
    log.info("%d predictions written to %s (drug encoder %s)", len(pred), target, trained.drug_encoder)
    return target


def new_drug_columns(trained: Trained, values: np.ndarray, profiles: np.ndarray, smiles: list[str],
                     scale: float | None, column: str = "ln_ic50") -> dict[str, np.ndarray]:
    """The output columns of new drugs at new samples, one row per (profile of `values`, SMILES):
    each predicted by the new-drug predictor from the predictor's own predictions for the training
    drugs at the same profile, with the interval for new samples (`scale`: how much an aligned input
    widened the known drugs' quantile)."""
    nd = trained.newdrugs
    used, at = np.unique(profiles, return_inverse=True)
    known = known_matrix(trained, values[used], nd.drugs)
    uniq, which = np.unique(np.asarray(smiles, dtype=object), return_inverse=True)
    w = nd.weights(list(uniq))
    mean, sd = nd.moments(w)
    ratio = None if scale is None else scale / trained.stack.scales[LEVEL]
    log.info("%d new drug(s): each predicted from the predictions for the %d training drugs at the "
             "same sample, weighted by structure (kernel ridge); %s", len(uniq), len(nd.drugs),
             f"{100 * LEVEL:.0f}% intervals +- {nd.interval(1.0, False, ratio):.2f} x each drug's "
             f"predicted sd, calibrated on validation lines with each training drug held out"
             if nd.line_scales else "no interval: the checkpoint holds no validation lines to "
             "calibrate one at new samples")
    return nd.columns(nd.from_predictions(w, known)[at, which], mean[which], sd[which], at_lines=False,
                      scale=ratio, column=column)


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


def align(values: np.ndarray, found: np.ndarray, reference: dict, centre: bool | None = None) -> np.ndarray:
    """Profiles from another platform brought into a bulk model's training domain: quantiles
    (above), then, with two profiles or more, each found gene centred on the profiles' own mean
    and put at its training mean. What a platform adds to a gene's level (capture, length, 3'
    bias) is shared by every profile of one file and cancels; what remains are the differences
    between the profiles, set where the training lines are on average. So a file's groups are
    ranked against each other, and a file of one group keeps its platform's offsets.
    BENCHMARKS.md has the search behind it (real cells of three lines)."""
    out = quantiles(values, found, reference)
    if len(out) >= 2 if centre is None else centre:
        mean = np.asarray(reference["mean"], dtype=np.float64)
        out[:, found] += mean[found] - out[:, found].mean(0)
    return out


def held_out_values(trained: Trained) -> np.ndarray:
    """[validation lines, vocabulary] the raw profiles of the lines the checkpoint keeps for
    calibration (Stack.calibration)."""
    stack = trained.stack
    pos, known = vocab_index(trained.vocab, stack.ridge.genes)
    values = np.zeros((len(stack.calibration.profiles), len(trained.vocab)))
    values[:, pos[known]] = stack.calibration.profiles[:, known]
    return values


def aligned_scale(trained: Trained, found: np.ndarray, centre: bool) -> float | None:
    """The interval's quantile for profiles aligned from another platform: the validation lines
    the checkpoint keeps, sent through the same alignment with the genes this input measures
    (`found`, over the vocabulary) and centred as its groups are, predicted, and the conformal
    quantile of their errors taken again; never below the one of the training platform. None
    where the checkpoint keeps no validation lines (before format 8)."""
    stack = trained.stack
    if stack is None or stack.calibration is None:
        return None
    c = stack.calibration
    aligned = align(held_out_values(trained), found, trained.reference, centre=centre)
    drugs = sorted(set(c.drugs))
    rows = trained.rows_of({d: trained.drugs[d] for d in drugs})
    column = {d: j for j, d in enumerate(drugs)}   # only the measured pairs, not every line x drug
    network = trained.predict(profile_features(trained, aligned, [rows[d] for d in drugs],
                                               (c.rows, np.array([column[d] for d in c.drugs]))))
    ridge = stack.ridge.predict(stack.inputs(aligned, trained.vocab), c.drugs, c.rows)
    pred, _, _ = stack.blend(c.drugs, network, ridge)
    return max(stack.quantiles(c.drugs, c.labels, pred)[LEVEL], stack.scales[LEVEL])


def known_matrix(trained: Trained, values: np.ndarray, drugs: list[str], local: bool = False) -> np.ndarray:
    """[profiles, drugs] the predictor's ln IC50 (with a stack, the blend) of dense profiles in the
    training domain for training drugs: what a new drug's prediction is made of (newdrugs.py)."""
    rows = trained.rows_of({d: trained.drugs[d] for d in drugs})
    network = predict_profiles(trained, values, [rows[d] for d in drugs], local).ravel()
    names = np.tile(np.asarray(drugs, dtype=object), len(values))
    x = trained.stack.inputs(values, trained.vocab) if trained.stack is not None else None
    group = np.repeat(np.arange(len(values)), len(drugs))
    return trained.answer(names, network, x, group)["ln_ic50"].reshape(len(values), len(drugs))


def calibrate_new_drugs(trained: Trained) -> None:
    """The new-drug interval at new samples, measured on the validation lines the checkpoint
    keeps (newdrugs.NewDrugs.calibrate_lines); one process predicts them."""
    nd, stack = trained.newdrugs, trained.stack
    if nd is None or stack is None or stack.calibration is None:
        return
    c = stack.calibration
    known = known_matrix(trained, held_out_values(trained), nd.drugs, local=True)
    nd.calibrate_lines(known, pd.DataFrame({"line": c.rows, "drug": c.drugs, "LN_IC50": c.labels}))
    if nd.line_scales:
        log.info("new drugs at new samples: %.0f%% intervals +- %.2f predicted sd (the validation "
                 "lines, each training drug predicted from the others)", 100 * LEVEL, nd.line_scales[LEVEL])


def profile_features(trained: Trained, values: np.ndarray, drug_rows: list[int],
                     pairs: tuple[np.ndarray, np.ndarray] | None = None) -> Features:
    """Features of dense profiles over the model's vocabulary x drugs: row r * len(drugs) + j
    is profile r with drug j; or, with `pairs` (profile, drug position), those pairs alone."""
    n, width = values.shape
    profile, drug = pairs if pairs is not None else (np.repeat(np.arange(n), len(drug_rows)),
                                                     np.tile(np.arange(len(drug_rows)), n))
    genes = np.tile(trained.vocab.astype(np.int32), n)
    offsets = np.arange(n + 1, dtype=np.int64) * width
    toks = TokenTable(genes, values.astype(np.float32).ravel(), offsets, width,
                      drug=np.asarray(drug, dtype=np.int32), drugs=[str(j) for j in range(len(drug_rows))],
                      label=np.full(len(drug), np.nan, dtype=np.float32),
                      profile=np.asarray(profile, dtype=np.int32))
    return Features(toks, np.arange(len(drug)), np.asarray(drug_rows, dtype=np.int64))


def predict_profiles(trained: Trained, values: np.ndarray, drug_rows: list[int], local: bool = False
                     ) -> np.ndarray:
    """[profiles, drugs] network predictions of dense profiles already in the training domain."""
    if len(values) == 0:
        return np.zeros((0, len(drug_rows)))
    pred = trained.predict(profile_features(trained, values, drug_rows), local=local)
    return pred.reshape(len(values), len(drug_rows))


# ----------------------------------------------------------------------------- bulk samples

MATRIX_SUFFIXES = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".txt.gz")


def is_sample_matrix(path: str | Path) -> bool:
    """A plain matrix of samples x genes (the layouts --expression reads), not a table of the
    project's contract: a text table, or a parquet file that neither holds the merged table's
    genes and expressions lists nor names a reference's profiles."""
    name = str(path).lower()
    if name.endswith(MATRIX_SUFFIXES):
        return True
    if name.endswith((".parquet", ".pq")) and Path(path).exists():
        try:
            schema = pq.read_schema(path)
        except pa.ArrowInvalid as e:
            raise PipelineError(f"'{path}' is not a readable parquet file: {e}") from e
        return not ({"genes", "expressions"} <= set(schema.names)
                    or data.PROFILES_KEY.encode() in (schema.metadata or {}))
    return False


def predict_matrix(trained: Trained, path: str | Path, out: Path, **options) -> dict:
    """Bulk samples (RNA-seq TPM or counts, microarray; one row per sample, or genes as rows):
    each sample is a group of one, predicted exactly as an .h5ad's group (predict_h5ad, through
    a temporary .h5ad of the samples; obs 'sample')."""
    if options.get("groupby"):
        raise PipelineError(f"'{path}' is a matrix of samples: each sample is its own group, so "
                            f"--groupby does not apply.")
    matrix = bulk.read_matrix(path)
    log.info("'%s': %d samples x %d genes (%s)", Path(path).name, len(matrix.lines), len(matrix.genes),
             matrix.layout)
    obs = pd.DataFrame({"sample": matrix.lines}, index=pd.Index(matrix.lines, dtype=object))
    samples = anndata.AnnData(X=sparse.csr_matrix(matrix.values.astype(np.float32)), obs=obs,
                              var=pd.DataFrame(index=pd.Index(matrix.genes, dtype=object)))
    stem = Path(Path(path).name.removesuffix(".gz")).stem
    with tempfile.TemporaryDirectory(prefix=".samples-") as tmp:
        logging.getLogger("anndata").setLevel(logging.WARNING)
        samples.write_h5ad(Path(tmp) / f"{stem}.h5ad")
        return predict_h5ad(trained, Path(tmp) / f"{stem}.h5ad", out, **{**options, "groupby": "sample"})


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
    new: np.ndarray             # per drug: new to the model, and its similarity to the training drugs
    similarity: np.ndarray


def predict_h5ad(trained: Trained, path: str | Path, out: Path, *, drugs: list[str] | None = None,
                 smiles_csv: str | None = None, groupby: str | None = None, layer: str | None = None,
                 gene_column: str | None = None, gene_table: pd.DataFrame | None = None,
                 min_fraction: float = 0.5, block_cells: int = 8192, rank_by: str = "z",
                 annotations: pd.DataFrame | None = None, extras: list[Path] = ()) -> dict:
    """Predicted ln IC50 for every cell x drug of an .h5ad, written into `out` (a new directory,
    which appears only once everything is written): a copy of the file with obsm['ln_ic50'] (and
    obsm['ln_ic50_z']), predictions.parquet, ranking.csv (each group's drugs by z, or by ln IC50
    with rank_by='ln_ic50'; with `annotations`, each drug's target and pathway), general_sensitivity.csv
    (each group's mean z, apart from the ranking), ranking_heatmap.png, and copies of `extras`
    (a reference's card)."""
    t0 = time.perf_counter()
    if rank_by not in RANK_BY:
        raise PipelineError(f"--rank-by {rank_by!r}: expected one of {list(RANK_BY)}.")
    table = h5ad.checkpoint_gene_table(trained.genes) if gene_table is None else gene_table
    if out.exists():
        raise PipelineError(f"output directory '{out}' already exists; pass another --out.")
    with h5ad.H5ad(path, layer, gene_column) as h:
        q = _query(trained, h, table, drugs=drugs, smiles_csv=smiles_csv, groupby=groupby,
                   min_fraction=min_fraction)
        rank_by = rank_by if has_spread(trained) else "ln_ic50"
        out.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            if is_bulk(trained):
                preds, ranking = _predict_groups(trained, q, work, block_cells, rank_by)
            else:
                preds, ranking = _predict_cells(trained, q, work, block_cells, rank_by)
            shutil.copyfile(h.path, work / h.path.name)
            _annotate(work / h.path.name, preds, list(q.drugs), trained.spread)
            if annotations is not None:   # a drug the annotations lack gets empty fields
                ranking = ranking.merge(annotations[["drug", "target", "pathway"]], on="drug", how="left")
                ranking[["target", "pathway"]] = ranking[["target", "pathway"]].fillna("")
            for extra in extras:
                shutil.copyfile(extra, work / Path(extra).name)
            with atomic_path(work / "ranking.csv") as tmp:
                ranking.to_csv(tmp, index=False)
            general = general_sensitivity(ranking, bulk=is_bulk(trained))
            if general is not None:
                with atomic_path(work / "general_sensitivity.csv") as tmp:
                    general.to_csv(tmp, index=False)
            plot_ranking(ranking, work / "ranking_heatmap.png", groupby or "all cells")
            work.rename(out)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    seconds = time.perf_counter() - t0
    _summary(ranking, rank_by, len(preds), len(q.drugs), seconds, out)
    return {"cells": len(preds), "drugs": list(q.drugs), "seconds": seconds, "genes": q.gmap.counts}


def _summary(ranking: pd.DataFrame, rank_by: str, cells: int, drugs: int, seconds: float, out: Path) -> None:
    """The log's last word: each group's first drugs, and how they were ordered."""
    value = value_column(ranking, rank_by)
    first = ranking[ranking["rank"] <= 3].head(15)
    listed = "; ".join(f"{g}: " + ", ".join(f"{d} ({v:+.2f})" if rank_by == "z" else f"{d} ({v:.2f})"
                                           for d, v in zip(part["drug"], part[value]))
                       for g, part in first.groupby("group", sort=False))
    what = ("z against the training lines, most specifically sensitive first" if rank_by == "z"
            else "predicted ln IC50, most potent first")
    log.info("%d cells x %d drugs in %.1fs; ranked by %s: %s. Outputs in %s", cells, drugs, seconds,
             what, listed, out)


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
    new, sim = trained.novelty(wanted)
    describe_new_drugs(trained, wanted, new, sim)
    log.info("predicting %d cells x %d drugs from %s (%s)", h.n_cells, len(wanted), h.path, h.where)
    return Query(h, kind, gmap, groups, wanted, rows, new, sim)


def _predict_cells(trained: Trained, q: Query, work: Path, block_cells: int, rank_by: str
                   ) -> tuple[np.ndarray, pd.DataFrame]:
    """A single-cell model: [cells, drugs] predictions, block by block, the long table streamed
    into predictions.parquet; each group's ranking by its cells' median."""
    kind, cfg, h = trained.cfg.value_kind, trained.cfg, q.h
    names = list(q.drugs)
    preds = np.empty((h.n_cells, len(names)), dtype=np.float32)
    cells = h.obs.index.astype(str).to_numpy()
    spread = trained.spread
    new, sim = q.new, q.similarity
    fields = [("cell", pa.string()), ("group", pa.string()), ("drug", pa.string()), ("ln_ic50", pa.float32())]
    schema = pa.schema(fields + ([("z", pa.float32()), ("percentile", pa.float32())] if spread else [])
                       + [("new_drug", pa.bool_()), ("similarity_to_training", pa.float32())])
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
            long = {"cell": np.repeat(cells[start:start + n], len(names)),
                    "group": np.repeat(q.groups[start:start + n], len(names)),
                    "drug": np.tile(np.array(names, dtype=object), n),
                    "ln_ic50": preds[start:start + n].ravel()}
            long.update(trained.answer(long["drug"], long["ln_ic50"]))
            long.update(new_drug=np.tile(new, n), similarity_to_training=np.tile(sim, n))
            writer.write_table(pa.table(long, schema=schema))
            bar.update(n)
    bar.close()
    if new.any():
        log.warning("a single-cell model predicts its %d new drug(s) with the network alone, without "
                    "an interval (the new-drug predictor serves bulk references)", int(new.sum()))
    ranking = rank_cells(preds, q.groups, names, spread, rank_by)
    flags = pd.DataFrame({"drug": names, "new_drug": new, "similarity_to_training": sim})
    return preds, ranked(ranking.drop(columns="rank").merge(flags, on="drug", how="left"), rank_by)


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


def _predict_groups(trained: Trained, q: Query, work: Path, block_cells: int, rank_by: str
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
                          "drug": np.tile(drug_names, len(names)), "ln_ic50": pred.ravel()})
    x = trained.stack.inputs(aligned, trained.vocab) if trained.stack is not None else None
    scale = aligned_scale(trained, found, centre=len(names) >= 2)
    if trained.stack is not None:
        log.info("%s%s", trained.stack.interval, "" if scale is None else
                 f"; widened to +- {scale:.2f} sd for this file's alignment ({int(found.sum())} genes; the "
                 f"validation lines sent through it), which does not cover what single cells add beyond it")
    group = np.repeat(np.arange(len(names)), len(drug_names))   # the profile of each row
    table = table.assign(**trained.answer(table["drug"], table["ln_ic50"].to_numpy(), x, group, scale=scale))
    table = new_drug_rows(trained, q, table, aligned, scale)
    pred = table["ln_ic50"].to_numpy().reshape(len(names), len(drug_names))
    table["cells"] = np.repeat(cells, len(drug_names))
    write_parquet(pa.Table.from_pandas(table, preserve_index=False), work / "predictions.parquet")
    group_of = {g: i for i, g in enumerate(names)}
    per_cell = pred[[group_of[g] for g in q.groups.astype(str)]].astype(np.float32)
    return per_cell, ranked(table, rank_by)


def new_drug_rows(trained: Trained, q: Query, table: pd.DataFrame, values: np.ndarray,
                  scale: float | None) -> pd.DataFrame:
    """A bulk model's table of groups x drugs (group-major, the query's drugs in order; `values`
    each group's aligned profile), its new drugs predicted by the new-drug predictor, and every row
    flagged: new_drug, similarity_to_training."""
    names, n = list(q.drugs), len(values)
    if q.new.any() and trained.newdrugs is not None:
        fresh = np.flatnonzero(q.new)
        at = (np.arange(n)[:, None] * len(names) + fresh[None]).ravel()
        cols = new_drug_columns(trained, values, np.repeat(np.arange(n), len(fresh)),
                                [q.drugs[names[j]] for j in np.tile(fresh, n)], scale)
        table = pd.DataFrame(newdrugs_mod.fill(table.to_dict("series"), at, cols))
    return table.assign(new_drug=np.tile(q.new, n), similarity_to_training=np.tile(q.similarity, n))


def describe_new_drugs(trained: Trained, drugs: dict[str, str], new: np.ndarray, sim: np.ndarray) -> None:
    """The log's word on each drug new to the model (`new`, `sim`: Trained.novelty of `drugs`): its
    most similar training drugs, and a warning where none is close (FAR: below it, structure told
    nothing beyond the lines' general sensitivity on GDSC2; docs/search.md)."""
    if not new.any():
        return
    nd = trained.newdrugs
    if nd is not None:
        pool, fps = nd.drugs, nd.fingerprints
    else:   # an older checkpoint: the same similarity, from its training drugs' SMILES
        log.warning("this checkpoint predates the new-drug predictor (checkpoint format 9): its %d new "
                    "drug(s) come from the network alone, without an interval, z or percentile; "
                    "rebuild it to predict new drugs from their similarity to the training drugs.",
                    int(new.sum()))
        pool = [d for d in trained.training_drugs() if d in trained.drugs]
        fps = newdrugs_mod.fingerprints([trained.drugs[d] for d in pool])
    for name, is_new, s in zip(drugs, new, sim):
        if not is_new:
            continue
        near = ", ".join(f"{d} {v:.2f}" for d, v in newdrugs_mod.nearest(pool, fps, drugs[name]))
        log.info("new drug %s: most similar training drugs (Tanimoto): %s", name, near)
        if s < newdrugs_mod.FAR:
            log.warning("new drug %s is far from every training drug (similarity %.2f < %.1f): its "
                        "prediction is mostly each sample's general sensitivity; read its rank with "
                        "care", name, s, newdrugs_mod.FAR)


def ranked(table: pd.DataFrame, rank_by: str) -> pd.DataFrame:
    """ranking.csv: each group's drugs from the lowest z (or ln IC50) up, the most specifically
    sensitive (or the most potent) first; a drug without a z (new to a checkpoint before format 9)
    comes last."""
    value = value_column(table, rank_by)
    rank = table.groupby("group")[value].rank(method="first", na_option="bottom").astype(int)
    order = ["z", "z_low", "z_high", "percentile", "ln_ic50", "ln_ic50_low", "ln_ic50_high",
             "median_ln_ic50", "q25", "q75", "iqr", "cells", "new_drug", "similarity_to_training"]
    columns = ["group", "rank", "drug"] + [c for c in order if c in table.columns]
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


def _annotate(path: Path, preds: np.ndarray, names: list[str], spread) -> None:
    """obsm['ln_ic50'] (cells x drugs; with the checkpoint's spread also obsm['ln_ic50_z']) and
    uns['ln_ic50_drugs'] written into the copy in place."""
    io = anndata.io
    items = [("obsm", OUTPUT_KEY, preds), ("uns", OUTPUT_KEY + "_drugs", np.array(names, dtype=object))]
    if spread is not None:
        mean, sd = spread.of(names)
        items.append(("obsm", OUTPUT_KEY + "_z", ((preds - mean) / sd).astype(np.float32)))
    with h5py.File(path, "r+") as f:
        for group in ("obsm", "uns"):
            if group not in f:
                io.write_elem(f, group, {})
        for group, key, value in items:
            if key in f[group]:
                del f[group][key]
            io.write_elem(f[group], key, value)


def rank_cells(preds: np.ndarray, groups: np.ndarray, names: list[str], spread, rank_by: str
               ) -> pd.DataFrame:
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


def plot_ranking(ranking: pd.DataFrame, path: Path, groupby: str) -> None:
    """Heatmap of groups x drugs: z against the training lines (red: more sensitive than they
    are), or predicted ln IC50 where the checkpoint has no z; drugs from the most sensitive
    overall, and with many drugs only those ranked highest in any group."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    relative = "z" in ranking.columns
    value = "z" if relative else value_column(ranking)
    shown = ranking
    if ranking["drug"].nunique() > HEATMAP_DRUGS:
        best = ranking.groupby("drug")["rank"].min().sort_values(kind="stable")
        shown = ranking[ranking["drug"].isin(best.index[:HEATMAP_DRUGS])]
    grid = shown.pivot(index="group", columns="drug", values=value)
    grid = grid[grid.median(axis=0).sort_values().index]
    fig, ax = plt.subplots(figsize=(min(2 + 0.35 * grid.shape[1], 30), min(1.5 + 0.3 * grid.shape[0], 30)))
    if relative:
        top = float(np.nanmax(np.abs(grid.to_numpy()))) if np.isfinite(grid.to_numpy()).any() else 1.0
        im = ax.imshow(grid.to_numpy(), aspect="auto", cmap="RdBu", vmin=-top, vmax=top)
    else:
        im = ax.imshow(grid.to_numpy(), aspect="auto", cmap="viridis_r")
    ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=90, fontsize=7)
    ax.set_yticks(range(grid.shape[0]), grid.index, fontsize=7)
    ax.set_xlabel("drug (most sensitive overall on the left)"
                  + (f"; the {grid.shape[1]} ranked highest in any group" if shown is not ranking else ""))
    ax.set_ylabel(groupby)
    fig.colorbar(im, ax=ax, label="z against the training lines (negative: more sensitive)" if relative
                 else "predicted ln IC50 (uM)")
    ax.set_title("Relative sensitivity per group" if relative else "Predicted drug sensitivity per group")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
