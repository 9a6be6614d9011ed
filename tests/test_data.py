"""Merged-table validation, leak-free splits and feature building."""
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import features_of, merged_table

import data
from common import PipelineError


def batch(features, vocab):
    """Every row's [N, K] vocabulary indices and values, as the model reads them."""
    return features.batch(np.arange(len(features)), vocab)


@pytest.mark.parametrize("mode,cols", [("pair", ["drug", "cell_line_id"]), ("cell_line", ["cell_line_id"]),
                                       ("drug", ["drug"])])
def test_no_group_is_in_two_parts(mode, cols):
    keys = merged_table(n_drugs=6, n_lines=8, cells_per_pair=3).select(["drug", "cell_line_id"]).to_pandas()
    split = data.make_split(keys, mode, seed=3)
    parts = keys.assign(part=split).groupby(cols)["part"].nunique()
    assert (parts == 1).all()
    assert set(split) == {"train", "val", "test"}


def test_same_seed_same_split_other_seed_other_split():
    keys = merged_table(n_drugs=6, n_lines=8).select(["drug", "cell_line_id"]).to_pandas()
    a, b, c = (data.make_split(keys, "pair", s) for s in (1, 1, 2))
    assert (a == b).all() and not (a == c).all()


def test_random_split_assigns_cells_and_does_leak_pairs():
    keys = merged_table(n_drugs=4, n_lines=6, cells_per_pair=10).select(["drug", "cell_line_id"]).to_pandas()
    split = data.make_split(keys, "random", seed=0)
    assert (keys.assign(part=split).groupby(["drug", "cell_line_id"])["part"].nunique() > 1).any()


def test_split_fractions_are_of_groups():
    keys = merged_table(n_drugs=10, n_lines=10, cells_per_pair=2).select(["drug", "cell_line_id"]).to_pandas()
    split = data.make_split(keys, "pair", 0, val_frac=0.2, test_frac=0.1)
    pairs = keys.assign(part=split).drop_duplicates(["drug", "cell_line_id"])["part"].value_counts()
    assert pairs.to_dict() == {"train": 70, "val": 20, "test": 10}


def test_top_k_keeps_the_most_expressed_genes_normalised_and_log1p():
    table = pa.table({"genes": pa.array([[10, 11, 12, 13], [11, 99]], pa.list_(pa.int32())),
                      "expressions": pa.array([[1.0, 5.0, 0.0, 4.0], [2.0, 2.0]], pa.list_(pa.float32())),
                      "drug": ["d", "d"], "LN_IC50": [0.0, 1.0]})
    vocab = np.array([10, 11, 12, 13])
    genes, values = batch(features_of(table, {"d": 0}, top_k=3), vocab)
    # cell 0: genes 11 (5/10), 13 (4/10), 10 (1/10); gene 12 has zero count and is not a token
    assert genes[0].tolist() == [3, 5, 2]
    assert values[0] == pytest.approx(np.log1p(np.array([5, 4, 1]) / 10 * 1e4))
    # cell 1: gene 99 is not in the vocabulary -> UNK; only 2 genes -> padding
    assert sorted(genes[1].tolist()) == [0, 1, 3]
    assert values[1][genes[1] == 0] == pytest.approx([0.0])


def test_load_merged_names_the_missing_column(tmp_path):
    path = tmp_path / "m.parquet"
    pq.write_table(merged_table().drop_columns(["LN_IC50"]), path)
    with pytest.raises(PipelineError, match=r"m.parquet.*LN_IC50"):
        data.load_merged(path)


def test_load_merged_rejects_unparallel_lists(tmp_path):
    t = merged_table(n_drugs=1, n_lines=1, cells_per_pair=1)
    t = t.set_column(1, "expressions", pa.array([[1.0]], pa.list_(pa.float32())))
    pq.write_table(t, tmp_path / "m.parquet")
    with pytest.raises(PipelineError, match="parallel"):
        data.load_merged(tmp_path / "m.parquet")


def test_load_merged_rejects_wrong_types(tmp_path):
    t = merged_table(n_drugs=1, n_lines=1, cells_per_pair=1)
    t = t.set_column(t.schema.get_field_index("LN_IC50"), "LN_IC50", pa.array(["high"]))
    pq.write_table(t, tmp_path / "m.parquet")
    with pytest.raises(PipelineError, match="'LN_IC50' has type string"):
        data.load_merged(tmp_path / "m.parquet")


def normalised_table(values: list[list[float]]) -> pa.Table:
    return pa.table({"genes": pa.array([[10, 11, 12, 13]] * len(values), pa.list_(pa.int32())),
                     "expressions": pa.array(values, pa.list_(pa.float32())),
                     "drug": ["d"] * len(values), "LN_IC50": [0.0] * len(values)})


