"""Metrics and naive baselines, checked against hand computations."""
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import data
import evaluate


def test_baselines_match_a_hand_computation():
    train = pd.DataFrame({"drug": ["a", "a", "a", "b", "b"], "cell_line_id": ["x", "x", "y", "x", "y"],
                          "LN_IC50": [1.0, 1.0, 3.0, 5.0, 9.0]})
    test = pd.DataFrame({"drug": ["a", "b", "c"], "cell_line_id": ["y", "z", "x"],
                         "LN_IC50": [0.0, 0.0, 0.0]})
    p = evaluate.predict_baselines(evaluate.fit_baselines(train), test)
    # training pairs: (a,x)=1, (a,y)=3, (b,x)=5, (b,y)=9 -> global 4.5; drug a 2, b 7; line x 3, y 6
    assert p["global_mean"].tolist() == [4.5, 4.5, 4.5]
    assert p["drug_mean"].tolist() == [2.0, 7.0, 4.5]           # unseen drug c -> global
    assert p["cell_line_mean"].tolist() == [6.0, 4.5, 3.0]      # unseen line z -> global
    assert p["mean_effects"].tolist() == [2.0 + 6.0 - 4.5, 7.0, 3.0]


def test_regression_metrics_match_numpy_and_scipy():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    p = np.array([1.5, 1.5, 3.5, 5.0])
    m = evaluate.regression_metrics(y, p)
    assert m["mse"] == pytest.approx(np.mean((y - p) ** 2))
    assert m["rmse"] == pytest.approx(np.sqrt(m["mse"]))
    assert m["pcc"] == pytest.approx(np.corrcoef(y, p)[0, 1])
    assert m["scc"] == pytest.approx(0.9486832980505138)
    assert np.isnan(evaluate.regression_metrics(y, np.ones(4))["pcc"])


def test_pair_labels_and_sampled_cells_match_a_hand_computation():
    keys = pa.table({"drug": ["a", "b", "a", "a", "b", "a"], "cell_line_id": ["x", "x", "x", "y", "x", "x"],
                     "LN_IC50": [1.0, 5.0, 2.0, 7.0, 6.0, 4.0]}).unify_dictionaries()
    pair = data.group_ids(keys, ["drug", "cell_line_id"])
    assert pair.tolist() == [0, 2, 0, 1, 2, 0]                      # (a,x) (a,y) (b,x): sorted
    rows = np.array([0, 2, 3, 4])                                   # rows 1 and 5 left out
    pairs = evaluate.pair_labels(keys, rows, pair[rows])
    assert pairs.to_dict("list") == {"drug": ["a", "a", "b"], "cell_line_id": ["x", "y", "x"],
                                     "LN_IC50": [1.5, 7.0, 6.0]}
    # the cells of a pair kept for its pseudobulk: its max_cells lowest draws, as pandas ranks them
    draws = np.random.default_rng(3).random(len(pair))
    ranked = pd.DataFrame({"pair": pair, "r": draws}).groupby("pair")["r"].rank(method="first")
    assert evaluate.sample_rows(pair, max_cells=2, seed=3).tolist() == np.flatnonzero(ranked <= 2).tolist()
    assert evaluate.sample_rows(pair, max_cells=1, seed=3).tolist() == np.flatnonzero(ranked <= 1).tolist()
