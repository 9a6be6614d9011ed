"""A bulk reference's predictor: the blend and its interval are fitted on validation rows alone,
and the intervals hold their nominal coverage, drug by drug, in each drug's own unit."""
import numpy as np
import pandas as pd
import pytest
from conftest import reference_lines

from predictor import baselines, stack


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
    assert base.scales == other.scales and base.drug_sd == other.drug_sd    # the interval: neither
    assert np.array_equal(base.calibration.labels, other.calibration.labels)
    moved = keys.assign(LN_IC50=np.where(part == "val", keys["LN_IC50"] * -3 + 7, keys["LN_IC50"]))
    assert not np.allclose(fitted(moved, profiles, part, network).weights, base.weights)   # val labels do
    assert base.weights[1] > base.weights[0] > 0     # the ridge reads the genes; the network is noisier


def synthetic_drugs(rng, n: int, noise: float = 1.0) -> pd.DataFrame:
    """Pairs of 4 drugs whose responses spread 0.5x to 4x, with errors that spread alike (and vary
    pair to pair within a drug): heteroscedastic across and within drugs."""
    drug = rng.integers(0, 4, size=n)
    scale = np.array([0.5, 1.0, 2.0, 4.0])[drug]
    truth = rng.normal(size=n) * scale
    error = rng.normal(size=n) * rng.uniform(0.5, 1.5, size=n) * scale * 0.6 * noise
    return pd.DataFrame({"drug": [f"d{k}" for k in drug], "LN_IC50": truth + error,
                         "network": truth + rng.normal(size=n) * 0.3 * scale, "ridge": truth})


def synthetic_stack(rng, noise: float = 1.0) -> tuple[stack.Stack, pd.DataFrame]:
    ridge = baselines.RidgePerDrug(np.arange(1), np.zeros(1), np.ones(1), [f"d{k}" for k in range(4)],
                                   np.ones((4, 1)), np.zeros(4))
    train = synthetic_drugs(rng, 4000, noise)
    labels = train.groupby("drug")["LN_IC50"]
    return stack.Stack.fit(ridge, labels.mean().to_dict(), labels.std().to_dict(),
                           synthetic_drugs(rng, 2000, noise)), synthetic_drugs(rng, 40000, noise)


def test_the_conformal_interval_holds_its_nominal_coverage_for_every_drug_under_known_noise():
    fit, test = synthetic_stack(np.random.default_rng(0))
    pred, low, high = fit.blend(test["drug"], test["network"].to_numpy(), test["ridge"].to_numpy())
    inside = pd.Series((test["LN_IC50"] >= low) & (test["LN_IC50"] <= high))
    assert 0.88 <= inside.mean() <= 0.92
    per_drug = inside.groupby(test["drug"]).mean()
    assert per_drug.between(0.86, 0.94).all(), per_drug        # each drug, not only on average
    width = pd.Series(high - low).groupby(test["drug"]).mean()
    assert (np.diff(width.to_numpy()) > 0).all()               # drugs that spread more: wider
    assert np.allclose(high - pred, pred - low)
    for level, q in fit.scales.items():                        # every calibrated level holds
        held = np.abs(test["LN_IC50"] - pred) <= q * fit.unit(test["drug"])
        assert abs(held.mean() - level) < 0.02
    assert stack.conformal_quantile(np.arange(1, 10)) == 9        # ceil(10 x 0.9) = 9th smallest
    assert stack.conformal_quantile(np.arange(1, 100)) == 90


def test_the_interval_narrows_when_the_noise_does():
    noisy, test = synthetic_stack(np.random.default_rng(1), noise=1.0)
    quiet, _ = synthetic_stack(np.random.default_rng(1), noise=0.4)
    assert quiet.scales[stack.LEVEL] < 0.7 * noisy.scales[stack.LEVEL]
    _, low, high = quiet.blend(test["drug"], test["network"].to_numpy(), test["ridge"].to_numpy())
    _, low2, high2 = noisy.blend(test["drug"], test["network"].to_numpy(), test["ridge"].to_numpy())
    assert (high - low).mean() < 0.7 * (high2 - low2).mean()


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
    assert pred[2] == pytest.approx(3.0) and np.isnan([low[2], high[2]]).all()   # no interval for it
    assert high[0] - low[0] == pytest.approx(2 * again.scales[stack.LEVEL] * fit.drug_sd["d0"])
    assert again.scales == fit.scales and np.array_equal(again.calibration.profiles, fit.calibration.profiles)


def test_a_stack_of_an_earlier_format_keeps_its_interval_on_the_members_disagreement():
    keys, profiles, part = reference_lines()
    state = fitted(keys, profiles, part, keys["LN_IC50"].to_numpy() + 0.5).state()
    old = {k: v for k, v in state.items() if k not in ("drug_sd", "levels", "scales", "calibration")}
    old.update(floor=0.2, scale=1.5)                              # format 6-7: q (|network - ridge| + floor)
    legacy = stack.Stack.from_state(old)
    pred, low, high = legacy.blend(["d0"], np.array([1.0]), np.array([2.0]))
    assert high[0] - low[0] == pytest.approx(2 * 1.5 * (1.0 + 0.2))
    assert "before format 8" in legacy.interval


