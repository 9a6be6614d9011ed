"""Take a labelled, reproducible subset of Tahoe-100M cells.

Which (drug, cell line) pairs to keep is decided before any expression is read. For each row group
the cheap columns (drug, cell line, sample, barcode) are tested first; `genes`/`expressions` are
decoded only for rows that survive. Sampling in one sentence: each cell gets a uniform random key
from a keyed hash of its barcode and the seed, a cell is kept with probability `fraction`
(key < fraction), and each (drug, cell line, dose) group keeps the `cells_per_group` cells with
the smallest keys. The result therefore depends on the seed and the inputs only, never on the
order in which shards are read.

Run alone (wanted pairs from a CSV with columns drug, cell_line_id):
    python downsample.py --tahoe DIR_OR_HUB_ID --pairs pairs.csv --out cells.parquet
"""
from __future__ import annotations

import argparse
import ast
import glob
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from common import PipelineError, setup_logging, write_parquet

log = logging.getLogger("ic50.downsample")

CONTROL = "DMSO_TF"
HUB_ID = "tahoebio/Tahoe-100M"
CHEAP = ["drug", "cell_line_id", "sample", "BARCODE_SUB_LIB_ID"]
CARRIED = ["canonical_smiles", "plate"]
METADATA = ("gene", "drug", "cell_line", "sample")
OUT_SCHEMA = pa.schema([
    ("genes", pa.list_(pa.int32())), ("expressions", pa.list_(pa.float32())),
    ("drug", pa.string()), ("cell_line_id", pa.string()), ("sample", pa.string()),
    ("BARCODE_SUB_LIB_ID", pa.string()), ("canonical_smiles", pa.string()),
    ("plate", pa.string()), ("dose_uM", pa.float32())])


class TahoeSource:
    """Tahoe-100M from a local copy of the hub repo (or a glob of shards), or streamed from the hub."""

    def __init__(self, spec: str):
        self.spec = spec
        path = Path(spec)
        if path.is_dir():
            self.root: Path | None = path
            self.shards = sorted(path.glob("data/train-*.parquet")) or sorted(path.glob("*.parquet"))
            if not self.shards:
                raise PipelineError(f"Tahoe directory '{path}' holds no data/train-*.parquet shards.")
        elif any(ch in spec for ch in "*?["):
            self.shards = [Path(p) for p in sorted(glob.glob(spec))]
            self.root = self.shards[0].parent.parent if self.shards else None
            if not self.shards:
                raise PipelineError(f"no Tahoe shard matches the glob '{spec}'.")
        elif spec.count("/") == 1 and not path.exists() and not spec.startswith((".", "/")):
            self.root, self.shards = None, []  # a hub dataset id: streamed with `datasets`
        else:
            raise PipelineError(f"Tahoe source '{spec}' is neither an existing directory, a glob of "
                                f"parquet shards, nor a hub dataset id such as '{HUB_ID}'.")
        # arguments of datasets.load_dataset when cells are streamed rather than read from files
        self.stream: dict | None = (dict(path=spec, name="expression_data")
                                    if self.is_hub else None)

    @property
    def is_hub(self) -> bool:
        return self.root is None and not self.shards

    def metadata(self, name: str) -> pd.DataFrame:
        """One of the metadata tables: gene, drug, cell_line or sample."""
        assert name in METADATA, name
        if self.is_hub:
            from datasets import load_dataset
            try:
                ds = load_dataset(self.spec, name=f"{name}_metadata", split="train")
            except Exception as e:
                raise PipelineError(f"could not load {name}_metadata of '{self.spec}' from the "
                                    f"Hugging Face hub: {e}") from None
            return ds.to_pandas()
        path = (self.root or Path(".")) / "metadata" / f"{name}_metadata.parquet"
        if not path.exists():
            raise PipelineError(f"Tahoe metadata file not found: '{path}' (expected the hub "
                                f"repo's layout: metadata/{name}_metadata.parquet).")
        return pd.read_parquet(path)

    def row_groups(self) -> Iterator[tuple[str, "RowGroup"]]:
        if self.stream is not None:
            yield from stream_row_groups(self.stream, self.spec)
            return
        for shard in self.shards:
            try:
                pf = pq.ParquetFile(shard)
            except Exception as e:
                raise PipelineError(f"Tahoe shard '{shard}' is not readable parquet: {e}") from None
            for i in range(pf.num_row_groups):
                yield shard.name, FileRowGroup(pf, i, shard)


class RowGroup:
    def cheap(self) -> pa.Table: ...
    def take(self, idx: np.ndarray, columns: list[str]) -> pa.Table: ...


@dataclass
class FileRowGroup(RowGroup):
    pf: pq.ParquetFile
    index: int
    path: Path

    def cheap(self) -> pa.Table:
        return self._read(CHEAP)

    def take(self, idx: np.ndarray, columns: list[str]) -> pa.Table:
        return self._read(columns).take(pa.array(idx))

    def _read(self, columns: list[str]) -> pa.Table:
        try:
            return self.pf.read_row_group(self.index, columns=columns)
        except Exception as e:
            raise PipelineError(f"Tahoe shard '{self.path}', row group {self.index}: cannot read "
                                f"columns {columns}: {e}") from None


