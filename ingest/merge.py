"""Match Tahoe drugs and cell lines to GDSC, then attach one ln IC50 label to every kept cell.

Matching works on the metadata tables (before any expression is read), so the downsample stage
only ever materialises labelled cells. For each Tahoe entry the first rule that applies decides:
  1. an explicit override (a table of known exceptions);
  2. an identifier: drugs by PubChem CID (GDSC compounds export), cell lines by Cellosaurus
     accession (Tahoe cell_line_id = model list RRID -> model_id = GDSC SANGER_MODEL_ID);
  3. the name after normalisation: case, spaces, hyphens, dots, colons and salt/solvate suffixes
     such as "(hydrochloride)" or "(DMSO_TF solvate)" do not matter;
  4. a GDSC synonym (compounds SYNONYMS; model list names and synonyms).
A rule that finds several GDSC candidates makes the entry ambiguous: reported, never guessed.
`match_report.csv` lists every Tahoe drug and cell line, its GDSC partner (or none) and how.
"""
from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from common import CONTROL, PipelineError, require_file

log = logging.getLogger("ic50.merge")

_SALT = re.compile(r"\s*\((?:[^()]*\b(?:salt|solvate|hydrate)\b[^()]*|hydrochloride|dihydrochloride|"
                   r"hcl|mesylate|dimesylate|malate|s-malate|l-malate|sulfate|tosylate|citrate|"
                   r"maleate|phosphate|sodium|potassium|acetate|tartrate|fumarate|besylate|"
                   r"bromide|chloride|succinate|lactate|trifluoroacetate|tfa)\)\s*$", re.I)
_PUNCT = re.compile(r"[\s\-_.:,/']+")


def normalise_cell_line(name: str) -> str:
    """'COLO 205', 'COLO-205' and 'colo205' -> 'colo205'."""
    return _PUNCT.sub("", str(name)).lower()


def normalise_drug(name: str) -> str:
    """'Doxorubicin (hydrochloride)' -> 'doxorubicin'; 'olaparib' -> 'olaparib'."""
    name = str(name).strip()
    while True:
        stripped = _SALT.sub("", name)
        if stripped == name:
            break
        name = stripped
    return _PUNCT.sub("", name).lower()


@dataclass
class Matches:
    drugs: dict[str, str]          # Tahoe drug name -> GDSC DRUG_NAME
    cell_lines: dict[str, str]     # Tahoe cell_line_id -> GDSC CELL_LINE_NAME
    cell_names: dict[str, str]     # Tahoe cell_line_id -> Tahoe cell_name
    report: pd.DataFrame


REPORT_COLUMNS = ["kind", "tahoe_id", "tahoe_name", "gdsc_name", "how", "note"]


# ----------------------------------------------------------------------------- third-party tables

def _read_csv(path: str | Path, what: str) -> pd.DataFrame:
    path = require_file(path, what)
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as e:
        raise PipelineError(f"could not read {what} '{path}': {e}") from e


