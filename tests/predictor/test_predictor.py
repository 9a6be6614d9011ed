"""The Predictor from a notebook: an AnnData in memory and a DataFrame of samples are answered as
`main.py predict` answers their files, and every output's columns come from one `answer`."""
import anndata
import numpy as np
import pandas as pd
import pytest
from conftest import BULK_GENES, BULK_LINES, cells_h5ad

import main
from predictor import Predictor
from predictor.samples import Samples


@pytest.mark.e2e
def test_an_anndata_in_memory_is_answered_as_main_py_predict_answers_its_file(bulk_run, tmp_path):
    d, x = bulk_run
    cells_h5ad(tmp_path / "cells.h5ad", x, [0, 3, 7], BULK_GENES)
    assert main.main(["predict", "--checkpoint", str(d / "run" / "best.pt"), "--data",
                      str(tmp_path / "cells.h5ad"), "--groupby", "sample", "--out",
                      str(tmp_path / "out")]) == 0
    adata = anndata.read_h5ad(tmp_path / "cells.h5ad")
    answer = Predictor.load(d / "run" / "best.pt").answer(adata, groupby="sample")
    pd.testing.assert_frame_equal(answer.ranking, pd.read_csv(tmp_path / "out" / "ranking.csv"),
                                  check_dtype=False, rtol=1e-9)
    pd.testing.assert_frame_equal(answer.table, pd.read_parquet(tmp_path / "out" / "predictions.parquet"),
                                  check_dtype=False)
    written = anndata.read_h5ad(tmp_path / "out" / "cells.h5ad")   # the same entries, in memory
    for key in ("ln_ic50", "ln_ic50_z"):
        assert np.array_equal(adata.obsm[key], written.obsm[key])
    assert list(adata.uns["ln_ic50_drugs"]) == list(written.uns["ln_ic50_drugs"])


@pytest.mark.e2e
def test_a_frame_of_bulk_samples_is_answered_as_main_py_predict_answers_its_csv(bulk_run, tmp_path):
    d, x = bulk_run
    frame = pd.DataFrame(x[[1, 4, 9]], index=[BULK_LINES[i] for i in (1, 4, 9)], columns=BULK_GENES)
    frame.rename_axis("sample").to_csv(tmp_path / "samples.csv")
    assert main.main(["predict", "--checkpoint", str(d / "run" / "best.pt"), "--data",
                      str(tmp_path / "samples.csv"), "--out", str(tmp_path / "out")]) == 0
    answer = Predictor.load(d / "run" / "best.pt").answer(frame, drugs=["olaparib", "Erlotinib"])
    want = pd.read_csv(tmp_path / "out" / "ranking.csv")
    want = want[want["drug"].isin(["olaparib", "Erlotinib"])]
    assert set(answer.ranking["group"]) == set(frame.index) and len(answer.ranking) == 6
    got = answer.ranking.set_index(["group", "drug"]).sort_index()
    want = want.set_index(["group", "drug"]).sort_index()
    assert np.allclose(got[["z", "ln_ic50", "ln_ic50_low", "ln_ic50_high"]],
                       want[["z", "ln_ic50", "ln_ic50_low", "ln_ic50_high"]], atol=1e-9)


@pytest.mark.e2e
def test_a_table_of_pairs_and_a_grid_of_the_same_profiles_get_the_same_columns(bulk_run):
    """Each (profile, drug) pair is answered alike whether it comes as its own row or as a cell of
    profiles x drugs: one answer for every output."""
    d, x = bulk_run
    predictor = Predictor.load(d / "run" / "best.pt")
    vocab = predictor.network.vocab
    values = x[[2, 5]]                                  # two lines' own profiles, over the vocabulary
    grid = predictor.answer(Samples.of_values(values, vocab))
    drugs = list(predictor.network.drugs)
    tokens = Samples.of_values(values, vocab).tokens.pairs(np.repeat([0, 1], len(drugs)),
                                                          np.tile(np.arange(len(drugs)), 2), drugs)
    rows = predictor.answer(Samples.of_rows(tokens))
    assert grid["drug"].tolist() == rows["drug"].tolist() == drugs * 2
    for column in ("ln_ic50", "network", "ridge", "ln_ic50_low", "ln_ic50_high", "z", "percentile"):
        assert np.allclose(grid[column], rows[column], atol=1e-9), column
    assert not np.allclose(grid["ln_ic50"], grid["network"])   # the stack blends the ridge member in
