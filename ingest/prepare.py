"""The training data of a run: from the sources (GDSC, then Tahoe cells or bulk profiles), a
merged table or an .h5ad to the table, its gene table and its token store, on rank 0 while the
other ranks wait.

    GDSC combine -> match Tahoe metadata to GDSC -> downsample labelled cells -> merge
    GDSC combine -> the bulk reference (--expression)
    --data TABLE or --data cells.h5ad: used as given (an .h5ad converted once)
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

import config
import dist
import downsample
from common import PipelineError, write_json, write_parquet
from config import Config
from ingest import bulk, gdsc, h5ad, merge, split, store, table, tahoe

log = logging.getLogger("ic50")
STAGES = ("gdsc", "downsample", "merge", "train")


@dataclass(frozen=True)
class Actions:
    """What this invocation does, beside the settings (never saved in config.yaml)."""
    resume: bool = False          # continue the interrupted run in <out>.incomplete
    stop_after: str = "train"     # the last stage to run
    shard_index: int = 0          # this SLURM array task's slice of the Tahoe shards


@dataclass
class Prepared:
    """What training reads: the table (a merged table or a reference's pairs, as a parquet path);
    every row's tokens, drug and label in the token store; drug name -> SMILES; the gene table
    that names its token ids; and, on rank 0 only, the table's key columns in memory (for the
    split and the report)."""
    source: Path
    store: store.TokenStore
    drugs: dict[str, str]
    genes: pd.DataFrame | None = None
    keys: pa.Table | None = None


def prepare(cfg: Config, act: Actions, work: Path) -> Prepared | None:
    """Rank 0 readies the training table, its gene table and its token store while the other
    ranks wait, then reads the table's key columns (never its expression); every rank maps the
    store. None when the run stops before training."""
    built = dist.on_main(lambda: _build(cfg, act, work))
    if built is None:
        return None
    source, genes, built_store = built
    held = {}

    def read_keys() -> dict[str, str]:   # a bad table stops every rank, not only rank 0
        keys = table.read_keys(source)
        drugs = table.drug_smiles(keys)
        held["keys"] = keys.drop_columns(["canonical_smiles"])   # the split and report need no SMILES
        return drugs
    drugs = dist.on_main(read_keys)
    return Prepared(source, store.TokenStore(built_store), drugs, genes, held.get("keys"))


def _build(cfg: Config, act: Actions, work: Path) -> tuple[Path, pd.DataFrame | None, Path] | None:
    """Rank 0: the training table (given with --data, left by an interrupted run, converted from
    an .h5ad, or prepared from the sources), its gene table (--gene-table, the .h5ad's var, a
    reference's, or the Tahoe source's) and its token store (beside the table when a preparation
    run left one there, else built in this run's directory)."""
    genes = table.load_gene_table(cfg.gene_table) if cfg.gene_table else None
    merged = work / "merged.parquet"
    prepared = merged if not cfg.expression else work / "pairs.parquet"
    if h5ad.is_h5ad(cfg.data):
        if not merged.exists():   # a resumed run has it already
            cells, from_var = h5ad.read_merged(cfg.data, config.of_stage(cfg, "convert"))
            write_parquet(pa.Table.from_pandas(from_var, preserve_index=False), work / "gene_table.parquet")
            write_parquet(cells, merged, row_group_size=table.ROW_GROUP)
        source = merged
        genes = genes if genes is not None else table.load_gene_table(work / "gene_table.parquet")
    elif cfg.data:
        table.merged_columns(cfg.data)
        source = Path(cfg.data)
    elif act.resume and prepared.exists():
        log.info("resuming: data preparation is done, reading %s", prepared)
        source = prepared
    else:
        source = _from_sources(cfg, act, work)
    if source is None:
        return None
    beside = source.parent / "gene_table.parquet"   # a reference's, written with it
    if genes is None and table.profiles_path(source) and beside.exists():
        genes = table.load_gene_table(beside)
    if genes is None and not cfg.data and not cfg.expression:
        try:
            genes = table.check_gene_table(tahoe.TahoeSource(cfg.tahoe).metadata("gene"), cfg.tahoe)
        except PipelineError as e:
            log.warning("%s The checkpoint will not name its genes; pass --gene-table to predict on "
                        ".h5ad files.", e)
    tokens = store.build(source, work / "tokens", value_kind=cfg.model.value_kind, top_k=cfg.model.top_k,
                         also=(source.parent / "tokens",))
    return None if act.stop_after == "merge" else (source, genes, tokens)


def _from_sources(cfg: Config, act: Actions, run_dir: Path) -> Path | None:
    """GDSC combine -> match Tahoe metadata to GDSC -> downsample labelled cells -> merge; or, with
    --expression, GDSC combine -> the bulk reference. The table's path (None when the run stops
    before it)."""
    combined, counts = gdsc.combine(*cfg.gdsc_files(), cfg.ic50_average)
    gdsc.save(combined, run_dir / "gdsc_combined.parquet")
    write_json(counts, run_dir / "gdsc_counts.json")
    if act.stop_after == "gdsc":
        return None
    if cfg.expression:   # bulk profiles: a reference of one profile per line, pairs apart
        return bulk.prepare(cfg.expression, cfg.smiles_table, cfg.model.value_kind,
                            cfg.identifier_tables()[1], combined, run_dir)
    source = tahoe.TahoeSource(cfg.tahoe)
    compounds, models = cfg.identifier_tables()
    matches = merge.match(
        source.metadata("drug"), source.metadata("cell_line"), combined,
        compounds=merge.load_compounds(compounds) if compounds else None,
        models=merge.load_model_list(models) if models else None,
        overrides=merge.load_overrides(cfg.match_overrides) if cfg.match_overrides else None)
    matches.report.to_csv(run_dir / "match_report.csv", index=False)
    pairs = merge.labelled_pairs(matches, combined)
    pairs.to_csv(run_dir / "labelled_pairs.csv", index=False)
    cells_path = run_dir / "cells.parquet"
    parts_dir = Path(cfg.parts_dir) if cfg.parts_dir else run_dir / "downsample_parts"
    summary = downsample.downsample(
        source, zip(pairs["drug"], pairs["cell_line_id"]), cells_per_group=cfg.cells_per_group,
        fraction=cfg.fraction, seed=cfg.seed, out=cells_path, parts_dir=parts_dir,
        num_workers=cfg.num_workers, shard_index=act.shard_index, num_shards=cfg.num_shards,
        on_bad_shard=cfg.on_bad_shard)
    write_json(summary, run_dir / "downsample_summary.json")
    if not summary["complete"] or act.stop_after == "downsample":
        return None
    merged = table.with_value_kind(merge.attach_labels(pq.read_table(cells_path), pairs), "counts")
    write_parquet(merged, run_dir / "merged.parquet", row_group_size=table.ROW_GROUP)
    cells_path.unlink()  # merged.parquet holds the same cells, labelled
    if not cfg.parts_dir:
        shutil.rmtree(parts_dir)  # only needed to resume an interrupted scan
    return run_dir / "merged.parquet"


def check_inputs(cfg: Config, act: Actions) -> split.SplitFile | None:
    """Fail before any work on paths that do not exist, and on a split file that cannot be right
    (against the table's names with --data, read then once for the run; other sources' names are
    known once prepared)."""
    for flag, path in (("--gene-table", cfg.gene_table), ("--smiles-table", cfg.smiles_table)):
        if path and not Path(path).exists():
            raise PipelineError(f"input file not found: '{path}' ({flag}).")
    if cfg.split_file:
        split.check_split_file(Path(cfg.split_file))
    if cfg.data:
        if not Path(cfg.data).exists():
            raise PipelineError(f"merged table not found: '{cfg.data}' (--data).")
        if cfg.expression:
            raise PipelineError("--data and --expression are two sources of training data; give one.")
        return split.given_folds(cfg, table.read_keys(cfg.data)) if cfg.split_file else None
    if cfg.expression and not cfg.smiles_table:
        raise PipelineError("--expression needs --smiles-table: a CSV of name,smiles giving each GDSC "
                            "drug's structure (GDSC's own files hold none).")
    if cfg.expression and act.stop_after == "downsample":
        raise PipelineError("--stop-after downsample does not apply to --expression (nothing is "
                            "downsampled); stop after gdsc or merge.")
    compounds, models = cfg.identifier_tables()
    gdsc1, gdsc2 = cfg.gdsc_files()
    for flag, path in (("--gdsc1", gdsc1), ("--gdsc2", gdsc2), ("--expression", cfg.expression),
                       ("--gdsc-compounds", compounds), ("--cell-model-list", models),
                       ("--match-overrides", cfg.match_overrides)):
        if path and not Path(path).exists():
            raise PipelineError(f"input file not found: '{path}' ({flag}).")
    return None


def resolved(cfg: Config) -> Config:
    """The settings with value_kind resolved, once for the run: a bulk matrix holds normalised
    values (log-TPM, RMA); a table or .h5ad what it declares, else counts (Tahoe)."""
    if cfg.expression:
        kind = bulk.value_kind(cfg.model.value_kind)
    else:
        declared = h5ad.value_kind_of(cfg.data) if cfg.data else None
        kind = table.resolve_value_kind(cfg.model.value_kind, declared, cfg.data)
    return cfg.with_model(value_kind=kind)
