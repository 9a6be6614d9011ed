"""Gene tokens: the most expressed genes, normalised, whatever order a cell lists them in; the
vocabulary; batches padded to their longest row."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from conftest import features_of, merged_table

from ingest import tokens
from ingest.table import gene_vocabulary


def batch(features, vocab):
    """Every row's [N, K] vocabulary indices and values, as the model reads them."""
    return features.batch(np.arange(len(features)), vocab)


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
    rows, genes, values, _ = tokens.normalised_values(table, "normalised")
    assert values.tolist() == [-1.5, 0.25, 0.0, -0.5]
    counts = batch(features_of(normalised_table([[1.0, 3.0, 0.0, 0.0]]), {"d": 0}, top_k=4),
                   np.array([10, 11, 12, 13]))[0]
    assert (counts[0] > 0).sum() == 2     # as counts, zeros are no token


def test_a_top_k_beyond_the_longest_cell_takes_every_gene_without_padding_to_top_k():
    table = normalised_table([[0.5, -1.0, 2.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    genes, _ = batch(features_of(table, {"d": 0}, top_k=100_000, value_kind="normalised"),
                     np.array([10, 11, 12, 13]))
    assert genes.shape == (2, 4) and (genes > 0).all()


def test_top_k_0_takes_every_expressed_gene_and_pads_each_batch_to_its_longest_row():
    table = normalised_table([[0.0, 0.0, 2.0, 1.0], [1.0, 3.0, 2.0, 5.0], [0.0, 0.0, 0.0, 4.0]])
    feats = features_of(table, {"d": 0}, top_k=0)     # counts: a 0 is no gene
    assert feats.table.width is None
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


def test_the_vocabulary_is_every_gene_id_of_the_rows_read_a_chunk_at_a_time():
    rng = np.random.default_rng(0)
    lens = rng.integers(0, 6, 40)
    offsets = np.concatenate([[0], np.cumsum(lens)])
    genes = rng.integers(-2, 60, offsets[-1]).astype(np.int32)   # negative ids too
    table = tokens.TokenTable(genes, np.zeros(len(genes), np.float32), offsets)
    rows = rng.choice(40, 25, replace=False)
    want = np.unique(np.concatenate([genes[offsets[r]:offsets[r + 1]] for r in rows]))
    for budget in (1, 7, 1 << 18):
        assert np.array_equal(table.vocabulary(rows, budget=budget), want)


def test_vocabulary_lookup_matches_a_search_of_the_sorted_vocabulary():
    rng = np.random.default_rng(0)
    for vocab in (np.array([3, 7, 8, 40]), np.array([5]), np.array([2, 1 << 30])):
        genes = np.concatenate([vocab, rng.integers(-3, 60, 50), [1 << 31]])
        pos, known = tokens.vocab_index(vocab, genes)
        assert known.tolist() == [g in set(vocab.tolist()) for g in genes]
        assert (vocab[pos[known]] == genes[known]).all()


def test_ragged_features_pad_each_batch_to_its_longest_cell():
    t = merged_table(n_drugs=1, n_lines=3, cells_per_pair=1)
    vocab = gene_vocabulary(t["genes"])
    f = features_of(t, {"drug0": 0}, top_k=0)
    lengths = f.lengths()
    g, v = f.batch(np.arange(3), vocab)
    assert g.shape == (3, lengths.max()) and ((g != 0).sum(1) == lengths).all()
    assert (np.diff(v[0][: lengths[0]]) <= 0).all()  # most expressed first
