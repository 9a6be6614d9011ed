"""Bulk expression matrices as people download them -> a reference of one profile per cell line."""
from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import SMALL, gdsc_frame

import main
from common import PipelineError
from ingest import bulk
from ingest import gdsc as gdsc_mod
from ingest.merge import load_model_list
from ingest.table import FIRST_TOKEN, with_value_kind

GENES = ["TP53", "KRAS", "EGFR", "MYC", "BRAF", "PTEN"]
# GDSC's own names and ids for four lines; a fifth line of the files is screened by nobody
LINES = {"NCI-H1975": ("905961", "SIDM00123", "ACH-000587"),
         "HCC-827": ("1240146", "SIDM00124", "ACH-000012"),
         "A549": ("905949", "SIDM00903", "ACH-000681"),
         "KM-H2": ("1298167", "SIDM00125", "ACH-000777")}
EXTRA = ("NOT-SCREENED", "999999", "SIDM09999", "ACH-009999")


def profile(i: int) -> list[float]:
    return [float(np.sin(i + j)) * 2 + j for j in range(len(GENES))]


def gdsc(lines=LINES) -> pd.DataFrame:
    """GDSC2 labels of two drugs on the lines, with their COSMIC and Sanger ids."""
    frame = gdsc_frame([(d, line, float(k + i)) for k, d in enumerate(["Erlotinib", "Doxorubicin"])
                        for i, line in enumerate(lines)])
    frame["COSMIC_ID"] = [int(lines[n][0]) for n in frame["CELL_LINE_NAME"]]
    frame["SANGER_MODEL_ID"] = [lines[n][1] for n in frame["CELL_LINE_NAME"]]
    return frame


def combined(frame: pd.DataFrame) -> pd.DataFrame:
    return gdsc_mod.aggregate(frame.assign(gdsc_dataset="GDSC2"))


def depmap_file(path):
    """DepMap's layout: ACH- ids in an unnamed first column, genes as 'SYMBOL (ENTREZ)'; MYC twice
    under two Entrez ids (averaged)."""
    ids = [v[2] for v in LINES.values()] + [EXTRA[3]]
    cols = [f"{g} ({100 + j})" for j, g in enumerate(GENES)] + ["MYC (999)"]
    rows = [profile(i) + [profile(i)[3] + 2.0] for i in range(len(ids))]
    pd.DataFrame(rows, index=ids, columns=cols).to_csv(path)


def gdsc_rma_file(path):
    """GDSC's RMA layout: genes in rows (GENE_SYMBOLS, GENE_title), lines as DATA.<COSMIC_ID>; one
    row without a symbol, one symbol twice."""
    cosmic = [v[0] for v in LINES.values()] + [EXTRA[1]]
    values = np.array([profile(i) for i in range(len(cosmic))]).T
    frame = pd.DataFrame(values, columns=[f"DATA.{c}" for c in cosmic])
    frame.insert(0, "GENE_title", [f"{g} protein" for g in GENES])
    frame.insert(0, "GENE_SYMBOLS", GENES)
    extra = frame.iloc[[0]].assign(GENE_SYMBOLS=np.nan)
    twice = frame.iloc[[3]].copy()
    twice.iloc[0, 2:] = twice.iloc[0, 2:] + 2.0
    pd.concat([frame, extra, twice]).to_csv(path, sep="\t", index=False)


def plain_frame(myc_twice: bool = False) -> pd.DataFrame:
    """Names as other sources spell them: no NCI prefix, no punctuation, other case."""
    names = ["H1975", "hcc827", "A549", "KMH2", EXTRA[0]]
    frame = pd.DataFrame([profile(i) + [profile(i)[3] + 2.0] * myc_twice for i in range(len(names))],
                         columns=GENES + ["MYC"] * myc_twice)
    frame.insert(0, "cell_line", names)
    return frame


