"""Notebooks: preprocessing.ipynb runs top to bottom on the demo data, and README's snippet answers
as `main.py predict` does."""
import shutil

import anndata
import nbformat
import numpy as np
import pandas as pd
import pytest
from conftest import BULK_GENES, ROOT, cells_h5ad
from nbclient import NotebookClient

import main


@pytest.mark.e2e
def test_the_preprocessing_notebook_runs_on_the_demo_with_its_plots_inline(tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")   # as on headless cluster nodes: the plots must still show
    nb = nbformat.read(ROOT / "preprocessing.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # ln IC50 per version, coverage heatmap, genes per cell


def readme_snippet() -> str:
    """The notebook snippet README.md shows: the python block after 'In a notebook'."""
    text = (ROOT / "README.md").read_text()
    start = text.index("```python", text.index("**In a notebook**")) + len("```python")
    return text[start:text.index("```", start)]


@pytest.mark.e2e
def test_the_readmes_notebook_snippet_ranks_as_main_py_predict_does(bulk_run, tmp_path):
    """The snippet as a user copies it, with their paths: the default reference answers an AnnData in
    memory with the rankings `main.py predict` writes for the same file."""
    d, x = bulk_run
    reference = tmp_path / "ic50-cache" / "references" / "gdsc"   # the default reference, in the cache
    reference.mkdir(parents=True)
    shutil.copyfile(d / "run" / "best.pt", reference / "best.pt")
    cells = tmp_path / "cells.h5ad"
    cells_h5ad(cells, x, [2, 6, 11], BULK_GENES)
    code = readme_snippet().replace("path/to/this/repository", str(ROOT))
    code = code.replace('"cells.h5ad"', repr(str(cells)))
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert main.main(["predict", "--data", str(cells), "--groupby", "sample", "--out",
                      str(tmp_path / "out")]) == 0
    pd.testing.assert_frame_equal(namespace["ranking"], pd.read_csv(tmp_path / "out" / "ranking.csv"),
                                  check_dtype=False, rtol=1e-9)
    assert np.array_equal(namespace["adata"].obsm["ln_ic50_z"],
                          anndata.read_h5ad(tmp_path / "out" / "cells.h5ad").obsm["ln_ic50_z"])
