"""Matching Tahoe names to GDSC names, and attaching labels."""
import pandas as pd
import pyarrow as pa
import pytest

import merge
from common import PipelineError


def gdsc(drugs, lines):
    return pd.DataFrame([{"DRUG_NAME": d, "CELL_LINE_NAME": c, "LN_IC50": 1.0, "gdsc_dataset": "GDSC2"}
                         for d in drugs for c in lines])


def meta(drugs, lines):
    return (pd.DataFrame({"drug": drugs}),
            pd.DataFrame({"cell_name": list(lines.values()), "Cell_ID_Cellosaur": list(lines)}))


@pytest.mark.parametrize("tahoe,gdsc_name", [("Doxorubicin (hydrochloride)", "Doxorubicin"),
                                             ("olaparib", "Olaparib"),
                                             ("Osimertinib (mesylate)", "Osimertinib"),
                                             ("Cabozantinib (S-malate)", "Cabozantinib"),
                                             ("Trametinib (DMSO_TF solvate)", "Trametinib")])
def test_salt_solvate_and_case_variants_of_a_drug_match(tahoe, gdsc_name):
    assert merge.normalise_drug(tahoe) == merge.normalise_drug(gdsc_name)


def test_stereo_forms_are_not_merged_into_the_racemate():
    assert merge.normalise_drug("(S)-Crizotinib") != merge.normalise_drug("Crizotinib")


@pytest.mark.parametrize("a,b", [("COLO 205", "COLO-205"), ("Hs 766T", "Hs-766T"),
                                 ("NIH:OVCAR-3", "NIH-OVCAR-3"), ("SW 1417", "SW1417")])
def test_cellosaurus_and_gdsc_spellings_of_a_cell_line_match(a, b):
    assert merge.normalise_cell_line(a) == merge.normalise_cell_line(b)


def test_match_reports_how_each_name_matched():
    drugs, lines = meta(["Erlotinib", "Doxorubicin (hydrochloride)", "Vorinostat", "DMSO_TF",
                         "Trametinib (DMSO_TF solvate)"], {"CVCL_0035": "COLO 205", "CVCL_0023": "A549"})
    m = merge.match(drugs, lines, gdsc(["Erlotinib", "Doxorubicin", "Trametinib"], ["COLO-205", "A549"]))
    how = dict(zip(m.report["tahoe_name"], m.report["how"]))
    assert how["Erlotinib"] == "exact name"
    assert how["Doxorubicin (hydrochloride)"] == "normalised name"
    assert how["Vorinostat"] == "none"
    assert how["COLO 205"] == "normalised name"
    assert m.drugs["Trametinib (DMSO_TF solvate)"] == "Trametinib"  # a drug, not the control
    assert "DMSO_TF" not in m.drugs and "DMSO_TF" not in set(m.report["tahoe_name"])
    assert m.cell_lines == {"CVCL_0035": "COLO-205", "CVCL_0023": "A549"}


def test_an_ambiguous_name_is_reported_not_matched():
    drugs, lines = meta(["Erlotinib"], {"CVCL_1097": "C32", "CVCL_0023": "A549"})
    m = merge.match(drugs, lines, gdsc(["Erlotinib"], ["C32", "C-32", "A549"]))
    row = m.report[m.report["tahoe_name"] == "C32"].iloc[0]
    assert row["how"] == "ambiguous" and "C-32" in row["note"]
    assert "CVCL_1097" not in m.cell_lines


def test_an_empty_match_lists_the_closest_names():
    drugs, lines = meta(["Erlotinib"], {"CVCL_0023": "A549"})
    with pytest.raises(PipelineError) as e:
        merge.match(drugs, lines, gdsc(["Erlotinib"], ["A-459", "MCF7"]))
    msg = str(e.value)
    assert "no Tahoe cell line matches" in msg and "A549" in msg and "A-459" in msg


def test_labels_are_attached_and_unlabelled_cells_dropped():
    drugs, lines = meta(["Erlotinib"], {"CVCL_0023": "A549", "CVCL_0320": "HT-29"})
    g = pd.DataFrame({"DRUG_NAME": ["Erlotinib"], "CELL_LINE_NAME": ["A549"], "LN_IC50": [2.5],
                      "gdsc_dataset": ["GDSC1"]})
    m = merge.match(drugs, lines, g)
    pairs = merge.labelled_pairs(m, g)
    cells = pa.table({"genes": [[3], [4], [5]], "expressions": [[1.0], [2.0], [3.0]],
                      "drug": ["Erlotinib"] * 3, "cell_line_id": ["CVCL_0023", "CVCL_0320", "CVCL_0023"]})
    out = merge.attach_labels(cells, pairs)
    assert out["LN_IC50"].to_pylist() == [2.5, 2.5]
    assert out["cell_name"].to_pylist() == ["A549", "A549"]
    assert out["gdsc_dataset"].to_pylist() == ["GDSC1", "GDSC1"]