def check(ref: bulk.Reference, how: set[str], myc_twice: bool = True) -> None:
    lines = ref.lines.set_index("line")
    matched = lines.dropna(subset=["gdsc_name"])
    assert set(matched["how"]) == how and len(matched) == 4
    assert lines["gdsc_name"].isna().sum() == 1 and lines["how"][lines["gdsc_name"].isna()].iloc[0] == "none"
    profiles = ref.profiles.to_pandas().set_index("cell_line_id")
    assert sorted(profiles.index) == sorted(LINES)
    order = list(LINES)
    for name in LINES:   # each GDSC line holds its own profile, MYC averaged over its two columns
        want = profile(order.index(name))
        want[3] += 1.0 * myc_twice
        assert np.allclose(profiles.loc[name, "expressions"], want, atol=1e-5)
        assert list(profiles.loc[name, "genes"]) == list(range(FIRST_TOKEN, FIRST_TOKEN + 6))
    pairs = ref.pairs.to_pandas()
    assert len(pairs) == 4 and set(pairs["drug"]) == {"Erlotinib"}       # Doxorubicin has no SMILES
    assert ref.counts["drugs_without_smiles"] == 1
    assert ref.pairs.schema.metadata[b"profiles"] == b"profiles.parquet"


# spelled in lower case: found by normalised name
SMILES = {"erlotinib": "COCCOC1=C(C=C2C(=C1)C(=NC=N2)NC3=CC=CC(=C3)C#C)OCCOC"}


