"""Match Tahoe drugs and cell lines to GDSC, then attach one ln IC50 label to every kept cell.

Matching works on the metadata tables (before any expression is read), so the downsample stage
only ever materialises labelled cells. Names are compared after normalisation: case, spaces,
hyphens, dots, colons and salt/solvate suffixes such as "(hydrochloride)" or
"(DMSO_TF solvate)" do not matter. A normalised name that stands for two different GDSC names is
ambiguous and is reported, never guessed. `match_report.csv` lists every Tahoe drug and cell line
with its GDSC partner (or none) and how it matched.
"""
from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from common import PipelineError

log = logging.getLogger("ic50.merge")

CONTROL = "DMSO_TF"
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


def _match(tahoe: pd.DataFrame, gdsc_names: pd.Series, normalise, kind: str) -> pd.DataFrame:
    """tahoe has columns tahoe_id, tahoe_name; returns them with gdsc_name and how."""
    gdsc = pd.DataFrame({"gdsc_name": sorted(set(gdsc_names))})
    gdsc["key"] = gdsc["gdsc_name"].map(normalise)
    keys = gdsc.groupby("key")["gdsc_name"].agg(list)
    rows = []
    for tid, tname in zip(tahoe["tahoe_id"], tahoe["tahoe_name"]):
        cands = keys.get(normalise(tname), [])
        if len(cands) == 1:
            how = "exact name" if cands[0] == tname else "normalised name"
            rows.append((kind, tid, tname, cands[0], how, ""))
        elif len(cands) > 1:  # e.g. GDSC lists both 'C32' and 'C-32': never guess which is meant
            rows.append((kind, tid, tname, None, "ambiguous",
                         "several GDSC names: " + "; ".join(cands)))
        else:
            rows.append((kind, tid, tname, None, "none", ""))
    out = pd.DataFrame(rows, columns=["kind", "tahoe_id", "tahoe_name", "gdsc_name", "how", "note"])
    # two Tahoe entries claiming one GDSC name are ambiguous too
    shared = out["gdsc_name"].notna() & out.duplicated("gdsc_name", keep=False)
    out.loc[shared, "note"] = "several Tahoe entries match GDSC " + out.loc[shared, "gdsc_name"]
    out.loc[shared, ["gdsc_name", "how"]] = [None, "ambiguous"]
    return out


def match(drug_meta: pd.DataFrame, cell_meta: pd.DataFrame, gdsc: pd.DataFrame) -> Matches:
    drugs = drug_meta[["drug"]].drop_duplicates()
    drugs = drugs[drugs["drug"] != CONTROL]  # exact name: 'Trametinib (DMSO_TF solvate)' is a drug
    drug_report = _match(pd.DataFrame({"tahoe_id": drugs["drug"], "tahoe_name": drugs["drug"]}),
                         gdsc["DRUG_NAME"], normalise_drug, "drug")
    lines = cell_meta.drop_duplicates("Cell_ID_Cellosaur")  # one row per driver mutation upstream
    line_report = _match(pd.DataFrame({"tahoe_id": lines["Cell_ID_Cellosaur"],
                                       "tahoe_name": lines["cell_name"]}),
                         gdsc["CELL_LINE_NAME"], normalise_cell_line, "cell_line")
    report = pd.concat([drug_report, line_report], ignore_index=True)
    for kind, part in report.groupby("kind"):
        counts = part["how"].value_counts().to_dict()
        log.info("match %s: %d Tahoe %ss, %s", kind, len(part), kind.replace("_", " "),
                 ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
        for _, r in part[part["how"] == "ambiguous"].iterrows():
            log.warning("ambiguous %s %r matches several GDSC names (%s); not matched",
                        kind, r["tahoe_name"], r["note"])
    ok = report[report["gdsc_name"].notna()]
    m = Matches(
        drugs=dict(zip(ok.loc[ok.kind == "drug", "tahoe_id"], ok.loc[ok.kind == "drug", "gdsc_name"])),
        cell_lines=dict(zip(ok.loc[ok.kind == "cell_line", "tahoe_id"],
                            ok.loc[ok.kind == "cell_line", "gdsc_name"])),
        cell_names=dict(zip(lines["Cell_ID_Cellosaur"], lines["cell_name"])),
        report=report)
    if not m.drugs or not m.cell_lines:
        side = "drug" if not m.drugs else "cell line"
        t_names = (drugs["drug"] if side == "drug" else lines["cell_name"]).astype(str).tolist()
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
    key_cells = pd.DataFrame({"drug": cells["drug"].to_pylist(),
                              "cell_line_id": cells["cell_line_id"].to_pylist()})
    lab = key_cells.merge(pairs[["drug", "cell_line_id", "LN_IC50", "cell_name", "gdsc_dataset"]],
                          on=["drug", "cell_line_id"], how="left", validate="many_to_one")
    if lab["LN_IC50"].isna().all():
        raise PipelineError("merge produced no labelled cell: none of the downsampled cells belongs "
                            "to a GDSC-labelled (drug, cell line) pair.")
    keep = lab["LN_IC50"].notna().to_numpy()
    out = cells.filter(pa.array(keep))
    lab = lab[keep]
    out = out.append_column("LN_IC50", pa.array(lab["LN_IC50"].to_numpy(np.float64)))
    out = out.append_column("cell_name", pa.array(lab["cell_name"].tolist(), pa.string()))
    out = out.append_column("gdsc_dataset", pa.array(lab["gdsc_dataset"].tolist(), pa.string()))
    log.info("merged: %d cells, %d drugs, %d cell lines, %d pairs", out.num_rows,
             lab["drug"].nunique(), lab["cell_line_id"].nunique(),
             len(lab.drop_duplicates(["drug", "cell_line_id"])))
    return out
