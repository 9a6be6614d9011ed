"""Relative sensitivity: predictions set against each drug's training lines, and the per-line scores
that measure it, checked against hand computations."""
import numpy as np
import pandas as pd
import pytest

import predict
from relative import DrugSpread, line_scores


def spread_of(labels: dict[str, list[float]]) -> DrugSpread:
    return DrugSpread.fit(pd.DataFrame([(d, y) for d, ys in labels.items() for y in ys],
                                       columns=["drug", "LN_IC50"]))


def test_z_percentile_and_the_interval_in_z_match_a_hand_computation():
    spread = spread_of({"A": [4.0, 1.0, 3.0, 2.0], "B": [0.0, 6.0, 0.0], "C": [5.0]})
    sd_a = np.sqrt(((1.5 ** 2) * 2 + (0.5 ** 2) * 2) / 3)          # 1.29099..., sample sd
    assert spread.mean.tolist() == [2.5, 2.0, 5.0] and spread.sd[0] == pytest.approx(sd_a)
    got = spread.columns(["A", "A", "B", "C", "new"], [1.5, 2.0, 0.0, 4.0, 1.0],
                         low=[0.5, 1.0, -3.0, 3.0, 0.0], high=[2.5, 3.0, 3.0, 5.0, 2.0])
    assert got["z"][:3] == pytest.approx([-1.0 / sd_a, -0.5 / sd_a, -2.0 / np.sqrt(12)])
    assert np.isnan(got["z"][3:]).all()          # one training line: no sd; a new drug: nothing
    # the share of the drug's training lines below the prediction, ties counted half
    assert got["percentile"][:4] == pytest.approx([25.0, 37.5, 100 / 3, 0.0])
    assert np.isnan(got["percentile"][4])
    assert got["z_low"][:2] == pytest.approx([-2.0 / sd_a, -1.5 / sd_a])
    assert got["z_high"][:3] == pytest.approx([0.0, 0.5 / sd_a, 1.0 / np.sqrt(12)])
    again = DrugSpread.from_state(spread.state())               # as the checkpoint holds it
    assert np.array_equal(again.z(["A", "B"], [1.0, 1.0]), spread.z(["A", "B"], [1.0, 1.0]))


def test_ranking_by_z_puts_the_drug_a_group_is_specifically_sensitive_to_first_for_that_group_only():
    # "potent" kills every line (training ln IC50 around -3); "specific" only a few (around 3)
    spread = spread_of({"potent": [-4.0, -3.0, -2.0], "specific": [2.0, 3.0, 4.0], "other": [0.0, 1.0, 2.0]})
    table = pd.DataFrame({"group": ["g1"] * 3 + ["g2"] * 3, "drug": ["potent", "specific", "other"] * 2,
                          "ln_ic50": [-3.0, 1.0, 1.0, -3.0, 3.0, 1.0], "cells": 5})
    table = table.assign(**spread.columns(table["drug"], table["ln_ic50"]))
    by_z = predict.ranked(table, "z")
    first = by_z[by_z["rank"] == 1].set_index("group")["drug"]
    assert first.to_dict() == {"g1": "specific", "g2": "potent"}    # g2 is typical for "specific"
    assert list(by_z.columns[:4]) == ["group", "rank", "drug", "z"]
    by_potency = predict.ranked(table, "ln_ic50")                     # --rank-by ln_ic50: today's order
    assert (by_potency[by_potency["rank"] == 1]["drug"] == "potent").all()
    general = predict.general_sensitivity(by_z, bulk=True)            # each group's mean z, apart
    assert general["mean_z"].tolist() == pytest.approx([table["z"][:3].mean(), table["z"][3:].mean()])
    assert general["note"].str.contains("not with the training lines").all()


def test_a_drug_new_to_the_model_has_no_z_and_is_listed_last():
    spread = spread_of({"a": [0.0, 1.0, 2.0], "b": [0.0, 1.0, 2.0]})
    table = pd.DataFrame({"group": "g", "drug": ["new", "a", "b"], "ln_ic50": [-9.0, 1.5, 0.5], "cells": 1})
    ranked = predict.ranked(table.assign(**spread.columns(table["drug"], table["ln_ic50"])), "z")
    assert ranked["drug"].tolist() == ["b", "a", "new"] and ranked["rank"].tolist() == [1, 2, 3]


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


