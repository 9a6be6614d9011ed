"""Metrics and naive baselines, checked against hand computations."""
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from conftest import SMALL, merged_table
from scipy import stats

import data
import evaluate
import main

ONE_EPOCH = [*SMALL, "--epochs", "1"]


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


@pytest.mark.e2e
def test_k_folds_put_every_group_in_test_exactly_once(tmp_path, groups_path):
    assert main.main(["--data", str(groups_path), "--split", "cell_line", "--folds", "3",
                      "--out", str(tmp_path / "cv"), *ONE_EPOCH]) == 0
    parts = [pd.read_parquet(tmp_path / "cv" / f"seed-0-fold-{f}" / "split.parquet") for f in range(3)]
    tested = pd.concat([p[p.part == "test"] for p in parts])
    assert sorted(tested["cell_line_id"].unique()) == sorted(parts[0]["cell_line_id"].unique())
    by_line = tested.groupby("cell_line_id")["row"]
    assert by_line.count().eq(by_line.nunique()).all()
    assert len(tested) == len(parts[0])  # each row tested once
    metrics = json.loads((tmp_path / "cv" / "metrics.json").read_text())
    assert len(metrics["runs"]) == 3


@pytest.mark.e2e
def test_several_seeds_give_per_seed_results_and_their_mean_and_sd(tmp_path, groups_path):
    assert main.main(["--data", str(groups_path), "--seeds", "0", "1", "2",
                      "--out", str(tmp_path / "s"), *ONE_EPOCH]) == 0
    m = json.loads((tmp_path / "s" / "metrics.json").read_text())
    per = [m["per_run"][f"seed-{s}"]["test"]["mse"] for s in (0, 1, 2)]
    assert m["test"]["mse"]["mean"] == pytest.approx(np.mean(per))
    assert m["test"]["mse"]["sd"] == pytest.approx(np.std(per, ddof=1))
    assert m["baselines"]["mean_effects"]["pairs"]["pcc"]["mean"] is not None
    assert "±" in (tmp_path / "s" / "report.md").read_text()
    splits = [pd.read_parquet(tmp_path / "s" / f"seed-{s}" / "split.parquet")["part"] for s in (0, 1)]
    assert not splits[0].equals(splits[1])


def test_pair_and_per_drug_metrics_match_a_hand_computation():
    test = pd.DataFrame({"drug": ["a"] * 7 + ["b"] * 2,
                         "cell_line_id": ["x", "x", "y", "z", "w", "w", "v", "x", "y"],
                         "LN_IC50": [1.0, 1.0, 2.0, 3.0, 5.0, 5.0, 4.0, 0.0, 1.0]})
    pred = np.array([0.5, 1.5, 2.5, 2.0, 6.0, 4.0, 3.0, 1.0, 1.0])
    s = evaluate.score(test, pred)
    # pairs: (a,v) 4 -> 3, (a,w) 5 -> 5, (a,x) 1 -> 1, (a,y) 2 -> 2.5, (a,z) 3 -> 2,
    #        (b,x) 0 -> 1, (b,y) 1 -> 1
    y_pair = np.array([4, 5, 1, 2, 3, 0, 1.0])
    p_pair = np.array([3, 5, 1, 2.5, 2, 1, 1.0])
    assert s["pairs"]["mse"] == pytest.approx(np.mean((y_pair - p_pair) ** 2))
    assert s["pairs"]["pcc"] == pytest.approx(stats.pearsonr(y_pair, p_pair)[0])
    # per drug: only drug a has >= 3 pairs
    assert s["per_drug"]["drugs"] == 1
    assert s["per_drug"]["pcc"] == pytest.approx(stats.pearsonr(y_pair[:5], p_pair[:5])[0])
    assert s["per_drug"]["scc"] == pytest.approx(stats.spearmanr(y_pair[:5], p_pair[:5])[0])
    assert s["n"] == 9 and s["mse"] == pytest.approx(np.mean((test.LN_IC50 - pred) ** 2))


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
    design = evaluate.expression_design(t.filter(pa.array(train_mask)), t.filter(pa.array(~train_mask)),
                                        n_genes=5)
    return design, hand_design(df, train_mask, 5)


