"""Leak-free splits of a table's rows into train, validation and test.

Every cell of a (drug, cell line) pair carries the same IC50, so splitting cells at random puts
each test pair in training too. Splits here assign whole GROUPS (pairs, cell lines or drugs) to
train/val/test; `random` (cells) is kept only to compare with the original study.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from common import PipelineError, atomic_path
from ingest.bulk import match_names
from ingest.drugs import smiles_for_drugs
from ingest.table import codes, group_ids, plain

log = logging.getLogger("ic50.split")

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
          fold: int = 0, n_folds: int = 0, given: SplitFile | None = None) -> dict:
    """Rank 0's part of a run's split: split.parquet, and every part's rows laid end to end in
    split_rows.npy, which every rank maps (`mapped`) instead of holding the row lists; the part
    sizes."""
    run_dir.mkdir(parents=True, exist_ok=True)
    split = (given.parts(keys, fold, seed, val_frac) if given is not None else
             make_split(keys, mode, seed, val_frac=val_frac, test_frac=test_frac, fold=fold, n_folds=n_folds))
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


# ----------------------------------------------------------------------------- given folds

@dataclass
class SplitFile:
    """Folds or parts a user gives (--split-file): each group's fold, or its part."""
    path: Path
    mode: str                     # cell_line, drug or pair: what the file's columns name
    assigned: np.ndarray          # per row of the data: its fold (int) or part (str); None: not named
    folds: list[int]              # the file's folds in order; [] for a file of parts

    def parts(self, keys: pa.Table, fold: int | None, seed: int, val_frac: float) -> np.ndarray:
        """train/val/test per row for one of the file's folds (or its one split); rows of groups
        the file does not name get '' (no part). Validation: the file's own part, or drawn from
        the training groups exactly as make_split draws it from the other folds."""
        named = pd.notna(self.assigned)
        if self.folds:
            part = np.where(named, "train", "").astype(object)
            part[self.assigned == fold] = "test"
        else:
            part = np.where(named, self.assigned, "").astype(object)
        if not (part == "val").any():
            group = group_ids(keys, GROUP_COLUMNS[self.mode])
            n_groups = int(group.max()) + 1
            train = np.zeros(n_groups, bool)
            train[group[part == "train"]] = True
            n_named = len(np.unique(group[part != ""]))
            n_val = max(1, int(round(val_frac * n_named)))
            perm = np.random.default_rng(seed).permutation(n_groups)
            val = np.zeros(n_groups, bool)
            val[perm[train[perm]][:n_val]] = True
            part[val[group]] = "val"
            log.info("validation: %d of the training groups, drawn with seed %d (the split file has no "
                     "val part)", n_val, seed)
        return part


def read_split_file(path: str | Path, keys: pa.Table) -> SplitFile:
    """The file's folds or parts, per row of the data. Lines are matched as --expression matches
    them, drugs by name then ignoring case, salt and punctuation; a name the data do not hold stops
    the run, and the data's groups the file does not name are left out of every part (logged)."""
    path = Path(path)
    by, column, assignment = check_split_file(path)
    cols = [NAMES[c] for c in by]
    rows = plain(keys.select(cols)).to_pandas()
    matched = {c: _match(c, [g[i] for g in assignment], sorted(set(rows[NAMES[c]])), path)
               for i, c in enumerate(by)}
    given = pd.DataFrame([(*(matched[c][n] for c, n in zip(by, g)), v) for g, v in assignment.items()],
                         columns=[*cols, "given"])
    rows = rows.merge(given, how="left", on=cols)   # a left merge keeps the rows' order
    assigned = rows["given"].astype(object).where(rows["given"].notna(), None).to_numpy()
    left = sorted(set(rows.loc[rows["given"].isna(), cols].itertuples(index=False, name=None)))
    if left:
        unit = {1: by[0].replace("_", " ") + "s", 2: "pairs"}[len(by)]
        log.warning("split file '%s': %d %s of the data are not in it; their rows are left out of every "
                    "part (e.g. %s)", path, len(left), unit, ", ".join("/".join(g) for g in left[:5]))
    mode = "pair" if len(by) == 2 else by[0]
    return SplitFile(path, mode, assigned, sorted(set(assignment.values())) if column == "fold" else [])