@dataclass
class TableRowGroup(RowGroup):
    table: pa.Table

    def cheap(self) -> pa.Table:
        return self.table.select(CHEAP)

    def take(self, idx: np.ndarray, columns: list[str]) -> pa.Table:
        return self.table.select(columns).take(pa.array(idx))


def stream_row_groups(load_kwargs: dict, label: str, batch_size: int = 1000
                      ) -> Iterator[tuple[str, RowGroup]]:
    """Stream with `datasets` (the hub's official route); also used on local parquet in tests."""
    from datasets import load_dataset
    try:
        ds = load_dataset(**load_kwargs, split="train", streaming=True)
        for i, batch in enumerate(ds.with_format("arrow").iter(batch_size=batch_size)):
            yield f"{label}#batch{i}", TableRowGroup(batch)
    except PipelineError:
        raise
    except Exception as e:
        raise PipelineError(f"streaming Tahoe from '{label}' failed: {e}") from None


def parse_doses(sample_metadata: pd.DataFrame) -> dict[str, float]:
    """sample -> dose in uM, from strings such as "[('Erlotinib', 0.5, 'uM')]" (literal_eval, never eval)."""
    scale = {"uM": 1.0, "nM": 1e-3, "mM": 1e3}
    doses: dict[str, float] = {}
    for sample, text in zip(sample_metadata["sample"], sample_metadata["drugname_drugconc"]):
        try:
            entries = ast.literal_eval(text) if isinstance(text, str) else text
            _, conc, unit = entries[0]
            doses[sample] = float(conc) * scale[unit]
        except (ValueError, SyntaxError, TypeError, KeyError, IndexError):
            log.warning("sample %s: cannot read a dose from drugname_drugconc=%r", sample, text)
    return doses


def cell_keys(barcodes: pa.Array, samples: pa.Array, seed: int) -> np.ndarray:
    """Uniform keys in [0, 1) from a keyed hash of (barcode, sample): the same cell, the same key."""
    ids = pd.Series(pc.binary_join_element_wise(samples, barcodes, "|").to_numpy(zero_copy_only=False))
    h = pd.util.hash_pandas_object(ids, index=False, hash_key=f"{seed:016d}"[-16:]).to_numpy()
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


class GroupSampler:
    """Keeps, per group, the `cap` cells with the smallest keys among all cells offered so far."""

    def __init__(self, cap: int):
        self.cap = cap
        self.parts: list[pd.DataFrame] = []
        self.pending = 0

    def offer(self, frame: pd.DataFrame) -> None:
        self.parts.append(frame)
        self.pending += len(frame)
        if self.pending > 50_000:
            self._prune()

    def _prune(self) -> None:
        if not self.parts:
            return
        df = pd.concat(self.parts, ignore_index=True)
        df = df.sort_values("_key", kind="stable")
        df = df[df.groupby(["drug", "cell_line_id", "dose_uM"], dropna=False).cumcount() < self.cap]
        self.parts, self.pending = [df], 0

    def result(self) -> pd.DataFrame:
        self._prune()
        return self.parts[0] if self.parts else pd.DataFrame()


def downsample(source: TahoeSource, pairs: Iterable[tuple[str, str]], cells_per_group: int,
               fraction: float = 1.0, seed: int = 0) -> tuple[pa.Table, dict]:
    """Cells of the wanted (Tahoe drug, cell_line_id) pairs, sampled per (drug, line, dose)."""
    wanted = pd.DataFrame(sorted(set(pairs)), columns=["drug", "cell_line_id"])
    wanted = wanted[wanted["drug"] != CONTROL]
    if wanted.empty:
        raise PipelineError("downsample: no labelled (drug, cell line) pair to keep.")
    doses = parse_doses(source.metadata("sample"))
    wanted_keys = pa.array((wanted["drug"] + "\x1f" + wanted["cell_line_id"]).tolist())
    sampler = GroupSampler(cells_per_group)
    # the CLS-marker drop and the dose join run on the kept cells only
    stats = {"cells_scanned": 0, "cells_labelled": 0, "row_groups": 0}
    t0 = time.perf_counter()
    bar = tqdm(source.row_groups(), desc="downsample", unit=" row groups", leave=False)
    for _, rg in bar:
        cheap = rg.cheap()
        stats["cells_scanned"] += cheap.num_rows
        stats["row_groups"] += 1
        key = pc.binary_join_element_wise(cheap["drug"], cheap["cell_line_id"], "\x1f")
        mask = pc.fill_null(pc.is_in(key, value_set=wanted_keys), False)
        idx = np.flatnonzero(mask.to_numpy(zero_copy_only=False))
        if idx.size == 0:
            continue
        stats["cells_labelled"] += idx.size
        sub = cheap.take(pa.array(idx))
        k = cell_keys(sub["BARCODE_SUB_LIB_ID"], sub["sample"], seed)
        keep = k < fraction
        if not keep.any():
            continue
        frame = sub.filter(pa.array(keep)).to_pandas()
        frame["_key"] = k[keep]
        frame["_rg"] = [rg] * len(frame)
        frame["_row"] = idx[keep]
        frame["dose_uM"] = frame["sample"].map(doses).astype("float32")
        sampler.offer(frame)
        bar.set_postfix(kept=sum(len(p) for p in sampler.parts))
    chosen = sampler.result()
    if chosen.empty:
        raise PipelineError("downsample: no Tahoe cell belongs to a labelled (drug, cell line) pair; "
                            "check that the GDSC names match the Tahoe metadata.")
    table = _materialise(chosen)
    elapsed = time.perf_counter() - t0
    stats.update(cells_kept=table.num_rows, seconds=round(elapsed, 2),
                 cells_per_second=round(stats["cells_scanned"] / max(elapsed, 1e-9)),
                 groups=int(chosen.groupby(["drug", "cell_line_id", "dose_uM"], dropna=False).ngroups))
    log.info("downsample: scanned %d cells in %.1fs (%.0f cells/s), %d labelled, kept %d in %d "
             "(drug, cell line, dose) groups", stats["cells_scanned"], elapsed,
             stats["cells_per_second"], stats["cells_labelled"], table.num_rows, stats["groups"])
    return table, stats


