"""benchmarks/peers.py's adapter: a dataset in drevalpy's custom layout that drevalpy's own loaders
read (skipped where drevalpy is not installed: it is never a dependency of the tool), and its folds
as a --split-file that main.py runs on."""
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SMILES

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import peers  # noqa: E402

from ingest.split import check_split_file  # noqa: E402

DRUGS = ["Erlotinib", "olaparib", "Vorinostat"]


def small(n_lines: int = 12, n_genes: int = 30):
    """Pairs as main.py prepares them (GDSC names beside the matrix's) and the matrix."""
    rng = np.random.default_rng(0)
    genes = [f"GENE{j}" for j in range(n_genes)]
    matrix = pd.DataFrame(rng.normal(size=(n_lines, n_genes)), columns=genes)
    matrix.insert(0, "cell_line", [f"L{i}" for i in range(n_lines)])
    rows = [(d, f"NCI-L{i}", f"L{i}", float(rng.normal())) for d in DRUGS for i in range(n_lines)]
    pairs = pd.DataFrame(rows, columns=["drug", "cell_line_id", "cell_name", "LN_IC50"])
    return pairs, matrix


def test_the_dataset_is_laid_out_as_drevalpy_reads_it(tmp_path, monkeypatch):
    pairs, matrix = small()
    monkeypatch.setattr(peers, "LIST_SIZE", 10)
    mutations = matrix.iloc[1:].copy()         # L0 has no mutation calls: left out of that view only
    mutations.iloc[:, 1:] = (mutations.iloc[:, 1:] > 1).astype(int)
    cnv = matrix.copy()
    cnv.iloc[:, 1:] = np.sign(cnv.iloc[:, 1:].round()).astype(int)
    d = peers.write_dataset(pairs, matrix, {x: SMILES[x] for x in DRUGS}, tmp_path,
                            omics={"mutations": mutations, "copy_number_variation_gistic": cnv})
    written = pd.read_csv(d / "mutations.csv", index_col="cell_line_name")
    assert "NCI-L0" not in written.index and written.loc["NCI-L4"].tolist() == mutations.iloc[3, 1:].tolist()
    targets = pd.read_csv(tmp_path / "meta" / "gene_lists" / f"{peers.TARGET_LIST}.csv")["Symbol"]
    altered = (written != 0).sum() + (pd.read_csv(d / "copy_number_variation_gistic.csv",
                                                  index_col="cell_line_name") != 0).sum()
    assert len(targets) == 10 and altered[targets].min() >= altered.drop(targets).max()
    response = pd.read_csv(d / f"{peers.NAME}.csv")
    assert len(response) == 36 and set(response["cell_line_name"]) == {f"NCI-L{i}" for i in range(12)}
    expression = pd.read_csv(d / "gene_expression.csv", index_col="cell_line_name")
    np.testing.assert_allclose(expression.loc["NCI-L3"].to_numpy(), matrix.iloc[3, 1:].to_numpy(dtype=float))
    bits = pd.read_csv(d / "drug_fingerprints" / f"pubchem_id_to_demorgan_{peers.FINGERPRINT_BITS}_map.csv")
    assert list(bits.columns) == sorted(DRUGS) and len(bits) == peers.FINGERPRINT_BITS
    assert len(pd.read_csv(tmp_path / "meta" / "gene_lists" / f"{peers.GENE_LIST}.csv")) == 10
    pytest.importorskip("drevalpy", reason="drevalpy is not installed (benchmarks/requirements-peers.txt)")
    from drevalpy.datasets.loader import load_dataset
    from drevalpy.models.utils import load_and_select_gene_features, load_drug_fingerprint_features
    data = load_dataset(peers.NAME, str(tmp_path))
    assert len(data.response) == 36 and set(data.drug_ids) == set(DRUGS)
    genes = load_and_select_gene_features("gene_expression", peers.GENE_LIST, str(tmp_path), peers.NAME)
    assert len(genes.meta_info["gene_expression"]) == 10
    assert set(load_drug_fingerprint_features(str(tmp_path), peers.NAME).features) == set(DRUGS)
    from drevalpy.models import MODEL_FACTORY
    views = MODEL_FACTORY["MultiViewRandomForest"]()
    views.build_model(views.get_hyperparameter_set()[0])
    features = views.load_cell_line_features(str(tmp_path), peers.NAME)
    assert set(features.identifiers) == {f"NCI-L{i}" for i in range(1, 12)}


