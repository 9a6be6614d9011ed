"""preprocessing.ipynb runs top to bottom on the demo data."""
import nbformat
import pytest
from conftest import ROOT
from nbclient import NotebookClient


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
