"""Leak-free splits: whole groups on one side, the same split for the same seed, fractions of groups;
and folds given in a file."""
import json
import re
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import SMALL, merged_table

import main
from ingest.split import make_split, read_split_file

ONE_EPOCH = [*SMALL, "--epochs", "1"]
GROUPS = {"pair": ["drug", "cell_line_id"], "cell_line": ["cell_line_id"], "drug": ["drug"]}


@pytest.mark.parametrize("mode,cols", [("pair", ["drug", "cell_line_id"]), ("cell_line", ["cell_line_id"]),
                                       ("drug", ["drug"])])
def test_no_group_is_in_two_parts(mode, cols):
    keys = merged_table(n_drugs=6, n_lines=8, cells_per_pair=3).select(["drug", "cell_line_id"]).to_pandas()
    split = make_split(keys, mode, seed=3)
    parts = keys.assign(part=split).groupby(cols)["part"].nunique()
    assert (parts == 1).all()
    assert set(split) == {"train", "val", "test"}


def test_same_seed_same_split_other_seed_other_split():
    keys = merged_table(n_drugs=6, n_lines=8).select(["drug", "cell_line_id"]).to_pandas()
    a, b, c = (make_split(keys, "pair", s) for s in (1, 1, 2))
    assert (a == b).all() and not (a == c).all()


def test_random_split_assigns_cells_and_does_leak_pairs():
    keys = merged_table(n_drugs=4, n_lines=6, cells_per_pair=10).select(["drug", "cell_line_id"]).to_pandas()
    split = make_split(keys, "random", seed=0)
    assert (keys.assign(part=split).groupby(["drug", "cell_line_id"])["part"].nunique() > 1).any()


def test_split_fractions_are_of_groups():
    keys = merged_table(n_drugs=10, n_lines=10, cells_per_pair=2).select(["drug", "cell_line_id"]).to_pandas()
    split = make_split(keys, "pair", 0, val_frac=0.2, test_frac=0.1)
    pairs = keys.assign(part=split).drop_duplicates(["drug", "cell_line_id"])["part"].value_counts()
    assert pairs.to_dict() == {"train": 70, "val": 20, "test": 10}


@pytest.mark.e2e
@pytest.mark.parametrize("mode", ["pair", "cell_line", "drug", "random"])
def test_split_parquet_keeps_every_group_on_one_side(mode, tmp_path, groups_path):
    for name in ("a", "b"):
        assert main.main(["--data", str(groups_path), "--split", mode, "--seed", "4",
                          "--out", str(tmp_path / name), *ONE_EPOCH]) == 0
    split = pd.read_parquet(tmp_path / "a" / "split.parquet")
    assert len(split) == pq.read_metadata(groups_path).num_rows
    if mode in GROUPS:
        assert (split.groupby(GROUPS[mode])["part"].nunique() == 1).all()
    assert split.equals(pd.read_parquet(tmp_path / "b" / "split.parquet"))  # same seed, same split
    report = (tmp_path / "a" / "report.md").read_text()
    assert ("LEAKY" in report) == (mode == "random")
    for png in ("pred_vs_measured.png", "per_drug_pearson.png", "loss_curve.png"):
        assert (tmp_path / "a" / png).read_bytes()[:4] == b"\x89PNG"


def fold_file(run: Path, folds: int, path: Path, rename=str) -> Path:
    """The folds a `--split cell_line --folds K` run drew, as a split file: each test line's fold."""
    rows = []
    for f in range(folds):
        split = pd.read_parquet(run / f"seed-0-fold-{f}" / "split.parquet")
        tested = sorted(split.loc[split["part"] == "test", "cell_line_id"].unique())
        rows += [(rename(line), f) for line in tested]
    pd.DataFrame(rows, columns=["cell_line", "fold"]).to_csv(path, index=False)
    return path


@pytest.mark.e2e
def test_a_split_file_of_the_folds_a_run_drew_gives_the_same_runs(tmp_path, groups_path):
    """--split-file with the folds --split cell_line wrote (names written another way) reproduces
    that run: the same parts, validation lines included, and the same predictions, fold by fold."""
    assert main.main(["--data", str(groups_path), "--split", "cell_line", "--folds", "3",
                      "--out", str(tmp_path / "drawn"), *ONE_EPOCH]) == 0
    given = fold_file(tmp_path / "drawn", 3, tmp_path / "folds.csv",
                      rename=lambda n: n.lower().replace("_", "-"))
    assert main.main(["--data", str(groups_path), "--split-file", str(given),
                      "--out", str(tmp_path / "given"), *ONE_EPOCH]) == 0
    for f in range(3):
        a, b = (tmp_path / run / f"seed-0-fold-{f}" for run in ("drawn", "given"))
        pd.testing.assert_frame_equal(pd.read_parquet(a / "split.parquet"),
                                      pd.read_parquet(b / "split.parquet"))
        pd.testing.assert_frame_equal(pd.read_parquet(a / "predictions.parquet"),
                                      pd.read_parquet(b / "predictions.parquet"))
    metrics = [json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("drawn", "given")]
    assert metrics[0]["test"] == metrics[1]["test"] and len(metrics[1]["runs"]) == 3


