"""Bulk expression of cell lines + GDSC labels -> a reference: one profile per line, pairs apart.

GDSC screened about 1,000 cell lines whose bulk expression is public, in matrices people
download as they are:
  - DepMap's OmicsExpressionProteinCodingGenesTPMLogp1.csv: one row per line (ACH- ids in the first
    column, or a ModelID column), one column per gene as `SYMBOL (ENTREZ_ID)`, log2(TPM + 1);
  - GDSC's Cell_line_RMA_proc_basalExp.txt: one row per gene (GENE_SYMBOLS, GENE_title), one
    column per line as `DATA.<COSMIC_ID>`, RMA log2;
  - a plain CSV, TSV or parquet: one row per line, its name (or COSMIC, DepMap or Sanger id) in
    the first column, one column per gene symbol or Ensembl id; a first column headed `gene`
    (or similar), or holding Ensembl ids, means genes are rows.
Orientation and gene naming are detected and logged; duplicated genes are averaged.

Lines match GDSC by identifier where the file has one (COSMIC id, Sanger model id; DepMap ids
through a model list: Cell Model Passports' or DepMap's Model.csv), then by name: exact, then
ignoring case and punctuation, then without a leading "NCI". Each rule pairs names one to one;
a name two lines share is ambiguous and left out, never guessed. Drugs take their SMILES from a
table of name,smiles (exact name, then normalised as merge.py does); drugs without one are
counted and left out.

A reference is two tables: `profiles.parquet` (one row per cell line: its genes and values) and
`pairs.parquet` (drug, cell_line_id, canonical_smiles, LN_IC50, ...), which names its profiles
file in its metadata. A line's profile is stored once, however many drugs it was screened with.

    python -m ingest.bulk --expression OmicsExpressionProteinCodingGenesTPMLogp1.csv \\
        --gdsc1 GDSC1.xlsx --gdsc2 GDSC2.xlsx --smiles-table drugs.csv --cell-model-list Model.csv --out ref/
"""
from __future__ import annotations

import argparse
import csv
import gzip
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

import config as config_mod
from common import PipelineError, atomic_path, command, require_file, setup_logging, write_parquet
from ingest import drugs, gdsc
from ingest.merge import load_model_list
from ingest.table import FIRST_TOKEN, PROFILES_KEY, STRUCTURELESS, VALUE_KIND_KEY

log = logging.getLogger("ic50.bulk")

ENSEMBL = re.compile(r"^ENS[A-Z]*G\d+(\.\d+)?$", re.IGNORECASE)
SYMBOL_ENTREZ = re.compile(r"^(.+?) \((\d+)\)$")            # DepMap: "TSPAN6 (7105)"
GDSC_COLUMN = re.compile(r"^DATA\.(\d+)(\.\d+)?$")          # GDSC RMA: "DATA.906826" (".1": a repeat)
GENE_HEADERS = {"gene", "genes", "gene_symbol", "gene_symbols", "symbol", "gene_name", "gene_id",
                "ensembl_id", "ensembl_gene_id", "hgnc_symbol", "genesymbol"}
ID_PATTERNS = {"depmap_id": re.compile(r"^ACH-\d+$"), "sanger_model_id": re.compile(r"^SIDM\d+$"),
               "cosmic_id": re.compile(r"^\d{5,8}$")}
DEPMAP_META = ("SequencingID", "ModelID", "IsDefaultEntryForModel", "ModelConditionID",
               "IsDefaultEntryForMC")


@dataclass
class Matrix:
    """Cell lines x genes, as read: each line's id as the file gives it, and what kind of id."""
    lines: list[str]
    genes: list[str]          # symbols, or Ensembl ids without version
    values: np.ndarray        # [lines, genes] float32
    line_kind: str            # name | cosmic_id | depmap_id | sanger_model_id
    gene_kind: str            # symbol | ensembl_id
    layout: str
    path: str


# ----------------------------------------------------------------------------- reading

