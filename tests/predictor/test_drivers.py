"""Drivers: each gene's contribution to a prediction, by hand on a linear case."""
import numpy as np
import pandas as pd

from predictor.baselines import RidgePerDrug
from predictor.drivers import Drivers, parts
from predictor.stack import Stack


def hand_stack():
    """Two drugs on three genes, a blend that gives the ridge member 0.6."""
    coef = np.array([[-2.0, 0.5, 0.0], [0.0, 1.0, 3.0]])
    ridge = RidgePerDrug(np.array([10, 11, 12]), np.array([1.0, 2.0, 3.0]), np.array([0.5, 1.0, 2.0]),
                         ["A", "B"], coef, np.array([1.0, -1.0]))
    return Stack(ridge, {"A": 1.0, "B": -1.0}, np.array([0.4, 0.6]), {"A": 2.0, "B": 0.5}, {0.9: 1.6})


def test_drivers_of_a_linear_case_are_its_coefficients_times_the_standardised_values():
    stack = hand_stack()
    drivers = Drivers.of(stack, {"token_id": [10, 11, 12], "gene_symbol": ["EGFR", "SLFN11", "BCL2"]})
    raw = np.array([[2.0, 2.0, 3.0], [1.0, 4.0, 7.0]])            # two samples over the member's genes
    x = (raw - stack.ridge.mean) / stack.ridge.sd                  # standardised: [[2, 0, 0], [0, 2, 2]]
    want = {("A", 0): {"EGFR": 0.6 * -2.0 * 2 / 2.0},              # w_ridge x coef x value / the drug's sd
            ("A", 1): {"SLFN11": 0.6 * 0.5 * 2 / 2.0},
            ("B", 1): {"BCL2": 0.6 * 3.0 * 2 / 0.5, "SLFN11": 0.6 * 1.0 * 2 / 0.5}}
    drugs, rows = ["A", "A", "B", "B"], np.array([0, 1, 0, 1])
    long = drivers.long(x, drugs, rows, top=3)
    for (drug, sample), genes in want.items():
        pair = [i for i, (d, r) in enumerate(zip(drugs, rows)) if d == drug and r == sample][0]
        got = long[long["pair"] == pair].set_index("gene")["contribution"]
        for gene, value in genes.items():
            assert np.isclose(got[gene], value)
        assert np.isclose(got.abs().sum(), sum(abs(v) for v in genes.values()))   # the rest are 0
    cols = drivers.columns(x, drugs, rows, top=1)
    assert cols["drivers"][[0, 1, 3]].tolist() == ["EGFR -1.20", "SLFN11 +0.30", "BCL2 +7.20"]
    assert np.isclose(cols["drivers_share"][3], 7.2 / (7.2 + 2.4))
    assert np.isnan(cols["drivers_share"][2])                      # B at sample 0: nothing moves it
    # the weights, strongest first, with what a high value means
    table = drivers.of_drug("A")
    assert table["gene"].tolist()[:2] == ["EGFR", "SLFN11"]
    assert table["when_high"].tolist()[:2] == ["sensitive", "resistant"]
    assert np.isclose(table["weight"][0], 0.6 * -2.0 / 2.0)
    # the contributions add up to the member's part of z, less what the training mean profile gets
    ridge = stack.ridge.predict(x, drugs, rows)
    z = parts(stack, drugs, np.zeros(4), ridge, stack.unit(drugs))
    sums = long.groupby("pair")["contribution"].sum().reindex(range(4), fill_value=0.0).to_numpy()
    mean = np.array([1.0, 1.0, -1.0, -1.0])
    at_mean = 0.6 * (stack.ridge.intercept[[0, 0, 1, 1]] - mean) / stack.unit(drugs)
    assert np.allclose(sums, z["z_linear"] - at_mean)


def test_a_drug_without_weights_gets_no_drivers():
    drivers = Drivers.of(hand_stack())
    cols = drivers.columns(np.ones((1, 3)), ["new"], np.array([0]))
    assert cols["drivers"].tolist() == [""] and np.isnan(cols["drivers_share"][0])
    assert drivers.genes.tolist() == ["10", "11", "12"]             # no gene table: the token ids
    empty = drivers.long(np.ones((1, 3)), ["new"], np.array([0]))
    assert empty.empty and pd.api.types.is_float_dtype(empty["contribution"])