@pytest.mark.e2e
def test_a_split_file_of_parts_is_one_split_with_its_own_validation_part(tmp_path, groups_path):
    lines = [f"CVCL_{c:04d}" for c in range(8)]
    parts = ["test", "test", "val"] + ["train"] * 4       # the eighth line is not named: left out
    pd.DataFrame({"cell_line": lines[:7], "part": parts}).to_parquet(tmp_path / "parts.parquet")
    assert main.main(["--data", str(groups_path), "--split-file", str(tmp_path / "parts.parquet"),
                      "--out", str(tmp_path / "run"), *ONE_EPOCH]) == 0
    split = pd.read_parquet(tmp_path / "run" / "split.parquet")
    by_line = split.groupby("cell_line_id")["part"].first()
    assert by_line.to_dict() == {**dict(zip(lines[:7], parts)), lines[7]: ""}


BAD = {
    "unknown lines": ("cell_line,fold\nCVCL_0000,0\nCVCL_0001,1\nNOT-A-LINE,1\n",
                      "1 lines are not in the data.*NOT-A-LINE"),
    "a line in two folds": ("cell_line,fold\nCVCL_0000,0\nCVCL_0001,1\nCVCL_0000,1\n",
                            "cell_line 'CVCL_0000' is in fold 0 and in fold 1"),
    "an empty fold": ("cell_line,fold\nCVCL_0000,0\nCVCL_0001,2\n", "fold 1 is empty"),
    "test overlapping training": ("cell_line,part\nCVCL_0000,train\nCVCL_0001,test\nCVCL_0000,test\n",
                                  "'CVCL_0000' is in part train and in part test; a test part may not"),
    "no fold or part": ("cell_line,group\nCVCL_0000,0\n", "expected 'cell_line'.*'fold'.*'part'"),
    "a fold that is not an integer": ("cell_line,fold\nCVCL_0000,a\nCVCL_0001,1\n",
                                      "fold must be an integer"),
    "an unknown part": ("drug,part\ndrug0,train\ndrug1,holdout\n", "part must be one of"),
    "no test part": ("drug,part\ndrug0,train\ndrug1,val\n", "no group is in part 'test'"),
}


@pytest.mark.parametrize("text,message", BAD.values(), ids=BAD.keys())
def test_a_bad_split_file_gets_its_message_and_leaves_nothing(tmp_path, groups_path, caplog, text, message):
    (tmp_path / "split.csv").write_text(text)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main.main(["--data", str(groups_path), "--split-file", str(tmp_path / "split.csv"),
                      "--out", str(tmp_path / "run"), *ONE_EPOCH]) == 2
    assert re.search(message, caplog.text), caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_split_file_decides_the_split_and_the_folds(tmp_path, groups_path, caplog):
    (tmp_path / "split.csv").write_text("cell_line,fold\nCVCL_0000,0\nCVCL_0001,1\n")
    assert main.main(["--data", str(groups_path), "--split-file", str(tmp_path / "split.csv"),
                      "--folds", "2", *ONE_EPOCH]) == 2
    assert "split_file gives the folds" in caplog.text
    assert main.main(["--data", str(groups_path), "--split-file", str(tmp_path / "split.csv"),
                      "--split", "drug", "--out", str(tmp_path / "run"), *ONE_EPOCH]) == 2
    assert "--split drug but split file" in caplog.text


def test_drug_names_in_a_split_file_match_ignoring_case_and_salt(tmp_path):
    keys = merged_table(n_drugs=3, n_lines=4, cells_per_pair=1).select(["drug", "cell_line_id"])
    (tmp_path / "split.csv").write_text("drug,part\nDRUG0 (hydrochloride),train\ndrug1,test\n")
    given = read_split_file(tmp_path / "split.csv", keys)
    parts = pd.Series(given.parts(keys, None, seed=0, val_frac=0.1)).groupby(
        keys["drug"].to_pandas()).first().to_dict()
    assert given.mode == "drug" and parts["drug1"] == "test" and parts["drug2"] == ""   # drug2: not named
    assert parts["drug0"] in ("train", "val")                       # validation is drawn from training
