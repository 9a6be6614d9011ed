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
merge.attach_labels (or, from bulk profiles, bulk.prepare) -> data.make_split -> train.train ->
evaluate.evaluate; predict.py for `main.py predict`. Everything a run writes goes to one run
directory, which is named <out>.incomplete until the run succeeds.
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
import torch

import bulk
import config as config_mod
import data
import downsample
import evaluate
import gdsc
import h5ad
import merge
import predict
import tokens
import train
from common import PipelineError, atomic_path, report_error, setup_logging, write_json, write_parquet
from config import Config
from data import Tokens
from model import count_parameters

log = logging.getLogger("ic50")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="main.py", description=__doc__.split("\n\n")[0],
        epilog="Settings come from the defaults, then --config YAML, then the flags given here. "
               "The resolved settings are saved as config.yaml in the run directory. "
               "To predict with a trained model: python main.py predict --help; to convert between a "
               "merged table and .h5ad: python main.py convert --help.")
    p.add_argument("--config", metavar="YAML", help="YAML file of settings (e.g. configs/paper.yaml)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every epoch and more detail")
    config_mod.add_arguments(p)
    return p.parse_args(argv)


def prepare_data(cfg: Config, run_dir: Path) -> Path | None:
    """GDSC combine -> match Tahoe metadata to GDSC -> downsample labelled cells -> merge; the
    merged table's path (None when the run stops before it). With --expression: GDSC combine ->
    the bulk reference (its pairs table's path)."""
    combined, counts = gdsc.combine(*cfg.gdsc_files(), cfg.ic50_average)
    gdsc.save(combined, run_dir / "gdsc_combined.parquet")
    write_json(counts, run_dir / "gdsc_counts.json")
    if cfg.stop_after == "gdsc":
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
        num_workers=cfg.num_workers, shard_index=cfg.shard_index, num_shards=cfg.num_shards,
        on_bad_shard=cfg.on_bad_shard)
    write_json(summary, run_dir / "downsample_summary.json")
    if not summary["complete"] or cfg.stop_after == "downsample":
        return None
    merged = data.with_value_kind(merge.attach_labels(pq.read_table(cells_path), pairs), "counts")
    write_parquet(merged, run_dir / "merged.parquet", row_group_size=data.ROW_GROUP)
    cells_path.unlink()  # merged.parquet holds the same cells, labelled
    if not cfg.parts_dir:
        shutil.rmtree(parts_dir)  # only needed to resume an interrupted scan
    return run_dir / "merged.parquet"


@dataclass
class Prepared:
    """What training reads: the merged table (a parquet path); its tokens, drugs and labels in
    the token store; drug name -> SMILES; the gene table that names its token ids; and, on rank 0
    only, the table's key columns in memory (for the split and the report)."""
    source: Path
    tokens: Tokens
    drugs: dict[str, str]
    genes: pd.DataFrame | None = None
    keys: pa.Table | None = None


