"""GDSC1 + GDSC2: validation, averaging of duplicates, GDSC2 over GDSC1."""
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, gdsc_frame

import config
from common import PipelineError
from ingest import gdsc


def write(df, path):
    df.to_csv(path, index=False)
    return path


def test_duplicates_within_a_version_are_averaged_in_ln_space(tmp_path):
    g1 = write(gdsc_frame([("Erlotinib", "A549", 1.0), ("Erlotinib", "A549", 3.0),
                           ("Gefitinib", "A549", 0.5)], "GDSC1"), tmp_path / "g1.csv")
    g2 = write(gdsc_frame([("Cisplatin", "A549", 2.0)]), tmp_path / "g2.csv")
    out, counts = gdsc.combine(g1, g2, average="ln")
    row = out[(out.DRUG_NAME == "Erlotinib") & (out.CELL_LINE_NAME == "A549")]
    assert row["LN_IC50"].item() == pytest.approx(2.0)
    assert row["n_measurements"].item() == 2
    assert counts["GDSC1"]["pairs"] == 2


def test_linear_average_is_the_log_of_the_mean_ic50(tmp_path):
    g1 = write(gdsc_frame([("Erlotinib", "A549", 1.0), ("Erlotinib", "A549", 3.0)], "GDSC1"),
               tmp_path / "g1.csv")
    out, _ = gdsc.combine(g1, None, average="linear")
    assert out["LN_IC50"].item() == pytest.approx(np.log((np.e ** 1 + np.e ** 3) / 2))


def test_gdsc2_wins_over_gdsc1_on_a_shared_pair(tmp_path):
    g1 = write(gdsc_frame([("Erlotinib", "A549", 5.0), ("Erlotinib", "HT-29", 1.0)], "GDSC1"),
               tmp_path / "g1.csv")
    g2 = write(gdsc_frame([("Erlotinib", "A549", -1.0), ("Erlotinib", "A549", -3.0)]), tmp_path / "g2.csv")
    out, counts = gdsc.combine(g1, g2)
    a549 = out[out.CELL_LINE_NAME == "A549"]
    assert len(a549) == 1
    assert a549["LN_IC50"].item() == pytest.approx(-2.0)
    assert a549["gdsc_dataset"].item() == "GDSC2"
    assert out[out.CELL_LINE_NAME == "HT-29"]["gdsc_dataset"].item() == "GDSC1"
    assert counts["pairs_in_both"] == 1 and counts["pairs_kept"] == 2


def test_xlsx_and_csv_give_the_same_table(tmp_path):
    df = gdsc_frame([("Erlotinib", "A549", 1.25), ("Erlotinib", "A549", 0.75), ("Olaparib", "HT-29", -2.0)])
    write(df, tmp_path / "g.csv")
    df.to_csv(tmp_path / "g.csv.gz", index=False)
    df.to_excel(tmp_path / "g.xlsx", index=False)
    tables = [gdsc.combine(None, tmp_path / name)[0] for name in ("g.csv", "g.csv.gz", "g.xlsx")]
    pd.testing.assert_frame_equal(tables[0], tables[1])
    pd.testing.assert_frame_equal(tables[0], tables[2])


def test_missing_ln_ic50_column_names_the_file_and_the_column(tmp_path):
    path = write(gdsc_frame([("Erlotinib", "A549", 1.0)]).drop(columns="LN_IC50"), tmp_path / "bad.csv")
    with pytest.raises(PipelineError) as e:
        gdsc.combine(path, None)
    assert "bad.csv" in str(e.value) and "LN_IC50" in str(e.value)


def test_rows_with_missing_or_text_ln_ic50_are_dropped_and_counted(tmp_path):
    df = gdsc_frame([("Erlotinib", "A549", 1.0), ("Erlotinib", "HT-29", 2.0), ("Erlotinib", "C32", 3.0)])
    df["LN_IC50"] = df["LN_IC50"].astype(object)
    df.loc[1, "LN_IC50"] = "n/a"
    df.loc[2, "LN_IC50"] = None
    out, counts = gdsc.combine(None, write(df, tmp_path / "g.csv"))
    assert out["CELL_LINE_NAME"].tolist() == ["A549"]
    assert counts["GDSC2"]["rows_dropped_bad_ln_ic50"] == 2


def test_derived_three_column_tables_are_accepted(tmp_path):
    df = pd.DataFrame({"CELL_LINE_NAME": ["A549"], "DRUG_NAME": ["Erlotinib"], "LN_IC50": [0.3]})
    out, _ = gdsc.combine(None, write(df, tmp_path / "g.csv"))
    assert out["LN_IC50"].item() == pytest.approx(0.3)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(PipelineError, match="not found.*nope.csv"):
        gdsc.combine(tmp_path / "nope.csv", None)


@pytest.mark.e2e
def test_the_stand_alone_stage_takes_its_flags_from_the_config(tmp_path):
    one, two = tmp_path / "g1.csv", tmp_path / "g2.csv"
    gdsc_frame([("Erlotinib", "A549", 1.0), ("Erlotinib", "A549", 3.0)], "GDSC1").to_csv(one, index=False)
    gdsc_frame([("Vorinostat", "A549", 0.5)]).to_csv(two, index=False)
    out = tmp_path / "combined.parquet"
    assert gdsc.main([str(one), str(two), "--ic50-average", "linear", "--out", str(out)]) == 0
    got = pd.read_parquet(out).set_index("DRUG_NAME")["LN_IC50"]
    assert got["Erlotinib"] == pytest.approx(np.log((np.e + np.e ** 3) / 2))
    assert gdsc.main(["--gdsc1", str(one), "--gdsc2", str(tmp_path / "none.csv"), "--out", str(out)]) == 2
    wide = {**os.environ, "COLUMNS": "1000"}   # argparse would break a long default path mid-word
    usage = " ".join(subprocess.run([sys.executable, "-m", "ingest.gdsc", "--help"], cwd=ROOT,
                                    capture_output=True, text=True, env=wide).stdout.split())
    assert "--ic50-average {ln,linear}" in usage and "(default: ln)" in usage
    assert f"(default: {config.Config.gdsc1})" in usage       # main.py's default: the demo
