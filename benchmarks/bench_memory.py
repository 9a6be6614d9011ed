"""The private memory of every process of a whole run, stage by stage.

    python benchmarks/bench_memory.py                       # 200,000 cells x 512 genes, torchrun x 2
    python benchmarks/bench_memory.py --repo /tmp/old       # the same run with another checkout

Writes a synthetic merged table (bench_store.write_table: Poisson counts, 20 drugs x 25 lines),
then runs `torchrun --nproc_per_node 2 main.py --data TABLE --top-k 512 --epochs 1 --drug-encoder
morgan` and samples every main.py process from /proc every 0.1 s: private memory (RSS less
file-backed pages: RssAnon + RssShmem) and peak RSS. Each sample is set against the log line that
came last before it, so that the table says which stage each process's private memory peaked in.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_store import descendants, status, write_table  # noqa: E402


def sampled(cmd: list[str], cwd: Path) -> tuple[float, dict[int, list[tuple[float, int, int]]], list]:
    """Wall seconds; per main.py process its samples (seconds, private MB, RSS MB); the log lines
    with the second each arrived."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    t0 = time.perf_counter()
    log: list[tuple[float, str]] = []
    reader = threading.Thread(daemon=True, target=lambda: log.extend(
        (time.perf_counter() - t0, line) for line in proc.stdout))
    reader.start()
    samples: dict[int, list] = {}
    while proc.poll() is None:
        for p in descendants(proc.pid):
            try:
                cmdline = open(f"/proc/{p}/cmdline", "rb").read()
            except OSError:
                continue
            if b"main.py" not in cmdline or b"torch.distributed.run" in cmdline:
                continue
            s = status(p)
            if s:
                private = s["RssAnon"] + s.get("RssShmem", 0)
                samples.setdefault(p, []).append((time.perf_counter() - t0, private, private + s["RssFile"]))
        time.sleep(0.1)
    reader.join()
    if proc.returncode:
        sys.exit("".join(line for _, line in log[-40:]))
    return time.perf_counter() - t0, samples, log


def stage_at(log: list[tuple[float, str]], t: float) -> str:
    """The last log line (a message, not a progress bar) before second t."""
    lines = [line.strip() for when, line in log if when <= t and " INFO " in line]
    return lines[-1].split(" INFO ", 1)[1][:110] if lines else "(start)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", type=int, default=200_000)
    p.add_argument("--genes", type=int, default=512)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--repo", type=Path, default=ROOT, help="the checkout whose main.py runs")
    p.add_argument("--table", type=Path, help="a merged table of your own instead of the synthetic one")
    p.add_argument("--dir", type=Path, default=None, help="where the table and the run go (default: temp)")
    args = p.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"repo {args.repo}")
    work = Path(tempfile.mkdtemp(dir=args.dir))
    table = args.table or work / "cells.parquet"
    if not args.table:
        write_table(table, args.cells, genes=args.genes)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(args.processes), str(args.repo / "main.py"), "--data", str(table), "--top-k",
           str(args.genes), "--epochs", "1", "--drug-encoder", "morgan", "--out", str(work / "run")]
    wall, samples, log = sampled(cmd, args.repo)
    print(f"{table.name}: {args.processes} processes, --top-k {args.genes}: {wall / 60:.1f} min wall")
    print("| process | peak private (RSS - file-backed) | peak RSS | private peaked during |")
    print("|---|---|---|---|")
    for rank, (pid, rows) in enumerate(sorted(samples.items())):
        t, private, _ = max(rows, key=lambda r: r[1])
        print(f"| {rank} | {private:,} MB | {max(r[2] for r in rows):,} MB | {stage_at(log, t)} "
              f"(at {t:.0f} s) |")
    by_stage: dict[str, int] = {}
    for rows in samples.values():
        for t, private, _ in rows:
            stage = stage_at(log, t)
            by_stage[stage] = max(by_stage.get(stage, 0), private)
    print("\nlargest private memory of any process, by the log line before it:")
    for stage, mb in by_stage.items():
        print(f"  {mb:6,} MB  {stage}")


if __name__ == "__main__":
    main()