def test_the_multi_view_forest_is_given_the_drugs_fingerprints_as_its_random_forest_is(tmp_path, monkeypatch):
    pytest.importorskip("drevalpy", reason="drevalpy is not installed (benchmarks/requirements-peers.txt)")
    from drevalpy.datasets.dataset import DrugResponseDataset
    from drevalpy.datasets.loader import load_dataset
    from drevalpy.models import MODEL_FACTORY
    pairs, matrix = small()
    monkeypatch.setattr(peers, "LIST_SIZE", 10)
    mutations = matrix.copy()
    mutations.iloc[:, 1:] = (mutations.iloc[:, 1:] > 0.5).astype(int)
    peers.write_dataset(pairs, matrix, {x: SMILES[x] for x in DRUGS}, tmp_path,
                        omics={"mutations": mutations})
    data = load_dataset(peers.NAME, str(tmp_path))
    output = DrugResponseDataset(data.response, data.cell_line_ids, data.drug_ids)
    widths = {}
    for name in ("RandomForest", "MultiViewRandomForest"):
        cls = MODEL_FACTORY[name]
        model = cls()
        model.build_model({**cls.get_hyperparameter_set()[0], "n_jobs": 1})
        cells = model.load_cell_line_features(str(tmp_path), peers.NAME)
        drugs = model.load_drug_features(str(tmp_path), peers.NAME)
        with peers.drugs_seen(cls):
            model.train(output, cells, drugs)
            predicted = model.predict(data.cell_line_ids, data.drug_ids, cells, drugs)
        widths[name] = model.model.n_features_in_
        by_line = pd.DataFrame({"line": data.cell_line_ids, "p": predicted}).groupby("line")["p"].nunique()
        assert (by_line > 1).all()                   # each line's drugs told apart
    assert widths == {"RandomForest": 10 + peers.FINGERPRINT_BITS,
                      "MultiViewRandomForest": 10 + 10 + peers.FINGERPRINT_BITS}


def test_drevalpys_folds_become_a_split_file_of_every_test_line(tmp_path):
    splits = tmp_path / "splits"
    splits.mkdir()
    for i, lines in enumerate([["NCI-L0", "NCI-L1"], ["NCI-L2"]]):
        pd.DataFrame({"cell_line_name": lines, "pubchem_id": "Erlotinib", "response": 0.0}).to_csv(
            splits / f"cv_split_{i}_test.csv", index=False)
    path = peers.fold_file(splits, tmp_path / "folds.csv")
    want = {"cell_line": ["NCI-L0", "NCI-L1", "NCI-L2"], "fold": [0, 0, 1]}
    assert pd.read_csv(path).to_dict("list") == want
    by, column, assignment = check_split_file(path)
    assert by == ["cell_line"] and column == "fold" and assignment[("NCI-L2",)] == 1


def test_the_grid_is_searched_on_the_first_fold_and_its_choice_reused(tmp_path):
    calls = []
    tune = peers.tuned_once(lambda **kw: calls.append(kw) or {"alpha": 0.01}, tmp_path, "ElasticNet")
    assert tune(hpam_set=[{"alpha": 1}, {"alpha": 0.01}]) == {"alpha": 0.01} and len(calls) == 1
    saved = tmp_path / peers.RUN_ID / peers.NAME / "LCO" / "ElasticNet" / "best_hpams"
    saved = saved / "best_hpams_split_0.json"
    saved.parent.mkdir(parents=True)
    saved.write_text('{"alpha": 0.01}')     # drevalpy writes the first fold's choice here
    assert tune(hpam_set=[{"alpha": 1}, {"alpha": 0.01}]) == {"alpha": 0.01} and len(calls) == 1


def test_quick_takes_each_grids_first_point_and_cuts_a_networks_epochs():
    grid = [{"units": [32, 16], "max_epochs": 100}, {"units": [64], "max_epochs": 100}]
    assert peers.searched(grid, tuning=True) == grid
    assert peers.searched(grid, tuning=False) == [{"units": [32, 16], "max_epochs": peers.QUICK_EPOCHS}]
    assert peers.searched([{"alpha": 1}, {"alpha": 5}], tuning=False) == [{"alpha": 1}]


def test_a_models_wall_time_adds_up_over_the_runs_that_finished_it(tmp_path):
    assert peers.timed(tmp_path, "ElasticNet", 600.0) == 600.0
    assert peers.timed(tmp_path, "ElasticNet", 0.0) == 600.0        # a rerun that found it done
    assert peers.timed(tmp_path, "ElasticNet", 30.0) == 630.0 and peers.timed(tmp_path, "SRMF", 5.0) == 5.0


