"""The token store: the same tokens as in memory, reused only for the same table and settings, never
taken for complete when a build was cut short, and handed to DataLoader workers as a path."""
import logging
import pickle

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import merged_table

from ingest import store, tokens


@pytest.fixture
def table_file(tmp_path, monkeypatch):
    """A merged table in small row groups, tokenised in chunks that straddle them."""
    monkeypatch.setattr(store, "CHUNK", 5)
    path = tmp_path / "m.parquet"
    pq.write_table(merged_table(n_drugs=3, n_lines=4, cells_per_pair=3, seed=2), path, row_group_size=7)
    return path



@pytest.mark.parametrize("top_k", [8, 0])
def test_the_store_holds_the_in_memory_tokens_row_for_row(table_file, tmp_path, top_k):
    mapped = store.TokenStore(store.build(table_file, tmp_path / "tokens", value_kind="counts", top_k=top_k))
    table = pq.read_table(table_file)
    mem = tokens.cell_tokens(table, top_k=top_k).with_keys(table)
    assert np.array_equal(mapped.offsets, mem.offsets) and mapped.width == mem.width
    assert np.array_equal(mapped.genes, mem.genes) and np.array_equal(mapped.values, mem.values)
    names = table["drug"].to_pylist()   # each row's drug and label, beside its tokens
    assert [mapped.drugs[c] for c in mapped.drug] == [mem.drugs[c] for c in mem.drug] == names
    assert mapped.drugs == list(dict.fromkeys(names)) and np.array_equal(mapped.label, mem.label)
    rows = np.array([35, 0, 17, 3])
    for a, b in zip(mapped.gather(rows), mem.gather(rows)):
        assert np.array_equal(a, b)
    assert np.array_equal(mapped.vocabulary(rows), mem.vocabulary(rows))


def test_a_store_is_reused_only_for_the_same_table_and_settings(table_file, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    root = tmp_path / "tokens"
    a = store.build(table_file, root, value_kind="counts", top_k=8)
    assert store.build(table_file, root, value_kind="counts", top_k=8) == a
    assert "token store: reusing" in caplog.text
    others = {store.build(table_file, root, value_kind="counts", top_k=4),
              store.build(table_file, root, value_kind="counts", top_k=0),
              store.build(table_file, root, value_kind="normalised", top_k=8)}
    assert a not in others and len(others) == 3
    pq.write_table(merged_table(n_drugs=2, n_lines=4, cells_per_pair=3), table_file)   # a new table
    assert store.build(table_file, root, value_kind="counts", top_k=8) not in others | {a}
    moved = tmp_path / "elsewhere" / "tokens"   # a store beside the table, left by a preparation run
    found = store.build(table_file, moved, value_kind="counts", top_k=8, also=(root,))
    assert found.parent == root and not moved.exists()


def test_an_interrupted_build_is_not_taken_for_a_complete_one(table_file, tmp_path, monkeypatch):
    root = tmp_path / "tokens"
    real = store.token_chunks

    def killed(*args, **kw):
        it = real(*args, **kw)
        yield next(it)
        raise KeyboardInterrupt   # stopped after one chunk

    monkeypatch.setattr(store, "token_chunks", killed)
    with pytest.raises(KeyboardInterrupt):
        store.build(table_file, root, value_kind="counts", top_k=8)
    key = store.key(table_file, "counts", 8)
    assert [p.name for p in root.iterdir()] == [f".{key}.lock"]   # nothing that looks like a store
    stale = root / f".{key}.building-12345"          # what a killed process leaves behind
    stale.mkdir()
    (stale / "genes.bin").write_bytes(b"\0" * 12)
    monkeypatch.setattr(store, "token_chunks", real)
    path = store.build(table_file, root, value_kind="counts", top_k=8)
    assert path == root / key and sorted(p.name for p in root.iterdir()) == [f".{key}.lock", key]
    assert len(store.TokenStore(path)) == 36


def test_dataloader_workers_get_the_store_path_not_its_arrays(table_file, tmp_path):
    mapped = store.TokenStore(store.build(table_file, tmp_path / "t", value_kind="counts", top_k=0))
    blob = pickle.dumps(mapped)
    assert len(blob) < 500 < mapped.genes.nbytes
    again = pickle.loads(blob)
    assert isinstance(again.genes, np.memmap) and np.array_equal(again.genes, mapped.genes)
