"""The classical predictors and their design, each against a computation by hand."""
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from conftest import merged_table, reference_lines

from ingest.table import group_ids, pair_labels
from predictor import baselines


def test_pair_labels_and_sampled_cells_match_a_hand_computation():
    keys = pa.table({"drug": ["a", "b", "a", "a", "b", "a"], "cell_line_id": ["x", "x", "x", "y", "x", "x"],
                     "LN_IC50": [1.0, 5.0, 2.0, 7.0, 6.0, 4.0]}).unify_dictionaries()
    pair = group_ids(keys, ["drug", "cell_line_id"])
    assert pair.tolist() == [0, 2, 0, 1, 2, 0]                      # (a,x) (a,y) (b,x): sorted
    rows = np.array([0, 2, 3, 4])                                   # rows 1 and 5 left out
    pairs = pair_labels(keys, rows, pair[rows])
    assert pairs.to_dict("list") == {"drug": ["a", "a", "b"], "cell_line_id": ["x", "y", "x"],
                                     "LN_IC50": [1.5, 7.0, 6.0]}
    # the cells of a pair kept for its pseudobulk: its max_cells lowest draws, as pandas ranks them
    draws = np.random.default_rng(3).random(len(pair))
    ranked = pd.DataFrame({"pair": pair, "r": draws}).groupby("pair")["r"].rank(method="first")
    assert baselines.sample_rows(pair, max_cells=2, seed=3).tolist() == np.flatnonzero(ranked <= 2).tolist()
    assert baselines.sample_rows(pair, max_cells=1, seed=3).tolist() == np.flatnonzero(ranked <= 1).tolist()


def hand_design(df, train_mask, n_genes):
    """Per-pair mean log1p CP10k of the training pairs' n_genes most variable genes,
    standardised with the training pairs' mean and sd: by hand, with pandas."""
    def bulk(frame):
        rows = {}
        for r in frame.itertuples():
            v = np.array(r.expressions, float)
            rows.setdefault((r.drug, r.cell_line_id), []).append(
                dict(zip(r.genes, np.log1p(v / v.sum() * 1e4))))
        return {k: pd.DataFrame(v).fillna(0).mean() for k, v in rows.items()}

    tr, te = bulk(df[train_mask]), bulk(df[~train_mask])
    genes = sorted(set().union(*(s.index for s in tr.values())))
    x_tr = pd.DataFrame([tr[k] for k in sorted(tr)]).reindex(columns=genes).fillna(0)
    hvg = x_tr.var(ddof=0).sort_values(ascending=False, kind="stable").index[:n_genes]
    hvg = sorted(hvg, key=genes.index)
    mats = {}
    for name, b in (("train", tr), ("test", te)):
        keys = sorted(b)
        x = pd.DataFrame([b[k] for k in keys]).reindex(columns=genes).fillna(0)[hvg].to_numpy()
        mats[name] = (keys, x)
    mu, sd = mats["train"][1].mean(0), mats["train"][1].std(0)
    sd[sd == 0] = 1
    y = df[train_mask].groupby(["drug", "cell_line_id"])["LN_IC50"].mean().loc[mats["train"][0]].to_numpy()
    return (mats["train"][0], (mats["train"][1] - mu) / sd, y, mats["test"][0], (mats["test"][1] - mu) / sd)


def ridge_by_hand(x, y, x_new, alphas):
    from sklearn.linear_model import RidgeCV
    alpha = RidgeCV(alphas=alphas).fit(x, y).alpha_          # alpha by leave-one-out, as the tool
    xc = x - x.mean(0)
    w = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - y.mean()))
    return (x_new - x.mean(0)) @ w + y.mean()


@pytest.fixture
def split_table():
    t = merged_table(n_drugs=3, n_lines=8, cells_per_pair=2, seed=1)
    df = t.to_pandas()
    train_mask = ~df["cell_line_id"].isin(["CVCL_0004", "CVCL_0006"])
    return t, df, train_mask


@pytest.fixture
def designs(split_table):
    """The tool's design of the split table (5 genes) and the same built by hand."""
    t, df, train_mask = split_table
    design = baselines.expression_design(t.filter(pa.array(train_mask)), t.filter(pa.array(~train_mask)),
                                        n_genes=5)
    return design, hand_design(df, train_mask, 5)


def test_the_shared_ridge_is_the_drug_mean_plus_a_ridge_of_the_residuals(designs):
    design, (k_tr, x_tr, y, k_te, x_te) = designs
    got = baselines.ridge_baseline(design)
    drugs = np.array([d for d, _ in k_tr])
    means = {d: y[drugs == d].mean() for d in set(drugs)}
    resid = y - np.array([means[d] for d in drugs])
    want = ridge_by_hand(x_tr, resid, x_te, np.logspace(-2, 6, 17)) + np.array([means[d] for d, _ in k_te])
    assert got == pytest.approx(want, rel=1e-6, abs=1e-8)


