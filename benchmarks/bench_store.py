"""The token store at scale: build time and size, per-process memory with 1 and 2 Gloo processes,
and training throughput from the store against the same tokens held in RAM.

    python benchmarks/bench_store.py                                # 0.5 M and 2 M cells x 1,024 genes
    python benchmarks/bench_store.py --cells 100000 --old-repo /tmp/old   # also the in-RAM path of a
                                                                    # checkout from before the store

For each size the script writes a synthetic merged table (every cell lists 1,024 genes with
Poisson counts; 20 drugs x 25 cell lines; row groups of 16,384 rows), builds its token store
(`--gene-tokens pooled --top-k 1024`: every gene is a token; the study's pooled design keeps the
network cheap, so that 2 CPU cores measure the data path rather than attention), then runs
`main.py --data TABLE` for one epoch of `--epoch-steps` batches, in one process and under
torchrun with two Gloo processes, sampling every process's memory from /proc: peak RSS, and its
anonymous (private) and file-backed (the store's pages, shared through the page cache) parts.
Throughput: the same Trainer steps with the store mapped and with its arrays copied into RAM,
alternated. Tables and stores are deleted afterwards.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


import dist  # noqa: E402
from config import from_dict  # noqa: E402
from ingest import store as token_store  # noqa: E402
from ingest import tokens  # noqa: E402
from ingest.table import drug_smiles, read_keys  # noqa: E402
from predictor.network import Network  # noqa: E402
from train import Trainer  # noqa: E402

GENES, DRUGS, LINES = 1024, 20, 25
SMILES = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C",
          "CC(C)Cc1ccc(cc1)C(C)C(=O)O", "OC(=O)c1ccccc1OC(=O)C", "C1=C(C(=O)NC(=O)N1)F", "CC(=O)O",
          "CCN", "CCCC", "c1ccncc1", "C1CCCCC1", "CC(C)O", "OCCO", "NCCN", "CC#N", "C=CC=C",
          "CCOC(=O)C", "c1ccc2ccccc2c1", "CCCCCC"]
FLAGS = ["--gene-tokens", "pooled", "--top-k", "1024", "--drug-encoder", "morgan", "--morgan-bits", "256",
         "--epochs", "1", "--val-frac", "0.02", "--test-frac", "0.02", "--split", "pair"]


def write_table(path: Path, n: int, seed: int = 0, genes: int = GENES) -> float:
    """n cells x `genes` genes (1,024 by default); returns seconds. Counts come from a fixed block of
    Poisson draws, shifted per row group, so that writing, not drawing, sets the pace."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    width = genes
    block = rng.poisson(rng.gamma(0.6, 3.0, width), (16_384, width)).astype(np.float32)
    genes = np.tile(np.arange(3, 3 + width, dtype=np.int32), 16_384)
    schema = pa.schema([("genes", pa.list_(pa.int32())), ("expressions", pa.list_(pa.float32())),
                        ("cell_line_id", pa.string()), ("drug", pa.string()),
                        ("canonical_smiles", pa.string()), ("LN_IC50", pa.float64())])
    with pq.ParquetWriter(path, schema, compression="zstd") as w:
        for start in range(0, n, 16_384):
            m = min(16_384, n - start)
            counts = np.roll(block, rng.integers(width), axis=1)[:m]
            pair = rng.integers(DRUGS * LINES, size=m)
            offsets = pa.array(np.arange(m + 1, dtype=np.int32) * width)
            w.write_table(pa.table({
                "genes": pa.ListArray.from_arrays(offsets, pa.array(genes[:m * width])),
                "expressions": pa.ListArray.from_arrays(offsets, pa.array(counts.ravel())),
                "cell_line_id": pa.array([f"line{p % LINES}" for p in pair]),
                "drug": pa.array([f"drug{p // LINES}" for p in pair]),
                "canonical_smiles": pa.array([SMILES[p // LINES] for p in pair]),
                "LN_IC50": pa.array((pair // LINES % 5 - 2 + pair % LINES % 3).astype(np.float64))},
                schema=schema), row_group_size=16_384)
    return time.perf_counter() - t0


def descendants(pid: int) -> list[int]:
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def status(pid: int) -> dict[str, int]:
    try:
        lines = open(f"/proc/{pid}/status").read().splitlines()
    except OSError:
        return {}
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    return {k: int(fields[k].split()[0]) // 1024 for k in ("VmHWM", "RssAnon", "RssFile", "RssShmem")
            if k in fields}


def run_sampled(cmd: list[str]) -> tuple[float, list[dict]]:
    """Wall seconds, and per python process its peak RSS (VmHWM) and peak anonymous and
    file-backed RSS, in MB, sampled every 0.1 s."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peaks: dict[int, dict] = {}
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(proc.stdout), daemon=True)
    reader.start()
    t0 = time.perf_counter()
    while proc.poll() is None:
        for p in descendants(proc.pid):
            cmdline = open(f"/proc/{p}/cmdline", "rb").read() if os.path.exists(f"/proc/{p}/cmdline") else b""
            if b"main.py" not in cmdline or b"torch.distributed.run" in cmdline:
                continue
            s = status(p)
            if s:
                peak = peaks.setdefault(p, {"peak_rss": 0, "anon": 0, "file": 0})
                peak.update(peak_rss=max(peak["peak_rss"], s["VmHWM"]), anon=max(peak["anon"], s["RssAnon"]),
                            file=max(peak["file"], s["RssFile"]))
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    reader.join()
    if proc.returncode:
        sys.exit("".join(log[-40:]))
    return wall, list(peaks.values())


def memory(table: Path, work: Path, processes: int, steps: int, repo: Path) -> tuple[float, list[dict]]:
    env_cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                str(processes)] if processes > 1 else [sys.executable])
    extra = ["--epoch-steps", str(steps)] if repo == ROOT else []
    out = work / f"run-{table.stem}-{processes}-{repo.name}"
    return run_sampled([*env_cmd, str(repo / "main.py"), "--data", str(table), *FLAGS, *extra,
                        "--out", str(out)])


def available_gb() -> float:
    fields = dict(line.split(":", 1) for line in open("/proc/meminfo").read().splitlines())
    return int(fields["MemAvailable"].split()[0]) / 1e6


def throughput(table: Path, store: Path, steps: int, *, device: str = "cpu", workers: int = 0,
               rounds: int = 3) -> dict[str, float]:
    """Training samples/s with the store mapped, and with the same arrays in RAM where a copy
    fits beside the store's pages."""
    cfg = from_dict({"gene_tokens": "pooled", "top_k": 1024, "drug_encoder": "morgan", "morgan_bits": 256,
                     "epoch_steps": steps, "device": device, "loader_workers": workers}, "bench_store")
    mapped = token_store.TokenStore(store)
    copies = {"store": mapped}
    size_gb = (mapped.genes.nbytes + mapped.values.nbytes) / 1e9
    if 2 * size_gb < 0.8 * available_gb():
        copies["ram"] = tokens.TokenTable(np.array(mapped.genes), np.array(mapped.values),
                                          np.array(mapped.offsets), mapped.width, np.array(mapped.drug),
                                          mapped.drugs, np.array(mapped.label))
    rows = {"train": np.arange(len(mapped)), "val": np.arange(1000)}
    drugs = drug_smiles(read_keys(table))
    rates = {name: [] for name in copies}
    with tempfile.TemporaryDirectory() as tmp:
        device = dist.pick_device(device)
        networks = {name: Network.create(cfg.model, toks, rows, drugs=drugs, gene_table=None, seed=cfg.seed,
                                         batch_size=cfg.batch_size, finetune=False, device=device)
                    for name, toks in copies.items()}
        trainers = {name: Trainer(networks[name], toks, rows, cfg=cfg, run_dir=Path(tmp))
                    for name, toks in copies.items()}
        for _ in range(rounds):
            for name, trainer in trainers.items():
                t0 = time.perf_counter()
                trainer.train_epoch()
                rates[name].append(steps * cfg.batch_size / (time.perf_counter() - t0))
    return {name: float(np.median(r)) for name, r in rates.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", type=int, nargs="+", default=[500_000, 2_000_000])
    p.add_argument("--steps", type=int, default=100, help="training batches per measured epoch")
    p.add_argument("--old-repo", type=Path, help="also run a checkout from before the store (in-RAM path)")
    p.add_argument("--dir", type=Path, default=None, help="where tables and stores go (default: a temp dir)")
    p.add_argument("--device", default="cpu", help="device for the throughput runs (cpu, cuda)")
    p.add_argument("--workers", type=int, nargs="+", default=[0],
                   help="DataLoader workers for the throughput runs, one measurement each")
    p.add_argument("--throughput-only", action="store_true", help="skip the memory runs")
    args = p.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    work = Path(tempfile.mkdtemp(dir=args.dir))
    try:
        for n in args.cells:
            table = work / f"cells{n}.parquet"
            wrote = write_table(table, n)
            t0 = time.perf_counter()
            store = token_store.build(table, work / "tokens", value_kind="counts", top_k=1024)
            build = time.perf_counter() - t0
            size = sum(f.stat().st_size for f in store.iterdir()) / 1e9
            print(f"\n{n:,} cells: table {table.stat().st_size / 1e9:.2f} GB written in {wrote:.0f}s; "
                  f"token store built in {build:.0f}s ({n / build:,.0f} cells/s), {size:.2f} GB", flush=True)
            for repo in ([] if args.throughput_only else [ROOT] + ([args.old_repo] if args.old_repo else [])):
                for procs in (1, 2):
                    wall, peaks = memory(table, work, procs, args.steps, repo)
                    what = "store" if repo == ROOT else "in RAM (before the store)"
                    print(f"  {what}, {procs} process(es): {wall:.0f}s; per process " + "; ".join(
                        f"peak RSS {q['peak_rss']:,} MB (anonymous {q['anon']:,}, store pages {q['file']:,})"
                        for q in peaks), flush=True)
            for workers in args.workers:
                rate = throughput(table, store, args.steps, device=args.device, workers=workers)
                ram = (f"in RAM {rate['ram']:,.0f} samples/s ({rate['store'] / rate['ram'] - 1:+.1%})"
                       if "ram" in rate else f"in RAM not measured (a {size:.1f} GB copy does not fit here)")
                print(f"  training throughput, 1 process on {args.device}, {workers} loader workers: "
                      f"store {rate['store']:,.0f} samples/s, {ram}", flush=True)
            shutil.rmtree(store)
            table.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