def test_the_shared_ridge_is_the_drug_mean_plus_a_ridge_of_the_residuals(designs):
    design, (k_tr, x_tr, y, k_te, x_te) = designs
    got = evaluate.ridge_baseline(design)
    drugs = np.array([d for d, _ in k_tr])
    means = {d: y[drugs == d].mean() for d in set(drugs)}
    resid = y - np.array([means[d] for d in drugs])
    want = ridge_by_hand(x_tr, resid, x_te, np.logspace(-2, 6, 17)) + np.array([means[d] for d, _ in k_te])
    assert got == pytest.approx(want, rel=1e-6, abs=1e-8)


def test_one_ridge_per_drug_matches_a_hand_computation(designs, split_table):
    t, df, _ = split_table
    design, (k_tr, x_tr, y, k_te, x_te) = designs
    got = evaluate.ridge_per_drug(design)
    want = []
    for drug, line in k_te:
        rows = [i for i, (d, _) in enumerate(k_tr) if d == drug]
        want.append(ridge_by_hand(x_tr[rows], y[rows], x_te[[k_te.index((drug, line))]],
                                  np.logspace(-1, 6, 15))[0])
    assert got == pytest.approx(want, rel=1e-6, abs=1e-8)
    # no test drug seen in training (unseen drugs): no per-drug model at all
    by_drug = ~df["drug"].eq("drug0")
    assert np.isnan(evaluate.ridge_per_drug(evaluate.expression_design(
        t.filter(pa.array(by_drug)), t.filter(pa.array(~by_drug)), n_genes=5))).all()


def test_boosted_trees_fit_the_residual_from_the_drug_mean_on_expression_and_drug(designs):
    from sklearn.ensemble import HistGradientBoostingRegressor
    design, (k_tr, x_tr, y, k_te, x_te) = designs
    got = evaluate.boosted_trees(design, seed=3)
    drugs = sorted({d for d, _ in k_tr})
    train_drug = np.array([d for d, _ in k_tr])
    means = {d: y[train_drug == d].mean() for d in drugs}
    onehot = lambda keys: np.array([[float(d == e) for e in drugs] for d, _ in keys])  # noqa: E731
    fit = HistGradientBoostingRegressor(max_iter=300, learning_rate=0.1, early_stopping=True,
                                        validation_fraction=0.1, n_iter_no_change=20, random_state=3)
    fit.fit(np.hstack([x_tr, onehot(k_tr)]), y - np.array([means[d] for d in train_drug]))
    want = np.array([means[d] for d, _ in k_te]) + fit.predict(np.hstack([x_te, onehot(k_te)]))
    assert got == pytest.approx(want, rel=1e-9)


def test_an_unseen_drug_gets_its_mean_from_a_ridge_on_drug_vectors(split_table):
    t, df, _ = split_table
    train_mask = df["drug"] != "drug2"
    design = evaluate.expression_design(t.filter(pa.array(train_mask)), t.filter(pa.array(~train_mask)),
                                        n_genes=5)
    vectors = {"drug0": np.array([0.0, 1.0]), "drug1": np.array([1.0, 0.0]), "drug2": np.array([2.0, 1.0])}
    got = evaluate.drug_offsets(design, vectors)
    means = design.train.groupby("drug")["LN_IC50"].mean()
    v = np.stack([vectors[d] for d in means.index])
    mu, sd = v.mean(0), v.std(0)
    want = ridge_by_hand((v - mu) / sd, means.to_numpy(), ((vectors["drug2"] - mu) / sd)[None],
                         np.logspace(-2, 5, 15))
    assert got == pytest.approx(np.repeat(want, len(design.test)))


def metrics_with(model_pd: float, model_mse: float) -> dict:
    row = lambda pd_, mse: {"mse": mse, "rmse": mse ** 0.5, "pcc": 0.9, "scc": 0.9,  # noqa: E731
                            "pairs": {"pcc": 0.9, "scc": 0.9}, "per_drug": {"pcc": pd_, "scc": pd_}}
    return {"split": "cell_line", "seed": 0, "drug_encoder": "morgan:r2:64", "best_epoch": 3,
            "epochs_run": 5, "test": row(model_pd, model_mse),
            "baselines": {"ridge_per_drug": row(0.55, 1.60), "boosted_trees": row(0.51, 1.72),
                          "mean_effects": row(float("nan"), 2.4), "drug_mean": row(float("nan"), 2.4)}}