def test_one_ridge_per_drug_matches_a_hand_computation(designs, split_table):
    t, df, _ = split_table
    design, (k_tr, x_tr, y, k_te, x_te) = designs
    got = baselines.ridge_per_drug(design)
    want = []
    for drug, line in k_te:
        rows = [i for i, (d, _) in enumerate(k_tr) if d == drug]
        want.append(ridge_by_hand(x_tr[rows], y[rows], x_te[[k_te.index((drug, line))]],
                                  np.logspace(-1, 6, 15))[0])
    assert got == pytest.approx(want, rel=1e-6, abs=1e-8)
    # no test drug seen in training (unseen drugs): no per-drug model at all
    by_drug = ~df["drug"].eq("drug0")
    assert np.isnan(baselines.ridge_per_drug(baselines.expression_design(
        t.filter(pa.array(by_drug)), t.filter(pa.array(~by_drug)), n_genes=5))).all()


def threshold_design(signal: float, seed: int = 0) -> tuple[baselines.Design, np.ndarray]:
    """300 lines x 2 drugs whose ln IC50 steps by `signal` where gene 0 is high (up for one drug,
    down for the other), around drug means 0 and 5: a rule no linear model states; 240 lines train."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, 20))
    rows = [(d, i, m + sign * signal * (x[i, 0] > 0) + 0.2 * rng.normal())
            for d, m, sign in (("a", 0.0, 1), ("b", 5.0, -1)) for i in range(300)]
    pairs = pd.DataFrame(rows, columns=["drug", "profile", "LN_IC50"]).assign(
        cell_line_id=lambda f: "L" + f["profile"].astype(str))
    train, test = pairs[pairs["profile"] < 240], pairs[pairs["profile"] >= 240]
    return baselines.Design(train, test.drop(columns="LN_IC50"), x, np.arange(20), np.zeros(20),
                            np.ones(20)), test["LN_IC50"].to_numpy()


def test_boosted_trees_learn_a_rule_of_expression_per_drug_and_add_nothing_where_there_is_none():
    design, y = threshold_design(signal=3.0)
    drug_mean = design.test["drug"].map(design.train.groupby("drug")["LN_IC50"].mean()).to_numpy()
    trees = baselines.boosted_trees(design, seed=0)
    assert np.mean((trees - y) ** 2) < 0.1 * np.mean((drug_mean - y) ** 2)
    design, y = threshold_design(signal=0.0, seed=1)    # expression says nothing: about the drug mean
    drug_mean = design.test["drug"].map(design.train.groupby("drug")["LN_IC50"].mean()).to_numpy()
    trees = baselines.boosted_trees(design, seed=0)
    assert np.mean((trees - y) ** 2) < 1.2 * np.mean((drug_mean - y) ** 2)


def test_an_unseen_drug_gets_its_mean_from_a_ridge_on_drug_vectors(split_table):
    t, df, _ = split_table
    train_mask = df["drug"] != "drug2"
    design = baselines.expression_design(t.filter(pa.array(train_mask)), t.filter(pa.array(~train_mask)),
                                        n_genes=5)
    vectors = {"drug0": np.array([0.0, 1.0]), "drug1": np.array([1.0, 0.0]), "drug2": np.array([2.0, 1.0])}
    got = baselines.drug_offsets(design, vectors)
    means = design.train.groupby("drug")["LN_IC50"].mean()
    v = np.stack([vectors[d] for d in means.index])
    mu, sd = v.mean(0), v.std(0)
    want = ridge_by_hand((v - mu) / sd, means.to_numpy(), ((vectors["drug2"] - mu) / sd)[None],
                         np.logspace(-2, 5, 15))
    assert got == pytest.approx(np.repeat(want, len(design.test)))


def test_the_ridge_member_is_a_shared_level_plus_each_drugs_own_part_in_one_linear_model_per_drug():
    from sklearn.linear_model import RidgeCV
    keys, profiles, part = reference_lines()
    design = baselines.reference_design(profiles, keys[part == "train"],
                                       keys[part != "train"][["drug", "cell_line_id"]], n_genes=20)
    member = baselines.RidgePerDrug.fit_with_level(design)
    t = design.train
    stats = t.groupby("drug")["LN_IC50"].agg(["mean", "std"])
    z = (t["LN_IC50"] - t["drug"].map(stats["mean"])) / t["drug"].map(stats["std"])
    level = z.groupby(t["profile"]).mean()                      # each line's mean z over its drugs
    shared = RidgeCV(alphas=baselines.ALPHAS).fit(design.x[level.index.to_numpy()], level.to_numpy())
    own_target = z - t["profile"].map(level)
    query = design.test["profile"].unique()
    for drug in ("d0", "d3"):
        rows = (t["drug"] == drug).to_numpy()
        own = RidgeCV(alphas=baselines.ALPHAS).fit(design.x[t["profile"].to_numpy()[rows]], own_target[rows])
        x = design.x[query]
        want = stats.loc[drug, "mean"] + stats.loc[drug, "std"] * (shared.predict(x) + own.predict(x))
        assert np.allclose(member.predict(design.x, [drug] * len(query), query), want)
    classical = baselines.RidgePerDrug.fit(design)                    # the baseline stays the classical one
    assert not np.allclose(classical.coef, member.coef)
