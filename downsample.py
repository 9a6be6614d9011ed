"""Take a labelled, reproducible subset of Tahoe-100M cells, shard by shard.

Sampling in one sentence: every cell gets a uniform random key from a keyed hash of its sample and
barcode with the seed; a cell of a labelled (drug, cell line) pair is kept with probability
`fraction` (key < fraction), and each (drug, cell line, dose) group keeps the `cells_per_group`
cells with the smallest keys. The kept cells therefore depend on the seed and the inputs only,
never on how many workers or array tasks read the shards, or in which order.

How: each shard is scanned on its own (cheap columns first, `genes`/`expressions` taken only for
labelled rows, the CLS marker dropped) into a part file holding that shard's smallest keys per
group, written atomically under `<parts>/<settings fingerprint>/`. A rerun skips shards whose part
exists, so an interrupted scan resumes. The combine step streams the parts twice (keys, then rows)
and applies the per-group cap exactly. Memory stays flat in the number of shards.

    python downsample.py --tahoe DIR_OR_HUB_ID --pairs pairs.csv --out cells.parquet --num-workers 8
    # or over a SLURM array: each task scans its slice, the last command combines
    python downsample.py ... --num-shards 16 --shard-index $SLURM_ARRAY_TASK_ID
    python downsample.py ...            # scans what is left (nothing) and combines
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import logging
import multiprocessing as mp
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

import config as config_mod
from common import (
    CONTROL,
    PipelineError,
    atomic_path,
    command,
    flat_list,
    require_file,
    setup_logging,
    write_json,
)
from ingest.tahoe import BadShard, TahoeSource, row_groups

log = logging.getLogger("ic50.downsample")

GROUP = ["drug", "cell_line_id", "dose_uM"]
OUT_SCHEMA = pa.schema([
    ("genes", pa.list_(pa.int32())), ("expressions", pa.list_(pa.float32())),
    ("drug", pa.string()), ("cell_line_id", pa.string()), ("sample", pa.string()),
    ("BARCODE_SUB_LIB_ID", pa.string()), ("canonical_smiles", pa.string()),
    ("plate", pa.string()), ("dose_uM", pa.float32())])
PART_SCHEMA = OUT_SCHEMA.append(pa.field("_key", pa.float64()))


# ----------------------------------------------------------------------------- sampling

@dataclass(frozen=True)
class Sampling:
    """Everything that decides which cells are kept; its fingerprint names the parts directory."""
    pairs: tuple[tuple[str, str], ...]
    cells_per_group: int
    fraction: float
    seed: int
    doses: tuple[tuple[str, float], ...]

    @classmethod
    def make(cls, pairs: Iterable[tuple[str, str]], cells_per_group: int, fraction: float,
             seed: int, doses: dict[str, float]) -> "Sampling":
        pairs = tuple(sorted({(d, c) for d, c in pairs if d != CONTROL}))  # control: exact name
        if not pairs:
            raise PipelineError("downsample: no labelled (drug, cell line) pair to keep.")
        if cells_per_group < 1 or not 0 < fraction <= 1:
            raise PipelineError("downsample: cells_per_group must be >= 1 and fraction in (0, 1].")
        return cls(pairs, int(cells_per_group), float(fraction), int(seed),
                   tuple(sorted(doses.items())))

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self)).encode()).hexdigest()[:16]


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
    """Uniform keys in [0, 1) from a keyed hash of (sample, barcode): the same cell, the same key."""
    ids = pc.binary_join_element_wise(samples, barcodes, "|").to_numpy(zero_copy_only=False)
    h = pd.util.hash_pandas_object(pd.Series(ids), index=False,
                                   hash_key=f"{seed:016d}"[-16:]).to_numpy()
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def smallest_per_group(keys: pd.DataFrame, cap: int) -> np.ndarray:
    """Row positions of the `cap` smallest `_key`s per (drug, cell line, dose), in key order."""
    order = np.argsort(keys["_key"].to_numpy(), kind="stable")
    ranked = keys.iloc[order]
    rank = ranked.groupby(GROUP, dropna=False, sort=False).cumcount().to_numpy()
    return order[rank < cap]


def drop_cls(genes: pa.ChunkedArray | pa.Array, exprs: pa.ChunkedArray | pa.Array
             ) -> tuple[pa.Array, pa.Array]:
    """Remove the leading CLS-like marker (first entry with expression < 0), vectorised."""
    offsets, gv = flat_list(genes)
    ev = flat_list(exprs)[1]
    starts, ends = offsets[:-1], offsets[1:]
    first_neg = np.zeros(len(starts), dtype=bool)
    nonempty = ends > starts
    first_neg[nonempty] = ev[starts[nonempty]] < 0
    keep = np.ones(len(gv), dtype=bool)
    keep[starts[first_neg]] = False
    new_offsets = pa.array(np.concatenate([[0], np.cumsum((ends - starts) - first_neg)]).astype(np.int32))
    return (pa.ListArray.from_arrays(new_offsets, pa.array(gv[keep].astype(np.int32))),
            pa.ListArray.from_arrays(new_offsets, pa.array(ev[keep].astype(np.float32))))


def scan_shard(shard: str, stream: bool, sampling: Sampling, threads: bool = True
               ) -> tuple[pa.Table, dict]:
    """One shard -> its candidate cells (smallest keys per group), materialised, with `_key`."""
    wanted = pa.array([f"{d}\x1f{c}" for d, c in sampling.pairs])
    doses = dict(sampling.doses)
    parts: list[pa.Table] = []
    held = scanned = labelled = 0
    for cheap, take in row_groups(shard, stream, threads):
        scanned += cheap.num_rows
        key = pc.binary_join_element_wise(cheap["drug"], cheap["cell_line_id"], "\x1f")
        idx = np.flatnonzero(pc.fill_null(pc.is_in(key, value_set=wanted), False).to_numpy(
            zero_copy_only=False))
        if idx.size == 0:
            continue
        labelled += idx.size
        sub = cheap.take(idx)
        k = cell_keys(sub["BARCODE_SUB_LIB_ID"], sub["sample"], sampling.seed)
        keep = k < sampling.fraction
        if not keep.any():
            continue
        sub, idx, k = sub.filter(keep), idx[keep], k[keep]
        heavy = take(pa.array(idx))
        genes, exprs = drop_cls(heavy["genes"], heavy["expressions"])
        dose = pa.array(pd.Series(sub["sample"].to_numpy(zero_copy_only=False)).map(doses),
                        pa.float32(), from_pandas=True)
        parts.append(pa.table([genes, exprs, sub["drug"], sub["cell_line_id"], sub["sample"],
                               sub["BARCODE_SUB_LIB_ID"], heavy["canonical_smiles"], heavy["plate"],
                               dose, pa.array(k)], schema=PART_SCHEMA))
        held += len(idx)
        if held > 20 * sampling.cells_per_group + 20_000:  # keep memory bounded within a shard
            parts, held = [_cap(pa.concat_tables(parts), sampling.cells_per_group)], 0
    table = _cap(pa.concat_tables(parts), sampling.cells_per_group) if parts else PART_SCHEMA.empty_table()
    return table, {"cells_scanned": scanned, "cells_labelled": labelled, "cells_kept": table.num_rows}


def _cap(table: pa.Table, cap: int) -> pa.Table:
    """The shard-local selection, in a canonical order: by group, then key."""
    keys = table.select(GROUP + ["_key"]).to_pandas()
    chosen = table.take(pa.array(smallest_per_group(keys, cap)))
    order = pc.sort_indices(chosen, sort_keys=[(c, "ascending") for c in GROUP + ["_key"]])
    return chosen.take(order)


# ----------------------------------------------------------------------------- running shards

def part_path(parts_dir: Path, shard: str) -> Path:
    return parts_dir / (Path(shard).name.removesuffix(".parquet") + ".part.parquet")


def _scan_job(job: tuple[str, bool, Sampling, str, str, bool]) -> dict:
    """Worker: scan one shard into its part file (atomic). A bad shard is returned or raised."""
    shard, stream, sampling, out, on_bad, threads = job
    t0 = time.perf_counter()
    try:
        table, stats = scan_shard(shard, stream, sampling, threads)
    except BadShard as e:
        if on_bad == "fail":
            raise PipelineError(f"{e}. Re-download the shard, or pass --on-bad-shard skip to go on "
                                f"without it (it is then counted in the summary).") from e
        return {"shard": shard, "bad": str(e)}
    stats["seconds"] = round(time.perf_counter() - t0, 3)
    meta = {b"ic50.stats": json.dumps(stats).encode()}
    with atomic_path(out) as tmp:
        pq.write_table(table.replace_schema_metadata(meta), tmp, compression="zstd")
    return {"shard": shard, **stats}


def scan(source: TahoeSource, sampling: Sampling, parts_dir: Path, num_workers: int = 1,
         shard_index: int = 0, num_shards: int = 1, on_bad_shard: str = "fail") -> dict:
    """Scan this task's slice of shards, skipping those whose part already exists."""
    shards = source.shard_list()
    if not 0 <= shard_index < num_shards:
        raise PipelineError(f"--shard-index must be in [0, {num_shards}), got {shard_index}.")
    mine = shards[shard_index::num_shards]
    parts_dir.mkdir(parents=True, exist_ok=True)
    todo = [s for s in mine if not part_path(parts_dir, s).exists()]
    if len(todo) < len(mine):
        log.info("downsample: %d of %d shards already scanned in %s; resuming", len(mine) - len(todo),
                 len(mine), parts_dir)
    threads = num_workers <= 1  # one process may use pyarrow's threads; several use one core each
    jobs = [(s, source.stream, sampling, str(part_path(parts_dir, s)), on_bad_shard, threads)
            for s in todo]
    results, t0 = [], time.perf_counter()
    bar = tqdm(total=len(jobs), desc="downsample", unit=" shard", leave=False)
    if num_workers <= 1 or len(jobs) <= 1:
        it = map(_scan_job, jobs)
        pool = None
    else:  # spawn: safe beside torch and on every OS
        pool = mp.get_context("spawn").Pool(min(num_workers, len(jobs)))
        it = pool.imap_unordered(_scan_job, jobs)
    try:
        for r in it:
            results.append(r)
            bar.update()
            scanned = sum(x.get("cells_scanned", 0) for x in results)
            bar.set_postfix(cells=scanned, per_s=f"{scanned / (time.perf_counter() - t0):.0f}")
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    bad = [r for r in results if "bad" in r]
    for r in bad:
        log.warning("skipped: %s", r["bad"])
    elapsed = time.perf_counter() - t0
    scanned = sum(r.get("cells_scanned", 0) for r in results)
    return {"shards_total": len(shards), "shards_this_task": len(mine),
            "shards_scanned_now": len(results) - len(bad),
            "shards_resumed": len(mine) - len(todo), "shards_skipped": len(bad),
            "skipped": [Path(r["shard"]).name for r in bad], "cells_scanned_now": scanned,
            "scan_seconds": round(elapsed, 2), "workers": max(1, min(num_workers, len(jobs))),
            "cells_per_second": round(scanned / elapsed) if elapsed > 0 and scanned else None}