def test_normalised_values_are_used_as_they_are_negatives_included():
    table = normalised_table([[-1.5, 0.25, 0.0, -0.5]])
    genes, values = batch(features_of(table, {"d": 0}, top_k=4, value_kind="normalised"),
                          np.array([10, 11, 12, 13]))
    # every listed gene is a token, ordered by value; no CP10k, no log1p, no clipping at zero
    assert genes[0].tolist() == [3, 4, 5, 2]
    assert values[0].tolist() == [0.25, 0.0, -0.5, -1.5]
    rows, genes, values, _ = data.normalised_values(table, "normalised")
    assert values.tolist() == [-1.5, 0.25, 0.0, -0.5]
    counts = batch(features_of(normalised_table([[1.0, 3.0, 0.0, 0.0]]), {"d": 0}, top_k=4),
                   np.array([10, 11, 12, 13]))[0]
    assert (counts[0] > 0).sum() == 2     # as counts, zeros are no token


def test_negative_values_read_as_counts_are_refused_with_the_fix(tmp_path):
    path = tmp_path / "bulk.parquet"
    pq.write_table(merged_table(n_drugs=2, n_lines=3).set_column(
        1, "expressions", pa.array([[-0.5] + [1.0] * 36] * 30, pa.list_(pa.float32()))), path)
    with pytest.raises(PipelineError, match=r"'expressions' has negative values .*--value-kind normalised"):
        data.load_merged(path)
    assert data.load_merged(path, value_kind="normalised").num_rows == 30


def test_a_table_declares_its_value_kind_and_auto_reads_it(tmp_path, caplog):
    plain, declared = tmp_path / "plain.parquet", tmp_path / "declared.parquet"
    pq.write_table(merged_table(n_drugs=2, n_lines=3), plain)
    pq.write_table(data.with_value_kind(merged_table(n_drugs=2, n_lines=3), "normalised"), declared)
    kind = lambda setting, path: data.resolve_value_kind(setting, data.declared_value_kind(path), path)  # noqa: E731
    assert kind("auto", plain) == "counts"
    assert kind("auto", declared) == "normalised"
    assert kind("counts", declared) == "counts"
    assert "declares normalised values; --value-kind counts overrides" in caplog.text
    pq.write_table(merged_table(n_drugs=2, n_lines=3).replace_schema_metadata({"value_kind": "tpm"}),
                   tmp_path / "odd.parquet")
    with pytest.raises(PipelineError, match="value_kind='tpm'.*expected one of"):
        kind("auto", tmp_path / "odd.parquet")


