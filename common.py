"""Small helpers every stage shares: the user-facing error type, atomic writes, logging."""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import socket
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

import filelock
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

UMASK = os.umask(0)   # what the user's files get; tempfile's are private (0600, 0700)
os.umask(UMASK)


CONTROL = "DMSO_TF"  # Tahoe-100M's control, matched by exact name: "Trametinib (DMSO_TF solvate)" is a drug


def cache_dir() -> Path:
    """Where downloads and ready references live: $IC50_CACHE, else ~/.cache/ic50."""
    return Path(os.environ.get("IC50_CACHE") or Path.home() / ".cache" / "ic50")


class PipelineError(Exception):
    """A problem with the user's input or settings; main.py prints it as one paragraph, no traceback."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    Readers never see a half-written file, and a crash leaves the previous version intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~UMASK)  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_parquet(table: pa.Table, path: str | os.PathLike, row_group_size: int | None = None) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=row_group_size)


def _json_safe(obj: Any) -> Any:
    """NaN/inf (e.g. a correlation of a constant prediction) -> null: strict JSON readers reject NaN."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_json(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_json_safe(obj), indent=2, allow_nan=False) + "\n")


def write_text(text: str, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


# ----------------------------------------------------------------------------- locks

BUSY_WAIT_S = 2.0   # how long a lock is tried before it counts as busy: a reader's check holds it a moment


def _lock_files(target: Path) -> tuple[Path, Path]:
    return target.with_name(f".{target.name}.lock"), target.with_name(f".{target.name}.lock.json")


@contextlib.contextmanager
def exclusive(target: str | os.PathLike, what: str, wait: bool = False, advice: str = "") -> Iterator[None]:
    """Hold the lock on `target` for the block, so one process at a time writes it. A kernel lock
    (filelock), so it holds across processes and, on a file system with working locks (a local
    disk, NFS), across nodes, and it dies with its process: a lock a killed job left blocks nobody.
    Who holds it is written beside it, for the message the others get. Busy: waits with `wait`,
    else stops with that message and `advice`."""
    lock_path, info_path = _lock_files(Path(target))
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(lock_path))
    try:
        try:
            lock.acquire(timeout=BUSY_WAIT_S)
        except filelock.Timeout:
            busy = f"{what} is in progress {holder_text(_read_holder(info_path))}."
            if not wait:
                raise PipelineError(f"{busy} {advice}".strip()) from None
            logging.getLogger("ic50").info("%s Waiting for it to end.", busy)
            lock.acquire()
    except NotImplementedError as e:
        raise PipelineError(f"the file system of '{lock_path.parent}' does not support file locks ({e}); "
                            f"set IC50_CACHE (or --out) to a directory on one that does: a local disk, "
                            f"or NFS with locking.") from e
    try:
        write_json({"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
                    "started": datetime.now().astimezone().isoformat(timespec="seconds")}, info_path)
        yield
    finally:
        info_path.unlink(missing_ok=True)
        lock.release()


def holder(target: str | os.PathLike) -> dict | None:
    """Who holds the lock on `target` ({} when it has not said yet), or None when nobody does."""
    lock_path, info_path = _lock_files(Path(target))
    if not lock_path.exists():
        return None
    lock = filelock.FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        return _read_holder(info_path)
    except (OSError, NotImplementedError):   # a lock this user cannot take: nobody we can name
        return None
    lock.release()
    return None


def _read_holder(info_path: Path) -> dict:
    try:
        return json.loads(info_path.read_text())
    except (OSError, ValueError):
        return {}


def holder_text(info: dict | None) -> str:
    if not info:
        return "(by a process that has not yet written who it is)"
    return (f"(process {info.get('pid')} on {info.get('host')}, started {info.get('started')}: "
            f"{info.get('command')})")


def require_file(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{what} not found: '{path}'. Check the path (relative paths are taken "
                            f"from the current directory, {Path.cwd()}).")
    return path


def command(logger: logging.Logger) -> Callable:
    """Every entry point's error handling: a PipelineError (bad input, named) is logged as one
    paragraph, with -v (debug logging) also the traceback of its cause, and exits with status 2;
    Ctrl-C exits with 130. Any other exception is a bug and keeps its traceback."""
    def wrap(entry: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(entry)
        def run(*args, **kwargs) -> int:
            try:
                return entry(*args, **kwargs)
            except PipelineError as e:
                logger.error("%s", e)
                cause = e.__cause__
                if cause is not None:
                    logger.debug("caused by %s", type(cause).__name__,
                                 exc_info=(type(cause), cause, cause.__traceback__))
                return 2
            except KeyboardInterrupt:
                logger.error("interrupted")
                return 130
        return run
    return wrap


def setup_logging(level: int = logging.INFO, logfile: Path | None = None) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    root.setLevel(level)
    for h in list(root.handlers):
        if getattr(h, "_ic50", False):
            root.removeHandler(h)
            h.close()
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if logfile is not None:
        handlers.append(logging.FileHandler(logfile))
    for h in handlers:
        h.setFormatter(fmt)
        h._ic50 = True  # type: ignore[attr-defined]
        root.addHandler(h)


# ----------------------------------------------------------------------------- ragged rows

def flat_list(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A list column as (row offsets starting at 0, flat values): rows of any length, laid end to end."""
    a = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = a.offsets.to_numpy()
    return offsets - offsets[0], a.flatten().to_numpy(zero_copy_only=False)


def ragged_positions(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of every element of rows with these lengths, laid end to end."""
    rows = np.repeat(np.arange(len(lengths)), lengths)
    cols = np.arange(int(np.sum(lengths))) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return rows, cols