def check_split_file(path: Path) -> tuple[list[str], str, dict[tuple, object]]:
    """The file alone (before any data is read): `cell_line` (unseen lines), `drug` (unseen drugs)
    or both (unseen pairs), and `fold` (each fold in turn is the test) or `part` (train, val,
    test); a group in two folds or parts, a gap in the folds or a part missing is refused by name.
    Its columns, the column that assigns, and each group's (file names) fold or part."""
    frame = _read_frame(path)
    by = [c for c in ("cell_line", "drug") if c in frame.columns]
    how = [c for c in ("fold", "part") if c in frame.columns]
    if not by or len(how) != 1:
        raise PipelineError(f"split file '{path}' has columns {list(frame.columns)}; expected 'cell_line' "
                            f"(unseen lines), 'drug' (unseen drugs) or both (unseen pairs), and one of "
                            f"'fold' (an integer: each fold in turn is the test) or 'part' (train, val "
                            f"or test).")
    column = how[0]
    frame = frame.dropna(subset=[*by, column]).astype(str)
    values = _fold_values(frame[column], path) if column == "fold" else _part_values(frame[column], path)
    assignment: dict[tuple, object] = {}
    for g, v in zip(zip(*(frame[c].str.strip() for c in by)), values):
        if assignment.setdefault(g, v) != v:
            what = " and ".join(f"{c} {n!r}" for c, n in zip(by, g))
            raise PipelineError(f"split file '{path}': {what} is in {column} {assignment[g]} and in "
                                f"{column} {v}" + ("; a test part may not overlap training."
                                                  if column == "part" else "; each is in one fold."))
    _check_parts(path, column, sorted(set(values)))
    return by, column, assignment


NAMES = {"cell_line": "cell_line_id", "drug": "drug"}   # the file's columns -> the data's


def _read_frame(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise PipelineError(f"split file not found: '{path}'.")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (OSError, ValueError, pa.ArrowInvalid) as e:
        raise PipelineError(f"split file '{path}' is not a readable CSV or parquet file: {e}") from e


def _fold_values(column: pd.Series, path: Path) -> list[int]:
    bad = [v for v in column if not re.fullmatch(r"-?\d+(\.0+)?", v.strip())]
    if bad:
        raise PipelineError(f"split file '{path}': fold must be an integer; found {sorted(set(bad))[:5]}.")
    return [int(float(v)) for v in column]


def _part_values(column: pd.Series, path: Path) -> list[str]:
    values = [v.strip().lower() for v in column]
    bad = sorted(set(values) - set(PARTS))
    if bad:
        raise PipelineError(f"split file '{path}': part must be one of {list(PARTS)}; found {bad[:5]}.")
    return values


def _match(column: str, names: list[str], data: list[str], path: Path) -> dict[str, str]:
    """The file's names -> the data's: lines as --expression matches them, drugs by name then
    ignoring case, salt and punctuation; an unknown or ambiguous name stops the run."""
    unique = sorted(set(names))
    if column == "cell_line":
        found = {n: t for n, (t, _) in match_names(unique, data).items() if t is not None}
    else:   # the same rule that finds a drug's SMILES by name, here the data's own name
        found = smiles_for_drugs(unique, {d: d for d in data})[0]
    missing = [n for n in unique if n not in found]
    if missing:
        what = "lines" if column == "cell_line" else "drugs"
        raise PipelineError(f"split file '{path}': {len(missing)} {what} are not in the data (or match "
                            f"several of its names): {', '.join(missing[:10])}"
                            f"{' ...' if len(missing) > 10 else ''}.")
    return found


def _check_parts(path: Path, column: str, values: list) -> None:
    if column == "fold":
        gaps = sorted(set(range(values[0], values[-1] + 1)) - set(values)) if values else []
        if gaps:
            raise PipelineError(f"split file '{path}': its folds run {values[0]}..{values[-1]}, but fold "
                                f"{gaps[0]} is empty (no group is in it).")
        if len(values) < 2:
            raise PipelineError(f"split file '{path}': {len(values)} fold; cross-validation needs at least "
                                f"2 (a 'part' column gives a single split).")
        return
    for need in ("train", "test"):
        if need not in values:
            raise PipelineError(f"split file '{path}': no group is in part {need!r}.")


def given_folds(cfg, keys: pa.Table) -> SplitFile:
    """--split-file read against the data; a --split other than its columns say is refused."""
    given = read_split_file(cfg.split_file, keys)
    if cfg.split not in (given.mode, "pair"):   # "pair": the default, not a choice
        raise PipelineError(f"--split {cfg.split} but split file '{given.path}' names "
                            f"{given.mode.replace('_', ' ')}s: leave out --split, the file decides it.")
    log.info("split file '%s': %s split, %s", given.path, given.mode,
             f"{len(given.folds)} folds ({given.folds[0]}..{given.folds[-1]})" if given.folds
             else "one split by its 'part' column")
    return given
