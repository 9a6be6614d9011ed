"""Predicting from an .h5ad: wall time and peak memory as the number of cells grows.

    python benchmarks/bench_predict_h5ad.py                 # 25,000, 50,000 and 100,000 cells x 20 drugs
    python benchmarks/bench_predict_h5ad.py --cells 100000 --genes 5000 --per-cell 1000

Trains the demo-sized model (main.py's defaults, Morgan fingerprints) for one epoch on a small
synthetic merged table of 20 drugs whose genes are named by a gene table, writes .h5ad files of
N synthetic cells (gene symbols, raw counts in a sparse `counts` layer, a sample per 1,000
cells), then runs `main.py predict ... --layer counts --groupby sample` on each in its own
process and prints wall time and that process's peak RSS. Everything lives in a temporary
directory, deleted afterwards.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import sparse

ROOT = Path(__file__).resolve().parents[1]
SMILES = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C",
          "CC(C)Cc1ccc(cc1)C(C)C(=O)O", "OC(=O)c1ccccc1OC(=O)C", "C1=C(C(=O)NC(=O)N1)F",
          "CS(=O)(=O)C1=CC(=C(C=C1)C(=O)NC2=CC(=C(C=C2)Cl)C3=CC=CC=N3)Cl", "CC(=O)O", "CCN",
          "CCCC", "c1ccncc1", "C1CCCCC1", "CC(C)O", "OCCO", "NCCN", "CC#N", "C=CC=C", "CCOC(=O)C",
          "c1ccc2ccccc2c1"]


def counts(rng: np.random.Generator, n: int, genes: int, per_cell: int) -> sparse.csr_matrix:
    """n cells, each with per_cell genes of Poisson counts (skewed towards low gene indices)."""
    cols = np.sort(np.minimum((rng.pareto(1.2, (n, per_cell)) * genes / 20).astype(np.int64), genes - 1), 1)
    m = sparse.csr_matrix((rng.poisson(2.0, n * per_cell).astype(np.float32) + 1, cols.ravel(),
                           np.arange(n + 1) * per_cell), shape=(n, genes))
    m.sum_duplicates()
    return m


def train_model(work: Path, genes: int, per_cell: int) -> Path:
    rng = np.random.default_rng(0)
    x = counts(rng, 20 * 10 * 5, genes, per_cell)
    rows = [(d, c) for d in range(20) for c in range(10) for _ in range(5)]
    offsets = pa.array(x.indptr.astype(np.int32))
    table = pa.table({
        "genes": pa.ListArray.from_arrays(offsets, pa.array(x.indices.astype(np.int32) + 3)),
        "expressions": pa.ListArray.from_arrays(offsets, pa.array(x.data)),
        "cell_line_id": [f"line{c}" for _, c in rows], "drug": [f"drug{d}" for d, _ in rows],
        "canonical_smiles": [SMILES[d] for d, _ in rows],
        "LN_IC50": [float(d % 5 - 2 + c % 3) for d, c in rows]})
    pq.write_table(table, work / "train.parquet")
    pd.DataFrame({"gene_symbol": [f"GENE{g}" for g in range(genes)],
                  "ensembl_id": [f"ENSG{g:011d}" for g in range(genes)],
                  "token_id": np.arange(genes) + 3}).to_parquet(work / "genes.parquet")
    subprocess.run([sys.executable, str(ROOT / "main.py"), "--data", str(work / "train.parquet"),
                    "--gene-table", str(work / "genes.parquet"), "--epochs", "1", "--drug-encoder",
                    "morgan", "--out", str(work / "run")], cwd=ROOT, check=True, capture_output=True)
    return work / "run" / "best.pt"


def write_cells(path: Path, n: int, genes: int, per_cell: int) -> None:
    import anndata
    x = counts(np.random.default_rng(n), n, genes, per_cell)
    obs = pd.DataFrame({"sample": [f"sample{i // 1000:03d}" for i in range(n)]},
                       index=[f"cell{i}" for i in range(n)])
    adata = anndata.AnnData(X=sparse.csr_matrix(x.shape, dtype=np.float32), obs=obs,
                            var=pd.DataFrame(index=[f"GENE{g}" for g in range(genes)]))
    adata.layers["counts"] = x
    adata.write_h5ad(path)


def measure(checkpoint: Path, cells: Path, out: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one `main.py predict` process."""
    code = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code, sys.executable, str(ROOT / "main.py"), "predict",
                        "--checkpoint", str(checkpoint), "--data", str(cells), "--layer", "counts",
                        "--groupby", "sample", "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode:
        sys.exit(r.stderr[-3000:])
    return wall, int(r.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", type=int, nargs="+", default=[25_000, 50_000, 100_000])
    p.add_argument("--genes", type=int, default=5_000, help="genes in the file (all named in the table)")
    p.add_argument("--per-cell", type=int, default=1_000, help="non-zero genes per cell")
    args = p.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        checkpoint = train_model(work, args.genes, args.per_cell)
        print(f"{'cells':>8s} {'drugs':>6s} {'file MB':>8s} {'wall s':>8s} {'cells/s':>8s} "
              f"{'peak RSS MB':>12s}")
        for n in args.cells:
            cells = work / f"cells{n}.h5ad"
            write_cells(cells, n, args.genes, args.per_cell)
            wall, peak = measure(checkpoint, cells, work / f"out{n}")
            size = cells.stat().st_size / 1e6
            print(f"{n:8d} {20:6d} {size:8.0f} {wall:8.1f} {n / wall:8.0f} {peak:12.0f}", flush=True)
            cells.unlink()


if __name__ == "__main__":
    main()
