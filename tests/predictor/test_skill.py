"""Per-drug skill: exact K-fold refits of the ridge member, and what they tell apart."""
import numpy as np
import pandas as pd
from sklearn.linear_model import Ridge

from predictor.baselines import Design, RidgePerDrug
from predictor.skill import Skill, cross_fitted, kfold_predictions


def test_kfold_predictions_equal_refitting_a_ridge_without_each_fold():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 12))
    y = x[:, 0] - 0.5 * x[:, 3] + rng.normal(scale=0.5, size=40)
    fold = rng.permutation(40) % 5
    fast = kfold_predictions(x @ x.T, y, 3.0, fold)
    for k in range(5):
        out = fold == k
        refit = Ridge(alpha=3.0).fit(x[~out], y[~out])
        np.testing.assert_allclose(fast[out], refit.predict(x[out]), atol=1e-10)


def synthetic_design(rng, lines=200, genes=50, drugs=10):
    """Half the drugs respond to two genes of their own (signal), half are noise."""
    x = rng.normal(size=(lines, genes))
    rows = []
    for d in range(drugs):
        signal = d < drugs // 2
        y = (2.0 * x[:, 2 * d] - 1.5 * x[:, 2 * d + 1] if signal else 0) + rng.normal(size=lines)
        rows.append(pd.DataFrame({"drug": f"{'signal' if signal else 'noise'}{d}",
                                  "cell_line_id": [f"L{i}" for i in range(lines)], "LN_IC50": y + d,
                                  "profile": np.arange(lines)}))
    train = pd.concat(rows, ignore_index=True)
    return Design(train, train.iloc[:0][["drug", "cell_line_id", "profile"]], x, np.arange(genes),
                  np.zeros(genes), np.ones(genes))


def test_skill_separates_drugs_with_signal_from_noise_drugs():
    design = synthetic_design(np.random.default_rng(1))
    ridge = RidgePerDrug.fit_with_level(design)
    skill = Skill.fit(design, ridge, q=1.645, seed=0)
    by_drug = dict(zip(skill.drugs, skill.pearson))
    signal = [v for d, v in by_drug.items() if d.startswith("signal")]
    noise = [v for d, v in by_drug.items() if d.startswith("noise")]
    assert min(signal) > 0.6 and max(noise) < 0.3
    assert min(signal) > max(noise)
    # coverage at +- 1.645 sd of each drug: about 90% for every drug, since the interval is in its unit
    assert np.all((skill.coverage > 0.8) & (skill.coverage <= 1.0))
    assert skill.lines.tolist() == [200] * 10
    # a drug the skill does not know gets NaN, and the state survives a round trip
    again = Skill.from_state(skill.state())
    pearson, coverage = again.of(["signal0", "unknown"])
    assert pearson[0] == by_drug["signal0"] and np.isnan(pearson[1]) and np.isnan(coverage[1])


def test_cross_fitted_predictions_equal_the_member_refitted_without_each_fold_by_hand():
    """The level and each drug's own part refitted on the other folds' lines (sklearn, the
    penalties the member chose), in each drug's mean and sd over all training lines."""
    design = synthetic_design(np.random.default_rng(2), lines=60, genes=20, drugs=4)
    ridge = RidgePerDrug.fit_with_level(design)
    fast = cross_fitted(design, ridge.alphas, seed=0)
    train, x = design.train, design.x
    stats = train.groupby("drug")["LN_IC50"].agg(["mean", "std"])
    z = (train["LN_IC50"] - train["drug"].map(stats["mean"])) / train["drug"].map(stats["std"])
    level = z.groupby(train["profile"]).mean()                  # each line's mean z
    fold = np.random.default_rng(0).permutation(60) % 5         # the lines' folds, as cross_fitted draws them
    for k in range(5):
        fit_lines = np.flatnonzero(fold != k)
        lv = Ridge(alpha=ridge.alphas["level"]).fit(x[fit_lines], level.to_numpy()[fit_lines])
        for drug, part in train.groupby("drug"):
            own = z[part.index] - level.to_numpy()[part["profile"]]
            fit = part["profile"].isin(fit_lines).to_numpy()
            model = Ridge(alpha=ridge.alphas[drug]).fit(x[part["profile"][fit]], own[fit])
            held = part[~fit]
            want = stats.loc[drug, "mean"] + stats.loc[drug, "std"] * (
                lv.predict(x[held["profile"]]) + model.predict(x[held["profile"]]))
            np.testing.assert_allclose(fast[held.index], want, atol=1e-9)