def combine(source: TahoeSource, sampling: Sampling, parts_dir: Path, out: Path,
            allow_missing: Iterable[str] = ()) -> dict:
    """Exact per-group cap across all parts, streamed: keys first, then the chosen rows."""
    shards = source.shard_list()
    allow = set(allow_missing)
    paths = [part_path(parts_dir, s) for s in shards]
    missing = [Path(s).name for s, p in zip(shards, paths) if not p.exists() and s not in allow]
    if missing:
        raise PipelineError(f"{len(missing)} of {len(shards)} shards are not scanned yet (e.g. "
                            f"{missing[:3]}): run the remaining array tasks, or run without "
                            f"--num-shards to scan them here.")
    present = [p for p in paths if p.exists()]
    # pass 1: keys of every candidate, pruned to the cap as we go (memory ~ groups x cap)
    chosen: pd.DataFrame | None = None
    totals = {"cells_scanned": 0, "cells_labelled": 0}
    for i, p in enumerate(present):
        meta = pq.read_schema(p).metadata or {}
        stats = json.loads(meta.get(b"ic50.stats", b"{}"))
        for k in totals:
            totals[k] += stats.get(k, 0)
        keys = pq.read_table(p, columns=GROUP + ["_key"]).to_pandas()
        keys["_part"], keys["_row"] = i, np.arange(len(keys))
        chosen = keys if chosen is None else pd.concat([chosen, keys], ignore_index=True)
        chosen = chosen.iloc[smallest_per_group(chosen, sampling.cells_per_group)]
    if chosen is None or chosen.empty:
        raise PipelineError("downsample: no Tahoe cell belongs to a labelled (drug, cell line) pair; "
                            "check that the GDSC names match the Tahoe metadata (match_report.csv).")
    # pass 2: the chosen rows, part by part, in shard order (so the output is layout-independent)
    rows = {part: np.sort(r.to_numpy()) for part, r in chosen.groupby("_part")["_row"]}
    with atomic_path(out) as tmp, pq.ParquetWriter(tmp, OUT_SCHEMA, compression="zstd") as w:
        for i, p in enumerate(present):
            if i in rows:
                w.write_table(pq.read_table(p).take(pa.array(rows[i])).select(OUT_SCHEMA.names))
    per_group = chosen.groupby(GROUP, dropna=False).size()
    return {**totals, "cells_kept": int(len(chosen)), "groups": int(len(per_group)),
            "cells_per_group_min": int(per_group.min()), "cells_per_group_max": int(per_group.max()),
            "kept_per_group": {f"{d} | {c} | {x}": int(n) for (d, c, x), n in per_group.items()}}


