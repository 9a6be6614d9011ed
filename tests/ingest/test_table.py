"""Merged-table validation, leak-free splits and feature building."""
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import merged_table

from common import PipelineError
from ingest import tokens
from ingest.split import PARTS, make_split, summarise_split, write_split
from ingest.table import (
    declared_value_kind,
    drug_smiles,
    group_ids,
    load_merged,
    read_keys,
    resolve_value_kind,
    with_value_kind,
)


def test_load_merged_names_the_missing_column(tmp_path):
    path = tmp_path / "m.parquet"
    pq.write_table(merged_table().drop_columns(["LN_IC50"]), path)
    with pytest.raises(PipelineError, match=r"m.parquet.*LN_IC50"):
        load_merged(path)


def test_load_merged_rejects_unparallel_lists(tmp_path):
    t = merged_table(n_drugs=1, n_lines=1, cells_per_pair=1)
    t = t.set_column(1, "expressions", pa.array([[1.0]], pa.list_(pa.float32())))
    pq.write_table(t, tmp_path / "m.parquet")
    with pytest.raises(PipelineError, match="parallel"):
        load_merged(tmp_path / "m.parquet")


def test_load_merged_rejects_wrong_types(tmp_path):
    t = merged_table(n_drugs=1, n_lines=1, cells_per_pair=1)
    t = t.set_column(t.schema.get_field_index("LN_IC50"), "LN_IC50", pa.array(["high"]))
    pq.write_table(t, tmp_path / "m.parquet")
    with pytest.raises(PipelineError, match="'LN_IC50' has type string"):
        load_merged(tmp_path / "m.parquet")


def test_negative_values_read_as_counts_are_refused_with_the_fix(tmp_path):
    path = tmp_path / "bulk.parquet"
    pq.write_table(merged_table(n_drugs=2, n_lines=3).set_column(
        1, "expressions", pa.array([[-0.5] + [1.0] * 36] * 30, pa.list_(pa.float32()))), path)
    with pytest.raises(PipelineError, match=r"'expressions' has negative values .*--value-kind normalised"):
        load_merged(path)
    assert load_merged(path, value_kind="normalised").num_rows == 30


def test_a_table_declares_its_value_kind_and_auto_reads_it(tmp_path, caplog):
    plain, declared = tmp_path / "plain.parquet", tmp_path / "declared.parquet"
    pq.write_table(merged_table(n_drugs=2, n_lines=3), plain)
    pq.write_table(with_value_kind(merged_table(n_drugs=2, n_lines=3), "normalised"), declared)
    kind = lambda setting, path: resolve_value_kind(setting, declared_value_kind(path), path)  # noqa: E731
    assert kind("auto", plain) == "counts"
    assert kind("auto", declared) == "normalised"
    assert kind("counts", declared) == "counts"
    assert "declares normalised values; --value-kind counts overrides" in caplog.text
    pq.write_table(merged_table(n_drugs=2, n_lines=3).replace_schema_metadata({"value_kind": "tpm"}),
                   tmp_path / "odd.parquet")
    with pytest.raises(PipelineError, match="value_kind='tpm'.*expected one of"):
        kind("auto", tmp_path / "odd.parquet")


def test_groups_are_numbered_in_sorted_order_from_plain_or_dictionary_keys():
    names = ["b", "B", "é", "a", "Z", "line 10", "line-2", "b"]
    frame = pd.DataFrame({"drug": names, "cell_line_id": names[::-1]})
    expected = frame.groupby(["drug", "cell_line_id"], sort=True).ngroup().to_numpy()
    plain_keys = pa.Table.from_pandas(frame, preserve_index=False)
    encoded = pa.table({c: pa.chunked_array([plain_keys[c][:3].dictionary_encode(),
                                             plain_keys[c][3:].dictionary_encode()])
                        for c in ("drug", "cell_line_id")})   # a dictionary per chunk, as parquet gives
    for keys in (frame, plain_keys, encoded):
        assert group_ids(keys, ["drug", "cell_line_id"]).tolist() == expected.tolist()
    assert make_split(encoded, "pair", 4).tolist() == make_split(frame, "pair", 4).tolist()
    assert group_ids(encoded.slice(0, 0), ["drug", "cell_line_id"]).tolist() == []


def test_training_keys_are_read_dictionary_encoded_and_split_by_row(tmp_path):
    table = merged_table(n_drugs=3, n_lines=4, cells_per_pair=5)
    pq.write_table(table, tmp_path / "m.parquet", row_group_size=7)
    keys = read_keys(tmp_path / "m.parquet")
    assert all(pa.types.is_dictionary(keys[c].type) for c in ("drug", "cell_line_id", "canonical_smiles"))
    split = make_split(keys, "pair", 0)
    write_split(keys, split, tmp_path / "split.parquet", chunk=11)
    written = pq.read_table(tmp_path / "split.parquet").to_pandas()
    assert written["row"].tolist() == list(range(table.num_rows))
    assert written["drug"].tolist() == table["drug"].to_pylist()
    assert written["part"].tolist() == list(split)
    rows = {p: np.flatnonzero(split == p) for p in PARTS}
    frame = table.select(["drug", "cell_line_id"]).to_pandas()
    for p, summary in summarise_split(keys, rows).items():
        sub = frame.iloc[rows[p]]
        assert summary == {"cells": len(sub), "pairs": len(sub.drop_duplicates()),
                           "drugs": sub["drug"].nunique(), "cell_lines": sub["cell_line_id"].nunique()}
    smiles = drug_smiles(keys)
    toks = tokens.TokenTable(np.zeros(0, np.int32), np.zeros(0, np.float32),
                       np.zeros(keys.num_rows + 1, np.int64)).with_keys(keys)
    lookup = tokens.drug_lookup(toks.drugs, {d: i for i, d in enumerate(smiles)})
    assert lookup[toks.drug].tolist() == [sorted(smiles).index(d) for d in table["drug"].to_pylist()]
    assert np.array_equal(toks.label, table["LN_IC50"].to_numpy().astype(np.float32))


def test_a_drug_with_two_smiles_is_named():
    keys = pa.table({"drug": ["a", "b", "a"], "canonical_smiles": ["CC", "CO", "CN"]})
    with pytest.raises(PipelineError, match="drug 'a' appears with several SMILES"):
        drug_smiles(keys)