def test_a_top_k_beyond_the_longest_cell_takes_every_gene_without_padding_to_top_k():
    table = normalised_table([[0.5, -1.0, 2.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    genes, _ = batch(features_of(table, {"d": 0}, top_k=100_000, value_kind="normalised"),
                     np.array([10, 11, 12, 13]))
    assert genes.shape == (2, 4) and (genes > 0).all()


@pytest.mark.parametrize("mode", ["pooled", "top_k"])
def test_top_k_0_takes_every_expressed_gene_and_pads_each_batch_to_its_longest_row(mode):
    table = normalised_table([[0.0, 0.0, 2.0, 1.0], [1.0, 3.0, 2.0, 5.0], [0.0, 0.0, 0.0, 4.0]])
    feats = features_of(table, {"d": 0}, top_k=0, tokens=mode)     # counts: a 0 is no gene
    assert feats.tokens.width is None
    assert feats.lengths().tolist() == [2, 4, 1]
    genes, values = feats.batch(np.array([0, 2]), np.array([10, 11, 12, 13]))
    assert genes.shape == (2, 2)                          # as wide as row 0, not as row 1
    assert (genes[0] > 0).all() and (genes[1] > 0).tolist() == [True, False]
    assert values[0, 0] > values[0, 1] > 0                # most expressed first


def test_tokens_depend_on_a_cells_genes_and_counts_not_on_how_they_are_listed():
    def table(genes, counts):
        return pa.table({"genes": pa.array([genes], pa.list_(pa.int32())),
                         "expressions": pa.array([counts], pa.list_(pa.float32())),
                         "drug": ["d"], "LN_IC50": [0.0]})
    vocab = np.arange(3, 20)
    a = batch(features_of(table([3, 5, 7, 9, 11], [2, 1, 1, 1, 3]), {"d": 0}, top_k=3), vocab)
    b = batch(features_of(table([11, 4, 9, 7, 5, 3], [3, 0, 1, 1, 1, 2]), {"d": 0}, top_k=3), vocab)
    assert (a[0] == b[0]).all() and (a[1] == b[1]).all()
    assert vocab[a[0] - 2].tolist() == [[11, 3, 5]]   # of three genes of count 1, the lowest ids


def test_groups_are_numbered_in_sorted_order_from_plain_or_dictionary_keys():
    names = ["b", "B", "é", "a", "Z", "line 10", "line-2", "b"]
    frame = pd.DataFrame({"drug": names, "cell_line_id": names[::-1]})
    expected = frame.groupby(["drug", "cell_line_id"], sort=True).ngroup().to_numpy()
    plain_keys = pa.Table.from_pandas(frame, preserve_index=False)
    encoded = pa.table({c: pa.chunked_array([plain_keys[c][:3].dictionary_encode(),
                                             plain_keys[c][3:].dictionary_encode()])
                        for c in ("drug", "cell_line_id")})   # a dictionary per chunk, as parquet gives
    for keys in (frame, plain_keys, encoded):
        assert data.group_ids(keys, ["drug", "cell_line_id"]).tolist() == expected.tolist()
    assert data.make_split(encoded, "pair", 4).tolist() == data.make_split(frame, "pair", 4).tolist()
    assert data.group_ids(encoded.slice(0, 0), ["drug", "cell_line_id"]).tolist() == []


def test_training_keys_are_read_dictionary_encoded_and_split_by_row(tmp_path):
    table = merged_table(n_drugs=3, n_lines=4, cells_per_pair=5)
    pq.write_table(table, tmp_path / "m.parquet", row_group_size=7)
    keys = data.read_keys(tmp_path / "m.parquet")
    assert all(pa.types.is_dictionary(keys[c].type) for c in ("drug", "cell_line_id", "canonical_smiles"))
    split = data.make_split(keys, "pair", 0)
    data.write_split(keys, split, tmp_path / "split.parquet", chunk=11)
    written = pq.read_table(tmp_path / "split.parquet").to_pandas()
    assert written["row"].tolist() == list(range(table.num_rows))
    assert written["drug"].tolist() == table["drug"].to_pylist()
    assert written["part"].tolist() == list(split)
    rows = {p: np.flatnonzero(split == p) for p in data.PARTS}
    frame = table.select(["drug", "cell_line_id"]).to_pandas()
    for p, summary in data.summarise_split(keys, rows).items():
        sub = frame.iloc[rows[p]]
        assert summary == {"cells": len(sub), "pairs": len(sub.drop_duplicates()),
                           "drugs": sub["drug"].nunique(), "cell_lines": sub["cell_line_id"].nunique()}
    smiles = data.drug_smiles(keys)
    toks = data.Tokens(np.zeros(0, np.int32), np.zeros(0, np.float32),
                       np.zeros(keys.num_rows + 1, np.int64)).with_keys(keys)
    lookup = data.drug_lookup(toks.drugs, {d: i for i, d in enumerate(smiles)})
    assert lookup[toks.drug].tolist() == [sorted(smiles).index(d) for d in table["drug"].to_pylist()]
    assert np.array_equal(toks.label, table["LN_IC50"].to_numpy().astype(np.float32))


def test_the_vocabulary_is_every_gene_id_of_the_rows_read_a_chunk_at_a_time():
    rng = np.random.default_rng(0)
    lens = rng.integers(0, 6, 40)
    offsets = np.concatenate([[0], np.cumsum(lens)])
    genes = rng.integers(-2, 60, offsets[-1]).astype(np.int32)   # negative ids too
    tokens = data.Tokens(genes, np.zeros(len(genes), np.float32), offsets)
    rows = rng.choice(40, 25, replace=False)
    want = np.unique(np.concatenate([genes[offsets[r]:offsets[r + 1]] for r in rows]))
    for budget in (1, 7, 1 << 18):
        assert np.array_equal(tokens.vocabulary(rows, budget=budget), want)


def test_a_drug_with_two_smiles_is_named():
    keys = pa.table({"drug": ["a", "b", "a"], "canonical_smiles": ["CC", "CO", "CN"]})
    with pytest.raises(PipelineError, match="drug 'a' appears with several SMILES"):
        data.drug_smiles(keys)


def test_vocabulary_lookup_matches_a_search_of_the_sorted_vocabulary():
    rng = np.random.default_rng(0)
    for vocab in (np.array([3, 7, 8, 40]), np.array([5]), np.array([2, 1 << 30])):
        genes = np.concatenate([vocab, rng.integers(-3, 60, 50), [1 << 31]])
        pos, known = data.vocab_index(vocab, genes)
        assert known.tolist() == [g in set(vocab.tolist()) for g in genes]
        assert (vocab[pos[known]] == genes[known]).all()
