"""Predict drug sensitivity (ln IC50) from single-cell expression and drug structure.

    python main.py                         # the whole study on the embedded demo data
    python main.py --config configs/paper.yaml --tahoe tahoebio/Tahoe-100M \\
        --gdsc1 GDSC1_fitted_dose_response_27Oct23.xlsx --gdsc2 GDSC2_fitted_dose_response_27Oct23.xlsx
    python main.py --data merged.parquet   # train on an existing merged table
    python main.py predict --checkpoint runs/X/best.pt --data new_cells.parquet
    torchrun --nproc_per_node 4 main.py --data merged.parquet   # data-parallel training

Stages, each one call into one module: gdsc.combine -> merge.match -> downsample.downsample ->
merge.attach_labels -> data.make_split -> train.train -> evaluate.evaluate. Everything a run
writes goes to one run directory, which is named <out>.incomplete until the run succeeds.
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
from datetime import datetime
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

import config as config_mod
import data
import downsample
import evaluate
import gdsc
import merge
import train
from common import PipelineError, report_error, setup_logging, write_json, write_parquet
from config import Config
from model import count_parameters

log = logging.getLogger("ic50")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="main.py", description=__doc__.split("\n\n")[0],
        epilog="Settings come from the defaults, then --config YAML, then the flags given here. "
               "The resolved settings are saved as config.yaml in the run directory. "
               "To predict with a trained model: python main.py predict --help.")
    p.add_argument("--config", metavar="YAML", help="YAML file of settings (e.g. configs/paper.yaml)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every epoch and more detail")
    config_mod.add_arguments(p)
    return p.parse_args(argv)


def prepare_data(cfg: Config, run_dir: Path) -> pa.Table | None:
    """GDSC combine -> match Tahoe metadata to GDSC -> downsample labelled cells -> merge."""
    combined, counts = gdsc.combine(cfg.gdsc1, cfg.gdsc2, cfg.ic50_average)
    gdsc.save(combined, run_dir / "gdsc_combined.parquet")
    write_json(counts, run_dir / "gdsc_counts.json")
    if cfg.stop_after == "gdsc":
        return None
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
    write_parquet(merged, run_dir / "merged.parquet")
    cells_path.unlink()  # merged.parquet holds the same cells, labelled
    if not cfg.parts_dir:
        shutil.rmtree(parts_dir)  # only needed to resume an interrupted scan
    return None if cfg.stop_after == "merge" else merged


def train_and_evaluate(cfg: Config, table: pa.Table, run_dir: Path, fold: int = 0) -> dict:
    """One split, one model: split -> train -> test predictions -> metrics, plots, report."""
    run_dir.mkdir(parents=True, exist_ok=True)
    keys = table.select(["drug", "cell_line_id", "LN_IC50"]).to_pandas()
    split = data.make_split(keys, cfg.split, cfg.seed, val_frac=cfg.val_frac, test_frac=cfg.test_frac,
                            fold=fold, n_folds=cfg.folds)
    split_df = data.split_frame(keys, split)
    parts = data.split_table(table, split)
    sizes = data.summarise_split(split_df)
    log.info("split %r (seed %d%s): %s", cfg.split, cfg.seed, f", fold {fold + 1}/{cfg.folds}"
             if cfg.folds > 1 else "", "; ".join(f"{p} {s['cells']} cells / {s['pairs']} pairs"
                                                 for p, s in sizes.items()))
    if cfg.split == "random":
        log.warning("split 'random' assigns CELLS at random: every test pair is also in training, "
                    "so test metrics measure memorisation, not prediction.")

    smiles = sorted(set(table["canonical_smiles"].to_pylist()))
    trained = train.train(cfg, parts["train"], parts["val"], smiles, run_dir, resume=cfg.resume)
    pred = trained.predict(trained.features(parts["test"]))
    if not train.is_main():
        return {}
    write_parquet(pa.Table.from_pandas(split_df, preserve_index=False), run_dir / "split.parquet")

    test_rows = np.flatnonzero(split == "test")
    preds = keys.iloc[test_rows].reset_index(drop=True).assign(row=test_rows, prediction=pred)[
        ["row", "drug", "cell_line_id", "LN_IC50", "prediction"]]
    if "dose_uM" in table.column_names:
        preds.insert(3, "dose_uM", table["dose_uM"].to_numpy(zero_copy_only=False)[test_rows])
    write_parquet(pa.Table.from_pandas(preds, preserve_index=False), run_dir / "predictions.parquet")

    index = train.drug_index(table, trained.smiles)
    vectors = {d: trained.drug_table[i].cpu().numpy() for d, i in index.items()}
    result = evaluate.evaluate(parts["train"], parts["test"], pred, vectors, cfg.seed, cfg.value_kind)
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


def train_runs(cfg: Config, table: pa.Table, work: Path) -> dict:
    """One run, or one per seed and fold in subdirectories, then their mean ± sd."""
    seeds = cfg.seeds or [cfg.seed]
    folds = list(range(cfg.folds)) if cfg.folds > 1 else [0]
    if len(seeds) == 1 and len(folds) == 1:
        return train_and_evaluate(dataclasses.replace(cfg, seed=seeds[0]), table, work)
    results = {}
    for seed in seeds:
        for fold in folds:
            name = f"seed-{seed}" + (f"-fold-{fold}" if len(folds) > 1 else "")
            sub = work / name
            if (sub / "metrics.json").exists():  # finished before an interruption
                results[name] = json.loads((sub / "metrics.json").read_text())
                continue
            log.info("run %s (%d of %d)", name, len(results) + 1, len(seeds) * len(folds))
            results[name] = train_and_evaluate(dataclasses.replace(cfg, seed=seed), table, sub, fold)
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
            or any((work / "downsample_parts").rglob("*.part.parquet")))


def check_inputs(cfg: Config) -> None:
    """Fail before any work on paths that do not exist."""
    if cfg.data:
        if not Path(cfg.data).exists():
            raise PipelineError(f"merged table not found: '{cfg.data}' (--data).")
        return
    compounds, models = cfg.identifier_tables()
    for flag, path in (("--gdsc1", cfg.gdsc1), ("--gdsc2", cfg.gdsc2),
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


def load_table(cfg: Config, work: Path) -> pa.Table | None:
    """The merged table: given (--data), left by an interrupted run, or prepared from the sources
    (None when the run stops before training)."""
    if cfg.data:
        return data.load_merged(cfg.data, value_kind=cfg.value_kind)
    if cfg.resume and (work / "merged.parquet").exists():
        log.info("resuming: data preparation is done, reading %s", work / "merged.parquet")
        return data.load_merged(work / "merged.parquet", value_kind=cfg.value_kind)
    return prepare_data(cfg, work)


def run(cfg: Config) -> Path:
    t0 = time.perf_counter()
    train.init_distributed(cfg.device)
    if train.world()[1] > 1 and not cfg.data:
        raise PipelineError("under torchrun, train on a prepared table: run the data stages once "
                            "(python main.py --stop-after merge), then torchrun ... main.py --data "
                            "RUN/merged.parquet.")
    if not train.is_main():
        logging.getLogger().setLevel(logging.WARNING)
    check_inputs(cfg)
    cfg = dataclasses.replace(cfg, value_kind=data.resolve_value_kind(cfg.value_kind, cfg.data))
    with run_directory(cfg) as (final, work):
        table = load_table(cfg, work)
        metrics = train_runs(cfg, table, work) if table is not None else None
    minutes = (time.perf_counter() - t0) / 60
    if table is None:
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


def predict(argv: list[str]) -> int:
    """python main.py predict --checkpoint RUN/best.pt --data TABLE [--out FILE]"""
    p = argparse.ArgumentParser(
        prog="main.py predict", description="Predict ln IC50 for new (cell, drug) rows with a "
        "trained checkpoint. TABLE has the merged-table columns; LN_IC50 is optional. Drugs the "
        "checkpoint has not seen are encoded with the encoder it was trained with.")
    p.add_argument("--checkpoint", required=True, help="best.pt of a run")
    p.add_argument("--data", required=True, help="parquet table of cells and drugs")
    p.add_argument("--out", help="output parquet (default: <data>_predictions.parquet beside it)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("-v", "--verbose", action="store_true", help="log more detail, and the cause of an error")
    args = p.parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        trained = train.Trained.load(args.checkpoint, train.pick_device(args.device))
        kind = trained.cfg.value_kind
        declared = data.declared_value_kind(args.data)
        if declared and declared != kind:
            raise PipelineError(f"'{args.data}' declares {declared} values, but the model was trained "
                                f"on {kind} values; give it a table of the same kind.")
        table = data.load_merged(args.data, labelled=False, value_kind=kind)
        trained.add_drugs(sorted(set(table["canonical_smiles"].to_pylist())))
        pred = trained.predict(trained.features(table))
        cols = [c for c in ("drug", "cell_line_id", "dose_uM", "LN_IC50") if c in table.column_names]
        out = table.select(cols).append_column("prediction", pa.array(pred))
        data_path = Path(args.data)
        path = Path(args.out) if args.out else data_path.with_name(data_path.stem + "_predictions.parquet")
        write_parquet(out, path)
        log.info("%d predictions written to %s (model: %s, drug encoder %s)", len(pred), path,
                 args.checkpoint, trained.drug_encoder)
        return 0
    except PipelineError as e:
        return report_error(log, e)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["predict"]:
        return predict(argv[1:])
    args = parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        cfg = config_mod.resolve(args)
        run(cfg)
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