def test_a_depmap_matrix_matches_gdsc_through_the_model_list(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    depmap_file(tmp_path / "OmicsExpressionProteinCodingGenesTPMLogp1.csv")
    m = bulk.read_matrix(tmp_path / "OmicsExpressionProteinCodingGenesTPMLogp1.csv")
    assert m.line_kind == "depmap_id" and m.genes == GENES
    assert "DepMap (lines x 'SYMBOL (ENTREZ_ID)')" in caplog.text
    assert "1 repeated genes averaged" in caplog.text
    labels = gdsc()
    with pytest.raises(PipelineError, match="DepMap id .*--cell-model-list"):
        bulk.build(m, combined(labels), SMILES)
    passports = pd.DataFrame({"model_id": [v[1] for v in LINES.values()], "model_name": list(LINES),
                              "RRID": "", "BROAD_ID": [v[2] for v in LINES.values()]})
    ref = bulk.build(m, combined(labels), SMILES, models=passports)
    check(ref, {"model list -> sanger model id"})
    # DepMap's own Model.csv names the same ids otherwise; without Sanger ids the name decides
    passports.to_csv(tmp_path / "model_list.csv", index=False)
    depmap_models = pd.DataFrame({"ModelID": [v[2] for v in LINES.values()], "CellLineName": list(LINES),
                                  "SangerModelID": "", "COSMICID": "", "RRID": ""})
    depmap_models.to_csv(tmp_path / "Model.csv", index=False)
    check(bulk.build(m, combined(labels.drop(columns=["SANGER_MODEL_ID", "COSMIC_ID"])), SMILES,
                     models=load_model_list(tmp_path / "Model.csv")), {"model list name, exact name"})


def test_a_gdsc_rma_matrix_matches_by_cosmic_id(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    gdsc_rma_file(tmp_path / "Cell_line_RMA_proc_basalExp.txt")
    m = bulk.read_matrix(tmp_path / "Cell_line_RMA_proc_basalExp.txt")
    assert m.line_kind == "cosmic_id" and "GDSC RMA layout" in caplog.text
    assert "1 of 8 rows without a gene symbol left out" in caplog.text
    labels = gdsc()
    labels.loc[labels["CELL_LINE_NAME"] == "HCC-827", "CELL_LINE_NAME"] = "HCC827"   # the id decides
    ref = bulk.build(m, combined(labels), SMILES)
    assert set(ref.profiles["cell_line_id"].to_pylist()) == {"NCI-H1975", "HCC827", "A549", "KM-H2"}
    assert set(ref.lines.dropna()["how"]) == {"cosmic id"}


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_a_plain_matrix_matches_by_name_and_genes_in_rows_are_detected(tmp_path, suffix, caplog):
    caplog.set_level(logging.INFO)
    twice = suffix != ".parquet"          # a repeated column header (parquet holds unique names)
    frame = plain_frame(myc_twice=twice)
    path = tmp_path / f"expr{suffix}"
    if suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, sep="\t" if suffix == ".tsv" else ",", index=False)
    ref = bulk.build(bulk.read_matrix(path), combined(gdsc()), SMILES)
    check(ref, {"exact name", "normalised name", "without NCI prefix"}, myc_twice=twice)
    # transposed (genes in rows, under a 'gene' column) and named by Ensembl id (version ignored)
    t = plain_frame().set_index("cell_line").T.rename_axis("gene").reset_index()
    t["gene"] = [f"ENSG{j:011d}.{j}" for j in range(len(GENES))]
    t.to_csv(tmp_path / "t.csv", index=False)
    m = bulk.read_matrix(tmp_path / "t.csv")
    assert m.gene_kind == "ensembl_id" and m.genes[0] == "ENSG00000000000" and len(m.lines) == 5
    assert "genes in rows (first column 'gene' names genes)" in caplog.text
    genes = bulk.build(m, combined(gdsc()), SMILES).genes
    assert genes["ensembl_id"].iloc[0] == "ENSG00000000000" and genes["gene_symbol"].isna().all()


def test_names_match_one_to_one_and_are_never_guessed():
    got = bulk.match_names(["TT", "T-T", "CAL120", "KMH2", "H2869", "nothing"],
                           ["TT", "CAL-120", "KM-H2", "KMH-2", "NCI-H2869"])
    assert got["TT"] == ("TT", "exact name")
    assert got["CAL120"] == ("CAL-120", "normalised name")
    assert got["H2869"] == ("NCI-H2869", "without NCI prefix")
    assert got["KMH2"] == (None, "ambiguous")        # KM-H2 and KMH-2 are two lines
    assert got["T-T"][0] is None and got["nothing"] == (None, "none")


def test_bad_matrices_are_named(tmp_path):
    frame = plain_frame().astype({"KRAS": object})
    frame.loc[2, "KRAS"] = "high"
    frame.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(PipelineError, match=r"bad.csv': column 'KRAS' holds 'high', which is not a number"):
        bulk.read_matrix(tmp_path / "bad.csv")
    (tmp_path / "m.json").write_text("{}")
    with pytest.raises(PipelineError, match="unknown extension"):
        bulk.read_matrix(tmp_path / "m.json")
    plain_frame().assign(cell_line=[f"X{i}" for i in range(5)]).to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(PipelineError, match="no line of expression file .* matches a GDSC cell line"):
        bulk.build(bulk.read_matrix(tmp_path / "other.csv"), combined(gdsc()), SMILES)


@pytest.mark.e2e
def test_main_trains_on_a_bulk_matrix_and_writes_the_reference_once(tmp_path):
    rng = np.random.default_rng(0)
    names = [f"LINE-{i}" for i in range(12)]
    x = rng.normal(size=(12, 30))
    frame = pd.DataFrame(x, columns=[f"G{j}" for j in range(30)])
    frame.insert(0, "cell_line", [n.replace("-", "") for n in names])     # names spelled otherwise
    frame.to_csv(tmp_path / "expr.csv", index=False)
    drugs = ["Erlotinib", "Vorinostat", "olaparib"]
    rows = [(d, n, float(k + x[i, k])) for k, d in enumerate(drugs) for i, n in enumerate(names)]
    gdsc_frame(rows).to_csv(tmp_path / "GDSC2.csv", index=False)
    from conftest import SMILES as KNOWN
    smiles = tmp_path / "smiles.csv"
    pd.DataFrame({"name": drugs, "smiles": [KNOWN[d] for d in drugs]}).to_csv(smiles, index=False)
    args = ["--expression", str(tmp_path / "expr.csv"), "--gdsc2", str(tmp_path / "GDSC2.csv"),
            "--smiles-table", str(smiles), "--split", "cell_line", "--out", str(tmp_path / "run"),
            *SMALL, "--epochs", "2"]
    assert main.main(args) == 0
    run = tmp_path / "run"
    assert pq.read_metadata(run / "profiles.parquet").num_rows == 12          # one profile per line
    assert pq.read_metadata(run / "pairs.parquet").num_rows == 36
    assert "genes" not in pq.read_schema(run / "pairs.parquet").names
    counts = json.loads((run / "reference_counts.json").read_text())
    assert counts["pairs"] == 36 and counts["lines_used"] == 12
    assert counts["line_rules"] == {"normalised name": 12}
    assert pd.read_csv(run / "line_matches.csv")["gdsc_name"].notna().all()
    baselines = json.loads((run / "metrics.json").read_text())["baselines"]
    assert {"ridge_per_drug", "boosted_trees"} <= set(baselines)


def test_a_bulk_matrix_without_a_smiles_table_is_refused_before_any_work(tmp_path, caplog):
    pd.DataFrame({"cell_line": ["A"], "G1": [1.0]}).to_csv(tmp_path / "expr.csv", index=False)
    gdsc_frame([("Erlotinib", "A", 1.0)]).to_csv(tmp_path / "GDSC2.csv", index=False)
    assert main.main(["--expression", str(tmp_path / "expr.csv"), "--gdsc2", str(tmp_path / "GDSC2.csv"),
                      "--out", str(tmp_path / "run")]) == 2
    assert "--expression needs --smiles-table" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["GDSC2.csv", "expr.csv"]


@pytest.mark.e2e
def test_a_reference_trains_and_scores_as_the_table_of_one_row_per_pair(tmp_path):
    """One profile per line with the pairs apart is the per-pair table stored once: same split,
    same network, same baselines (a reference's predictor then blends the network with one ridge
    per drug)."""
    import pyarrow as pa
    rng = np.random.default_rng(2)
    lines = [f"L{i}" for i in range(10)]
    x = rng.normal(size=(10, 25)).astype(np.float32)
    from conftest import SMILES as KNOWN
    drugs = {d: KNOWN[d] for d in ("Erlotinib", "Vorinostat", "olaparib")}
    pairs = pd.DataFrame([(d, line, float(k + x[i, k] - x[i, k + 1])) for k, d in enumerate(drugs)
                          for i, line in enumerate(lines)],
                         columns=["DRUG_NAME", "CELL_LINE_NAME", "LN_IC50"])
    matrix = bulk.Matrix(lines, [f"G{j}" for j in range(25)], x, "name", "symbol", "test", "x")
    ref = bulk.build(matrix, pairs.assign(gdsc_dataset="GDSC2"), drugs)
    reference = bulk.write(ref, tmp_path / "ref")
    profiles = ref.profiles.to_pandas().set_index("cell_line_id")
    keys = ref.pairs.to_pandas()
    of_row = profiles.loc[keys["cell_line_id"]]
    per_pair = pa.table({"genes": pa.array(of_row["genes"].tolist(), pa.list_(pa.int32())),
                         "expressions": pa.array(of_row["expressions"].tolist(), pa.list_(pa.float32())),
                         **{c: pa.array(keys[c]) for c in ("cell_line_id", "drug", "canonical_smiles",
                                                           "LN_IC50")}})
    pq.write_table(with_value_kind(per_pair, "normalised"), tmp_path / "per_pair.parquet")
    flags = ["--split", "cell_line", "--epochs", "3", *SMALL, "--top-k", "0", "--value-kind", "normalised"]
    for source, out in ((reference, "a"), (tmp_path / "per_pair.parquet", "b")):
        assert main.main(["--data", str(source), "--out", str(tmp_path / out), *flags]) == 0
    a, b = (pd.read_parquet(tmp_path / r / "split.parquet") for r in "ab")
    assert a.equals(b)
    ma, mb = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in "ab")
    for name in ("test", *ma["baselines"]):   # the reference's network is the per-pair table's model
        sa = ma["members"]["network"] if name == "test" else ma["baselines"][name]
        sb = mb["test"] if name == "test" else mb["baselines"][name]
        got = [np.nan if v is None else v for v in (sa["mse"], sa["pcc"], sa["per_drug"]["pcc"])]
        want = [np.nan if v is None else v for v in (sb["mse"], sb["pcc"], sb["per_drug"]["pcc"])]
        assert got == pytest.approx(want, rel=1e-6, nan_ok=True), name
    assert set(ma["baselines"]) == set(mb["baselines"]) >= {"ridge", "ridge_per_drug", "boosted_trees"}
