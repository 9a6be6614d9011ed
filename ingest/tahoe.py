"""Tahoe-100M as it is published: a local copy of the hub repo (data/train-*.parquet,
metadata/*.parquet), a glob of shards, or the hub itself, streamed through `datasets`. Each shard
is read a row group at a time, the cheap columns first, so that a scan decodes the expression of
the rows it keeps only (downsample.py).
"""
from __future__ import annotations

import glob
from pathlib import Path
from typing import Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from common import PipelineError

HUB_ID = "tahoebio/Tahoe-100M"
CHEAP = ["drug", "cell_line_id", "sample", "BARCODE_SUB_LIB_ID"]
HEAVY = ["genes", "expressions", "canonical_smiles", "plate"]


class TahoeSource:
    """Tahoe-100M from a local copy of the hub repo, a glob of shards, or the hub (streamed).

    `stream=True` reads each shard through `datasets` streaming, the hub's official route; it is
    forced for a hub id and can be asked for on local files (the tests do, to cover that path).
    """

    def __init__(self, spec: str, stream: bool = False):
        self.spec = spec
        path = Path(spec)
        self.root: Path | None = None
        if path.is_dir():
            self.root = path
            shards = sorted(path.glob("data/train-*.parquet")) or sorted(path.glob("*.parquet"))
            if not shards:
                raise PipelineError(f"Tahoe directory '{path}' holds no data/train-*.parquet shards.")
            self.shards = [str(s) for s in shards]
        elif any(ch in spec for ch in "*?["):
            self.shards = sorted(glob.glob(spec))
            if not self.shards:
                raise PipelineError(f"no Tahoe shard matches the glob '{spec}'.")
            self.root = Path(self.shards[0]).parent.parent
        elif spec.count("/") == 1 and not spec.startswith((".", "/")):
            self.shards = []  # listed from the hub on first use
        else:
            raise PipelineError(f"Tahoe source '{spec}' is neither an existing directory, a glob of "
                                f"parquet shards, nor a hub dataset id such as '{HUB_ID}'.")
        self.stream = stream or self.is_hub

    @property
    def is_hub(self) -> bool:
        return self.root is None and not self.shards

    def shard_list(self) -> list[str]:
        if self.is_hub and not self.shards:
            try:
                from huggingface_hub import HfApi
                files = HfApi().list_repo_files(self.spec, repo_type="dataset")
            except Exception as e:
                raise PipelineError(f"could not list the shards of '{self.spec}' on the Hugging Face "
                                    f"hub: {e}") from e
            self.shards = [f"hf://datasets/{self.spec}/{f}" for f in sorted(files)
                           if f.startswith("data/train-") and f.endswith(".parquet")]
            if not self.shards:
                raise PipelineError(f"hub dataset '{self.spec}' has no data/train-*.parquet shards.")
        return self.shards

    def metadata(self, name: str) -> pd.DataFrame:
        """One of the metadata tables: gene, drug, cell_line or sample."""
        if self.is_hub:
            from datasets import load_dataset
            try:
                return load_dataset(self.spec, name=f"{name}_metadata", split="train").to_pandas()
            except Exception as e:
                raise PipelineError(f"could not load {name}_metadata of '{self.spec}' from the "
                                    f"Hugging Face hub: {e}") from e
        path = self.root / "metadata" / f"{name}_metadata.parquet"
        if not path.exists():
            raise PipelineError(f"Tahoe metadata file not found: '{path}' (expected the hub "
                                f"repo's layout: metadata/{name}_metadata.parquet).")
        return pd.read_parquet(path)


class BadShard(Exception):
    pass


def check_columns(names: list[str], shard: str) -> None:
    missing = [c for c in CHEAP + HEAVY if c not in names]
    if missing:
        raise BadShard(f"Tahoe shard '{Path(shard).name}' lacks column(s) {missing} ({shard}); a "
                       f"Tahoe-100M expression shard has {CHEAP + HEAVY}")


def row_groups(shard: str, stream: bool, threads: bool = True) -> Iterator[tuple[pa.Table, callable]]:
    """Yield (cheap columns, take(rows) -> heavy columns of those rows) per row group or batch.

    `threads`: let pyarrow decode columns in parallel (off when several worker processes run).
    """
    name = Path(shard).name
    if stream:
        from datasets import load_dataset
        try:
            ds = load_dataset("parquet", data_files=[shard], split="train", streaming=True)
            for batch in ds.with_format("arrow").iter(batch_size=1000):
                check_columns(batch.schema.names, shard)
                yield batch.select(CHEAP), (lambda idx, b=batch: b.select(HEAVY).take(idx))
        except BadShard:
            raise
        except Exception as e:
            raise BadShard(f"Tahoe shard '{name}' could not be streamed: {e}") from e
        return
    try:
        pf = pq.ParquetFile(shard)
        n = pf.num_row_groups
    except Exception as e:
        raise BadShard(f"Tahoe shard '{name}' is not readable parquet ({shard}): {e}") from e
    check_columns(pf.schema_arrow.names, shard)
    for i in range(n):
        try:
            cheap = pf.read_row_group(i, columns=CHEAP, use_threads=threads)
        except Exception as e:
            raise BadShard(f"Tahoe shard '{name}', row group {i}: {e}") from e

        def take(idx, i=i):
            try:
                return pf.read_row_group(i, columns=HEAVY, use_threads=threads).take(idx)
            except Exception as e:
                raise BadShard(f"Tahoe shard '{name}', row group {i}: {e}") from e
        yield cheap, take