def _read_frame(path: Path) -> pd.DataFrame:
    name = path.name.lower()
    try:
        if name.endswith(".parquet"):
            frame = pd.read_parquet(path)
            if not isinstance(frame.index, pd.RangeIndex):   # an index written by pandas is a column
                frame = frame.reset_index()
            return frame
        if name.endswith((".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt", ".txt.gz")):
            sep = "," if name.endswith((".csv", ".csv.gz")) else "\t"
            frame = pd.read_csv(path, sep=sep, low_memory=False)
            with (gzip.open(path, "rt") if name.endswith(".gz") else open(path, newline="")) as f:
                header = next(csv.reader(f, delimiter=sep), [])
            if len(header) == frame.shape[1]:   # as written: pandas renames a repeated gene 'MYC.1'
                frame.columns = header
            return frame
    except Exception as e:
        raise PipelineError(f"could not read expression file '{path}': {e}") from e
    raise PipelineError(f"expression file '{path}' has an unknown extension: expected .csv, .tsv, "
                        f".txt (tab-separated; each may be .gz) or .parquet.")


def _numeric(frame: pd.DataFrame, path: Path, axis_name: str) -> np.ndarray:
    """The frame's values as float32; a column that is not numbers is named."""
    values = frame.apply(pd.to_numeric, errors="coerce")
    bad = (values.isna() & frame.notna()).to_numpy()
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise PipelineError(f"expression file '{path}': {axis_name} {str(frame.columns[j])!r} holds "
                            f"{frame.iat[i, j]!r}, which is not a number; expected numeric expression "
                            f"values.")
    return values.to_numpy(np.float32)


def _line_kind(ids: list[str], header: str) -> str:
    if header.strip().lower() in ("cosmic_id", "cosmic", "cosmicid"):
        return "cosmic_id"
    for kind, pattern in ID_PATTERNS.items():
        if ids and all(pattern.match(i) for i in ids):
            return kind
    return "name"


def _id_text(values: pd.Series) -> list[str]:
    """Line ids as text; whole-number floats (906826.0, as pandas reads a column with gaps) lose the .0."""
    return [str(int(v)) if isinstance(v, float) and v.is_integer() else str(v).strip() for v in values]


def read_matrix(path: str | Path) -> Matrix:
    """A cell-line x gene matrix in one of the layouts above; see the module docstring."""
    path = require_file(path, "expression file")
    frame = _read_frame(path)
    if frame.shape[1] < 2 or frame.shape[0] < 1:
        raise PipelineError(f"expression file '{path}' has {frame.shape[0]} rows and {frame.shape[1]} "
                            f"columns; expected cell lines x genes with a column of names.")
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    gdsc = [c for c in columns if GDSC_COLUMN.match(c)]
    if "GENE_SYMBOLS" in columns and gdsc:
        genes = frame["GENE_SYMBOLS"]
        keep = genes.notna() & (genes.astype(str).str.strip() != "")
        log.info("'%s': GDSC RMA layout (genes in rows, lines as DATA.<COSMIC_ID>); %d of %d rows "
                 "without a gene symbol left out", path.name, int((~keep).sum()), len(frame))
        values = _numeric(frame.loc[keep, gdsc], path, "column").T
        lines = [GDSC_COLUMN.match(c).group(1) for c in gdsc]
        return _tidy(lines, genes[keep].astype(str).str.strip().tolist(), values, "cosmic_id",
                     "GDSC RMA (genes x lines)", path)
    id_at = columns.index("ModelID") if "ModelID" in columns else 0
    if "IsDefaultEntryForModel" in columns:
        default = frame["IsDefaultEntryForModel"].astype(str).str.lower().isin(("yes", "true", "1"))
        log.info("'%s': %d of %d rows are each model's default entry (IsDefaultEntryForModel)",
                 path.name, int(default.sum()), len(frame))
        frame = frame[default.to_numpy()]
    id_col = columns[id_at]
    ids = _id_text(frame.iloc[:, id_at])
    rest = [i for i, c in enumerate(columns) if i != id_at and c not in DEPMAP_META]   # positions: a
    names = [columns[i] for i in rest]                                                 # header may repeat
    first_values = ids[:50]
    if (id_col.strip().lower() in GENE_HEADERS
            or (first_values and sum(bool(ENSEMBL.match(v)) for v in first_values) > len(first_values) / 2)):
        values = _numeric(frame.iloc[:, rest], path, "column").T          # genes in rows: transpose
        return _tidy(names, ids, values, _line_kind(names, ""),
                     f"genes in rows (first column {id_col!r} names genes)", path)
    values = _numeric(frame.iloc[:, rest], path, "column")
    depmap = sum(bool(SYMBOL_ENTREZ.match(c)) for c in names) > len(names) / 2
    genes = [SYMBOL_ENTREZ.match(c).group(1) if SYMBOL_ENTREZ.match(c) else c for c in names]
    layout = ("DepMap (lines x 'SYMBOL (ENTREZ_ID)')" if depmap else
              f"lines in rows (first column {id_col!r} names lines)")
    return _tidy(ids, genes, values, _line_kind(ids, id_col), layout, path)


