"""The token store: the same tokens as in memory, keyed by its settings, never half-built."""
from __future__ import annotations

import logging
import pickle

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import merged_table

import data
import tokens
import train


@pytest.fixture
def table_file(tmp_path, monkeypatch):
    """A merged table in small row groups, tokenised in chunks that straddle them."""
    monkeypatch.setattr(tokens, "CHUNK", 5)
    path = tmp_path / "m.parquet"
    pq.write_table(merged_table(n_drugs=3, n_lines=4, cells_per_pair=3, seed=2), path, row_group_size=7)
    return path


@pytest.mark.parametrize("mode", ["top_k", "all", "pooled"])
def test_the_store_holds_the_in_memory_tokens_row_for_row(table_file, tmp_path, mode):
    store = tokens.StoredTokens(tokens.build(table_file, tmp_path / "tokens", value_kind="counts",
                                             tokens=mode, top_k=8))
    table = pq.read_table(table_file)
    mem = data.cell_tokens(table, top_k=8, tokens=mode).with_keys(table)
    assert np.array_equal(store.offsets, mem.offsets) and store.width == mem.width
    assert np.array_equal(store.genes, mem.genes) and np.array_equal(store.values, mem.values)
    names = table["drug"].to_pylist()   # each row's drug and label, beside its tokens
    assert [store.drugs[c] for c in store.drug] == [mem.drugs[c] for c in mem.drug] == names
    assert store.drugs == list(dict.fromkeys(names)) and np.array_equal(store.label, mem.label)
    rows = np.array([35, 0, 17, 3])
    for a, b in zip(store.gather(rows), mem.gather(rows)):
        assert np.array_equal(a, b)
    assert np.array_equal(store.vocabulary(rows), mem.vocabulary(rows))


def test_a_store_is_reused_only_for_the_same_table_and_settings(table_file, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    root = tmp_path / "tokens"
    a = tokens.build(table_file, root, value_kind="counts", tokens="top_k", top_k=8)
    assert tokens.build(table_file, root, value_kind="counts", tokens="top_k", top_k=8) == a
    assert "token store: reusing" in caplog.text
    others = {tokens.build(table_file, root, value_kind="counts", tokens="top_k", top_k=4),
              tokens.build(table_file, root, value_kind="counts", tokens="all", top_k=8),
              tokens.build(table_file, root, value_kind="normalised", tokens="top_k", top_k=8)}
    assert a not in others and len(others) == 3
    pq.write_table(merged_table(n_drugs=2, n_lines=4, cells_per_pair=3), table_file)   # a new table
    assert tokens.build(table_file, root, value_kind="counts", tokens="top_k", top_k=8) not in others | {a}
    moved = tmp_path / "elsewhere" / "tokens"   # a store beside the table, left by a preparation run
    found = tokens.build(table_file, moved, value_kind="counts", tokens="top_k", top_k=8, also=(root,))
    assert found.parent == root and not moved.exists()


def test_an_interrupted_build_is_not_taken_for_a_complete_one(table_file, tmp_path, monkeypatch):
    root = tmp_path / "tokens"
    real = tokens.token_chunks

    def killed(*args, **kw):
        it = real(*args, **kw)
        yield next(it)
        raise KeyboardInterrupt   # stopped after one chunk

    monkeypatch.setattr(tokens, "token_chunks", killed)
    with pytest.raises(KeyboardInterrupt):
        tokens.build(table_file, root, value_kind="counts", tokens="top_k", top_k=8)
    assert not any(root.iterdir())                   # nothing that looks like a store
    key = tokens.key(table_file, "counts", "top_k", 8)
    stale = root / f".{key}.building-12345"          # what a killed process leaves behind
    stale.mkdir()
    (stale / "genes.bin").write_bytes(b"\0" * 12)
    monkeypatch.setattr(tokens, "token_chunks", real)
    path = tokens.build(table_file, root, value_kind="counts", tokens="top_k", top_k=8)
    assert path == root / key and sorted(p.name for p in root.iterdir()) == [key]
    assert len(tokens.StoredTokens(path)) == 36


def test_dataloader_workers_get_the_store_path_not_its_arrays(table_file, tmp_path):
    store = tokens.StoredTokens(tokens.build(table_file, tmp_path / "t", value_kind="counts",
                                             tokens="all", top_k=8))
    blob = pickle.dumps(store)
    assert len(blob) < 500 < store.genes.nbytes
    again = pickle.loads(blob)
    assert isinstance(again.genes, np.memmap) and np.array_equal(again.genes, store.genes)


def test_compile_falls_back_to_eager_with_one_warning(monkeypatch, caplog):
    net = torch.nn.Linear(3, 1)

    def broken(module):
        def call(*args):
            raise RuntimeError("no compiler for this platform")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    forward = train.compiled(net)
    x = torch.ones(2, 3)
    assert torch.equal(forward(x), net(x)) and torch.equal(forward(x), net(x))
    assert caplog.text.count("torch.compile failed (RuntimeError: no compiler for this platform)") == 1
