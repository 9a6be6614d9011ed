"""Relative sensitivity: predictions set against each drug's training lines, checked against hand
computations, through a run and its report."""
import json

import numpy as np
import pandas as pd
import pytest
from conftest import SMALL, gdsc_frame, spread_of

import main
from predictor.spread import DrugSpread
from reporting.metrics import line_scores


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


@pytest.mark.e2e
def test_a_runs_predictions_are_set_against_its_training_lines_and_scored_per_line(tmp_path):
    """A bulk reference under the cell_line split: every test prediction's z and percentile are the
    training pairs' own, its interval in z units follows, and the per-line scores are those of the
    run's own predictions; `main.py predict` gives a table the same columns."""

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
