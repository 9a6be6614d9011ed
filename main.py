"""Predict drug sensitivity (ln IC50) from single-cell expression and drug structure.

    python main.py                         # the whole study on the embedded demo data
    python main.py --config configs/paper.yaml --tahoe tahoebio/Tahoe-100M \\
        --gdsc1 GDSC1_fitted_dose_response_27Oct23.xlsx --gdsc2 GDSC2_fitted_dose_response_27Oct23.xlsx
    python main.py --data merged.parquet   # train on an existing merged table
    python main.py --expression depmap.csv --gdsc2 GDSC2.xlsx --smiles-table drugs.csv   # bulk profiles
    python main.py predict --checkpoint runs/X/best.pt --data new_cells.parquet
    python main.py predict --checkpoint runs/X/best.pt --data cells.h5ad --groupby sample
    python main.py convert merged.parquet cells.h5ad   # and back; --data cells.h5ad trains on it
    torchrun --nproc_per_node 4 main.py --data merged.parquet   # data-parallel training

Stages, each one call into one module: gdsc.combine -> merge.match -> downsample.downsample ->
merge.attach_labels (or, from bulk profiles, bulk.prepare) -> tokens.build -> data.make_split ->
train.train -> evaluate.report; predict.py for `main.py predict`. Everything a run writes goes to
one run directory, which is named <out>.incomplete until the run succeeds.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

import bulk
import config as config_mod
import data
import dist
import downsample
import evaluate
import gdsc
import h5ad
import merge
import predict
import relative
import tokens
import train
from common import PipelineError, atomic_path, report_error, setup_logging, write_json, write_parquet
from config import Config

log = logging.getLogger("ic50")
STAGES = ("gdsc", "downsample", "merge", "train")


@dataclass(frozen=True)
class Actions:
    """What this invocation does, beside the settings (never saved in config.yaml)."""
    resume: bool = False          # continue the interrupted run in <out>.incomplete
    stop_after: str = "train"     # the last stage to run
    shard_index: int = 0          # this SLURM array task's slice of the Tahoe shards


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="main.py", description=__doc__.split("\n\n")[0],
        epilog="Settings come from the defaults, then --config YAML, then the flags given here. "
               "The resolved settings are saved as config.yaml in the run directory. "
               "To predict with a trained model: python main.py predict --help; to convert between a "
               "merged table and .h5ad: python main.py convert --help.")
    p.add_argument("--config", metavar="YAML", help="YAML file of settings (e.g. configs/paper.yaml)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every epoch and more detail")
    act = p.add_argument_group("actions (this run only, not settings)")
    act.add_argument("--resume", action="store_true", help="Continue the interrupted run in "
                     "<out>.incomplete: shards already scanned are not scanned again, training goes on "
                     "from its last epoch.")
    act.add_argument("--stop-after", choices=STAGES, default="train", help="Last stage to run "
                     "(default: train).")
    act.add_argument("--shard-index", type=int, default=0, metavar="INT", help="This SLURM array "
                     "task's slice of the shards, with --num-shards (e.g. $SLURM_ARRAY_TASK_ID).")
    config_mod.add_arguments(p)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- the data

@dataclass
class Prepared:
    """What training reads: the table (a merged table or a reference's pairs, as a parquet path);
    every row's tokens, drug and label in the token store; drug name -> SMILES; the gene table
    that names its token ids; and, on rank 0 only, the table's key columns in memory (for the
    split and the report)."""
    source: Path
    store: tokens.TokenStore
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
    source, genes, store = built
    held = {}

    def read_keys() -> dict[str, str]:   # a bad table stops every rank, not only rank 0
        keys = data.read_keys(source)
        drugs = data.drug_smiles(keys)
        held["keys"] = keys.drop_columns(["canonical_smiles"])   # the split and report need no SMILES
        return drugs
    drugs = dist.on_main(read_keys)
    return Prepared(source, tokens.TokenStore(store), drugs, genes, held.get("keys"))


def _build(cfg: Config, act: Actions, work: Path) -> tuple[Path, pd.DataFrame | None, Path] | None:
    """Rank 0: the training table (given with --data, left by an interrupted run, converted from
    an .h5ad, or prepared from the sources), its gene table (--gene-table, the .h5ad's var, a
    reference's, or the Tahoe source's) and its token store (beside the table when a preparation
    run left one there, else built in this run's directory)."""
    genes = data.load_gene_table(cfg.gene_table) if cfg.gene_table else None
    merged = work / "merged.parquet"
    prepared = merged if not cfg.expression else work / "pairs.parquet"
    if h5ad.is_h5ad(cfg.data):
        if not merged.exists():   # a resumed run has it already
            table, from_var = h5ad.read_merged(cfg.data, cfg)
            write_parquet(pa.Table.from_pandas(from_var, preserve_index=False), work / "gene_table.parquet")
            write_parquet(table, merged, row_group_size=data.ROW_GROUP)
        source = merged
        genes = genes if genes is not None else data.load_gene_table(work / "gene_table.parquet")
    elif cfg.data:
        data.merged_columns(cfg.data)
        source = Path(cfg.data)
    elif act.resume and prepared.exists():
        log.info("resuming: data preparation is done, reading %s", prepared)
        source = prepared
    else:
        source = _from_sources(cfg, act, work)
    if source is None:
        return None
    beside = source.parent / "gene_table.parquet"   # a reference's, written with it
    if genes is None and data.profiles_path(source) and beside.exists():
        genes = data.load_gene_table(beside)
    if genes is None and not cfg.data and not cfg.expression:
        try:
            genes = data.check_gene_table(downsample.TahoeSource(cfg.tahoe).metadata("gene"), cfg.tahoe)
        except PipelineError as e:
            log.warning("%s The checkpoint will not name its genes; pass --gene-table to predict on "
                        ".h5ad files.", e)
    store = tokens.build(source, work / "tokens", value_kind=cfg.value_kind, top_k=cfg.top_k,
                         also=(source.parent / "tokens",))
    return None if act.stop_after == "merge" else (source, genes, store)


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
        return bulk.prepare(cfg, combined, run_dir)
    source = downsample.TahoeSource(cfg.tahoe)
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
    merged = data.with_value_kind(merge.attach_labels(pq.read_table(cells_path), pairs), "counts")
    write_parquet(merged, run_dir / "merged.parquet", row_group_size=data.ROW_GROUP)
    cells_path.unlink()  # merged.parquet holds the same cells, labelled
    if not cfg.parts_dir:
        shutil.rmtree(parts_dir)  # only needed to resume an interrupted scan
    return run_dir / "merged.parquet"


# ----------------------------------------------------------------------------- the runs

def split_rows(cfg: Config, prep: Prepared, run_dir: Path, fold: int) -> tuple[dict, relative.DrugSpread]:
    """Rank 0's part of a split: split.parquet, and every part's rows laid end to end in
    split_rows.npy, which every rank maps instead of holding the row lists; the part sizes, and
    each drug's spread over its training pairs (what predictions are set against)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    split = data.make_split(prep.keys, cfg.split, cfg.seed, val_frac=cfg.val_frac,
                            test_frac=cfg.test_frac, fold=fold, n_folds=cfg.folds)
    rows = {p: np.flatnonzero(split == p) for p in data.PARTS}
    data.write_split(prep.keys, split, run_dir / "split.parquet")
    del split
    with atomic_path(run_dir / "split_rows.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, np.concatenate([rows[p] for p in data.PARTS]))
    pair = data.group_ids(prep.keys, ["drug", "cell_line_id"])[rows["train"]]
    spread = relative.DrugSpread.fit(evaluate.pair_labels(prep.keys, rows["train"], pair))
    return data.summarise_split(prep.keys, rows), spread


def train_and_evaluate(cfg: Config, act: Actions, prep: Prepared, run_dir: Path, fold: int = 0) -> dict:
    """One split, one model: split -> train -> test predictions -> metrics, plots, report."""
    sizes, spread = dist.on_main(lambda: split_rows(cfg, prep, run_dir, fold))
    mapped = np.load(run_dir / "split_rows.npy", mmap_mode="r")
    ends = np.cumsum([sizes[p]["cells"] for p in data.PARTS])
    rows = {p: mapped[end - sizes[p]["cells"]:end] for p, end in zip(data.PARTS, ends)}
    log.info("split %r (seed %d%s): %s", cfg.split, cfg.seed, f", fold {fold + 1}/{cfg.folds}"
             if cfg.folds > 1 else "", "; ".join(f"{p} {s['cells']} cells / {s['pairs']} pairs"
                                                 for p, s in sizes.items()))
    if cfg.split == "random":
        log.warning("split 'random' assigns CELLS at random: every test pair is also in training, "
                    "so test metrics measure memorisation, not prediction.")
    trained = train.train(cfg, prep.store, rows, drugs=prep.drugs, run_dir=run_dir, resume=act.resume,
                          gene_table=prep.genes, spread=spread)
    pred = trained.predict(trained.features(prep.store, rows["test"]))
    reference = data.profiles_path(prep.source) is not None   # its predictor: the stack (stack.py)
    val_pred = trained.predict(trained.features(prep.store, rows["val"])) if reference else None
    if not dist.is_main():
        return {}
    query = np.concatenate([rows["val"], rows["test"]]) if reference else rows["test"]
    design = evaluate.design_of(prep.source, prep.keys, rows["train"], query, value_kind=cfg.value_kind,
                                seed=cfg.seed)
    if reference:
        trained.stack = evaluate.fit_stack(design, prep.keys, rows["val"], val_pred)
        train.save_stack(run_dir / "best.pt", trained.stack)
    metrics = evaluate.report(cfg, trained, design=design, keys=prep.keys, rows=rows, pred=pred,
                              run_dir=run_dir, fold=fold, sizes=sizes)
    (run_dir / "last.pt").unlink(missing_ok=True)  # resume state; best.pt is the result
    return metrics


def train_runs(cfg: Config, act: Actions, prep: Prepared, work: Path) -> dict:
    """One run, or one per seed and fold in subdirectories, then their mean ± sd."""
    seeds = cfg.seeds or [cfg.seed]
    folds = list(range(cfg.folds)) if cfg.folds > 1 else [0]
    if len(seeds) == 1 and len(folds) == 1:
        return train_and_evaluate(dataclasses.replace(cfg, seed=seeds[0]), act, prep, work)
    results = {}
    for seed in seeds:
        for fold in folds:
            name = f"seed-{seed}" + (f"-fold-{fold}" if len(folds) > 1 else "")
            sub = work / name
            if (sub / "metrics.json").exists():  # finished before an interruption
                results[name] = json.loads((sub / "metrics.json").read_text())
                continue
            log.info("run %s (%d of %d)", name, len(results) + 1, len(seeds) * len(folds))
            results[name] = train_and_evaluate(dataclasses.replace(cfg, seed=seed), act, prep, sub, fold)
    return evaluate.report_runs(results, work, seeds=seeds, folds=cfg.folds) if dist.is_main() else {}


# ----------------------------------------------------------------------------- the run directory

def new_run_dir(out: str | None, resume: bool) -> tuple[Path, Path]:
    """The final run directory and the `.incomplete` one the run works in until it succeeds.

    Under torchrun, rank 0 names and creates them and the other ranks follow.
    """
    name = None
    if dist.is_main():
        final = Path(out) if out else Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
        work = final.with_name(final.name + ".incomplete")
        problem = None
        if final.exists():
            problem = f"run directory '{final}' already exists; pass another --out."
        elif work.exists() and not resume:
            problem = (f"an interrupted run is in '{work}': pass --resume (with the same --out) to "
                       f"continue it, or delete it to start over.")
        elif resume and not work.exists():
            problem = f"--resume: there is no interrupted run '{work}' to continue."
        else:
            work.mkdir(parents=True, exist_ok=True)
        name = (str(final), problem)
    name = dist.broadcast(name)
    if name[1]:
        raise PipelineError(name[1])
    final = Path(name[0])
    return final, final.with_name(final.name + ".incomplete")


def resumable(work: Path) -> bool:
    """Whether a failed run left work worth resuming (scanned shards, a checkpoint)."""
    return (any(work.rglob("last.pt")) or (work / "merged.parquet").exists()
            or (work / "pairs.parquet").exists()
            or any((work / "tokens").glob("*/meta.json"))
            or any((work / "downsample_parts").rglob("*.part.parquet")))


def check_inputs(cfg: Config, act: Actions) -> None:
    """Fail before any work on paths that do not exist."""
    for flag, path in (("--gene-table", cfg.gene_table), ("--smiles-table", cfg.smiles_table)):
        if path and not Path(path).exists():
            raise PipelineError(f"input file not found: '{path}' ({flag}).")
    if cfg.data:
        if not Path(cfg.data).exists():
            raise PipelineError(f"merged table not found: '{cfg.data}' (--data).")
        if cfg.expression:
            raise PipelineError("--data and --expression are two sources of training data; give one.")
        return
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


@contextlib.contextmanager
def run_directory(cfg: Config, resume: bool) -> Iterator[tuple[Path, Path]]:
    """(final, work): the run works in <out>.incomplete, logged into, and renamed to <out> when
    it succeeds; a failed run's directory is removed unless it holds work worth resuming. Under
    torchrun rank 0 looks after the directory and the other ranks only follow."""
    final, work = new_run_dir(cfg.out, resume)
    lead = dist.is_main()
    if lead:
        setup_logging(logging.getLogger().level, work / "log.txt")
        config_mod.save_yaml(cfg, work / "config.yaml")
        log.info("run directory: %s (written as %s until the run completes)", final, work.name)
    try:
        yield final, work
    except BaseException:
        if lead and resumable(work):
            log.error("partial results kept in %s; rerun with --resume --out %s to continue", work, final)
        elif lead:
            shutil.rmtree(work, ignore_errors=True)
        raise
    if lead:
        work.rename(final)
        setup_logging(logging.getLogger().level, final / "log.txt")


def run(cfg: Config, act: Actions = Actions()) -> Path:
    t0 = time.perf_counter()
    dist.init(cfg.device, cfg.dist_timeout_min)
    if not dist.is_main():
        logging.getLogger().setLevel(logging.WARNING)
    if not 0 <= act.shard_index < cfg.num_shards:
        raise PipelineError(f"--shard-index must be in [0, {cfg.num_shards}) (--num-shards), got "
                            f"{act.shard_index}.")
    check_inputs(cfg, act)
    kind = ("normalised" if cfg.expression and cfg.value_kind == "auto"   # bulk matrices: log-TPM, RMA
            else data.resolve_value_kind(cfg.value_kind, h5ad.value_kind_of(cfg.data) if cfg.data else None,
                                         cfg.data))
    cfg = dataclasses.replace(cfg, value_kind=kind)
    with run_directory(cfg, act.resume) as (final, work):
        prep = prepare(cfg, act, work)
        metrics = train_runs(cfg, act, prep, work) if prep is not None else None
    minutes = (time.perf_counter() - t0) / 60
    if prep is None:
        what = (f"array task {act.shard_index}/{cfg.num_shards} scanned its shards into "
                f"{cfg.parts_dir}" if cfg.num_shards > 1 else f"stopped after stage {act.stop_after!r}")
        log.info("%s; outputs in %s (%.1f min)", what, final, minutes)
    elif metrics:   # rank 0: the others return no metrics
        print(f"\ntest set, {cfg.split} split" + (f", mean over {len(metrics['runs'])} runs"
                                                   if "runs" in metrics else "") + ":")
        print(evaluate.format_table(metrics) + "\n")
        print(metrics["verdict"]["text"].replace("**", "") + "\n")
        log.info("done in %.1f min; results in %s (report.md, metrics.json, predictions.parquet, "
                 "best.pt)", minutes, final)
    return final


ANNDATA_FLAGS = ("layer", "gene_column", "gene_table", "min_gene_fraction")


def predict_command(argv: list[str]) -> int:
    """python main.py predict --checkpoint RUN/best.pt --data TABLE_OR_H5AD [...]"""
    p = argparse.ArgumentParser(
        prog="main.py predict", description="Predict ln IC50 with a trained checkpoint. A merged "
        "table or a reference's pairs.parquet (LN_IC50 optional) gets one prediction per row, for the "
        "row's own drug. An AnnData file (.h5ad) gets one per cell and drug: its genes (symbols or "
        "Ensembl ids) are mapped onto the model's vocabulary with the gene names the checkpoint "
        "carries, and the drugs are ranked per --groupby group. A model trained on bulk profiles "
        "predicts each group from its cells' mean, aligned to the training profiles (raw counts or "
        "normalised values alike). Drugs the checkpoint has not seen are encoded with the encoder "
        "it was trained with.")
    p.add_argument("--checkpoint", required=True, help="best.pt of a run")
    p.add_argument("--data", required=True, help="merged table (.parquet) or AnnData (.h5ad) of cells")
    p.add_argument("--out", help="a .parquet input: output parquet (default: <data>_predictions.parquet "
                   "beside it); an .h5ad input: a new output directory (default: <data>_ln_ic50/ beside it)")
    p.add_argument("--drugs", nargs="+", metavar="NAME", help=".h5ad: the drugs to predict (default: "
                   "every drug the checkpoint knows, and those of --smiles)")
    p.add_argument("--smiles", metavar="CSV", help=".h5ad: name,smiles of drugs new to the checkpoint")
    p.add_argument("--groupby", metavar="OBS_COLUMN", help=".h5ad: rank the drugs per group of this obs "
                   "column (sample, patient, cluster); default: all cells together. A bulk model "
                   "predicts each group's mean profile and ranks groups against each other")
    p.add_argument("--rank-by", choices=predict.RANK_BY, default="z", help=".h5ad: order each group's "
                   "drugs by z, the prediction against the drug's training lines, most specifically "
                   "sensitive first (default); or by predicted ln IC50, which puts the drugs potent "
                   "against every line first for every group")
    p.add_argument("--block-cells", type=int, default=8192, help=".h5ad: cells read and predicted at a "
                   "time; memory grows with it, not with the file (default: 8192)")
    config_mod.add_arguments(p, ANNDATA_FLAGS)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("-v", "--verbose", action="store_true", help="log more detail, and the cause of an error")
    args = p.parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        trained = train.Trained.load(args.checkpoint, dist.pick_device(args.device))
        if h5ad.is_h5ad(args.data):
            cfg = config_mod.resolve(args)
            data_path = Path(args.data)
            out = Path(args.out) if args.out else data_path.with_name(data_path.stem + "_ln_ic50")
            predict.predict_h5ad(
                trained, args.data, out,
                drugs=args.drugs, smiles_csv=args.smiles, groupby=args.groupby, layer=cfg.layer,
                gene_column=cfg.gene_column, min_fraction=cfg.min_gene_fraction,
                gene_table=data.load_gene_table(cfg.gene_table) if cfg.gene_table else None,
                block_cells=max(1, args.block_cells), rank_by=args.rank_by)
            return 0
        h5ad_only = [f for f, v in (("--drugs", args.drugs), ("--smiles", args.smiles),
                                    ("--groupby", args.groupby), ("--rank-by", args.rank_by != "z")) if v]
        if h5ad_only:
            raise PipelineError(f"{', '.join(h5ad_only)} apply to .h5ad input; a merged table is "
                                f"predicted for each row's own drug.")
        predict.predict_table(trained, args.data, args.out)
        return 0
    except PipelineError as e:
        return report_error(log, e)


def convert_command(argv: list[str]) -> int:
    """python main.py convert SRC DST: a merged table (.parquet) to AnnData (.h5ad), or back."""
    p = argparse.ArgumentParser(
        prog="main.py convert", description="Convert a merged table (.parquet) to AnnData (.h5ad) or "
        "back. To .h5ad: X holds the table's values (cells x genes, sparse), var the token ids (and "
        "gene symbols and Ensembl ids with --gene-table), obs the other columns, uns the value kind. "
        "From .h5ad: obs columns and genes are read as for training (--drug-column, ...).")
    p.add_argument("src", help="merged.parquet or cells.h5ad")
    p.add_argument("dst", help="cells.h5ad or merged.parquet (must not exist)")
    config_mod.add_arguments(p, ANNDATA_FLAGS + ("value_kind", "drug_column", "cell_line_column",
                                                 "label_column", "smiles_column", "smiles_table"))
    p.add_argument("-v", "--verbose", action="store_true", help="log more detail, and the cause of an error")
    args = p.parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        h5ad.convert(args.src, args.dst, config_mod.resolve(args))
        return 0
    except PipelineError as e:
        return report_error(log, e)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["predict"]:
        return predict_command(argv[1:])
    if argv[:1] == ["convert"]:
        return convert_command(argv[1:])
    args = parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        run(config_mod.resolve(args), Actions(args.resume, args.stop_after, args.shard_index))
        dist.barrier()   # leave together: tearing down a group in use can abort
        return 0
    except PipelineError as e:
        return report_error(log, e)
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    finally:
        dist.close()


if __name__ == "__main__":
    sys.exit(main())
