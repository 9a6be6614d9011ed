"""Leak-free splits: whole groups on one side, the same split for the same seed, fractions of groups."""
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import SMALL, merged_table

import main
from ingest.split import make_split

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
