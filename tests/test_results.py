"""Results a scientist can trust: leak-free splits read back from split.parquet, k-fold, several
seeds, and per-pair / per-drug / ridge numbers against hand computations."""
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats

import evaluate
import main
from conftest import merged_table

SMALL = ["--d-model", "16", "--ff-dim", "32", "--n-layers", "1", "--top-k", "16", "--gene-dim", "8",
         "--head-dim", "16", "--drug-encoder", "morgan", "--morgan-bits", "64", "--epochs", "1"]
GROUPS = {"pair": ["drug", "cell_line_id"], "cell_line": ["cell_line_id"], "drug": ["drug"]}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def table_path(tmp_path):
    path = tmp_path / "merged.parquet"
    pq.write_table(merged_table(n_drugs=6, n_lines=8, cells_per_pair=3), path)
    return path


@pytest.mark.parametrize("mode", ["pair", "cell_line", "drug", "random"])
def test_split_parquet_keeps_every_group_on_one_side(mode, tmp_path, table_path):
    for name in ("a", "b"):
        assert main.main(["--data", str(table_path), "--split", mode, "--seed", "4",
                          "--out", str(tmp_path / name), *SMALL]) == 0
    split = pd.read_parquet(tmp_path / "a" / "split.parquet")
    assert len(split) == pq.read_metadata(table_path).num_rows
    if mode in GROUPS:
        assert (split.groupby(GROUPS[mode])["part"].nunique() == 1).all()
    assert split.equals(pd.read_parquet(tmp_path / "b" / "split.parquet"))  # same seed, same split
    report = (tmp_path / "a" / "report.md").read_text()
    assert ("LEAKY" in report) == (mode == "random")
    for png in ("pred_vs_measured.png", "per_drug_pearson.png", "loss_curve.png"):
        assert (tmp_path / "a" / png).read_bytes()[:4] == b"\x89PNG"


def test_k_folds_put_every_group_in_test_exactly_once(tmp_path, table_path):
    assert main.main(["--data", str(table_path), "--split", "cell_line", "--folds", "3",
                      "--out", str(tmp_path / "cv"), *SMALL]) == 0
    parts = [pd.read_parquet(tmp_path / "cv" / f"seed-0-fold-{f}" / "split.parquet") for f in range(3)]
    tested = pd.concat([p[p.part == "test"] for p in parts])
    assert sorted(tested["cell_line_id"].unique()) == sorted(parts[0]["cell_line_id"].unique())
    assert tested.groupby("cell_line_id")["row"].count().eq(tested.groupby("cell_line_id")["row"].nunique()).all()
    assert len(tested) == len(parts[0])  # each row tested once
    metrics = json.loads((tmp_path / "cv" / "metrics.json").read_text())
    assert len(metrics["runs"]) == 3


def test_several_seeds_give_per_seed_results_and_their_mean_and_sd(tmp_path, table_path):
    assert main.main(["--data", str(table_path), "--seeds", "0", "1", "2",
                      "--out", str(tmp_path / "s"), *SMALL]) == 0
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
    # pairs: (a,v) 4 -> 3, (a,w) 5 -> 5, (a,x) 1 -> 1, (a,y) 2 -> 2.5, (a,z) 3 -> 2, (b,x) 0 -> 1, (b,y) 1 -> 1
    y_pair = np.array([4, 5, 1, 2, 3, 0, 1.0])
    p_pair = np.array([3, 5, 1, 2.5, 2, 1, 1.0])
    assert s["pairs"]["mse"] == pytest.approx(np.mean((y_pair - p_pair) ** 2))
    assert s["pairs"]["pcc"] == pytest.approx(stats.pearsonr(y_pair, p_pair)[0])
    # per drug: only drug a has >= 3 pairs
    assert s["per_drug"]["drugs"] == 1
    assert s["per_drug"]["pcc"] == pytest.approx(stats.pearsonr(y_pair[:5], p_pair[:5])[0])
    assert s["per_drug"]["scc"] == pytest.approx(stats.spearmanr(y_pair[:5], p_pair[:5])[0])
    assert s["n"] == 9 and s["mse"] == pytest.approx(np.mean((test.LN_IC50 - pred) ** 2))


def test_the_ridge_baseline_matches_a_hand_computation():
    t = merged_table(n_drugs=3, n_lines=5, cells_per_pair=2, seed=1)
    df = t.to_pandas()
    train_mask = df["cell_line_id"] != "CVCL_0004"
    train, test = t.filter(pa.array(train_mask)), t.filter(pa.array(~train_mask))
    vectors = {d: np.array([i, i * i], float) for i, d in enumerate(sorted(df.drug.unique()))}
    got = evaluate.ridge_baseline(train, test, vectors, n_genes=5)

    def bulk(frame):  # mean log1p CP10k per pair, by hand
        rows = {}
        for r in frame.itertuples():
            v = np.array(r.expressions, float)
            rows.setdefault((r.drug, r.cell_line_id), []).append(
                dict(zip(r.genes, np.log1p(v / v.sum() * 1e4))))
        return {k: pd.DataFrame(v).fillna(0).mean() for k, v in rows.items()}

    tr, te = bulk(df[train_mask]), bulk(df[~train_mask])
    genes = sorted(set().union(*(s.index for s in tr.values())))
    x_tr = pd.DataFrame([tr[k] for k in sorted(tr)]).reindex(columns=genes).fillna(0)
    hvg = x_tr.var(ddof=0).sort_values(ascending=False, kind="stable").index[:5]
    hvg = sorted(hvg, key=genes.index)

    def design(b):
        keys = sorted(b)
        x = pd.DataFrame([b[k] for k in keys]).reindex(columns=genes).fillna(0)[hvg].to_numpy()
        return keys, np.hstack([x, np.stack([vectors[d] for d, _ in keys])])

    k_tr, x_tr = design(tr)
    y = df[train_mask].groupby(["drug", "cell_line_id"])["LN_IC50"].mean().loc[k_tr].to_numpy()
    mu, sd = x_tr.mean(0), x_tr.std(0)
    sd[sd == 0] = 1
    from sklearn.linear_model import RidgeCV
    alpha = RidgeCV(alphas=np.logspace(-2, 5, 15)).fit((x_tr - mu) / sd, y).alpha_
    z = (x_tr - mu) / sd
    w = np.linalg.solve(z.T @ z + alpha * np.eye(z.shape[1]), z.T @ (y - y.mean()))
    k_te, x_te = design(te)
    pair_pred = dict(zip(k_te, ((x_te - mu) / sd) @ w + y.mean()))
    want = [pair_pred[(d, c)] for d, c in zip(df[~train_mask].drug, df[~train_mask].cell_line_id)]
    assert got == pytest.approx(want, rel=1e-6, abs=1e-8)