def _split(text) -> list[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


def load_compounds(path: str | Path) -> pd.DataFrame:
    """GDSC compounds -> name, synonyms, cids, and target and pathway where the file has them.
    Accepts the cancerrxgene compounds export (Name, Synonyms, Targets, Target pathway, PubCHEM)
    or screened_compounds_rel_8.5.csv (DRUG_NAME, SYNONYMS, TARGET, TARGET_PATHWAY; no CIDs)."""
    df = _read_csv(path, "GDSC compounds file")
    cols = {c.lower().replace(" ", "_"): c for c in df.columns}
    name, syn, cid = cols.get("name") or cols.get("drug_name"), cols.get("synonyms"), cols.get("pubchem")
    if name is None:
        raise PipelineError(f"GDSC compounds file '{path}' has no 'Name' or 'DRUG_NAME' column; "
                            f"columns are {list(df.columns)}.")
    empty = [[] for _ in range(len(df))]
    out = pd.DataFrame({
        "name": df[name].str.strip(),
        "synonyms": df[syn].map(_split) if syn else empty,
        # PubCHEM holds one CID, several comma-separated, or words such as 'none' / 'several'
        "cids": df[cid].map(lambda t: [int(x) for x in _split(t) if x.isdigit()]) if cid else empty})
    target, pathway = cols.get("targets") or cols.get("target"), cols.get("target_pathway")
    if target:   # what `main.py reference --gdsc-compounds` annotates its drugs with
        out["target"] = df[target].str.strip()
        out["pathway"] = df[pathway].str.strip() if pathway else ""
    return out


# DepMap's Model.csv names the same identifiers otherwise
DEPMAP_MODEL_COLUMNS = {"SangerModelID": "model_id", "CellLineName": "model_name", "RRID": "RRID",
                        "COSMICID": "COSMIC_ID", "ModelID": "BROAD_ID", "StrippedCellLineName": "synonyms"}


def load_model_list(path: str | Path) -> pd.DataFrame:
    """Cell Model Passports model list: model_id (= GDSC SANGER_MODEL_ID), RRID (= Cellosaurus),
    and where given model_name, synonyms, COSMIC_ID, BROAD_ID (= DepMap ACH- id). DepMap's
    Model.csv (ModelID, CellLineName, SangerModelID, COSMICID, RRID) is read into these columns."""
    df = _read_csv(path, "Cell Model Passports model list")
    if "ModelID" in df.columns and "model_id" not in df.columns:
        df = df[[c for c in DEPMAP_MODEL_COLUMNS if c in df.columns]].rename(columns=DEPMAP_MODEL_COLUMNS)
    missing = [c for c in ("model_id", "RRID") if c not in df.columns]
    if missing:
        raise PipelineError(f"model list '{path}' lacks column(s) {missing}; expected a Cell Model "
                            f"Passports model_list_*.csv with model_id and RRID, or DepMap's Model.csv.")
    for c in ("model_name", "synonyms", "COSMIC_ID", "BROAD_ID"):
        if c not in df.columns:
            df[c] = ""
    return df


def load_overrides(path: str | Path) -> pd.DataFrame:
    """Explicit matches for known exceptions: columns kind (drug | cell_line), tahoe, gdsc."""
    df = _read_csv(path, "match overrides file")
    missing = [c for c in ("kind", "tahoe", "gdsc") if c not in df.columns]
    bad = sorted(set(df["kind"]) - {"drug", "cell_line"}) if "kind" in df.columns else []
    if missing or bad:
        raise PipelineError(f"match overrides '{path}': expected columns kind, tahoe, gdsc with kind "
                            f"'drug' or 'cell_line'" + (f"; missing {missing}" if missing else "")
                            + (f"; unknown kind(s) {bad}" if bad else "") + ".")
    return df


# ----------------------------------------------------------------------------- matching

def _index(pairs) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k not in ("", None) and v not in ("", None):
            out.setdefault(k, set()).add(v)
    return out


def _decide(kind: str, tid: str, tname: str, steps: list[tuple[str, set[str]]]) -> tuple:
    """The first step with candidates wins; several candidates are ambiguous, never guessed."""
    for how, cands in steps:
        if len(cands) == 1:
            return (kind, tid, tname, next(iter(cands)), how, "")
        if len(cands) > 1:
            return (kind, tid, tname, None, "ambiguous",
                    f"{how}: several GDSC names: " + "; ".join(sorted(cands)))
    return (kind, tid, tname, None, "none", "")


def _cid(value) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def match_drugs(drug_meta: pd.DataFrame, gdsc_names: set[str], compounds: pd.DataFrame | None,
                overrides: dict[str, str]) -> pd.DataFrame:
    drugs = drug_meta.drop_duplicates("drug")
    drugs = drugs[drugs["drug"] != CONTROL]  # exact name: 'Trametinib (DMSO_TF solvate)' is a drug
    by_name = _index((normalise_drug(n), n) for n in gdsc_names)
    by_cid, by_syn = {}, {}
    if compounds is not None:
        known = compounds[compounds["name"].isin(gdsc_names)]
        by_cid = _index((c, n) for n, cids in zip(known["name"], known["cids"]) for c in cids)
        by_syn = _index((normalise_drug(sy), n) for n, syns in zip(known["name"], known["synonyms"])
                        for sy in syns)
    cids = drugs["pubchem_cid"] if "pubchem_cid" in drugs.columns else [None] * len(drugs)
    rows = []
    for name, cid in zip(drugs["drug"], cids):
        key = normalise_drug(name)
        rows.append(_decide("drug", name, name, [
            ("override", {overrides[name]} if name in overrides else set()),
            ("pubchem id", by_cid.get(_cid(cid), set())),
            ("exact name" if name in gdsc_names else "normalised name", by_name.get(key, set())),
            ("synonym", by_syn.get(key, set()))]))
    return pd.DataFrame(rows, columns=REPORT_COLUMNS)


def match_cell_lines(cell_meta: pd.DataFrame, gdsc: pd.DataFrame, models: pd.DataFrame | None,
                     overrides: dict[str, str]) -> pd.DataFrame:
    lines = cell_meta.drop_duplicates("Cell_ID_Cellosaur")  # one row per driver mutation upstream
    gdsc_names = set(gdsc["CELL_LINE_NAME"])
    by_name = _index((normalise_cell_line(n), n) for n in gdsc_names)
    by_rrid, by_syn = {}, {}
    if models is not None and "SANGER_MODEL_ID" in gdsc.columns:
        by_model = _index(zip(gdsc["SANGER_MODEL_ID"], gdsc["CELL_LINE_NAME"]))
        by_rrid = {rrid: set().union(*(by_model.get(m, set()) for m in ids))
                   for rrid, ids in _index(zip(models["RRID"], models["model_id"])).items()}
        by_syn = _index((normalise_cell_line(sy), n)
                        for mid, mname, syns in zip(models["model_id"], models["model_name"],
                                                    models["synonyms"])
                        for sy in [mname, *_split(syns)] for n in by_model.get(mid, set()))
    rows = []
    for cvcl, name in zip(lines["Cell_ID_Cellosaur"], lines["cell_name"]):
        override = overrides.get(cvcl) or overrides.get(name)
        if cvcl in by_rrid and not override:
            # the model list knows this line: its identifier decides, names are not consulted
            hit = by_rrid[cvcl]
            rows.append(_decide("cell_line", cvcl, name, [("cellosaurus id", hit)]) if hit else
                        ("cell_line", cvcl, name, None, "none", "its Sanger model has no GDSC IC50"))
            continue
        rows.append(_decide("cell_line", cvcl, name, [
            ("override", {override} if override else set()),
            ("exact name" if name in gdsc_names else "normalised name",
             by_name.get(normalise_cell_line(name), set())),
            ("synonym", by_syn.get(normalise_cell_line(name), set()))]))
    out = pd.DataFrame(rows, columns=REPORT_COLUMNS)
    # two Tahoe lines claiming one GDSC line are ambiguous too
    shared = out["gdsc_name"].notna() & out.duplicated("gdsc_name", keep=False)
    out.loc[shared, "note"] = "several Tahoe lines match GDSC " + out.loc[shared, "gdsc_name"]
    out.loc[shared, ["gdsc_name", "how"]] = [None, "ambiguous"]
    return out


def match(drug_meta: pd.DataFrame, cell_meta: pd.DataFrame, gdsc: pd.DataFrame, *,
          compounds: pd.DataFrame | None = None, models: pd.DataFrame | None = None,
          overrides: pd.DataFrame | None = None) -> Matches:
    """Every Tahoe drug and cell line -> its GDSC partner, by identifier where the tables allow."""
    ov = overrides if overrides is not None else pd.DataFrame(columns=["kind", "tahoe", "gdsc"])
    for kind, col in (("drug", "DRUG_NAME"), ("cell_line", "CELL_LINE_NAME")):
        unknown = sorted(set(ov.loc[ov["kind"] == kind, "gdsc"]) - set(gdsc[col]))
        if unknown:
            raise PipelineError(f"match overrides name GDSC {kind.replace('_', ' ')}(s) {unknown} "
                                f"that are not in the GDSC tables.")
    def pick(kind: str) -> dict[str, str]:
        return dict(zip(ov.loc[ov["kind"] == kind, "tahoe"], ov.loc[ov["kind"] == kind, "gdsc"]))
    drug_report = match_drugs(drug_meta, set(gdsc["DRUG_NAME"]), compounds, pick("drug"))
    line_report = match_cell_lines(cell_meta, gdsc, models, pick("cell_line"))
    report = pd.concat([drug_report, line_report], ignore_index=True)
    for kind, part in report.groupby("kind"):
        counts = part["how"].value_counts().to_dict()
        log.info("match %s: %d Tahoe %ss: %s", kind, len(part), kind.replace("_", " "),
                 ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
        for _, r in part[part["how"] == "ambiguous"].iterrows():
            log.warning("ambiguous %s %r (%s); not matched", kind.replace("_", " "), r["tahoe_name"],
                        r["note"])
    ok = report[report["gdsc_name"].notna()]
    lines = cell_meta.drop_duplicates("Cell_ID_Cellosaur")
    m = Matches(
        drugs=dict(zip(ok.loc[ok.kind == "drug", "tahoe_id"], ok.loc[ok.kind == "drug", "gdsc_name"])),
        cell_lines=dict(zip(ok.loc[ok.kind == "cell_line", "tahoe_id"],
                            ok.loc[ok.kind == "cell_line", "gdsc_name"])),
        cell_names=dict(zip(lines["Cell_ID_Cellosaur"], lines["cell_name"])),
        report=report)
    if not m.drugs or not m.cell_lines:
        side = "drug" if not m.drugs else "cell line"
        t_names = (drug_report if side == "drug" else line_report)["tahoe_name"].astype(str).tolist()
        g_names = sorted(set(gdsc["DRUG_NAME" if side == "drug" else "CELL_LINE_NAME"]))
        raise PipelineError(f"no Tahoe {side} matches any GDSC {side}. " + closest(t_names, g_names))
    return m


def closest(tahoe_names: list[str], gdsc_names: list[str], n: int = 5) -> str:
    """A hint for an empty match: the nearest names across the two sides."""
    hints = []
    for t in tahoe_names[:n]:
        near = difflib.get_close_matches(t, gdsc_names, n=2, cutoff=0.3)
        hints.append(f"{t!r} ~ {near}" if near else f"{t!r} ~ (nothing close)")
    return (f"Tahoe has {len(tahoe_names)} names, e.g. {tahoe_names[:n]}; GDSC has {len(gdsc_names)}, "
            f"e.g. {gdsc_names[:n]}. Closest: " + "; ".join(hints) + ".")


def labelled_pairs(m: Matches, gdsc: pd.DataFrame) -> pd.DataFrame:
    """(Tahoe drug, cell_line_id) pairs that have a GDSC label, with the label."""
    d = pd.DataFrame(list(m.drugs.items()), columns=["drug", "DRUG_NAME"])
    c = pd.DataFrame(list(m.cell_lines.items()), columns=["cell_line_id", "CELL_LINE_NAME"])
    pairs = d.merge(c, how="cross").merge(gdsc, on=["DRUG_NAME", "CELL_LINE_NAME"], how="inner")
    if pairs.empty:
        raise PipelineError(f"no (drug, cell line) pair is both in Tahoe and labelled in GDSC: "
                            f"{len(m.drugs)} drugs and {len(m.cell_lines)} cell lines matched, but "
                            f"GDSC has no IC50 for any of their combinations.")
    pairs["cell_name"] = pairs["cell_line_id"].map(m.cell_names)
    return pairs


def attach_labels(cells: pa.Table, pairs: pd.DataFrame) -> pa.Table:
    """The merged table: every cell with its pair's ln IC50 (columns of the merged-table contract)."""
    labels = pairs[["drug", "cell_line_id", "LN_IC50", "cell_name", "gdsc_dataset"]]
    lab = cells.select(["drug", "cell_line_id"]).to_pandas().merge(
        labels, on=["drug", "cell_line_id"], how="left", validate="many_to_one")
    if lab["LN_IC50"].isna().all():
        raise PipelineError("merge produced no labelled cell: none of the downsampled cells belongs "
                            "to a GDSC-labelled (drug, cell line) pair.")
    keep = lab["LN_IC50"].notna().to_numpy()
    out = cells.filter(pa.array(keep))
    lab = lab[keep]
    out = out.append_column("LN_IC50", pa.array(lab["LN_IC50"].to_numpy(np.float64)))
    for col in ("cell_name", "gdsc_dataset"):
        out = out.append_column(col, pa.array(lab[col], pa.string(), from_pandas=True))
    log.info("merged: %d cells, %d drugs, %d cell lines, %d pairs", out.num_rows,
             lab["drug"].nunique(), lab["cell_line_id"].nunique(),
             len(lab.drop_duplicates(["drug", "cell_line_id"])))
    return out
