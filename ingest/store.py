"""The token store: every profile's tokens, computed once, in files every process maps
read-only: `genes.bin` (int32 ids) and `values.bin` (float32) laid end to end, `offsets.npy`
(profile starts); each row's drug (`drug.npy`, int32 positions in meta.json's `drugs`) and ln
IC50 (`label.npy`, float32), which batches read beside the tokens; for a reference (bulk.py)
`profile.npy`, each pair row's cell-line profile; and `meta.json`. It lives in the run directory
under `tokens/<key>/`, the key a hash of what shapes it (the table's size, modification time and
rows, a reference's profiles likewise, value kind, token mode, K), so a rerun, a resume or
another fold reuses it and other settings never do. One process builds it (rank 0 under
torchrun; the others wait; two jobs that need the same store take turns on its lock), in a
temporary directory renamed into place once complete, so an interrupted build is never taken for
a finished one. Every process then maps the same files: the
page cache holds one copy for all of them, and DataLoader workers reopen the maps instead of
copying them. Memory stays flat in the number of cells and of processes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from common import atomic_path, exclusive
from ingest.table import codes, profile_index, profiles_path, read_keys
from ingest.tokens import TokenTable, batch_width, labels, token_chunks

log = logging.getLogger("ic50.store")

FORMAT = 4   # 2: each row's drug and label beside its tokens; 3: a reference's profile.npy;
             # 4: keyed on K alone (how the model reads the tokens does not shape them)
CHUNK = 4096   # rows tokenised at a time while building


def key(source: str | Path, value_kind: str, top_k: int) -> str:
    """What shapes a store: the table (size, modification time and rows: a run directory renamed
    from <out>.incomplete keeps them), a reference's profiles likewise, and the token settings."""
    def stamp(path: Path) -> dict:
        st = path.stat()
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                "rows": pq.ParquetFile(path).metadata.num_rows}
    profiles = profiles_path(source)
    spec = {"format": FORMAT, **stamp(Path(source)), "value_kind": value_kind,
            "top_k": top_k,
            "profiles": stamp(profiles) if profiles else None}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


class TokenStore(TokenTable):
    """Tokens mapped read-only from a store; pickled as the store's path (DataLoader workers
    reopen the maps rather than receive a copy)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta = json.loads((self.path / "meta.json").read_text())
        total = int(meta["total"])
        genes = (np.memmap(self.path / "genes.bin", dtype=np.int32, mode="r", shape=(total,))
                 if total else np.zeros(0, np.int32))
        values = (np.memmap(self.path / "values.bin", dtype=np.float32, mode="r", shape=(total,))
                  if total else np.zeros(0, np.float32))
        profile = self.path / "profile.npy"
        super().__init__(genes, values, np.load(self.path / "offsets.npy", mmap_mode="r"), meta["width"],
                         np.load(self.path / "drug.npy", mmap_mode="r"), list(meta["drugs"]),
                         np.load(self.path / "label.npy", mmap_mode="r"),
                         np.load(profile, mmap_mode="r") if profile.exists() else None)
        self.meta = meta

    def __reduce__(self):
        return (TokenStore, (str(self.path),))


def build(source: str | Path, root: str | Path, *, value_kind: str, top_k: int,
          also: tuple[Path, ...] = ()) -> Path:
    """The store of this table and these settings: found under root/<key> or another of the
    roots in `also` (a data-preparation run's, beside its merged table), or built under root."""
    k = key(source, value_kind, top_k)
    for found in (Path(r) / k for r in (*also, root)):
        if (found / "meta.json").exists():
            log.info("token store: reusing %s", found)
            return found
    final = Path(root) / k
    with exclusive(final, "a build of this token store", wait=True):   # one builds, the others wait
        if (final / "meta.json").exists():
            log.info("token store: reusing %s", final)
            return final
        for stale in final.parent.glob(f".{final.name}.building-*"):   # left by a build that died
            shutil.rmtree(stale, ignore_errors=True)
        work = final.parent / f".{final.name}.building-{os.getpid()}"
        work.mkdir()
        try:
            meta = _write(Path(source), work, value_kind, top_k)
            with atomic_path(work / "meta.json") as tmp:   # written last: the mark of a complete store
                tmp.write_text(json.dumps(meta, indent=2) + "\n")
            os.replace(work, final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    log.info("token store: %d rows, %d tokens (%.1f MB) in %s (%.0fs)", meta["rows"], meta["total"],
             meta["bytes"] / 1e6, final, meta["seconds"])
    return final


def _write(source: Path, work: Path, value_kind: str, top_k: int) -> dict:
    t0 = time.perf_counter()
    profiles = profiles_path(source)
    pf = pq.ParquetFile(profiles or source)   # one row of tokens per cell, or per profile
    n = pf.metadata.num_rows
    lengths = np.zeros(n, dtype=np.int64)
    done, longest = 0, 0
    bar = tqdm(total=n, desc="token store", unit=" profiles" if profiles else " cells", leave=False)
    with open(work / "genes.bin", "wb") as fg, open(work / "values.bin", "wb") as fv:
        batches = pf.iter_batches(batch_size=CHUNK, columns=["genes", "expressions"])
        for g, v, lens in token_chunks((pa.Table.from_batches([b]) for b in batches), top_k, value_kind,
                                       str(profiles or source)):
            fg.write(g.tobytes())
            fv.write(v.tobytes())
            lengths[done:done + len(lens)] = lens
            done += len(lens)
            longest = max(longest, int(lens.max(initial=0)))
            bar.update(len(lens))
    bar.close()
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    np.save(work / "offsets.npy", offsets)
    rows_pf = pq.ParquetFile(source)
    drugs = _write_keys(rows_pf, work)
    if profiles:
        lines = pq.read_table(profiles, columns=["cell_line_id"])["cell_line_id"].to_pylist()
        np.save(work / "profile.npy", profile_index(read_keys(source), lines, str(source)))
    total = int(offsets[-1])
    rows = rows_pf.metadata.num_rows
    return {"format": FORMAT, "source": str(source), "value_kind": value_kind, "top_k": top_k,
            "rows": rows, "profiles": n if profiles else None, "total": total,
            "width": batch_width(top_k, longest), "drugs": drugs,
            "bytes": total * 8 + offsets.nbytes + rows * (12 if profiles else 8),
            "seconds": round(time.perf_counter() - t0, 1)}


def _write_keys(pf: pq.ParquetFile, work: Path) -> list[str]:
    """drug.npy and label.npy, a chunk at a time; the drug names in order of first appearance."""
    n = pf.metadata.num_rows
    drug = np.lib.format.open_memmap(work / "drug.npy", mode="w+", dtype=np.int32, shape=(n,))
    label = np.lib.format.open_memmap(work / "label.npy", mode="w+", dtype=np.float32, shape=(n,))
    names: dict[str, int] = {}
    cols = ["drug"] + ["LN_IC50"] * ("LN_IC50" in pf.schema_arrow.names)
    done = 0
    for b in pf.iter_batches(batch_size=1 << 16, columns=cols):
        table = pa.Table.from_batches([b])
        idx, values = codes(table["drug"])
        drug[done:done + len(idx)] = np.array([names.setdefault(d, len(names)) for d in values.to_pylist()],
                                              dtype=np.int32)[idx]
        label[done:done + len(idx)] = labels(table)
        done += len(idx)
    drug.flush()
    label.flush()
    return list(names)