def test_a_report_where_the_best_baseline_beats_the_model_says_so(tmp_path):
    m = metrics_with(0.39, 2.21)
    m["verdict"] = evaluate.verdict(m)
    assert m["verdict"]["best_baseline"] == "ridge_per_drug"
    assert m["verdict"]["beats_best_baseline"] is False
    evaluate.write_report(tmp_path, m)
    report = (tmp_path / "report.md").read_text()
    assert "Best baseline: **ridge_per_drug** (per-drug Pearson 0.550)" in report
    assert "0.390 (-0.160): **not better**" in report
    assert "2.210 against 1.600 for the lowest baseline, ridge_per_drug: **higher**" in report
    assert "does **not** beat the best baseline" in report
    won = metrics_with(0.60, 1.50)
    assert evaluate.verdict(won)["beats_best_baseline"] is True
    assert "The model beats the best baseline." in evaluate.verdict(won)["text"]
    split = metrics_with(0.60, 1.70)   # better per drug, worse in MSE: not a win
    assert evaluate.verdict(split)["beats_per_drug"] and not evaluate.verdict(split)["beats_best_baseline"]


def test_the_per_drug_plot_shows_the_best_baseline_and_no_empty_mean_effects(tmp_path, monkeypatch):
    m = metrics_with(0.39, 2.21)
    by_drug = lambda v: {"by_drug": {"a": {"pcc": v}, "b": {"pcc": v}}}  # noqa: E731
    m["test"]["per_drug"].update(by_drug(0.4))
    m["baselines"]["ridge_per_drug"]["per_drug"].update(by_drug(0.5))
    m["baselines"]["mean_effects"]["per_drug"].update(by_drug(None))   # cell_line: no correlation
    m["verdict"] = evaluate.verdict(m)
    labels, barh = [], evaluate.plt.Axes.barh
    monkeypatch.setattr(evaluate.plt.Axes, "barh",
                        lambda self, *a, **k: labels.append(k["label"]) or barh(self, *a, **k))
    evaluate.plot_per_drug(m, tmp_path / "p.png")
    assert labels == ["model", "ridge per drug"]
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_every_gdsc_drug_is_plotted_as_one_dot_against_the_best_baseline(tmp_path, monkeypatch):
    m = metrics_with(0.39, 2.21)
    drugs = [f"d{i}" for i in range(evaluate.MAX_BARS + 1)]
    m["test"]["per_drug"]["by_drug"] = {d: {"pcc": 0.5} for d in drugs}
    m["baselines"]["ridge_per_drug"]["per_drug"]["by_drug"] = {d: {"pcc": 0.4 + 0.2 * (i % 2)}
                                                               for i, d in enumerate(drugs)}
    m["verdict"] = evaluate.verdict(m)
    titles, set_title = [], evaluate.plt.Axes.set_title
    monkeypatch.setattr(evaluate.plt.Axes, "barh", lambda *a, **k: pytest.fail("one bar per drug"))
    monkeypatch.setattr(evaluate.plt.Axes, "set_title",
                        lambda self, t, **k: titles.append(t) or set_title(self, t, **k))
    evaluate.plot_per_drug(m, tmp_path / "p.png")
    assert titles == [f"{len(drugs)} drugs; the model is higher for {(len(drugs) + 1) // 2}"]
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_drevals_normalised_pearson_matches_a_hand_computation():
    train = pd.DataFrame({"drug": ["a", "a", "b", "b"], "cell_line_id": ["x", "y", "x", "y"],
                          "LN_IC50": [1.0, 3.0, 5.0, 9.0]})
    test = pd.DataFrame({"drug": ["a", "b", "a", "b"], "cell_line_id": ["x", "x", "z", "z"],
                         "LN_IC50": [2.0, 4.0, 1.5, 8.0]})
    pred = np.array([1.5, 6.0, 2.0, 7.5])
    result = evaluate.evaluate(train, test, pred)
    mu = 4.5                                              # by hand: global + drug + line effects
    drug = {"a": 2.0, "b": 7.0}
    line = {"x": 3.0, "y": 6.0, "z": mu}                  # z is unseen: no effect
    me = np.array([mu + (drug[d] - mu) + (line[c] - mu) for d, c in zip(test["drug"], test["cell_line_id"])])
    a, b = test["LN_IC50"].to_numpy() - me, pred - me
    a, b = a - a.mean(), b - b.mean()
    want = (a * b).sum() / np.sqrt((a ** 2).sum() * (b ** 2).sum())
    assert result["test"]["normalised_pcc"] == pytest.approx(want)
    assert np.isnan(result["baselines"]["mean_effects"]["normalised_pcc"])   # it is the reference itself
