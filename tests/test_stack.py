"""A bulk reference's predictor: the blend is fitted on validation rows alone, and its intervals
hold their nominal coverage."""
import numpy as np
import pandas as pd
import pytest
from conftest import reference_lines

import baselines
import stack


def fitted(keys, profiles, part, network):
    train = keys[part == "train"]
    query = keys[part != "train"][["drug", "cell_line_id"]]
    design = baselines.reference_design(profiles, train, query, n_genes=20)
    val = part == "val"
    return stack.fit_stack(design, keys[val], network[val])


def test_blend_weights_are_fitted_on_validation_rows_only():
    keys, profiles, part = reference_lines()
    network = keys["LN_IC50"].to_numpy() + np.random.default_rng(1).normal(size=len(keys))
    base = fitted(keys, profiles, part, network)
    leaked = keys.assign(LN_IC50=np.where(part == "test", keys["LN_IC50"] * -3 + 7, keys["LN_IC50"]))
    other = fitted(leaked, profiles, part, network)            # test labels changed: nothing moves
    assert np.array_equal(base.weights, other.weights)
    assert (base.scale, base.floor) == (other.scale, other.floor)
    moved = keys.assign(LN_IC50=np.where(part == "val", keys["LN_IC50"] * -3 + 7, keys["LN_IC50"]))
    assert not np.allclose(fitted(moved, profiles, part, network).weights, base.weights)   # val labels do
    assert base.weights[1] > base.weights[0] > 0     # the ridge reads the genes; the network is noisier


def test_the_conformal_interval_holds_its_nominal_coverage_under_known_noise():
    rng = np.random.default_rng(0)
    ridge_model = baselines.RidgePerDrug(np.arange(1), np.zeros(1), np.ones(1), ["d"], np.ones((1, 1)),
                                     np.zeros(1))
    n_val, n_test = 2000, 40000

    def pairs(n):
        truth = rng.normal(size=n)
        noise = rng.normal(size=n) * rng.uniform(0.5, 2.0, size=n)     # heteroscedastic
        network = truth + rng.normal(size=n) * 0.5
        return pd.DataFrame({"drug": "d", "LN_IC50": truth + noise, "network": network, "ridge": truth})

    val, test = pairs(n_val), pairs(n_test)
    fit = stack.Stack.fit(ridge_model, {"d": 0.0}, val)
    pred, low, high = fit.blend(test["drug"], test["network"].to_numpy(), test["ridge"].to_numpy())
    inside = (test["LN_IC50"] >= low) & (test["LN_IC50"] <= high)
    assert 0.88 <= inside.mean() <= 0.92
    assert np.allclose(high - pred, pred - low) and (high > low).all()
    assert stack.conformal_quantile(np.arange(1, 10)) == 9        # ceil(10 x 0.9) = 9th smallest
    assert stack.conformal_quantile(np.arange(1, 100)) == 90


def test_a_stack_survives_the_checkpoint_and_new_drugs_fall_back_to_the_network():
    keys, profiles, part = reference_lines()
    network = keys["LN_IC50"].to_numpy() + 0.5
    fit = fitted(keys, profiles, part, network)
    again = stack.Stack.from_state(fit.state())
    x = np.random.default_rng(2).normal(size=(3, 20))
    drugs = ["d0", "d3", "new"]
    ridge = again.ridge.predict(x, drugs)
    assert np.isnan(ridge[2]) and np.allclose(ridge[:2], fit.ridge.predict(x, drugs)[:2])
    pred, low, high = again.blend(drugs, np.array([1.0, 2.0, 3.0]), ridge)
    assert pred[2] == pytest.approx(3.0) and high[2] - low[2] == pytest.approx(2 * again.scale * again.floor)


