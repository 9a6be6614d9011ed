"""Checkpoints: every earlier format still loads and predicts what it predicted when written; what
this version cannot read faithfully is refused by name; settings it does not know are skipped."""
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import ROOT, SMALL, merged_table

import main
from common import PipelineError
from predictor import Predictor, checkpoint

NUMPY_1 = pytest.mark.skipif(int(np.__version__.split(".")[0]) < 2,
                             reason="formats 1 and 2 hold numpy 2 arrays, which numpy 1 cannot read")
FIXTURES = ROOT / "tests" / "fixtures"


def normalised(table):
    values = [list(np.log1p(np.array(e)) - 1.0) for e in table["expressions"].to_pylist()]
    table = table.set_column(table.schema.get_field_index("expressions"), "expressions",
                             pa.array(values, pa.list_(pa.float32())))
    return table.replace_schema_metadata({"value_kind": "normalised"})


@pytest.mark.e2e
@pytest.mark.parametrize("name, kind", [pytest.param("format1", "counts", marks=NUMPY_1),
                                        pytest.param("format2", "counts", marks=NUMPY_1),
                                        ("format3", "counts"), ("format3_normalised", "normalised"),
                                        ("format4_normalised", "normalised"),
                                        ("format5_normalised", "normalised"),
                                        ("format6_reference", "normalised"),
                                        ("format7_reference", "normalised"),
                                        ("format9_reference", "normalised")])
def test_checkpoints_of_every_earlier_format_still_predict_the_same(tmp_path, name, kind, caplog):
    """Fixtures written by the versions of each format, and what those versions predicted with them
    (format 1's with ties at the top_k boundary broken by gene id, as features do since). None
    before format 7 holds the per-drug statistics of its training lines: each gives ln IC50 and
    says why z is missing. Bulk references before format 8 keep their interval and say so."""
    table = merged_table(n_drugs=3, n_lines=4, cells_per_pair=2, seed=5)
    pq.write_table(normalised(table) if kind == "normalised" else table, tmp_path / "t.parquet")
    assert main.main(["predict", "--checkpoint", str(FIXTURES / f"{name}_best.pt"), "--data",
                      str(tmp_path / "t.parquet"), "--out", str(tmp_path / "p.parquet")]) == 0
    want = pd.read_csv(FIXTURES / f"{name}_predictions.csv")
    got = pd.read_parquet(tmp_path / "p.parquet")
    assert np.allclose(got["prediction"], want["prediction"], atol=1e-5)
    if name in ("format7_reference", "format9_reference"):   # z against its training lines
        assert np.allclose(got[["z", "percentile"]], want[["z", "percentile"]], atol=1e-5)
    else:
        assert "predates the per-drug statistics of its training lines" in caplog.text and "z" not in got
    if name.endswith("_reference"):   # a bulk reference's stack: blended, with the interval it had
        assert np.allclose(got[["ln_ic50_low", "ln_ic50_high"]], want[["ln_ic50_low", "ln_ic50_high"]],
                           atol=1e-5)
        assert ("intervals on the members' disagreement (checkpoint before format 8)" in caplog.text) == (
            name != "format9_reference")


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["format4_normalised", "format9_reference"])
def test_earlier_formats_rank_single_cells_as_they_did_new_drugs_included(tmp_path, name):
    """Cells of an .h5ad, averaged per group and aligned as those versions aligned them; the format 9
    reference also ranks a drug given by its SMILES alone, with its interval, as it did."""
    new = tmp_path / "new.csv"
    pd.DataFrame({"name": ["Aspirin"], "smiles": ["CC(=O)Oc1ccccc1C(=O)O"]}).to_csv(new, index=False)
    extra = ["--smiles", str(new)] if name == "format9_reference" else []
    assert main.main(["predict", "--checkpoint", str(FIXTURES / f"{name}_best.pt"), "--data",
                      str(FIXTURES / "format4_cells.h5ad"), "--groupby", "sample", *extra,
                      "--out", str(tmp_path / "cells")]) == 0
    got = pd.read_csv(tmp_path / "cells" / "ranking.csv")
    want = pd.read_csv(FIXTURES / f"{name.split('_')[0]}_cells_ranking.csv")
    assert got[["group", "rank", "drug"]].equals(want[["group", "rank", "drug"]])
    numbers = [c for c in want.columns if c not in ("group", "rank", "drug", "new_drug")]
    assert np.allclose(got[numbers], want[numbers], atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("change, message", [
    ({"target": "drug_zscore"}, "trained with target='drug_zscore', a setting this version no longer has"),
    ({"pos_encoding": "rotary"}, "trained with pos_encoding='rotary', which this version no longer has"),
    ({"smiles_pooling": "cls"}, "trained with smiles_pooling='cls', a setting this version no longer has"),
    ({"format": 99}, "checkpoint of format 99, newer than this version reads")])
def test_a_checkpoint_this_version_cannot_read_faithfully_is_refused_by_name(tmp_path, change, message):
    state = torch.load(FIXTURES / "format4_normalised_best.pt", weights_only=True)
    if "format" in change:
        state.update(change)
    else:
        state["model_args"].update(change)
    torch.save(state, tmp_path / "old.pt")
    with pytest.raises(PipelineError, match=message):
        Predictor.load(tmp_path / "old.pt")


@pytest.mark.e2e
def test_a_checkpoint_with_settings_this_version_lacks_loads_with_a_warning(tmp_path, table_path, caplog):
    run = tmp_path / "run"
    assert main.main(["--data", str(table_path), "--epochs", "1", "--out", str(run), *SMALL]) == 0
    state = torch.load(run / "best.pt", weights_only=True)     # tensors and plain types only
    assert state["format"] == checkpoint.FORMAT and "cells_per_group" not in state["model_args"]
    state["config"]["a_future_downsampling_knob"] = 3        # a pipeline setting added later
    state["model_args"]["a_future_model_knob"] = "x"          # and a model setting
    torch.save(state, tmp_path / "future.pt")
    assert main.main(["predict", "--checkpoint", str(tmp_path / "future.pt"), "--data", str(table_path),
                      "--out", str(tmp_path / "p.parquet")]) == 0
    assert "['a_future_model_knob'] unknown to this version, ignored" in caplog.text
    assert pd.read_parquet(tmp_path / "p.parquet")["prediction"].notna().all()