def split_rows(cfg: Config, prep: Prepared, run_dir: Path, fold: int) -> dict:
    """Rank 0's part of a split: split.parquet, and every part's rows laid end to end in
    split_rows.npy, which every rank maps instead of holding the row lists."""
    run_dir.mkdir(parents=True, exist_ok=True)
    split = data.make_split(prep.keys, cfg.split, cfg.seed, val_frac=cfg.val_frac,
                            test_frac=cfg.test_frac, fold=fold, n_folds=cfg.folds)
    rows = {p: np.flatnonzero(split == p) for p in data.PARTS}
    data.write_split(prep.keys, split, run_dir / "split.parquet")
    del split
    with atomic_path(run_dir / "split_rows.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, np.concatenate([rows[p] for p in data.PARTS]))
    return data.summarise_split(prep.keys, rows)


def train_and_evaluate(cfg: Config, prep: Prepared, run_dir: Path, fold: int = 0) -> dict:
    """One split, one model: split -> train -> test predictions -> metrics, plots, report."""
    sizes = train.on_main(lambda: split_rows(cfg, prep, run_dir, fold))
    mapped = np.load(run_dir / "split_rows.npy", mmap_mode="r")
    ends = np.cumsum([sizes[p]["cells"] for p in data.PARTS])
    rows = {p: mapped[end - sizes[p]["cells"]:end] for p, end in zip(data.PARTS, ends)}
    log.info("split %r (seed %d%s): %s", cfg.split, cfg.seed, f", fold {fold + 1}/{cfg.folds}"
             if cfg.folds > 1 else "", "; ".join(f"{p} {s['cells']} cells / {s['pairs']} pairs"
                                                 for p, s in sizes.items()))
    if cfg.split == "random":
        log.warning("split 'random' assigns CELLS at random: every test pair is also in training, "
                    "so test metrics measure memorisation, not prediction.")

    trained = train.train(cfg, prep.tokens, rows, drugs=prep.drugs, run_dir=run_dir,
                          resume=cfg.resume, gene_table=prep.genes)
    pred = trained.predict(trained.features(prep.tokens, rows["test"]))
    if not train.is_main():
        return {}
    return report(cfg, prep, trained, rows=rows, pred=pred, run_dir=run_dir, fold=fold, sizes=sizes)


def report(cfg: Config, prep: Prepared, trained: train.Trained, *, rows: dict[str, np.ndarray],
           pred: np.ndarray, run_dir: Path, fold: int, sizes: dict) -> dict:
    """Rank 0: predictions.parquet, the baselines on the same test rows, metrics.json, plots, report."""
    cols = [c for c in ("drug", "cell_line_id", "dose_uM", "LN_IC50") if c in prep.keys.column_names]
    test_keys = data.plain(prep.keys.select(cols).take(pa.array(rows["test"]))).to_pandas()
    preds = test_keys.assign(row=rows["test"], prediction=pred)[["row", *cols, "prediction"]]
    write_parquet(pa.Table.from_pandas(preds, preserve_index=False), run_dir / "predictions.parquet")

    drug_rows = trained.rows_of(trained.drugs)
    vectors = {d: trained.drug_table[i].cpu().numpy() for d, i in drug_rows.items()}
    pair = data.group_ids(prep.keys, ["drug", "cell_line_id"])
    train_pairs = evaluate.pair_labels(prep.keys, rows["train"], pair[rows["train"]])
    del pair
    design = evaluate.design_of(prep.source, prep.keys, rows["train"], rows["test"],
                                value_kind=cfg.value_kind, seed=cfg.seed)
    result = evaluate.evaluate(train_pairs, test_keys, pred, drug_vectors=vectors, seed=cfg.seed,
                               design=design)
    metrics = {"split": cfg.split, "seed": cfg.seed, "fold": fold if cfg.folds > 1 else None,
               "parts": sizes, **result, "drug_encoder": trained.drug_encoder,
               "best_epoch": trained.best_epoch, "epochs_run": len(trained.history),
               "parameters": count_parameters(trained.model),
               "history": trained.history}
    metrics["verdict"] = evaluate.verdict(metrics)
    write_json(metrics, run_dir / "metrics.json")
    evaluate.plot_loss(trained.history, trained.best_epoch, run_dir / "loss_curve.png")
    evaluate.plot_pairs(preds, run_dir / "pred_vs_measured.png", f"test pairs, {cfg.split} split")
    evaluate.plot_per_drug(metrics, run_dir / "per_drug_pearson.png")
    evaluate.write_report(run_dir, metrics)
    (run_dir / "last.pt").unlink(missing_ok=True)  # resume state; best.pt is the result
    return metrics


def train_runs(cfg: Config, prep: Prepared, work: Path) -> dict:
    """One run, or one per seed and fold in subdirectories, then their mean ± sd."""
    seeds = cfg.seeds or [cfg.seed]
    folds = list(range(cfg.folds)) if cfg.folds > 1 else [0]
    if len(seeds) == 1 and len(folds) == 1:
        return train_and_evaluate(dataclasses.replace(cfg, seed=seeds[0]), prep, work)
    results = {}
    for seed in seeds:
        for fold in folds:
            name = f"seed-{seed}" + (f"-fold-{fold}" if len(folds) > 1 else "")
            sub = work / name
            if (sub / "metrics.json").exists():  # finished before an interruption
                results[name] = json.loads((sub / "metrics.json").read_text())
                continue
            log.info("run %s (%d of %d)", name, len(results) + 1, len(seeds) * len(folds))
            results[name] = train_and_evaluate(dataclasses.replace(cfg, seed=seed), prep, sub, fold)
    if not train.is_main():
        return {}
    summary = evaluate.aggregate(results)
    first = next(iter(results.values()))
    metrics = {**summary, "seeds": seeds, "folds": cfg.folds, "drug_encoder": first["drug_encoder"],
               "per_run": {k: {"test": v["test"], "baselines": v["baselines"]} for k, v in results.items()}}
    metrics["verdict"] = evaluate.verdict(metrics)
    write_json(metrics, work / "metrics.json")
    evaluate.write_report(work, metrics, runs=list(results))
    return metrics


def new_run_dir(out: str | None, resume: bool) -> tuple[Path, Path]:
    """The final run directory and the `.incomplete` one the run works in until it succeeds.

    Under torchrun, rank 0 names and creates them and the other ranks follow.
    """
    name = None
    if train.is_main():
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
    name = broadcast(name)
    if name[1]:
        raise PipelineError(name[1])
    final = Path(name[0])
    return final, final.with_name(final.name + ".incomplete")


def broadcast(obj):
    """Rank 0's value on every rank (itself outside torchrun)."""
    if train.world()[1] == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def resumable(work: Path) -> bool:
    """Whether a failed run left work worth resuming (scanned shards, a checkpoint)."""
    return (any(work.rglob("last.pt")) or (work / "merged.parquet").exists()
            or (work / "pairs.parquet").exists()
            or any((work / "tokens").glob("*/meta.json"))
            or any((work / "downsample_parts").rglob("*.part.parquet")))


def check_inputs(cfg: Config) -> None:
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
    if cfg.expression and cfg.stop_after == "downsample":
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
def run_directory(cfg: Config) -> Iterator[tuple[Path, Path]]:
    """(final, work): the run works in <out>.incomplete, logged into, and renamed to <out> when
    it succeeds; a failed run's directory is removed unless it holds work worth resuming. Under
    torchrun rank 0 looks after the directory and the other ranks only follow."""
    final, work = new_run_dir(cfg.out, cfg.resume)
    lead = train.is_main()
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


def prepare(cfg: Config, work: Path) -> tuple[Path, pd.DataFrame | None, Path] | None:
    """Rank 0's part: the merged table training reads, as a parquet path (given with --data,
    left by an interrupted run, converted from an .h5ad, or prepared from the sources), its
    gene table (--gene-table, the .h5ad's var, or the Tahoe source's), and its token store.
    None when the run stops before training."""
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
    elif cfg.resume and prepared.exists():
        log.info("resuming: data preparation is done, reading %s", prepared)
        source = prepared
    else:
        source = prepare_data(cfg, work)
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
    store = token_store(cfg, source, work)   # a data-preparation run leaves it for training
    return None if cfg.stop_after == "merge" else (source, genes, store)


def token_store(cfg: Config, source: Path, work: Path) -> Path:
    """The token store of this table and these settings: beside the table (left by the run that
    prepared it) or in this run's directory, built there if neither has it."""
    return tokens.build(source, work / "tokens", value_kind=cfg.value_kind, tokens=cfg.tokens,
                        top_k=cfg.top_k, also=(source.parent / "tokens",))


def load(cfg: Config, work: Path) -> Prepared | None:
    """Rank 0 prepares the data and the token store while the other ranks wait, then reads the
    table's key columns (never its expression); every rank maps the store."""
    prepared = train.on_main(lambda: prepare(cfg, work))
    if prepared is None:
        return None
    source, genes, store = prepared
    held = {}

    def read_keys() -> dict[str, str]:   # a bad table stops every rank, not only rank 0
        keys = data.read_keys(source)
        drugs = data.drug_smiles(keys)
        held["keys"] = keys.drop_columns(["canonical_smiles"])   # the split and report need no SMILES
        return drugs
    drugs = train.on_main(read_keys)
    return Prepared(source, tokens.StoredTokens(store), drugs, genes, held.get("keys"))


def run(cfg: Config) -> Path:
    t0 = time.perf_counter()
    train.init_distributed(cfg.device, cfg.dist_timeout_min)
    if not train.is_main():
        logging.getLogger().setLevel(logging.WARNING)
    check_inputs(cfg)
    kind = ("normalised" if cfg.expression and cfg.value_kind == "auto"   # bulk matrices: log-TPM, RMA
            else data.resolve_value_kind(cfg.value_kind, h5ad.value_kind_of(cfg.data) if cfg.data else None,
                                         cfg.data))
    cfg = dataclasses.replace(cfg, value_kind=kind)
    with run_directory(cfg) as (final, work):
        prep = load(cfg, work)
        metrics = train_runs(cfg, prep, work) if prep is not None else None
    minutes = (time.perf_counter() - t0) / 60
    if prep is None:
        what = (f"array task {cfg.shard_index}/{cfg.num_shards} scanned its shards into "
                f"{cfg.parts_dir}" if cfg.num_shards > 1 else f"stopped after stage {cfg.stop_after!r}")
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
    p.add_argument("--block-cells", type=int, default=8192, help=".h5ad: cells read and predicted at a "
                   "time; memory grows with it, not with the file (default: 8192)")
    config_mod.add_arguments(p, ANNDATA_FLAGS)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("-v", "--verbose", action="store_true", help="log more detail, and the cause of an error")
    args = p.parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        trained = train.Trained.load(args.checkpoint, train.pick_device(args.device))
        if h5ad.is_h5ad(args.data):
            cfg = config_mod.resolve(args)
            data_path = Path(args.data)
            out = Path(args.out) if args.out else data_path.with_name(data_path.stem + "_ln_ic50")
            predict.predict_h5ad(
                trained, args.data, out,
                drugs=args.drugs, smiles_csv=args.smiles, groupby=args.groupby, layer=cfg.layer,
                gene_column=cfg.gene_column, min_fraction=cfg.min_gene_fraction,
                gene_table=data.load_gene_table(cfg.gene_table) if cfg.gene_table else None,
                block_cells=max(1, args.block_cells))
            return 0
        h5ad_only = [f for f, v in (("--drugs", args.drugs), ("--smiles", args.smiles),
                                    ("--groupby", args.groupby)) if v]
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
        cfg = config_mod.resolve(args)
        run(cfg)
        if torch.distributed.is_initialized():
            torch.distributed.barrier()   # leave together: tearing down a group in use can abort
        return 0
    except PipelineError as e:
        return report_error(log, e)
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
