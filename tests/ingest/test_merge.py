"""Matching Tahoe names to GDSC names, and attaching labels."""
import pandas as pd
import pyarrow as pa
import pytest

from common import PipelineError
from ingest import merge


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


def compounds_export(tmp_path, rows):
    path = tmp_path / "Drug_list.csv"
    columns = ["Drug Id", "Name", "Synonyms", "Targets", "Target pathway", "PubCHEM", "Datasets",
               "number of cell lines", "Screening site"]
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False)
    return merge.load_compounds(path)


def test_a_drug_matches_by_pubchem_cid_across_names(tmp_path):
    comp = compounds_export(tmp_path, [[1084, "Rapamycin", "AY-22989, Sirolimus", "MTOR", "PI3K", "5284616",
                                        "GDSC2", 900, "SANGER"]])
    drugs = pd.DataFrame({"drug": ["Sirolimus (something)"], "pubchem_cid": ["5284616.0"]})
    _, lines = meta([], {"CVCL_0023": "A549"})
    m = merge.match(drugs, lines, gdsc(["Rapamycin"], ["A549"]), compounds=comp)
    assert m.drugs == {"Sirolimus (something)": "Rapamycin"}
    assert m.report.set_index("tahoe_name").loc["Sirolimus (something)", "how"] == "pubchem id"


def test_a_drug_matches_by_gdsc_synonym_without_cids(tmp_path):
    path = tmp_path / "screened_compounds_rel_8.5.csv"
    pd.DataFrame({"DRUG_ID": [1084], "SCREENING_SITE": ["SANGER"], "DRUG_NAME": ["Rapamycin"],
                  "SYNONYMS": ["AY-22989, Sirolimus, WY-090217"], "TARGET": ["MTOR"],
                  "TARGET_PATHWAY": ["PI3K/MTOR signaling"]}).to_csv(path, index=False)
    drugs, lines = meta(["Sirolimus"], {"CVCL_0023": "A549"})
    m = merge.match(drugs, lines, gdsc(["Rapamycin"], ["A549"]), compounds=merge.load_compounds(path))
    assert m.report.set_index("tahoe_name").loc["Sirolimus", "how"] == "synonym"


def test_pubchem_cells_with_several_ids_or_words_are_parsed(tmp_path):
    comp = compounds_export(tmp_path, [[1, "A", "", "", "", "5291, 123", "GDSC1", 1, "S"],
                                       [2, "B", "", "", "", "several", "GDSC1", 1, "S"],
                                       [3, "C", "", "", "", "none", "GDSC1", 1, "S"]])
    assert comp["cids"].tolist() == [[5291, 123], [], []]


def model_list(tmp_path, rows):
    path = tmp_path / "model_list_20240110.csv"
    pd.DataFrame(rows, columns=["model_id", "model_name", "synonyms", "RRID", "COSMIC_ID", "BROAD_ID"]
                 ).to_csv(path, index=False)
    return merge.load_model_list(path)


def test_a_cellosaurus_accession_resolves_a_name_that_is_ambiguous(tmp_path):
    g = pd.DataFrame({"DRUG_NAME": ["Erlotinib"] * 3, "CELL_LINE_NAME": ["C32", "C-32", "A549"],
                      "SANGER_MODEL_ID": ["SIDM00890", "SIDM01234", "SIDM00903"],
                      "LN_IC50": [1.0, 2.0, 3.0], "gdsc_dataset": ["GDSC2"] * 3})
    models = model_list(tmp_path, [["SIDM00890", "C32", "", "CVCL_1097", 906830, ""],
                                   ["SIDM01234", "C-32", "", "CVCL_9999", 1, ""],
                                   ["SIDM00903", "A549", "", "CVCL_0023", 905949, ""]])
    drugs, lines = meta(["Erlotinib"], {"CVCL_1097": "C32", "CVCL_0023": "A549"})
    by_name = merge.match(drugs, lines, g)
    assert by_name.report.set_index("tahoe_name").loc["C32", "how"] == "ambiguous"
    by_id = merge.match(drugs, lines, g, models=models)
    assert by_id.cell_lines == {"CVCL_1097": "C32", "CVCL_0023": "A549"}
    assert by_id.report.set_index("tahoe_name").loc["C32", "how"] == "cellosaurus id"


