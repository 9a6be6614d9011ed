"""A bulk reference's predictor: the blend is fitted on validation rows alone, and its intervals
hold their nominal coverage."""
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import evaluate
import stack


def reference_design(seed: int = 0):
    """Profiles of 60 lines x 30 genes and labels of 4 drugs that read two of the genes; lines
    0-39 train, 40-49 validate, 50-59 test."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(60, 30))
    lines = [f"L{i}" for i in range(60)]
    rows = [(f"d{k}", lines[i], float(k + x[i, k] - 0.5 * x[i, k + 1] + 0.3 * rng.normal()))
            for k in range(4) for i in range(60)]
    keys = pd.DataFrame(rows, columns=["drug", "cell_line_id", "LN_IC50"])
    profiles = pa.table({"cell_line_id": lines,
                         "genes": pa.array([list(range(3, 33))] * 60, pa.list_(pa.int32())),
                         "expressions": pa.array(x.astype(np.float32).tolist(), pa.list_(pa.float32()))})
    part = np.where(keys["cell_line_id"].str[1:].astype(int) < 40, "train",
                    np.where(keys["cell_line_id"].str[1:].astype(int) < 50, "val", "test"))
    return keys, profiles, part


def fitted(keys, profiles, part, network):
    train = keys[part == "train"]
    query = keys[part != "train"][["drug", "cell_line_id"]]
    design = evaluate.reference_design(profiles, train, query, n_genes=20)
    val_rows = np.flatnonzero(part == "val")
    return evaluate.fit_stack(design, pa.Table.from_pandas(keys, preserve_index=False), val_rows,
                              network[val_rows])


def test_blend_weights_are_fitted_on_validation_rows_only():
    keys, profiles, part = reference_design()
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
    ridge_model = stack.RidgePerDrug(np.arange(1), np.zeros(1), np.ones(1), ["d"], np.ones((1, 1)),
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
    keys, profiles, part = reference_design()
    network = keys["LN_IC50"].to_numpy() + 0.5
    fit = fitted(keys, profiles, part, network)
    again = stack.Stack.from_state(fit.state())
    x = np.random.default_rng(2).normal(size=(3, 20))
    drugs = ["d0", "d3", "new"]
    ridge = again.ridge.predict(x, drugs)
    assert np.isnan(ridge[2]) and np.allclose(ridge[:2], fit.ridge.predict(x, drugs)[:2])
    pred, low, high = again.blend(drugs, np.array([1.0, 2.0, 3.0]), ridge)
    assert pred[2] == pytest.approx(3.0) and high[2] - low[2] == pytest.approx(2 * again.scale * again.floor)


def test_the_ridge_member_is_a_shared_level_plus_each_drugs_own_part_in_one_linear_model_per_drug():
    from sklearn.linear_model import RidgeCV
    keys, profiles, part = reference_design()
    design = evaluate.reference_design(profiles, keys[part == "train"],
                                       keys[part != "train"][["drug", "cell_line_id"]], n_genes=20)
    member = stack.RidgePerDrug.fit_with_level(design)
    t = design.train
    stats = t.groupby("drug")["LN_IC50"].agg(["mean", "std"])
    z = (t["LN_IC50"] - t["drug"].map(stats["mean"])) / t["drug"].map(stats["std"])
    level = z.groupby(t["profile"]).mean()                      # each line's mean z over its drugs
    shared = RidgeCV(alphas=stack.ALPHAS).fit(design.x[level.index.to_numpy()], level.to_numpy())
    own_target = z - t["profile"].map(level)
    query = design.test["profile"].unique()
    for drug in ("d0", "d3"):
        rows = (t["drug"] == drug).to_numpy()
        own = RidgeCV(alphas=stack.ALPHAS).fit(design.x[t["profile"].to_numpy()[rows]], own_target[rows])
        x = design.x[query]
        want = stats.loc[drug, "mean"] + stats.loc[drug, "std"] * (shared.predict(x) + own.predict(x))
        assert np.allclose(member.predict(design.x, [drug] * len(query), query), want)
    classical = stack.RidgePerDrug.fit(design)                    # the baseline stays the classical one
    assert not np.allclose(classical.coef, member.coef)