def downsample(source: TahoeSource, pairs: Iterable[tuple[str, str]], *, cells_per_group: int,
               fraction: float, seed: int, out: Path, parts_dir: Path | None = None,
               num_workers: int = 1, shard_index: int = 0, num_shards: int = 1,
               on_bad_shard: str = "fail") -> dict:
    """Scan (this task's shards), then, unless this is one task of several, combine into `out`.

    Returns the summary; `summary["complete"]` says whether `out` was written.
    """
    t0 = time.perf_counter()
    sampling = Sampling.make(pairs, cells_per_group, fraction, seed, parse_doses(source.metadata("sample")))
    parts = (parts_dir or out.with_name(out.name + ".parts")) / sampling.fingerprint()
    summary = {"parts_dir": str(parts), **scan(source, sampling, parts, num_workers, shard_index,
                                               num_shards, on_bad_shard)}
    if num_shards > 1:
        summary["complete"] = False
        log.info("downsample task %d/%d: scanned %d shards (%d cells, %s cells/s); run once more "
                 "without --num-shards to combine", shard_index, num_shards,
                 summary["shards_scanned_now"], summary["cells_scanned_now"], summary["cells_per_second"])
        return summary
    skipped = [s for s in source.shard_list() if Path(s).name in set(summary["skipped"])]
    summary.update(combine(source, sampling, parts, out, allow_missing=skipped), complete=True,
                   seconds=round(time.perf_counter() - t0, 2))
    log.info("downsample: %d cells scanned (%d labelled) in %d shards%s; kept %d cells in %d (drug, "
             "cell line, dose) groups (%d to %d per group) in %.1fs", summary["cells_scanned"],
             summary["cells_labelled"], summary["shards_total"],
             f", {summary['shards_skipped']} SKIPPED (unreadable)" if summary["shards_skipped"] else "",
             summary["cells_kept"], summary["groups"], summary["cells_per_group_min"],
             summary["cells_per_group_max"], summary["seconds"])
    return summary


