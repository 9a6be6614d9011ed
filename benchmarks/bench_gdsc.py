"""GDSC stage at full release size: 575,197 rows (GDSC1 333,161 + GDSC2 242,036), 19 columns.

Writes synthetic tables of exactly that size and shape (one drug name with several DRUG_IDs,
pairs repeated within and across versions) as .csv, .csv.gz and .xlsx, then times
`gdsc.combine` on each format in its own process and reports peak RSS.

    python benchmarks/bench_gdsc.py [--workdir DIR] [--keep]
(.xlsx writing needs xlsxwriter or openpyxl and takes a few minutes; it is cached with --keep.)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
ROWS = {"GDSC1": 333_161, "GDSC2": 242_036}
COLUMNS = ["DATASET", "NLME_RESULT_ID", "NLME_CURVE_ID", "COSMIC_ID", "CELL_LINE_NAME",
           "SANGER_MODEL_ID", "TCGA_DESC", "DRUG_ID", "DRUG_NAME", "PUTATIVE_TARGET",
           "PATHWAY_NAME", "COMPANY_ID", "WEBRELEASE", "MIN_CONC", "MAX_CONC", "LN_IC50", "AUC",
           "RMSE", "Z_SCORE"]


def table(version: str, n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    lines = [f"LINE-{i:04d}" for i in range(1000)]
    drugs = [f"Drug{i:03d}" for i in range(420)]
    li = rng.integers(0, len(lines), n)
    di = rng.integers(0, len(drugs), n)
    return pd.DataFrame({
        "DATASET": version, "NLME_RESULT_ID": 342 if version == "GDSC1" else 343,
        "NLME_CURVE_ID": np.arange(n) + 15_000_000, "COSMIC_ID": 900_000 + li,
        "CELL_LINE_NAME": [lines[i] for i in li], "SANGER_MODEL_ID": [f"SIDM{i:05d}" for i in li],
        "TCGA_DESC": "UNCLASSIFIED", "DRUG_ID": di * 3 + rng.integers(0, 3, n),  # several ids a name
        "DRUG_NAME": [drugs[i] for i in di], "PUTATIVE_TARGET": "target", "PATHWAY_NAME": "pathway",
        "COMPANY_ID": 1046, "WEBRELEASE": "Y", "MIN_CONC": 0.001, "MAX_CONC": 10.0,
        "LN_IC50": rng.normal(1.6, 2.9, n), "AUC": rng.uniform(0, 1, n), "RMSE": rng.uniform(0, 0.2, n),
        "Z_SCORE": rng.normal(0, 1, n)}, columns=COLUMNS)


def write(work: Path) -> None:
    for i, (version, n) in enumerate(ROWS.items()):
        df = table(version, n, i)
        base = work / f"{version}_fitted_dose_response_synthetic"
        if not base.with_suffix(".csv").exists():
            df.to_csv(base.with_suffix(".csv"), index=False)
            df.to_csv(base.with_suffix(".csv.gz"), index=False)
        if not base.with_suffix(".xlsx").exists():
            try:
                import xlsxwriter  # noqa: F401
                engine = "xlsxwriter"
            except ImportError:
                engine = "openpyxl"
            df.to_excel(base.with_suffix(".xlsx"), index=False, engine=engine)


def measure(work: Path, ext: str, engine: str | None) -> dict:
    g1, g2 = (work / f"{v}_fitted_dose_response_synthetic{ext}" for v in ROWS)
    patch = f"gdsc.excel_engine = lambda: {engine!r}; " if engine else ""
    code = (f"import sys, json, time; sys.path.insert(0, {str(ROOT)!r}); import gdsc; {patch}"
            f"t = time.perf_counter(); out, c = gdsc.combine({str(g1)!r}, {str(g2)!r}); "
            f"s = time.perf_counter() - t; "
            f"hwm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')); "
            f"print(json.dumps({{'seconds': s, 'rss_mb': hwm / 1024, 'pairs': len(out), "
            f"'rows': c['GDSC1']['rows_read'] + c['GDSC2']['rows_read'], 'both': c['pairs_in_both']}}))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if p.returncode:
        sys.exit(p.stderr[-2000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_gdsc_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        write(work)
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
              f"pandas {pd.__version__}")
        for ext, engine in ((".csv", None), (".csv.gz", None), (".xlsx", "calamine"), (".xlsx", "openpyxl")):
            try:
                r = measure(work, ext, engine)
            except SystemExit as e:
                print(f"{ext:8s} {engine or '':9s} failed: {str(e)[-200:]}")
                continue
            print(f"{ext:8s} {engine or '':9s} {r['rows']:,} rows -> {r['pairs']:,} pairs "
                  f"({r['both']:,} in both) in {r['seconds']:.1f}s, peak RSS {r['rss_mb']:,.0f} MB")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
