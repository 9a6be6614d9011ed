"""Drugs new to the model: predicted from structurally similar training drugs, with an interval
calibrated on drugs held out like new ones; flagged with their similarity wherever predicted."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SMALL, gdsc_frame
from rdkit import Chem, DataStructs
from rdkit.Chem import rdFingerprintGenerator

import main
from predictor import Predictor, newdrugs
from predictor.newdrugs import NewDrugs

SCAFFOLDS = ["{}c1ccccc1", "{}c1ccncc1", "{}c1ccc2ccccc2c1", "{}c1ccc2[nH]ccc2c1", "{}N1CCNCC1",
             "{}c1cccs1", "{}C1CCCCC1", "{}c1ncncn1"]
GROUPS = ["C", "CC", "CCC", "OC", "Cl", "Br"]


def family_drugs(n_families: int = 8, per_family: int = 6) -> dict[str, str]:
    """name -> SMILES: families of one scaffold with different small substituents, so that drugs
    of a family are similar and drugs of different families are not."""
    return {f"f{f}d{k}": SCAFFOLDS[f].format(GROUPS[k]) for f in range(n_families) for k in range(per_family)}


def family_labels(drugs: dict[str, str], n_lines: int = 80, structured: bool = True, seed: int = 0,
                  x: np.ndarray | None = None) -> pd.DataFrame:
    """ln IC50 = drug mean + the line's general level + its family's own profile + noise (sd 0.5).
    Unstructured: each drug has a profile of its own, so structure tells nothing beyond the level.
    With profiles x [lines, genes], level and profiles read its genes (a ridge learns them)."""
    rng = np.random.default_rng(seed)
    names = list(drugs)
    family = np.array([int(n[1:n.index("d")]) for n in names])
    if x is None:
        level, profiles = rng.normal(size=n_lines), 1.2 * rng.normal(size=(n_lines, family.max() + 1))
    else:
        level, profiles = x[:, 0], 1.2 * x[:, 1:1 + family.max() + 1]
    own = profiles[:, family] if structured else 1.2 * rng.normal(size=(n_lines, len(names)))
    if not structured and x is not None:   # still expression-driven, but not by family
        own = x[:, rng.integers(1, x.shape[1], size=len(names))] * 1.2
    mean = rng.normal(size=len(names))
    y = mean[None] + level[:, None] + own + 0.5 * rng.normal(size=(n_lines, len(names)))
    lines = [f"L{i}" for i in range(n_lines)]
    rows = [(names[j], lines[i], float(y[i, j])) for i in range(n_lines) for j in range(len(names))]
    return pd.DataFrame(rows, columns=["drug", "cell_line_id", "LN_IC50"])


def held_out(pairs: pd.DataFrame, per_family: int = 2) -> np.ndarray:
    """The last `per_family` drugs of each family: new drugs."""
    return pairs["drug"].str[-1].astype(int).to_numpy() >= 6 - per_family


def per_drug_pearson(pairs: pd.DataFrame, column: str) -> float:
    return float(np.mean([np.corrcoef(g["LN_IC50"], g[column])[0, 1] for _, g in pairs.groupby("drug")]))


def test_a_new_drug_is_predicted_from_its_neighbours_and_its_interval_covers_under_known_noise():
    drugs = family_drugs()
    pairs = family_labels(drugs)
    test = held_out(pairs)
    fit = NewDrugs.fit(pairs[~test], drugs)
    assert sorted(fit.drugs) == sorted(pairs.loc[~test, "drug"].unique()) and fit.lam in newdrugs.LAMBDAS
    new = pairs[test].copy()
    pred, mean, sd = fit.at_training_lines([drugs[d] for d in new["drug"]], new["cell_line_id"])
    new["pred"] = pred
    knn = fit.knn_at_lines([drugs[d] for d in new["drug"]], new["cell_line_id"])
    assert np.isfinite(knn).all()   # the structure-kNN baseline: every line measured
    new["line_mean"] = new["cell_line_id"].map(pairs[~test].groupby("cell_line_id")["LN_IC50"].mean())
    assert per_drug_pearson(new, "pred") > per_drug_pearson(new, "line_mean") + 0.1   # structure carries
    half = fit.interval(sd, at_lines=True)
    assert np.isfinite(half).all() and (half > 0).all()
    inside = np.abs(new["LN_IC50"].to_numpy() - pred) <= half
    assert 0.85 <= inside.mean() <= 0.95
    for level, q in fit.scales.items():   # every calibrated level within 5 points
        assert abs((np.abs(new["LN_IC50"].to_numpy() - pred) <= q * sd).mean() - level) < 0.05


def test_the_new_drug_interval_widens_when_held_out_drugs_err_more():
    drugs = family_drugs()
    width = {}
    for structured in (True, False):
        pairs = family_labels(drugs, structured=structured)
        test = held_out(pairs)
        fit = NewDrugs.fit(pairs[~test], drugs)
        new = pairs[test]
        pred, _, sd = fit.at_training_lines([drugs[d] for d in new["drug"]], new["cell_line_id"])
        inside = np.abs(new["LN_IC50"].to_numpy() - pred) <= fit.interval(sd, at_lines=True)
        assert 0.85 <= inside.mean() <= 0.95
        width[structured] = float(np.mean(2 * fit.interval(sd, at_lines=True)))
    assert width[False] > 1.15 * width[True]


def test_the_kernel_ridge_weights_of_a_training_drug_left_out_are_those_of_a_fit_without_it():
    drugs = family_drugs(4, 6)
    pairs = family_labels(drugs, n_lines=30)
    fit = NewDrugs.fit(pairs, drugs)
    fp = fit.fingerprints
    loo = newdrugs._loo_weights(newdrugs.tanimoto(fp, fp), fit.lam)
    k = 5
    rest = [i for i in range(len(fit.drugs)) if i != k]
    kernel = newdrugs.tanimoto(fp[rest], fp[rest])
    direct = newdrugs.tanimoto(fp[[k]], fp[rest]) @ np.linalg.inv(kernel + fit.lam * np.eye(len(rest)))
    assert np.allclose(loo[k, rest], direct[0]) and loo[k, k] == 0


# ----------------------------------------------------------------------------- through main.py

def write_inputs(d, drugs: dict[str, str], structured: bool, seed: int = 0, n_lines: int = 60,
                 change=None):
    """Expression of n_lines lines x 12 genes, GDSC2 labels of the family drugs driven by those
    genes, and the SMILES table."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_lines, 12))
    frame = pd.DataFrame(x, columns=[f"G{j}" for j in range(12)])
    frame.insert(0, "cell_line", [f"L{i}" for i in range(n_lines)])
    frame.to_csv(d / "expr.csv", index=False)
    pairs = family_labels(drugs, n_lines, structured=structured, seed=seed, x=x)
    if change is not None:
        pairs = change(pairs)
    gdsc_frame(list(pairs.itertuples(index=False, name=None))).to_csv(d / "GDSC2.csv", index=False)
    pd.DataFrame({"name": list(drugs), "smiles": list(drugs.values())}).to_csv(d / "smiles.csv", index=False)
    return x


