"""Metrics and naive baselines, checked against hand computations."""
import numpy as np
import pandas as pd
import pytest

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