@command(log)
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--pairs", required=True,
                   help="CSV with columns drug, cell_line_id: the (drug, cell line) pairs to keep")
    p.add_argument("--out", default="cells.parquet", help="output parquet (default: cells.parquet)")
    p.add_argument("--shard-index", type=int, default=0, metavar="INT", help="this SLURM array task's "
                   "slice of the shards, with --num-shards (e.g. $SLURM_ARRAY_TASK_ID)")
    p.add_argument("-v", "--verbose", action="store_true", help="log more detail, and the cause of an error")
    config_mod.add_arguments(p, "downsample")
    args = p.parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    if args.parts_dir is None:   # array tasks and the combining run share <out>.parts
        args.parts_dir = str(Path(args.out).with_suffix(".parts"))
    cfg = config_mod.resolve(args)
    pairs = pd.read_csv(require_file(args.pairs, "pairs file"))
    missing = {"drug", "cell_line_id"} - set(pairs.columns)
    if missing:
        raise PipelineError(f"pairs file '{args.pairs}' lacks column(s) {sorted(missing)}.")
    out = Path(args.out)
    summary = downsample(TahoeSource(cfg.tahoe), zip(pairs["drug"], pairs["cell_line_id"]),
                         cells_per_group=cfg.cells_per_group, fraction=cfg.fraction,
                         seed=cfg.seed, out=out, parts_dir=Path(cfg.parts_dir),
                         num_workers=cfg.num_workers, shard_index=args.shard_index,
                         num_shards=cfg.num_shards, on_bad_shard=cfg.on_bad_shard)
    if summary["complete"]:
        write_json(summary, out.with_suffix(".summary.json"))
        log.info("wrote %s and %s", out, out.with_suffix(".summary.json"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