def train_args(d, split: str, out: str) -> list[str]:
    return ["--expression", str(d / "expr.csv"), "--gdsc2", str(d / "GDSC2.csv"), "--smiles-table",
            str(d / "smiles.csv"), "--split", split, "--out", str(d / out), *SMALL, "--top-k", "0",
            "--epochs", "2"]


@pytest.fixture(scope="module")
def unstructured_reference(tmp_path_factory):
    """A bulk reference (split over lines) of 8 x 4 family drugs whose responses the genes drive
    but their structure does not."""
    d = tmp_path_factory.mktemp("newdrug-reference")
    drugs = family_drugs(8, 4)
    x = write_inputs(d, drugs, structured=False)
    assert main.main(train_args(d, "cell_line", "run")) == 0
    samples = pd.DataFrame(x[:3] + 0.1, columns=[f"G{j}" for j in range(12)], index=["s1", "s2", "s3"])
    samples.rename_axis("sample").to_csv(d / "samples.csv")
    return d


def rdkit_similarity(smiles: str, others: list[str]) -> float:
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    fp = gen.GetFingerprint(Chem.MolFromSmiles(smiles))
    return max(DataStructs.TanimotoSimilarity(fp, gen.GetFingerprint(Chem.MolFromSmiles(s))) for s in others)


