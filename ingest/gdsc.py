"""GDSC1 + GDSC2 fitted dose response -> one ln IC50 per (drug, cell line) pair.

Within one version, duplicate pairs (one drug name can carry several DRUG_IDs) are averaged;
across versions, GDSC2 replaces GDSC1, as in the original study. Run alone:
    python -m ingest.gdsc GDSC1.xlsx GDSC2.xlsx [--ic50-average ln] --out gdsc_combined.parquet
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

import config as config_mod
from common import PipelineError, command, require_file, setup_logging, write_parquet

log = logging.getLogger("ic50.gdsc")

REQUIRED = ("DRUG_NAME", "CELL_LINE_NAME", "LN_IC50")
# Identifiers kept (first value of the pair) so later stages can match by id, not only by name.
ID_COLUMNS = ("DRUG_ID", "COSMIC_ID", "SANGER_MODEL_ID")
AVERAGES = ("ln", "linear")


def excel_engine() -> str:
    """calamine (Rust) reads the 333k-row GDSC1 sheet ~10x faster than openpyxl; either works.
    pandas reads with calamine from 2.2 on."""
    try:
        import python_calamine  # noqa: F401
    except ImportError:
        return "openpyxl"
    major, minor = (int(x) for x in pd.__version__.split(".")[:2])
    return "calamine" if (major, minor) >= (2, 2) else "openpyxl"


def read_table(path: str | Path) -> pd.DataFrame:
    path = require_file(path, "GDSC file")
    name = path.name.lower()
    try:
        if name.endswith((".xlsx", ".xls")):
            return pd.read_excel(path, engine=excel_engine())
        if name.endswith((".csv", ".csv.gz")):
            return pd.read_csv(path, low_memory=False)
        if name.endswith((".parquet", ".pq")):
            return pd.read_parquet(path)
    except Exception as e:  # the reader's own message says what is wrong with the bytes
        raise PipelineError(f"could not read GDSC file '{path}': {e}") from e
    raise PipelineError(f"GDSC file '{path}' has an unknown extension: expected .xlsx, .csv, "
                        f".csv.gz or .parquet.")


def load_version(path: str | Path, version: str) -> tuple[pd.DataFrame, dict]:
    """Read and validate one release file; drop rows whose LN_IC50 is missing or not a number."""
    df = read_table(path)
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise PipelineError(
            f"GDSC file '{path}' lacks required column(s) {missing}; it has {list(df.columns)[:20]}. "
            f"Expected a GDSC fitted dose-response table with at least {list(REQUIRED)}.")
    ln = pd.to_numeric(df["LN_IC50"], errors="coerce")
    bad = ln.isna() | ~np.isfinite(ln)
    names_missing = df["DRUG_NAME"].isna() | df["CELL_LINE_NAME"].isna()
    keep = ~bad & ~names_missing
    out = df.loc[keep].copy()
    out["LN_IC50"] = ln[keep].astype("float64")
    out["DRUG_NAME"] = out["DRUG_NAME"].astype(str).str.strip()
    out["CELL_LINE_NAME"] = out["CELL_LINE_NAME"].astype(str).str.strip()
    counts = {"rows_read": int(len(df)), "rows_dropped_bad_ln_ic50": int(bad.sum()),
              "rows_dropped_missing_name": int((names_missing & ~bad).sum())}
    if out.empty:
        raise PipelineError(f"GDSC file '{path}' has no row with a numeric LN_IC50 and both names.")
    out["gdsc_dataset"] = version
    return out, counts


def aggregate(df: pd.DataFrame, average: str = "ln") -> pd.DataFrame:
    """One row per (drug, cell line): mean of ln IC50 ('ln') or log of the mean IC50 ('linear')."""
    if average not in AVERAGES:
        raise PipelineError(f"unknown IC50 average {average!r}; expected one of {AVERAGES}.")
    keys = ["DRUG_NAME", "CELL_LINE_NAME"]
    value = df["LN_IC50"] if average == "ln" else np.exp(df["LN_IC50"])
    grouped = df.assign(_v=value).groupby(keys, sort=True)
    out = grouped["_v"].agg(["mean", "size"]).reset_index()
    out = out.rename(columns={"mean": "LN_IC50", "size": "n_measurements"})
    if average == "linear":
        out["LN_IC50"] = np.log(out["LN_IC50"])
    ids = [c for c in ID_COLUMNS if c in df.columns]
    if ids:
        out = out.merge(grouped[ids].first().reset_index(), on=keys, how="left")
    out["gdsc_dataset"] = df["gdsc_dataset"].iloc[0]
    return out


def combine(gdsc1: str | Path | None, gdsc2: str | Path | None,
            average: str = "ln") -> tuple[pd.DataFrame, dict]:
    """Aggregate each version, then let GDSC2 replace GDSC1 where a pair is in both."""
    if gdsc1 is None and gdsc2 is None:
        raise PipelineError("no GDSC file given: pass --gdsc1 and/or --gdsc2.")
    parts, counts = [], {}
    for version, path in (("GDSC2", gdsc2), ("GDSC1", gdsc1)):
        if path is None:
            continue
        rows, c = load_version(path, version)
        agg = aggregate(rows, average)
        c["pairs"] = int(len(agg))
        counts[version] = c
        parts.append(agg)
        log.info("%s: %d rows read from %s, %d dropped (LN_IC50 missing or not numeric), %d pairs",
                 version, c["rows_read"], path, c["rows_dropped_bad_ln_ic50"], c["pairs"])
    both = pd.concat(parts, ignore_index=True)  # GDSC2 first, so keep="first" lets it win
    dup = both.duplicated(["DRUG_NAME", "CELL_LINE_NAME"], keep="first")
    combined = both.loc[~dup].sort_values(["DRUG_NAME", "CELL_LINE_NAME"]).reset_index(drop=True)
    counts["pairs_in_both"] = int(dup.sum())
    counts["pairs_kept"] = int(len(combined))
    log.info("GDSC combined: %d pairs (%d in both versions, GDSC2 kept), %d drugs, %d cell lines",
             len(combined), dup.sum(), combined["DRUG_NAME"].nunique(),
             combined["CELL_LINE_NAME"].nunique())
    return combined, counts


def save(combined: pd.DataFrame, path: str | Path) -> None:
    write_parquet(pa.Table.from_pandas(combined, preserve_index=False), path)




@command(log)
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Combine GDSC1 and GDSC2 fitted dose response tables.")
    p.add_argument("files", nargs="*", metavar="FILE", help="GDSC1 and GDSC2 files: a shorthand "
                   "for --gdsc1 and --gdsc2")
    p.add_argument("--out", default="gdsc_combined.parquet", help="output parquet (default: "
                   "gdsc_combined.parquet)")
    p.add_argument("-v", "--verbose", action="store_true", help="log more detail, and the cause of an error")
    config_mod.add_arguments(p, "gdsc")
    args = p.parse_args(argv)
    if args.files:
        if len(args.files) != 2 or args.gdsc1 or args.gdsc2:
            p.error("give the two GDSC files either as FILE FILE or as --gdsc1/--gdsc2.")
        args.gdsc1, args.gdsc2 = args.files
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    cfg = config_mod.resolve(args)
    combined, _ = combine(cfg.gdsc1, cfg.gdsc2, cfg.ic50_average)
    save(combined, args.out)
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