def _materialise(chosen: pd.DataFrame) -> pa.Table:
    """Decode genes/expressions for the chosen rows only, one row group at a time."""
    parts = []
    chosen = chosen.assign(_rgid=chosen["_rg"].map(id))
    for _, grp in chosen.groupby("_rgid", sort=False):
        grp = grp.sort_values("_row")
        rg: RowGroup = grp["_rg"].iloc[0]
        heavy = rg.take(grp["_row"].to_numpy(), ["genes", "expressions"] + CARRIED)
        genes, exprs = drop_cls(heavy["genes"], heavy["expressions"])
        parts.append(pa.table({
            "genes": genes, "expressions": exprs,
            "drug": pa.array(grp["drug"].tolist(), pa.string()),
            "cell_line_id": pa.array(grp["cell_line_id"].tolist(), pa.string()),
            "sample": pa.array(grp["sample"].tolist(), pa.string()),
            "BARCODE_SUB_LIB_ID": pa.array(grp["BARCODE_SUB_LIB_ID"].tolist(), pa.string()),
            "canonical_smiles": heavy["canonical_smiles"].cast(pa.string()),
            "plate": heavy["plate"].cast(pa.string()),
            "dose_uM": pa.array(grp["dose_uM"].to_numpy(), pa.float32()),
            "_key": pa.array(grp["_key"].to_numpy()),
        }))
    table = pa.concat_tables(parts)
    # a canonical order (by group, then key) so the output is identical however it was read
    order = pc.sort_indices(table, sort_keys=[("drug", "ascending"), ("cell_line_id", "ascending"),
                                              ("dose_uM", "ascending"), ("_key", "ascending")])
    return table.take(order).drop_columns(["_key"]).cast(OUT_SCHEMA)


def drop_cls(genes: pa.ChunkedArray, exprs: pa.ChunkedArray) -> tuple[pa.Array, pa.Array]:
    """Remove the leading CLS-like marker (first entry with expression < 0) without a Python loop."""
    g = genes.combine_chunks()
    e = exprs.combine_chunks()
    offsets = g.offsets.to_numpy()
    gv = g.values.to_numpy()
    ev = e.values.to_numpy()
    starts, ends = offsets[:-1], offsets[1:]
    nonempty = ends > starts
    first_neg = np.zeros(len(starts), dtype=bool)
    first_neg[nonempty] = ev[starts[nonempty]] < 0
    keep = np.ones(len(gv), dtype=bool)
    keep[starts[first_neg]] = False
    lengths = (ends - starts) - first_neg
    new_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return (pa.ListArray.from_arrays(pa.array(new_offsets), pa.array(gv[keep].astype(np.int32))),
            pa.ListArray.from_arrays(pa.array(new_offsets), pa.array(ev[keep].astype(np.float32))))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tahoe", default=HUB_ID, help="hub dataset id, local directory or shard glob")
    p.add_argument("--pairs", required=True,
                   help="CSV with columns drug, cell_line_id: the (drug, cell line) pairs to keep")
    p.add_argument("--cells-per-group", type=int, default=200,
                   help="at most this many cells per (drug, cell line, dose)")
    p.add_argument("--fraction", type=float, default=1.0, help="keep each cell with this probability")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="cells.parquet")
    args = p.parse_args()
    setup_logging()
    pairs = pd.read_csv(args.pairs)
    missing = {"drug", "cell_line_id"} - set(pairs.columns)
    if missing:
        raise SystemExit(f"{args.pairs}: missing column(s) {sorted(missing)}")
    table, _ = downsample(TahoeSource(args.tahoe), zip(pairs["drug"], pairs["cell_line_id"]),
                          args.cells_per_group, args.fraction, args.seed)
    write_parquet(table, args.out)
    log.info("wrote %d cells to %s", table.num_rows, args.out)


if __name__ == "__main__":
    main()
