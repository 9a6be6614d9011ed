"""Metrics and naive baselines, checked against hand computations."""
import json

import numpy as np
import pandas as pd
import pytest
from conftest import SMALL, spread_of
from scipy import stats

import main
from reporting import plots
from reporting.metrics import (
    evaluate,
    fit_baselines,
    interval_coverage,
    line_scores,
    predict_baselines,
    regression_metrics,
    score,
    verdict,
)
from reporting.plots import MAX_BARS, plot_per_drug
from reporting.report import interval_text, write_report

ONE_EPOCH = [*SMALL, "--epochs", "1"]


def test_baselines_match_a_hand_computation():
    train = pd.DataFrame({"drug": ["a", "a", "a", "b", "b"], "cell_line_id": ["x", "x", "y", "x", "y"],
                          "LN_IC50": [1.0, 1.0, 3.0, 5.0, 9.0]})
    test = pd.DataFrame({"drug": ["a", "b", "c"], "cell_line_id": ["y", "z", "x"],
                         "LN_IC50": [0.0, 0.0, 0.0]})
    p = predict_baselines(fit_baselines(train), test)
    # training pairs: (a,x)=1, (a,y)=3, (b,x)=5, (b,y)=9 -> global 4.5; drug a 2, b 7; line x 3, y 6
    assert p["global_mean"].tolist() == [4.5, 4.5, 4.5]
    assert p["drug_mean"].tolist() == [2.0, 7.0, 4.5]           # unseen drug c -> global
    assert p["cell_line_mean"].tolist() == [6.0, 4.5, 3.0]      # unseen line z -> global
    assert p["mean_effects"].tolist() == [2.0 + 6.0 - 4.5, 7.0, 3.0]


def test_regression_metrics_match_numpy_and_scipy():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    p = np.array([1.5, 1.5, 3.5, 5.0])
    m = regression_metrics(y, p)
    assert m["mse"] == pytest.approx(np.mean((y - p) ** 2))
    assert m["rmse"] == pytest.approx(np.sqrt(m["mse"]))
    assert m["pcc"] == pytest.approx(np.corrcoef(y, p)[0, 1])
    assert m["scc"] == pytest.approx(0.9486832980505138)
    assert np.isnan(regression_metrics(y, np.ones(4))["pcc"])


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
    s = score(test, pred)
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


def metrics_with(model_pd: float, model_mse: float) -> dict:
    row = lambda pd_, mse: {"mse": mse, "rmse": mse ** 0.5, "pcc": 0.9, "scc": 0.9,  # noqa: E731
                            "pairs": {"pcc": 0.9, "scc": 0.9}, "per_drug": {"pcc": pd_, "scc": pd_}}
    return {"split": "cell_line", "seed": 0, "drug_encoder": "morgan:r2:64", "best_epoch": 3,
            "epochs_run": 5, "test": row(model_pd, model_mse),
            "baselines": {"ridge_per_drug": row(0.55, 1.60), "boosted_trees": row(0.51, 1.72),
                          "mean_effects": row(float("nan"), 2.4), "drug_mean": row(float("nan"), 2.4)}}


def test_a_report_where_the_best_baseline_beats_the_model_says_so(tmp_path):
    m = metrics_with(0.39, 2.21)
    m["verdict"] = verdict(m)
    assert m["verdict"]["best_baseline"] == "ridge_per_drug"
    assert m["verdict"]["beats_best_baseline"] is False
    write_report(tmp_path, m)
    report = (tmp_path / "report.md").read_text()
    assert "Best baseline: **ridge_per_drug** (per-drug Pearson 0.550)" in report
    assert "0.390 (-0.160): **not better**" in report
    assert "2.210 against 1.600 for the lowest baseline, ridge_per_drug: **higher**" in report
    assert "does **not** beat the best baseline" in report
    won = metrics_with(0.60, 1.50)
    assert verdict(won)["beats_best_baseline"] is True
    assert "The model beats the best baseline." in verdict(won)["text"]
    split = metrics_with(0.60, 1.70)   # better per drug, worse in MSE: not a win
    assert verdict(split)["beats_per_drug"] and not verdict(split)["beats_best_baseline"]