def test_a_model_without_gdsc_data_is_not_matched_by_name(tmp_path):
    g = pd.DataFrame({"DRUG_NAME": ["Erlotinib", "Erlotinib"], "CELL_LINE_NAME": ["C32", "A549"],
                      "SANGER_MODEL_ID": ["SIDM00001", "SIDM00002"], "LN_IC50": [1.0, 1.0],
                      "gdsc_dataset": ["GDSC2"] * 2})
    models = model_list(tmp_path, [["SIDM07777", "C32", "", "CVCL_1097", 1, ""],
                                   ["SIDM00002", "A549", "", "CVCL_0023", 2, ""]])
    drugs, lines = meta(["Erlotinib"], {"CVCL_1097": "C32", "CVCL_0023": "A549"})
    m = merge.match(drugs, lines, g, models=models)
    row = m.report.set_index("tahoe_name").loc["C32"]
    assert row["how"] == "none" and "no GDSC" in row["note"] and "CVCL_1097" not in m.cell_lines


def test_an_override_wins_and_an_unknown_gdsc_name_in_it_is_an_error(tmp_path):
    drugs, lines = meta(["Erlotinib"], {"CVCL_0334": "Hs 766T"})
    path = tmp_path / "overrides.csv"
    overrides = pd.DataFrame({"kind": ["cell_line"], "tahoe": ["CVCL_0334"], "gdsc": ["HS766T-GDSC"]})
    overrides.to_csv(path, index=False)
    m = merge.match(drugs, lines, gdsc(["Erlotinib"], ["HS766T-GDSC", "Hs-766T"]),
                    overrides=merge.load_overrides(path))
    assert m.cell_lines == {"CVCL_0334": "HS766T-GDSC"}
    assert m.report.set_index("tahoe_name").loc["Hs 766T", "how"] == "override"
    with pytest.raises(PipelineError, match="not in the GDSC tables"):
        merge.match(drugs, lines, gdsc(["Erlotinib"], ["Hs-766T"]), overrides=merge.load_overrides(path))


def test_two_tahoe_lines_claiming_one_gdsc_line_are_ambiguous():
    drugs, lines = meta(["Erlotinib"],
                        {"CVCL_0001": "COLO 205", "CVCL_0002": "COLO-205", "CVCL_0023": "A549"})
    m = merge.match(drugs, lines, gdsc(["Erlotinib"], ["COLO205", "A549"]))
    assert set(m.report.loc[m.report.tahoe_id.isin(["CVCL_0001", "CVCL_0002"]), "how"]) == {"ambiguous"}


def test_salt_forms_of_one_drug_all_get_its_label():
    drugs, lines = meta(["crizotinib", "Crizotinib (hydrochloride)", "(S)-Crizotinib"], {"CVCL_0023": "A549"})
    m = merge.match(drugs, lines, gdsc(["Crizotinib"], ["A549"]))
    assert m.drugs == {"crizotinib": "Crizotinib", "Crizotinib (hydrochloride)": "Crizotinib"}


def test_bad_identifier_tables_are_named(tmp_path):
    (tmp_path / "ml.csv").write_text("model_id,model_name\nSIDM1,A\n")
    with pytest.raises(PipelineError, match=r"ml.csv.*RRID"):
        merge.load_model_list(tmp_path / "ml.csv")
    (tmp_path / "ov.csv").write_text("kind,tahoe,gdsc\nline,A,B\n")
    with pytest.raises(PipelineError, match="unknown kind"):
        merge.load_overrides(tmp_path / "ov.csv")