def test_the_summary_sets_both_scorers_side_by_side_with_every_drevalpy_metric():
    row = {"pairs": 1200, "per_drug_pcc": (0.58, 0.01), "mse": (1.4, 0.1), "normalised_pcc": (0.6, 0.02),
           "z_spearman": (0.37, 0.01), "top10": (0.27, 0.01), peers.THEIRS + "Pearson: normalized": 0.602,
           peers.THEIRS + "Pearson": 0.904, peers.THEIRS + "RMSE": 1.19, "seconds": 120.0}
    table = pd.DataFrame.from_dict({peers.OURS: {**row, "coverage": (0.9, 0.01)},
                                    "ElasticNet": {**row, "pairs": 1100},
                                    peers.OURS + "OnElasticNet": {**row, "pairs": 1100}}, orient="index")
    text = peers.summary(table, folds=5, quick=False)
    assert f"| {peers.OURS} | 0.602 | 0.904 | 0.580 ± 0.010 |" in text
    assert "| 0.900 ± 0.010 | 1,200 | 2.0 min |" in text and "| – | 1,100 | 2.0 min |" in text
    assert "| model | Pearson: normalized | Pearson | RMSE |" in text
    assert "| ElasticNet | 0.602 | 0.904 | 1.190 |" in text
    assert f"| {peers.OURS} on ElasticNet's pairs | 0.602 | 0.904 | 0.580 ± 0.010 |" in text
    assert "drevalpy 1.6 leaves out of it" not in text
    mended = table.rename(index={"ElasticNet": "MultiViewRandomForest"})
    assert "drevalpy 1.6 leaves out of it" in peers.summary(mended, folds=5, quick=False)


def test_ours_is_scored_again_on_exactly_the_pairs_a_peer_predicted_where_it_predicted_fewer(tmp_path):
    pairs, _ = small(n_lines=16)
    rng = np.random.default_rng(1)
    ours, results = tmp_path / "ours", tmp_path / "results"
    for i, lines in enumerate([[f"NCI-L{j}" for j in range(8)], [f"NCI-L{j}" for j in range(8, 16)]]):
        test = pairs[pairs["cell_line_id"].isin(lines)]
        (ours / f"seed-0-fold-{i}").mkdir(parents=True)
        prediction = test["LN_IC50"] + rng.normal(scale=0.5, size=len(test))
        pd.DataFrame({"cell_line_id": test["cell_line_id"], "drug": test["drug"], "LN_IC50": test["LN_IC50"],
                      "prediction": prediction, "ln_ic50_low": prediction - 1, "ln_ic50_high": prediction + 1}
                     ).to_parquet(ours / f"seed-0-fold-{i}" / "predictions.parquet")
        for model, keep in (("MultiViewRandomForest", lines[:-2]), ("RandomForest", lines)):
            part = test[test["cell_line_id"].isin(keep)]
            where = peers.predictions(results, model)
            where.mkdir(parents=True, exist_ok=True)
            pd.DataFrame({"cell_line_name": part["cell_line_id"], "pubchem_id": part["drug"],
                          "response": part["LN_IC50"], "predictions": part["LN_IC50"], "tissue": "unknown"}
                         ).to_csv(where / f"predictions_split_{i}.csv", index=False)
    frames = peers.our_predictions(ours, folds=2)
    peers.copy_ours(frames, results)
    assert peers.copy_ours(frames, results, like="RandomForest") is None     # it predicted every pair
    name = peers.copy_ours(frames, results, like="MultiViewRandomForest")
    assert name == peers.OURS + "OnMultiViewRandomForest"
    full = peers.our_scores(pairs, results, peers.OURS, 2, ours)
    cut = peers.our_scores(pairs, results, name, 2, ours)
    peer = peers.our_scores(pairs, results, "MultiViewRandomForest", 2, None)
    assert full["pairs"] == len(pairs) and cut["pairs"] == peer["pairs"] == len(pairs) - 2 * 2 * len(DRUGS)
    inside = []
    for i, dropped in enumerate([("NCI-L6", "NCI-L7"), ("NCI-L14", "NCI-L15")]):
        q = pd.read_parquet(ours / f"seed-0-fold-{i}" / "predictions.parquet")
        q = q[~q["cell_line_id"].isin(dropped)]
        inside.append(((q["ln_ic50_low"] <= q["LN_IC50"]) & (q["LN_IC50"] <= q["ln_ic50_high"])).mean())
    assert cut["coverage"][0] == pytest.approx(np.mean(inside))
    assert cut["per_drug_pcc"] != full["per_drug_pcc"]