@pytest.mark.e2e
def test_predict_gives_a_new_drug_a_wider_interval_and_its_similarity(unstructured_reference, tmp_path,
                                                                       caplog):
    d = unstructured_reference
    new = {"NewPyridine": "CCCCc1ccncc1", "Far": "O=C(O)CCC(=O)O"}
    pd.DataFrame({"name": list(new), "smiles": list(new.values())}).to_csv(tmp_path / "new.csv", index=False)
    out = tmp_path / "out"
    assert main.main(["predict", "--checkpoint", str(d / "run" / "best.pt"), "--data", str(d / "samples.csv"),
                      "--smiles", str(tmp_path / "new.csv"), "--out", str(out)]) == 0
    predictor = Predictor.load(d / "run" / "best.pt")
    assert predictor.newdrugs.line_scales is not None   # calibrated on the validation lines
    ranking = pd.read_csv(out / "ranking.csv")
    preds = pd.read_parquet(out / "predictions.parquet")
    training = [predictor.network.drugs[k] for k in predictor.training_drugs()]
    for table in (ranking, preds):
        fresh = table[table["new_drug"]]
        assert set(fresh["drug"]) == set(new)
        assert (table.loc[~table["new_drug"], "similarity_to_training"] == 1).all()
        for name, smiles in new.items():
            assert np.allclose(fresh.loc[fresh["drug"] == name, "similarity_to_training"],
                               rdkit_similarity(smiles, training))
    half = (ranking["ln_ic50_high"] - ranking["ln_ic50_low"]) / 2
    assert np.isfinite(half).all()
    assert half[ranking["new_drug"]].min() > half[~ranking["new_drug"]].max()   # new drugs err more here
    assert np.isfinite(ranking.loc[ranking["new_drug"], "z"]).all()
    assert "new drug NewPyridine: most similar training drugs (Tanimoto): f1d" in caplog.text
    assert "new drug Far is far from every training drug" in caplog.text
    assert "calibrated on validation lines with each training drug held out" in caplog.text


@pytest.mark.e2e
def test_a_checkpoint_before_format_9_predicts_new_drugs_with_the_network_and_says_so(unstructured_reference,
                                                                                       tmp_path, caplog):
    d = unstructured_reference
    state = torch.load(d / "run" / "best.pt", weights_only=False)
    state = {k: v for k, v in state.items() if k not in ("newdrugs", "domain", "batch_size")} | {
        "format": 8, "reference": state["domain"],   # as format 8 wrote it
        "model_args": {**state["model_args"], "batch_size": state["batch_size"]}}
    torch.save(state, tmp_path / "format8.pt")
    pd.DataFrame({"name": ["NewPyridine"], "smiles": ["CCCCc1ccncc1"]}).to_csv(tmp_path / "new.csv",
                                                                               index=False)
    assert main.main(["predict", "--checkpoint", str(tmp_path / "format8.pt"), "--data",
                      str(d / "samples.csv"), "--smiles", str(tmp_path / "new.csv"), "--out",
                      str(tmp_path / "out")]) == 0
    ranking = pd.read_csv(tmp_path / "out" / "ranking.csv")
    fresh, known = ranking[ranking["new_drug"]], ranking[~ranking["new_drug"]]
    assert np.isfinite(fresh["ln_ic50"]).all() and fresh["ln_ic50_low"].isna().all()
    assert np.isfinite(known["ln_ic50_low"]).all()
    assert "predates the new-drug predictor (checkpoint format 9)" in caplog.text
    assert "intervals of +- " in caplog.text and "sd of each drug's training lines" in caplog.text
    assert "new drug NewPyridine: most similar training drugs" in caplog.text


@pytest.mark.e2e
def test_under_a_drug_split_validation_and_test_drugs_never_enter_the_fit_and_intervals_cover(tmp_path):
    drugs = family_drugs(8, 6)
    write_inputs(tmp_path, drugs, structured=True)
    assert main.main(train_args(tmp_path, "drug", "run")) == 0
    run = tmp_path / "run"
    predictor = Predictor.load(run / "best.pt")
    split = pd.read_parquet(run / "split.parquet")
    train_drugs = set(split.loc[split["part"] == "train", "drug"])
    assert set(predictor.newdrugs.drugs) == train_drugs and predictor.stack is None
    preds = pd.read_parquet(run / "predictions.parquet")
    assert preds["new_drug"].all()
    assert np.isfinite(preds[["prediction", "ln_ic50_low", "ln_ic50_high"]].to_numpy()).all()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["interval"]["new_drugs"] and 0.8 <= metrics["interval"]["coverage"] <= 1.0
    assert "structure_knn" in metrics["baselines"] and "cell_line_mean" in metrics["baselines"]
    assert "Every test drug is new to the model" in (run / "report.md").read_text()
    # validation and test labels changed: the new-drug predictor stays the same
    held = set(split.loc[split["part"] != "train", "drug"])
    moved = tmp_path / "moved"
    moved.mkdir()
    write_inputs(moved, drugs, structured=True, change=lambda p: p.assign(
        LN_IC50=np.where(p["drug"].isin(held), -3 * p["LN_IC50"] + 7, p["LN_IC50"])))
    assert main.main(train_args(moved, "drug", "run")) == 0
    other = Predictor.load(moved / "run" / "best.pt").newdrugs
    fit = predictor.newdrugs
    assert other.drugs == fit.drugs and other.lam == fit.lam and other.scales == fit.scales
    assert np.array_equal(other.mean, fit.mean) and np.array_equal(other.log_sd, fit.log_sd)