@pytest.mark.e2e
def test_a_runs_predictions_are_set_against_its_training_lines_and_scored_per_line(tmp_path):
    """A bulk reference under the cell_line split: every test prediction's z and percentile are the
    training pairs' own, its interval in z units follows, and the per-line scores are those of the
    run's own predictions; `main.py predict` gives a table the same columns."""
    import json

    from conftest import SMALL, gdsc_frame

    import main
    rng = np.random.default_rng(4)
    lines = [f"LINE-{i}" for i in range(40)]
    x = rng.normal(size=(40, 30))
    frame = pd.DataFrame(x, columns=[f"G{j}" for j in range(30)])
    frame.insert(0, "cell_line", lines)
    frame.to_csv(tmp_path / "expr.csv", index=False)
    drugs = {f"drug{k}": "C" * (k + 1) for k in range(22)}         # 22 alkanes: distinct fingerprints
    rows = [(d, line, float(k / 4 + x[i, k] - x[i, k + 1] + 0.3 * rng.normal()))
            for k, d in enumerate(drugs) for i, line in enumerate(lines)]
    gdsc_frame(rows).to_csv(tmp_path / "GDSC2.csv", index=False)
    pd.DataFrame({"name": list(drugs), "smiles": list(drugs.values())}).to_csv(tmp_path / "smiles.csv",
                                                                               index=False)
    run = tmp_path / "run"
    assert main.main(["--expression", str(tmp_path / "expr.csv"), "--gdsc2", str(tmp_path / "GDSC2.csv"),
                      "--smiles-table", str(tmp_path / "smiles.csv"), "--split", "cell_line",
                      "--out", str(run), *SMALL, "--top-k", "0", "--epochs", "2"]) == 0
    pairs = pd.read_parquet(run / "pairs.parquet")
    part = pd.read_parquet(run / "split.parquet")["part"].to_numpy()
    train = pairs[part == "train"].groupby("drug")["LN_IC50"]
    pred = pd.read_parquet(run / "predictions.parquet")
    mean, sd = pred["drug"].map(train.mean()), pred["drug"].map(train.std())    # sample sd, by hand
    assert np.allclose(pred["z"], (pred["prediction"] - mean) / sd)
    assert np.allclose(pred["z_low"], (pred["ln_ic50_low"] - mean) / sd)
    assert np.allclose(pred["z_high"], (pred["ln_ic50_high"] - mean) / sd)
    first = pred.iloc[0]
    labels = train.get_group(first["drug"]).to_numpy()
    assert first["percentile"] == pytest.approx(100 * np.mean(labels < first["prediction"]))
    metrics = json.loads((run / "metrics.json").read_text())
    want = line_scores(pred[["drug", "cell_line_id", "LN_IC50", "prediction"]],
                       spread_of({d: list(v) for d, v in train}))
    got = metrics["test"]["per_line"]
    assert got["z_spearman"] == pytest.approx(want["z_spearman"])
    assert got["lines"] == pred["cell_line_id"].nunique() == 4
    assert got["top_precision"] == pytest.approx(want["top_precision"])
    scored = [metrics["baselines"]["ridge_per_drug"], *metrics["members"].values()]
    assert set(metrics["members"]) == {"network", "ridge_with_level"} and all("per_line" in m for m in scored)
    assert "## Relative sensitivity" in (run / "report.md").read_text()
    assert main.main(["predict", "--checkpoint", str(run / "best.pt"), "--data", str(run / "pairs.parquet"),
                      "--out", str(tmp_path / "p.parquet")]) == 0
    table = pd.read_parquet(tmp_path / "p.parquet").iloc[pred["row"].to_numpy()]
    for column in ("prediction", "z", "percentile", "z_low", "z_high"):
        assert np.allclose(table[column], pred[column], atol=1e-5), column