def _tidy(lines: list[str], genes: list[str], values: np.ndarray, line_kind: str, layout: str,
          path: Path) -> Matrix:
    """Gene naming detected; genes with missing values dropped; repeated genes and lines averaged."""
    ensembl = sum(bool(ENSEMBL.match(g)) for g in genes) > len(genes) / 2
    genes = [g.split(".")[0].upper() if ensembl else g.strip() for g in genes]
    complete = np.isfinite(values).all(axis=0)
    if not complete.all():
        log.warning("'%s': %d genes have missing values in some lines and are left out",
                    path.name, int((~complete).sum()))
        values, genes = values[:, complete], [g for g, ok in zip(genes, complete) if ok]
    frame = pd.DataFrame(values, index=pd.Index(lines, name="line"), columns=genes)
    repeated_genes = int(frame.columns.duplicated().sum())
    repeated_lines = int(frame.index.duplicated().sum())
    if repeated_genes:
        frame = frame.T.groupby(level=0, sort=False).mean().T
    if repeated_lines:
        log.warning("'%s': %d line ids appear more than once; their profiles are averaged",
                    path.name, repeated_lines)
        frame = frame.groupby(level=0, sort=False).mean()
    if frame.shape[1] == 0:
        raise PipelineError(f"expression file '{path}' has no gene with a value in every line.")
    log.info("'%s': %s; %d lines (%s) x %d genes (%s)%s", path.name, layout, frame.shape[0],
             line_kind.replace("_", " ") + "s" if line_kind != "name" else "names", frame.shape[1],
             "Ensembl ids" if ensembl else "symbols",
             f"; {repeated_genes} repeated genes averaged" if repeated_genes else "")
    return Matrix([str(i) for i in frame.index], list(frame.columns), frame.to_numpy(np.float32),
                  line_kind, "ensembl_id" if ensembl else "symbol", layout, str(path))


# ----------------------------------------------------------------------------- cell lines

