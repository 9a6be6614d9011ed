"""Downsampling throughput and memory at atlas scale, against the original row-by-row loop.

Writes K synthetic shards in the exact Tahoe-100M schema (~28,000 cells each with ~2,000 non-zero
genes, 50 cell lines, 380 drugs, 3 doses; plates in shard order, wells and lines interleaved within
a shard) and runs, each in its own process so peak RSS is its own:
  - the downsample stage with 1 worker and with 2 workers;
  - the original approach: a row-by-row Python loop (rows streamed with `datasets`) writing every
    cell to a gzipped TSV of comma-joined strings;
  - a stricter reference: a row-by-row loop that tests the (drug, cell line) pair first.
The wanted pairs are 20 drugs x 28 cell lines, as in the original study (~3% of cells).

    python benchmarks/bench_downsample.py --shards 4 [--workdir DIR] [--keep]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import downsample  # noqa: E402

N_LINES, N_DRUGS, DOSES = 50, 380, (0.05, 0.5, 5.0)
SCHEMA = pa.schema([
    ("genes", pa.list_(pa.int64())), ("expressions", pa.list_(pa.float32())),
    ("drug", pa.string()), ("sample", pa.string()), ("BARCODE_SUB_LIB_ID", pa.string()),
    ("cell_line_id", pa.string()), ("moa-fine", pa.string()), ("canonical_smiles", pa.string()),
    ("pubchem_cid", pa.string()), ("plate", pa.string())])
DRUGS = [f"drug_{i:03d}" for i in range(N_DRUGS - 1)] + ["DMSO_TF"]
LINES = [f"CVCL_{i:04d}" for i in range(N_LINES)]
WANTED = [(d, c) for d in DRUGS[:20] for c in LINES[:28]]


def write_shard(path: Path, index: int, n_shards: int, n_cells: int, n_genes: int, seed: int) -> None:
    rng = np.random.default_rng(seed + index)
    plate = index * len(DOSES) // n_shards               # shards are sorted by plate
    drug = rng.integers(0, N_DRUGS, n_cells)             # wells and lines interleaved
    line = rng.integers(0, N_LINES, n_cells)
    lengths = np.clip(rng.normal(n_genes, n_genes * 0.3, n_cells).astype(int), 200, 8000)
    total = int(lengths.sum())
    # sorted, distinct token ids per cell: a running sum of random gaps, restarted at each cell
    gaps = rng.geometric(min(1.0, lengths.mean() / 62_700), total).astype(np.int64)
    first = np.cumsum(lengths) - lengths
    csum = np.cumsum(gaps)
    genes = np.minimum(2 + csum - np.repeat(csum[first] - gaps[first], lengths), 62_712)
    counts = rng.geometric(0.6, total).astype(np.float32)
    # the CLS-like marker (gene 1, value -2) opens every profile
    offsets = np.concatenate([[0], np.cumsum(lengths + 1)])
    flat_g = np.ones(total + n_cells, dtype=np.int64)
    flat_e = np.full(total + n_cells, -2.0, dtype=np.float32)
    body = np.ones(total + n_cells, dtype=bool)
    body[offsets[:-1]] = False
    flat_g[body], flat_e[body] = genes, counts
    off = pa.array(offsets.astype(np.int32))
    sample = [f"smp_{plate}_{d}" for d in drug]
    table = pa.table([
        pa.ListArray.from_arrays(off, pa.array(flat_g)), pa.ListArray.from_arrays(off, pa.array(flat_e)),
        pa.array([DRUGS[d] for d in drug]), pa.array(sample),
        pa.array([f"{index:05d}_{i:06d}-lib_{plate}" for i in range(n_cells)]),
        pa.array([LINES[c] for c in line]), pa.array(["x"] * n_cells),
        pa.array([f"C{'C' * (d % 30)}O" for d in drug]), pa.array([f"{d}.0" for d in drug]),
        pa.array([f"plate{plate + 1}"] * n_cells)], schema=SCHEMA)
    pq.write_table(table, path, row_group_size=1000)


def write_dataset(root: Path, k: int, n_cells: int, n_genes: int) -> None:
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    for i in range(k):
        write_shard(root / "data" / f"train-{i:05d}-of-{k:05d}.parquet", i, k, n_cells, n_genes, 7)
    pd.DataFrame([{"sample": f"smp_{p}_{d}", "plate": f"plate{p + 1}", "drug": DRUGS[d],
                   "drugname_drugconc": f"[('{DRUGS[d]}', {0.0 if DRUGS[d] == 'DMSO_TF' else dose}, 'uM')]"}
                  for p, dose in enumerate(DOSES) for d in range(N_DRUGS)]
                 ).to_parquet(root / "metadata" / "sample_metadata.parquet")


# ----------------------------------------------------------------------------- the measured runs

def run_stage(root: Path, workers: int, out: Path) -> dict:
    s = downsample.downsample(downsample.TahoeSource(str(root)), WANTED, 200, 1.0, 0, out / "cells.parquet",
                              num_workers=workers)
    return {"cells": s["cells_scanned"], "kept": s["cells_kept"], "seconds_scan": s["scan_seconds"]}


def run_original(root: Path, limit: int, out: Path) -> dict:
    """The original approach: stream the first `limit` rows with `datasets`, write every cell to a
    gzipped TSV of comma-joined strings (labels were matched afterwards). Its cost per cell is
    constant, so its rate over the first rows is its rate over all of them."""
    import gzip

    from datasets import load_dataset
    files = [str(p) for p in sorted((root / "data").glob("*.parquet"))]
    ds = load_dataset("parquet", data_files=files, split="train", streaming=True)
    cells = 0
    with gzip.open(out / "tahoe.tsv.gz", "wt") as f:
        for row in ds:
            if cells == limit:
                break
            cells += 1
            f.write("\t".join([",".join(map(str, row["genes"])), ",".join(map(str, row["expressions"])),
                               row["drug"], row["cell_line_id"], row["sample"]]) + "\n")
    return {"cells": cells, "kept": cells}


def run_rowloop(root: Path, workers: int, out: Path) -> dict:
    """A stricter reference: a row loop that tests the pair before keeping a cell."""
    wanted = set(WANTED)
    kept, cells = [], 0
    for shard in sorted((root / "data").glob("*.parquet")):
        for batch in pq.ParquetFile(shard).iter_batches(batch_size=1000):
            for row in batch.to_pylist():
                cells += 1
                if row["drug"] != "DMSO_TF" and (row["drug"], row["cell_line_id"]) in wanted:
                    g, e = row["genes"], row["expressions"]
                    if e and e[0] < 0:
                        g, e = g[1:], e[1:]
                    kept.append((row["drug"], row["cell_line_id"], g, e))
    return {"cells": cells, "kept": len(kept)}


def peak_rss_mb() -> float:
    """This process's own high-water mark (VmHWM; ru_maxrss would inherit the parent's across
    exec) or that of its largest worker, whichever is higher."""
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
    return max(hwm, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024


def measured(kind: str, root: Path, arg: int) -> dict:
    """Run one measurement in a fresh process."""
    with tempfile.TemporaryDirectory(dir=root.parent) as out:
        code = (f"import sys, json, time; sys.path.insert(0, {str(ROOT)!r}); "
                f"sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_downsample as b; "
                f"from pathlib import Path; t=time.perf_counter(); "
                f"r=b.run_{kind}(Path({str(root)!r}), {arg}, Path({out!r})); "
                f"r['seconds']=time.perf_counter()-t; r['rss_mb']=b.peak_rss_mb(); print(json.dumps(r))")
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"})
        if p.returncode:
            sys.exit(p.stderr[-3000:])
        return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=4, help="K synthetic shards")
    ap.add_argument("--cells", type=int, default=28_000, help="cells per shard")
    ap.add_argument("--genes", type=int, default=2_000, help="mean non-zero genes per cell")
    ap.add_argument("--workdir", help="where to write the shards (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the shards afterwards")
    ap.add_argument("--skip-rowloop", action="store_true", help="skip the row-by-row baselines")
    ap.add_argument("--baseline-cells", type=int, default=10_000,
                    help="cells the original approach reads (it is ~150 cells/s)")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_downsample_"))
    root = work / "tahoe"
    try:
        t0 = time.perf_counter()
        write_dataset(root, args.shards, args.cells, args.genes)
        size = sum(f.stat().st_size for f in (root / "data").glob("*.parquet")) / 1e9
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
              f"pyarrow {pa.__version__}")
        print(f"data: {args.shards} shards x {args.cells} cells, ~{args.genes} genes/cell, {size:.2f} GB "
              f"(written in {time.perf_counter() - t0:.0f}s); wanted: {len(WANTED)} pairs")
        rate = lambda r: r["cells"] / r["seconds"]  # noqa: E731
        one = measured("stage", root, 1)
        two = measured("stage", root, 2)
        print(f"stage, 1 worker      : {rate(one):>9,.0f} cells/s with pyarrow threads "
              f"({one['cells']:,} cells in "
              f"{one['seconds']:.1f}s, kept {one['kept']:,}), peak RSS {one['rss_mb']:,.0f} MB")
        print(f"stage, 2 workers     : {rate(two):>9,.0f} cells/s total ({two['seconds']:.1f}s), "
              f"peak RSS {two['rss_mb']:,.0f} MB (largest process)")
        if not args.skip_rowloop:
            orig = measured("original", root, args.baseline_cells)
            loop = measured("rowloop", root, 1)
            print(f"original (rows->TSV) : {rate(orig):>9,.0f} cells/s  (first {orig['cells']:,} cells in "
                  f"{orig['seconds']:.1f}s), "
                  f"peak RSS {orig['rss_mb']:,.0f} MB")
            print(f"filtering row loop   : {rate(loop):>9,.0f} cells/s  ({loop['seconds']:.1f}s, kept "
                  f"{loop['kept']:,}), peak RSS {loop['rss_mb']:,.0f} MB")
            per_worker = rate(two) / 2  # each of 2 workers decodes on one core
            print(f"per worker (2 workers, one core each): {per_worker:,.0f} cells/s = "
                  f"{per_worker / rate(orig):.0f}x the original approach, "
                  f"{per_worker / rate(loop):.1f}x the filtering row loop (both single-threaded)")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