def test_the_per_drug_plot_shows_the_best_baseline_and_no_empty_mean_effects(tmp_path, monkeypatch):
    m = metrics_with(0.39, 2.21)
    by_drug = lambda v: {"by_drug": {"a": {"pcc": v}, "b": {"pcc": v}}}  # noqa: E731
    m["test"]["per_drug"].update(by_drug(0.4))
    m["baselines"]["ridge_per_drug"]["per_drug"].update(by_drug(0.5))
    m["baselines"]["mean_effects"]["per_drug"].update(by_drug(None))   # cell_line: no correlation
    m["verdict"] = verdict(m)
    labels, barh = [], plots.plt.Axes.barh
    monkeypatch.setattr(plots.plt.Axes, "barh",
                        lambda self, *a, **k: labels.append(k["label"]) or barh(self, *a, **k))
    plot_per_drug(m, tmp_path / "p.png")
    assert labels == ["model", "ridge per drug"]
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_every_gdsc_drug_is_plotted_as_one_dot_against_the_best_baseline(tmp_path, monkeypatch):
    m = metrics_with(0.39, 2.21)
    drugs = [f"d{i}" for i in range(MAX_BARS + 1)]
    m["test"]["per_drug"]["by_drug"] = {d: {"pcc": 0.5} for d in drugs}
    m["baselines"]["ridge_per_drug"]["per_drug"]["by_drug"] = {d: {"pcc": 0.4 + 0.2 * (i % 2)}
                                                               for i, d in enumerate(drugs)}
    m["verdict"] = verdict(m)
    titles, set_title = [], plots.plt.Axes.set_title
    monkeypatch.setattr(plots.plt.Axes, "barh", lambda *a, **k: pytest.fail("one bar per drug"))
    monkeypatch.setattr(plots.plt.Axes, "set_title",
                        lambda self, t, **k: titles.append(t) or set_title(self, t, **k))
    plot_per_drug(m, tmp_path / "p.png")
    assert titles == [f"{len(drugs)} drugs; the model is higher for {(len(drugs) + 1) // 2}"]
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_drevals_normalised_pearson_matches_a_hand_computation():
    train = pd.DataFrame({"drug": ["a", "a", "b", "b"], "cell_line_id": ["x", "y", "x", "y"],
                          "LN_IC50": [1.0, 3.0, 5.0, 9.0]})
    test = pd.DataFrame({"drug": ["a", "b", "a", "b"], "cell_line_id": ["x", "x", "z", "z"],
                         "LN_IC50": [2.0, 4.0, 1.5, 8.0]})
    pred = np.array([1.5, 6.0, 2.0, 7.5])
    result = evaluate(train, test, pred)
    mu = 4.5                                              # by hand: global + drug + line effects
    drug = {"a": 2.0, "b": 7.0}
    line = {"x": 3.0, "y": 6.0, "z": mu}                  # z is unseen: no effect
    me = np.array([mu + (drug[d] - mu) + (line[c] - mu) for d, c in zip(test["drug"], test["cell_line_id"])])
    a, b = test["LN_IC50"].to_numpy() - me, pred - me
    a, b = a - a.mean(), b - b.mean()
    want = (a * b).sum() / np.sqrt((a ** 2).sum() * (b ** 2).sum())
    assert result["test"]["normalised_pcc"] == pytest.approx(want)
    assert np.isnan(result["baselines"]["mean_effects"]["normalised_pcc"])   # it is the reference itself


def test_intervals_are_scored_for_sharpness_beside_coverage_and_never_without_bounds():
    rng = np.random.default_rng(0)
    drugs = np.repeat(["a", "b"], 500)
    scale = np.where(drugs == "a", 1.0, 3.0)
    train = pd.DataFrame({"drug": drugs, "LN_IC50": rng.normal(size=1000) * scale})
    y = rng.normal(size=1000) * scale
    test = pd.DataFrame({"drug": drugs, "LN_IC50": y})
    pred = 0.8 * y                                 # a model that explains most of each drug's spread
    half = 1.645 * 0.2 * scale                     # 90% of N(0, (0.2 scale)^2) errors
    iv = interval_coverage(test, pred - half, pred + half, train,
                                    {"0.5": 0.674, "0.9": 1.645}, level=0.9)
    assert 0.88 <= iv["coverage"] <= 0.92 and iv["drugs_within_80_97"] == 1.0
    assert iv["naive_width"] == pytest.approx(2 * 1.645 * 2.0, rel=0.1)   # the drugs' own 5-95% ranges
    ranges = {d: np.subtract(*np.quantile(train.loc[train["drug"] == d, "LN_IC50"], [0.95, 0.05]))
              for d in ("a", "b")}                     # each drug's 5-95% range, by hand
    naive = np.mean([ranges[d] for d in drugs])
    assert iv["width_ratio"] == pytest.approx(np.mean(2 * half) / naive)
    assert iv["width_ratio"] < 0.3
    assert iv["calibration"]["0.5"] == pytest.approx(0.5, abs=0.05)
    low, high = pred - half, pred + half
    low[:10] = np.nan                              # no interval: counted apart, never as covered
    assert interval_coverage(test, low, high, train)["pairs_without_interval"] == 10
    none = interval_coverage(test, np.full(1000, np.nan), np.full(1000, np.nan), train)
    assert none["coverage"] is None and none["pairs_without_interval"] == 1000
    text = "\n".join(interval_text({"interval": {"level": 0.9, **none}}))
    assert "no coverage is claimed" in text and "hold" not in text


def test_per_line_spearman_and_top_10_precision_match_a_hand_computation():
    drugs = [f"d{i:02d}" for i in range(25)]
    spread = spread_of({d: [-1.0, 0.0, 1.0] for d in drugs})           # mean 0, sd 1: z is the value
    truth = np.arange(25.0)
    swapped = truth.copy()
    swapped[[0, 10]] = swapped[[10, 0]]                                  # two drugs trade places
    rows = [("L1", d, t, p) for d, t, p in zip(drugs, truth, swapped)]
    rows += [("L2", d, t, -t) for d, t in zip(drugs, truth)]            # the order reversed
    rows += [("L3", d, t, t) for d, t in zip(drugs[:12], truth[:12])]   # too few drugs for a top 10
    rows += [("L4", d, t, t) for d, t in zip(drugs[:4], truth[:4])]     # too few drugs to score
    pairs = pd.DataFrame(rows, columns=["cell_line_id", "drug", "LN_IC50", "prediction"])
    got = line_scores(pairs, spread)
    l1 = 1 - 6 * (10 ** 2 + 10 ** 2) / (25 * (25 ** 2 - 1))              # Spearman from rank differences
    assert got["by_line"]["L1"]["z_spearman"] == pytest.approx(l1)
    assert got["by_line"]["L1"]["top_precision"] == pytest.approx(0.9)  # d10 replaces d00 in the top 10
    assert got["by_line"]["L2"] == {"z_spearman": pytest.approx(-1.0), "top_precision": 0.0, "drugs": 25}
    assert got["by_line"]["L3"]["top_precision"] is None and "L4" not in got["by_line"]
    assert got["z_spearman"] == pytest.approx((l1 - 1.0 + 1.0) / 3)
    assert got["top_precision"] == pytest.approx(0.45) and got["chance"] == pytest.approx(0.4)
    assert got["lines"] == 3