def _alnum(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", str(name).lower())


NAME_RULES = (("exact name", str),
              ("normalised name", _alnum),
              ("without NCI prefix", lambda s: re.sub(r"^nci", "", _alnum(s))))


def match_names(names: list[str], targets: list[str]) -> dict[str, tuple[str | None, str]]:
    """name -> (target, rule) rule by rule, each rule pairing names only one to one: a key that
    several names or several targets share under a rule is ambiguous, never guessed."""
    found: dict[str, tuple[str | None, str]] = {}
    free = set(targets)
    crowded: set[str] = set()
    for rule, key in NAME_RULES:
        by_target: dict[str, list[str]] = {}
        for t in free:
            by_target.setdefault(key(t), []).append(t)
        by_name: dict[str, list[str]] = {}
        for n in names:
            if n not in found:
                by_name.setdefault(key(n), []).append(n)
        for k, group in by_name.items():
            cands = by_target.get(k, [])
            if len(group) == 1 and len(cands) == 1:
                found[group[0]] = (cands[0], rule)
                free.discard(cands[0])
            elif cands:
                crowded.update(group)
    return {n: found.get(n, (None, "ambiguous" if n in crowded else "none")) for n in names}


def _ids(values) -> list[str]:
    return [str(int(float(v))) if re.fullmatch(r"\d+(\.0+)?", str(v).strip()) else str(v).strip()
            for v in values]


def match_lines(matrix: Matrix, gdsc: pd.DataFrame, models: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per line of the matrix: its GDSC CELL_LINE_NAME (or none) and how it matched.

    By identifier first (COSMIC id or Sanger model id against the GDSC tables' own columns; a
    DepMap id through the model list), then by name (the file's, or the model list's name for an
    id); one profile per GDSC line: two profiles claiming one line are both left out."""
    names = sorted(set(gdsc["CELL_LINE_NAME"]))
    by_id: dict[str, dict[str, set[str]]] = {}
    for col, kind in (("COSMIC_ID", "cosmic_id"), ("SANGER_MODEL_ID", "sanger_model_id")):
        if col in gdsc.columns:
            ok = gdsc[col].notna()
            for i, n in zip(_ids(gdsc.loc[ok, col]), gdsc.loc[ok, "CELL_LINE_NAME"]):
                by_id.setdefault(kind, {}).setdefault(i, set()).add(n)
    model_of: dict[str, dict] = {}
    if models is not None:
        key = {"depmap_id": "BROAD_ID", "cosmic_id": "COSMIC_ID", "sanger_model_id": "model_id"}.get(
            matrix.line_kind)
        if key is not None and key in models.columns:
            for rec in models.to_dict("records"):
                for i in _ids([v for v in str(rec.get(key) or "").split(";") if v.strip()]):
                    model_of.setdefault(i, rec)
    if matrix.line_kind == "depmap_id" and models is None:
        raise PipelineError(f"expression file '{matrix.path}' names its lines by DepMap id (ACH-...), "
                            f"which GDSC does not use: pass --cell-model-list (Cell Model Passports' "
                            f"model_list_*.csv with BROAD_ID, or DepMap's Model.csv).")
    rows, pending = [], {}
    for line in matrix.lines:
        steps = []
        if matrix.line_kind in by_id:
            steps.append((matrix.line_kind.replace("_", " "), by_id[matrix.line_kind].get(line, set())))
        rec = model_of.get(line)
        if rec is not None:
            for kind, col in (("sanger_model_id", "model_id"), ("cosmic_id", "COSMIC_ID")):
                ids = _ids([rec.get(col)]) if rec.get(col) not in (None, "") else []
                hit = by_id.get(kind, {}).get(ids[0], set()) if ids else set()
                steps.append((f"model list -> {kind.replace('_', ' ')}", hit))
        decided = next(((how, c) for how, c in steps if c), None)
        if decided and len(decided[1]) == 1:
            rows.append((line, next(iter(decided[1])), decided[0]))
        elif decided:
            rows.append((line, None, "ambiguous"))
        else:
            name = line if matrix.line_kind == "name" else (rec or {}).get("model_name")
            if name:
                pending[line] = str(name)
            else:
                rows.append((line, None, "none"))
    taken = {g for _, g, _ in rows if g}
    by_name = match_names(list(dict.fromkeys(pending.values())), [n for n in names if n not in taken])
    for line, name in pending.items():
        target, rule = by_name[name]
        rows.append((line, target, rule if matrix.line_kind == "name" else f"model list name, {rule}"))
    report = pd.DataFrame(rows, columns=["line", "gdsc_name", "how"])
    shared = report["gdsc_name"].notna() & report.duplicated("gdsc_name", keep=False)
    report.loc[shared, ["gdsc_name", "how"]] = [None, "ambiguous"]
    order = {line: i for i, line in enumerate(matrix.lines)}
    return report.sort_values("line", key=lambda s: s.map(order)).reset_index(drop=True)


# ----------------------------------------------------------------------------- the reference

@dataclass
class Reference:
    """One profile per matched cell line, and the labelled pairs of those lines and drugs."""
    profiles: pa.Table
    pairs: pa.Table
    genes: pd.DataFrame                      # gene_symbol, ensembl_id, token_id
    lines: pd.DataFrame                      # the line match report
    counts: dict = field(default_factory=dict)
    structureless: pa.Table | None = None    # the pairs of drugs without a SMILES: drug, line, label


def build(matrix: Matrix, gdsc: pd.DataFrame, smiles: dict[str, str], value_kind: str = "normalised",
          models: pd.DataFrame | None = None) -> Reference:
    """The reference of a matrix and combined GDSC labels (gdsc.combine), drugs with a SMILES."""
    lines = match_lines(matrix, gdsc, models)
    how = lines["how"].value_counts().to_dict()
    log.info("cell lines: %d of %d in the expression file matched a GDSC line (%s); GDSC labels %d lines",
             int(lines["gdsc_name"].notna().sum()), len(lines),
             ", ".join(f"{v} {k}" for k, v in sorted(how.items())), gdsc["CELL_LINE_NAME"].nunique())
    matched = lines.dropna(subset=["gdsc_name"])
    if matched.empty:
        hint = ", ".join(matrix.lines[:5])
        raise PipelineError(f"no line of expression file '{matrix.path}' matches a GDSC cell line "
                            f"(the file's lines, e.g. {hint}; GDSC's, e.g. "
                            f"{', '.join(sorted(set(gdsc['CELL_LINE_NAME']))[:5])}). Give identifiers "
                            f"with --cell-model-list, or check that both name the same lines.")
    known, missing = _structures(gdsc, smiles)
    profile_of = dict(zip(matched["gdsc_name"], matched["line"]))
    at_lines = gdsc["CELL_LINE_NAME"].isin(profile_of)
    pairs = gdsc[at_lines & gdsc["DRUG_NAME"].isin(known)]
    pairs = pairs.sort_values(["DRUG_NAME", "CELL_LINE_NAME"]).reset_index(drop=True)
    used = sorted(set(pairs["CELL_LINE_NAME"]))
    row = {line: i for i, line in enumerate(matrix.lines)}
    values = matrix.values[[row[profile_of[n]] for n in used]]
    token_ids = np.arange(FIRST_TOKEN, FIRST_TOKEN + len(matrix.genes), dtype=np.int32)
    meta = {VALUE_KIND_KEY.encode(): value_kind.encode()}
    offsets = pa.array(np.arange(len(used) + 1, dtype=np.int32) * len(matrix.genes))
    profiles = pa.table({
        "cell_line_id": pa.array(used, pa.string()),
        "cell_name": pa.array([profile_of[n] for n in used], pa.string()),
        "genes": pa.ListArray.from_arrays(offsets, pa.array(np.tile(token_ids, len(used)))),
        "expressions": pa.ListArray.from_arrays(offsets, pa.array(values.ravel())),
    }).replace_schema_metadata(meta)
    text = lambda s: pa.array(s.astype(str).tolist(), pa.string())  # noqa: E731
    pair_table = pa.table({
        "drug": text(pairs["DRUG_NAME"]), "cell_line_id": text(pairs["CELL_LINE_NAME"]),
        "canonical_smiles": text(pairs["DRUG_NAME"].map(known)),
        "LN_IC50": pa.array(pairs["LN_IC50"].to_numpy(np.float64)),
        "cell_name": text(pairs["CELL_LINE_NAME"].map(profile_of)),
        "gdsc_dataset": text(pairs["gdsc_dataset"]) if "gdsc_dataset" in pairs.columns
        else pa.array(["GDSC"] * len(pairs), pa.string()),
    }).replace_schema_metadata({**meta, PROFILES_KEY.encode(): b"profiles.parquet"})
    structureless = _structureless(gdsc[at_lines & gdsc["DRUG_NAME"].isin(missing)])
    ensembl = matrix.gene_kind == "ensembl_id"
    genes = pd.DataFrame({"gene_symbol": [None if ensembl else g for g in matrix.genes],
                          "ensembl_id": [g if ensembl else None for g in matrix.genes],
                          "token_id": token_ids.astype(np.int64)})
    counts = {"lines_in_file": len(matrix.lines), "genes": len(matrix.genes),
              "lines_matched": int(len(matched)), "line_rules": {k: int(v) for k, v in how.items()},
              "lines_used": len(used), "drugs": int(pairs["DRUG_NAME"].nunique()),
              "drugs_without_smiles": len(missing), "pairs": int(len(pairs)),
              "pairs_without_smiles": len(structureless),
              "gdsc_pairs_without_profile": int((~gdsc["CELL_LINE_NAME"].isin(profile_of)).sum())}
    log.info("reference: %d cell lines x %d genes, %d drugs, %d labelled pairs (each line's profile "
             "stored once)", len(used), len(matrix.genes), counts["drugs"], len(pairs))
    return Reference(profiles, pair_table, genes, lines, counts, structureless)


def _structures(gdsc: pd.DataFrame, smiles: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """The GDSC drugs' SMILES, and the drugs without one."""
    known, missing = drugs.smiles_for_drugs(sorted(set(gdsc["DRUG_NAME"])), smiles)
    if missing:
        log.info("%d of %d GDSC drugs have no SMILES in the SMILES table: the network leaves them out, "
                 "the per-drug ridge member answers them alone (e.g. %s)", len(missing),
                 len(known) + len(missing), ", ".join(missing[:5]))
    if not known:
        raise PipelineError(f"no GDSC drug has a SMILES in the SMILES table (GDSC drugs, e.g. "
                            f"{sorted(set(gdsc['DRUG_NAME']))[:5]}; table names, e.g. {list(smiles)[:5]}).")
    return known, missing


def _structureless(pairs: pd.DataFrame) -> pa.Table:
    """The pairs of drugs without a SMILES at the reference's lines: drug, cell_line_id, LN_IC50."""
    names = {"DRUG_NAME": "drug", "CELL_LINE_NAME": "cell_line_id", "LN_IC50": "LN_IC50"}
    pairs = pairs.astype({"DRUG_NAME": str, "CELL_LINE_NAME": str}).sort_values(list(names)[:2])
    return pa.Table.from_pandas(pairs[list(names)].rename(columns=names), preserve_index=False)


def write(ref: Reference, out: Path) -> Path:
    """profiles.parquet, pairs.parquet (which names the profiles), gene_table.parquet,
    line_matches.csv, reference_counts.json and the pairs of drugs without a SMILES
    (pairs_without_smiles.parquet) in `out`; the pairs table's path."""
    out.mkdir(parents=True, exist_ok=True)
    write_parquet(ref.profiles, out / "profiles.parquet", row_group_size=64)
    write_parquet(pa.Table.from_pandas(ref.genes, preserve_index=False), out / "gene_table.parquet")
    with atomic_path(out / "line_matches.csv") as tmp:
        ref.lines.to_csv(tmp, index=False)
    with atomic_path(out / "reference_counts.json") as tmp:
        tmp.write_text(json.dumps(ref.counts, indent=2) + "\n")
    if ref.structureless is not None and len(ref.structureless):
        write_parquet(ref.structureless, out / STRUCTURELESS)
    write_parquet(ref.pairs, out / "pairs.parquet", row_group_size=1 << 16)   # last: the mark of a whole one
    return out / "pairs.parquet"


def value_kind(setting: str) -> str:
    """What a bulk matrix's values are: normalised (log-TPM, RMA), unless the setting says."""
    return "normalised" if setting == "auto" else setting


def prepare(expression: str, smiles_table: str | None, kind: str, model_list: str | None,
            gdsc: pd.DataFrame, out: Path) -> Path:
    """Rank 0's data preparation from --expression: the reference written into `out`."""
    if not smiles_table:
        raise PipelineError("--expression needs --smiles-table: a CSV of name,smiles giving each GDSC "
                            "drug's structure (GDSC's own files hold none).")
    ref = build(read_matrix(expression), gdsc, drugs.read_smiles_table(smiles_table), kind,
                load_model_list(model_list) if model_list else None)
    return write(ref, out)


@command(log)
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--out", default="reference", help="output directory (default: reference/)")
    p.add_argument("-v", "--verbose", action="store_true", help="log more detail, and the cause of an error")
    config_mod.add_arguments(p, "bulk")
    args = p.parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    cfg = config_mod.resolve(args)
    if not cfg.expression:
        raise PipelineError("pass the expression matrix with --expression.")
    combined, _ = gdsc.combine(cfg.gdsc1, cfg.gdsc2, cfg.ic50_average)
    path = prepare(cfg.expression, cfg.smiles_table, value_kind(cfg.model.value_kind),
                   cfg.identifier_tables()[1], combined, Path(args.out))
    log.info("wrote the reference %s (and its profiles beside it)", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
