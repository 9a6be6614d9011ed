"""Leak-free splits of a table's rows into train, validation and test.

Every cell of a (drug, cell line) pair carries the same IC50, so splitting cells at random puts
each test pair in training too. Splits here assign whole GROUPS (pairs, cell lines or drugs) to
train/val/test; `random` (cells) is kept only to compare with the original study.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from common import PipelineError, atomic_path
from ingest.table import codes, group_ids, plain

GROUP_COLUMNS = {"pair": ["drug", "cell_line_id"], "cell_line": ["cell_line_id"],
                 "drug": ["drug"], "random": None}
PARTS = ("train", "val", "test")


def make_split(keys: pa.Table | pd.DataFrame, mode: str, seed: int, *, val_frac: float = 0.1,
               test_frac: float = 0.1, fold: int = 0, n_folds: int = 0) -> np.ndarray:
    """train/val/test per row; whole groups go to one part, with a seeded shuffle of the groups.

    With n_folds >= 2 the shuffled groups are cut into n_folds folds: fold `fold` is the test
    set, and `val_frac` of all groups, taken from the other folds, the validation set. With
    test_frac 0 nothing is held out for the test (a model built for use, scored elsewhere).
    """
    if mode not in GROUP_COLUMNS:
        raise PipelineError(f"unknown split {mode!r}; expected one of {list(GROUP_COLUMNS)}.")
    cols = GROUP_COLUMNS[mode]
    group = np.arange(len(keys)) if cols is None else group_ids(keys, cols)
    n_groups = int(group.max()) + 1
    if n_groups < 3:
        raise PipelineError(f"split {mode!r} needs at least 3 groups, the data has {n_groups}.")
    perm = np.random.default_rng(seed).permutation(n_groups)
    if n_folds >= 2:
        if n_groups < n_folds + 1:
            raise PipelineError(f"{n_folds}-fold split {mode!r} needs more than {n_folds} groups, "
                                f"the data has {n_groups}.")
        chunks = np.array_split(perm, n_folds)
        perm = np.concatenate([chunks[fold]] + [c for i, c in enumerate(chunks) if i != fold])
        test_frac = len(chunks[fold]) / n_groups
    n_test = max(1, int(round(test_frac * n_groups))) if test_frac > 0 else 0
    n_val = max(1, int(round(val_frac * n_groups)))
    part_of_group = np.empty(n_groups, dtype=object)
    part_of_group[perm[:n_test]] = "test"
    part_of_group[perm[n_test:n_test + n_val]] = "val"
    part_of_group[perm[n_test + n_val:]] = "train"
    return part_of_group[group]   # three shared strings: a pointer per row


def write_split(keys: pa.Table, split: np.ndarray, path: Path, chunk: int = 1 << 20) -> None:
    """split.parquet: every merged row -> its part, with the keys that define the groups; written
    a slice at a time, so that no per-row strings of the whole table are held at once."""
    schema = pa.schema([("row", pa.int64()), ("drug", pa.string()), ("cell_line_id", pa.string()),
                        ("part", pa.string())])
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as out:
        for start in range(0, keys.num_rows, chunk):
            part = plain(keys.select(["drug", "cell_line_id"]).slice(start, chunk))
            n = part.num_rows
            out.write_table(pa.table({"row": np.arange(start, start + n), "drug": part["drug"],
                                      "cell_line_id": part["cell_line_id"],
                                      "part": pa.array(split[start:start + n], pa.string())}, schema=schema))


def summarise_split(keys: pa.Table, rows: dict[str, np.ndarray]) -> dict:
    """Cells, pairs, drugs and cell lines of each part."""
    drug, line = codes(keys["drug"])[0], codes(keys["cell_line_id"])[0]
    n_lines = int(line.max(initial=-1)) + 1
    out = {}
    for p in PARTS:
        d, c = drug[rows[p]].astype(np.int64), line[rows[p]]
        out[p] = {"cells": int(len(rows[p])), "pairs": int(len(np.unique(d * n_lines + c))),
                  "drugs": int(len(np.unique(d))), "cell_lines": int(len(np.unique(c)))}
    return out


def write(keys: pa.Table, run_dir: Path, mode: str, seed: int, *, val_frac: float, test_frac: float,
          fold: int = 0, n_folds: int = 0) -> dict:
    """Rank 0's part of a run's split: split.parquet, and every part's rows laid end to end in
    split_rows.npy, which every rank maps (`mapped`) instead of holding the row lists; the part
    sizes."""
    run_dir.mkdir(parents=True, exist_ok=True)
    split = make_split(keys, mode, seed, val_frac=val_frac, test_frac=test_frac, fold=fold, n_folds=n_folds)
    rows = {p: np.flatnonzero(split == p) for p in PARTS}
    write_split(keys, split, run_dir / "split.parquet")
    del split
    with atomic_path(run_dir / "split_rows.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, np.concatenate([rows[p] for p in PARTS]))
    return summarise_split(keys, rows)


def mapped(run_dir: Path, sizes: dict) -> dict[str, np.ndarray]:
    """Each part's rows, mapped from split_rows.npy."""
    rows = np.load(run_dir / "split_rows.npy", mmap_mode="r")
    ends = np.cumsum([sizes[p]["cells"] for p in PARTS])
    return {p: rows[end - sizes[p]["cells"]:end] for p, end in zip(PARTS, ends)}
